"""nn.Modules with open_clip-compatible signatures; each calls only the functional layer."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from vlkernels import _checks, _dist
from vlkernels.functional import (
    clip_logits,
    contrastive_loss,
    contrastive_loss_distributed,
    distill_clip_loss,
    progressive_alpha,
    sigmoid_loss,
    sigmoid_loss_distributed,
    soft_target_loss,
    soft_target_loss_distributed,
)
from vlkernels.ops.torch_utils import with_zero_gradient


class ClipLoss(nn.Module):
    """Drop-in for ``open_clip.loss.ClipLoss`` on the memory-efficient kernels.

    ``forward(image_features, text_features, logit_scale, logit_bias=None, output_dict=False)`` returns the
    loss, or ``{"contrastive_loss": loss}`` with ``output_dict=True``. ``logit_scale`` is already
    exponentiated. ``cache_labels`` is accepted for compatibility (no labels are materialised).

    With ``world_size > 1`` each rank passes its local [b, D] features and gets open_clip's per-rank loss
    and gradients for its ``local_loss`` / ``gather_with_grad`` combination (docs/design.md, "Distributed"):
    ``local_loss=False`` returns the full-batch loss, ``local_loss=True`` the rank's b rows and b columns
    over all B candidates; ``gather_with_grad=False`` treats the other ranks' features as constants.
    ``rank`` and ``world_size`` must match the process group (``group``, default the global one).

    ``logit_bias`` (a scalar) shifts every logit by the same constant, which the softmax losses do not
    see: the loss ignores it and a bias that requires grad gets its exact gradient, zeros (so that DDP
    does not report it as an unused parameter). ``get_logits`` is open_clip's, for code that calls it.
    ``use_horovod=True`` is rejected (use torch.distributed).
    """

    def __init__(
        self,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        use_horovod: bool = False,
        *,
        label_smoothing: float = 0.0,
        impl: str = "auto",
        group=None,
    ):
        super().__init__()
        if use_horovod:
            raise NotImplementedError(
                "use_horovod=True is not supported (open_clip itself has dropped horovod): launch with "
                "torchrun and use torch.distributed (rank / world_size from the process group)"
            )
        _checks.check_rank_args(rank, world_size)
        _checks.check_gather_flags(local_loss, gather_with_grad)
        _checks.check_label_smoothing(label_smoothing)
        _checks.check_impl(impl)
        self.group = group
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.label_smoothing = label_smoothing
        self.impl = impl

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict: bool = False):
        _checks.check_logit_bias(logit_bias)
        if self.world_size > 1:
            _dist.check_world(self.group, self.rank, self.world_size, type(self).__name__)
            loss = contrastive_loss_distributed(
                image_features,
                text_features,
                logit_scale,
                label_smoothing=self.label_smoothing,
                impl=self.impl,
                group=self.group,
                local_loss=self.local_loss,
                gather_with_grad=self.gather_with_grad,
            )
        else:
            loss = contrastive_loss(
                image_features,
                text_features,
                logit_scale,
                label_smoothing=self.label_smoothing,
                impl=self.impl,
            )
        loss = with_zero_gradient(loss, logit_bias)
        return {"contrastive_loss": loss} if output_dict else loss

    def get_logits(self, image_features, text_features, logit_scale, logit_bias=None):
        """open_clip's ``ClipLoss.get_logits``, materialised: O(B^2) memory (``functional.clip_logits``)."""
        _checks.check_logit_bias(logit_bias)
        distributed = self.world_size > 1
        if distributed:
            _dist.check_world(self.group, self.rank, self.world_size, type(self).__name__)
        return clip_logits(
            image_features,
            text_features,
            logit_scale,
            logit_bias,
            distributed=distributed,
            local_loss=self.local_loss,
            gather_with_grad=self.gather_with_grad,
            group=self.group,
        )


