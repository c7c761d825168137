"""Soft-target distillation losses (Progressive Self-Distillation, Andonian et al., CVPR 2022).

``soft_target_loss`` is the functional entry point; ``SoftTargetLoss`` holds a progressive schedule;
``DistillClipLoss`` is a drop-in for open_clip's. All run in O(B) extra memory on the ``"triton"`` and
``"torch"`` implementations (see ``vlkernels.functional`` for ``impl``); ``"naive"`` materialises
the B x B logits and is the parity baseline.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import nn

from vlkernels import _checks
from vlkernels.functional import resolve_impl
from vlkernels.nn import ClipLoss

_TEACHER_NAMES = ("teacher_image_features", "teacher_text_features", "teacher_logit_scale")


def _backend(impl: str):
    if impl == "triton":
        from vlkernels.ops.soft_target_triton import TritonSoftTargetBackend

        return TritonSoftTargetBackend()
    from vlkernels.ops.soft_target_torch import TorchSoftTargetBackend

    return TorchSoftTargetBackend()


def _check_alpha(alpha, ref: torch.Tensor) -> torch.Tensor:
    """A detached 0-d float32 tensor on ``ref``'s device (a tensor's value is checked only on CPU: no host
    sync on accelerators)."""
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1:
            raise ValueError(f"alpha must be a scalar (0-d tensor), got shape {tuple(alpha.shape)}")
        if not alpha.is_floating_point():
            raise TypeError(f"alpha must be a floating-point tensor, got {alpha.dtype}")
        if alpha.device.type == "cpu":
            value = float(alpha)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"alpha must be in [0, 1], got {value}")
        return alpha.detach().reshape(()).to(device=ref.device, dtype=torch.float32)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a float or a 0-d tensor, got {type(alpha).__name__}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return torch.tensor(float(alpha), dtype=torch.float32, device=ref.device)


def _check_teacher(image: torch.Tensor, t_image, t_text, t_scale):
    """None for the self teacher, else (t_image, t_text, detached 0-d float32 scale)."""
    given = [x is not None for x in (t_image, t_text, t_scale)]
    if not any(given):
        return None
    if not all(given):
        have = [n for n, g in zip(_TEACHER_NAMES, given, strict=True) if g]
        missing = [n for n, g in zip(_TEACHER_NAMES, given, strict=True) if not g]
        raise ValueError(
            f"the teacher arguments go together: got {', '.join(have)} but not {', '.join(missing)} "
            "(pass all three for a separate teacher, none for self-distillation)"
        )
    _checks.check_features(t_image, t_text, names=_TEACHER_NAMES[:2])
    if t_image.shape[0] != image.shape[0]:
        raise ValueError(
            f"teacher_image_features {tuple(t_image.shape)} must have the student's batch size "
            f"{image.shape[0]}"
        )
    if t_image.device != image.device:
        raise ValueError(
            f"teacher features ({t_image.device}) must be on the student's device ({image.device})"
        )
    scale = _checks.scale_tensor(t_scale, image, name="teacher_logit_scale").detach()
    return t_image.detach(), t_text.detach(), scale


def _check_soft_mask(soft_mask, image: torch.Tensor):
    if soft_mask is None:
        return None
    if not isinstance(soft_mask, torch.Tensor):
        raise TypeError(f"soft_mask must be a bool tensor, got {type(soft_mask).__name__}")
    if soft_mask.dtype != torch.bool:
        raise TypeError(f"soft_mask must have dtype torch.bool, got {soft_mask.dtype}")
    if soft_mask.shape != (image.shape[0],):
        raise ValueError(
            f"soft_mask must have shape ({image.shape[0]},) (one per pair), got {tuple(soft_mask.shape)}"
        )
    if soft_mask.device != image.device:
        raise ValueError(f"soft_mask ({soft_mask.device}) must be on the features' device ({image.device})")
    return soft_mask


def soft_target_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    alpha: torch.Tensor | float,
    *,
    teacher_image_features: torch.Tensor | None = None,
    teacher_text_features: torch.Tensor | None = None,
    teacher_logit_scale: torch.Tensor | float | None = None,
    soft_mask: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    impl: str = "auto",
    group=None,
    gather: bool = False,
) -> torch.Tensor:
    """Symmetric CLIP loss against soft targets (PSD) without materialising the B x B logits.

    Image->text targets of pair i: ``Q_i = (1 - a_i) * H_i + a_i * softmax(S_t[i, :])``; text->image
    uses the column softmax ``softmax(S_t[:, j])``. ``H`` is the one-hot target, label-smoothed as in
    torch's ``cross_entropy``; ``a_i = alpha`` for pairs in ``soft_mask`` (all when None), else 0.

    Args:
        image_features, text_features: [B, D] student features (float32, bfloat16 or float16),
            L2-normalised by the caller; ``S = logit_scale * I @ T.T``.
        logit_scale: already exponentiated scale, a float or 0-d tensor (gets its gradient).
        alpha: float or 0-d tensor in [0, 1]; a tensor lets a schedule change it every step without
            recompiling. It is a constant of the loss (no gradient). alpha = 0 is ``contrastive_loss``.
        teacher_image_features, teacher_text_features, teacher_logit_scale: all three or none. None:
            self-distillation, ``S_t = S.detach()``. Else ``S_t = teacher_logit_scale * I_t @ T_t.T``
            with [B, D_t] teacher features (D_t may differ from D; any float dtype). The teacher never
            receives a gradient.
        soft_mask: optional bool [B]: the pairs that get soft targets; the others keep hard targets.
        label_smoothing: in [0, 1], applied to the hard part ``H`` only.
        reduction: "mean" (the average of the two directions) or "sum" (their sum).
        impl: "auto" | "triton" | "torch" | "naive".
        gather: the batch is split across the processes of ``group`` (None: the default group), each
            passing its local pairs (and teacher features and soft_mask); every rank returns the loss of
            the whole batch, the teacher softmax running over all B pairs, with
            ``contrastive_loss(gather=True)``'s gradients (see ``vlkernels.distributed``).

    Returns:
        0-d float32 tensor. Naive equivalent: ``0.5 * (F.cross_entropy(S, Q_row) +
        F.cross_entropy(S.T, Q_col))`` with the B x B probability targets above
        (``vlkernels.reference.soft_target_loss_naive``).
    """
    if gather:
        from vlkernels import distributed

        return distributed.soft_target_checked(
            image_features, text_features, logit_scale, alpha, teacher_image_features,
            teacher_text_features, teacher_logit_scale, soft_mask, label_smoothing=label_smoothing,
            reduction=reduction, impl=impl, group=group, local_loss=False, gather_with_grad=True,
        )  # fmt: skip
    if group is not None:
        raise ValueError("group is used only with gather=True (pass gather=True to split the batch)")
    _checks.check_features(image_features, text_features)
    eps = _checks.check_label_smoothing(label_smoothing)
    factor = _checks.reduction_factor(reduction)
    scale = _checks.scale_tensor(logit_scale, image_features)
    alpha_t = _check_alpha(alpha, image_features)
    teacher = _check_teacher(
        image_features, teacher_image_features, teacher_text_features, teacher_logit_scale
    )
    mask = _check_soft_mask(soft_mask, image_features)
    impl = resolve_impl(impl, image_features.device)
    if impl == "naive":
        from vlkernels.reference import soft_target_loss_naive

        t_args = (None, None, None) if teacher is None else teacher
        return soft_target_loss_naive(
            image_features, text_features, scale, alpha_t, *t_args, mask, eps, reduction
        )
    from vlkernels.ops.soft_target import SoftTargetFunction

    soft_w = alpha_t.expand(image_features.shape[0])
    if mask is not None:
        soft_w = soft_w * mask
    hard_w = 1.0 - soft_w
    t_args = (None, None, None) if teacher is None else teacher
    hard, soft = SoftTargetFunction.apply(
        image_features, text_features, scale, hard_w, soft_w, *t_args, eps, factor, _backend(impl)
    )
    return hard + soft


def progressive_alpha(step, total_steps: int, alpha_max: float):
    """The default progressive schedule: ``alpha_max * clamp(step / total_steps, 0, 1)``.

    A linear ramp from 0 at step 0 to ``alpha_max`` at ``total_steps`` and after (PSD's progressive
    self-distillation). ``step`` may be an int (returns a float) or a tensor (returns a tensor).
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    if isinstance(alpha_max, bool) or not isinstance(alpha_max, numbers.Real):
        raise TypeError(f"alpha_max must be a float, got {type(alpha_max).__name__}")
    if not 0.0 <= float(alpha_max) <= 1.0:
        raise ValueError(f"alpha_max must be in [0, 1], got {alpha_max}")
    if isinstance(step, torch.Tensor):
        return (step.float() / total_steps).clamp(0.0, 1.0) * float(alpha_max)
    if isinstance(step, bool) or not isinstance(step, numbers.Real) or not math.isfinite(step):
        raise TypeError(f"step must be an int or a tensor, got {step!r}")
    return float(alpha_max) * min(1.0, max(0.0, step / total_steps))


