"""Functional entry points: every public loss function as check -> resolve -> apply.

Each function validates its arguments (``_checks``), resolves ``impl`` (``_dispatch``: "auto" | "triton" |
"torch" | "naive") and applies the single-process autograd Function, the gathered one (``gather=True``,
torch.distributed) or the naive reference. The ``*_distributed`` functions take open_clip's two
distributed flags (``local_loss``, ``gather_with_grad``) for the nn modules.
"""

from __future__ import annotations

import math
import numbers

import torch

from vlkernels import _checks, _dist
from vlkernels._dispatch import contrastive_backend, resolve_impl, sigmoid_backend, soft_target_backend
from vlkernels.ops.contrastive import ContrastiveLossFunction, ContrastiveParams, GatheredContrastiveFunction
from vlkernels.ops.sigmoid import RingSigmoidFunction, SigmoidLossFunction, SigmoidParams
from vlkernels.ops.soft_target import (
    GatheredSoftTargetFunction,
    SoftTargetFunction,
    SoftTargetParams,
    soft_weights,
)
from vlkernels.ops.torch_utils import autocast_off
from vlkernels.reference import (
    contrastive_loss_naive,
    contrastive_loss_open_clip,
    distill_clip_loss_naive,
    distill_clip_open_clip,
    open_clip_gather,
    sigmoid_loss_naive,
    sigmoid_loss_open_clip,
    soft_target_loss_gathered,
    soft_target_loss_naive,
)

