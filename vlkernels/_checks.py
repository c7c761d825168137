"""Every argument check of the losses: clear errors naming the argument, no silent coercion.

The bottom layer: imports nothing from vlkernels."""

from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
IMPLS = ("auto", "triton", "torch", "naive")
REDUCTIONS = {"mean": 1.0, "sum": 2.0}
TEACHER_NAMES = ("teacher_image_features", "teacher_text_features", "teacher_logit_scale")


def check_dense(x: torch.Tensor, name: str) -> None:
    """A strided tensor: sparse and nested layouts get an error naming ``name`` (torch's own came from
    inside a kernel)."""
    if x.layout != torch.strided or x.is_nested:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {x.layout}")


def check_features(
    image_features, text_features, names=("image_features", "text_features")
) -> tuple[int, int]:
    """Validate a pair of [B, D] embedding matrices; return (B, D)."""
    for name, x in zip(names, (image_features, text_features), strict=True):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        check_dense(x, name)
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D [B, D], got shape {tuple(x.shape)}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {x.dtype}; supported: float32, bfloat16, float16")
    a, b = image_features, text_features
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} must have the same shape"
        )
    if a.dtype != b.dtype:
        raise TypeError(f"{names[0]} ({a.dtype}) and {names[1]} ({b.dtype}) must have the same dtype")
    if a.device != b.device:
        raise ValueError(f"{names[0]} ({a.device}) and {names[1]} ({b.device}) must be on the same device")
    batch, dim = a.shape
    if batch < 1:
        raise ValueError(f"{names[0]} is an empty batch (B=0); need B >= 1")
    if dim < 1:
        raise ValueError(f"{names[0]} has D=0; need D >= 1")
    return batch, dim