class SoftTargetLoss(nn.Module):
    """``soft_target_loss`` with a schedule for alpha that the caller steps once per optimiser step.

    ``alpha`` is a 0-d float32 buffer updated in place by ``step()`` (so a compiled graph sees a tensor,
    not a new constant); the step count is saved in the state dict. ``schedule(step) -> float`` defaults
    to ``progressive_alpha(step, total_steps, alpha_max)``.

    ``forward(image_features, text_features, logit_scale, teacher_image_features=None,
    teacher_text_features=None, teacher_logit_scale=None, soft_mask=None)`` returns the loss.

    ``local_loss``, ``gather_with_grad``, ``rank``, ``world_size``: open_clip's distributed flags, with
    ClipLoss's meaning (``world_size > 1``: each rank passes its local pairs; see ``vlkernels.distributed``).
    """

    def __init__(
        self,
        alpha_max: float,
        total_steps: int,
        *,
        schedule: Callable[[int], float] | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        impl: str = "auto",
        local_loss: bool = False,
        gather_with_grad: bool = False,
        rank: int = 0,
        world_size: int = 1,
        group=None,
    ):
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got {rank=}, {world_size=}")
        self.local_loss, self.gather_with_grad, self.rank, self.world_size = (
            local_loss,
            gather_with_grad,
            rank,
            world_size,
        )
        self.group = group
        progressive_alpha(0, total_steps, alpha_max)
        _checks.check_label_smoothing(label_smoothing)
        _checks.reduction_factor(reduction)
        _checks.check_impl(impl)
        self.alpha_max, self.total_steps = float(alpha_max), int(total_steps)
        self.schedule = schedule
        self.label_smoothing, self.reduction, self.impl = label_smoothing, reduction, impl
        self.num_steps = 0
        self.register_buffer("alpha", torch.tensor(self._alpha_at(0), dtype=torch.float32))

    def _alpha_at(self, step: int) -> float:
        if self.schedule is not None:
            value = float(self.schedule(step))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"schedule({step}) returned {value}, outside [0, 1]")
            return value
        return progressive_alpha(step, self.total_steps, self.alpha_max)

    def step(self) -> float:
        """Advance the schedule by one step; returns the new alpha."""
        self.num_steps += 1
        value = self._alpha_at(self.num_steps)
        self.alpha.fill_(value)
        return value

    def get_extra_state(self):
        return {"num_steps": self.num_steps}

    def set_extra_state(self, state) -> None:
        self.num_steps = int(state["num_steps"])

    def forward(
        self,
        image_features,
        text_features,
        logit_scale,
        teacher_image_features=None,
        teacher_text_features=None,
        teacher_logit_scale=None,
        soft_mask=None,
    ):
        if self.world_size > 1:
            from vlkernels import distributed

            distributed.check_world(self.group, self.rank, self.world_size, type(self).__name__)
            return distributed.soft_target_checked(
                image_features, text_features, logit_scale, self.alpha, teacher_image_features,
                teacher_text_features, teacher_logit_scale, soft_mask, label_smoothing=self.label_smoothing,
                reduction=self.reduction, impl=self.impl, group=self.group, local_loss=self.local_loss,
                gather_with_grad=self.gather_with_grad,
            )  # fmt: skip
        return soft_target_loss(
            image_features,
            text_features,
            logit_scale,
            self.alpha,
            teacher_image_features=teacher_image_features,
            teacher_text_features=teacher_text_features,
            teacher_logit_scale=teacher_logit_scale,
            soft_mask=soft_mask,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
            impl=self.impl,
        )

    def extra_repr(self) -> str:
        return f"alpha_max={self.alpha_max}, total_steps={self.total_steps}, num_steps={self.num_steps}"


