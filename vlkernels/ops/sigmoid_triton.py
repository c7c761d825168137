"""Triton backend of the sigmoid (SigLIP) loss: S tiles live in registers/SRAM, never whole in global memory.

Kernels (Q [M, D], K [N, D] with arbitrary strides; scale and bias read from device memory, so no host
sync; operands stay in the input dtype for tensor cores, accumulation is fp32, offsets int64):

- ``_loss_kernel``: one program per BLOCK_M rows walks all column tiles and writes the row sums of
  softplus(-y z) (2 M N D FLOPs); the loss is their sum in a fixed order (torch's sum of [M]).
- ``_weights_kernel``: the backward on the G-chunk engine (ops/gchunk_triton.py, shared with the contrastive
  loss): for a chunk of rows it recomputes S and writes G = sigmoid(z) - [i == j] into the workspace in
  the features' dtype, with fp32 partial row sums of G * <Q_i, K_j> and of G (the scale's and the bias's
  gradients); two tensor-core GEMMs consume each chunk: dI[rows] = alpha G @ T (stored) and an fp32
  accumulator += G.T @ I[rows] for the text columns the workspace covers; the other columns come from a
  column pass (G.T has the same form: z is symmetric in (I, T)). 8 B^2 D FLOPs in all (forward 2, weights
  2, two GEMMs 4) while the accumulator covers every column; no float atomics, deterministic.

Tiles: on sm_90, for 16-bit features at D a multiple of 16 above 64 (``wide_score_tiles``), the forward
takes the contrastive forward's 128 x 256 tiles with the softplus in four column parts and the G kernel
256 x 128 tiles on 16 warps with its epilogue in eight parts (statistics partials per 16 columns), both
read through TMA descriptors (no per-thread addresses: with pointer loads the forward spilled 12-48 B, the
G kernel in four parts 20-44 B); elsewhere, or where TMA cannot read the features, 128 x 128.

Numerics: softplus(x) = max(x, 0) + log1p(e), e = exp(-|x|), with log1p(e) evaluated as log(u) - ((u - 1)
- e), u = 1 + e: (u - 1) - e is the rounding of u, exact, and the first-order correction leaves a relative
error under 2^-24 / ln 2 (where 1 + e rounds to 1 it gives e); no division. G = sigmoid(z) as 1 / (1 + e)
or e / (1 + e) by the sign of z; a positive's G is -sigmoid(-z), the other numerator (no cancellation in
sigmoid(z) - 1), rounded once to the features' dtype for the GEMMs (the scalar gradients use the fp32
values). Stable for any |z| (scale 100 with bias -10 gives |z| ~ 110).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vlkernels.ops import triton_utils
from vlkernels.ops.gchunk_triton import BackwardPlan, Workspace, backward_plan
from vlkernels.ops.torch_utils import workspace_bytes
from vlkernels.ops.triton_utils import (
    LN2,
    LOG2E,
    config,
    dot_precision,
    forward_config,
    grid_tile,
    halves,
    on_device,
    partials_of,
    round_to,
    row_block,
    row_operands,
    split_dots,
    target_arch,
    tile_diagonal,
    tile_operands,
    upcast,
    walk_grid,
    walk_tile,
    weights_blocks,
    weights_tile_dot,
)


@triton.jit
def _softplus(x):
    e = tl.exp2(-tl.abs(x) * LOG2E)
    u = 1.0 + e
    return tl.maximum(x, 0.0) + (tl.log2(u) * LN2 - ((u - 1.0) - e))


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
    TMA: tl.constexpr = False,
    PARTS: tl.constexpr = 1,
):
    """Row sums of softplus(-y z) over all columns; PARTS = 4: each score tile's softplus in four column
    parts, one after the other (fewer registers: the 128 x 256 tiles of config "fwd_wide"); TMA: q_ptr
    and k_ptr are tensor descriptors of [BLOCK_M, BLOCK_D] / [BLOCK_N, BLOCK_D] blocks (no per-thread
    addresses: with pointer loads the wide tiles spilled)."""
    if DOT_PREC != "ieee":  # the D walk runs: the flattened column walk needs no zero-trip copy
        tl.assume(D > 0)
    pid, offs_m, mask_m = row_block(M, BLOCK_M)
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    operands = row_operands(
        q_ptr, k_ptr, offs_m, mask_m, D, sqm, sqd, skn, skd, BLOCK_M, BLOCK_D, SINGLE_D, UPCAST
    )
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in tl.range(0, N, BLOCK_N, flatten=DOT_PREC != "ieee"):
        offs_n, mask_n, acc = walk_tile(
            operands, start_n, N, BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_D, DOT_PREC, UPCAST, TMA
        )
        if PARTS == 1:
            total += _loss_part(acc, scale, bias, pid, start_n, N, DIAG, BLOCK_M, BLOCK_N, BLOCK_N)
        else:  # four column parts of V
            V: tl.constexpr = BLOCK_N // 4
            h0, h1 = halves(acc, BLOCK_M, BLOCK_N)
            p0, p1 = halves(h0, BLOCK_M, BLOCK_N // 2)
            total += _loss_part(p0, scale, bias, pid, start_n, N, DIAG, BLOCK_M, BLOCK_N, V)
            total += _loss_part(p1, scale, bias, pid, start_n + V, N, DIAG, BLOCK_M, BLOCK_N, V)
            p0, p1 = halves(h1, BLOCK_M, BLOCK_N // 2)
            total += _loss_part(p0, scale, bias, pid, start_n + 2 * V, N, DIAG, BLOCK_M, BLOCK_N, V)
            total += _loss_part(p1, scale, bias, pid, start_n + 3 * V, N, DIAG, BLOCK_M, BLOCK_N, V)
    tl.store(out_ptr + offs_m, total, mask=mask_m)


@triton.jit
def _loss_part(
    acc,
    scale,
    bias,
    pid,
    col0,
    N,
    DIAG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    W: tl.constexpr,
):
    """Row sums of softplus(-y z) over the columns col0 .. col0 + W of a BLOCK_N-wide score tile (W =
    BLOCK_N) or column part of it (W < BLOCK_N) of row block pid, acc = <Q_i, K_j> there; padded columns
    add 0."""
    z = acc * scale + bias
    if W < BLOCK_N:  # a part of a wide tile: tile-local int32 indices (as tile_diagonal's; int64 spilled 32 B
        # under Triton 3.6 on sm_90)
        if DIAG:
            shift = tl.minimum(tl.maximum(pid * BLOCK_M - col0, -BLOCK_M), W).to(tl.int32)
            z = tl.where((tl.arange(0, BLOCK_M)[:, None] + shift) == tl.arange(0, W)[None, :], -z, z)
        cols = tl.arange(0, W) < N - col0
    else:  # a whole tile: global int64 indices (the int32 form spilled 16-40 B in the IEEE fp32 variants
        # at unaligned D under Triton 3.6)
        offs_n = col0 + tl.arange(0, W).to(tl.int64)
        if DIAG:
            z = tl.where((pid * BLOCK_M + tl.arange(0, BLOCK_M))[:, None] == offs_n[None, :], -z, z)
        cols = offs_n < N
    return tl.sum(tl.where(cols[None, :], _softplus(z), 0.0), axis=1)


@triton.jit
def _weights_tile(
    t,
    pid_m,
    offs_m,
    mask_m,
    scale,
    bias,
    q_ptr,
    k_ptr,
    g_ptr,
    part_ptr,
    N,
    D,
    row0,
    sqm,
    sqd,
    skn,
    skd,
    n_blocks,
    stat_stride,
    DIAG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    TMA: tl.constexpr,
    PARTS: tl.constexpr,
):
    """Column tile ``t`` of ``_weights_kernel``'s row block; PARTS = 8: the epilogue in eight column parts,
    one after the other (the partial sums in column blocks of BLOCK_N / 8)."""
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
    args = (pid_m, offs_m, mask_m, scale, bias, g_ptr, part_ptr, N, ds_blocks, row0, stat_stride)
    if PARTS == 1:
        _g_part(acc, pid_n, *args, DIAG, BLOCK_M, BLOCK_N, False, UPCAST)
    else:  # eight column parts of V, each its own column block of the partials
        tl.static_assert(PARTS == 8)
        V: tl.constexpr = BLOCK_N // 8
        h0, h1 = halves(acc, BLOCK_M, BLOCK_N)
        _g_quarters(h0, 8 * pid_n, *args, DIAG, BLOCK_M, V, UPCAST)
        _g_quarters(h1, 8 * pid_n + 4, *args, DIAG, BLOCK_M, V, UPCAST)


@triton.jit
def _g_quarters(
    h,
    b,
    pid_m,
    offs_m,
    mask_m,
    scale,
    bias,
    g_ptr,
    part_ptr,
    N,
    ds_blocks,
    row0,
    stat_stride,
    DIAG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    V: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """``_g_part`` over the four column parts of V of h [BLOCK_M, 4 V] (column blocks b .. b + 3), one
    after the other."""
    args = (pid_m, offs_m, mask_m, scale, bias, g_ptr, part_ptr, N, ds_blocks, row0, stat_stride)
    q0, q1 = halves(h, BLOCK_M, 4 * V)
    a0, a1 = halves(q0, BLOCK_M, 2 * V)
    _g_part(a0, b, *args, DIAG, BLOCK_M, V, True, UPCAST)
    _g_part(a1, b + 1, *args, DIAG, BLOCK_M, V, True, UPCAST)
    a0, a1 = halves(q1, BLOCK_M, 2 * V)
    _g_part(a0, b + 2, *args, DIAG, BLOCK_M, V, True, UPCAST)
    _g_part(a1, b + 3, *args, DIAG, BLOCK_M, V, True, UPCAST)


@triton.jit
def _g_part(
    acc,
    b,
    pid_m,
    offs_m,
    mask_m,
    scale,
    bias,
    g_ptr,
    part_ptr,
    N,
    ds_blocks,
    row0,
    stat_stride,
    DIAG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    W: tl.constexpr,
    PARTED: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Columns [b W, (b + 1) W) of G for the row block pid_m from acc = <Q_i, K_j> there, stored in g's
    dtype, with the fp32 row sums of G * acc at part[i, b] and of G at part[stat_stride + i, b] ([rows,
    ds_blocks] each; a part wholly past column N stores nothing)."""
    if PARTED:  # a part of a wider tile (else b < ds_blocks: no mask, no registers for it)
        mask_m = mask_m & (tl.full([BLOCK_M], b, tl.int32) < ds_blocks)
    offs_n = b * W + tl.arange(0, W).to(tl.int64)
    mask_n = offs_n < N
    z = acc * scale + bias
    e = tl.exp2(-tl.abs(z) * LOG2E)
    # sigmoid(z) = 1 / (1 + e) for z >= 0, else e / (1 + e); a positive's G is sigmoid(z) - 1 =
    # -sigmoid(-z) (no cancellation): the other numerator, negated
    if DIAG:
        eye = tile_diagonal(pid_m, b, row0, BLOCK_M, W)
        g = tl.where((z >= 0) != eye, 1.0, e) / (1.0 + e)
        g = tl.where(eye, -g, g)
    else:
        g = tl.where(z >= 0, 1.0, e) / (1.0 + e)
    # padded columns: 0 in the row sums; padded rows are not stored. (Not triton_utils.store_weights and a
    # second store: with the G store between the two row sums ptxas gives D = 100 16 more registers under
    # Triton 3.6, with the sum of g first the tf32 variants spill 20 B under 3.9.)
    g = tl.where(mask_n[None, :], g, 0.0)
    tl.store(part_ptr + offs_m * ds_blocks + b, tl.sum(g * acc, axis=1), mask=mask_m)
    tl.store(part_ptr + stat_stride + offs_m * ds_blocks + b, tl.sum(g, axis=1), mask=mask_m)
    tl.store(
        g_ptr + offs_m[:, None] * N + offs_n[None, :],
        round_to(g, g_ptr.dtype.element_ty, UPCAST),
        mask=mask_m[:, None] & mask_n[None, :],
    )


