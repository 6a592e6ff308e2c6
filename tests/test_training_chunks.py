"""train.chunk (trainers/loop.py forward_backward): a batch's forward/backward in chunks gives the
whole batch's gradient, for hard labels and for soft labels on cutmix batches; models with
BatchNorm (whose statistics depend on the batch) train whole batches."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from orchestrator.config import config_hash, load_config
from orchestrator.errors import ConfigError
from tests_paths import CONFIGS
from trainers.batches import MicroBatch
from trainers.loop import StepSetup, exact_chunk, forward_backward
from trainers.mix import build_mixup
from trainers.models import create_student


def micro_batch(size: int = 48) -> MicroBatch:
    generator = torch.Generator().manual_seed(1)
    return MicroBatch(torch.randn(size, 1, 28, 28, generator=generator),
                      torch.randint(0, 10, (size,), generator=generator),
                      torch.arange(size), weight=1.0)


def gradients(config, model_name: str, chunk: int, *, teacher=None, mixup=None):
    """(mean loss, every parameter's gradient) of one forward_backward from the same start."""
    torch.manual_seed(0)
    model = create_student(model_name, num_classes=10, in_chans=1, img_size=28).train()
    torch.manual_seed(7)
    np.random.seed(7)  # timm's Mixup draws lambda and the box from numpy
    loss, seen = forward_backward(StepSetup(config, model, teacher, mixup, "cpu", chunk=chunk), micro_batch(), 0)
    assert seen == 48
    return loss, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("chunk", [16, 20])  # 48 views: 3 equal chunks, or 20 + 20 + 8
@pytest.mark.parametrize("protocol", ["fmnist-hard.yaml", "fmnist-soft.yaml"])
def test_chunked_forward_backward_gives_the_whole_batch_gradient(protocol: str, chunk: int) -> None:
    config = load_config(CONFIGS / protocol)
    teacher = mixup = None
    if config.label_mode == "soft":
        torch.manual_seed(3)
        teacher = create_student("convnet3_w32", num_classes=10, in_chans=1, img_size=28).eval()
        mixup = build_mixup(config.mix.type, mixup_alpha=config.mix.mixup_alpha, cutmix_alpha=config.mix.cutmix_alpha,
                            prob=config.mix.prob, switch_prob=config.mix.switch_prob, num_classes=10)
    whole_loss, whole = gradients(config, "convnet3_w32", 0, teacher=teacher, mixup=mixup)
    chunk_loss, chunked = gradients(config, "convnet3_w32", chunk, teacher=teacher, mixup=mixup)
    assert chunk_loss == pytest.approx(whole_loss, rel=1e-5)
    for a, b in zip(chunked, whole):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_batchnorm_students_train_whole_batches() -> None:
    plain = create_student("convnet3_w32", num_classes=10, in_chans=1, img_size=28)
    batchnorm = create_student("convnet3_bn_w32", num_classes=10, in_chans=1, img_size=28)
    assert exact_chunk(32, plain) == 32 and exact_chunk(0, plain) == 0
    assert exact_chunk(32, batchnorm) == 0
    # why: chunking a BatchNorm student changes its gradient (per-chunk batch statistics)
    config = load_config(CONFIGS / "fmnist-hard.yaml")
    _, whole = gradients(config, "convnet3_bn_w32", 0)
    _, chunked = gradients(config, "convnet3_bn_w32", 16)
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(chunked, whole))


def test_chunk_is_a_run_only_key_and_must_not_be_negative() -> None:
    base = load_config(CONFIGS / "fmnist-hard.yaml")
    assert base.train.chunk == 32
    assert config_hash(load_config(CONFIGS / "fmnist-hard.yaml", ["train.chunk=0"])) == config_hash(base)
    with pytest.raises(ConfigError, match="train.chunk"):
        load_config(CONFIGS / "fmnist-hard.yaml", ["train.chunk=-1"])
