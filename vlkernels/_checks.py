"""Argument checks shared by the losses: clear errors naming the argument, no silent coercion."""

from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
IMPLS = ("auto", "triton", "torch", "naive")
REDUCTIONS = {"mean": 1.0, "sum": 2.0}


def check_features(
    image_features, text_features, names=("image_features", "text_features")
) -> tuple[int, int]:
    """Validate a pair of [B, D] embedding matrices; return (B, D)."""
    for name, x in zip(names, (image_features, text_features), strict=True):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
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


def scale_tensor(logit_scale, ref: torch.Tensor, name: str = "logit_scale") -> torch.Tensor:
    """A 0-d float32 tensor on ``ref``'s device; differentiable when ``logit_scale`` requires grad."""
    if isinstance(logit_scale, torch.Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(f"{name} must be a scalar (0-d tensor), got shape {tuple(logit_scale.shape)}")
        if not logit_scale.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {logit_scale.dtype}")
        return logit_scale.reshape(()).to(device=ref.device, dtype=torch.float32)
    if isinstance(logit_scale, bool) or not isinstance(logit_scale, numbers.Real):
        raise TypeError(f"{name} must be a float or a 0-d tensor, got {type(logit_scale).__name__}")
    if not math.isfinite(float(logit_scale)):
        raise ValueError(f"{name} must be finite, got {logit_scale}")
    return torch.tensor(float(logit_scale), dtype=torch.float32, device=ref.device)


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
