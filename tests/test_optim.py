"""trainers.optim: optimizer parameter groups and the cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainers.optim import build_optimizer, build_scheduler, cosine_factor


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(4, 4), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def _decay_of(optimizer: torch.optim.Optimizer) -> dict[int, float]:
    return {id(param): group["weight_decay"] for group in optimizer.param_groups for param in group["params"]}


@pytest.mark.parametrize(("name", "kind"), [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_no_decay_on_biases_and_norms(name: str, kind: type) -> None:
    model = _tiny_model()
    optimizer = build_optimizer(model, name=name, lr=0.1, weight_decay=0.01)
    assert isinstance(optimizer, kind)
    decay = _decay_of(optimizer)
    assert len(decay) == len(list(model.parameters()))
    for param_name, param in model.named_parameters():
        expected = 0.01 if param_name in {"0.weight", "4.weight"} else 0.0
        assert decay[id(param)] == expected, param_name


def test_sgd_uses_plain_momentum() -> None:
    optimizer = build_optimizer(_tiny_model(), name="sgd", lr=0.1, weight_decay=1e-4, momentum=0.8)
    for group in optimizer.param_groups:
        assert group["momentum"] == 0.8 and group["nesterov"] is False and group["lr"] == 0.1


def test_unknown_optimizer() -> None:
    with pytest.raises(ValueError, match="adamw"):
        build_optimizer(_tiny_model(), name="lion", lr=0.1, weight_decay=0.0)


def test_cosine_factor_values() -> None:
    assert cosine_factor(0, 10) == 1.0
    assert cosine_factor(5, 10) == pytest.approx(0.5)
    assert cosine_factor(10, 10) == pytest.approx(0.0, abs=1e-12)


def _lrs(epochs: int, warmup_epochs: int) -> list[float]:
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    scheduler = build_scheduler(optimizer, epochs=epochs, warmup_epochs=warmup_epochs)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_scheduler_steps_cosine_per_epoch() -> None:
    assert _lrs(4, 0) == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])


def test_scheduler_linear_warmup_then_cosine() -> None:
    lrs = _lrs(6, 2)
    assert lrs[:2] == pytest.approx([1 / 3, 2 / 3])
    assert lrs[2:] == pytest.approx([cosine_factor(e, 4) for e in range(4)])
