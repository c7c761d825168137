"""Triton backend of the contrastive loss (v2): 8 B^2 D FLOPs where the workspace allows, O(B) memory,
deterministic. docs/design.md ("Contrastive kernels v2") has the derivations; in short:

Forward, ``_forward_kernel``, one pass over S = s I @ T.T (2 B^2 D): one program per BLOCK_M rows walks
every column tile once, keeps the rows' online max and sum over the off-diagonal scores (flash-attention
style, base 2; the diagonal's term is added in float64 after the pass, ``_lse_pair``, so that the
off-diagonal masses 1 - P_ii come out to an ulp of themselves) and, for the columns, sums exp2(S2 - ref_j)
over its rows but the diagonal, where ref_j (``column_reference``) is an upper bound of
column j's scores, s |T_j| max_i |I_i| (Cauchy-Schwarz, with a rounding margin), lowered by a headroom of
``124 - ceil(log2 M)`` bits: no term exceeds 2^headroom and no sum of M terms overflows. With a fixed
reference the per-program column sums merge by plain addition: each program writes its partial row of
sums (``[programs, N]`` fp32 in the workspace, rows launched in groups that fit it) and torch sums them
in a fixed order (no atomics: bitwise reproducible). A column whose sum falls below M 2^-100 (its scores
more than ~100 bits under the bound: unnormalised features, huge scales) or is not finite is recomputed
exactly by ``_lse_kernel`` over a device-side list of such columns (no host sync; a full grid of
programs of which those past the list's length do nothing).

Backward, chunks of rows (``backward_plan``): ``_weights_kernel`` recomputes S for C rows and writes
G = exp(S - r) + exp(S - c) - 2 (1 - eps) delta - 2 eps / B (its diagonal the forward's
2 eps - (1 - P_ii) - (1 - Q_ii)) in the features' dtype into the workspace (with fp32 row sums of
G * <I, T> for the scale's gradient), then two tensor-core GEMMs
(``triton_utils.matmul``): dI[rows] = s k g / (2B) G @ T (written in the features' dtype) and, for the
first ``covered`` columns, dT += G.T @ I[rows] in dT itself (an int8 remainder for 16-bit features:
gchunk_triton) (6 B^2 D in all). The text gradients of
the columns the accumulator could not hold (the workspace budget) come from a second pass over column
chunks, the same kernels with the roles swapped (G.T has the same form): 2 B^2 D more per uncovered
column share. No float atomics anywhere; every product has one writer per output tile.

Operands stay in their dtype for tensor cores (TF32 when torch allows it for fp32; IEEE fp32 dots run on
CUDA cores with tiles sized not to spill); accumulation is fp32; offsets are int64. The LSEs r and c stay
in base 2 (of S log2(e), the kernels' exponents) from the forward to the backward: the loss converts them
(``lse_base2`` of the backend protocol). Two-part LSEs: they are stored in float64 (the rows' m + log2(l)
formed in float64; the columns' ref + log2(sums) too, each column term compensated for the rounding of
S2 - ref, whose ulp is coarser than S2's) and the weights kernel splits each into fp32 hi + lo
(``split_lse``) for exp2((S2 - hi) - lo): an fp32 LSE is rounded to an ulp of |S2| (1.5e-5 at s = 100),
which every weight near 1 inherited, where torch's softmax keeps an ulp of 1. 8 bytes per row and
column instead of 4; per element, one more add in the backward and five in the forward's column terms.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from vlkernels.ops.gchunk_triton import BackwardPlan, Workspace, backward_plan
from vlkernels.ops.torch_utils import f32_rows, lse_and_mass, row_chunks, workspace_bytes
from vlkernels.ops.triton_utils import (
    LN2,
    LOG2E,
    config,
    diagonal_mask,
    dot_precision,
    forward_config,
    grid_tile,
    halves,
    on_device,
    partials_of,
    row_block,
    row_operands,
    store_weights,
    target_arch,
    tile_diagonal,
    tile_operands,
    upcast,
    walk_grid,
    walk_tile,
    weights_blocks,
    weights_config,
    weights_tile_dot,
)

# Relative margin on the column bound for the rounding of the dots (tensor-core products of rounded
# operands, fp32 accumulation: well under 2^-8 of s |I| |T| for D up to 2^16).
BOUND_MARGIN = 2.0**-6
# The forward's stand-in for a diagonal score in its sums: exp2 of it less any max or reference is 0.
OFF_DIAG = tl.constexpr(-3.0e38)
# A column's sum of exp2(S2 - ref) below rows * 2^-100 is recomputed exactly: the terms flushed to zero
# (< 2^-126 each) then weigh under 2^-26 of the sum.
UNDERFLOW_BITS = 100


@triton.jit
def _lse_kernel(
    q_ptr,
    k_ptr,
    scale_ptr,
    max_ptr,
    off_ptr,
    idx_ptr,
    count_ptr,
    M,
    N,
    D,
    diag0,
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
    """The max over j of S2_ij (S2 = s <Q_i, K_j> log2(e)) and the sum of exp2(S2_ij - max) over the
    off-diagonal j (j != i + diag0; online) for the rows idx[0:count] of Q, written to max[idx] and
    off[idx]: the forward's fallback for the columns whose fixed-reference sums underflowed."""
    if DOT_PREC != "ieee":  # the D walk runs: the flattened column walk needs no zero-trip copy
        tl.assume(D > 0)
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    count = tl.load(count_ptr)
    mask_m = offs < count
    offs_m = tl.load(idx_ptr + offs, mask=mask_m, other=0)
    n_eff = tl.where(pid * BLOCK_M < count, N, 0)  # programs past the list do no work
    scale2 = tl.load(scale_ptr).to(tl.float32) * LOG2E
    operands = row_operands(
        q_ptr, k_ptr, offs_m, mask_m, D, sqm, sqd, skn, skd, BLOCK_M, BLOCK_D, SINGLE_D, UPCAST
    )
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in tl.range(0, n_eff, BLOCK_N, flatten=DOT_PREC != "ieee"):
        offs_n, mask_n, acc = walk_tile(
            operands, start_n, N, BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_D, DOT_PREC, UPCAST, False
        )
        s2 = tl.where(mask_n[None, :], acc * scale2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s2, axis=1))
        own = offs_n[None, :] == (offs_m + diag0)[:, None]
        e = tl.where(own, 0.0, tl.exp2(s2 - m_new[:, None]))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(e, axis=1)
        m_i = m_new
    tl.store(max_ptr + offs_m, m_i, mask=mask_m)
    tl.store(off_ptr + offs_m, l_i, mask=mask_m)


