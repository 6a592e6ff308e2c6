"""The benchmarks' training, built as a cell builds it, so that a ratio compares like with like.

The student, its optimizer (momentum included) and its mix come from trainers' own builders with the
protocol's settings; the "auto" speed switches are resolved and applied by the loop's own code
(trainers.loop.resolve_speed, trainers.precision.prepare_model); every optimizer step is the loop's
own (trainers.loop.train_one_epoch: zero_grad, the protocol loss per chunk, backward, step). No other
bench module builds an optimizer or steps one (tests/test_bench.py checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class LoopTraining:
    """A student ready to train as a cell trains it: the config with its speed switches resolved,
    the model in its layout (and compiled if asked), its optimizer, and its mix (None: no mixing)."""

    config: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    mixup: Any

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def protocol_optimizer(model: torch.nn.Module, optim) -> torch.optim.Optimizer:
    """The optimizer of the protocol's `optim` section (OptimConfig), every setting passed as the loop
    passes it (trainers.loop.build_training_state)."""
    from trainers.optim import build_optimizer

    return build_optimizer(model, name=optim.name, lr=optim.lr, weight_decay=optim.weight_decay,
                           momentum=optim.momentum)


def loop_training(config, *, num_classes: int = 10) -> LoopTraining:
    """The cell's student (seeded by config.seed), optimizer and mix on the CPU, its speed switches
    resolved and applied as the loop does before its first epoch."""
    from trainers.loop import resolve_speed
    from trainers.mix import build_mixup
    from trainers.models import create_student
    from trainers.precision import prepare_model

    torch.manual_seed(config.seed)
    model = create_student(config.model.name, num_classes=num_classes, in_chans=config.in_chans,
                           img_size=config.model.input_size)
    optimizer = protocol_optimizer(model, config.optim)
    config, _ = resolve_speed(config, model, "cpu", 1, None)
    model = prepare_model(model, channels_last=config.train.channels_last, compile=config.train.compile)
    mix = config.mix
    mixup = build_mixup(mix.type, mixup_alpha=mix.mixup_alpha, cutmix_alpha=mix.cutmix_alpha, prob=mix.prob,
                        switch_prob=mix.switch_prob, num_classes=num_classes)
    return LoopTraining(config, model, optimizer, mixup)


def train(training: LoopTraining, steps, epoch: int = 0) -> int:
    """The loop's own optimizer steps over `steps` (each a list of trainers.batches.MicroBatch), hard
    labels, on the CPU; returns the views trained on."""
    from trainers.loop import train_one_epoch

    _, seen, _ = train_one_epoch(training.config, training.model, None, training.mixup, training.optimizer,
                                 steps, epoch, "cpu", None)
    return seen


def batch_steps(images: torch.Tensor, labels: torch.Tensor, batch: int) -> list[list]:
    """Fixed images and class labels as the loop's optimizer steps: one micro-batch of `batch` views
    (the last may be smaller) per step, each of weight 1."""
    from trainers.batches import MicroBatch

    keys = torch.arange(len(labels), dtype=torch.int64)
    return [[MicroBatch(images[start:start + batch], labels[start:start + batch], keys[start:start + batch], 1.0)]
            for start in range(0, len(labels), batch)]
