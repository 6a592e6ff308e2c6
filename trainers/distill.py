"""Dataset-distillation generators in pure torch: SRe2L / CDA recovery and RDED patch selection.

Owns the image-making half of docs/protocol.md §Distillation; the caching, the teacher and the
benchmark schema live in ``orchestrator.distill_job``. Everything here is device-agnostic (CPU or
CUDA), seeded (one numpy generator per recover batch or per class, one torch generator for the
initial noise) and free of Ray and MLflow.

- ``recover``: SRe2L's recover step (Yin et al., NeurIPS 2023): images optimised from Gaussian
  noise with Adam so that a frozen BatchNorm teacher classifies them as their target class while
  the statistics of every BatchNorm2d input match that layer's running statistics; one random
  resized crop + flip + roll of the whole batch per step, cosine lr, pixels clipped to the valid
  range in normalised space. With ``curriculum`` (``cda_min_scale``) it is CDA (Yin & Shen, TMLR
  2024): the crop's lower scale bound anneals from 1 to its final value.
- ``rded``: RDED (Sun et al., CVPR 2024): random resized crops of real images scored by the
  teacher's cross-entropy to their class, the lowest kept and stitched grid x grid per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


class BatchNormStatsLoss:
    """Forward hooks on every BatchNorm2d: ||mu_batch - running_mean||_2 + ||var_batch - running_var||_2.

    SRe2L's ``BNFeatureHook`` (recover/utils.py l.92-101): statistics of the layer's input over
    (N, H, W), biased variance.
    """

    def __init__(self, model: nn.Module) -> None:
        self.terms: list[torch.Tensor] = []
        layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        if not layers:
            raise ValueError("SRe2L/CDA need a teacher with BatchNorm2d layers (e.g. convnet3_bn_w32)")
        self.handles = [layer.register_forward_hook(self._hook) for layer in layers]

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        mean = x.mean(dim=(0, 2, 3))
        var = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).var(dim=1, unbiased=False)
        self.terms.append(torch.linalg.vector_norm(module.running_var - var)
                          + torch.linalg.vector_norm(module.running_mean - mean))

    def pop(self, first_multiplier: float) -> torch.Tensor:
        """The weighted sum over layers of the last forward pass (the first layer x first_multiplier)."""
        terms, self.terms = self.terms, []
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


def _recover_batch(teacher: nn.Module, targets: torch.Tensor, settings: RecoverSettings, rng: np.random.Generator,
                   noise: torch.Tensor, curriculum: Callable[[int], float] | None,
                   log: dict[str, np.ndarray]) -> np.ndarray:
    device = targets.device
    mean, std = _channel_view(settings.mean, device), _channel_view(settings.std, device)
    low, high = (0 - mean) / std, (1 - mean) / std
    inputs = noise.to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([inputs], lr=settings.lr, betas=ADAM_BETAS, eps=1e-8)
    bn_loss = BatchNormStatsLoss(teacher)
    try:
        for iteration in range(settings.iterations):
            for group in optimizer.param_groups:  # SRe2L lr_cosine_policy, no warm-up
                group["lr"] = 0.5 * (1 + math.cos(math.pi * iteration / settings.iterations)) * settings.lr
            min_scale = curriculum(iteration) if curriculum is not None else settings.crop_scale[0]
            shifts = tuple(int(s) for s in rng.integers(0, settings.jitter + 1, size=2))
            view = _jittered(inputs, rng.random((1, DRAWS_PER_SAMPLE)), shifts, min_scale, settings.crop_scale[1])
            optimizer.zero_grad(set_to_none=True)
            ce = nnf.cross_entropy(teacher(view), targets)
            bn = bn_loss.pop(settings.first_bn_multiplier)
            (ce + settings.r_bn * bn).backward()
            optimizer.step()
            with torch.no_grad():
                inputs.copy_(torch.maximum(torch.minimum(inputs, high), low))
            log["ce_loss"][iteration] += ce.item()
            log["bn_loss"][iteration] += bn.item()
    finally:
        bn_loss.close()
    return to_uint8(inputs.detach(), mean, std)


def recover(teacher: nn.Module, class_ids: Sequence[int], *, settings: RecoverSettings, seed: int,
            device: torch.device | str, curriculum: Callable[[int], float] | None = None
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """SRe2L recover (CDA with `curriculum`): one uint8 NCHW image per entry of `class_ids`, in order.

    Images are optimised `settings.batch` at a time; batch b draws its noise and its crops from
    seeds (seed, b), so the same seed gives the same bytes on one device. Returns the images and
    the per-iteration losses {'bn_loss', 'ce_loss'}, averaged over batches (bn_loss without r_bn).
    """
    device = torch.device(device)
    teacher = teacher.to(device).eval().requires_grad_(False)
    targets = torch.as_tensor(list(class_ids), dtype=torch.int64)
    shape = (settings.in_chans, settings.image_size, settings.image_size)
    log = {"bn_loss": np.zeros(settings.iterations), "ce_loss": np.zeros(settings.iterations)}
    images = []
    starts = range(0, len(targets), settings.batch)
    for batch_index, start in enumerate(starts):
        chunk = targets[start:start + settings.batch]
        noise = torch.randn((len(chunk), *shape), generator=torch.Generator().manual_seed(seed * 1_000_003 + batch_index))
        rng = np.random.default_rng([seed, batch_index])
        images.append(_recover_batch(teacher, chunk.to(device), settings, rng, noise, curriculum, log))
    batches = max(len(starts), 1)
    log = {name: values / batches for name, values in log.items()}
    return np.concatenate(images) if images else np.zeros((0, *shape), np.uint8), log


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