_NO_GROUP = "group is used only with gather=True (pass gather=True to split the batch)"
_DISTILL_TEACHER = ("dist_image_features", "dist_text_features", "dist_logit_scale")


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    impl: str = "auto",
    group=None,
    gather: bool = False,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) loss without materialising the B x B logits.

    Args:
        image_features, text_features: [B, D], same dtype (float32, bfloat16 or float16) and device;
            L2-normalised by the caller, as in open_clip. Any strides.
        logit_scale: already exponentiated scale (open_clip passes ``logit_scale.exp()``): a float or a
            0-d tensor; when it requires grad it receives its gradient.
        label_smoothing: in [0, 1], torch's ``cross_entropy`` semantics.
        reduction: "mean" (the average of the two directions) or "sum" (their sum, i.e. 2x the mean).
        impl: "auto" | "triton" | "torch" | "naive" (see the module docstring).
        gather: the batch is split across the processes of ``group`` (an initialised torch.distributed
            process group; None: the default one), each passing its local [b, D] pairs (the same b, D
            and dtype everywhere). Every rank returns the loss of the whole batch (B = world * b), and
            the gradients are those of open_clip's ``gather_with_grad=True``: rank r's features get
            world * dL/df_r (so that DDP's gradient average is the single-process full-batch gradient)
            and ``logit_scale`` gets dL/ds. Block-row scheme (docs/design.md): only the texts
            are all-gathered, 8 b B D FLOPs per rank, no b x B tensor. ``impl="naive"`` gathers both
            modalities with autograd and materialises the B x B logits, as open_clip does.

    Returns:
        0-d float32 tensor. Naive equivalent: ``S = logit_scale * I.float() @ T.float().T;
        0.5 * (F.cross_entropy(S, arange(B)) + F.cross_entropy(S.T, arange(B)))``.
        Non-finite inputs give a non-finite loss (never a finite wrong value).
    """
    if _checks.check_flag(gather, "gather"):
        return contrastive_loss_distributed(
            image_features,
            text_features,
            logit_scale,
            label_smoothing=label_smoothing,
            reduction=reduction,
            impl=impl,
            group=group,
            local_loss=False,
            gather_with_grad=True,
        )
    if group is not None:
        raise ValueError(_NO_GROUP)
    _checks.check_features(image_features, text_features)
    eps = _checks.check_label_smoothing(label_smoothing)
    factor = _checks.reduction_factor(reduction)
    scale = _checks.scale_tensor(logit_scale, image_features)
    impl = resolve_impl(impl, image_features.device)
    if impl == "naive":
        with autocast_off(image_features):
            return contrastive_loss_naive(image_features, text_features, scale, eps, reduction)
    _no_func_transforms(impl)
    params = ContrastiveParams(eps, factor, contrastive_backend(impl))
    return ContrastiveLossFunction.apply(image_features, text_features, scale, params)


def _no_func_transforms(impl: str) -> None:
    """The O(B) Functions define no vmap rule and no setup_context: say so instead of torch's message."""
    if torch._C._are_functorch_transforms_active():
        raise RuntimeError(
            f"impl={impl!r} does not support torch.func transforms (grad, vmap, jacrev, ...): its autograd "
            "Function is first-order only; use impl='naive' under torch.func, or plain autograd "
            "(loss.backward() / torch.autograd.grad)"
        )


def _agree(group, impl, image, scale, eps, factor, teacher, alpha, mask, local_loss, with_grad) -> None:
    """Every rank must pass the same shapes, dtypes, values of the scalar arguments and settings: one
    small all-gather checks them (a clear error on every rank instead of a hang or a wrong loss)."""
    _dist.world(group)
    fields = {
        "impl": _dist.IMPL_CODES[impl],
        "local batch size": image.shape[0],
        "feature width D": image.shape[1],
        "feature dtype": _dist.DTYPE_CODES[image.dtype],
        "label_smoothing": _dist.float_bits(eps),
        "reduction factor": _dist.float_bits(factor),
        "local_loss": int(local_loss),
        "gather_with_grad": int(with_grad),
        "logit_scale": scale,
        "logit_scale requires grad": int(scale.requires_grad),
        "teacher given": int(teacher is not None),
        "teacher width D": 0 if teacher is None else teacher[0].shape[1],
        "teacher dtype": -1 if teacher is None else _dist.DTYPE_CODES[teacher[0].dtype],
        "teacher_logit_scale": 0 if teacher is None else teacher[2],
        "alpha": 0 if alpha is None else alpha,
        "soft_mask given": int(mask is not None),
    }
    _dist.check_ranks(group, image.device, fields)


def contrastive_loss_distributed(
    image_features,
    text_features,
    logit_scale,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    impl: str = "auto",
    group=None,
    local_loss: bool = False,
    gather_with_grad: bool = True,
) -> torch.Tensor:
    """The contrastive loss of a batch split across the ranks of ``group``, with open_clip's per-rank
    semantics for its (local_loss, gather_with_grad) flags (docs/design.md, "Distributed")."""
    _checks.check_features(image_features, text_features)
    eps = _checks.check_label_smoothing(label_smoothing)
    factor = _checks.reduction_factor(reduction)
    scale = _checks.scale_tensor(logit_scale, image_features)
    impl = resolve_impl(impl, image_features.device)
    _agree(group, impl, image_features, scale, eps, factor, None, None, None, local_loss, gather_with_grad)
    if impl == "naive":
        with autocast_off(image_features):
            return contrastive_loss_open_clip(
                image_features,
                text_features,
                scale,
                eps=eps,
                factor=factor,
                local_loss=local_loss,
                gather_with_grad=gather_with_grad,
                group=group,
            )
    _no_func_transforms(impl)
    if local_loss:
        ones = torch.ones(image_features.shape[0], dtype=torch.float32, device=image_features.device)
        params = SoftTargetParams(eps, factor, soft_target_backend(impl), group, True, gather_with_grad)
        hard, _ = GatheredSoftTargetFunction.apply(
            image_features, text_features, scale, ones, torch.zeros_like(ones), None, None, None, params
        )
        return hard
    params = ContrastiveParams(eps, factor, contrastive_backend(impl), group, gather_with_grad)
    return GatheredContrastiveFunction.apply(image_features, text_features, scale, params)


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
            ``contrastive_loss(gather=True)``'s gradients (see ``contrastive_loss``).

    Returns:
        0-d float32 tensor. Naive equivalent: ``0.5 * (F.cross_entropy(S, Q_row) +
        F.cross_entropy(S.T, Q_col))`` with the B x B probability targets above
        (``vlkernels.reference.soft_target_loss_naive``).
    """
    teacher_kw = dict(
        teacher_image_features=teacher_image_features,
        teacher_text_features=teacher_text_features,
        teacher_logit_scale=teacher_logit_scale,
        soft_mask=soft_mask,
        label_smoothing=label_smoothing,
        reduction=reduction,
        impl=impl,
    )
    if _checks.check_flag(gather, "gather"):
        return soft_target_loss_distributed(
            image_features,
            text_features,
            logit_scale,
            alpha,
            group=group,
            local_loss=False,
            gather_with_grad=True,
            **teacher_kw,
        )
    if group is not None:
        raise ValueError(_NO_GROUP)
    image, text, scale, alpha_t, teacher, mask, eps, factor, impl = _soft_target_args(
        image_features, text_features, logit_scale, alpha, **teacher_kw
    )
    if impl == "naive":
        t_args = (None, None, None) if teacher is None else teacher
        with autocast_off(image):
            return soft_target_loss_naive(image, text, scale, alpha_t, *t_args, mask, eps, reduction)
    _no_func_transforms(impl)
    t_args = (None, None, None) if teacher is None else teacher
    # the soft weights a = alpha * mask and the hard weights 1 - a: formed by the backends from the mask
    # (a uint8 view of it, no copy), not saved as [B] vectors
    params = SoftTargetParams(eps, factor, soft_target_backend(impl), hard_affine=(-1.0, 1.0))
    mask_u8 = None if mask is None else mask.view(torch.uint8)
    hard, soft = SoftTargetFunction.apply(image, text, scale, mask_u8, alpha_t, *t_args, params)
    return hard + soft


def _soft_target_args(
    image,
    text,
    logit_scale,
    alpha,
    *,
    teacher_image_features,
    teacher_text_features,
    teacher_logit_scale,
    soft_mask,
    label_smoothing,
    reduction,
    impl,
):
    """The checked arguments of the soft-target loss, in the order the Functions take them."""
    _checks.check_features(image, text)
    eps = _checks.check_label_smoothing(label_smoothing)
    factor = _checks.reduction_factor(reduction)
    scale = _checks.scale_tensor(logit_scale, image)
    alpha_t = _checks.check_alpha(alpha, image)
    teacher = _checks.check_teacher(image, teacher_image_features, teacher_text_features, teacher_logit_scale)
    mask = _checks.check_soft_mask(soft_mask, image)
    return image, text, scale, alpha_t, teacher, mask, eps, factor, resolve_impl(impl, image.device)


def soft_target_loss_distributed(
    image_features,
    text_features,
    logit_scale,
    alpha,
    *,
    teacher_image_features=None,
    teacher_text_features=None,
    teacher_logit_scale=None,
    soft_mask=None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    impl: str = "auto",
    group=None,
    local_loss: bool = False,
    gather_with_grad: bool = True,
) -> torch.Tensor:
    """``soft_target_loss`` over the ranks of ``group`` for open_clip's (local_loss, gather_with_grad)."""
    image, text, scale, alpha_t, teacher, mask, eps, factor, impl = _soft_target_args(
        image_features,
        text_features,
        logit_scale,
        alpha,
        teacher_image_features=teacher_image_features,
        teacher_text_features=teacher_text_features,
        teacher_logit_scale=teacher_logit_scale,
        soft_mask=soft_mask,
        label_smoothing=label_smoothing,
        reduction=reduction,
        impl=impl,
    )
    _agree(group, impl, image, scale, eps, factor, teacher, alpha_t, mask, local_loss, gather_with_grad)
    if impl == "naive":
        if local_loss:
            raise ValueError(
                "impl='naive' computes the soft-target loss over the full gathered batch only; "
                "use local_loss=False, or impl='torch' / 'triton' for local_loss=True"
            )
        with autocast_off(image):
            return soft_target_loss_gathered(
                image,
                text,
                scale,
                alpha_t,
                teacher,
                mask,
                eps=eps,
                reduction=reduction,
                gather_with_grad=gather_with_grad,
                group=group,
            )
    _no_func_transforms(impl)
    soft_w = soft_weights(mask, alpha_t, image.shape[0])
    t_args = (None, None, None) if teacher is None else teacher
    params = SoftTargetParams(eps, factor, soft_target_backend(impl), group, local_loss, gather_with_grad)
    hard, soft = GatheredSoftTargetFunction.apply(image, text, scale, 1.0 - soft_w, soft_w, *t_args, params)
    return hard + soft


def distill_clip_loss(
    image_features,
    text_features,
    logit_scale,
    dist_image_features,
    dist_text_features,
    dist_logit_scale,
    *,
    label_smoothing: float = 0.0,
    impl: str = "auto",
    group=None,
    distributed: bool = False,
    local_loss: bool = False,
    gather_with_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """open_clip's ``DistillClipLoss``: (contrastive, distill) losses, the teacher detached; with
    ``distributed``, open_clip's per-rank values and gradients for its two flags over ``group``."""
    image, text = image_features, text_features
    _checks.check_features(image, text)
    eps = _checks.check_label_smoothing(label_smoothing)
    scale = _checks.scale_tensor(logit_scale, image)
    teacher = _checks.check_teacher(
        image, dist_image_features, dist_text_features, dist_logit_scale, names=_DISTILL_TEACHER
    )
    if teacher is None:
        raise ValueError("dist_image_features, dist_text_features and dist_logit_scale are required")
    impl = resolve_impl(impl, image.device)
    if distributed:
        _agree(group, impl, image, scale, eps, 1.0, teacher, None, None, local_loss, gather_with_grad)
    if impl == "naive":
        with autocast_off(image):
            if distributed:
                return distill_clip_open_clip(
                    image,
                    text,
                    scale,
                    teacher,
                    eps=eps,
                    local_loss=local_loss,
                    gather_with_grad=gather_with_grad,
                    group=group,
                )
            return distill_clip_loss_naive(image, text, scale, *teacher, eps)
    _no_func_transforms(impl)
    if distributed:
        soft_w = torch.ones(image.shape[0], dtype=torch.float32, device=image.device)
        # Two distinct weight tensors: torch.compile rejects one tensor passed twice to Function.apply.
        params = SoftTargetParams(eps, 1.0, soft_target_backend(impl), group, local_loss, gather_with_grad)
        return GatheredSoftTargetFunction.apply(
            image, text, scale, torch.ones_like(soft_w), soft_w, *teacher, params
        )
    # a = 1 and h = 0 a + 1 for every pair: no [B] weight vectors
    params = SoftTargetParams(eps, 1.0, soft_target_backend(impl), hard_affine=(0.0, 1.0))
    one = torch.ones((), dtype=torch.float32, device=image.device)
    return SoftTargetFunction.apply(image, text, scale, None, one, *teacher, params)


def progressive_alpha(step, total_steps: int, alpha_max: float):
    """The default progressive schedule: ``alpha_max * clamp(step / total_steps, 0, 1)``.

    A linear ramp from 0 at step 0 to ``alpha_max`` at ``total_steps`` and after (PSD's progressive
    self-distillation). ``step`` may be an int (returns a float) or a tensor (returns a tensor).
    """
    _checks.check_total_steps_alpha_max(total_steps, alpha_max)
    if isinstance(step, torch.Tensor):
        return (step.float() / total_steps).clamp(0.0, 1.0) * float(alpha_max)
    if isinstance(step, bool) or not isinstance(step, numbers.Real) or not math.isfinite(step):
        raise TypeError(f"step must be an int or a tensor, got {step!r}")
    return float(alpha_max) * min(1.0, max(0.0, step / total_steps))


def sigmoid_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None,
    *,
    impl: str = "auto",
    group=None,
    gather: bool = False,
) -> torch.Tensor:
    """Sigmoid (SigLIP) loss without materialising the B x B logits.

    Args:
        image_features, text_features: [B, D], same dtype (float32, bfloat16 or float16) and device;
            L2-normalised by the caller, as in open_clip. Any strides.
        logit_scale: already exponentiated scale (open_clip passes ``logit_scale.exp()``): a float or a
            0-d tensor; when it requires grad it receives its gradient.
        logit_bias: a float or a 0-d tensor (gets its gradient when it requires grad); None: no bias.
        impl: "auto" | "triton" | "torch" | "naive" (naive materialises the B x B logits).
        gather: the batch is split across the processes of ``group`` (None: the default group), each
            passing its local [b, D] pairs (the same b, D and dtype everywhere). Every rank returns the
            loss of the whole batch (B = world * b); rank r's features get (sum of the ranks' upstream
            grads) x dL/df_r and the scalars dL/ds, dL/db: after DDP's gradient averaging every parameter
            gradient is the single-process full-batch gradient (``contrastive_loss(gather=True)``'s
            contract). Ring scheme (docs/design.md): text blocks travel between neighbours, no rank holds
            more than three of them: per-rank memory O(b D), independent of the world size.

    Returns:
        0-d float32 tensor: ``-F.logsigmoid(labels * (logit_scale * I @ T.T + logit_bias)).sum() / B``
        with ``labels = 2 * eye(B) - 1``, computed in fp32. Non-finite inputs give a non-finite loss.
    """
    if _checks.check_flag(gather, "gather"):
        return sigmoid_loss_distributed(
            image_features, text_features, logit_scale, logit_bias, impl=impl, group=group, per_rank=False
        )
    if group is not None:
        raise ValueError(_NO_GROUP)
    _checks.check_features(image_features, text_features)
    scale = _checks.scale_tensor(logit_scale, image_features)
    bias = _checks.bias_tensor(logit_bias, image_features)
    impl = resolve_impl(impl, image_features.device)
    if impl == "naive":
        with autocast_off(image_features):
            return sigmoid_loss_naive(image_features, text_features, scale, bias)
    _no_func_transforms(impl)
    params = SigmoidParams(sigmoid_backend(impl))
    return SigmoidLossFunction.apply(image_features, text_features, scale, bias, params)


def sigmoid_loss_distributed(
    image_features,
    text_features,
    logit_scale,
    logit_bias,
    *,
    impl: str = "auto",
    group=None,
    per_rank: bool = False,
) -> torch.Tensor:
    """The sigmoid loss of a batch split across the ranks of ``group``. ``per_rank``: open_clip's
    SigLipLoss per-rank loss (rank r's b images against all B texts, divided by b) and gradients (every
    rank's loss reaches every rank's texts); else ``sigmoid_loss(gather=True)``'s full-batch contract."""
    _checks.check_features(image_features, text_features)
    scale = _checks.scale_tensor(logit_scale, image_features)
    bias = _checks.bias_tensor(logit_bias, image_features)
    impl = resolve_impl(impl, image_features.device)
    _dist.world(group)
    wants_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (image_features, text_features, scale, bias)
    )
    fields = {
        "impl": _dist.IMPL_CODES[impl],
        "local batch size": image_features.shape[0],
        "feature width D": image_features.shape[1],
        "feature dtype": _dist.DTYPE_CODES[image_features.dtype],
        "logit_scale": scale,
        "logit_bias": bias,
        "logit_scale requires grad": int(scale.requires_grad),
        "logit_bias requires grad": int(bias.requires_grad),
        # Every rank must enter the backward's ring if any does.
        "loss requires grad": int(wants_grad),
        "per-rank loss (SigLipLoss)": int(per_rank),
    }
    _dist.check_ranks(group, image_features.device, fields)
    if impl == "naive":
        with autocast_off(image_features):
            return sigmoid_loss_open_clip(
                image_features, text_features, scale, bias, per_rank=per_rank, group=group
            )
    _no_func_transforms(impl)
    params = SigmoidParams(sigmoid_backend(impl), group, per_rank)
    return RingSigmoidFunction.apply(image_features, text_features, scale, bias, params)


