"""Triton backend of the contrastive loss: S tiles live in registers/SRAM, never in global memory.

Kernels (both take Q [M, D], K [N, D] with arbitrary strides and read the scale from device memory,
so no host sync; operands stay in the input dtype for tensor cores, accumulation is fp32):

- ``_lse_kernel``: one program per BLOCK_M rows of Q walks all column tiles with an online
  max/sum (base-2, flash-attention style) and writes logsumexp_j s <Q_i, K_j>. Called twice, with
  (I, T) for the row LSEs and (T, I) for the column LSEs: 4 B^2 D FLOPs.
- ``_grad_kernel``: one program per BLOCK_M rows recomputes each tile of S, forms
  W = exp(S - lse_q) + exp(S - lse_k) and accumulates dQ = W @ K in fp32. With ATOMIC_DK it also
  adds W.T @ Q into dK with fp32 atomics (one launch, 6 B^2 D FLOPs: 10 B^2 D with the forward);
  otherwise it is launched a second time with the roles swapped (deterministic, 8 B^2 D).

D is walked in BLOCK_D chunks; when D fits one chunk the Q block and the dQ accumulator stay in
registers, else dQ is accumulated in its (program-owned) fp32 rows in global memory.
Offsets are int64 (B * D may exceed 2^31).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vlkernels.ops.contrastive import finish_rows
from vlkernels.ops.triton_utils import (
    LN2,
    LOG2E,
    accumulate_products,
    config,
    dot_precision,
    load_tile,
    score_tile,
    upcast,
    use_atomics,
)


@triton.jit
def _lse_kernel(
    q_ptr,
    k_ptr,
    scale_ptr,
    lse_ptr,
    M,
    N,
    D,
    sqm,
    sqd,
    skn,
    skd,
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
    scale2 = tl.load(scale_ptr).to(tl.float32) * LOG2E
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    q = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if SINGLE_D:
        q = load_tile(q_ptr, offs_m, offs_d, mask_m, mask_d, sqm, sqd, UPCAST)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
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
        s2 = tl.where(mask_n[None, :], acc * scale2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s2, axis=1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s2 - m_new[:, None]), axis=1)
        m_i = m_new
    lse = (m_i + tl.log2(l_i)) * LN2
    tl.store(lse_ptr + offs_m, lse, mask=mask_m)


@triton.jit
def _grad_kernel(
    q_ptr,
    k_ptr,
    scale_ptr,
    lse_q_ptr,
    lse_k_ptr,
    dq_ptr,
    dk_ptr,
    M,
    N,
    D,
    sqm,
    sqd,
    skn,
    skd,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
    ATOMIC_DK: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    scale2 = tl.load(scale_ptr).to(tl.float32) * LOG2E
    lse_q = tl.load(lse_q_ptr + offs_m, mask=mask_m, other=0.0) * LOG2E
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    q = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if SINGLE_D:
        q = load_tile(q_ptr, offs_m, offs_d, mask_m, mask_d, sqm, sqd, UPCAST)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
        mask_n = offs_n < N
        lse_k = tl.load(lse_k_ptr + offs_n, mask=mask_n, other=0.0) * LOG2E
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
        s2 = acc * scale2
        w = tl.exp2(s2 - lse_q[:, None]) + tl.exp2(s2 - lse_k[None, :])
        w = tl.where(mask_m[:, None] & mask_n[None, :], w, 0.0)
        dq = accumulate_products(
            w,
            q,
            k,
            dq,
            q_ptr,
            k_ptr,
            dq_ptr,
            dk_ptr,
            offs_m,
            offs_n,
            offs_d,
            mask_m,
            mask_n,
            mask_d,
            D,
            sqm,
            sqd,
            skn,
            skd,
            BLOCK_D,
            SINGLE_D,
            ATOMIC_DK,
            DOT_PREC,
            UPCAST,
        )
    if SINGLE_D:
        tl.store(dq_ptr + offs_m[:, None] * D + offs_d[None, :], dq, mask=mask_m[:, None] & mask_d[None, :])


def row_lse(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """logsumexp_j(scale * q @ k.T) per row of q, fp32 [M]."""
    m, dim = q.shape
    out = torch.empty(m, dtype=torch.float32, device=q.device)
    cfg = config(dim, q.dtype, "lse")
    grid = (triton.cdiv(m, cfg["BLOCK_M"]),)
    _lse_kernel[grid](
        q,
        k,
        scale,
        out,
        m,
        k.shape[0],
        dim,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        SINGLE_D=dim <= cfg["BLOCK_D"],
        DOT_PREC=dot_precision(q.dtype),
        UPCAST=upcast(q.dtype),
        **cfg,
    )
    return out


def weighted_sums(q, k, scale, lse_q, lse_k, atomic_dk: bool):
    """(W @ k, W.T @ q if atomic_dk else None) in fp32, W = exp(S - lse_q[:, None]) + exp(S - lse_k)."""
    m, dim = q.shape
    cfg = config(dim, q.dtype, "grad")
    dq = torch.zeros((m, dim), dtype=torch.float32, device=q.device)
    dk = torch.zeros((k.shape[0], dim), dtype=torch.float32, device=q.device) if atomic_dk else dq
    grid = (triton.cdiv(m, cfg["BLOCK_M"]),)
    _grad_kernel[grid](
        q,
        k,
        scale,
        lse_q,
        lse_k,
        dq,
        dk,
        m,
        k.shape[0],
        dim,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        SINGLE_D=dim <= cfg["BLOCK_D"],
        ATOMIC_DK=atomic_dk,
        DOT_PREC=dot_precision(q.dtype),
        UPCAST=upcast(q.dtype),
        **cfg,
    )
    return dq, (dk if atomic_dk else None)


class TritonBackend:
    """``lse`` / ``accumulate`` of the contrastive backend protocol (ops/contrastive.py) on the kernels."""

    def __init__(self, atomic_dk: bool | None = None):
        self.atomic_dk = atomic_dk

    def lse(self, image, text, scale):
        return row_lse(image, text, scale), row_lse(text, image, scale)

    def gradients(self, image, text, scale, r, c, coef, eps: float, need_t: bool = True):
        """(dI, dT or None, ds) of the single-process loss from the two products (v1: fp32 [B, D] buffers)."""
        a_i, a_t = self.accumulate(image, text, scale, r, c)
        batch, i32, t32 = image.shape[0], image.float(), text.float()
        d_image, d_scale = finish_rows(a_i, i32, t32, t32.sum(0), eps, batch, coef, scale, image.dtype, True)
        if not need_t:
            return d_image, None, d_scale
        d_text, _ = finish_rows(a_t, None, i32, i32.sum(0), eps, batch, coef, scale, text.dtype, False)
        return d_image, d_text, d_scale

    def accumulate(self, image, text, scale, r, c):
        atomic = use_atomics() if self.atomic_dk is None else self.atomic_dk
        a_i, a_t = weighted_sums(image, text, scale, r, c, atomic)
        if a_t is None:
            a_t, _ = weighted_sums(text, image, scale, c, r, False)
        return a_i, a_t
