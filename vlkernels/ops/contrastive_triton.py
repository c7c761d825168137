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

import os

import torch
import triton
import triton.language as tl

from vlkernels._triton import interpret_mode

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _load_tile(ptr, offs_r, offs_d, mask_r, mask_d, s_r, s_d, UPCAST: tl.constexpr):
    """A [rows, BLOCK_D] tile, zero-padded; UPCAST only where the interpreter cannot dot bf16."""
    tile = tl.load(
        ptr + offs_r[:, None] * s_r + offs_d[None, :] * s_d, mask=mask_r[:, None] & mask_d[None, :], other=0.0
    )
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _dot_tile(
    q_ptr,
    k_ptr,
    offs_m,
    offs_n,
    mask_m,
    mask_n,
    D,
    sqm,
    sqd,
    skn,
    skd,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Q[offs_m] @ K[offs_n].T in fp32, walking D in BLOCK_D chunks."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start_d in range(0, D, BLOCK_D):
        offs_d = start_d + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        q = _load_tile(q_ptr, offs_m, offs_d, mask_m, mask_d, sqm, sqd, UPCAST)
        k = _load_tile(k_ptr, offs_n, offs_d, mask_n, mask_d, skn, skd, UPCAST)
        acc = tl.dot(q, tl.trans(k), acc, input_precision=DOT_PREC)
    return acc


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
    scale2 = tl.load(scale_ptr).to(tl.float32) * 1.4426950408889634
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    if SINGLE_D:
        q = _load_tile(q_ptr, offs_m, offs_d, mask_m, mask_d, sqm, sqd, UPCAST)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
        mask_n = offs_n < N
        if SINGLE_D:
            k = _load_tile(k_ptr, offs_n, offs_d, mask_n, mask_d, skn, skd, UPCAST)
            acc = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        else:
            acc = _dot_tile(
                q_ptr,
                k_ptr,
                offs_m,
                offs_n,
                mask_m,
                mask_n,
                D,
                sqm,
                sqd,
                skn,
                skd,
                BLOCK_M,
                BLOCK_N,
                BLOCK_D,
                DOT_PREC,
                UPCAST,
            )
        s2 = tl.where(mask_n[None, :], acc * scale2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s2, axis=1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s2 - m_new[:, None]), axis=1)
        m_i = m_new
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
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
    scale2 = tl.load(scale_ptr).to(tl.float32) * 1.4426950408889634
    lse_q = tl.load(lse_q_ptr + offs_m, mask=mask_m, other=0.0) * 1.4426950408889634
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    if SINGLE_D:
        q = _load_tile(q_ptr, offs_m, offs_d, mask_m, mask_d, sqm, sqd, UPCAST)
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
        mask_n = offs_n < N
        lse_k = tl.load(lse_k_ptr + offs_n, mask=mask_n, other=0.0) * 1.4426950408889634
        if SINGLE_D:
            k = _load_tile(k_ptr, offs_n, offs_d, mask_n, mask_d, skn, skd, UPCAST)
            acc = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        else:
            acc = _dot_tile(
                q_ptr,
                k_ptr,
                offs_m,
                offs_n,
                mask_m,
                mask_n,
                D,
                sqm,
                sqd,
                skn,
                skd,
                BLOCK_M,
                BLOCK_N,
                BLOCK_D,
                DOT_PREC,
                UPCAST,
            )
        s2 = acc * scale2
        w = tl.exp2(s2 - lse_q[:, None]) + tl.exp2(s2 - lse_k[None, :])
        w = tl.where(mask_m[:, None] & mask_n[None, :], w, 0.0)
        if SINGLE_D:
            dq = tl.dot(w.to(k.dtype), k, dq, input_precision=DOT_PREC)
            if ATOMIC_DK:
                dk_part = tl.dot(tl.trans(w).to(q.dtype), q, input_precision=DOT_PREC)
                tl.atomic_add(
                    dk_ptr + offs_n[:, None] * D + offs_d[None, :],
                    dk_part,
                    mask=mask_n[:, None] & mask_d[None, :],
                    sem="relaxed",
                )
        else:
            for start_d in range(0, D, BLOCK_D):
                offs_dc = start_d + offs_d
                mask_dc = offs_dc < D
                k_c = _load_tile(k_ptr, offs_n, offs_dc, mask_n, mask_dc, skn, skd, UPCAST)
                dq_ptrs = dq_ptr + offs_m[:, None] * D + offs_dc[None, :]
                dq_mask = mask_m[:, None] & mask_dc[None, :]
                part = tl.dot(w.to(k_c.dtype), k_c, input_precision=DOT_PREC)
                tl.store(dq_ptrs, tl.load(dq_ptrs, mask=dq_mask, other=0.0) + part, mask=dq_mask)
                if ATOMIC_DK:
                    q_c = _load_tile(q_ptr, offs_m, offs_dc, mask_m, mask_dc, sqm, sqd, UPCAST)
                    dk_part = tl.dot(tl.trans(w).to(q_c.dtype), q_c, input_precision=DOT_PREC)
                    tl.atomic_add(
                        dk_ptr + offs_n[:, None] * D + offs_dc[None, :],
                        dk_part,
                        mask=mask_n[:, None] & mask_dc[None, :],
                        sem="relaxed",
                    )
    if SINGLE_D:
        tl.store(dq_ptr + offs_m[:, None] * D + offs_d[None, :], dq, mask=mask_m[:, None] & mask_d[None, :])