@triton.jit
def _diagonal_kernel(
    q_ptr,
    k_ptr,
    scale_ptr,
    diag_ptr,
    M,
    N,
    D,
    row0,
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
    TMA: tl.constexpr = False,
):
    """diag[i] = S2[i, row0 + i] (S2 = s <Q_i, K_j> log2(e)) bitwise as a one-pass walk over the same
    tiles formed it: ``both_lse`` and the soft target's ``both_stats`` launch this with their walk's tile
    config (``diagonal``), so that the loss subtracts from the LSEs the very scores they were formed
    from. Each program recomputes the walk's own tiles (columns from multiples of BLOCK_N) that its rows'
    diagonal crosses, by the same ``walk_tile``: each product the same sequence of operations on
    the same operands. A tile's diagonal scores are taken per column (a masked column sum) and stored at
    the rows they belong to: a masked row sum spilled 56 B at 80 registers in the 64 x 32 IEEE fp32 tiles
    on sm_90 (Triton 3.8). Inside the walks this cost them up to 70 registers and spilled (docs/design.md,
    "The LSE passes' own diagonal scores")."""
    if DOT_PREC != "ieee":  # as the walks' (the same D loop)
        tl.assume(D > 0)
    pid, offs_m, mask_m = row_block(M, BLOCK_M)
    scale2 = tl.load(scale_ptr).to(tl.float32) * LOG2E
    operands = row_operands(
        q_ptr, k_ptr, offs_m, mask_m, D, sqm, sqd, skn, skd, BLOCK_M, BLOCK_D, SINGLE_D, UPCAST
    )
    d0 = pid * BLOCK_M + row0  # the column of this program's first row
    # int32 column starts, as the walks' (tensor descriptors take int32 offsets)
    first = ((d0 // BLOCK_N) * BLOCK_N).to(tl.int32)
    for start_n in range(first, tl.minimum(d0 + BLOCK_M, N).to(tl.int32), BLOCK_N):
        offs_n, mask_n, acc = walk_tile(
            operands, start_n, N, BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_D, DOT_PREC, UPCAST, TMA
        )
        x_col = tl.sum(tl.where(diagonal_mask(d0, start_n, BLOCK_M, BLOCK_N), acc * scale2, 0.0), axis=0)
        rows = offs_n - row0  # the row each column's diagonal score belongs to
        mine = (offs_n >= d0) & (offs_n < d0 + BLOCK_M) & mask_n & (rows < M)
        tl.store(diag_ptr + rows, x_col, mask=mine)


@triton.jit
def _forward_kernel(
    q_ptr,
    k_ptr,
    scale_ptr,
    ref_ptr,
    max_ptr,
    off_ptr,
    part_ptr,
    M,
    N,
    D,
    diag0,
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
    TMA: tl.constexpr = False,
    PARTS: tl.constexpr = 1,
):
    """The rows' max of S2 = S log2(e) and sum of exp2(S2 - max) over their off-diagonal scores (online;
    row i meets the diagonal at column diag0 + i) and this program's column sums of exp2(S2 - ref) over
    the off-diagonal scores (part[pid, :]), one pass: the diagonal's terms are added in float64 after
    (``both_lse``), so that the off-diagonal sums give 1 - P_ii to an ulp of itself.
    PARTS = 4: each score tile's epilogue in four column parts, one after the other (fewer registers: the
    128 x 256 tiles of config "fwd_wide"); the same sums in another order. TMA: q_ptr and k_ptr are
    tensor descriptors of [BLOCK_M, BLOCK_D] / [BLOCK_N, BLOCK_D] blocks (``forward_config``)."""
    if DOT_PREC != "ieee":  # the D walk runs: the flattened column walk needs no zero-trip copy
        tl.assume(D > 0)
    pid, offs_m, mask_m = row_block(M, BLOCK_M)
    scale2 = tl.load(scale_ptr).to(tl.float32) * LOG2E
    operands = row_operands(
        q_ptr, k_ptr, offs_m, mask_m, D, sqm, sqd, skn, skd, BLOCK_M, BLOCK_D, SINGLE_D, UPCAST
    )
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    my_part = part_ptr + pid * N
    d0 = pid * BLOCK_M + diag0  # the diagonal's column at this program's first row
    for start_n in tl.range(0, N, BLOCK_N, flatten=DOT_PREC != "ieee"):
        offs_n, mask_n, acc = walk_tile(
            operands, start_n, N, BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_D, DOT_PREC, UPCAST, TMA
        )
        s2 = acc * scale2
        if PARTS == 1:
            m_i, l_i = _forward_epilogue(
                s2, m_i, l_i, offs_n, mask_m, ref_ptr, my_part, N, d0, start_n, BLOCK_M, BLOCK_N
            )
        else:  # four column parts of V
            V: tl.constexpr = BLOCK_N // 4
            offs_v = start_n + tl.arange(0, V).to(tl.int64)
            h0, h1 = halves(s2, BLOCK_M, BLOCK_N)
            p0, p1 = halves(h0, BLOCK_M, BLOCK_N // 2)
            args = (mask_m, ref_ptr, my_part, N, d0)
            m_i, l_i = _forward_epilogue(p0, m_i, l_i, offs_v, *args, start_n, BLOCK_M, V)
            m_i, l_i = _forward_epilogue(p1, m_i, l_i, offs_v + V, *args, start_n + V, BLOCK_M, V)
            p0, p1 = halves(h1, BLOCK_M, BLOCK_N // 2)
            m_i, l_i = _forward_epilogue(p0, m_i, l_i, offs_v + 2 * V, *args, start_n + 2 * V, BLOCK_M, V)
            m_i, l_i = _forward_epilogue(p1, m_i, l_i, offs_v + 3 * V, *args, start_n + 3 * V, BLOCK_M, V)
    tl.store(max_ptr + offs_m, m_i, mask=mask_m)
    tl.store(off_ptr + offs_m, l_i, mask=mask_m)


@triton.jit
def _forward_epilogue(
    s2, m_i, l_i, offs_n, mask_m, ref_ptr, part_ptr, N, d0, col0, BM: tl.constexpr, BN: tl.constexpr
):
    """One score tile (or column part of it, its first column ``col0``) of ``_forward_kernel``,
    S2 = S log2(e) [rows, cols]: the rows' online max (over every score) and off-diagonal sum updated
    (returned), the columns' off-diagonal sums of exp2(S2 - ref) stored at part[offs_n]; row i meets the
    diagonal at column d0 + i."""
    mask_n = offs_n < N
    s2 = tl.where(mask_n[None, :], s2, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s2, axis=1))
    # the diagonal's scores out of both sums, in one select whose mask dies at once: a score of OFF_DIAG
    # gives exp2 terms of 0 below (OFF_DIAG - m, OFF_DIAG - ref finite to |S2| ~ 2^125, past which a
    # column's NaN sum sends it to the exact fallback); a mask held from the rows' sum to the columns'
    # took one register per score and spilled the IEEE fp32 tiles on sm_90
    if (col0 < d0 + BM) & (col0 + BN > d0):  # the tiles the diagonal crosses, one or two per row block
        s2 = tl.where(diagonal_mask(d0, col0, BM, BN), OFF_DIAG, s2)
    l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s2 - m_new[:, None]), axis=1)
    ref = tl.load(ref_ptr + offs_n, mask=mask_n, other=0.0)
    # S2 - ref rounds at an ulp of |S2 - ref| (~2^7 at s = 100: coarser than S2's own ulp); its rounding
    # error (TwoSum) goes back in as exp2(d + err) ~ exp2(d) (1 + err ln 2), so that each term keeps an
    # ulp of itself and the column LSE an ulp of 1 (module docstring, "two-part LSEs"); columns past N
    # (scores -inf: NaN here) are not stored
    d = s2 - ref[None, :]
    bb = d - s2
    err = (s2 - (d - bb)) + (-ref[None, :] - bb)
    col = tl.where(mask_m[:, None], tl.exp2(d) * (1.0 + err * LN2), 0.0)
    tl.store(part_ptr + offs_n, tl.sum(col, axis=0), mask=mask_n)
    return m_new, l_i


@triton.jit
def split_lse(x):
    """(hi, lo) in fp32 of a float64 LSE vector (x = hi + lo to ~2^-48 relative): the exponents take
    exp2((S2 - hi) - lo), where S2 - hi is exact near the row's largest score, so that a weight near 1
    keeps an ulp of 1, not of |S2| (module docstring, "two-part LSEs")."""
    hi = x.to(tl.float32)
    return hi, (x - hi.to(tl.float64)).to(tl.float32)


@triton.jit
def _weights_tile(
    t,
    pid_m,
    offs_m,
    mask_m,
    lse_q,
    scale2,
    q_ptr,
    k_ptr,
    lse_k_ptr,
    g_ptr,
    ds_ptr,
    N,
    D,
    row0,
    diag_q,
    all_w,
    sqm,
    sqd,
    skn,
    skd,
    n_blocks,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TARGETS: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    TMA: tl.constexpr,
    PARTS: tl.constexpr,
):
    """Column tile ``t`` of ``_weights_kernel``'s row block (the column loads after the dots: in the
    epilogue, not held in registers across a pipelined walk); PARTS = 4: the epilogue in four column
    parts, one after the other (the ds partials in column blocks of BLOCK_N / 4)."""
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
    args = (
        pid_m,
        offs_m,
        mask_m,
        lse_q,
        scale2,
        lse_k_ptr,
        g_ptr,
        ds_ptr,
        N,
        ds_blocks,
        row0,
        diag_q,
        all_w,
    )
    if PARTS == 1:
        _g_part(acc, pid_n, *args, BLOCK_M, BLOCK_N, False, TARGETS, UPCAST)
    else:  # four column parts of V, each its own column block of the ds partials
        V: tl.constexpr = BLOCK_N // 4
        h0, h1 = halves(acc, BLOCK_M, BLOCK_N)
        a0, a1 = halves(h0, BLOCK_M, BLOCK_N // 2)
        _g_part(a0, 4 * pid_n, *args, BLOCK_M, V, True, TARGETS, UPCAST)
        _g_part(a1, 4 * pid_n + 1, *args, BLOCK_M, V, True, TARGETS, UPCAST)
        a0, a1 = halves(h1, BLOCK_M, BLOCK_N // 2)
        _g_part(a0, 4 * pid_n + 2, *args, BLOCK_M, V, True, TARGETS, UPCAST)
        _g_part(a1, 4 * pid_n + 3, *args, BLOCK_M, V, True, TARGETS, UPCAST)


@triton.jit
def _g_part(
    acc,
    b,
    pid_m,
    offs_m,
    mask_m,
    lse_q,
    scale2,
    lse_k_ptr,
    g_ptr,
    ds_ptr,
    N,
    ds_blocks,
    row0,
    diag_q,
    all_w,
    BLOCK_M: tl.constexpr,
    W: tl.constexpr,
    PARTED: tl.constexpr,
    TARGETS: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Columns [b W, (b + 1) W) of G for the row block pid_m from acc = <Q_i, K_j> there, stored in g's
    dtype; with TARGETS the fp32 row sums of G * acc at ds[i, b] ([rows, ds_blocks]; a part wholly past
    column N stores nothing)."""
    if PARTED:  # a part of a wider tile (else b < ds_blocks: no mask, no registers for it)
        mask_m = mask_m & (tl.full([BLOCK_M], b, tl.int32) < ds_blocks)
    offs_n = b * W + tl.arange(0, W).to(tl.int64)
    mask_n = offs_n < N
    s2 = acc * scale2
    q_hi, q_lo = lse_q
    k_hi, k_lo = split_lse(tl.load(lse_k_ptr + offs_n, mask=mask_n, other=0.0))
    w = tl.exp2((s2 - q_hi[:, None]) - q_lo[:, None]) + tl.exp2((s2 - k_hi[None, :]) - k_lo[None, :])
    if TARGETS:
        w = tl.where(tile_diagonal(pid_m, b, row0, BLOCK_M, W), diag_q[:, None], w) - all_w
    store_weights(w, acc, g_ptr, ds_ptr, offs_m, offs_n, mask_m, mask_n, N, ds_blocks, b, TARGETS, UPCAST)


@triton.jit
def _weights_kernel(
    q_ptr,
    k_ptr,
    scale_ptr,
    lse_q_ptr,
    lse_k_ptr,
    g_ptr,
    ds_ptr,
    M,
    N,
    D,
    row0,
    diag_ptr,
    all_w,
    sqm,
    sqd,
    skn,
    skd,
    n_blocks,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TARGETS: tl.constexpr,
    WALK: tl.constexpr,
    SLABS: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    TMA: tl.constexpr = False,
    PARTS: tl.constexpr = 1,
):
    """Tiles of G = exp(S - lse_q) + exp(S - lse_k) (the targets: where the global row row0 + i is column
    j, diag[i], the forward's W_ii - 2 (1 - eps); all_w off everywhere), stored in g's dtype ([M, N]
    row-major); with TARGETS also each tile's fp32 row sums of G * <Q_i, K_j> (ds[i, column block]: blocks
    of BLOCK_N / PARTS columns).
    WALK: program (i, g) takes the rows of block i and walks the column blocks g, g + G, ... (G programs
    per row block: ``triton_utils.walk_grid``) as one pipelined (column tile, D chunk) loop; else program
    (i, j) does tile (i, j) (SLABS: j = y + z Y past 65,535 tiles, ``triton_utils.grid_tile``).
    TMA: q_ptr and k_ptr are tensor descriptors of [BLOCK_M, BLOCK_D] / [BLOCK_N, BLOCK_D] blocks (config
    "weights_wide")."""
    pid_m, offs_m, mask_m = row_block(M, BLOCK_M)
    scale2 = tl.load(scale_ptr).to(tl.float32) * LOG2E
    lse_q = split_lse(tl.load(lse_q_ptr + offs_m, mask=mask_m, other=0.0))  # (hi, lo)
    if TARGETS:  # G's diagonal at these rows, W_ii - 2 (1 - eps) as the forward formed it
        diag_q = tl.load(diag_ptr + offs_m, mask=mask_m, other=0.0)
    else:
        diag_q = tl.zeros([BLOCK_M], dtype=tl.float32)
    args = (
        q_ptr,
        k_ptr,
        lse_k_ptr,
        g_ptr,
        ds_ptr,
        N,
        D,
        row0,
        diag_q,
        all_w,
        sqm,
        sqd,
        skn,
        skd,
        n_blocks,
    )  # the runtime ones (a tuple holds no constexpr)
    if WALK:
        tl.assume(D > 0)  # the D walk runs: the flattened walk needs no zero-trip copy
        for t in tl.range(tl.program_id(1), n_blocks, tl.num_programs(1), flatten=True):
            _weights_tile(
                t,
                pid_m,
                offs_m,
                mask_m,
                lse_q,
                scale2,
                *args,
                BLOCK_M,
                BLOCK_N,
                BLOCK_D,
                TARGETS,
                DOT_PREC,
                UPCAST,
                TMA,
                PARTS,
            )
    else:  # not the walk's loop run once: that costs the IEEE fp32 variants 40-90 registers and spills
        _weights_tile(
            grid_tile(n_blocks, SLABS),
            pid_m,
            offs_m,
            mask_m,
            lse_q,
            scale2,
            *args,
            BLOCK_M,
            BLOCK_N,
            BLOCK_D,
            TARGETS,
            DOT_PREC,
            UPCAST,
            TMA,
            PARTS,
        )


# ----------------------------------------------------------------------------------------------------
# Plans (pure Python: benchmarks/cost_model.py evaluates the same ones; the backward's in gchunk_triton)


def forward_rows_per_launch(m: int, n: int, block_m: int, workspace: int) -> int:
    """Rows per forward launch: as many programs as the [programs, n] fp32 column partials fit in the
    workspace (at least one program), at most all ``m`` rows."""
    programs = max(1, workspace // (4 * n))
    return min(m, programs * block_m)


# ----------------------------------------------------------------------------------------------------
# Launchers


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """|x_i| in fp32 [rows], chunk by chunk (no fp32 copy of x)."""
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for sl in row_chunks(x.shape[0], x.shape[1], x.device):
        out[sl] = torch.linalg.vector_norm(f32_rows(x, sl), dim=1)
    return out


def column_reference(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per column j of S = s q @ k.T, in base-2 units: an upper bound of S_ij log2(e) over all rows i
    (|s| |k_j| max_i |q_i| with the rounding margin) minus the headroom 124 - ceil(log2 M) bits."""
    headroom = 124 - math.ceil(math.log2(max(q.shape[0], 1)))
    ref = row_norms(k).mul_(
        row_norms(q).max() * scale.detach().float().abs() * (1.4426950408889634 * (1 + BOUND_MARGIN))
    )
    return ref.sub_(headroom)


def _exact_rows(q, k, scale, top, off, todo: torch.Tensor, diag0: int) -> None:
    """For the rows flagged in ``todo`` (bool [M]), without a host sync: top[i] = max_j S2_ij (S2 =
    s <q_i, k_j> log2(e)) and off[i] = the sum of exp2(S2_ij - top[i]) over j != i + ``diag0`` (fp32)."""
    m, dim = q.shape
    order = torch.argsort((~todo).to(torch.uint8), stable=True)  # flagged rows first
    count = todo.sum(dtype=torch.int32).reshape(1)
    # the forward's tiles; fewer registers per thread for this kernel's online max/sum (at unaligned D its
    # IEEE fp32 variant on four warps and its TF32 one at three stages spilled 8 B on sm_80; the IEEE one
    # on eight warps at three stages 16 B on sm_90 with Triton 3.8)
    cfg = config(dim, q.dtype, "fwd", target_arch(q.device))
    if "num_warps" in cfg:
        ieee = dot_precision(q.dtype) == "ieee"
        cfg = dict(cfg, num_warps=8, num_stages=4) if ieee else dict(cfg, num_stages=2)
    _lse_kernel[(triton.cdiv(m, cfg["BLOCK_M"]),)](
        q,
        k,
        scale,
        top,
        off,
        order,
        count,
        m,
        k.shape[0],
        dim,
        diag0,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        SINGLE_D=dim <= cfg["BLOCK_D"],
        DOT_PREC=dot_precision(q.dtype),
        UPCAST=upcast(q.dtype),
        **cfg,
    )


def diagonal(q, k, scale, cfg: dict, row0: int = 0) -> torch.Tensor:
    """S2[i, row0 + i] in fp32 [M] (base 2; 0 where row0 + i >= N), bitwise as a walk over S with the tile
    config ``cfg`` formed it (``_diagonal_kernel``: that walk's tile sizes, dot precision, warps and TMA,
    at one pipeline stage: its loop is one to three tiles, and the stages move loads, not products; at the
    walks' three the 64 x 32 IEEE fp32 tiles spilled 4-16 B): one launch of ceil(M / BLOCK_M) programs,
    each recomputing the score tiles its diagonal crosses: 2 M max(BLOCK_M, BLOCK_N) D FLOPs where the
    diagonal starts on a tile boundary (single process), one more tile per program where it does not."""
    m, dim = q.shape
    meta = {key: cfg[key] for key in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "TMA", "num_warps") if key in cfg}
    meta["num_stages"] = 1
    out = torch.zeros(m, dtype=torch.float32, device=q.device)  # rows whose column is past N keep 0
    q_arg, k_arg = tile_operands(q, k, meta)
    _diagonal_kernel[(triton.cdiv(m, meta["BLOCK_M"]),)](
        q_arg,
        k_arg,
        scale,
        out,
        m,
        k.shape[0],
        dim,
        row0,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        SINGLE_D=dim <= meta["BLOCK_D"],
        DOT_PREC=dot_precision(q.dtype),
        UPCAST=upcast(q.dtype),
        **meta,
    )
    return out


def _lse_pair(top, off, x, own):
    """(top + log2(off + e) in float64, off / (off + e) in fp32) [n], e = exp2(x - top) where ``own``
    (the diagonal's term, in float64: exact to the rounding of x) and 0 elsewhere; ``top``, ``off``: a
    reference and the sum of exp2(S2 - reference) over the off-diagonal scores. The second is the
    off-diagonal mass 1 - P_ii to an ulp of itself (``torch_utils.lse_and_mass``)."""
    return lse_and_mass(top, off, torch.where(own, torch.exp2(x.double() - top.double()), 0.0), base2=True)


def both_lse(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, row0: int = 0):
    """(row LSEs [M], column LSEs [N], the diagonal scores [M], the rows' and the columns' off-diagonal
    masses 1 - P_ii [M] and 1 - Q_jj [N]) of S = scale * q @ k.T, the LSEs in float64, the rest fp32, all
    in base 2 (of S log2(e): the kernels' units, ``TritonBackend.lse_base2``), one pass over S; the
    diagonal of row i at column ``row0`` + i, fp32, as the pass formed it. The pass sums the rows' and
    the columns' off-diagonal terms; the diagonal's are added here in float64 (``_lse_pair``)."""
    m, dim = q.shape
    n = k.shape[0]
    dev = q.device
    cfg = forward_config(dim, q.dtype, target_arch(dev), q, k)
    ref = column_reference(q, k, scale)
    top_r = torch.empty(m, dtype=torch.float32, device=dev)
    off_r = torch.empty_like(top_r)
    sums = torch.zeros(n, dtype=torch.float32, device=dev)
    step = forward_rows_per_launch(m, n, cfg["BLOCK_M"], workspace_bytes())
    part = torch.empty((triton.cdiv(step, cfg["BLOCK_M"]), n), dtype=torch.float32, device=dev)
    for r0 in range(0, m, step):
        rows = min(step, m - r0)
        programs = triton.cdiv(rows, cfg["BLOCK_M"])
        q_arg, k_arg = tile_operands(q[r0:], k, cfg)
        _forward_kernel[(programs,)](
            q_arg,
            k_arg,
            scale,
            ref,
            top_r[r0:],
            off_r[r0:],
            part,
            rows,
            n,
            dim,
            row0 + r0,
            q.stride(0),
            q.stride(1),
            k.stride(0),
            k.stride(1),
            SINGLE_D=dim <= cfg["BLOCK_D"],
            DOT_PREC=dot_precision(q.dtype),
            UPCAST=upcast(q.dtype),
            **cfg,
        )
        sums += part[:programs].sum(0)
    del part
    x = diagonal(q, k, scale, cfg, row0)
    r, mass_r = _lse_pair(top_r, off_r, x, torch.arange(row0, row0 + m, device=dev) < n)
    del top_r, off_r
    # the columns' diagonal scores and which columns have one (this pass's rows' columns)
    x_col = torch.zeros(n, dtype=torch.float32, device=dev)
    own_col = torch.zeros(n, dtype=torch.bool, device=dev)
    mine = slice(min(row0, n), min(row0 + m, n))
    x_col[mine] = x[: mine.stop - mine.start]
    own_col[mine] = True
    full = torch.where(own_col, torch.exp2(x_col.double() - ref.double()), 0.0).add_(sums)
    todo = ~(full >= m * 2.0**-UNDERFLOW_BITS) | torch.isinf(full)  # NaN compares False: flagged too
    del full
    # the flagged columns' exact (max, off-diagonal sum) in place of (reference, sum)
    _exact_rows(k, q, scale, ref, sums, todo, -row0)
    del todo
    c, mass_c = _lse_pair(ref, sums, x_col, own_col)
    return r, c, x, mass_r, mass_c


def weights(q, k, scale, lse_q, lse_k, g, ds, row0: int, eps: float | None, batch: int, diag=None) -> int:
    """Fill g [M, N] (a workspace view, the features' dtype) with G for the rows q against the columns k;
    ``eps`` None: plain W (no targets, ``ds`` and ``diag`` unused), else the targets of label smoothing
    ``eps`` over ``batch`` columns with the diagonal where ``row0`` + i == j, whose values are ``diag``
    [M] fp32 (the forward's W_ii - 2 (1 - eps), ``ops.contrastive.target_diagonal``), and ds [M, column
    blocks] the fp32 row sums of G * <q_i, k_j>. Returns how many partial sums that is (rows x column
    blocks; 0 without targets)."""
    m, dim = q.shape
    n = k.shape[0]
    cfg = weights_config(dim, q.dtype, target_arch(q.device), q, k)
    walk = dot_precision(q.dtype) != "ieee"  # IEEE fp32: CUDA-core FFMA (flattened, it spilled)
    grid, n_blocks = walk_grid(m, n, cfg, walk, q.device)
    targets = eps is not None
    count = partials_of(m, n, cfg, ds) if targets else 0
    q_arg, k_arg = tile_operands(q, k, cfg)
    _weights_kernel[grid](
        q_arg,
        k_arg,
        scale,
        lse_q,
        lse_k,
        g,
        ds if targets else g,
        m,
        n,
        dim,
        row0,
        diag if targets else g,
        2.0 * eps / batch if targets else 0.0,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        n_blocks,
        TARGETS=targets,
        WALK=walk,
        SLABS=len(grid) == 3,
        DOT_PREC=dot_precision(q.dtype),
        UPCAST=upcast(q.dtype),
        **cfg,
    )
    return count


def _blocks(dim: int, dtype, arch: int | None = None) -> tuple:
    """The G kernel's blocks (``weights_blocks``) for the plan, which sizes the workspace's partials, on
    sm_``arch`` (the device's: the tiles, and so the statistics' partials, depend on it)."""
    return weights_blocks(config(dim, dtype, "weights_wide", arch), config(dim, dtype, "weights", arch))


def _plan(m, n, dim, dtype, need_t, workspace, arch: int | None = None) -> BackwardPlan:
    """``backward_plan`` with the weights kernel's blocks and the dtype's element size."""
    esize = torch.empty((), dtype=dtype).element_size()
    return backward_plan(m, n, dim, esize, need_t, workspace, _blocks(dim, dtype, arch))


def _fill(work: Workspace, q, k, scale, lse_q, lse_k, eps, diag=None, diag0: int = 0):
    """The contrastive G for ``Workspace.products``: ``weights`` into the workspace; with targets (``eps`` not
    None; q's row i on the diagonal at k's row ``diag0`` + i, with G's value ``diag`` [q rows] there) the
    partial sums of G * <q, k> (the scale's gradient) as the statistics."""
    n = k.shape[0]

    def fill(rows: slice, s0: int, cols: int, g: torch.Tensor):
        q_rows, k_cols = q[rows], k[s0 : s0 + cols]
        row0 = diag0 + rows.start - s0
        own = None if diag is None else diag[rows]
        count = weights(q_rows, k_cols, scale, lse_q[rows], lse_k[s0:], g, work.part, row0, eps, n, own)
        if eps is None:
            return None
        return work.part[:count].sum()

    return fill


class TritonBackend:
    """The contrastive backend protocol (ops/contrastive.py) on the v2 kernels. Its LSEs are in base 2
    (``lse_base2``): the kernels' exponents exp2(S2 - lse) then subtract the very values the forward's
    online max produced, with no conversion in between (a round trip through natural logs costs up to
    ~2 ulps of |S| log2(e) in every exponent: past |S| ~ 2^22 a factor of 2 or more on the weights)."""

    lse_base2 = True

    @on_device
    def lse(self, image, text, scale, row0: int = 0):
        return both_lse(image, text, scale, row0)

    @on_device
    def gradients(self, image, text, scale, r, c, coef, eps: float, diag, need_t: bool = True):
        """(dI, dT or None, ds) of the single-process loss: the row pass (G chunks, dI, the covered columns
        accumulated in dT) then the column pass for the uncovered columns (module docstring); ``diag``
        [B]: G's diagonal (the same for both: G.T's diagonal is G's)."""
        batch, dim = image.shape
        dev = image.device
        plan = _plan(batch, batch, dim, image.dtype, need_t, workspace_bytes(), target_arch(dev))
        alpha = (scale.detach().float() * coef).reshape(1)
        work = Workspace(plan, batch, batch, dim, image.dtype, dev)
        rows = _fill(work, image, text, scale, r, c, eps, diag)
        cols = _fill(work, text, image, scale, c, r, eps, diag)
        d_image, d_text, ds = work.gradients(image, text, rows, cols, alpha, need_t)
        return d_image, d_text, ds * coef

    @on_device
    def accumulate(self, image, text, scale, r, c, targets=None):
        """W @ text [M, D] and W.T @ image [N, D] in fp32 (the gathered Function's products), G chunks of
        rows, with ``targets`` = (row0, eps, diag) the targets folded in (G = W - 2 ((1 - eps) [row0 + i == j]
        + eps / N), its diagonal diag [M]); W.T @ image accumulates in its fp32 output."""
        m, dim = image.shape
        n = text.shape[0]
        plan = _plan(m, n, dim, image.dtype, False, workspace_bytes(), target_arch(image.device))
        work = Workspace(plan, m, n, dim, image.dtype, image.device)
        row0, eps, diag = (0, None, None) if targets is None else targets
        fill = _fill(work, image, text, scale, r, c, eps, diag, row0)
        a_i, a_t, _ = work.fp32_products(image, text, fill)
        return a_i, a_t
