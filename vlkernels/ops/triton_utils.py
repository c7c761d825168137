"""Triton pieces shared by the loss kernels: tile loads, tile products, the tiled GEMM of the G-chunk
backward (``matmul``) and the fixed launch configurations.

All tiles are [rows, BLOCK_D] slices of row-major [rows, D] operands with arbitrary strides and int64
offsets; products accumulate in fp32 with the operands in their input dtype (tensor cores), exponentials
are base 2 (``LOG2E`` folds the conversion into the scale).
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from vlkernels._triton import interpret_mode

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


def small_tiles() -> bool:
    """Whether the launchers take small tiles (16 x 16 and the like, the same code paths): in Triton's
    interpreter, where the GPU's tiles run slowly. Only the tile choice asks this; the interpreter's own
    numerics (``upcast``, ``dot_precision``) and walks (``walk_grid``) ask ``interpret_mode``, so that
    tests/test_gpu_tiles.py can run the GPU's tiles in the interpreter by patching it."""
    return interpret_mode()


@triton.jit
def load_tile(ptr, offs_r, offs_d, mask_r, mask_d, s_r, s_d, UPCAST: tl.constexpr):
    """A [rows, BLOCK_D] tile, zero-padded; UPCAST only where the interpreter cannot dot bf16."""
    tile = tl.load(
        ptr + offs_r[:, None] * s_r + offs_d[None, :] * s_d, mask=mask_r[:, None] & mask_d[None, :], other=0.0
    )
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def row_block(M, BLOCK_M: tl.constexpr):
    """(program id along axis 0 as int64, its rows' offsets, their mask): the block of BLOCK_M rows that a
    walk's program owns (int64 offsets: B x D beyond 2^31 elements)."""
    pid = tl.program_id(0).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    return pid, offs_m, offs_m < M


