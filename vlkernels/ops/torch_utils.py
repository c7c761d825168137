"""Pieces shared by the PyTorch side of the ops: the row-chunk size of S for the chunked backends, and
the decorators of the autograd Functions (no autocast; first-order gradients only)."""

from __future__ import annotations

import contextlib
import functools
import os

import torch

# Elements of one fp32 chunk of S (the backward holds two such buffers at a time).
_CPU_CHUNK_ELEMS = 1 << 22
_CUDA_CHUNK_ELEMS = 1 << 26


def chunk_rows(rows: int, cols: int, device: torch.device) -> int:
    """Rows of S per chunk: ``VLKERNELS_TORCH_CHUNK_ROWS`` if set, else a fixed element budget."""
    env = os.environ.get("VLKERNELS_TORCH_CHUNK_ROWS")
    if env:
        return max(1, int(env))
    elems = _CUDA_CHUNK_ELEMS if device.type == "cuda" else _CPU_CHUNK_ELEMS
    return max(1, min(rows, elems // cols))


def row_chunks(rows: int, cols: int, device: torch.device):
    """Slices covering ``range(rows)`` in chunks of ``chunk_rows`` rows."""
    step = chunk_rows(rows, cols, device)
    return [slice(start, start + step) for start in range(0, rows, step)]


def autocast_off(x: torch.Tensor):
    """A context that disables autocast on ``x``'s device type: the losses run in their input dtype with
    fp32 accumulation, and autocast would silently compute their products in bf16. A plain
    ``torch.autocast`` context (not an ExitStack), so that torch.compile traces through it."""
    device_type = x.device.type
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def exact(fn):
    """Decorator for an autograd Function's forward/backward: run without autocast (see autocast_off)."""

    @functools.wraps(fn)
    def wrapper(ctx, *args):
        with autocast_off(next(a for a in args if isinstance(a, torch.Tensor))):
            return fn(ctx, *args)

    return wrapper


DOUBLE_BACKWARD_ERROR = (
    "vlkernels: the gradients of impl='torch' / impl='triton' losses cannot be differentiated again "
    "(double backward: create_graph=True followed by a backward through the gradients is not supported); "
    "use impl='naive' for second derivatives"
)


def first_order_only(fn):
    """Decorator for an autograd Function's backward: under ``create_graph=True`` the returned gradients
    carry a node that raises DOUBLE_BACKWARD_ERROR if anything differentiates through them (torch's
    ``once_differentiable`` leaves them constant when the upstream gradient does not require grad, which
    would drop second-order terms silently)."""

    @functools.wraps(fn)
    def wrapper(ctx, *args):
        with torch.no_grad():
            grads = fn(ctx, *args)
        if not torch.is_grad_enabled():
            return grads
        real = [i for i, g in enumerate(grads) if isinstance(g, torch.Tensor)]
        if not real:
            return grads
        err = torch._C._functions.DelayedError(DOUBLE_BACKWARD_ERROR.encode(), len(real))
        wrapped = err(*[grads[i].detach().requires_grad_() for i in real])
        wrapped = wrapped if isinstance(wrapped, tuple) else (wrapped,)
        out = list(grads)
        for i, g in zip(real, wrapped, strict=True):
            out[i] = g
        return tuple(out)

    return wrapper


class _ZeroGradient(torch.autograd.Function):
    """Identity on ``out``; ``bias`` gets its exact gradient, zeros (not ``0 * bias``: NaN for an infinite
    bias)."""

    @staticmethod
    def forward(ctx, out, bias):
        ctx.bias_meta = (bias.shape, bias.dtype, bias.device)
        return out.clone()

    @staticmethod
    def backward(ctx, grad):
        shape, dtype, device = ctx.bias_meta
        return grad, torch.zeros(shape, dtype=dtype, device=device)


def with_zero_gradient(out: torch.Tensor, bias) -> torch.Tensor:
    """``out``, connected to ``bias`` in the graph with a zero gradient when ``bias`` is a tensor that
    requires grad (a loss that does not depend on a parameter, e.g. a constant logit shift under a softmax:
    DDP would otherwise report the parameter as unused)."""
    if isinstance(bias, torch.Tensor) and bias.requires_grad and torch.is_grad_enabled():
        return _ZeroGradient.apply(out, bias)
    return out
