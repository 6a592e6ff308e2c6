"""PNG figures: accuracy vs IPC per group, and a grid of a few training images per class per method.

Both draw on matplotlib's Agg canvas directly (no pyplot, no global backend switch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.errors import OrchestratorError
from orchestrator.report.runs import FULL, METRIC_LABELS, METRIC_UNITS, RANDOM, check_metric, iter_groups, \
    method_order
from orchestrator.report.tables import paper_table_numeric


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _draw_group(ax, sub: pd.DataFrame, metric: str, colours: dict[str, str]) -> None:
    num = paper_table_numeric(sub, metric=metric)
    grid = num[num["method"] != FULL]
    ipcs = sorted(int(v) for v in grid["ipc"].dropna().unique())
    for method in method_order(grid["method"]):
        m = grid[grid["method"] == method].sort_values("ipc")
        ax.errorbar(m["ipc"].astype(float), m["mean"], yerr=m["std"].fillna(0.0), marker="o", capsize=3,
                    label=method, color=colours.get(method), linewidth=2.0 if method == RANDOM else 1.5,
                    linestyle=":" if method == RANDOM else "-")
    full = num[num["method"] == FULL]
    if not full.empty and math.isfinite(full["mean"].iloc[0]):
        ax.axhline(full["mean"].iloc[0], color="black", linestyle="--", linewidth=1, label="full")
    if ipcs and max(ipcs) / max(min(ipcs), 1) > 10:
        ax.set_xscale("log")
    if ipcs:
        ax.set_xticks(ipcs)
        ax.set_xticklabels([str(v) for v in ipcs])
        ax.minorticks_off()


def _group_panels(df: pd.DataFrame, count: int):
    """(figure, flat axes, method -> colour): one panel per group, three to a row, the same colour per
    method in every panel."""
    ncols = min(3, max(1, count))
    nrows = math.ceil(max(1, count) / ncols)
    fig = _figure(5.0 * ncols, 3.8 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colours = {m: f"C{i % 10}" for i, m in enumerate(x for x in method_order(df["method"]) if x != FULL)}
    return fig, axes, colours


def plot_top1_vs_ipc(df: pd.DataFrame, path: Path, *, metric: str = "top1_final") -> Path:
    """PNG of accuracy vs IPC: one panel per (protocol, label_mode, model), one line per method.

    Points are the mean over seeds with the sample std (ddof=1) as error bars; the x axis is
    logarithmic when the IPCs span more than 10x; ``full`` is drawn as a dashed horizontal line.
    """
    check_metric(df, metric)
    groups = list(iter_groups(df))
    fig, axes, colours = _group_panels(df, len(groups))
    if not groups:
        axes[0].text(0.5, 0.5, "no finished cell runs", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, ((protocol, label_mode, model), sub) in zip(axes, groups):
        _draw_group(ax, sub, metric, colours)
        ax.set_title(f"{protocol} · {label_mode} · {model}", fontsize=10)
        ax.set_xlabel("images per class (IPC)")
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} ({METRIC_UNITS.get(metric, '?')})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(groups):] if groups else []:
        ax.set_axis_off()
    return _save(fig, path)


def plot_top1_vs_storage(df: pd.DataFrame, path: Path, *, metric: str = "top1_final") -> Path:
    """PNG of accuracy vs storage (bytes of images plus soft labels, log scale): one panel per
    (protocol, label_mode, model), one line per method through its IPCs (mean over seeds)."""
    from orchestrator.report.tables import storage_table

    check_metric(df, metric)
    groups = list(iter_groups(df))
    fig, axes, colours = _group_panels(df, len(groups))
    for ax, ((protocol, label_mode, model), sub) in zip(axes, groups):
        accuracy = paper_table_numeric(sub, metric=metric)[["method", "ipc", "mean"]]
        points = storage_table(sub, human=False)[["method", "ipc", "total_bytes"]].merge(accuracy, on=["method", "ipc"])
        for method in method_order(points["method"]):
            m = points[points["method"] == method].sort_values("total_bytes")
            ax.plot(m["total_bytes"], m["mean"], marker="o", label=method, color=colours.get(method, "black"))
        ax.set_xscale("log")
        ax.set_title(f"{protocol} · {label_mode} · {model}", fontsize=10)
        ax.set_xlabel("storage: images + soft labels (bytes)")
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} ({METRIC_UNITS.get(metric, '?')})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(groups):]:
        ax.set_axis_off()
    return _save(fig, path)


# ----------------------------------------------------------------------------------- image grid


def as_nhwc(images: np.ndarray) -> np.ndarray:
    """uint8 images as N x H x W x C: accepts NHWC, NCHW (C of 1 or 3) and NHW (grayscale)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise OrchestratorError(f"image_grid takes uint8 images, got {images.dtype}")
    if images.ndim == 3:
        return images[..., None]
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        return images
    if images.ndim == 4 and images.shape[1] in (1, 3):
        return images.transpose(0, 2, 3, 1)
    raise OrchestratorError(f"image_grid takes NHWC, NCHW or NHW images, got shape {images.shape}")


def class_mosaic(images: np.ndarray, labels: np.ndarray, classes: Sequence[int], per_class: int) -> np.ndarray:
    """One row per class of the first ``per_class`` images with that label (black where fewer)."""
    images = as_nhwc(images)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(images):
        raise OrchestratorError(f"image_grid: {len(images)} images but {len(labels)} labels")
    n, h, w, c = images.shape
    mosaic = np.zeros((len(classes) * h, per_class * w, c), dtype=np.uint8)
    for row, cls in enumerate(classes):
        for col, index in enumerate(np.flatnonzero(labels == cls)[:per_class]):
            mosaic[row * h:(row + 1) * h, col * w:(col + 1) * w] = images[index]
    return mosaic


def image_grid(sets: Mapping[str, tuple[np.ndarray, np.ndarray]], per_class: int, path: Path, *,
               class_names: Sequence[str] | None = None) -> Path:
    """PNG with one panel per method: a row per class, ``per_class`` of its images side by side.

    ``sets`` maps a method name to ``(images, labels)``: uint8 images (NHWC, NCHW or NHW) and their
    integer class labels. Classes are the union of all labels, ascending; ``class_names[label]``
    names the rows when given. A class with fewer images than ``per_class`` leaves black tiles.
    """
    if not sets or per_class < 1:
        raise OrchestratorError("image_grid needs at least one method and per_class >= 1")
    classes = sorted({int(v) for _, labels in sets.values() for v in np.asarray(labels).reshape(-1)})
    fig = _figure(max(2.5, 0.6 * per_class + 1.0) * len(sets), 0.6 * len(classes) + 1.0)
    axes = fig.subplots(1, len(sets), squeeze=False).ravel()
    for ax, (method, (images, labels)) in zip(axes, sets.items()):
        mosaic = class_mosaic(images, labels, classes, per_class)
        height = mosaic.shape[0] // len(classes)
        ax.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(str(method), fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([(i + 0.5) * height for i in range(len(classes))])
        ax.set_yticklabels([class_names[c] if class_names else str(c) for c in classes], fontsize=7)
    return _save(fig, path)