@triton.jit
def _weights_kernel(
    q_ptr,
    k_ptr,
    scale_ptr,
    bias_ptr,
    g_ptr,
    part_ptr,
    M,
    N,
    D,
    row0,
    sqm,
    sqd,
    skn,
    skd,
    n_blocks,
    stat_stride,
    DIAG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    WALK: tl.constexpr,
    SLABS: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    TMA: tl.constexpr = False,
    PARTS: tl.constexpr = 1,
):
    """Tiles of G = sigmoid(z) - [row0 + i == j] (the positives only with DIAG), z = s <Q_i, K_j> + b,
    stored in g's dtype ([M, N] row-major); the fp32 row sums of G * <Q_i, K_j> (part[i * ds_blocks +
    column block]) and of G (part[stat_stride + i * ds_blocks + column block]) over column blocks of
    BLOCK_N / PARTS (ds_blocks of them).
    WALK: program (i, g) walks the column blocks g, g + G, ... of row block i (``triton_utils.walk_grid``)
    as one pipelined (column tile, D chunk) loop; else program (i, j) does tile (i, j) (SLABS: j = y + z Y
    past 65,535 tiles, ``triton_utils.grid_tile``). TMA: q_ptr and
    k_ptr are tensor descriptors of [BLOCK_M, BLOCK_D] / [BLOCK_N, BLOCK_D] blocks (config
    "weights_wide")."""
    pid_m, offs_m, mask_m = row_block(M, BLOCK_M)
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    args = (
        q_ptr,
        k_ptr,
        g_ptr,
        part_ptr,
        N,
        D,
        row0,
        sqm,
        sqd,
        skn,
        skd,
        n_blocks,
        stat_stride,
    )  # the runtime ones (a tuple holds no constexpr)
    if WALK:
        tl.assume(D > 0)  # the D walk runs: the flattened walk needs no zero-trip copy
        for t in tl.range(tl.program_id(1), n_blocks, tl.num_programs(1), flatten=True):
            _weights_tile(
                t,
                pid_m,
                offs_m,
                mask_m,
                scale,
                bias,
                *args,
                DIAG,
                BLOCK_M,
                BLOCK_N,
                BLOCK_D,
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
            scale,
            bias,
            *args,
            DIAG,
            BLOCK_M,
            BLOCK_N,
            BLOCK_D,
            DOT_PREC,
            UPCAST,
            TMA,
            PARTS,
        )