@triton.jit
def row_operands(
    q_ptr,
    k_ptr,
    offs_m,
    mask_m,
    D,
    sqm,
    sqd,
    skn,
    skd,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """The operands of a one-pass walk's score tiles for its rows ``offs_m``, as one tuple for
    ``walk_tile``: with SINGLE_D (D <= BLOCK_D) their feature tile q, loaded once for the whole walk (else
    zeros, unused: ``score_tile`` loads D chunks)."""
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    q = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if SINGLE_D:
        q = load_tile(q_ptr, offs_m, offs_d, mask_m, mask_d, sqm, sqd, UPCAST)
    return (q_ptr, k_ptr, q, offs_m, mask_m, offs_d, mask_d, D, sqm, sqd, skn, skd)


@triton.jit
def round_to(x, dtype: tl.constexpr, EMULATE: tl.constexpr):
    """fp32 x in ``dtype``, rounded to nearest even. On a GPU the conversion rounds so (cvt.rn); Triton's
    interpreter truncates fp32 -> bf16 (its bf16 is bit slicing), so there (EMULATE: the launchers pass
    UPCAST) the bits are rounded first and the conversion is then exact. NaN and inf are kept."""
    if EMULATE and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def dot_tile(
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
        q = load_tile(q_ptr, offs_m, offs_d, mask_m, mask_d, sqm, sqd, UPCAST)
        k = load_tile(k_ptr, offs_n, offs_d, mask_n, mask_d, skn, skd, UPCAST)
        acc = tl.dot(q, tl.trans(k), acc, input_precision=DOT_PREC)
    return acc


@triton.jit
def desc_dot_tile(q_desc, k_desc, row0, col0, D, BLOCK_D: tl.constexpr, acc, UPCAST: tl.constexpr):
    """acc + Q[row0 : row0 + rows] @ K[col0 : col0 + cols].T through tensor descriptors (TMA on sm_90:
    no per-thread addresses; rows, columns and D past the tensors read as zeros), walking D in BLOCK_D
    chunks; UPCAST as ``load_tile``'s."""
    for start_d in range(0, D, BLOCK_D):
        q = q_desc.load([row0, start_d])
        k = k_desc.load([col0, start_d])
        if UPCAST:
            q = q.to(tl.float32)
            k = k.to(tl.float32)
        acc = tl.dot(q, k.T, acc)
    return acc


@triton.jit
def weights_tile_dot(
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
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    TMA: tl.constexpr,
):
    """The scores of a weights kernel's tile (rows ``offs_m`` of program row block ``tl.program_id(0)``,
    column block ``pid_n``) in fp32: through tensor descriptors with TMA (``q_ptr`` / ``k_ptr`` are
    descriptors then), else pointer loads (``dot_tile``)."""
    if TMA:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        row0 = tl.program_id(0) * BLOCK_M
        acc = desc_dot_tile(q_ptr, k_ptr, row0, pid_n * BLOCK_N, D, BLOCK_D, acc, UPCAST)
    else:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        acc = dot_tile(
            q_ptr,
            k_ptr,
            offs_m,
            offs_n,
            mask_m,
            offs_n < N,
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
    return acc


@triton.jit
def score_tile(
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
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """(Q[offs_m] @ K[offs_n].T in fp32, the K tile). With SINGLE_D (D <= BLOCK_D) ``q`` is the program's
    register-resident Q block and the K tile is loaded once; otherwise D is walked in chunks and the
    returned "K tile" is ``q`` (a placeholder the caller does not use)."""
    if SINGLE_D:
        k = load_tile(k_ptr, offs_n, offs_d, mask_n, mask_d, skn, skd, UPCAST)
        acc = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
    else:
        k = q
        acc = dot_tile(
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
    return acc, k


@triton.jit
def walk_tile(
    operands,
    col0,
    N,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    TMA: tl.constexpr,
):
    """(offs_n, mask_n, scores in fp32) of a one-pass walk's tile at columns col0 .. col0 + BLOCK_N of
    ``operands`` (``row_operands``): through tensor descriptors with TMA (the operands' q_ptr / k_ptr are
    descriptors then, ``forward_config``, and the rows are row block ``tl.program_id(0)``), else
    ``score_tile`` (any rows: the exact fallback's are gathered)."""
    q_ptr, k_ptr, q, offs_m, mask_m, offs_d, mask_d, D, sqm, sqd, skn, skd = operands
    offs_n = col0 + tl.arange(0, BLOCK_N).to(tl.int64)
    mask_n = offs_n < N
    if TMA:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc = desc_dot_tile(q_ptr, k_ptr, tl.program_id(0) * BLOCK_M, col0, D, BLOCK_D, acc, UPCAST)
    else:
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
    return offs_n, mask_n, acc


@triton.jit
def tile_diagonal(pid_m, pid_n, row0, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[BLOCK_M, BLOCK_N] mask of the tile (pid_m, pid_n) where global row row0 + i meets column j
    (``diagonal_mask``)."""
    return diagonal_mask(pid_m * BLOCK_M + row0, pid_n * BLOCK_N, BLOCK_M, BLOCK_N)


@triton.jit
def grid_tile(n_blocks, SLABS: tl.constexpr):
    """The column tile of a one-tile-per-program weights launch (``walk_grid``): y, or with ``SLABS`` (a
    launch past 65,535 tiles) y + z * (y's size), the last z slab's programs past the ``n_blocks`` tiles on
    the last one. They write what its own program writes, bitwise (the same code on the same data, no
    atomics). SLABS is constexpr so that every launch within the limit compiles as before: the slabs'
    index cost some variants 1-2 registers and spilled 28 B (sm_90, Triton 3.9) or 4 B (sm_80, 3.6), and a
    branch that skipped the programs past the tiles up to 87 registers (``python -m benchmarks.aot
    --diff``)."""
    t = tl.program_id(1)
    if SLABS:
        t = tl.minimum(t + tl.program_id(2) * tl.num_programs(1), n_blocks - 1)
    return t


@triton.jit
def diagonal_mask(d0, col0, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[BLOCK_M, BLOCK_N] mask of the block whose columns start at ``col0`` where its row i meets column
    d0 + i, in block-local int32 indices (a broadcast int64 compare costs registers: 8 B of spill at
    128 x 128): d0 + i == col0 + j iff local_i + shift == local_j, which no shift <= -BLOCK_M or
    >= BLOCK_N satisfies, so the shift is clamped to that range before it narrows."""
    shift = tl.minimum(tl.maximum(d0 - col0, -BLOCK_M), BLOCK_N).to(tl.int32)
    return (tl.arange(0, BLOCK_M)[:, None] + shift) == tl.arange(0, BLOCK_N)[None, :]


@triton.jit
def store_weights(
    w,
    acc,
    g_ptr,
    sums_ptr,
    offs_m,
    offs_n,
    mask_m,
    mask_n,
    N,
    n_blocks,
    pid_n,
    SUMS: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """The epilogue of a weights kernel's tile (column tile pid_n of G = w): padded columns zeroed (else
    exp2(0 - lse) or inf * 0 in the row sums; padded rows are not stored); with SUMS the tile's fp32 row
    sums of w * <q_i, k_j> (acc) at sums[i, pid_n] ([rows, n_blocks]); the tile stored in g's dtype
    ([rows, N] row-major)."""
    w = tl.where(mask_n[None, :], w, 0.0)
    if SUMS:
        tl.store(sums_ptr + offs_m * n_blocks + pid_n, tl.sum(w * acc, axis=1), mask=mask_m)
    tl.store(
        g_ptr + offs_m[:, None] * N + offs_n[None, :],
        round_to(w, g_ptr.dtype.element_ty, UPCAST),
        mask=mask_m[:, None] & mask_n[None, :],
    )


def partial_cols(cfg: dict) -> int:
    """Columns per statistics partial of a weights kernel's config: its tiles' BLOCK_N, or BLOCK_N / PARTS
    where each epilogue part stores its own."""
    return cfg["BLOCK_N"] // cfg.get("PARTS", 1)


def partials_of(m: int, n: int, cfg: dict, buf: torch.Tensor, stats: int = 1) -> int:
    """The statistics' partials (rows x column blocks of ``partial_cols``) a weights kernel of config
    ``cfg`` writes for ``m`` rows and ``n`` columns, checked against ``buf``, which must hold ``stats``
    times that many: an error, not a write past its end, where a workspace was sized by other tiles'
    blocks (another architecture's)."""
    count = m * triton.cdiv(n, partial_cols(cfg))
    if buf.numel() < stats * count:
        raise RuntimeError(
            f"the statistics' partials buffer holds {buf.numel()} values; the weights kernel's "
            f"{cfg['BLOCK_M']} x {cfg['BLOCK_N']} tiles write {stats * count} (a workspace sized by another "
            "config's blocks)"
        )
    return count


def weights_config(dim: int, dtype, arch: int | None = None, *tensors) -> dict:
    """A G kernel's launch config (the contrastive and sigmoid ones): config "weights_wide" (256 x 128 tiles
    read through TMA descriptors on sm_90), or the pointer-load one ("weights") where the features
    ``tensors`` cannot be read so (``tma_ready``: unit last stride, 16-byte aligned base and rows)."""
    cfg = config(dim, dtype, "weights_wide", arch)
    if cfg.get("TMA") and not tma_ready(*tensors):
        cfg = config(dim, dtype, "weights", arch)
    return cfg


def forward_config(dim: int, dtype, arch: int | None = None, *tensors) -> dict:
    """A one-pass forward's launch config (the contrastive and sigmoid ones): config "fwd_wide" (128 x 256
    on sm_90) read through TMA descriptors (no per-thread addresses: with pointer loads the sigmoid's
    spilled 12-48 B, the contrastive's took 216-248 registers), or "fwd" where the features ``tensors``
    cannot be read so (``tma_ready``)."""
    cfg = config(dim, dtype, "fwd_wide", arch)
    if not cfg.get("PARTS"):
        return cfg
    return dict(cfg, TMA=True) if tma_ready(*tensors) else config(dim, dtype, "fwd", arch)


def weights_blocks(wide: dict, narrow: dict) -> tuple:
    """(BLOCK_M, BLOCK_N, the statistics partials' column block) of a G kernel whose launches take the
    config ``wide`` or, where TMA cannot read the features (``tma_ready``), ``narrow``, for
    ``backward_plan`` and ``Workspace``: the wide config's tiles (the planned ones) and the narrower of the
    two configs' partial blocks (the wide one's parts, the fallback's tiles), so the workspace holds the
    partials of either."""
    return wide["BLOCK_M"], wide["BLOCK_N"], min(partial_cols(wide), partial_cols(narrow))


def tile_operands(q: torch.Tensor, k: torch.Tensor, cfg: dict) -> tuple:
    """(q, k) as a weights or forward kernel takes them: with ``cfg``'s TMA, tensor descriptors of
    [BLOCK_M, BLOCK_D] / [BLOCK_N, BLOCK_D] blocks (``weights_tile_dot``, ``desc_dot_tile``), else the
    tensors."""
    if not cfg.get("TMA"):
        return q, k
    return (
        TensorDescriptor.from_tensor(q, [cfg["BLOCK_M"], cfg["BLOCK_D"]]),
        TensorDescriptor.from_tensor(k, [cfg["BLOCK_N"], cfg["BLOCK_D"]]),
    )


def tma_ready(*tensors: torch.Tensor) -> bool:
    """Whether 2-D tensors can be read through TMA descriptors: unit last stride, 16-byte aligned base and
    row stride, rows that do not overlap (else the launchers take their pointer-load configs). A row
    stride of 0 (features expanded from one row) or below the row's length passes the descriptor's own
    checks, but a tensor map describes a packed layout (each stride at least the span below it: CUTLASS
    folds zero-stride modes before it builds one); the pointer loads read any strides."""
    return all(
        t.dim() == 2
        and t.stride(1) == 1
        and t.stride(0) >= t.shape[1]
        and t.data_ptr() % 16 == 0
        and (t.stride(0) * t.element_size()) % 16 == 0
        for t in tensors
    )


@triton.jit
def _matmul_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    lo_ptr,
    alpha_ptr,
    M,
    N,
    K,
    k_per_split,
    sam,
    sak,
    sbk,
    sbn,
    scs,
    scm,
    scn,
    slm,
    sln,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    SPLIT: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    PARTS: tl.constexpr = 1,
):
    """C[split] (=|+=) alpha * A[:, ks] @ B[ks, :] for the program's split ks of K; fp32 accumulation.
    Each output tile has one writer (no atomics); ACCUMULATE reads and writes it once per launch. SPLIT
    (with ACCUMULATE): the running sum is held as the pair (C, LO), C in its (16-bit) dtype rounded to
    nearest and LO the remainder as an int8 count of 1/256 of C's spacing (``_remainder_unit``), so that an
    accumulator in the output's own dtype stands in for an fp32 one."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    pid_k = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start_k in range(k_lo, k_hi, BLOCK_K):
        offs_k = start_k + tl.arange(0, BLOCK_K).to(tl.int64)
        mask_k = offs_k < k_hi
        a = load_tile(a_ptr, offs_m, offs_k, mask_m, mask_k, sam, sak, UPCAST)
        b = load_tile(b_ptr, offs_k, offs_n, mask_k, mask_n, sbk, sbn, UPCAST)
        acc = tl.dot(a, b, acc, input_precision=DOT_PREC)
    acc = acc * tl.load(alpha_ptr).to(tl.float32)
    c_ptr += pid_k * scs
    if PARTS == 1:
        _epilogue(acc, c_ptr, lo_ptr, offs_m, offs_n, M, N, scm, scn, slm, sln, ACCUMULATE, SPLIT, UPCAST)
    else:  # the epilogue in column parts: fewer registers for the tile read back
        W: tl.constexpr = BLOCK_N // PARTS
        o = pid_n * BLOCK_N + tl.arange(0, W)
        h0, h1 = halves(acc, BLOCK_M, BLOCK_N)
        if PARTS == 2:
            _epilogue(h0, c_ptr, lo_ptr, offs_m, o, M, N, scm, scn, slm, sln, ACCUMULATE, SPLIT, UPCAST)
            _epilogue(h1, c_ptr, lo_ptr, offs_m, o + W, M, N, scm, scn, slm, sln, ACCUMULATE, SPLIT, UPCAST)
        else:
            q0, q1 = halves(h0, BLOCK_M, BLOCK_N // 2)
            _epilogue(q0, c_ptr, lo_ptr, offs_m, o, M, N, scm, scn, slm, sln, ACCUMULATE, SPLIT, UPCAST)
            _epilogue(q1, c_ptr, lo_ptr, offs_m, o + W, M, N, scm, scn, slm, sln, ACCUMULATE, SPLIT, UPCAST)
            q0, q1 = halves(h1, BLOCK_M, BLOCK_N // 2)
            o += 2 * W
            _epilogue(q0, c_ptr, lo_ptr, offs_m, o, M, N, scm, scn, slm, sln, ACCUMULATE, SPLIT, UPCAST)
            _epilogue(q1, c_ptr, lo_ptr, offs_m, o + W, M, N, scm, scn, slm, sln, ACCUMULATE, SPLIT, UPCAST)


@triton.jit
def halves(x, ROWS: tl.constexpr, COLS: tl.constexpr):
    """The left and right column halves of x [ROWS, COLS]."""
    return tl.split(tl.permute(tl.reshape(x, (ROWS, 2, COLS // 2)), (0, 2, 1)))


@triton.jit
def _epilogue(acc, c_ptr, lo_ptr, offs_m, offs_n, M, N, scm, scn, slm, sln, ACCUMULATE, SPLIT, UPCAST):
    """C[offs_m, offs_n] (=|+=) acc, with SPLIT the pair (C, LO) (``_matmul_kernel``)."""
    c_ptrs = c_ptr + offs_m[:, None] * scm + offs_n[None, :] * scn
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    if ACCUMULATE:
        old = tl.load(c_ptrs, mask=mask, other=0.0)
        acc += old.to(tl.float32)
        if SPLIT:
            lo_ptrs = lo_ptr + offs_m[:, None] * slm + offs_n[None, :] * sln
            unit, _ = _remainder_unit(old)
            acc += tl.load(lo_ptrs, mask=mask, other=0).to(tl.float32) * unit
    hi = round_to(acc, c_ptr.dtype.element_ty, UPCAST)
    tl.store(c_ptrs, hi, mask=mask)
    if SPLIT:
        _, inv = _remainder_unit(hi)
        q = tl.floor((acc - hi.to(tl.float32)) * inv + 0.5)
        q = tl.where(q == q, tl.minimum(tl.maximum(q, -127.0), 127.0), 0.0)  # NaN (hi inf or NaN): 0
        tl.store(lo_ptrs, q.to(tl.int8), mask=mask)


@triton.jit
def _remainder_unit(hi):
    """(unit, 1 / unit) of the int8 remainder LO of the pair (C, LO): the unit is 1/256 of the spacing of
    C's 16-bit dtype at ``hi``, a power of two (so that scaling by it is exact); (0, 0) where ``hi`` is inf
    or NaN. |acc - hi| is at most half that spacing, so LO in [-128, 128] (127 at most: clamped) holds
    the remainder to 1/512 of it: hi + LO carries 16 (bf16) / 19 (fp16) significant bits."""
    if hi.dtype == tl.bfloat16:
        field = (hi.to(tl.int16, bitcast=True).to(tl.int32) >> 7) & 0xFF
        top, step = 0xFF, 7 + 8  # exponent field of inf/NaN; mantissa bits + the 8 of the remainder
        bias = 127
    else:
        field = (hi.to(tl.int16, bitcast=True).to(tl.int32) >> 10) & 0x1F
        top, step = 0x1F, 10 + 8
        bias = 15
    # 2^(max(field, 1) - bias - step) as an fp32 exponent field (subnormals share the smallest exponent);
    # bf16 values below 2^-111 get 2^-126, a coarser unit for remainders far below anything summed here
    exp = tl.maximum(tl.maximum(field, 1) - bias - step + 127, 1)
    special = field == top
    unit = tl.where(special, 0.0, (exp << 23).to(tl.float32, bitcast=True))
    inv = tl.where(special, 0.0, ((254 - exp) << 23).to(tl.float32, bitcast=True))
    return unit, inv


def widest_tile(n: int) -> int:
    """The widest GEMM tile among those that pad ``n`` output columns the least (384: 128; 64: 64)."""
    return min((256, 128, 64), key=lambda bn: (triton.cdiv(n, bn) * bn, -bn))


def matmul_config(
    dtype: torch.dtype,
    aligned: bool = True,
    accumulate: bool = False,
    n: int | None = None,
    lo: bool = False,
    arch: int | None = None,
    b_k_major: bool = False,
) -> dict:
    """Tiles of ``matmul`` for ``n`` output columns on sm_``arch`` (``HOST_ARCH`` when None): for 16-bit
    operands 128 x 256 x 64 (wgmma m64n256 on sm_90), accumulating with the epilogue in column parts
    (``PARTS``: two, four with the int8 remainder ``lo``; the tile read back whole spilled), or 128 x 128 /
    128 x 64 where ``n`` leaves less padding so; accumulating on mma.sync (sm_80) with ``b`` K-contiguous
    (``b_k_major``: column-major features) K chunks of 32 (at 64, 128 x 256 spilled 16 B at 255 registers
    under Triton 3.6; at 32, 229); 128 x 128 x 32 for TF32 (x 16 for the split-precision fp32 dots);
    64 x 64 x 16 on four warps for IEEE fp32 (CUDA-core FFMA, sized not to spill: K chunks of 32 spilled
    12 B on sm_90 with Triton 3.8); 64 output columns when a row stride is not a multiple of 8 elements
    (loads through registers, not cp.async)."""
    arch = HOST_ARCH if arch is None else arch
    wide = 256 if n is None else widest_tile(n)
    parts = 1
    if accumulate and aligned and dtype != torch.float32 and wide == 256:
        parts = 4 if lo else 2
    if small_tiles():  # the same paths
        return dict(BLOCK_M=16, BLOCK_N=16 * parts, BLOCK_K=16, PARTS=parts)
    if dtype == torch.float32 and dot_precision(dtype) == "ieee":
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=3)
    if not aligned:
        wide = 64
    if dtype != torch.float32:
        block_k = 32 if accumulate and b_k_major and mma_sync(arch) else 64
        if wide == 256:  # m64n256 wgmma: 180 registers storing, 192-249 accumulating in parts
            return dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=block_k, num_warps=8, num_stages=3, PARTS=parts)
        return dict(BLOCK_M=128, BLOCK_N=wide, BLOCK_K=block_k, num_warps=8, num_stages=4)
    # split-precision fp32 dots: K chunks of 16 (at 32 bf16x6 spilled 0.7-0.8 KB on sm_80)
    block_k = 16 if split_dots(dtype) else 32
    return dict(BLOCK_M=128, BLOCK_N=min(wide, 128), BLOCK_K=block_k, num_warps=8, num_stages=3)


# Streaming multiprocessors assumed where no GPU is present (the H100's 132): the split-K choice and the
# backward plan's model (gchunk_triton.backward_plan) use it.
DEFAULT_SMS = 132


def sm_count(device: torch.device) -> int:
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_SMS


def tensor_device(args) -> torch.device | None:
    """The device of the first tensor in ``args`` (None without one)."""
    return next((a.device for a in args if isinstance(a, torch.Tensor)), None)


def on_device(method):
    """Decorator for the Triton backends' methods: runs ``method`` with the current CUDA device set to
    that of its first tensor argument. Triton launches on the current device and that device's current
    stream (``JITFunction.run``), whatever device its tensors are on: features on cuda:1 while cuda:0 is
    current would be refused ("cannot be accessed from Triton") or run outside cuda:1's stream order. Off
    CUDA, or on the current device already, it calls ``method`` as it is."""

    @functools.wraps(method)
    def run(*args, **kwargs):
        device = tensor_device(args)
        if device is None or device.type != "cuda" or device.index == torch.cuda.current_device():
            return method(*args, **kwargs)
        with torch.cuda.device(device.index):
            return method(*args, **kwargs)

    return run


# The architecture (10 x major + minor compute capability) configs are chosen for where the tensors are
# not on a CUDA device: the H100's (the cost model's); benchmarks/aot.py sets it to each architecture it
# captures the launchers' specialisations for (CPU tensors, a fake driver).
HOST_ARCH = 90


@functools.cache
def _cuda_arch(index: int) -> int:
    major, minor = torch.cuda.get_device_capability(index)
    return 10 * major + minor


def mma_sync(arch: int) -> bool:
    """Whether sm_``arch``'s tensor cores take mma.sync (sm_80, sm_86, sm_89 and sm_120: no wgmma, no
    tcgen05), so that its tiles are sm_80's; sm_90 and sm_100 take the wide ones."""
    return arch < 90 or arch >= 120


def tcgen05(arch: int) -> bool:
    """Whether sm_``arch``'s tensor cores take tcgen05 (sm_100, sm_103, sm_110), where Triton 3.9 lowered
    the G kernels' dots to mma.sync on sixteen warps and to tcgen05 on eight (benchmarks/aot.py)."""
    return 100 <= arch < 120


def target_arch(device: torch.device) -> int:
    """The architecture the kernels launched on ``device`` compile for (``HOST_ARCH`` off CUDA)."""
    if device.type == "cuda":
        return _cuda_arch(device.index if device.index is not None else torch.cuda.current_device())
    return HOST_ARCH


# The weights kernels' tile walk (G = f(S) tile by tile). Each program takes one block of rows and walks the
# column tiles g, g + groups, g + 2 groups, ... of it, (column tile, D chunk) as one loop that Triton
# pipelines across tiles, so the loads of the next tile run under this one's epilogue (exponentials, the
# G store, the row sums). A program's start (its first loads) and its last epilogue overlap nothing: about
# a quarter of a 128 x 128 tile at D = 1024 (an assumption: on the H100 the one-tile-per-program G kernel
# ran 12.2 us a tile, 1.3x the L2 time at the rate the long-walk GEMM drew). It only picks the grouping.
WALK_RESTART = 0.25
# CUDA's limit on a grid's y and z sizes (x takes 2^31 - 1): the one-tile-per-program weights launches
# put their column tiles along y and z (``walk_grid``).
GRID_YZ_MAX = 65535
# Programs per wave assumed by the interpreter (CPU tensors): a few, so that its tests walk several
# column tiles per program, unevenly.
INTERPRET_SMS = 3


@functools.lru_cache(maxsize=4096)
def walk_groups(row_blocks: int, col_blocks: int, sms: int) -> int:
    """Programs per block of rows for a walk over ``col_blocks`` column tiles: the grouping with the
    shortest modelled span, waves x (tiles per program + ``WALK_RESTART``), among those that fill 1 to 16
    waves of ``sms`` one-per-SM programs and one tile per program (ties: the fewest programs)."""
    cands = {col_blocks} | {min(col_blocks, max(1, w * sms // row_blocks)) for w in range(1, 17)}

    def span(groups: int) -> float:
        return math.ceil(row_blocks * groups / sms) * (math.ceil(col_blocks / groups) + WALK_RESTART)

    return min(sorted(cands), key=span)


def walk_filled(row_blocks: int, col_blocks: int, sms: int) -> float:
    """The fraction of ``sms`` SMs a walk (``walk_groups``) keeps busy: tiles over SMs x waves x the
    longest walk (the restart not counted)."""
    groups = walk_groups(row_blocks, col_blocks, sms)
    waves = math.ceil(row_blocks * groups / sms)
    return row_blocks * col_blocks / (sms * waves * math.ceil(col_blocks / groups))


def walk_grid(m: int, n: int, cfg: dict, walk: bool, device: torch.device) -> tuple:
    """(grid, column blocks) of a weights kernel over [m, n] with ``cfg``'s blocks: (row blocks, programs
    per row block). ``walk`` False (IEEE fp32 dots on CUDA cores; a separate teacher's second D walk,
    which the loop fusion does not take): one tile per program, the column tiles along y and, past y's
    limit (``GRID_YZ_MAX``: 2.1M columns of 32-wide tiles), in slabs along z (a 3-D grid: the kernels'
    SLABS, ``grid_tile``)."""
    row_blocks, col_blocks = triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(n, cfg["BLOCK_N"])
    if not walk:
        if col_blocks <= GRID_YZ_MAX:
            return (row_blocks, col_blocks), col_blocks
        return (row_blocks, GRID_YZ_MAX, triton.cdiv(col_blocks, GRID_YZ_MAX)), col_blocks
    sms = INTERPRET_SMS if interpret_mode() else sm_count(device)
    return (row_blocks, walk_groups(row_blocks, col_blocks, sms)), col_blocks


def split_k(m: int, n: int, k: int, cfg: dict, sms: int) -> int:
    """Splits of K so that an [m, n] product with few output tiles still fills about two waves of the SMs
    (each split keeps at least 8 K-blocks); 1 when the tiles alone do."""
    tiles = triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])
    most = max(1, k // (8 * cfg["BLOCK_K"]))
    return max(1, min(most, (2 * sms) // tiles))


def gpu_tile(n: int) -> dict:
    """The GPU tile of a 16-bit ``matmul`` with ``n`` aligned output columns (``matmul_config``'s, whatever
    the interpreter): the widest, so the fewest output tiles. The budget and the plan size by it."""
    return dict(BLOCK_M=128, BLOCK_N=widest_tile(n), BLOCK_K=64)


def split_partials(m: int, n: int, k: int, sms: int = DEFAULT_SMS) -> int:
    """fp32 elements of the split-K partials that a storing ``matmul`` of [m, k] x [k, n] takes on a GPU
    with ``sms`` SMs, at most (its 16-bit tiles, ``gpu_tile``: fewer output tiles, more splits); 0 when it
    does not split. A workspace of this many elements keeps the split that fills the SMs."""
    split = split_k(m, n, k, gpu_tile(n), sms)
    return split * m * n if split > 1 else 0


def matmul(a, b, alpha, out, accumulate: bool = False, workspace=None, lo=None):
    """``out = alpha * a @ b`` (written in ``out``'s dtype) or, with ``accumulate``, ``out += alpha * a @ b``
    (``out`` fp32, or 16-bit with ``lo`` an int8 tensor of its shape: the running sum is the pair (out,
    lo), see ``_matmul_kernel``'s SPLIT), with fp32 accumulation; ``a`` [M, K] and ``b`` [K, N] with any
    strides (transposed views included), ``alpha`` a device scalar (no host sync). Without ``accumulate``, a
    product with few output tiles is split along K into fp32 partials summed in a fixed order
    (deterministic; the partials' ``split * M * N * 4`` bytes come from ``workspace``, a flat fp32 tensor,
    when given, and then the split is what it holds: no allocation beyond it but the sum's [M, N] fp32
    temporary for a 16-bit ``out``)."""
    m, k = a.shape
    n = b.shape[1]
    strides = (*a.stride(), *b.stride(), *out.stride(), *(lo.stride() if lo is not None else ()))
    aligned = all(st % 16 == 0 or st == 1 for st in strides)  # Triton's divisibility hint
    b_k_major = b.stride(0) == 1 and b.stride(1) != 1
    cfg = matmul_config(
        a.dtype, aligned, accumulate, n, lo is not None and accumulate, target_arch(a.device), b_k_major
    )
    split = 1 if accumulate else split_k(m, n, k, cfg, sm_count(a.device))
    if workspace is not None:
        split = max(1, min(split, workspace.numel() // (m * n)))
    target = out
    if split > 1:
        if workspace is not None:
            target = workspace[: split * m * n].view(split, m, n)
        else:
            target = torch.empty((split, m, n), dtype=torch.float32, device=a.device)
    per = triton.cdiv(triton.cdiv(k, split), cfg["BLOCK_K"]) * cfg["BLOCK_K"]
    grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(n, cfg["BLOCK_N"]), split)
    split_acc = accumulate and lo is not None
    _matmul_kernel[grid](
        a,
        b,
        target,
        lo if split_acc else target,
        alpha,
        m,
        n,
        k,
        per,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        target.stride(0) if split > 1 else 0,
        target.stride(-2),
        target.stride(-1),
        lo.stride(0) if split_acc else 0,
        lo.stride(1) if split_acc else 0,
        ACCUMULATE=accumulate,
        SPLIT=split_acc,
        DOT_PREC=dot_precision(a.dtype),
        UPCAST=upcast(a.dtype),
        **cfg,
    )
    if split > 1:
        torch.sum(target, dim=0, out=out) if out.dtype == torch.float32 else out.copy_(target.sum(0))
    return out


def wide_score_tiles(dim: int, dtype: torch.dtype, arch: int | None = None) -> bool:
    """Whether the wide score tiles apply (configs "fwd_wide": the contrastive and sigmoid forwards' 128 x
    256; "weights_wide": the G kernels' 256 x 128, both through TMA descriptors; the soft target's
    self-teacher statistics 128 x 128, ``soft_target_triton.tile_config``): 16-bit features, D a multiple
    of 16 (Triton's divisibility hint: at D = 72 or 1000 the masked last chunk spilled 0.1-1.1 KB) walked in
    chunks (D > 64; up to 64 the row block stays in registers and each K tile is loaded once, at 128 x
    128), on wgmma / tcgen05 architectures (sm_90, sm_100; with mma.sync, sm_80's tile spilled 0.3-0.5 KB
    under Triton 3.6), unless ``VLKERNELS_WIDE_TILES=0``."""
    arch = HOST_ARCH if arch is None else arch
    if not wide_tiles_enabled():
        return False
    return dtype in (torch.bfloat16, torch.float16) and dim % 16 == 0 and dim > 64 and not mma_sync(arch)


def wide_tiles_enabled() -> bool:
    """``VLKERNELS_WIDE_TILES`` (default "1"; "0": the 128 x 128 tiles everywhere, a diagnostic the GPU
    suite measures the wide ones against), checked."""
    value = os.environ.get("VLKERNELS_WIDE_TILES", "1").strip() or "1"
    if value not in ("0", "1"):
        raise ValueError(f"VLKERNELS_WIDE_TILES must be 0 or 1, got {value!r}")
    return value == "1"


def config(dim: int, dtype: torch.dtype, kernel: str, arch: int | None = None) -> dict:
    """Fixed block sizes per (kernel: "lse" | "fwd" | "fwd_wide" | "weights" | "weights_wide", dtype, D
    range, architecture: ``HOST_ARCH`` when None); small ones in the interpreter. "fwd_wide" / "weights_wide"
    are the contrastive and sigmoid forwards' / G kernels' (``forward_config`` / ``weights_config`` add the
    TMA fallback): "fwd" / "weights", or where ``wide_score_tiles`` holds the wide tiles with the epilogue
    in four column parts (PARTS; the sigmoid G kernel takes eight; in the interpreter 16 x 64 / 32 x 64,
    the same paths)."""
    arch = HOST_ARCH if arch is None else arch
    if kernel == "fwd_wide":
        cfg = config(dim, dtype, "fwd", arch)
        if not wide_score_tiles(dim, dtype, arch):
            return cfg
        if small_tiles():
            return dict(cfg, BLOCK_N=64, PARTS=4)
        # 128 x 256 (wgmma m64n256: 85 FLOP per byte of L2 traffic, 64 at 128 x 128), read through TMA
        # descriptors (``forward_config``): 222 registers on sm_90 with Triton 3.9, 219 with 3.6, with the
        # off-diagonal sums (174 / 218 before them, when pointer loads took 216 / 248, two epilogue parts
        # 238 / 253, and whole tiles spilled 20 B)
        return dict(cfg, BLOCK_N=256, PARTS=4)
    if kernel == "weights_wide":
        cfg = config(dim, dtype, "weights", arch)
        if not wide_score_tiles(dim, dtype, arch):
            return cfg
        if small_tiles():
            return dict(cfg, BLOCK_M=32, BLOCK_N=64, PARTS=4, TMA=True)
        # 256 x 128 (85 FLOP per byte of L2 traffic) on 16 warps, read through TMA descriptors, the epilogue
        # in four 32-column parts, each storing its own ds partials: 128 / 127 registers (the cap at 16
        # warps) with Triton 3.9 / 3.6, no spills (ds summed over the parts in registers spilled 8-12 B,
        # pointer loads 12 B; 128 x 256 on 8 warps sat at 251-255 registers)
        # On tcgen05 (sm_100) eight warps: there Triton 3.9 lowered these kernels' dots to mma.sync on
        # sixteen, to tcgen05 on eight; the accumulator lives in tensor memory, and 256 x 128 on eight took
        # 179-222 registers, no spills (the contrastive, sigmoid and soft-target G kernels, AOT-compiled)
        warps = 8 if tcgen05(arch) else 16
        return dict(cfg, BLOCK_M=256, BLOCK_N=128, num_warps=warps, PARTS=4, TMA=True)
    if small_tiles():
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_D=max(16, min(32, triton.next_power_of_2(dim))))
    if kernel in ("fwd", "weights"):
        # the v2 contrastive kernels: 128 x 128 score tiles, D walked in chunks of 64 (16-bit) / 32 (TF32)
        # (128 x 256 and 256 x 128 spill, at 8 and at 16 warps);
        # IEEE fp32 dots run on CUDA cores, where 64 x 64 x 16 tiles on four warps do not spill (at most
        # 206 registers on sm_90 / sm_80; 64 x 64 x 32 spills 16 B on sm_80); at unaligned D (rows loaded
        # through registers) 64 x 32 for G and 64 x 64 on eight warps at three stages for the forward
        # (on four warps, with the off-diagonal sums, 20 B spilled on sm_90 with Triton 3.8's ptxas, and
        # at two stages 16 B with 3.6's; before them 64 x 32 at four spilled 4-16 B with 3.6's): 181-196
        # registers with 3.6's, 3.8's and 3.9's (benchmarks/aot.py; the sigmoid forward keeps four warps:
        # ``sigmoid_triton.loss_config``)
        if dtype == torch.float32 and dot_precision(dtype) == "ieee":
            if dim % 16 == 0:
                return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=16, num_warps=4, num_stages=4)
            if kernel == "fwd":
                return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=16, num_warps=8, num_stages=3)
            return dict(BLOCK_M=64, BLOCK_N=32, BLOCK_D=16, num_warps=4, num_stages=4)
        block_d = max(16, min(32 if dtype == torch.float32 else 64, triton.next_power_of_2(dim)))
        block_n = 128
        if split_dots(dtype):
            # the operands' parts take registers: D chunks of 16 (at 32 the G kernel spilled 20 B, the
            # soft target's 56 B, the sigmoid's 76 B on sm_90); with mma.sync (sm_80) 64-column tiles (at
            # 128 columns the G kernels and the forward sat at 253-255 registers with Triton 3.6 and 3.9,
            # and spilled 8-32 B with 3.8)
            block_d = 16
            block_n = 64 if mma_sync(arch) else 128
        # 64-column tiles unless D is a multiple of 16 (Triton's divisibility hint): rows not 16-byte
        # aligned load through registers, and where D is a multiple of 8 only (D = 72, 136) the masked last
        # D chunk spilled 8-180 B at 128 columns on sm_90 and sm_80
        block_n = block_n if dim % 16 == 0 else 64
        return dict(BLOCK_M=128, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=8, num_stages=3)
    if kernel != "lse":
        raise ValueError(f"unknown kernel kind {kernel!r}")
    # the soft-target statistics kernel (the row block stays in registers when D fits; with its column
    # partials, 128-wide D chunks reach 255 registers)
    cap = 32 if dtype == torch.float32 else 64
    block_d = max(16, min(cap, triton.next_power_of_2(dim)))
    return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_D=block_d, num_warps=8, num_stages=3)


# Dots for fp32 inputs under torch's "highest" precision: IEEE fp32 on CUDA cores (the default), or
# split-precision products on tensor cores (Triton's "tf32x3": three TF32 products of the operands'
# high and low parts; "bf16x6": six bf16 products of three parts). Experimental: they are the candidates
# for fp32 on tensor cores, adopted only where the GPU measures them within the 2x-torch-error rule
# against float64 (benchmarks/bench_fp32_dots.py; docs/design.md, "fp32 inputs").
FP32_DOTS = ("ieee", "tf32x3", "bf16x6")


def fp32_dots() -> str:
    """``VLKERNELS_FP32_DOTS`` (default "ieee"), checked."""
    value = os.environ.get("VLKERNELS_FP32_DOTS", "ieee").strip().lower() or "ieee"
    if value not in FP32_DOTS:
        raise ValueError(f"VLKERNELS_FP32_DOTS must be one of {FP32_DOTS}, got {value!r}")
    return value


def split_dots(dtype: torch.dtype) -> bool:
    """Whether fp32 dots run as split-precision tensor-core products (``fp32_dots``)."""
    return dot_precision(dtype) in ("tf32x3", "bf16x6")


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs follow torch's own matmul setting: TF32 where torch allows it ("high", "medium"),
    else exact-class dots (``fp32_dots``). Triton's interpreter dots in numpy whatever the precision and
    knows no "bf16x6": there it runs as "tf32x3" (the same tensor-core configs)."""
    if dtype != torch.float32 or torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    dots = fp32_dots()
    if dots == "bf16x6" and interpret_mode():
        return "tf32x3"
    return dots


def upcast(dtype: torch.dtype) -> bool:
    """Triton's interpreter computes bf16 dots wrongly (it has no numpy bf16): there the tiles are
    upcast after loading, which still exercises the bf16 loads, strides and masks on CPU."""
    return interpret_mode() and dtype == torch.bfloat16
