"""Training losses of the evaluation protocol (docs/protocol.md §Evaluation protocol): soft-label KD and hard-label CE.

Owns ``kd_loss`` (teacher distillation), ``hard_loss`` (cross-entropy on index or mixed
one-hot targets) and ``compute_loss``, which picks one of them from the label mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

from orchestrator.errors import ConfigError

LABEL_MODES = {"hard", "soft"}
DEFAULT_TEMPERATURE = 20.0

_soft_target_ce = SoftTargetCrossEntropy()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The protocol's KL(log_softmax(s/T) || softmax(t/T)): ``kl_div(..., reduction='batchmean')``.

    Mathematically KL(p_teacher || p_student) with both at temperature T, summed over classes
    and averaged over the batch.

    Exactly the protocol's loss (SRe2L-style validation): there is deliberately NO extra T**2
    factor (Hinton-style KD multiplies by T**2, so at T = 20 these gradients are 1/400 of that);
    the protocol's published results use this form. Teacher logits are detached. Computed in float32.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    # log_target=True is the same quantity as passing softmax(t/T), computed more stably.
    return F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)


def hard_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy: class indices (1-D integer) or mixed one-hot rows (2-D, from mixup/cutmix)."""
    if targets.ndim == 1 and not targets.is_floating_point():
        return F.cross_entropy(logits, targets)
    if targets.ndim == 2 and targets.is_floating_point():
        return _soft_target_ce(logits, targets.to(logits.dtype))
    raise ValueError(
        f"targets must be 1-D class indices or 2-D float one-hot rows, got {tuple(targets.shape)} {targets.dtype}"
    )


def compute_loss(
    label_mode: str,
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
) -> torch.Tensor:
    """The protocol loss for ``label_mode``: "hard" -> hard_loss(targets), "soft" -> kd_loss(teacher).

    In soft mode ``targets`` are unused (the teacher's logits on the same augmented batch are the labels).
    """
    if label_mode == "hard":
        return hard_loss(student_logits, targets)
    if label_mode == "soft":
        if teacher_logits is None:
            raise ValueError("label_mode 'soft' needs teacher_logits")
        return kd_loss(student_logits, teacher_logits, temperature)
    raise ConfigError(f"unknown label_mode {label_mode!r}; expected one of {sorted(LABEL_MODES)}")
