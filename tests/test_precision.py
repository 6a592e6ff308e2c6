"""trainers/precision: bf16 autocast, channels_last and torch.compile keep the model's answers.

A real ConvNet-3 on real Fashion-MNIST test images; the compile fallback is exercised by pointing
inductor at a C++ compiler that does not exist (fresh cache, so nothing compiled earlier is reused).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trainers.models import create_student
from trainers.precision import autocast, prepare_model, to_device_batch


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """32 normalised Fashion-MNIST test images (N,1,28,28) and their labels."""
    from orchestrator.data.prepare import FASHION_MNIST_RAW, load_fashion_mnist_split

    images, labels = load_fashion_mnist_split(FASHION_MNIST_RAW, "test")
    pixels = torch.from_numpy(np.array(images[:32], dtype=np.float32) / 255.0)[:, None]
    return (pixels - 0.2860) / 0.3530, torch.as_tensor(np.asarray(labels[:32]), dtype=torch.int64)


@pytest.fixture(scope="module")
def trained_model(batch) -> nn.Module:
    """ConvNet-3 after 15 AdamW steps on the batch: confident logits, not the random init's."""
    torch.manual_seed(0)
    model = create_student("convnet3", num_classes=10, in_chans=1, img_size=28)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = batch
    for _ in range(15):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model.eval()


def plain_and_autocast(model, images, precision: str):
    """The model's logits without autocast, and under autocast(precision)."""
    with torch.no_grad():
        plain = model(images)
        with autocast("cpu", precision):
            return plain, model(images)


def test_fp32_is_the_plain_model_and_unknown_precision_is_refused(trained_model, batch):
    plain, fp32 = plain_and_autocast(trained_model, batch[0], "fp32")
    assert fp32.dtype == torch.float32 and torch.equal(fp32, plain)
    with pytest.raises(ValueError, match="fp16"):
        autocast("cpu", "fp16")


def test_bf16_autocast_logits_close_to_fp32(trained_model, batch):
    fp32, bf16 = plain_and_autocast(trained_model, batch[0], "bf16")
    assert bf16.dtype == torch.bfloat16  # autocast did run the layers in bfloat16
    scale = fp32.abs().max().item()
    assert (bf16.float() - fp32).abs().max().item() <= 0.05 * scale
    assert (bf16.float().argmax(1) == fp32.argmax(1)).float().mean().item() >= 0.95
    assert (fp32.argmax(1) == batch[1]).float().mean().item() > 0.5  # a model that learned something


def test_channels_last_keeps_outputs_equal(trained_model, batch):
    import copy

    images, _ = batch
    model = prepare_model(copy.deepcopy(trained_model), channels_last=True)
    moved = to_device_batch(images, "cpu", channels_last=True)
    assert model.features[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert moved.stride()[1] == 1 and images.stride()[1] == 28 * 28  # NHWC in memory, the input NCHW
    with torch.no_grad():
        torch.testing.assert_close(model(moved), trained_model(images), rtol=1e-5, atol=1e-5)
    assert to_device_batch(images, "cpu", channels_last=False).is_contiguous()


def test_compile_without_a_cpp_compiler_warns_once_and_runs_eager(tmp_path, monkeypatch):
    """Inductor cannot build its CPU kernels: one warning, then the same outputs as eager."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    images = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        expected = model(images)
    compiled = prepare_model(model, compile=True)
    with inductor_config.patch({"cpp.cxx": (str(tmp_path / "no-such-c++"),), "fx_graph_cache": False,
                                "compile_threads": 1}):
        with pytest.warns(RuntimeWarning, match="torch.compile failed.*eager") as caught:
            with torch.no_grad():
                outputs = [compiled(images), compiled(images)]
    torch._dynamo.reset()
    assert len([w for w in caught if "torch.compile failed" in str(w.message)]) == 1
    for output in outputs:
        torch.testing.assert_close(output, expected)
    assert compiled is model and list(compiled.state_dict()) == [
        "0.weight", "0.bias", "3.weight", "3.bias"]
