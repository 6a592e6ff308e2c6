"""trainers.evaluate: per-class accuracy counts and the evaluation loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainers.evaluate import Accuracy, cpu_inference_layout, evaluate
from trainers.models import create_student


def _hand_batch() -> tuple[torch.Tensor, torch.Tensor]:
    # 6 classes. Rows rank classes by descending logit.
    logits = torch.tensor(
        [
            [9.0, 8.0, 7.0, 6.0, 5.0, 4.0],  # label 0: top-1 hit
            [9.0, 8.0, 7.0, 6.0, 5.0, 4.0],  # label 4: top-5 hit only
            [9.0, 8.0, 7.0, 6.0, 5.0, 4.0],  # label 5: miss (rank 6)
            [0.0, 0.0, 9.0, 0.5, 0.0, 0.0],  # label 2: top-1 hit
        ]
    )
    return logits, torch.tensor([0, 4, 5, 2])


def test_accuracy_counts_hand_example() -> None:
    accuracy = Accuracy(6)
    accuracy.update(*_hand_batch())
    assert accuracy.counts.dtype == torch.int64
    assert accuracy.counts.tolist() == [
        [1, 0, 1, 0, 1, 1],  # samples per class
        [1, 0, 1, 0, 0, 0],  # top-1 hits
        [1, 0, 1, 0, 1, 0],  # top-5 hits
    ]
    summary = Accuracy.summarize(accuracy.counts)
    assert summary["top1"] == pytest.approx(50.0)
    assert summary["top5"] == pytest.approx(75.0)
    assert summary["count"] == 4
    per_class = summary["per_class_top1"]
    assert per_class[0] == 100.0 and per_class[2] == 100.0 and per_class[4] == 0.0
    assert math.isnan(per_class[1])  # class absent from the data


def test_top5_with_fewer_than_five_classes_is_top_all() -> None:
    accuracy = Accuracy(3)
    accuracy.update(torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]))
    assert Accuracy.summarize(accuracy.counts)["top5"] == 100.0


def test_summarize_of_summed_counts() -> None:
    logits, labels = _hand_batch()
    first, second = Accuracy(6), Accuracy(6)
    first.update(logits[:2], labels[:2])
    second.update(logits[2:], labels[2:])
    both = Accuracy(6)
    both.update(logits, labels)
    assert torch.equal(first.counts + second.counts, both.counts)
    assert Accuracy.summarize(first.counts + second.counts)["top1"] == pytest.approx(50.0)


def test_evaluate_loop_restores_mode_and_reports_loss() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Dropout(0.5))
    model.train()
    batches = [(torch.randn(5, 1, 2, 2), torch.randint(0, 3, (5,))) for _ in range(3)]
    result = evaluate(model, batches, num_classes=3, device="cpu")
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(images) for images, _ in batches])
    labels = torch.cat([labels for _, labels in batches])
    assert result["count"] == 15
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert result["top1"] == pytest.approx(100.0 * (logits.argmax(1) == labels).float().mean().item())


def test_evaluate_applies_reduce() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    batches = [(torch.randn(2, 1, 2, 2), torch.tensor([0, 1]))]
    doubled = evaluate(model, batches, num_classes=3, device="cpu", reduce=lambda tensor: tensor * 2)
    assert doubled["count"] == 4


def perturbed_convnet(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_student(name, num_classes=10, in_chans=1, img_size=28).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


@pytest.mark.parametrize("name", ["convnet3", "convnet3_w32"])
def test_cpu_inference_layout_computes_the_same_logits(name: str) -> None:
    """Evaluation on CPU runs each op of a ConvNet block in its fastest memory layout; the logits must
    be those of the plain NCHW forward, and the model is plain NCHW again afterwards."""
    model = perturbed_convnet(name)
    images = torch.randn(32, 1, 28, 28)
    with torch.inference_mode():
        reference = model(images)
        assert not model.features[0](images).is_contiguous(memory_format=torch.channels_last)
        with cpu_inference_layout(model, "cpu"):
            logits = model(images)
            assert model.features[0](images).is_contiguous(memory_format=torch.channels_last)
        assert not model.features[0](images).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)


def test_evaluate_in_either_cpu_layout_gives_the_same_accuracy() -> None:
    model = perturbed_convnet("convnet3_w32")
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 1, 28, 28, generator=generator), torch.randint(0, 10, (32,), generator=generator))
               for _ in range(3)]
    fast = evaluate(model, batches, num_classes=10, device="cpu")
    plain = evaluate(model, batches, num_classes=10, device="cpu", cpu_layout=False)
    assert fast["per_class_top1"] == plain["per_class_top1"] and fast["top5"] == plain["top5"]
    assert fast["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert all(not block.conv._forward_pre_hooks for block in model.features)
