"""The benchmarks' training, built as a cell builds it, so that a ratio compares like with like.

The student and its optimizer (momentum included) come from the loop's own build_training_state,
its mix from trainers' builder with the protocol's settings; the "auto" speed switches are resolved
and applied by the loop's own code (trainers.loop.resolve_speed, trainers.precision.prepare_model);
every optimizer step is the loop's own (trainers.loop.train_one_epoch: zero_grad, the protocol loss
per chunk, backward, step). No other bench module builds an optimizer or steps one (tests/test_bench.py
checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class LoopTraining:
    """A student ready to train as a cell trains it: the loop's own step setup (the config with its
    speed switches resolved, the model in its layout and compiled if asked, its optimizer, its mix)."""

    step: Any  # trainers.loop.StepSetup

    @property
    def config(self):
        return self.step.config

    @property
    def model(self) -> torch.nn.Module:
        return self.step.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.step.optimizer

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def loop_training(config, *, num_classes: int = 10) -> LoopTraining:
    """The cell's student, optimizer and mix on the CPU, built by the loop's own
    build_training_state (seeded by config.seed), its speed switches resolved and applied as the loop
    does before its first epoch."""
    from trainers.loop import StepSetup, build_training_state, exact_chunk, resolve_speed
    from trainers.loop_inputs import LoopInputs
    from trainers.mix import build_mixup
    from trainers.precision import prepare_model

    state = build_training_state(LoopInputs(config, num_classes=num_classes), torch.device("cpu"), None)
    config, _ = resolve_speed(config, state.model, "cpu", 1, None)
    model = prepare_model(state.model, channels_last=config.train.channels_last, compile=config.train.compile)
    mix = config.mix
    mixup = build_mixup(mix.type, mixup_alpha=mix.mixup_alpha, cutmix_alpha=mix.cutmix_alpha, prob=mix.prob,
                        switch_prob=mix.switch_prob, num_classes=num_classes)
    return LoopTraining(StepSetup(config, model, None, mixup, "cpu", optimizer=state.optimizer,
                                  chunk=exact_chunk(config.train.chunk, model)))


def train(training: LoopTraining, steps, epoch: int = 0) -> int:
    """The loop's own optimizer steps over `steps` (each a list of trainers.batches.MicroBatch), hard
    labels, on the CPU; returns the views trained on."""
    from trainers.loop import train_one_epoch

    _, seen, _ = train_one_epoch(training.step, steps, epoch)
    return seen


def batch_steps(images: torch.Tensor, labels: torch.Tensor, batch: int) -> list[list]:
    """Fixed images and class labels as the loop's optimizer steps: one micro-batch of `batch` views
    (the last may be smaller) per step, each of weight 1."""
    from trainers.batches import MicroBatch

    keys = torch.arange(len(labels), dtype=torch.int64)
    return [[MicroBatch(images[start:start + batch], labels[start:start + batch], keys[start:start + batch], 1.0)]
            for start in range(0, len(labels), batch)]