def _config(dim: int, dtype: torch.dtype, kernel: str) -> dict:
    """Fixed block sizes per (kernel, dtype, D range); small ones in the interpreter."""
    if interpret_mode():
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_D=max(16, min(32, triton.next_power_of_2(dim))))
    cap = 64 if dtype == torch.float32 else 128
    block_d = max(16, min(cap, triton.next_power_of_2(dim)))
    if kernel == "lse":
        return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_D=block_d, num_warps=8, num_stages=3)
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=block_d, num_warps=8, num_stages=2)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs follow torch's own matmul setting: full fp32 unless the user allowed TF32.
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _upcast(dtype: torch.dtype) -> bool:
    # Triton's interpreter computes bf16 dots wrongly (it has no numpy bf16): there the tiles are
    # upcast after loading, which still exercises the bf16 loads, strides and masks on CPU.
    return interpret_mode() and dtype == torch.bfloat16


def row_lse(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """logsumexp_j(scale * q @ k.T) per row of q, fp32 [M]."""
    m, dim = q.shape
    out = torch.empty(m, dtype=torch.float32, device=q.device)
    cfg = _config(dim, q.dtype, "lse")
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
        DOT_PREC=_dot_precision(q.dtype),
        UPCAST=_upcast(q.dtype),
        **cfg,
    )
    return out


def _use_atomics() -> bool:
    """Atomic dK (one backward launch) unless the user asked for deterministic algorithms."""
    env = os.environ.get("VLKERNELS_DETERMINISTIC")
    if env is not None:
        return env.strip() in ("0", "")
    return not torch.are_deterministic_algorithms_enabled()


def weighted_sums(q, k, scale, lse_q, lse_k, atomic_dk: bool):
    """(W @ k, W.T @ q if atomic_dk else None) in fp32, W = exp(S - lse_q[:, None]) + exp(S - lse_k)."""
    m, dim = q.shape
    cfg = _config(dim, q.dtype, "grad")
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
        DOT_PREC=_dot_precision(q.dtype),
        UPCAST=_upcast(q.dtype),
        **cfg,
    )
    return dq, (dk if atomic_dk else None)


class TritonBackend:
    name = "triton"

    def __init__(self, atomic_dk: bool | None = None):
        self.atomic_dk = atomic_dk

    def lse(self, image, text, scale):
        return row_lse(image, text, scale), row_lse(text, image, scale)

    def accumulate(self, image, text, scale, r, c):
        atomic = _use_atomics() if self.atomic_dk is None else self.atomic_dk
        a_i, a_t = weighted_sums(image, text, scale, r, c, atomic)
        if a_t is None:
            a_t, _ = weighted_sums(text, image, scale, c, r, False)
        return a_i, a_t
