"""Validation metrics: per-class top-1 / top-5 counts that can be summed across DDP ranks.

Owns ``Accuracy`` (an int64 [3, num_classes] count tensor: samples, top-1 hits, top-5 hits
per true class), ``Accuracy.summarize`` (percentages, per-class top-1 kept, docs/protocol.md §Deviations),
``evaluate`` (one pass of a model over labelled batches, with mean cross-entropy) and
``cpu_inference_layout`` (the memory layout each op of a conv -> GroupNorm block evaluates in on a CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainers.precision import autocast

SAMPLES, TOP1, TOP5 = 0, 1, 2
TOP_K = 5

ReduceFn = Callable[[torch.Tensor], torch.Tensor]


class Accuracy:
    """Per-class counts of samples, top-1 hits and top-k hits (k = min(5, num_classes))."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.top_k = min(TOP_K, num_classes)
        self.counts = torch.zeros((3, num_classes), dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch: ``logits`` [N, num_classes], ``labels`` [N] class indices."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes or labels.shape != logits.shape[:1]:
            raise ValueError(f"expected logits [N, {self.num_classes}] and labels [N], got "
                             f"{tuple(logits.shape)} and {tuple(labels.shape)}")  # fmt: skip
        labels = labels.to(self.counts.device, torch.int64)
        ranked = logits.topk(self.top_k, dim=1).indices.to(self.counts.device)
        hits = ranked == labels[:, None]
        self.counts[SAMPLES] += torch.bincount(labels, minlength=self.num_classes)
        self.counts[TOP1] += torch.bincount(labels[hits[:, 0]], minlength=self.num_classes)
        self.counts[TOP5] += torch.bincount(labels[hits.any(dim=1)], minlength=self.num_classes)

    @staticmethod
    def summarize(counts: torch.Tensor) -> dict[str, Any]:
        """top1 / top5 (percent over all samples), per_class_top1 (percent; NaN for an absent class), count."""
        counts = counts.detach().cpu().to(torch.float64)
        total = counts[SAMPLES].sum().item()
        per_class = 100.0 * counts[TOP1] / counts[SAMPLES]  # 0/0 -> NaN: class absent from the data
        return {
            "top1": 100.0 * counts[TOP1].sum().item() / total if total else float("nan"),
            "top5": 100.0 * counts[TOP5].sum().item() / total if total else float("nan"),
            "per_class_top1": per_class.tolist(),
            "count": int(total),
        }


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _channels_last(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


def _nchw(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


def layout_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's conv -> GroupNorm -> pooling blocks (trainers.models.ConvBlock with instance norm)."""
    return [module for module in model.modules()
            if isinstance(getattr(module, "conv", None), nn.Conv2d)
            and isinstance(getattr(module, "norm", None), nn.GroupNorm)
            and isinstance(getattr(module, "pool", None), nn.AvgPool2d)]


@contextmanager
def cpu_inference_layout(model: nn.Module, device: torch.device | str, enabled: bool = True) -> Iterator[None]:
    """While evaluating on a CPU, each op of a conv -> GroupNorm block runs in the memory layout that is
    fastest there: oneDNN's convolution and the pooling in channels_last, GroupNorm (slow in
    channels_last on CPU) in NCHW. The function is the model's one forward; only the layouts of its
    tensors change (forward pre-hooks, removed on exit). With small evaluation batches (eval.batch_size
    32 in the fmnist protocols) ConvNet-3 evaluates ~2.5x faster than NCHW throughout
    (`python -m orchestrator bench --only eval`, `ratios.eval_vs_plain`)."""
    if not enabled or torch.device(device).type != "cpu":
        yield
        return
    handles = []
    for block in layout_blocks(model):
        handles += [block.conv.register_forward_pre_hook(_channels_last),
                    block.norm.register_forward_pre_hook(_nchw),
                    block.pool.register_forward_pre_hook(_channels_last)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    device: torch.device | str,
    reduce: ReduceFn = _identity,
    precision: str = "fp32",
    cpu_layout: bool = True,
) -> dict[str, Any]:
    """Accuracy.summarize of the model on ``batches`` plus mean cross-entropy as "loss".

    ``cpu_layout``: on a CPU, run each op in its fastest memory layout (``cpu_inference_layout``);
    False: NCHW throughout (the bench's reference).

    ``reduce`` maps the count tensor and the [loss_sum] tensor to their totals before summarising,
    e.g. ``lambda t: (dist.all_reduce(t), t)[1]`` to SUM across DDP ranks.
    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    accuracy = Accuracy(num_classes, device=device)
    loss_sum = torch.zeros(1, dtype=torch.float64, device=device)
    try:
        with cpu_inference_layout(model, device, cpu_layout):
            for images, labels in batches:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                with autocast(device, precision):
                    logits = model(images)
                loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").double()
                accuracy.update(logits, labels)
    finally:
        model.train(was_training)
    counts, loss_sum = reduce(accuracy.counts), reduce(loss_sum)
    summary = Accuracy.summarize(counts)
    summary["loss"] = loss_sum.item() / summary["count"] if summary["count"] else float("nan")
    return summary
