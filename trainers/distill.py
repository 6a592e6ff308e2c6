"""Dataset-distillation generators in pure torch: SRe2L / CDA / G-VBSM / LPLD / DWA recovery and RDED.

Owns the image-making half of docs/protocol.md §Distillation; the caching, the teachers and the
benchmark schema live in ``orchestrator.distill_job``. Everything here is device-agnostic (CPU or
CUDA), seeded (one numpy generator per recover batch or per class, one torch generator for the
initial noise) and free of Ray and MLflow.

- ``recover``: SRe2L's recover step (Yin et al., NeurIPS 2023): images optimised from Gaussian
  noise with Adam so that a frozen BatchNorm teacher classifies them as their target class while
  the statistics of every BatchNorm2d input match that layer's running statistics; one random
  resized crop + flip + roll of the whole batch per step, cosine lr, pixels clipped to the valid
  range in normalised space. With ``curriculum`` (``cda_min_scale``) it is CDA (Yin & Shen, TMLR
  2024): the crop's lower scale bound anneals from 1 to its final value. Its ``objective`` says
  what each step's loss reads, which makes the other recover-based methods:
  ``GvbsmObjective`` (Shao et al., CVPR 2024: several backbones in turn, BatchNorm and convolution
  statistics matched through a moving average, an eigenvalue diversity term), ``StatsObjective``
  with class-wise targets and class-wise batches (LPLD, Xiao & He, NeurIPS 2024) and
  ``DwaObjective`` (Du et al., NeurIPS 2024: real-image start, the teacher's weights moved along
  the gradient of its loss on the batch before the batch is synthesised).
- ``rded``: RDED (Sun et al., CVPR 2024): random resized crops of real images scored by the
  teacher's cross-entropy to their class, the lowest kept and stitched grid x grid per image.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as F
from torch import nn
from torchvision.transforms import InterpolationMode

from pca.combine import tile_boxes
from trainers.augment import DRAWS_PER_SAMPLE, crop_params

RECOVER_RATIO = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop's default aspect range (SRe2L's crop)
RDED_SCALE = (0.08, 1.0)  # RDED's MultiRandomCrop: RandomResizedCrop defaults, square patches
ADAM_BETAS = (0.5, 0.9)  # SRe2L data_synthesis.py
CDA_MODES = ("step", "linear", "cosine")


@dataclass(frozen=True)
class RecoverSettings:
    """What one SRe2L/CDA recovery needs (docs/protocol.md §Distillation)."""

    iterations: int
    lr: float
    r_bn: float
    first_bn_multiplier: float
    jitter: int
    crop_scale: tuple[float, float]
    batch: int
    image_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# --------------------------------------------------------------------------- SRe2L / CDA


def cda_min_scale(iteration: int, iterations: int, *, mode: str, milestone: float, low: float,
                  high: float = 1.0) -> float:
    """CDA's crop-scale lower bound at `iteration`: `high` -> `low` over the first milestone*iterations.

    step: `high` until the milestone; linear / cosine: annealed; after the milestone: `low`
    (CDA ``recover_cda_in1k.py`` l.54-66, which anneals 1.0 -> 0.08).
    """
    if mode not in CDA_MODES:
        raise ValueError(f"CDA mode must be one of {CDA_MODES}, got {mode!r}")
    span = milestone * iterations
    if iteration >= span:
        return low
    if mode == "step":
        return high
    progress = iteration / span
    weight = 1 - progress if mode == "linear" else (1 + math.cos(math.pi * progress)) / 2
    return low + (high - low) * weight


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of an NCHW tensor over (N, H, W) (SRe2L's BNFeatureHook)."""
    mean = x.mean(dim=(0, 2, 3))
    var = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).var(dim=1, unbiased=False)
    return mean, var