def _common(q: torch.Tensor, k: torch.Tensor) -> tuple:
    return (q.shape[0], k.shape[0], q.shape[1], q.stride(0), q.stride(1), k.stride(0), k.stride(1))


def row_loss_sums(q, k, scale, bias, diag: bool) -> torch.Tensor:
    """Row sums [M] of softplus(-y z), z = scale * q @ k.T + bias (y: +1 on the diagonal when diag)."""
    m, dim = q.shape
    out = torch.empty(m, dtype=torch.float32, device=q.device)
    cfg = loss_config(dim, q.dtype, target_arch(q.device), q, k)
    q_arg, k_arg = tile_operands(q, k, cfg)
    _loss_kernel[(triton.cdiv(m, cfg["BLOCK_M"]),)](
        q_arg,
        k_arg,
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


def loss_config(dim: int, dtype, arch: int | None = None, *tensors) -> dict:
    """The forward's launch config: the contrastive forward's (``forward_config``: 128 x 256 tiles read
    through TMA descriptors, the softplus in four column parts, where ``wide_score_tiles`` holds and the
    features ``tensors`` allow), with 64-column tiles for split-precision fp32 dots (at 128 the softplus
    epilogue spilled 12-16 B on sm_80; benchmarks/aot.py), and for IEEE fp32 dots at unaligned D on four
    warps, where the contrastive forward takes eight (on eight the softplus spilled 40 B on sm_90 with
    Triton 3.8's ptxas; on four it takes 212 / 255 registers on sm_90 / sm_80 with 3.9's, no spills)."""
    cfg = forward_config(dim, dtype, arch, *tensors)
    if split_dots(dtype):
        cfg = dict(cfg, BLOCK_N=64)
    elif cfg.get("num_warps") == 8 and cfg.get("BLOCK_N") == 64 and dot_precision(dtype) == "ieee":
        cfg = dict(cfg, num_warps=4)
    return cfg


def weights_config(dim: int, dtype, arch: int | None = None, *tensors) -> dict:
    """The weights kernel's launch config: the contrastive G kernel's (``triton_utils.weights_config``: 256 x
    128 tiles through TMA descriptors where the wide tiles hold and ``tensors`` allow), with two pipeline
    stages for IEEE fp32 dots (three spilled 12 B on sm_80 at unaligned D; benchmarks/aot.py)."""
    cfg = triton_utils.weights_config(dim, dtype, arch, *tensors)
    if cfg.get("PARTS"):
        cfg = dict(cfg, PARTS=8)
    if dot_precision(dtype) == "ieee" and "num_stages" in cfg:
        cfg = dict(cfg, num_stages=2)
    return cfg


def weights(q, k, scale, bias, g, part, row0: int | None) -> int:
    """Fill g [M, N] (a workspace view, the features' dtype) with G for the rows q against the columns k,
    the positives where ``row0`` + i == j (None: no positives); part gets the [2, M, column blocks] fp32
    row sums of G * <q_i, k_j> and of G. Returns the number of partials per statistic (M * column blocks
    of ``partial_cols``)."""
    m, dim = q.shape
    n = k.shape[0]
    cfg = weights_config(dim, q.dtype, target_arch(q.device), q, k)
    walk = dot_precision(q.dtype) != "ieee"  # IEEE fp32: CUDA-core FFMA (flattened, it spilled)
    grid, n_blocks = walk_grid(m, n, cfg, walk, q.device)
    count = partials_of(m, n, cfg, part, stats=2)
    q_arg, k_arg = tile_operands(q, k, cfg)
    _weights_kernel[grid](
        q_arg,
        k_arg,
        scale,
        bias,
        g,
        part,
        *_common(q, k)[:3],
        0 if row0 is None else row0,
        *_common(q, k)[3:],
        n_blocks,
        count,
        DIAG=row0 is not None,
        WALK=walk,
        SLABS=len(grid) == 3,
        DOT_PREC=dot_precision(q.dtype),
        UPCAST=upcast(q.dtype),
        **cfg,
    )
    return count


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(1).to(torch.float32).contiguous()


def _blocks(dim: int, dtype, arch: int | None = None) -> tuple:
    """The weights kernel's blocks (``weights_blocks``: its wide config, eight parts, and the pointer-load
    fallback) for the plan, which sizes the workspace's partials, on sm_``arch`` (the device's: the tiles,
    and so the statistics' partials, depend on it)."""
    return weights_blocks(weights_config(dim, dtype, arch), config(dim, dtype, "weights", arch))


def _plan(m, n, dim, dtype, need_t, workspace, arch: int | None = None) -> BackwardPlan:
    """``backward_plan`` with the weights kernel's blocks, the dtype's element size and two statistics."""
    esize = torch.empty((), dtype=dtype).element_size()
    return backward_plan(m, n, dim, esize, need_t, workspace, _blocks(dim, dtype, arch), stats=2)


def _fill(work: Workspace, q, k, scale, bias, diag: bool, stats: bool = True):
    """The sigmoid G for ``Workspace.products``; statistics: [sum G * <q, k>, sum G] of the chunk (fp32)."""

    def fill(rows: slice, s0: int, cols: int, g: torch.Tensor):
        count = weights(
            q[rows], k[s0 : s0 + cols], scale, bias, g, work.part, rows.start - s0 if diag else None
        )
        return work.part[: 2 * count].view(2, count).sum(1) if stats else None

    return fill


class TritonSigmoidBackend:
    """The sigmoid backend protocol (ops/sigmoid.py) on the G-chunk engine (ops/gchunk_triton.py): the
    forward one pass over S; the backward G chunks of rows into the workspace and two tensor-core GEMMs
    each (dI stored, dT accumulated in fp32 for the columns the workspace covers, a column pass for the
    rest): 8 B^2 D FLOPs with the default budget up to the coverage limit."""

    @on_device
    def loss_sum(self, image, text, scale, bias, diag):
        return row_loss_sums(image, text, _f32(scale), _f32(bias), diag).sum()

    @on_device
    def gradients(self, image, text, scale, bias, alpha, need_t=True):
        """(dI, dT or None, sum G, sum G * <I, T>) of the single-process loss, dI and dT = alpha * (G @ T,
        G.T @ I) in the features' dtype (alpha a device scalar)."""
        batch, dim = image.shape
        dev = image.device
        scale, bias = _f32(scale), _f32(bias)
        alpha = alpha.detach().float().reshape(1)
        plan = _plan(batch, batch, dim, image.dtype, need_t, workspace_bytes(), target_arch(dev))
        work = Workspace(plan, batch, batch, dim, image.dtype, dev)
        rows = _fill(work, image, text, scale, bias, True)
        # G.T has the same form (z is symmetric in (I, T), positives on the diagonal)
        cols = _fill(work, text, image, scale, bias, True, stats=False)
        d_image, d_text, stats = work.gradients(image, text, rows, cols, alpha, need_t)
        return d_image, d_text, stats[1], stats[0]

    @on_device
    def grads(self, image, text, scale, bias, diag, need_t=True):
        """(G @ T [M, D], G.T @ I [N, D] or None, sum G, sum G * <I, T>) in fp32 (the ring Function's block
        products), G chunks of rows; G.T @ I accumulates in its fp32 output."""
        m, dim = image.shape
        n = text.shape[0]
        dev = image.device
        scale, bias = _f32(scale), _f32(bias)
        plan = _plan(m, n, dim, image.dtype, False, workspace_bytes(), target_arch(dev))
        work = Workspace(plan, m, n, dim, image.dtype, dev)
        a_i, a_t, stats = work.fp32_products(image, text, _fill(work, image, text, scale, bias, diag), need_t)
        return a_i, a_t, stats[1], stats[0]
