"""trainers.losses: KD and hard-label losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainers.losses import LABEL_MODES, compute_loss, hard_loss, kd_loss


def test_kd_loss_zero_for_identical_logits() -> None:
    logits = torch.randn(4, 5)
    assert kd_loss(logits, logits.clone(), temperature=20.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_positive_for_different_logits() -> None:
    assert kd_loss(torch.randn(4, 5), torch.randn(4, 5), temperature=2.0).item() > 0


def test_kd_loss_matches_hand_computation() -> None:
    student = [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]
    teacher = [[3.0, 2.0, 1.0], [1.0, 0.0, -1.0]]
    temperature = 2.0

    def softmax(row: list[float]) -> list[float]:
        exps = [math.exp(value / temperature) for value in row]
        return [value / sum(exps) for value in exps]

    expected = sum(
        p * (math.log(p) - math.log(q))
        for s_row, t_row in zip(student, teacher)
        for p, q in zip(softmax(t_row), softmax(s_row))
    ) / 2  # batchmean over 2 rows, no T**2 factor
    got = kd_loss(torch.tensor(student), torch.tensor(teacher), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_gradient_flows_to_student_only() -> None:
    student = torch.randn(2, 3, requires_grad=True)
    teacher = torch.randn(2, 3, requires_grad=True)
    kd_loss(student, teacher, 4.0).backward()
    assert student.grad is not None and teacher.grad is None


def test_hard_loss_soft_one_hot_equals_index_cross_entropy() -> None:
    logits = torch.randn(6, 4)
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    one_hot = F.one_hot(labels, 4).float()
    torch.testing.assert_close(hard_loss(logits, one_hot), F.cross_entropy(logits, labels))
    torch.testing.assert_close(hard_loss(logits, labels), F.cross_entropy(logits, labels))


def test_hard_loss_mixed_targets() -> None:
    logits = torch.randn(2, 3)
    mixed = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.5, 0.5]])
    expected = -(mixed * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(hard_loss(logits, mixed), expected)


def test_hard_loss_rejects_float_indices() -> None:
    with pytest.raises(ValueError):
        hard_loss(torch.randn(2, 3), torch.tensor([0.0, 1.0]))


def test_compute_loss_dispatch() -> None:
    assert LABEL_MODES == {"hard", "soft"}
    student, teacher = torch.randn(3, 4), torch.randn(3, 4)
    labels = torch.tensor([0, 1, 2])
    torch.testing.assert_close(compute_loss("hard", student, labels), F.cross_entropy(student, labels))
    torch.testing.assert_close(
        compute_loss("soft", student, labels, teacher_logits=teacher, temperature=3.0), kd_loss(student, teacher, 3.0)
    )
    with pytest.raises(ValueError, match="teacher_logits"):
        compute_loss("soft", student, labels)
    with pytest.raises(ValueError, match="label_mode"):
        compute_loss("fuzzy", student, labels)