def _distill_clip(image, text, scale, t_image, t_text, t_scale, eps: float, impl: str):
    _checks.check_features(image, text)
    scale = _checks.scale_tensor(scale, image)
    teacher = _check_teacher(image, t_image, t_text, t_scale)
    if teacher is None:
        raise ValueError("dist_image_features, dist_text_features and dist_logit_scale are required")
    impl = resolve_impl(impl, image.device)
    if impl == "naive":
        from vlkernels.reference import distill_clip_loss_naive

        return distill_clip_loss_naive(image, text, scale, *teacher, eps)
    from vlkernels.ops.soft_target import SoftTargetFunction

    ones = torch.ones(image.shape[0], dtype=torch.float32, device=image.device)
    return SoftTargetFunction.apply(image, text, scale, ones, ones, *teacher, eps, 1.0, _backend(impl))


class DistillClipLoss(ClipLoss):
    """Drop-in for ``open_clip.loss.DistillClipLoss`` on the memory-efficient kernels.

    ``forward(image_features, text_features, logit_scale, dist_image_features, dist_text_features,
    dist_logit_scale, output_dict=False)`` returns ``(contrastive_loss, distill_loss)`` or a dict with
    those keys, with open_clip's definitions: the CLIP loss of the student, and the mean over both
    directions of ``-(softmax(S_t) * log_softmax(S)).sum(1).mean()``, computed in one tiled pass
    (no B x B tensor). The teacher (``dist_*``, [B, D_t]) gets no gradient. ``label_smoothing`` applies
    to the contrastive part only. With ``world_size > 1``: open_clip's per-rank values and gradients for
    its ``local_loss`` / ``gather_with_grad`` flags, as ``ClipLoss``.
    """

    def forward(
        self,
        image_features,
        text_features,
        logit_scale,
        dist_image_features,
        dist_text_features,
        dist_logit_scale,
        output_dict: bool = False,
    ):
        if self.world_size > 1:
            from vlkernels import distributed

            distributed.check_world(self.group, self.rank, self.world_size, type(self).__name__)
            contrastive, distill = distributed.distill_clip_checked(
                image_features, text_features, logit_scale, dist_image_features, dist_text_features,
                dist_logit_scale, label_smoothing=self.label_smoothing, impl=self.impl, group=self.group,
                local_loss=self.local_loss, gather_with_grad=self.gather_with_grad,
            )  # fmt: skip
            if output_dict:
                return {"contrastive_loss": contrastive, "distill_loss": distill}
            return contrastive, distill
        contrastive, distill = _distill_clip(
            image_features,
            text_features,
            logit_scale,
            dist_image_features,
            dist_text_features,
            dist_logit_scale,
            _checks.check_label_smoothing(self.label_smoothing),
            self.impl,
        )
        if output_dict:
            return {"contrastive_loss": contrastive, "distill_loss": distill}
        return contrastive, distill


__all__ = ["DistillClipLoss", "SoftTargetLoss", "progressive_alpha", "soft_target_loss"]
