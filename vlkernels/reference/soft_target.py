"""Naive soft-target (PSD) losses: the full B x B student and teacher logits in fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _wide(x: torch.Tensor) -> torch.Tensor:
    """fp32, or float64 for float64 inputs (the tests' exact reference)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _pair_weights(alpha, soft_mask, batch: int, device, dtype) -> torch.Tensor:
    a = torch.as_tensor(alpha, dtype=dtype, device=device).detach().reshape(()).expand(batch)
    if soft_mask is not None:
        a = torch.where(soft_mask, a, torch.zeros_like(a))
    return a


def soft_target_loss_naive(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    alpha: torch.Tensor | float,
    teacher_image_features: torch.Tensor | None = None,
    teacher_text_features: torch.Tensor | None = None,
    teacher_logit_scale: torch.Tensor | float | None = None,
    soft_mask: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """``0.5 * (CE(S, Q_row) + CE(S.T, Q_col))`` with probability targets, everything B x B in fp32.

    ``S = logit_scale * I @ T.T``; the teacher logits ``S_t`` are ``S.detach()`` or the teacher's own
    ``teacher_logit_scale * I_t @ T_t.T`` (detached). Row i of ``Q_row`` is
    ``(1 - a_i) * H_i + a_i * softmax(S_t[i, :])`` and row j of ``Q_col`` is
    ``(1 - a_j) * H_j + a_j * softmax(S_t[:, j])``, where ``H`` is the label-smoothed one-hot target and
    ``a_i = alpha`` where ``soft_mask`` is True (everywhere when it is None), else 0.
    ``reduction="sum"`` returns the sum of the two directional means (2x the mean).
    """
    logits = logit_scale * (_wide(image_features) @ _wide(text_features).T)
    batch = logits.shape[0]
    if teacher_image_features is None:
        t_logits = logits.detach()
    else:
        t_scale = torch.as_tensor(teacher_logit_scale, dtype=logits.dtype, device=logits.device).detach()
        t_logits = t_scale * (_wide(teacher_image_features) @ _wide(teacher_text_features).T).detach()
    a = _pair_weights(alpha, soft_mask, batch, logits.device, logits.dtype)[:, None]
    hard = torch.full_like(logits, label_smoothing / batch).detach()
    hard.diagonal().add_(1.0 - label_smoothing)
    q_row = (1.0 - a) * hard + a * t_logits.softmax(dim=1)
    q_col = (1.0 - a) * hard + a * t_logits.T.softmax(dim=1)
    loss_i = F.cross_entropy(logits, q_row)
    loss_t = F.cross_entropy(logits.T, q_col)
    total = loss_i + loss_t
    return total if reduction == "sum" else 0.5 * total


def distill_clip_loss_naive(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    dist_image_features: torch.Tensor,
    dist_text_features: torch.Tensor,
    dist_logit_scale: torch.Tensor | float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """open_clip's ``DistillClipLoss`` (world_size 1) in fp32, the teacher detached:
    ``(contrastive_loss, distill_loss)``."""
    logits = logit_scale * (_wide(image_features) @ _wide(text_features).T)
    t_scale = torch.as_tensor(dist_logit_scale, dtype=logits.dtype, device=logits.device).detach()
    t_logits = t_scale * (_wide(dist_image_features) @ _wide(dist_text_features).T).detach()
    labels = torch.arange(logits.shape[0], device=logits.device)
    contrastive = 0.5 * (
        F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        + F.cross_entropy(logits.T, labels, label_smoothing=label_smoothing)
    )

    def dist(teacher, student):
        return -(teacher.softmax(dim=1) * student.log_softmax(dim=1)).sum(dim=1).mean(dim=0)

    distill = 0.5 * (dist(t_logits, logits) + dist(t_logits.T, logits.T))
    return contrastive, distill
