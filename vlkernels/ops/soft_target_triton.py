"""Triton backend of the soft-target (PSD) loss: tiles of S and S' live in registers, never in memory.

Shares the contrastive loss's tile helpers and configs (ops/triton_utils.py). Kernels take
Q [M, D], K [N, D] (and for a separate teacher Q' [M, D'], K' [N, D'], any float dtype), arbitrary
strides, scales read from device memory (no host sync), fp32 accumulation, int64 offsets:

- ``_stats_kernel``, one pass (2 B^2 D, + 2 B^2 D' for a teacher): one program per BLOCK_M rows of Q walks
  all column tiles with online row statistics (base 2, flash-attention style): the student LSE and the
  rest of its sum below the largest term, the teacher LSE, and under the teacher's softmax the weighted
  sums of the student's dot products <Q_i, K_j> (unscaled: d/ds needs no division by s) and of the
  distances m_i - S2_ij to the row's largest score (the soft gap: docs/design.md, "Soft gaps"); and per
  column tile its column partials over the program's rows (the same sums), exact since each program sees
  each column tile once. ``_merge_kernel`` merges the programs' partials (and the launches') in a fixed
  order (``both_stats``). The LSEs are two-part (float64, as the contrastive loss's:
  ops/contrastive_triton.py): the student's rows' m + log2(1 + rest) and columns' max + log2(1 + rest)
  formed in float64 (l = 1 + rest in fp32 would round the rest away near one-hot), a separate teacher's
  m' + log2(l'); the weights kernel splits the student's into fp32 hi + lo and takes a separate teacher's as
  the Functions keep them, fp32 hi + bf16 lo (``torch_utils.pack_lse``).
- ``_weights_kernel``: the backward on the G-chunk engine (ops/gchunk_triton.py, shared with the
  contrastive and sigmoid losses): for a chunk of rows it recomputes the tiles of S (and S') and writes
  W = p_i exp(S - r_i) + p_j exp(S - c_j) - q_i exp(S' - r'_i) - q_j exp(S' - c'_j) into the workspace in
  the features' dtype, the weights formed in registers from the pair weights (e = c_h h, q = c_a a,
  p = e + q) as e_i E_row + e_j E_col [- hard] + q_i (E_row - T_row) + q_j (E_col - T_col), so that
  near one-hot rows keep no ulp of e + q (``_w_part``); with HARD minus the hard targets (dL/dS, and the
  scale's partial sums). The single-process backward (``gradients``) stores dI = s dL/dS @ T,
  accumulates dT for the covered columns in fp32 and runs a column pass for the rest, as the contrastive
  loss does: 6 B^2 D (+ 2 B^2 D') while the accumulator covers every column; the gathered Function's
  products (``accumulate``) are fp32 W @ T and W.T @ I. No float atomics, deterministic. For the self
  teacher S' = S and the q terms fold into the p terms, so the backward costs what the contrastive one
  does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vlkernels.ops import triton_utils
from vlkernels.ops.contrastive_triton import diagonal, forward_rows_per_launch
from vlkernels.ops.gchunk_triton import Workspace, backward_plan
from vlkernels.ops.torch_utils import finish_partials, lse_at, pack_lse, workspace_bytes
from vlkernels.ops.triton_utils import (
    HOST_ARCH,
    LOG2E,
    config,
    diagonal_mask,
    dot_precision,
    dot_tile,
    grid_tile,
    halves,
    mma_sync,
    on_device,
    partials_of,
    row_block,
    row_operands,
    split_dots,
    store_weights,
    target_arch,
    tcgen05,
    tile_diagonal,
    tile_operands,
    tma_ready,
    upcast,
    walk_grid,
    walk_tile,
    weights_blocks,
    weights_tile_dot,
    wide_score_tiles,
)


@triton.jit
def _stats_kernel(
    q_ptr,
    k_ptr,
    scale_ptr,
    tq_ptr,
    tk_ptr,
    t_scale_ptr,
    lse_ptr,
    t_lse_ptr,
    wsum_ptr,
    gap_ptr,
    rest_ptr,
    t_rest_ptr,
    part_ptr,
    part_stride,
    M,
    N,
    D,
    DT,
    sqm,
    sqd,
    skn,
    skd,
    stqm,
    stqd,
    stkn,
    stkd,
    TEACHER: tl.constexpr,
    COLUMNS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    SINGLE_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
    T_DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    T_UPCAST: tl.constexpr,
    PARTS: tl.constexpr = 1,
    TMA: tl.constexpr = False,
):
    """Row statistics of Q against all of K (module docstring). COLUMNS: also this program's column
    statistics over its rows, each column tile seen once, so exact without an online rescale (base 2,
    [programs, N] each, part[k * part_stride + pid * N + j]): k = 0: max_i S2_ij, 1: the rest (``_rest``:
    sum_i exp2(S2_ij - max) less one largest term), and for the teacher's softmax (S' = S without TEACHER,
    then k = 2: sum_i exp2(S2 - max) (max - S2_ij), 3: sum_i exp2(S2 - max) <Q_i, K_j>) with TEACHER k = 2:
    max_i S'2_ij, 3: sum_i exp2(S'2 - max'), 4: sum_i exp2(S'2 - max') (max - S2_ij), 5: sum_i exp2(S'2 -
    max') <Q_i, K_j>, 6: the teacher's rest (as k = 1). The rows' soft gaps (``gap_ptr``, fp32):
    log2(1 + rest) + sum_j softmax_j(S'_i.) (m_i - S2_ij), m_i the row's largest score, both sums of
    non-negative terms (docs/design.md, "Soft gaps"; the online form shifts the second by the move of m
    times the teacher's sum so far), and the rest itself (``rest_ptr``, fp32: the off-diagonal masses,
    ``soft_target.diagonal_mass``; with TEACHER the teacher's at ``t_rest_ptr``). PARTS (the self teacher
    only): each score tile's epilogue in that many column parts, one after the other (fewer registers:
    the 128 x 128 tiles of ``tile_config``); TMA: Q and K are tensor descriptors (``walk_tile``)."""
    if DOT_PREC != "ieee":  # the D walks run: the flattened column walk needs no zero-trip copy
        tl.assume(D > 0)
        tl.assume(DT > 0)
    pid, offs_m, mask_m = row_block(M, BLOCK_M)
    scale2 = tl.load(scale_ptr).to(tl.float32) * LOG2E
    if TEACHER:
        t_scale2 = tl.load(t_scale_ptr).to(tl.float32) * LOG2E
    operands = row_operands(
        q_ptr, k_ptr, offs_m, mask_m, D, sqm, sqd, skn, skd, BLOCK_M, BLOCK_D, SINGLE_D, UPCAST
    )
    # Student max/sum/rest (m_s, l_s, rest); teacher max/sum (m_t, l_t), sum_j exp2(t2_j - m_t) (m_s - s2_j)
    # (acc_u) and sum_j exp2(t2_j - m_t) <Q, K_j> (acc_w).
    m_s = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_s = tl.zeros([BLOCK_M], dtype=tl.float32)
    rest = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_t = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_t = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc_w = tl.zeros([BLOCK_M], dtype=tl.float32)
    t_rest = tl.zeros([BLOCK_M], dtype=tl.float32)  # a separate teacher's rest (its off-diagonal masses)
    for start_n in tl.range(0, N, BLOCK_N, flatten=DOT_PREC != "ieee"):
        offs_n, mask_n, acc = walk_tile(
            operands, start_n, N, BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_D, DOT_PREC, UPCAST, TMA
        )
        if not TEACHER:  # the self teacher: S' = S
            my_part = part_ptr + pid * N
            rows = (m_t, l_t, rest, acc_u, acc_w)
            tile = (scale2, mask_m, my_part, part_stride, N)  # what every part shares
            if PARTS == 1:
                rows = _self_epilogue(acc, rows, offs_n, tile, COLUMNS)
            else:  # four column parts of V
                V: tl.constexpr = BLOCK_N // 4
                offs_v = start_n + tl.arange(0, V).to(tl.int64)
                h0, h1 = halves(acc, BLOCK_M, BLOCK_N)
                a0, a1 = halves(h0, BLOCK_M, BLOCK_N // 2)
                rows = _self_epilogue(a0, rows, offs_v, tile, COLUMNS)
                rows = _self_epilogue(a1, rows, offs_v + V, tile, COLUMNS)
                a0, a1 = halves(h1, BLOCK_M, BLOCK_N // 2)
                rows = _self_epilogue(a0, rows, offs_v + 2 * V, tile, COLUMNS)
                rows = _self_epilogue(a1, rows, offs_v + 3 * V, tile, COLUMNS)
            m_t, l_t, rest, acc_u, acc_w = rows
        else:
            # Padded columns: -inf in the exponents, but the dot products (and the raw scores) stay 0 there
            # (0 * -inf is nan).
            raw = acc * scale2
            s2 = tl.where(mask_n[None, :], raw, float("-inf"))
            t_acc = dot_tile(
                tq_ptr,
                tk_ptr,
                offs_m,
                offs_n,
                mask_m,
                mask_n,
                DT,
                stqm,
                stqd,
                stkn,
                stkd,
                BLOCK_M,
                BLOCK_N,
                BLOCK_DT,
                T_DOT_PREC,
                T_UPCAST,
            )
            t2 = tl.where(mask_n[None, :], t_acc * t_scale2, float("-inf"))
            m_new = tl.maximum(m_s, tl.max(s2, axis=1))
            alpha_s = tl.exp2(m_s - m_new)
            e_s = tl.exp2(s2 - m_new[:, None])
            l_s = l_s * alpha_s + tl.sum(e_s, axis=1)
            rest = _rest(rest, alpha_s, m_new > m_s, e_s)
            mt_new = tl.maximum(m_t, tl.max(t2, axis=1))
            alpha = tl.exp2(m_t - mt_new)
            e = tl.exp2(t2 - mt_new[:, None])
            acc_u = _shifted(acc_u, m_new - m_s, l_t) * alpha + tl.sum(e * (m_new[:, None] - raw), axis=1)
            l_t = l_t * alpha + tl.sum(e, axis=1)
            acc_w = acc_w * alpha + tl.sum(e * acc, axis=1)
            t_rest = _rest(t_rest, alpha, mt_new > m_t, e)
            m_s = m_new
            m_t = mt_new
            if COLUMNS:
                col = part_ptr + pid * N + offs_n
                s2_c = tl.where(mask_m[:, None], s2, float("-inf"))
                m_c = tl.where(mask_n, tl.max(s2_c, axis=0), 0.0)  # padded columns: -inf - 0, no nan
                e_c = tl.exp2(s2_c - m_c[None, :])
                tl.store(col, m_c, mask=mask_n)
                tl.store(col + part_stride, _column_rest(e_c), mask=mask_n)
                t2_c = tl.where(mask_m[:, None], t2, float("-inf"))
                mt_c = tl.where(mask_n, tl.max(t2_c, axis=0), 0.0)
                e_c = tl.exp2(t2_c - mt_c[None, :])
                tl.store(col + 2 * part_stride, mt_c, mask=mask_n)
                tl.store(col + 3 * part_stride, tl.sum(e_c, axis=0), mask=mask_n)
                tl.store(col + 4 * part_stride, tl.sum(e_c * (m_c[None, :] - raw), axis=0), mask=mask_n)
                tl.store(col + 5 * part_stride, tl.sum(e_c * acc, axis=0), mask=mask_n)
                tl.store(col + 6 * part_stride, _column_rest(e_c), mask=mask_n)
    tl.store(wsum_ptr + offs_m, acc_w / l_t, mask=mask_m)
    # the LSEs in float64, formed there (module docstring, two-part LSEs): the student's as
    # m + log2(1 + rest), which keeps the rest where l = 1 + rest rounds it in fp32 (as the columns',
    # ``torch_utils.finish_partials``); a separate teacher's as m' + log2(l')
    # the rest itself first (before the float64 terms take their register pairs)
    rest = _tied(rest, l_s if TEACHER else l_t)
    tl.store(rest_ptr + offs_m, rest, mask=mask_m)
    if TEACHER:
        tl.store(t_rest_ptr + offs_m, _tied(t_rest, l_t), mask=mask_m)
    above = _log2p1(rest)
    if TEACHER:
        tl.store(lse_ptr + offs_m, m_s.to(tl.float64) + above, mask=mask_m)
        tl.store(t_lse_ptr + offs_m, m_t.to(tl.float64) + tl.log2(l_t).to(tl.float64), mask=mask_m)
    else:
        tl.store(lse_ptr + offs_m, m_t.to(tl.float64) + above, mask=mask_m)
    tl.store(gap_ptr + offs_m, (above + (acc_u / l_t).to(tl.float64)).to(tl.float32), mask=mask_m)


@triton.jit
def _teacher_diagonal_kernel(
    tq_ptr,
    tk_ptr,
    t_scale_ptr,
    diag_ptr,
    M,
    N,
    DT,
    row0,
    stqm,
    stqd,
    stkn,
    stkd,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    T_DOT_PREC: tl.constexpr,
    T_UPCAST: tl.constexpr,
):
    """diag[i] = S'2[i, row0 + i] (S'2 = s' <Q'_i, K'_j> log2(e)) bitwise as ``_stats_kernel`` formed it
    with a separate teacher (its tiles' ``dot_tile`` at the same sizes, dot precision and warps; columns
    from multiples of BLOCK_N): the teacher's own scores of the off-diagonal masses
    (``soft_target.diagonal_mass``: near one-hot the rest gives the mass, elsewhere 1 - exp2(x' - r'),
    which a separately rounded x' would err by an ulp of |S'|). Each program recomputes the tiles its rows'
    diagonal crosses and stores a tile's diagonal scores per column (as the contrastive module's
    ``_diagonal_kernel``)."""
    pid, offs_m, mask_m = row_block(M, BLOCK_M)
    t_scale2 = tl.load(t_scale_ptr).to(tl.float32) * LOG2E
    d0 = pid * BLOCK_M + row0  # the column of this program's first row
    first = (d0 // BLOCK_N) * BLOCK_N
    for start_n in range(first, tl.minimum(d0 + BLOCK_M, N), BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
        mask_n = offs_n < N
        t_acc = dot_tile(
            tq_ptr,
            tk_ptr,
            offs_m,
            offs_n,
            mask_m,
            mask_n,
            DT,
            stqm,
            stqd,
            stkn,
            stkd,
            BLOCK_M,
            BLOCK_N,
            BLOCK_DT,
            T_DOT_PREC,
            T_UPCAST,
        )
        x_col = tl.sum(tl.where(diagonal_mask(d0, start_n, BLOCK_M, BLOCK_N), t_acc * t_scale2, 0.0), axis=0)
        rows = offs_n - row0  # the row each column's diagonal score belongs to
        mine = (offs_n >= d0) & (offs_n < d0 + BLOCK_M) & mask_n & (rows < M)
        tl.store(diag_ptr + rows, x_col, mask=mine)


def _teacher_diagonal(teacher, k_rows: int, meta: dict, row0: int) -> torch.Tensor:
    """S'2[i, row0 + i] in fp32 [M] (base 2; 0 where row0 + i >= N) of the teacher (Q' [M, D'], K' [N, D'],
    s'), bitwise as the statistics kernel's ``meta`` formed it (``_teacher_diagonal_kernel``, one launch,
    one pipeline stage: the stages move loads, not products)."""
    t_q, t_k, t_scale = teacher
    m = t_q.shape[0]
    out = torch.zeros(m, dtype=torch.float32, device=t_q.device)
    _teacher_diagonal_kernel[(triton.cdiv(m, meta["BLOCK_M"]),)](
        t_q,
        t_k,
        t_scale,
        out,
        m,
        k_rows,
        t_q.shape[1],
        row0,
        t_q.stride(0),
        t_q.stride(1),
        t_k.stride(0),
        t_k.stride(1),
        BLOCK_M=meta["BLOCK_M"],
        BLOCK_N=meta["BLOCK_N"],
        BLOCK_DT=meta["BLOCK_DT"],
        T_DOT_PREC=meta["T_DOT_PREC"],
        T_UPCAST=meta["T_UPCAST"],
        num_stages=1,
        **{key: meta[key] for key in ("num_warps",) if key in meta},
    )
    return out


@triton.jit
def _rest(rest, alpha, moved, e):
    """The running rest of a row's sum below its largest score (``_stats_kernel``): rescaled by alpha, the
    former largest term (alpha) once the max ``moved``, and the tile's terms below 1. A second term of
    exactly 1 (a tie) is left out here and restored at the end (``_tied``)."""
    return rest * alpha + tl.where(moved, alpha, 0.0) + tl.sum(tl.where(e < 1.0, e, 0.0), axis=1)


@triton.jit
def _column_rest(e):
    """A column tile's rest over its rows: sum_i e_ij less one term of 1 (``_tied`` for ties)."""
    total = tl.sum(e, axis=0)
    return _tied(tl.sum(tl.where(e < 1.0, e, 0.0), axis=0), total)


@triton.jit
def _tied(rest, total):
    """The rest, or total - 1 where further terms of exactly 1 (ties of the largest score) were left out of
    it (then total - 1 - rest >= ~1; without ties it is a rounding of the sum, < 2^-23 total)."""
    return tl.where(total - 1.0 - rest > 0.5, total - 1.0, rest)


@triton.jit
def _shifted(acc_u, moved_by, l_t):
    """sum_j p_j (m_old - s_j) + moved_by sum_j p_j: the teacher-weighted gaps so far against a max that
    moved up by ``moved_by`` (0 before the first tile, where moved_by is inf)."""
    return acc_u + tl.where(l_t > 0.0, moved_by * l_t, 0.0)


@triton.jit
def _log2p1(x):
    """log2(1 + x) in float64 for fp32 x >= 0, accurate where 1 + x rounds (Goldberg's form)."""
    x64 = x.to(tl.float64)
    y = 1.0 + x64
    den = tl.where(y == 1.0, 1.0, y - 1.0)
    return tl.where(y == 1.0, x64 * LOG2E, tl.log2(y) * (x64 / den))


@triton.jit
def _self_epilogue(acc, rows, offs_n, tile, COLUMNS):
    """One score tile (or column part of it) of ``_stats_kernel`` with the self teacher, acc = <Q_i, K_j>
    [rows, cols] at columns ``offs_n``: ``rows``, the rows' online (max, sum, rest, softmax-weighted sums
    of (max - S2) and of acc), updated (returned); with COLUMNS the columns' max, rest and the two
    weighted sums over the rows stored at part[k * part_stride + offs_n] (``tile`` = (scale2, mask_m,
    part, part_stride, N))."""
    m_t, l_t, rest, acc_u, acc_w = rows
    scale2, mask_m, part_ptr, part_stride, N = tile
    mask_n = offs_n < N
    # Padded columns: -inf in the exponents, but the dot products (and raw scores) stay 0 (0 * -inf is nan).
    raw = acc * scale2
    s2 = tl.where(mask_n[None, :], raw, float("-inf"))
    mt_new = tl.maximum(m_t, tl.max(s2, axis=1))
    alpha = tl.exp2(m_t - mt_new)
    e = tl.exp2(s2 - mt_new[:, None])
    rest = _rest(rest, alpha, mt_new > m_t, e)
    acc_u = _shifted(acc_u, mt_new - m_t, l_t) * alpha + tl.sum(e * (mt_new[:, None] - raw), axis=1)
    l_t = l_t * alpha + tl.sum(e, axis=1)
    acc_w = acc_w * alpha + tl.sum(e * acc, axis=1)
    if COLUMNS:
        col = part_ptr + offs_n
        s2_c = tl.where(mask_m[:, None], s2, float("-inf"))
        m_c = tl.where(mask_n, tl.max(s2_c, axis=0), 0.0)  # padded columns: -inf - 0, no nan
        e_c = tl.exp2(s2_c - m_c[None, :])
        tl.store(col, m_c, mask=mask_n)
        tl.store(col + part_stride, _column_rest(e_c), mask=mask_n)
        tl.store(col + 2 * part_stride, tl.sum(e_c * (m_c[None, :] - raw), axis=0), mask=mask_n)
        tl.store(col + 3 * part_stride, tl.sum(e_c * acc, axis=0), mask=mask_n)
    return (mt_new, l_t, rest, acc_u, acc_w)


@triton.jit
def _merge_kernel(
    part_ptr,
    part_stride,
    run_ptr,
    programs,
    N,
    TEACHER: tl.constexpr,
    FRESH: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Merge the column partials of ``programs`` statistics programs (part[k * part_stride + p * N + j],
    ``_stats_kernel``'s rows k) in program order and, unless FRESH, the running sums run[k * N + j] (of the
    launches before, the same rows k) into run, BLOCK columns per program. With M the largest of the
    partial maxima m_p, a_p = exp2(m_p - M), b_p the teacher's rescale (a_p for the self teacher, whose
    sums are 1 + rest):

        rest = sum_p (rest_p if m_p = M else (1 + rest_p) a_p) + (#{p: m_p = M} - 1),
        l' = sum_p l'_p b_p,  u = sum_p (u_p + (M - m_p) l'_p) b_p,  w = sum_p w_p b_p,

    and with TEACHER its rest' as the student's rest (over its maxima m'_p and b_p):

    sums of non-negative terms only, so a near one-hot column keeps the precision of its parts
    (docs/design.md, "Soft gaps"). Two passes over the partials, the first over their maxima; a fixed
    order, no atomics."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < N
    top = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    t_top = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    if not FRESH:
        top = tl.load(run_ptr + offs, mask=mask, other=0.0)
        if TEACHER:
            t_top = tl.load(run_ptr + 2 * N + offs, mask=mask, other=0.0)
    row = part_ptr + offs  # program p's partials, p = 0, 1, ... (64-bit pointer steps of N)
    for _ in range(programs):
        top = tl.maximum(top, tl.load(row, mask=mask, other=0.0))
        if TEACHER:
            t_top = tl.maximum(t_top, tl.load(row + 2 * part_stride, mask=mask, other=0.0))
        row += N
    zero = tl.zeros([BLOCK], dtype=tl.float32)
    sums = (zero, zero, zero, zero, zero, zero, zero)  # rest, partials at the max, l', u, w, rest', at max'
    if not FRESH:
        sums = _merge_part(run_ptr + offs, N, mask, top, t_top, sums, TEACHER)
    row = part_ptr + offs
    for _ in range(programs):
        sums = _merge_part(row, part_stride, mask, top, t_top, sums, TEACHER)
        row += N
    rest, tops, t_sum, u, w, t_rest, t_tops = sums
    k_u: tl.constexpr = 4 if TEACHER else 2
    tl.store(run_ptr + offs, top, mask=mask)
    tl.store(run_ptr + N + offs, rest + (tops - 1.0), mask=mask)
    if TEACHER:
        tl.store(run_ptr + 2 * N + offs, t_top, mask=mask)
        tl.store(run_ptr + 3 * N + offs, t_sum, mask=mask)
        tl.store(run_ptr + 6 * N + offs, t_rest + (t_tops - 1.0), mask=mask)
    tl.store(run_ptr + k_u * N + offs, u, mask=mask)
    tl.store(run_ptr + (k_u + 1) * N + offs, w, mask=mask)


@triton.jit
def _merge_part(src, stride, mask, top, t_top, sums, TEACHER: tl.constexpr):
    """``_merge_kernel``'s sums with one more partial (its rows k at src + k * stride)."""
    rest, tops, t_sum, u, w, t_rest, t_tops = sums
    k_u: tl.constexpr = 4 if TEACHER else 2
    m = tl.load(src, mask=mask, other=0.0)
    r = tl.load(src + stride, mask=mask, other=0.0)
    a = tl.exp2(m - top)
    at_top = m == top
    rest += tl.where(at_top, r, (1.0 + r) * a)
    tops += at_top.to(tl.float32)
    if TEACHER:
        l_p = tl.load(src + 3 * stride, mask=mask, other=0.0)
        m_t = tl.load(src + 2 * stride, mask=mask, other=0.0)
        b = tl.exp2(m_t - t_top)
        t_sum += l_p * b
        r_t = tl.load(src + 6 * stride, mask=mask, other=0.0)
        at_t_top = m_t == t_top
        t_rest += tl.where(at_t_top, r_t, (1.0 + r_t) * b)
        t_tops += at_t_top.to(tl.float32)
    else:
        l_p = 1.0 + r
        b = a
    u += (tl.load(src + k_u * stride, mask=mask, other=0.0) + (top - m) * l_p) * b
    w += tl.load(src + (k_u + 1) * stride, mask=mask, other=0.0) * b
    return rest, tops, t_sum, u, w, t_rest, t_tops


@triton.jit
def _weights_tile(
    t,
    pid_m,
    offs_m,
    mask_m,
    scale2,
    lse_q,
    e_q,
    q_q,
    ce,
    e0,
    cq,
    t_scale2,
    t_lse_q,
    d_q,
    k_ptr,
    q_ptr,
    lse_k_ptr,
    lo_k_ptr,
    h_k_ptr,
    a_k_ptr,
    tq_ptr,
    tk_ptr,
    t_lse_k_ptr,
    t_lo_k_ptr,
    g_ptr,
    ds_ptr,
    N,
    D,
    DT,
    row0,
    eps_all,
    n_blocks,
    sqm,
    sqd,
    skn,
    skd,
    stqm,
    stqd,
    stkn,
    stkd,
    TEACHER: tl.constexpr,
    HARD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    DOT_PREC: tl.constexpr,
    T_DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    T_UPCAST: tl.constexpr,
    TMA: tl.constexpr,
    PARTS: tl.constexpr,
    W_STEP: tl.constexpr,
):
    """Column tile ``t`` of ``_weights_kernel``'s row block, from the block's row terms (``q_q``, ``cq``,
    ``t_scale2``, ``t_lse_q`` unused without TEACHER); the column loads after the dots (in the epilogue,
    not held in registers across a pipelined walk). PARTS = 8 (no TEACHER): the epilogue in eight column
    parts, one after the other, each with its own ds partials."""
    pid_n = t  # a program id or the walk's counter (int32; a Python int in the interpreter)
    acc = weights_tile_dot(
        q_ptr,
        k_ptr,
        pid_n,
        offs_m,
        mask_m,
        N,
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
        TMA,
    )
    ds_blocks = tl.cdiv(N, BLOCK_N // PARTS)  # the partials' column blocks (n_blocks when PARTS is 1)
    rows = (pid_m, offs_m, mask_m, scale2, lse_q, e_q, q_q, ce, e0, cq, t_scale2, t_lse_q, d_q)
    cols = (lse_k_ptr, lo_k_ptr, h_k_ptr, a_k_ptr, tq_ptr, tk_ptr, t_lse_k_ptr, t_lo_k_ptr, g_ptr, ds_ptr)
    cols += (N, DT, row0, eps_all, ds_blocks, stqm, stqd, stkn, stkd)
    # the runtime arguments in tuples (a tuple holds no constexpr)
    if PARTS == 1:
        _w_part(
            acc,
            pid_n,
            *rows,
            *cols,
            TEACHER,
            HARD,
            BLOCK_M,
            BLOCK_N,
            False,
            BLOCK_DT,
            T_DOT_PREC,
            UPCAST,
            T_UPCAST,
            W_STEP,
        )
    else:  # eight column parts of V, four at a time
        tl.static_assert(PARTS == 8)
        V: tl.constexpr = BLOCK_N // 8
        h0, h1 = halves(acc, BLOCK_M, BLOCK_N)
        # fmt: off
        _w_quarters(h0, 8 * pid_n, rows, cols, TEACHER, HARD, BLOCK_M, V, BLOCK_DT, T_DOT_PREC, UPCAST,
                    T_UPCAST, W_STEP)
        _w_quarters(h1, 8 * pid_n + 4, rows, cols, TEACHER, HARD, BLOCK_M, V, BLOCK_DT, T_DOT_PREC, UPCAST,
                    T_UPCAST, W_STEP)
        # fmt: on


@triton.jit
def _w_quarters(
    h,
    b,
    rows,
    cols,
    TEACHER: tl.constexpr,
    HARD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    V: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    T_DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    T_UPCAST: tl.constexpr,
    W_STEP: tl.constexpr,
):
    """``_w_part`` over the four column parts of V of h [BLOCK_M, 4 V] (column blocks b .. b + 3), one
    after the other; ``rows`` and ``cols``: ``_weights_tile``'s runtime argument tuples."""
    q0, q1 = halves(h, BLOCK_M, 4 * V)
    a0, a1 = halves(q0, BLOCK_M, 2 * V)
    # fmt: off
    _w_part(a0, b, *rows, *cols, TEACHER, HARD, BLOCK_M, V, True, BLOCK_DT, T_DOT_PREC, UPCAST, T_UPCAST,
            W_STEP)
    _w_part(a1, b + 1, *rows, *cols, TEACHER, HARD, BLOCK_M, V, True, BLOCK_DT, T_DOT_PREC, UPCAST, T_UPCAST,
            W_STEP)
    a0, a1 = halves(q1, BLOCK_M, 2 * V)
    _w_part(a0, b + 2, *rows, *cols, TEACHER, HARD, BLOCK_M, V, True, BLOCK_DT, T_DOT_PREC, UPCAST, T_UPCAST,
            W_STEP)
    _w_part(a1, b + 3, *rows, *cols, TEACHER, HARD, BLOCK_M, V, True, BLOCK_DT, T_DOT_PREC, UPCAST, T_UPCAST,
            W_STEP)
    # fmt: on


@triton.jit
def _w_part(
    acc,
    b,
    pid_m,
    offs_m,
    mask_m,
    scale2,
    lse_q,
    e_q,
    q_q,
    ce,
    e0,
    cq,
    t_scale2,
    t_lse_q,
    d_q,
    lse_k_ptr,
    lo_k_ptr,
    h_k_ptr,
    a_k_ptr,
    tq_ptr,
    tk_ptr,
    t_lse_k_ptr,
    t_lo_k_ptr,
    g_ptr,
    ds_ptr,
    N,
    DT,
    row0,
    eps_all,
    ds_blocks,
    stqm,
    stqd,
    stkn,
    stkd,
    TEACHER: tl.constexpr,
    HARD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    W: tl.constexpr,
    PARTED: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    T_DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    T_UPCAST: tl.constexpr,
    W_STEP: tl.constexpr,
):
    """Columns [b W, (b + 1) W) of W = dL/dS for the row block pid_m from acc = <Q_i, K_j> there (with
    TEACHER their teacher tile recomputed), stored in g's dtype; with HARD the fp32 row sums of W * acc at
    ds[i, b] ([rows, ds_blocks]; a part wholly past column N stores nothing)."""
    if PARTED:  # a part of a wider tile (else b < ds_blocks: no mask, no registers for it)
        mask_m = mask_m & (tl.full([BLOCK_M], b, tl.int32) < ds_blocks)
    offs_n = b * W + tl.arange(0, W).to(tl.int64)
    mask_n = offs_n < N
    s2 = acc * scale2
    k_hi = tl.load(lse_k_ptr + offs_n, mask=mask_n, other=0.0)
    k_lo = tl.load(lo_k_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    e_k = tl.load(h_k_ptr + offs_n * W_STEP, mask=mask_n, other=0).to(tl.float32) * ce + e0
    if TEACHER:  # the teacher's tile first: no exponential tiles held across its dot
        q_k = tl.load(a_k_ptr + offs_n * W_STEP, mask=mask_n, other=0).to(tl.float32) * cq
        t_acc = dot_tile(
            tq_ptr,
            tk_ptr,
            offs_m,
            offs_n,
            mask_m,
            mask_n,
            DT,
            stqm,
            stqd,
            stkn,
            stkd,
            BLOCK_M,
            W,
            BLOCK_DT,
            T_DOT_PREC,
            T_UPCAST,
        )
        t2 = t_acc * t_scale2
        t_hi = tl.load(t_lse_k_ptr + offs_n, mask=mask_n, other=0.0)
        t_lo = tl.load(t_lo_k_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    # W as e (E_row + E_col) - hard + q (E_row - T_row) + q (E_col - T_col), not (e + q) E - q T: on the
    # diagonal the hard part is (e_i + e_j) v_i (v: eps less the mean off-diagonal mass, to an ulp
    # of itself, where e (E_row + E_col) - hard keeps an ulp of e near one-hot) before the soft terms come
    # in, and E - T is exact where the student's and the teacher's weights agree, so no ulp of e + q is
    # left where the exact dL/dS is tiny
    # the student's two-part LSEs (fp32 hi, bf16 lo): exp2((S2 - hi) - lo), S2 - hi exact near the max
    e_row = tl.exp2((s2 - lse_q[0][:, None]) - lse_q[1][:, None])
    e_col = tl.exp2((s2 - k_hi[None, :]) - k_lo[None, :])
    w = e_q[:, None] * e_row + e_k[None, :] * e_col
    if TEACHER:
        w += q_q[:, None] * (e_row - tl.exp2((t2 - t_lse_q[0][:, None]) - t_lse_q[1][:, None]))
        w += q_k[None, :] * (e_col - tl.exp2((t2 - t_hi[None, :]) - t_lo[None, :]))
    if HARD:
        # the diagonal from its factors (with TEACHER its soft part too)
        w = tl.where(tile_diagonal(pid_m, b, row0, BLOCK_M, W), d_q[:, None], w)
        # the hard targets' eps_all part (e_i + e_j) eps_all as a row and a column term (fewer tile
        # temporaries in the registers)
        w -= (e_q * eps_all)[:, None] + (e_k * eps_all)[None, :]
    store_weights(w, acc, g_ptr, ds_ptr, offs_m, offs_n, mask_m, mask_n, N, ds_blocks, b, HARD, UPCAST)


@triton.jit
def _weights_kernel(
    q_ptr,
    k_ptr,
    scale_ptr,
    lse_q_ptr,
    lse_k_ptr,
    lo_q_ptr,
    lo_k_ptr,
    h_q_ptr,
    h_k_ptr,
    a_q_ptr,
    a_k_ptr,
    cf_ptr,
    tq_ptr,
    tk_ptr,
    t_scale_ptr,
    t_lse_q_ptr,
    t_lse_k_ptr,
    t_lo_q_ptr,
    t_lo_k_ptr,
    g_ptr,
    ds_ptr,
    diag_ptr,
    u_ptr,
    M,
    N,
    D,
    DT,
    row0,
    eps_all,
    n_blocks,
    sqm,
    sqd,
    skn,
    skd,
    stqm,
    stqd,
    stkn,
    stkd,
    TEACHER: tl.constexpr,
    HARD: tl.constexpr,
    WALK: tl.constexpr,
    SLABS: tl.constexpr,
    W_STEP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    DOT_PREC: tl.constexpr,
    T_DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    T_UPCAST: tl.constexpr,
    TMA: tl.constexpr = False,
    PARTS: tl.constexpr = 1,
):
    """Tiles of W = p_i exp(S - r_i) + p_j exp(S - c_j) (- q_i exp(S' - r'_i)
    - q_j exp(S' - c'_j) with TEACHER), stored in g's dtype ([M, N] row-major), where e = cf[0] h +
    cf[2], q = cf[1] a and p = e + q (p = e without TEACHER: S' = S, the soft terms cancel), from the pair
    weights h, a of the rows (``*_q``) and of the columns (``*_k``; any real dtype, W_STEP elements apart:
    1, or 0 for one weight expanded, whose loads take one address; a runtime stride cost the 128 x 128
    tiles 5 registers and the gathered products' variant 12-28 B of spill on sm_90), formed as
    ``_w_part`` says (p is never formed); the
    student's LSEs packed as fp32 hi (``lse_*``) and bf16 lo (``lo_*``). HARD: W on the diagonal
    (row0 + i == j) as (e_i + e_j) v_i [+ (q_i + q_j) u_i with TEACHER] (v = ``diag_ptr``'s and u =
    ``u_ptr``'s fp32 row factors, in place of e_i (E_row + E_col) less the targets and
    q_i (E_row - T_row) + q_j (E_col - T_col); formed per row block) and minus
    (e_i + e_j) eps_all everywhere, so that W is dL/dS, and the tile's fp32 row sums
    of W <Q_i, K_j> at ds[i, column block] (the scale's gradient). WALK (tensor cores, no TEACHER: one D
    walk per tile): program (i, g) walks the column blocks g, g + G, ... of row block i
    (``triton_utils.walk_grid``) as one pipelined (column tile, D chunk) loop; else program (i, j) does
    tile (i, j) (SLABS: j = y + z Y past 65,535 tiles, ``triton_utils.grid_tile``).
    TMA: q_ptr and k_ptr are tensor descriptors; PARTS: see ``_weights_tile`` (the ds
    partials in column blocks of BLOCK_N / PARTS)."""
    pid_m, offs_m, mask_m = row_block(M, BLOCK_M)
    scale2 = tl.load(scale_ptr).to(tl.float32) * LOG2E
    lse_q = (  # (hi, lo)
        tl.load(lse_q_ptr + offs_m, mask=mask_m, other=0.0),
        tl.load(lo_q_ptr + offs_m, mask=mask_m, other=0.0).to(tl.float32),
    )
    ce = tl.load(cf_ptr)
    e0 = tl.load(cf_ptr + 2)
    e_q = tl.load(h_q_ptr + offs_m * W_STEP, mask=mask_m, other=0).to(tl.float32) * ce + e0
    if TEACHER:
        cq = tl.load(cf_ptr + 1)
        q_q = tl.load(a_q_ptr + offs_m * W_STEP, mask=mask_m, other=0).to(tl.float32) * cq
        t_scale2 = tl.load(t_scale_ptr).to(tl.float32) * LOG2E
        # the teacher's LSEs packed: fp32 hi, bf16 lo (torch_utils.pack_lse)
        t_hi = tl.load(t_lse_q_ptr + offs_m, mask=mask_m, other=0.0)
        t_lse_q = (t_hi, tl.load(t_lo_q_ptr + offs_m, mask=mask_m, other=0.0).to(tl.float32))
    else:
        q_q, cq, t_scale2, t_lse_q = e_q, ce, scale2, lse_q  # unused
    if HARD:
        # the diagonal's hard part (e_i + e_j) v_i, row i meeting the diagonal at k's row0 + i (rows whose
        # diagonal lies outside this launch's columns never select it): formed once per row block, the
        # tiles only select it (a scalar branch per tile that loads and forms it there spilled more)
        diag_k = row0 + offs_m
        on_k = mask_m & (diag_k >= 0) & (diag_k < N)
        e_d = tl.load(h_k_ptr + diag_k * W_STEP, mask=on_k, other=0).to(tl.float32) * ce + e0
        d_q = (e_q + e_d) * tl.load(diag_ptr + offs_m, mask=mask_m, other=0.0)
        if TEACHER:  # the soft part (q_i + q_j) u_i
            q_d = tl.load(a_k_ptr + diag_k * W_STEP, mask=on_k, other=0).to(tl.float32) * cq
            d_q += (q_q + q_d) * tl.load(u_ptr + offs_m, mask=mask_m, other=0.0)
    else:
        d_q = e_q  # unused
    rows = (scale2, lse_q, e_q, q_q, ce, e0, cq, t_scale2, t_lse_q, d_q)
    # the runtime arguments (a tuple holds no constexpr)
    args = (k_ptr, q_ptr, lse_k_ptr, lo_k_ptr, h_k_ptr, a_k_ptr, tq_ptr, tk_ptr, t_lse_k_ptr, t_lo_k_ptr)
    args += (g_ptr, ds_ptr, N, D, DT)
    args += (row0, eps_all, n_blocks, sqm, sqd, skn, skd, stqm, stqd, stkn, stkd)
    if WALK:
        tl.assume(D > 0)  # the D walk runs: the flattened walk needs no zero-trip copy
        for t in tl.range(tl.program_id(1), n_blocks, tl.num_programs(1), flatten=True):
            _weights_tile(
                t,
                pid_m,
                offs_m,
                mask_m,
                *rows,
                *args,
                TEACHER,
                HARD,
                BLOCK_M,
                BLOCK_N,
                BLOCK_D,
                BLOCK_DT,
                DOT_PREC,
                T_DOT_PREC,
                UPCAST,
                T_UPCAST,
                TMA,
                PARTS,
                W_STEP,
            )
    else:  # not the walk's loop run once: that costs the IEEE fp32 variants 40-90 registers and spills
        _weights_tile(
            grid_tile(n_blocks, SLABS),
            pid_m,
            offs_m,
            mask_m,
            *rows,
            *args,
            TEACHER,
            HARD,
            BLOCK_M,
            BLOCK_N,
            BLOCK_D,
            BLOCK_DT,
            DOT_PREC,
            T_DOT_PREC,
            UPCAST,
            T_UPCAST,
            TMA,
            PARTS,
            W_STEP,
        )


def tile_config(dim: int, dtype, teacher, kernel: str, arch: int | None = None, tma: bool = True) -> dict:
    """Launch config of the statistics ("stats") or weights ("weights") kernel for a student of width
    ``dim`` and ``dtype`` and ``teacher`` None or (Q', K', s') on sm_``arch`` (``triton_utils.HOST_ARCH``
    when None). With the self teacher, where ``wide_score_tiles`` holds, the statistics take 128-column
    tiles, the epilogue in four column parts (PARTS; in the interpreter 64 columns, the same paths), and
    the weights kernel the G kernel's 256 x 128 in eight parts, both read through TMA descriptors. ``tma``
    False (TMA cannot read the features: ``tma_ready``, ``features_config``): the statistics keep their
    tiles with pointer loads, the weights kernel takes the narrow tiles. Measured without a GPU
    (benchmarks/aot.py; every variant without spills on sm_90 and sm_80): the student's own config
    alone; IEEE fp32 dots on either side run on CUDA cores, 64 x 32 x 16 tiles on four warps (64 x 64
    for the weights kernel without a teacher and with aligned rows; eight warps for it at unaligned D);
    two 16-bit / TF32 score tiles in registers (a teacher) take 64 x 64 tiles (statistics, with their
    column partials) or 128 x 64 (weights, on sixteen warps) and teacher D chunks of 32 (128 x 128
    spilled); the TF32 self teacher's weights kernel its epilogue in eight parts."""
    arch = HOST_ARCH if arch is None else arch
    base = config(dim, dtype, "lse" if kernel == "stats" else "weights", arch)
    if teacher is None:
        t_dim, t_dtype = dim, dtype
    else:
        t_dim, t_dtype = teacher[0].shape[1], teacher[0].dtype
    wide = teacher is None and wide_score_tiles(dim, dtype, arch) and (tma or kernel == "stats")
    if triton_utils.small_tiles():
        cfg = dict(base, BLOCK_DT=config(t_dim, t_dtype, "weights")["BLOCK_D"])
        if wide and kernel == "weights":
            return dict(cfg, BLOCK_M=32, BLOCK_N=64, PARTS=8, TMA=True)
        if wide and tma:
            return dict(cfg, BLOCK_N=64, PARTS=4, TMA=True)
        return dict(cfg, BLOCK_N=64, PARTS=4) if wide else cfg
    if "ieee" in (dot_precision(dtype), dot_precision(t_dtype)):
        wide = teacher is None and dim % 16 == 0 and kernel == "weights"
        # the statistics kernel at three stages where D is a multiple of 16, else two (a teacher: four): at
        # four, three of them spilled 8-32 B on sm_80 with Triton 3.6's ptxas; at two and aligned D 32 B on
        # sm_90 with Triton 3.8's PTX, at three and unaligned D 16 B on sm_80 with 3.6's. These spill with
        # none of 3.6, 3.8, 3.9
        stages, warps = 4, 4
        if kernel == "weights" and dim % 16 != 0:
            # unaligned D: eight warps (80-128 registers with Triton 3.9). On four the products' variant (no
            # hard targets) took 96 registers and 4 B of spill on sm_80 once the student's LSEs came packed
            # (fp32 hi + bf16 lo vectors)
            warps = 8
        if kernel == "stats":
            stages = 3 if dim % 16 == 0 else (2 if teacher is None else 4)
            if teacher is not None and (dim % 16 != 0 or dot_precision(dtype) == "ieee"):
                # a teacher beside an IEEE fp32 side at unaligned D, or fp32 student and teacher at aligned
                # D: eight warps at four stages (170-190 registers with Triton 3.6-3.9, no spills). Four
                # warps at three spilled 16 B on sm_90 with 3.6 once the student's LSEs were two-part (fp32
                # pair, aligned D), and at four 8 B on sm_80 with 3.6 (unaligned D: fp32 pairs before the
                # soft gaps' sums, 16-bit students beside an fp32 teacher with them)
                stages, warps = 4, 8
        cfg = dict(BLOCK_M=64, BLOCK_N=64 if wide else 32, BLOCK_D=16, BLOCK_DT=16)
        return dict(cfg, num_warps=warps, num_stages=stages)
    if teacher is None:
        if kernel == "weights" and split_dots(dtype):
            # 128 x 64 tiles (128 x 128 spilled 4-12 B on sm_80 at two and three stages)
            return dict(base, BLOCK_N=64, BLOCK_DT=base["BLOCK_D"])
        if wide and kernel == "stats":
            # 128 x 128 (64 FLOP per byte of L2 traffic, 43 at 128 x 64) in four epilogue parts, read through
            # TMA descriptors: 137 / 128 registers on sm_90 with Triton 3.9 / 3.6 (with pointer loads, the
            # fallback, 202 / 211; two parts of 64 reached 255). The forward's 128 x 256 did not fit: 255
            # registers and 8 B of spill in four or eight parts, none in sixteen but at 255; on 16 warps
            # 229 KiB of shared memory (per part the columns' max and two sums, where the forward stores
            # one sum per column)
            return dict(
                base, BLOCK_N=128, PARTS=4, BLOCK_DT=base["BLOCK_D"], **({"TMA": True} if tma else {})
            )
        if wide:
            # the contrastive G kernel's 256 x 128 on 16 warps through TMA descriptors (config
            # "weights_wide"), the epilogue in eight parts with their own ds partials: 120 registers on
            # sm_90 with Triton 3.9. In four parts (the contrastive kernel's) it reached 128 and spilled
            # 68 B once the student's LSEs were two-part (the pair weights e_i, e_j beside each LSE's hi
            # and lo); 256 x 64 in four fit (96) but the model put the loss 11-18% slower
            return dict(config(dim, dtype, "weights_wide", arch), BLOCK_DT=base["BLOCK_D"], PARTS=8)
        if kernel == "stats" and split_dots(dtype):
            # D chunks of 16 (the operands' parts take registers): at 32 with chunked D the two-part LSEs'
            # float64 epilogue put sm_80's tf32x3 variant at 255 registers and 28 B of spill
            return dict(base, BLOCK_D=16, BLOCK_DT=16)
        if kernel == "weights" and dtype == torch.float32 and dot_precision(dtype) == "tf32":
            # the TF32 128 x 128 tiles with the epilogue in eight column parts: 172 / 255 registers on
            # sm_90 / sm_80 with Triton 3.9; in one part the hard targets' variant spilled 16-52 B on both
            # once the diagonal's hard part came from the masses
            return dict(base, BLOCK_DT=base["BLOCK_D"], PARTS=8)
        if kernel == "stats" and base["BLOCK_D"] < dim:
            # chunked D: the epilogue in four column parts (the soft gaps' rest and weighted distances put the
            # 128 x 64 tiles at 255 registers and 28 B of spill on sm_90 at D = 72 / 100 in one; 252 in four)
            cfg = dict(base, BLOCK_DT=base["BLOCK_D"], PARTS=4)
            if mma_sync(arch) and dim % 16 != 0:
                # 32-column tiles on sm_80 at unaligned D (221-245 registers with Triton 3.6-3.9): at 64
                # its 255 spilled 16 B with 3.6 once the rows' rest was stored (the off-diagonal masses),
                # at any stage count
                cfg["BLOCK_N"] = 32
            return cfg
        return dict(base, BLOCK_DT=base["BLOCK_D"])
    if split_dots(t_dtype):
        # split-precision fp32 teacher dots: D' chunks of 16, the statistics at two pipeline stages (a split
        # student's D chunks of 16 too), the weights kernel on 64 x 32 tiles. Larger ones spilled 8-252 B on
        # sm_80 with Triton 3.6 or 3.9 (128 x 64 weights tiles 104-192 B on sm_90)
        if kernel == "stats":
            block_d = 16 if split_dots(dtype) else base["BLOCK_D"]
            cfg = dict(base, BLOCK_M=64, BLOCK_D=block_d, BLOCK_DT=16, num_stages=2)
            if mma_sync(arch):
                # 32-column tiles on sm_80 (mma.sync keeps the score tiles in registers: with the soft gaps'
                # sums the 64-column ones reached 255 and spilled 16-60 B; 169-242 registers now)
                cfg["BLOCK_N"] = 32
            return cfg
        return dict(base, BLOCK_M=64, BLOCK_N=32, BLOCK_D=min(base["BLOCK_D"], 64), BLOCK_DT=16)
    if kernel == "stats":
        return dict(base, BLOCK_M=64, BLOCK_DT=32)
    cfg = dict(base, BLOCK_N=64, BLOCK_D=min(base["BLOCK_D"], 64), BLOCK_DT=32)
    # two 16-bit / TF32 score tiles (the IEEE and split dots took their branches above): sixteen warps, 128
    # registers (one program per SM either way). At eight the TF32 hard targets' variant reached 255 and
    # spilled 4 B on sm_90 with Triton 3.9 once a separate teacher's LSEs were two-part (their bf16 lo
    # beside each hi), and the 16-bit ones at unaligned D 20-32 B once the diagonal's hard part came from
    # the masses (its row vector, and the student's LSEs as hi + lo vectors)
    if mma_sync(arch) and t_dtype != torch.float32:
        # 16-bit teachers on sm_80: 128 x 32 tiles (112-128 registers with Triton 3.9). At 128 x 64 they
        # spilled 12-20 B once a separate teacher's soft part on the diagonal came from the masses (the
        # soft factors' row vector, and the gathered products' variant now with the diagonal; mma.sync
        # keeps both score tiles in registers)
        cfg["BLOCK_N"] = 32
    # eight warps on tcgen05 (sm_100), where Triton lowers a dot on sixteen to mma.sync
    return dict(cfg, num_warps=8 if tcgen05(arch) else 16)


def features_config(q: torch.Tensor, k: torch.Tensor, teacher, kernel: str) -> dict:
    """``tile_config`` of ``kernel`` for the student's features q, k on their device: the pointer-load
    fallback where TMA cannot read them (``tma_ready``)."""
    return tile_config(q.shape[1], q.dtype, teacher, kernel, target_arch(q.device), tma=tma_ready(q, k))


def _launch_meta(q, k, teacher) -> tuple[dict, tuple]:
    """The statistics kernel's constexpr kwargs and the teacher's runtime arguments (the student's as
    placeholders when None)."""
    dim = q.shape[1]
    cfg = features_config(q, k, teacher, "stats")
    meta = dict(
        SINGLE_D=dim <= cfg["BLOCK_D"],
        DOT_PREC=dot_precision(q.dtype),
        UPCAST=upcast(q.dtype),
        TEACHER=teacher is not None,
        **cfg,
    )
    if teacher is None:
        meta.update(T_DOT_PREC=meta["DOT_PREC"], T_UPCAST=meta["UPCAST"])
        return meta, (q, k, 1, 0, 0, 0, 0)
    t_q, t_k, _ = teacher
    meta.update(T_DOT_PREC=dot_precision(t_q.dtype), T_UPCAST=upcast(t_q.dtype))
    return meta, (t_q, t_k, t_q.shape[1], t_q.stride(0), t_q.stride(1), t_k.stride(0), t_k.stride(1))


def _launch_stats(q, k, scale, teacher, outs, part=None, rows=None) -> None:
    """One ``_stats_kernel`` launch: the row statistics of the first ``rows`` rows of q (default all) into
    ``outs`` = (lse, t_lse, wsum, gap, rest, t_rest), and with ``part`` ([parts, programs, N] fp32) the column
    partials."""
    m = q.shape[0] if rows is None else rows
    meta, (t_q, t_k, t_dim, *t_strides) = _launch_meta(q, k, teacher)
    lse, t_lse, wsum, gap, rest, t_rest = outs
    t_scale = scale if teacher is None else teacher[2]
    q_arg, k_arg = tile_operands(q, k, meta)
    _stats_kernel[(triton.cdiv(m, meta["BLOCK_M"]),)](
        q_arg,
        k_arg,
        scale,
        t_q,
        t_k,
        t_scale,
        lse,
        t_lse,
        wsum,
        gap,
        rest,
        t_rest,
        lse if part is None else part,
        0 if part is None else part.stride(0),
        m,
        k.shape[0],
        q.shape[1],
        t_dim,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        *t_strides,
        COLUMNS=part is not None,
        **meta,
    )


# Columns per program of ``_merge_kernel``.
_MERGE_BLOCK = 256


def _merge_columns(part, programs: int, run, teacher: bool, fresh: bool) -> None:
    """Merge the first ``programs`` programs' column partials in ``part`` (and unless ``fresh`` the sums
    in ``run``, [parts, N] fp32) into ``run`` (``_merge_kernel``)."""
    n = run.shape[1]
    block = 64 if triton_utils.small_tiles() else _MERGE_BLOCK
    _merge_kernel[(triton.cdiv(n, block),)](
        part, part.stride(0), run, programs, n, TEACHER=teacher, FRESH=fresh, BLOCK=block
    )


def both_stats(q, k, scale, teacher=None, row0: int | None = 0):
    """(r, c, r', c', w, w', x, g, g', rest, rest_c, x', t_rest, t_rest_c) of S = scale * q @ k.T (and the
    teacher's S'), the LSEs in base 2 (the kernels' units: ``TritonSoftTargetBackend.lse_base2``) in
    float64 (two-part), the weighted sums and the soft gaps (``torch_utils.soft_rows``) in fp32, x the
    pass's own diagonal scores S2[i, row0 + i] in fp32 (base 2; None for ``row0`` None), the rows' and the
    columns' rests below their largest scores in fp32, and the same three of a separate teacher (its
    diagonal S'2[i, row0 + i] from ``_teacher_diagonal``; the student's again for the self teacher), in
    one pass over the tiles: the rows online; the columns as per-program partials, exact within a program
    (each column tile is seen once), merged in a fixed order (``_merge_kernel``: deterministic, no
    atomics)."""
    m, n = q.shape[0], k.shape[0]
    dev = q.device
    parts = 4 if teacher is None else 7
    meta, _ = _launch_meta(q, k, teacher)
    r = torch.empty(m, dtype=torch.float64, device=dev)
    tr = r if teacher is None else torch.empty_like(r)
    w = torch.empty(m, dtype=torch.float32, device=dev)
    g = torch.empty_like(w)
    rest = torch.empty_like(w)
    t_rest = rest if teacher is None else torch.empty_like(w)
    step = forward_rows_per_launch(m, parts * n, meta["BLOCK_M"], workspace_bytes())
    part = torch.empty((parts, triton.cdiv(step, meta["BLOCK_M"]), n), dtype=torch.float32, device=dev)
    run = torch.empty((parts, n), dtype=torch.float32, device=dev)  # the columns' sums so far
    for r0 in range(0, m, step):
        rows = min(step, m - r0)
        t = None if teacher is None else (teacher[0][r0:], teacher[1], teacher[2])
        outs = (r[r0:], tr[r0:], w[r0:], g[r0:], rest[r0:], t_rest[r0:])
        _launch_stats(q[r0:], k, scale, t, outs, part, rows=rows)
        _merge_columns(part, triton.cdiv(rows, meta["BLOCK_M"]), run, teacher is not None, r0 == 0)
    del part
    sums = tuple(run[:6]) if teacher is not None else (run[0], run[1], None, None, run[2], run[3])
    c, tc, g_col, w_col = finish_partials(*sums, base2=True)
    rest_col = run[1].clone()
    t_rest_col = rest_col if teacher is None else run[6].clone()
    del run, sums
    # the student's scores as the pass's tiles formed them (row0 None: not wanted)
    x = None if row0 is None else diagonal(q, k, scale, meta, row0)
    if teacher is None:
        return r, c, r, c, w, w_col, x, g, g_col, rest, rest_col, x, rest, rest_col
    t_x = None if row0 is None else _teacher_diagonal(teacher, n, meta, row0)
    return r, c, tr, tc, w, w_col, x, g, g_col, rest, rest_col, t_x, t_rest, t_rest_col


def slabs_config(cfg: dict, dtype, teacher) -> dict:
    """The weights kernel's ``cfg`` for a launch past 65,535 column tiles (``triton_utils.walk_grid``'s
    slabs along z): an IEEE teacher's eight-warp tiles (unaligned D) on four. On eight the slabs' tile
    index put the fp32 student's variant at 128 registers and 28 B of spill on sm_90; on four, 168 and
    none with Triton 3.6-3.9 (benchmarks/aot.py's "/slabs" rows)."""
    ieee = teacher is not None and "ieee" in (dot_precision(dtype), dot_precision(teacher[0].dtype))
    return dict(cfg, num_warps=4) if ieee and cfg.get("num_warps") == 8 else cfg  # (the interpreter's: none)


def weights(q, k, scale, lse_q, lse_k, pair_q, pair_k, cf, teacher, t_lse_q, t_lse_k, g, hard=None) -> int:
    """Fill g [M, N] (a workspace view, the features' dtype) with
    W = p_q exp(S - lse_q) + p_k exp(S - lse_k) - [teacher] (q_q exp(S' - t_lse_q) + q_k exp(S' - t_lse_k)),
    e = cf[0] h + cf[2], q = cf[1] a, p = e + q (p = e without a teacher) from the pair weights
    ``pair_q`` = (h, a) of the rows [M] and ``pair_k`` of the columns [N]; the student's LSEs ``lse_q``,
    ``lse_k`` and ``teacher`` None or (Q' [M, D'], K' [N, D'], s') its LSEs ``t_lse_q``, ``t_lse_k``,
    all packed (fp32 hi, bf16 lo) pairs (``torch_utils.pack_lse``).
    ``hard`` = (row0, v, u, eps_all, ds): also the hard targets, W = (e_q + e_k) v_i [+ (q_q + q_k) u_i
    with a teacher] on the diagonal [row0 + i == j] in place of W's own there (v, u [M] fp32; u None
    without a teacher) and minus (e_q + e_k) eps_all, with the fp32 row sums of W <q_i, k_j> per column
    block in ds; returns how many (M x column blocks of BLOCK_N / PARTS), else 0. The pair weights'
    four vectors share one stride (0: one weight expanded)."""
    m, dim = q.shape
    n = k.shape[0]
    cfg = features_config(q, k, teacher, "weights")
    walk = dot_precision(q.dtype) != "ieee" and teacher is None
    grid, n_blocks = walk_grid(m, n, cfg, walk, q.device)
    if len(grid) == 3:
        cfg = slabs_config(cfg, q.dtype, teacher)
    if hard is None:
        row0, diag, u, eps_all, ds, count = 0, g, None, 0.0, g, 0
    else:
        row0, diag, u, eps_all, ds = hard
        count = partials_of(m, n, cfg, ds)
    w_step = pair_q[0].stride(0) if pair_q[0].shape[0] > 1 else 1
    if w_step not in (0, 1) or any(v.shape[0] > 1 and v.stride(0) != w_step for v in (*pair_q, *pair_k)):
        raise ValueError("the pair weights' vectors must share one stride (1, or 0 for one expanded weight)")
    if teacher is None:
        t_q, t_k, t_scale, t_dim, t_strides = q, k, scale, 1, (0, 0, 0, 0)
        t_lse_q, t_lse_k = (lse_q, lse_q), (lse_k, lse_k)  # unused
        t_prec, t_up = dot_precision(q.dtype), upcast(q.dtype)
    else:
        t_q, t_k, t_scale = teacher
        t_dim = t_q.shape[1]
        t_strides = (t_q.stride(0), t_q.stride(1), t_k.stride(0), t_k.stride(1))
        t_prec, t_up = dot_precision(t_q.dtype), upcast(t_q.dtype)
    q_arg, k_arg = tile_operands(q, k, cfg)
    _weights_kernel[grid](
        q_arg,
        k_arg,
        scale,
        lse_q[0],
        lse_k[0],
        lse_q[1],
        lse_k[1],
        pair_q[0],
        pair_k[0],
        pair_q[1],
        pair_k[1],
        cf,
        t_q,
        t_k,
        t_scale,
        t_lse_q[0],
        t_lse_k[0],
        t_lse_q[1],
        t_lse_k[1],
        g,
        ds,
        diag,
        diag if u is None else u,
        m,
        n,
        dim,
        t_dim,
        row0,
        eps_all,
        n_blocks,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        *t_strides,
        TEACHER=teacher is not None,
        HARD=hard is not None,
        WALK=walk,
        SLABS=len(grid) == 3,
        W_STEP=w_step,
        DOT_PREC=dot_precision(q.dtype),
        T_DOT_PREC=t_prec,
        UPCAST=upcast(q.dtype),
        T_UPCAST=t_up,
        **cfg,
    )
    return count


def _blocks(dim: int, dtype, teacher, arch: int | None = None) -> tuple:
    """The weights kernel's blocks (``weights_blocks``: its TMA config and the pointer-load fallback's) for
    the plan, which sizes the workspace's partials, on sm_``arch`` (the device's: the tiles, and so the
    statistics' partials, depend on it)."""
    configs = (tile_config(dim, dtype, teacher, "weights", arch, tma=tma) for tma in (True, False))
    return weights_blocks(*configs)


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).contiguous()


def _packed32(lse) -> tuple[torch.Tensor, torch.Tensor]:
    """LSEs as the weights kernel takes them, (fp32 hi, bf16 lo) contiguous: float64 ones packed
    (``torch_utils.pack_lse``: the gathered Function's; the single-process one saves them packed)."""
    hi, lo = pack_lse(lse) if isinstance(lse, torch.Tensor) else lse
    return _f32(hi), lo.to(torch.bfloat16).contiguous()


class TritonSoftTargetBackend:
    """``stats`` / ``accumulate`` of ops/soft_target.py: the statistics kernel above, and the products on
    the G-chunk engine (ops/gchunk_triton.py): W in chunks of rows, two tensor-core GEMMs per chunk into
    fp32 outputs (W @ T stored per chunk, W.T @ I accumulated), no float atomics (deterministic). The
    LSEs are in base 2 (``lse_base2``, as the contrastive TritonBackend's): the weights kernel's exponents
    subtract the statistics kernel's own values."""

    lse_base2 = True

    @on_device
    def stats(self, image, text, scale, teacher=None, row0: int | None = 0):
        """(r, c, r', c', w, w', x, g, g') for S = scale * image @ text.T (image [M, D], text [N, D]): the
        LSEs in base 2, float64; the weighted sums and soft gaps fp32; the diagonal scores at columns
        ``row0`` + i (``both_stats``)."""
        scale = _f32(scale.detach())
        if teacher is not None:
            t_image, t_text, t_scale = teacher
            teacher = (t_image, t_text, _f32(t_scale.detach()))
        return both_stats(image, text, scale, teacher, row0)

    @staticmethod
    def _teacher32(teacher, tr, tc):
        """The teacher's scale in fp32 and its packed LSEs (fp32 hi, bf16 lo) contiguous."""
        if teacher is None:
            return None, tr, tc
        t_image, t_text, t_scale = teacher
        return (t_image, t_text, _f32(t_scale.detach())), _packed32(tr), _packed32(tc)

    @staticmethod
    def _fill(work, q, k, scale, lse_q, lse_k, pair_q, pair_k, cf, teacher, t_lse_q, t_lse_k, hard=None):
        """``weights`` for ``Workspace.products`` (rows of q against a slab of k's columns; the LSEs packed);
        with ``hard`` = (diag0, v, u, eps_all) also the hard targets (q's row i on the diagonal at k's row
        diag0 + i, v and u [rows of q] the diagonal factors, u None without a teacher) and, as the
        statistics, the slab's sum of W <q, k>."""

        def on_diagonal(rows: slice, s0: int):
            diag0, v, u, eps_all = hard
            return diag0 + rows.start - s0, v[rows], None if u is None else u[rows], eps_all, work.part

        def fill(rows: slice, s0: int, cols: int, g: torch.Tensor):
            cs = slice(s0, s0 + cols)
            t = None
            if teacher is not None:
                t = (teacher[0][rows], teacher[1][cs], teacher[2])
            count = weights(
                q[rows],
                k[cs],
                scale,
                lse_at(lse_q, rows),
                lse_at(lse_k, cs),
                tuple(v[rows] for v in pair_q),
                tuple(v[cs] for v in pair_k),
                cf,
                t,
                None if t is None else lse_at(t_lse_q, rows),
                None if t is None else lse_at(t_lse_k, cs),
                g,
                None if hard is None else on_diagonal(rows, s0),
            )
            return work.part[:count].sum() if count else None

        return fill

    @on_device
    def gradients(
        self,
        image,
        text,
        scale,
        r,
        c,
        hard_w,
        soft_w,
        coefs,
        eps,
        diag,
        teacher=None,
        tr=None,
        tc=None,
        need_t=True,
    ):
        """(dI, dT or None, ds) of the single-process loss (ops/soft_target.py), in the features' dtype: the
        weights kernel writes dL/dS = W - (e_i + e_j) ((1 - eps) delta_ij + eps / B) per chunk of rows
        (e = coefs[0] h, q = coefs[1] soft_w, formed in the kernel: no [B] temporaries; ``soft_w`` of any
        real dtype, one weight expanded (stride 0) or a vector: the single-process Function's uint8 mask;
        ``hard_w`` is h [B] or (x, y) for h = x soft_w + y; the diagonal from the factors ``diag`` = (v, u)
        [B] each, u None for the self teacher; the LSEs ``r``, ``c`` packed, ``torch_utils.pack_lse``),
        dI = s dL/dS @ T is stored, dT = s dL/dS.T @ I accumulated in fp32 for the columns the workspace
        covers and computed by a column pass (the same kernel with the roles swapped) for the rest,
        ds = sum dL/dS <I, T> from the kernel's partial sums. No fp32 [B, D] buffer beyond the
        workspace."""
        batch, dim = image.shape
        dev = image.device
        scale = _f32(scale.detach())
        teacher, tr, tc = self._teacher32(teacher, tr, tc)
        r, c = _packed32(r), _packed32(c)
        v, u = (None if f is None else _f32(f) for f in diag)
        coefs = coefs.float()
        lo, hi = (x.float() for x in torch.aminmax(soft_w))
        if isinstance(hard_w, tuple):  # h = x a + y: formed in the kernel from a, no [B] vector
            x, y = hard_w
            h_vec, h_mag = soft_w, torch.maximum((lo * x + y).abs(), (hi * x + y).abs())
            e_coefs = (coefs[0] * x, coefs[0] * y)
        else:
            h_vec = _f32(hard_w)
            h_mag = h_vec.abs().max()
            e_coefs = (coefs[0], torch.zeros_like(coefs[0]))
        # dL/dS is rounded to the features' dtype for the tensor-core products: scaled by an upper bound of
        # its weights (|e| + |q|, on the device, no sync) it stays at probability scale (2 where a softmax
        # is one-hot) instead of 1/B times grad_output, which fp16 would flush
        a_mag = torch.maximum(lo.abs(), hi.abs()) if teacher is not None else torch.zeros_like(h_mag)
        norm = coefs[0].abs() * h_mag + coefs[1].abs() * a_mag
        norm = torch.where(norm > 0, norm, torch.ones_like(norm))
        cf = (torch.stack([e_coefs[0], coefs[1], e_coefs[1]]) / norm).contiguous()
        blocks = _blocks(dim, image.dtype, teacher, target_arch(dev))
        plan = backward_plan(batch, batch, dim, image.element_size(), need_t, workspace_bytes(), blocks)
        work = Workspace(plan, batch, batch, dim, image.dtype, dev)
        alpha = (scale * norm).reshape(1)
        pair, hard = (h_vec, soft_w), (0, v, u, eps / batch)
        rows = self._fill(work, image, text, scale, r, c, pair, pair, cf, teacher, tr, tc, hard)
        swapped = None if teacher is None else (teacher[1], teacher[0], teacher[2])
        cols = self._fill(work, text, image, scale, c, r, pair, pair, cf, swapped, tc, tr, hard)
        d_image, d_text, ds = work.gradients(image, text, rows, cols, alpha, need_t)
        return d_image, d_text, ds * norm

    @on_device
    def accumulate(
        self, image, text, scale, r, c, e_row, e_col, q_row, q_col, teacher=None, tr=None, tc=None, diag=None
    ):
        """W @ text [M, D] and W.T @ image [N, D] in fp32 (W: see ops/soft_target.py), with ``diag`` =
        (row0, v, u) W = (e_i + e_j) v_i [+ (q_i + q_j) u_i with a teacher] where row0 + i == j (in the
        weights kernel, before the products)."""
        m, dim = image.shape
        n = text.shape[0]
        dev = image.device
        scale = _f32(scale.detach())
        teacher, tr, tc = self._teacher32(teacher, tr, tc)
        r, c = _packed32(r), _packed32(c)
        e_row, e_col, q_row, q_col = (_f32(x) for x in (e_row, e_col, q_row, q_col))
        # the pair weights h = e, a = q, normalised by the largest weight
        norm = torch.stack([v.abs().max() for v in (e_row, e_col, q_row, q_col)]).max()
        norm = torch.where(norm > 0, norm, torch.ones_like(norm))
        cf = torch.stack([norm.reciprocal(), norm.reciprocal(), torch.zeros_like(norm)])
        blocks = _blocks(dim, image.dtype, teacher, target_arch(dev))
        stats = 0 if diag is None else 1  # the hard targets' path also stores ds partials (unused here)
        plan = backward_plan(m, n, dim, image.element_size(), False, workspace_bytes(), blocks, stats)
        work = Workspace(plan, m, n, dim, image.dtype, dev)
        hard = None
        if diag is not None:
            row0, v, u = diag
            hard = (row0, _f32(v), None if u is None else _f32(u), 0.0)
        pair_q, pair_k = (e_row, q_row), (e_col, q_col)
        fill = self._fill(work, image, text, scale, r, c, pair_q, pair_k, cf, teacher, tr, tc, hard)
        a_i, a_t, _ = work.fp32_products(image, text, fill)
        return a_i.mul_(norm), a_t.mul_(norm)