class MovingStats:
    """G-VBSM's "score distillation sampling" form of a batch statistic: the value is a moving average
    of this and earlier steps' statistics (momentum alpha on the old value), its gradient the current
    step's (utils.py ``BNFeatureHook`` / ``ConvFeatureHook``: ``dd + s - s.detach()``)."""

    def __init__(self, momentum: float) -> None:
        self.momentum, self.values = momentum, {}

    def __call__(self, key, value: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            previous = self.values.get(key)
            average = value.detach() if previous is None else \
                self.momentum * previous + (1 - self.momentum) * value.detach()
            self.values[key] = average
        return average + value - value.detach()


class BatchNormStatsLoss:
    """Forward hooks on every BatchNorm2d: ||mu_batch - mean||_2 + ||var_batch - var||_2 per layer.

    SRe2L's ``BNFeatureHook`` (recover/utils.py l.92-101): statistics of the layer's input over
    (N, H, W), biased variance, against the layer's running statistics. `targets` replaces those
    (LPLD: one class's statistics, one (mean, var) per layer in module order); `var_weight` weighs
    the variance term (DWA's ``--r-var``); `moving` smooths the batch statistics (G-VBSM).
    """

    def __init__(self, model: nn.Module, *, targets: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
                 var_weight: float = 1.0, moving: MovingStats | None = None) -> None:
        self.terms: list[torch.Tensor] = []
        layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        if not layers:
            raise ValueError("recovery needs a teacher with BatchNorm2d layers (e.g. convnet3_bn_w32)")
        self.targets = list(targets) if targets is not None else None
        self.var_weight, self.moving = var_weight, moving
        self.handles = [layer.register_forward_hook(self._hook(index)) for index, layer in enumerate(layers)]

    def _hook(self, index: int):
        def hook(module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            mean, var = channel_stats(inputs[0])
            if self.moving is not None:
                mean, var = self.moving(("bn", index, "mean"), mean), self.moving(("bn", index, "var"), var)
            target_mean, target_var = self.targets[index] if self.targets else (module.running_mean, module.running_var)
            var_term = torch.linalg.vector_norm(target_var - var)
            if self.var_weight != 1.0:
                var_term = var_term * self.var_weight
            self.terms.append(var_term + torch.linalg.vector_norm(target_mean - mean))

        return hook

    def pop(self, first_multiplier: float) -> torch.Tensor:
        """The weighted sum over layers of the last forward pass (the first layer x first_multiplier)."""
        terms = list(self.terms)
        self.terms.clear()  # in place: G-VBSM's conv hooks append to the same list
        return terms[0] * first_multiplier + sum(terms[1:])

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _channel_view(values: Sequence[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.float32, device=device).view(1, -1, 1, 1)


def _jittered(inputs: torch.Tensor, uniforms: np.ndarray, shifts: tuple[int, int], min_scale: float,
              max_scale: float) -> torch.Tensor:
    """One RandomResizedCrop(size, scale) + flip for the whole batch, then a roll (SRe2L l.55-64)."""
    size = inputs.shape[-1]
    (top, left, height, width), = crop_params(uniforms, height=size, width=size, scale=(min_scale, max_scale),
                                              ratio=RECOVER_RATIO).tolist()
    view = F.resized_crop(inputs, top, left, height, width, [size, size],
                          interpolation=InterpolationMode.BILINEAR, antialias=True)
    if uniforms[0, -1] < 0.5:
        view = F.hflip(view)
    return torch.roll(view, shifts=shifts, dims=(2, 3))


def to_uint8(normalised: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    """Normalised float NCHW -> uint8 NCHW (denormalise, clamp to [0, 1], round)."""
    pixels = (normalised * std + mean).clamp(0, 1)
    return pixels.mul(255).round().to(torch.uint8).cpu().numpy()


def normalised(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 NCHW -> float NCHW in normalised space."""
    pixels = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255)
    return F.normalize(pixels, list(mean), list(std))


# ------------------------------------------------------------------ what one recover step's loss reads


class Objective(Protocol):
    """One recover batch's loss: (CE, statistics term before r_bn, extra term already weighted)."""

    def loss(self, view: torch.Tensor, targets: torch.Tensor, iteration: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]: ...

    def close(self) -> None: ...


class StatsObjective:
    """SRe2L / CDA (and LPLD with class-wise `targets`): one teacher's CE + its BatchNorm statistics."""

    def __init__(self, teacher: nn.Module, first_multiplier: float, **stats) -> None:
        self.teacher, self.first_multiplier = teacher, first_multiplier
        self.stats = BatchNormStatsLoss(teacher, **stats)

    def loss(self, view, targets, iteration):
        ce = nnf.cross_entropy(self.teacher(view), targets)
        return ce, self.stats.pop(self.first_multiplier), 0.0

    def close(self) -> None:
        self.stats.close()


def sre2l_objective(teacher: nn.Module, settings: "RecoverSettings"):
    """The default objective factory: (targets, batch index) -> SRe2L's objective."""
    return lambda targets, batch_index: StatsObjective(teacher, settings.first_bn_multiplier)


def _recover_batch(objective: Objective, targets: torch.Tensor, settings: RecoverSettings, rng: np.random.Generator,
                   start: torch.Tensor, curriculum: Callable[[int], float] | None,
                   log: dict[str, np.ndarray]) -> np.ndarray:
    device = targets.device
    mean, std = _channel_view(settings.mean, device), _channel_view(settings.std, device)
    low, high = (0 - mean) / std, (1 - mean) / std
    inputs = start.to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([inputs], lr=settings.lr, betas=ADAM_BETAS, eps=1e-8)
    try:
        for iteration in range(settings.iterations):
            for group in optimizer.param_groups:  # SRe2L lr_cosine_policy, no warm-up
                group["lr"] = 0.5 * (1 + math.cos(math.pi * iteration / settings.iterations)) * settings.lr
            min_scale = curriculum(iteration) if curriculum is not None else settings.crop_scale[0]
            shifts = tuple(int(s) for s in rng.integers(0, settings.jitter + 1, size=2))
            view = _jittered(inputs, rng.random((1, DRAWS_PER_SAMPLE)), shifts, min_scale, settings.crop_scale[1])
            optimizer.zero_grad(set_to_none=True)
            ce, stats, extra = objective.loss(view, targets, iteration)
            (ce + settings.r_bn * stats + extra).backward()
            optimizer.step()
            with torch.no_grad():
                inputs.copy_(torch.maximum(torch.minimum(inputs, high), low))
            log["ce_loss"][iteration] += ce.item()
            log["bn_loss"][iteration] += stats.item()
    finally:
        objective.close()
    return to_uint8(inputs.detach(), mean, std)


def recover_batches(class_ids: Sequence[int], batch: int, class_wise: bool = False) -> list[np.ndarray]:
    """Positions of `class_ids` optimised together: runs of `batch` in order, or (class_wise, LPLD)
    runs of at most `batch` images of one class each, classes in order of first appearance."""
    positions = np.arange(len(class_ids))
    if not class_wise:
        return [positions[start:start + batch] for start in range(0, len(positions), batch)]
    labels = np.asarray(class_ids)
    runs = []
    for class_id in dict.fromkeys(labels.tolist()):
        members = positions[labels == class_id]
        runs += [members[start:start + batch] for start in range(0, len(members), batch)]
    return runs


def recover(teacher: nn.Module, class_ids: Sequence[int], *, settings: RecoverSettings, seed: int,
            device: torch.device | str, curriculum: Callable[[int], float] | None = None,
            objective: Callable[[torch.Tensor, int], Objective] | None = None, init: np.ndarray | None = None,
            class_wise: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """SRe2L recover (CDA with `curriculum`): one uint8 NCHW image per entry of `class_ids`, in order.

    Images are optimised `settings.batch` at a time (`class_wise`: one class per batch, LPLD); batch b
    draws its noise and its crops from seeds (seed, b), so the same seed gives the same bytes on one
    device. `objective(targets, b)` gives batch b's loss (default: SRe2L's with `teacher`); `init`
    (uint8 NCHW, one per entry) starts from those images instead of noise (DWA). Returns the images
    and the per-iteration losses {'bn_loss', 'ce_loss'}, averaged over batches (bn_loss without r_bn).
    """
    device = torch.device(device)
    teacher = teacher.to(device).eval().requires_grad_(False)
    objective = objective or sre2l_objective(teacher, settings)
    targets = torch.as_tensor(list(class_ids), dtype=torch.int64)
    shape = (settings.in_chans, settings.image_size, settings.image_size)
    log = {"bn_loss": np.zeros(settings.iterations), "ce_loss": np.zeros(settings.iterations)}
    images = np.zeros((len(targets), *shape), np.uint8)
    batches = recover_batches(targets.tolist(), settings.batch, class_wise)
    for batch_index, rows in enumerate(batches):
        chunk = targets[rows].to(device)
        if init is None:
            start = torch.randn((len(rows), *shape),
                                generator=torch.Generator().manual_seed(seed * 1_000_003 + batch_index))
        else:
            start = normalised(init[rows], settings.mean, settings.std)
        rng = np.random.default_rng([seed, batch_index])
        images[rows] = _recover_batch(objective(chunk, batch_index), chunk, settings, rng, start, curriculum, log)
    log = {name: values / max(len(batches), 1) for name, values in log.items()}
    return images, log


# --------------------------------------------------------------------------- G-VBSM

GVBSM_PATCH = 16  # G-VBSM's patch statistics: 16 x 16 patches of each conv input (utils.py div_sixteen_mul)


def patch_stats(x: torch.Tensor, patch: int = GVBSM_PATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance of each patch x patch cell over (N, C, h, w), the input resized bilinearly
    to the next multiple of `patch` first (G-VBSM ``ConvFeatureHook``: one value per patch position)."""
    n, c, height, width = x.shape
    rows, cols = -(-height // patch), -(-width // patch)
    x = nnf.interpolate(x, [rows * patch, cols * patch], mode="bilinear")
    cells = x.reshape(n, c, rows, patch, cols, patch).permute(2, 4, 0, 1, 3, 5).reshape(rows * cols, -1)
    return cells.mean(dim=1), cells.var(dim=1, unbiased=False)


def conv_statistics(teacher: nn.Module, views: torch.Tensor, *, batch: int = 256
                    ) -> dict[nn.Module, tuple[torch.Tensor, ...]]:
    """Each Conv2d input's (channel mean, channel var, patch mean, patch var) on real `views`: per-batch
    statistics averaged with weights batch / N (G-VBSM ``ConvFeatureHook.pre_hook_fn``)."""
    convs = [m for m in teacher.modules() if isinstance(m, nn.Conv2d)]
    sums: dict[nn.Module, list[torch.Tensor]] = {}

    def hook(module, inputs, output):
        x = inputs[0]
        stats = (*channel_stats(x), *patch_stats(x))
        weight = len(x) / len(views)
        sums[module] = [total + value * weight for total, value in zip(sums.get(module, [0.0] * 4), stats)]

    handles = [conv.register_forward_hook(hook) for conv in convs]
    device = next(teacher.parameters()).device
    try:
        with torch.no_grad():
            for start in range(0, len(views), batch):
                teacher(views[start:start + batch].to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {module: tuple(values) for module, values in sums.items()}


class ConvStatsLoss:
    """Forward hooks on every Conv2d: its input's channel and patch statistics (moving, G-VBSM) against
    those on real data, one term per layer; a layer's term is dropped with probability `drop_rate`."""

    def __init__(self, targets: dict[nn.Module, tuple[torch.Tensor, ...]], moving: MovingStats,
                 drop_rate: float, rng: np.random.Generator, terms: list[torch.Tensor]) -> None:
        self.targets, self.moving, self.drop_rate, self.rng, self.terms = targets, moving, drop_rate, rng, terms
        self.handles = [module.register_forward_hook(self._hook) for module in targets]

    def _hook(self, module: nn.Conv2d, inputs, output) -> None:
        x = inputs[0]
        if self.rng.random() < self.drop_rate:
            self.terms.append(torch.zeros((), device=x.device))
            return
        stats = (*channel_stats(x), *patch_stats(x))
        smoothed = [self.moving((id(module), k), value) for k, value in enumerate(stats)]
        self.terms.append(sum(torch.linalg.vector_norm(target - value)
                              for target, value in zip(self.targets[module], smoothed)))

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def eigenvalue_diversity(view: torch.Tensor, targets: torch.Tensor, tau: float) -> torch.Tensor:
    """G-VBSM's data densification: per class in the batch, the eigenvalues l of the Gram matrix of its
    flattened images; KL(softmax(l / tau) || softmax(l)) summed over classes (the target detached)."""
    flat = view.reshape(len(view), -1)
    total = view.new_zeros(())
    for class_id in torch.unique(targets).tolist():
        members = flat[targets == class_id]
        if len(members) < 2:
            continue
        eigenvalues = torch.linalg.eigvalsh(members @ members.T).float()
        target = (eigenvalues / tau).softmax(dim=-1).detach()
        total = total + nnf.kl_div(eigenvalues.log_softmax(dim=-1), target, reduction="sum")
    return total


@dataclass(frozen=True)
class GvbsmSettings:
    """G-VBSM's settings besides the recover ones (docs/protocol.md §Distillation)."""

    momentum: float  # alpha: the moving statistics' weight on their old value
    drop_rate: float  # beta_dr: chance a conv layer's term is dropped in a step
    nuc_norm: float  # weight of the eigenvalue diversity term
    tau: float  # its temperature


class GvbsmObjective:
    """Step t reads backbone t mod K (G-VBSM's ``model_teacher[counter % len]``): its CE to the targets,
    the sum over its BatchNorm and Conv2d layers (first x multiplier) of the moving statistics' distances
    to the running / real-data statistics, and nuc_norm x the eigenvalue diversity term."""

    def __init__(self, teachers: Sequence[nn.Module], conv_targets: Sequence[dict], settings: GvbsmSettings,
                 first_multiplier: float, rng: np.random.Generator) -> None:
        self.teachers, self.settings, self.first_multiplier = list(teachers), settings, first_multiplier
        self.terms: list[list[torch.Tensor]] = []
        self.hooks = []
        for teacher, targets in zip(self.teachers, conv_targets):
            moving = MovingStats(settings.momentum)
            bn = BatchNormStatsLoss(teacher, moving=moving)
            conv = ConvStatsLoss(targets, moving, settings.drop_rate, rng, bn.terms)  # one list, in firing order
            self.hooks += [bn, conv]
            self.terms.append(bn)

    def loss(self, view, targets, iteration):
        index = iteration % len(self.teachers)
        ce = nnf.cross_entropy(self.teachers[index](view), targets)
        stats = self.terms[index].pop(self.first_multiplier)
        for other in self.terms:  # a backbone listed twice fires both its hook sets
            other.terms.clear()
        return ce, stats, self.settings.nuc_norm * eigenvalue_diversity(view, targets, self.settings.tau)

    def close(self) -> None:
        for hook in self.hooks:
            hook.close()


# --------------------------------------------------------------------------- LPLD


@torch.no_grad()
def class_bn_statistics(teacher: nn.Module, views: torch.Tensor, labels: np.ndarray, *, batch: int = 256
                        ) -> dict[int, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per class, each BatchNorm2d input's channel mean and biased variance over all of that class's real
    `views` (LPLD's class-wise running statistics, ``ClassAwareBatchNorm2d``, as population values)."""
    layers = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    device = next(teacher.parameters()).device
    labels = np.asarray(labels)
    out = {}
    for class_id in np.unique(labels).tolist():
        members = views[torch.from_numpy(labels == class_id)]
        sums = {layer: [0.0, 0.0, 0] for layer in layers}

        def hook(module, inputs, output):
            x = inputs[0].double().transpose(0, 1).reshape(inputs[0].shape[1], -1)
            total = sums[module]
            total[0], total[1], total[2] = total[0] + x.sum(1), total[1] + (x * x).sum(1), total[2] + x.shape[1]

        handles = [layer.register_forward_hook(hook) for layer in layers]
        try:
            for start in range(0, len(members), batch):
                teacher(members[start:start + batch].to(device))
        finally:
            for handle in handles:
                handle.remove()
        out[class_id] = [((s / n).float(), (q / n - (s / n) ** 2).float()) for s, q, n in sums.values()]
    return out


def lpld_objective(teacher: nn.Module, class_stats: dict, first_multiplier: float):
    """Class-wise batches (recover(class_wise=True)) matched to their class's BatchNorm statistics."""
    def make(targets: torch.Tensor, batch_index: int) -> StatsObjective:
        class_id = int(targets[0])
        if not bool((targets == class_id).all()):
            raise ValueError("LPLD recovers one class per batch: pass class_wise=True")
        return StatsObjective(teacher, first_multiplier, targets=class_stats[class_id])

    return make


# --------------------------------------------------------------------------- DWA


def directed_weight_adjustment(teacher: nn.Module, images: torch.Tensor, targets: torch.Tensor, *, rho: float,
                               steps: int) -> nn.Module:
    """A copy of `teacher` moved `steps` times by rho / steps along the normalised gradient of its CE on
    (images, targets): w <- w + (rho / K) g / ||g|| (DWA ``Perterb.first_step``, ``--steps``, ``--rho``).
    BatchNorm running statistics are buffers, not weights: they stay the original teacher's."""
    adjusted = copy.deepcopy(teacher).eval()
    params = [p for p in adjusted.parameters()]
    for p in params:
        p.requires_grad_(True)
    for _ in range(steps):
        grads = torch.autograd.grad(nnf.cross_entropy(adjusted(images), targets), params)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.add_(g * (rho / steps / (norm + 1e-12)))
    return adjusted.requires_grad_(False)


class DwaObjective(StatsObjective):
    """DWA: at the first step the teacher is replaced by its directed adjustment on that step's view of
    the batch (still its real starting images); BN terms use the original running statistics, the
    variance term weighted by `var_weight`."""

    def __init__(self, teacher: nn.Module, first_multiplier: float, *, rho: float, steps: int,
                 var_weight: float) -> None:
        self.original, self.rho, self.steps, self.var_weight = teacher, rho, steps, var_weight
        self.first_multiplier, self.stats = first_multiplier, None

    def loss(self, view, targets, iteration):
        if self.stats is None:
            self.teacher = directed_weight_adjustment(self.original, view.detach(), targets, rho=self.rho,
                                                      steps=self.steps)
            self.stats = BatchNormStatsLoss(self.teacher, var_weight=self.var_weight)
        return super().loss(view, targets, iteration)

    def close(self) -> None:
        if self.stats is not None:
            self.stats.close()


# --------------------------------------------------------------------------- RDED


def random_patches(images: np.ndarray, *, count: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """`count` RandomResizedCrop(size, ratio 1) patches of each uint8 NCHW image, float [0, 1].

    Output [N * count, C, size, size], image i's patches at rows i*count .. i*count+count-1.
    """
    pixels = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255)
    n, channels, height, width = pixels.shape
    params = crop_params(rng.random((n * count, DRAWS_PER_SAMPLE)), height=height, width=width,
                         scale=RDED_SCALE, ratio=(1.0, 1.0)).tolist()
    patches = torch.empty((n * count, channels, size, size))
    for row, (top, left, crop_h, crop_w) in enumerate(params):
        patches[row] = F.resized_crop(pixels[row // count], top, left, crop_h, crop_w, [size, size],
                                      interpolation=InterpolationMode.BILINEAR, antialias=True)
    return patches


@torch.no_grad()
def patch_losses(teacher: nn.Module, patches: torch.Tensor, class_id: int, *, image_size: int,
                 mean: Sequence[float], std: Sequence[float], device: torch.device | str,
                 batch: int = 1024) -> torch.Tensor:
    """Teacher cross-entropy of each [0, 1] patch to `class_id`, the patch normalised and zero-padded
    to the input size at the centre (RDED ``selector`` / ``pad``, synthesize/utils.py l.16-31, l.102-136)."""
    device = torch.device(device)
    teacher = teacher.to(device).eval()
    normalised = F.normalize(patches, list(mean), list(std))
    pad_h, pad_w = image_size - patches.shape[-2], image_size - patches.shape[-1]
    padded = nnf.pad(normalised, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    losses = []
    for start in range(0, len(padded), batch):
        logits = teacher(padded[start:start + batch].to(device))
        target = torch.full((len(logits),), class_id, dtype=torch.int64, device=device)
        losses.append(nnf.cross_entropy(logits, target, reduction="none").cpu())
    return torch.cat(losses) if losses else torch.zeros(0)


def stitch(patches: torch.Tensor, *, ipc: int, grid: int, image_size: int) -> torch.Tensor:
    """ipc images from ipc*grid^2 patches: tile k (row-major) of image i is patch k*ipc + i (RDED ``mix_images``)."""
    images = torch.zeros((ipc, patches.shape[1], image_size, image_size))
    for tile, (top, left, height, width) in enumerate(tile_boxes(grid, image_size)):
        block = patches[tile * ipc:(tile + 1) * ipc]
        if block.shape[-2:] != (height, width):
            block = F.resize(block, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=True)
        images[:, :, top:top + height, left:left + width] = block
    return images


def rded(teacher: nn.Module, images: np.ndarray, labels: np.ndarray, *, ipc: int, grid: int,
         candidates_per_image: int, seed: int, device: torch.device | str, mean: Sequence[float],
         std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """RDED: `ipc` uint8 NCHW images per class, classes ascending, stitched from the best real patches.

    For each class: `candidates_per_image` random crops per candidate image, each image keeps its
    lowest-loss crop, the ipc*grid^2 lowest-loss images' patches are stitched grid x grid
    (synthesize/main.py l.48-57). Class c draws its crops from seed (seed, c).
    """
    labels = np.asarray(labels, dtype=np.int64)
    image_size, need = images.shape[-1], ipc * grid * grid
    out_images, out_labels = [], []
    for class_id in np.unique(labels).tolist():
        pool = images[labels == class_id]
        if len(pool) < need:
            raise ValueError(f"RDED at IPC {ipc} with grid {grid} needs {need} candidate images of class "
                             f"{class_id}, got {len(pool)}: lower the IPC or raise distill.rded_pool")
        rng = np.random.default_rng([seed, class_id])
        patches = random_patches(pool, count=candidates_per_image, size=image_size // grid, rng=rng)
        losses = patch_losses(teacher, patches, class_id, image_size=image_size, mean=mean, std=std, device=device)
        losses = losses.view(len(pool), candidates_per_image)
        best_crop = losses.argmin(dim=1)
        best = losses[torch.arange(len(pool)), best_crop]
        order = torch.argsort(best, stable=True)[:need]
        kept = patches.view(len(pool), candidates_per_image, *patches.shape[1:])[order, best_crop[order]]
        stitched = stitch(kept, ipc=ipc, grid=grid, image_size=image_size)
        out_images.append(stitched.mul(255).round().to(torch.uint8).numpy())
        out_labels.append(np.full(ipc, class_id, dtype=np.int64))
    return np.concatenate(out_images), np.concatenate(out_labels)
