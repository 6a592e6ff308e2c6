"""Optimizer and learning-rate schedule of the evaluation protocol (docs/protocol.md §Evaluation protocol).

Owns ``build_optimizer`` (AdamW or SGD+momentum via timm, no weight decay on biases and norm
layers) and the per-epoch cosine schedule ``0.5 * (1 + cos(pi * epoch / epochs))``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from timm.optim import create_optimizer_v2
from torch import nn

from orchestrator.errors import ConfigError

# Our name -> timm optimizer name. timm's "sgd" is Nesterov; "momentum" is plain SGD with momentum.
TIMM_OPTIMIZERS = {"adamw": "adamw", "sgd": "momentum"}


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum, nesterov False); biases and all 1-D (norm) parameters get no weight decay."""
    if name not in TIMM_OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; expected one of {sorted(TIMM_OPTIMIZERS)}")
    extra = {"momentum": momentum} if name == "sgd" else {}
    return create_optimizer_v2(
        model,
        opt=TIMM_OPTIMIZERS[name],
        lr=lr,
        weight_decay=weight_decay,
        filter_bias_and_bn=True,
        **extra,
    )


def cosine_factor(epoch: int, epochs: int) -> float:
    """0.5 * (1 + cos(pi * epoch / epochs)): 1 at epoch 0, 0.5 halfway, 0 at ``epochs``."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def lr_factor(epoch: int, *, epochs: int, warmup_epochs: int = 0) -> float:
    """Learning-rate multiplier for ``epoch``: linear warmup to 1, then cosine over the remaining epochs."""
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    return cosine_factor(epoch - warmup_epochs, epochs - warmup_epochs)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    warmup_epochs: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying ``lr_factor``; call ``scheduler.step()`` once at the end of each epoch."""
    if epochs < 1 or not 0 <= warmup_epochs < epochs:
        raise ConfigError(f"need epochs >= 1 and 0 <= warmup_epochs < epochs, got {epochs}, {warmup_epochs}")
    factor = partial(lr_factor, epochs=epochs, warmup_epochs=warmup_epochs)  # picklable, unlike a lambda
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