class SoftTargetLoss(nn.Module):
    """``soft_target_loss`` with a schedule for alpha that the caller steps once per optimiser step.

    ``alpha`` is a 0-d float32 buffer updated in place by ``step()`` (so a compiled graph sees a tensor,
    not a new constant); the step count is saved in the state dict. ``schedule(step) -> float`` defaults
    to ``progressive_alpha(step, total_steps, alpha_max)``.

    ``forward(image_features, text_features, logit_scale, teacher_image_features=None,
    teacher_text_features=None, teacher_logit_scale=None, soft_mask=None)`` returns the loss.

    ``local_loss``, ``gather_with_grad``, ``rank``, ``world_size``: open_clip's distributed flags, with
    ClipLoss's meaning (``world_size > 1``: each rank passes its local pairs).
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
        _checks.check_rank_args(rank, world_size)
        _checks.check_gather_flags(local_loss, gather_with_grad)
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad
        self.rank, self.world_size = rank, world_size
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
        kw = dict(
            teacher_image_features=teacher_image_features,
            teacher_text_features=teacher_text_features,
            teacher_logit_scale=teacher_logit_scale,
            soft_mask=soft_mask,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
            impl=self.impl,
        )
        if self.world_size > 1:
            _dist.check_world(self.group, self.rank, self.world_size, type(self).__name__)
            return soft_target_loss_distributed(
                image_features,
                text_features,
                logit_scale,
                self.alpha,
                group=self.group,
                local_loss=self.local_loss,
                gather_with_grad=self.gather_with_grad,
                **kw,
            )
        return soft_target_loss(image_features, text_features, logit_scale, self.alpha, **kw)

    def extra_repr(self) -> str:
        return f"alpha_max={self.alpha_max}, total_steps={self.total_steps}, num_steps={self.num_steps}"


class DistillClipLoss(ClipLoss):
    """Drop-in for ``open_clip.loss.DistillClipLoss`` on the memory-efficient kernels.

    ``forward(image_features, text_features, logit_scale, dist_image_features, dist_text_features,
    dist_logit_scale, output_dict=False)`` returns ``(contrastive_loss, distill_loss)`` or a dict with
    those keys, with open_clip's definitions: the CLIP loss of the student, and the mean over both
    directions of ``-(softmax(S_t) * log_softmax(S)).sum(1).mean()``, computed in one tiled pass
    (no B x B tensor). The teacher (``dist_*``, [B, D_t]) gets no gradient: it is detached, where
    open_clip back-propagates the distill loss into teacher features that require grad (a frozen teacher,
    as open_clip_train runs it under no_grad, is unaffected); a UserWarning says so once per module when
    they do. ``label_smoothing`` applies
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
        teacher = (dist_image_features, dist_text_features, dist_logit_scale)
        if not getattr(self, "_warned_teacher_grad", False) and any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in teacher
        ):
            self._warned_teacher_grad = True
            warnings.warn(
                "DistillClipLoss: the teacher features (dist_*) require grad, but vlkernels detaches them "
                "(open_clip would back-propagate the distill loss into the teacher); run the teacher under "
                "torch.no_grad() or detach its outputs",
                UserWarning,
                stacklevel=2,
            )
        distributed = self.world_size > 1
        if distributed:
            _dist.check_world(self.group, self.rank, self.world_size, type(self).__name__)
        contrastive, distill = distill_clip_loss(
            image_features,
            text_features,
            logit_scale,
            dist_image_features,
            dist_text_features,
            dist_logit_scale,
            label_smoothing=self.label_smoothing,
            impl=self.impl,
            group=self.group,
            distributed=distributed,
            local_loss=self.local_loss,
            gather_with_grad=self.gather_with_grad,
        )
        if output_dict:
            return {"contrastive_loss": contrastive, "distill_loss": distill}
        return contrastive, distill