def _check_not_meta(x: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    if x.device.type == "meta" and ref.device.type != "meta":
        raise ValueError(f"{name} is on the meta device (a tensor without data); pass it on {ref.device}")


def to_device(x: torch.Tensor, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """``x`` in ``dtype`` on ``device`` (differentiable) without waiting for the device: a blocking copy
    from pageable host memory synchronises the stream (the host waits for every queued kernel, the model's
    whole forward at the loss). Pageable memory is staged at once, so a non-blocking copy from it is safe;
    a pinned source is copied blocking (the caller could change it before the copy runs)."""
    non_blocking = device.type != "cpu" and x.device.type == "cpu" and not x.is_pinned()
    return x.to(device=device, dtype=dtype, non_blocking=non_blocking)


def scale_tensor(logit_scale, ref: torch.Tensor, name: str = "logit_scale") -> torch.Tensor:
    """A 0-d float32 tensor on ``ref``'s device; differentiable when ``logit_scale`` requires grad."""
    if isinstance(logit_scale, torch.Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(f"{name} must be a scalar (0-d tensor), got shape {tuple(logit_scale.shape)}")
        if not logit_scale.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {logit_scale.dtype}")
        _check_not_meta(logit_scale, ref, name)
        return to_device(logit_scale.reshape(()), ref.device)
    if isinstance(logit_scale, bool) or not isinstance(logit_scale, numbers.Real):
        raise TypeError(f"{name} must be a float or a 0-d tensor, got {type(logit_scale).__name__}")
    if not math.isfinite(float(logit_scale)):
        raise ValueError(f"{name} must be finite, got {logit_scale}")
    return torch.full((), float(logit_scale), dtype=torch.float32, device=ref.device)


def check_label_smoothing(label_smoothing) -> float:
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(f"label_smoothing must be a float, got {type(label_smoothing).__name__}")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    return eps


def reduction_factor(reduction: str) -> float:
    """1 for "mean", 2 for "sum" (the sum of the two directional means, clip-rocket's convention)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {sorted(REDUCTIONS)}, got {reduction!r}")
    return REDUCTIONS[reduction]


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def check_alpha(alpha, ref: torch.Tensor) -> torch.Tensor:
    """A detached 0-d float32 tensor on ``ref``'s device."""
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1:
            raise ValueError(f"alpha must be a scalar (0-d tensor), got shape {tuple(alpha.shape)}")
        if not alpha.is_floating_point():
            raise TypeError(f"alpha must be a floating-point tensor, got {alpha.dtype}")
        _check_not_meta(alpha, ref, "alpha")
        # The value is read only on CPU (no host sync on accelerators) and not while torch.compile traces
        # (it would be data-dependent; SoftTargetLoss checks its schedule's values when it steps).
        if alpha.device.type == "cpu" and not torch.compiler.is_compiling():
            value = float(alpha)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"alpha must be in [0, 1], got {value}")
        return to_device(alpha.detach().reshape(()), ref.device)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a float or a 0-d tensor, got {type(alpha).__name__}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return torch.full((), float(alpha), dtype=torch.float32, device=ref.device)


def check_teacher(image: torch.Tensor, t_image, t_text, t_scale, names=TEACHER_NAMES):
    """None for the self teacher, else (t_image, t_text, detached 0-d float32 scale), all detached."""
    given = [x is not None for x in (t_image, t_text, t_scale)]
    if not any(given):
        return None
    if not all(given):
        have = [n for n, g in zip(names, given, strict=True) if g]
        missing = [n for n, g in zip(names, given, strict=True) if not g]
        raise ValueError(
            f"the teacher arguments go together: got {', '.join(have)} but not {', '.join(missing)} "
            "(pass all three for a separate teacher, none for self-distillation)"
        )
    check_features(t_image, t_text, names=names[:2])
    if t_image.shape[0] != image.shape[0]:
        raise ValueError(
            f"{names[0]} {tuple(t_image.shape)} must have the student's batch size {image.shape[0]}"
        )
    if t_image.device != image.device:
        raise ValueError(
            f"teacher features ({t_image.device}) must be on the student's device ({image.device})"
        )
    scale = scale_tensor(t_scale, image, name=names[2]).detach()
    return t_image.detach(), t_text.detach(), scale


def check_soft_mask(soft_mask, image: torch.Tensor):
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


def check_logit_bias(logit_bias) -> None:
    """A scalar bias (or None); for the softmax losses it adds the same constant to every logit."""
    if logit_bias is None:
        return
    if isinstance(logit_bias, torch.Tensor):
        if logit_bias.numel() != 1:
            raise ValueError(f"logit_bias must be a scalar, got shape {tuple(logit_bias.shape)}")
    elif isinstance(logit_bias, bool) or not isinstance(logit_bias, numbers.Real):
        raise TypeError(f"logit_bias must be a float or a scalar tensor, got {type(logit_bias).__name__}")


def check_flag(value, name: str) -> bool:
    """A bool argument (``gather``, ``local_loss``, ...): a truthy string or number is a mistake."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_gather_flags(local_loss, gather_with_grad) -> None:
    """open_clip's ``local_loss`` / ``gather_with_grad`` constructor flags."""
    check_flag(local_loss, "local_loss")
    check_flag(gather_with_grad, "gather_with_grad")


def check_rank_args(rank: int, world_size: int) -> None:
    """open_clip's ``rank`` / ``world_size`` constructor arguments."""
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got {rank=}, {world_size=}")


def check_total_steps_alpha_max(total_steps, alpha_max) -> None:
    if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    if isinstance(alpha_max, bool) or not isinstance(alpha_max, numbers.Real):
        raise TypeError(f"alpha_max must be a float, got {type(alpha_max).__name__}")
    if not 0.0 <= float(alpha_max) <= 1.0:
        raise ValueError(f"alpha_max must be in [0, 1], got {alpha_max}")


SIGLIP_DIST_IMPLS = ("bidir", "shift", "reduce", "gather")


def bias_tensor(logit_bias, ref: torch.Tensor) -> torch.Tensor:
    """The sigmoid loss's ``logit_bias``: a 0-d float32 tensor on ``ref``'s device, differentiable when it
    requires grad (the checks of ``scale_tensor``, naming logit_bias); None is no bias (0)."""
    if logit_bias is None:
        return torch.zeros((), dtype=torch.float32, device=ref.device)
    return scale_tensor(logit_bias, ref, name="logit_bias")


def check_dist_impl(dist_impl) -> str:
    """open_clip's SigLipLoss ``dist_impl`` (None is its default, "bidir")."""
    if dist_impl is None:
        return "bidir"
    if dist_impl not in SIGLIP_DIST_IMPLS:
        raise ValueError(f"dist_impl must be None or one of {SIGLIP_DIST_IMPLS}, got {dist_impl!r}")
    return dist_impl
