"""Triton backend of the sigmoid (SigLIP) loss: S tiles live in registers/SRAM, never in global memory.

Kernels (Q [M, D], K [N, D] with arbitrary strides; scale and bias read from device memory, so no host
sync; operands stay in the input dtype for tensor cores, accumulation is fp32, offsets int64):

- ``_loss_kernel``: one program per BLOCK_M rows walks all column tiles and writes the row sums of
  softplus(-y z) (2 M N D FLOPs); the loss is their sum in a fixed order (torch's sum of [M]).
- ``_grad_kernel``: one program per (BLOCK_M rows, BLOCK_D feature chunk) recomputes each tile of S,
  forms G = sigmoid(z) - [i == j] and accumulates G @ K for its chunk of D in registers (fp32) over all
  column tiles, then writes it once: no fp32 read-modify-write of global rows and no atomics. Chunk 0
  also writes the row sums of G and of G * <Q_i, K_j> (the partials of d logit_bias and d logit_scale).
  The sigmoid loss is symmetric in (I, T), so the same kernel launched with (T, I) gives G.T @ I: the
  backward is two launches, deterministic (bitwise identical run to run), 6 M N D FLOPs when D fits one
  chunk. D chunk size: up to 256 (16-bit) / 128 (fp32) on the GPU; beyond that the grid gets one program
  per D chunk and each recomputes its S tiles (the documented fallback: 2 M N D (1 + chunks) FLOPs per
  launch instead of 4 M N D), which keeps the accumulator in registers.

Numerics: softplus(x) = max(x, 0) + log1p(exp(-|x|)) with log1p evaluated as log(u) * e / (u - 1),
u = 1 + e (exact to a few ulps even where 1 + e rounds); G of a positive is -sigmoid(-z) (no cancellation
in sigmoid(z) - 1). Stable for any |z| (scale 100 with bias -10 gives |z| ~ 110).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vlkernels._triton import interpret_mode
from vlkernels.ops.triton_utils import (
    LN2,
    LOG2E,
    config,
    dot_precision,
    load_tile,
    score_tile,
    upcast,
)


@triton.jit
def _softplus(x):
    e = tl.exp2(-tl.abs(x) * LOG2E)
    u = 1.0 + e
    rounds = u == 1.0
    log1p = tl.where(rounds, e, tl.log2(u) * LN2 * (e / tl.where(rounds, 1.0, u - 1.0)))
    return tl.maximum(x, 0.0) + log1p


@triton.jit
def _loss_kernel(
    q_ptr,
    k_ptr,
    scale_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    D,
    sqm,
    sqd,
    skn,
    skd,
    DIAG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    q = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if SINGLE_D:
        q = load_tile(q_ptr, offs_m, offs_d, mask_m, mask_d, sqm, sqd, UPCAST)
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
        mask_n = offs_n < N
        acc, _ = score_tile(
            q_ptr,
            k_ptr,
            q,
            offs_m,
            offs_n,
            mask_m,
            mask_n,
            offs_d,
            mask_d,
            D,
            sqm,
            sqd,
            skn,
            skd,
            BLOCK_M,
            BLOCK_N,
            BLOCK_D,
            SINGLE_D,
            DOT_PREC,
            UPCAST,
        )
        z = acc * scale + bias
        if DIAG:
            z = tl.where(offs_m[:, None] == offs_n[None, :], -z, z)
        sp = tl.where(mask_n[None, :], _softplus(z), 0.0)
        total += tl.sum(sp, axis=1)
    tl.store(out_ptr + offs_m, total, mask=mask_m)


@triton.jit
def _grad_kernel(
    q_ptr,
    k_ptr,
    scale_ptr,
    bias_ptr,
    dq_ptr,
    gsum_ptr,
    gdot_ptr,
    M,
    N,
    D,
    sqm,
    sqd,
    skn,
    skd,
    DIAG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    # This program's chunk of D (the only chunk when SINGLE_D).
    offs_d = pid_d.to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    q = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if SINGLE_D:
        q = load_tile(q_ptr, offs_m, offs_d, mask_m, mask_d, sqm, sqd, UPCAST)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    g_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    g_dot = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
        mask_n = offs_n < N
        acc, k = score_tile(
            q_ptr,
            k_ptr,
            q,
            offs_m,
            offs_n,
            mask_m,
            mask_n,
            offs_d,
            mask_d,
            D,
            sqm,
            sqd,
            skn,
            skd,
            BLOCK_M,
            BLOCK_N,
            BLOCK_D,
            SINGLE_D,
            DOT_PREC,
            UPCAST,
        )
        if not SINGLE_D:
            k = load_tile(k_ptr, offs_n, offs_d, mask_n, mask_d, skn, skd, UPCAST)
        z = acc * scale + bias
        e = tl.exp2(-tl.abs(z) * LOG2E)
        hi = 1.0 / (1.0 + e)  # sigmoid(|z|)
        lo = e * hi  # sigmoid(-|z|)
        g = tl.where(z >= 0, hi, lo)
        if DIAG:
            g = tl.where(offs_m[:, None] == offs_n[None, :], -tl.where(z >= 0, lo, hi), g)
        g = tl.where(mask_m[:, None] & mask_n[None, :], g, 0.0)
        g_sum += tl.sum(g, axis=1)
        g_dot += tl.sum(g * acc, axis=1)
        dq = tl.dot(g.to(k.dtype), k, dq, input_precision=DOT_PREC)
    tl.store(dq_ptr + offs_m[:, None] * D + offs_d[None, :], dq, mask=mask_m[:, None] & mask_d[None, :])
    if pid_d == 0:
        tl.store(gsum_ptr + offs_m, g_sum, mask=mask_m)
        tl.store(gdot_ptr + offs_m, g_dot, mask=mask_m)


def grad_config(dim: int, dtype: torch.dtype) -> dict:
    """Block sizes of ``_grad_kernel``: the D chunk (the register accumulator's width) covers D up to 256
    (16-bit inputs) / 128 (fp32) in one chunk; small blocks in the interpreter (so that tests exercise
    the several-chunk path)."""
    if interpret_mode():
        return config(dim, dtype, "grad")
    cap = 128 if dtype == torch.float32 else 256
    block_d = max(16, min(cap, triton.next_power_of_2(dim)))
    # 64-row blocks at every width: a wgmma covers 64 rows (32-row blocks fell back to mma.sync on sm_90).
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=block_d, num_warps=8, num_stages=2)


def _common(q: torch.Tensor, k: torch.Tensor) -> tuple:
    return (q.shape[0], k.shape[0], q.shape[1], q.stride(0), q.stride(1), k.stride(0), k.stride(1))


def row_loss_sums(q, k, scale, bias, diag: bool) -> torch.Tensor:
    """Row sums [M] of softplus(-y z), z = scale * q @ k.T + bias (y: +1 on the diagonal when diag)."""
    m, dim = q.shape
    out = torch.empty(m, dtype=torch.float32, device=q.device)
    cfg = config(dim, q.dtype, "lse")
    _loss_kernel[(triton.cdiv(m, cfg["BLOCK_M"]),)](
        q,
        k,
        scale,
        bias,
        out,
        *_common(q, k),
        DIAG=diag,
        SINGLE_D=dim <= cfg["BLOCK_D"],
        DOT_PREC=dot_precision(q.dtype),
        UPCAST=upcast(q.dtype),
        **cfg,
    )
    return out


def row_grads(q, k, scale, bias, diag: bool, stats: bool = True):
    """(G @ k [M, D] fp32, row sums of G [M], row sums of G * (q @ k.T) [M]) (the sums None without
    ``stats``: scratch buffers are written then)."""
    m, dim = q.shape
    cfg = grad_config(dim, q.dtype)
    dq = torch.empty((m, dim), dtype=torch.float32, device=q.device)
    g_sum = torch.empty(m, dtype=torch.float32, device=q.device)
    g_dot = torch.empty(m, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(dim, cfg["BLOCK_D"]))
    _grad_kernel[grid](
        q,
        k,
        scale,
        bias,
        dq,
        g_sum,
        g_dot,
        *_common(q, k),
        DIAG=diag,
        SINGLE_D=dim <= cfg["BLOCK_D"],
        DOT_PREC=dot_precision(q.dtype),
        UPCAST=upcast(q.dtype),
        **cfg,
    )
    return (dq, g_sum, g_dot) if stats else (dq, None, None)


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(1).to(torch.float32).contiguous()


class TritonSigmoidBackend:
    """``loss_sum`` / ``grads`` of the sigmoid backend protocol (ops/sigmoid.py) on the kernels."""

    def loss_sum(self, image, text, scale, bias, diag):
        return row_loss_sums(image, text, _f32(scale), _f32(bias), diag).sum()

    def grads(self, image, text, scale, bias, diag, need_t=True):
        scale, bias = _f32(scale), _f32(bias)
        a_i, g_sum, g_dot = row_grads(image, text, scale, bias, diag)
        a_t = row_grads(text, image, scale, bias, diag, stats=False)[0] if need_t else None
        return a_i, a_t, g_sum.sum(), g_dot.sum()