class SigLipLoss(nn.Module):
    """Drop-in for ``open_clip.loss.SigLipLoss`` on the memory-efficient kernels.

    ``forward(image_features, text_features, logit_scale, logit_bias, output_dict=False)`` returns the
    loss, or ``{"contrastive_loss": loss}`` with ``output_dict=True``: ``-F.logsigmoid(labels * (
    logit_scale * I @ T.T + logit_bias)).sum() / B`` with ``labels = 2 * eye(B) - 1`` (``logit_scale``
    already exponentiated; ``logit_bias`` None means no bias). ``cache_labels`` is accepted for
    compatibility (no labels are materialised).

    With ``world_size > 1`` each rank passes its local [b, D] features and gets exactly open_clip's per-rank
    loss (its b images against all B texts, divided by b) and gradients (every rank's loss reaches every
    rank's texts) for every ``dist_impl`` open_clip accepts (None / "bidir", "shift", "reduce",
    "gather"): they differ only in how open_clip communicates. Here the texts always travel round a ring
    of P2P transfers (docs/design.md, "Sigmoid (SigLIP) loss"): per-rank memory O(b D), independent of
    the world size. ``rank`` and ``world_size`` must match the process group (``group``, default the
    global one).
    """

    def __init__(
        self,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        dist_impl: str | None = None,
        *,
        impl: str = "auto",
        group=None,
    ):
        super().__init__()
        _checks.check_rank_args(rank, world_size)
        self.dist_impl = _checks.check_dist_impl(dist_impl)
        _checks.check_impl(impl)
        self.cache_labels = cache_labels
        self.rank, self.world_size = rank, world_size
        self.impl, self.group = impl, group

    def forward(self, image_features, text_features, logit_scale, logit_bias, output_dict: bool = False):
        if self.world_size > 1:
            _dist.check_world(self.group, self.rank, self.world_size, type(self).__name__)
            loss = sigmoid_loss_distributed(
                image_features,
                text_features,
                logit_scale,
                logit_bias,
                impl=self.impl,
                group=self.group,
                per_rank=True,
            )
        else:
            loss = sigmoid_loss(image_features, text_features, logit_scale, logit_bias, impl=self.impl)
        return {"contrastive_loss": loss} if output_dict else loss

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, world_size={self.world_size}, dist_impl={self.dist_impl!r}, "
            f"impl={self.impl!r}"
        )


class CoCaLoss(ClipLoss):
    """Drop-in for ``open_clip.loss.CoCaLoss``: the contrastive part on the memory-efficient kernels, the
    captioning part torch's ``nn.CrossEntropyLoss(ignore_index=pad_id)`` as in open_clip.

    ``forward(image_features, text_features, logits, labels, logit_scale, output_dict=False)`` returns
    ``(clip_loss_weight * contrastive, caption_loss_weight * caption)`` or a dict with the keys
    ``contrastive_loss`` and ``caption_loss``; ``logits`` [B, L, V] are the caption logits and ``labels``
    [B, L] their targets. A zero ``clip_loss_weight`` skips the contrastive part (a 0 tensor, as open_clip).
    The distributed flags and ``label_smoothing`` (contrastive part only) are ``ClipLoss``'s.
    """

    def __init__(
        self,
        caption_loss_weight,
        clip_loss_weight,
        pad_id: int = 0,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        use_horovod: bool = False,
        *,
        label_smoothing: float = 0.0,
        impl: str = "auto",
        group=None,
    ):
        super().__init__(
            local_loss=local_loss,
            gather_with_grad=gather_with_grad,
            cache_labels=cache_labels,
            rank=rank,
            world_size=world_size,
            use_horovod=use_horovod,
            label_smoothing=label_smoothing,
            impl=impl,
            group=group,
        )
        self.clip_loss_weight = clip_loss_weight
        self.caption_loss_weight = caption_loss_weight
        self.pad_id = pad_id
        self.caption_loss = nn.CrossEntropyLoss(ignore_index=pad_id)

    def forward(self, image_features, text_features, logits, labels, logit_scale, output_dict: bool = False):
        if self.clip_loss_weight:
            clip_loss = self.clip_loss_weight * super().forward(image_features, text_features, logit_scale)
        else:
            clip_loss = torch.zeros((), dtype=torch.int64, device=logits.device)  # no host copy
        caption_loss = self.caption_loss(logits.permute(0, 2, 1), labels) * self.caption_loss_weight
        if output_dict:
            return {"contrastive_loss": clip_loss, "caption_loss": caption_loss}
        return clip_loss, caption_loss