def clip_logits(
    image_features,
    text_features,
    logit_scale,
    logit_bias=None,
    *,
    distributed: bool = False,
    local_loss: bool = False,
    gather_with_grad: bool = False,
    group=None,
):
    """open_clip's ``ClipLoss.get_logits``: ``(logits_per_image, logits_per_text)``, materialised.

    O(B^2) memory (O(b B) with ``local_loss=True``): for inspection and for code written against open_clip,
    never used by the losses. With ``distributed`` the features are gathered as open_clip gathers them
    (with autograd when ``gather_with_grad``). The bias is added once to each matrix (open_clip adds it in
    place, twice to the shared storage when distributed with ``local_loss=False``, where one matrix is a
    view of the other)."""
    if distributed:
        all_image, all_text = open_clip_gather(
            image_features,
            text_features,
            local_loss=local_loss,
            gather_with_grad=gather_with_grad,
            group=group,
        )
        if local_loss:
            per_image = logit_scale * image_features @ all_text.T
            per_text = logit_scale * text_features @ all_image.T
        else:
            per_image = logit_scale * all_image @ all_text.T
            per_text = per_image.T
    else:
        per_image = logit_scale * image_features @ text_features.T
        per_text = logit_scale * text_features @ image_features.T
    if logit_bias is not None:
        per_image, per_text = per_image + logit_bias, per_text + logit_bias
    return per_image, per_text
