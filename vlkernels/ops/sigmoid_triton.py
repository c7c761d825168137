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

Numerics: softplus(x) = max(x, 0) + log1p(exp(-|x|)) with log1p evaluated as log(u) * e / (u - 1),
u = 1 + e (exact to a few ulps even where 1 + e rounds); G of a positive is -sigmoid(-z) (no cancellation
in sigmoid(z) - 1), rounded once to the features' dtype for the GEMMs (the scalar gradients use the fp32
values). Stable for any |z| (scale 100 with bias -10 gives |z| ~ 110).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vlkernels.ops.gchunk_triton import BackwardPlan, Workspace, backward_plan
from vlkernels.ops.torch_utils import workspace_bytes
from vlkernels.ops.triton_utils import (
    LN2,
    LOG2E,
    config,
    dot_precision,
    dot_tile,
    load_tile,
    round_to,
    score_tile,
    split_dots,
    tile_diagonal,
    upcast,
    walk_grid,
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
    if DOT_PREC != "ieee":  # the D walk runs: the flattened column walk needs no zero-trip copy
        tl.assume(D > 0)
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
    for start_n in tl.range(0, N, BLOCK_N, flatten=DOT_PREC != "ieee"):
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
):
    """Column tile ``t`` of ``_weights_kernel``'s row block."""
    pid_n = t  # a program id or the walk's counter (int32; a Python int in the interpreter)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask_n = offs_n < N
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
    z = acc * scale + bias
    e = tl.exp2(-tl.abs(z) * LOG2E)
    hi = 1.0 / (1.0 + e)  # sigmoid(|z|)
    lo = e * hi  # sigmoid(-|z|)
    g = tl.where(z >= 0, hi, lo)
    if DIAG:
        # a positive's G is sigmoid(z) - 1 = -sigmoid(-z): no cancellation
        eye = tile_diagonal(pid_m, pid_n, row0, BLOCK_M, BLOCK_N)
        g = tl.where(eye, -tl.where(z >= 0, lo, hi), g)
    # padded columns: 0 in the row sums; padded rows are not stored. (Not triton_utils.store_weights and a
    # second store: with the G store between the two row sums ptxas gives D = 100 16 more registers under
    # Triton 3.6, with the sum of g first the tf32 variants spill 20 B under 3.9.)
    g = tl.where(mask_n[None, :], g, 0.0)
    tl.store(part_ptr + offs_m * n_blocks + pid_n, tl.sum(g * acc, axis=1), mask=mask_m)
    tl.store(part_ptr + stat_stride + offs_m * n_blocks + pid_n, tl.sum(g, axis=1), mask=mask_m)
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
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Tiles of G = sigmoid(z) - [row0 + i == j] (the positives only with DIAG), z = s <Q_i, K_j> + b,
    stored in g's dtype ([M, N] row-major); each tile's fp32 row sums of G * <Q_i, K_j>
    (part[i * n_blocks + column block]) and of G (part[stat_stride + i * n_blocks + column block]).
    WALK: program (i, g) walks the column blocks g, g + G, ... of row block i (``triton_utils.walk_grid``)
    as one pipelined (column tile, D chunk) loop; else program (i, j) does tile (i, j)."""
    pid_m = tl.program_id(0).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
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
            )
    else:  # not the walk's loop run once: that costs the IEEE fp32 variants 40-90 registers and spills
        _weights_tile(
            tl.program_id(1),
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
        )


def _common(q: torch.Tensor, k: torch.Tensor) -> tuple:
    return (q.shape[0], k.shape[0], q.shape[1], q.stride(0), q.stride(1), k.stride(0), k.stride(1))


def row_loss_sums(q, k, scale, bias, diag: bool) -> torch.Tensor:
    """Row sums [M] of softplus(-y z), z = scale * q @ k.T + bias (y: +1 on the diagonal when diag)."""
    m, dim = q.shape
    out = torch.empty(m, dtype=torch.float32, device=q.device)
    cfg = loss_config(dim, q.dtype)
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


def loss_config(dim: int, dtype) -> dict:
    """The forward's launch config: the contrastive forward's (config "fwd"), with 64-column tiles for
    split-precision fp32 dots (at 128 the softplus epilogue spilled 12-16 B on sm_80; benchmarks/aot.py)."""
    cfg = config(dim, dtype, "fwd")
    if split_dots(dtype):
        cfg = dict(cfg, BLOCK_N=64)
    return cfg


def weights_config(dim: int, dtype) -> dict:
    """The weights kernel's launch config: the contrastive G kernel's (config "weights"), with two pipeline
    stages for IEEE fp32 dots (three spilled 12 B on sm_80 at unaligned D; benchmarks/aot.py)."""
    cfg = config(dim, dtype, "weights")
    if dot_precision(dtype) == "ieee" and "num_stages" in cfg:
        cfg = dict(cfg, num_stages=2)
    return cfg


def weights(q, k, scale, bias, g, part, row0: int | None) -> int:
    """Fill g [M, N] (a workspace view, the features' dtype) with G for the rows q against the columns k,
    the positives where ``row0`` + i == j (None: no positives); part gets the [2, M, column blocks] fp32
    row sums of G * <q_i, k_j> and of G. Returns the number of partials per statistic (M * column blocks)."""
    m, dim = q.shape
    n = k.shape[0]
    cfg = weights_config(dim, q.dtype)
    walk = dot_precision(q.dtype) != "ieee"  # IEEE fp32: CUDA-core FFMA (flattened, it spilled)
    grid, n_blocks = walk_grid(m, n, cfg, walk, q.device)
    _weights_kernel[grid](
        q,
        k,
        scale,
        bias,
        g,
        part,
        *_common(q, k)[:3],
        0 if row0 is None else row0,
        *_common(q, k)[3:],
        n_blocks,
        m * n_blocks,
        DIAG=row0 is not None,
        WALK=walk,
        DOT_PREC=dot_precision(q.dtype),
        UPCAST=upcast(q.dtype),
        **cfg,
    )
    return m * n_blocks


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(1).to(torch.float32).contiguous()


def _plan(m, n, dim, dtype, need_t, workspace) -> BackwardPlan:
    """``backward_plan`` with the weights kernel's blocks, the dtype's element size and two statistics."""
    cfg = config(dim, dtype, "weights")
    esize = torch.empty((), dtype=dtype).element_size()
    return backward_plan(m, n, dim, esize, need_t, workspace, (cfg["BLOCK_M"], cfg["BLOCK_N"]), stats=2)


def _workspace(plan: BackwardPlan, rows: int, n: int, dim: int, dtype, dev) -> Workspace:
    return Workspace(plan, rows, n, dim, dtype, dev, config(dim, dtype, "weights")["BLOCK_N"], stats=2)


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

    def loss_sum(self, image, text, scale, bias, diag):
        return row_loss_sums(image, text, _f32(scale), _f32(bias), diag).sum()

    def gradients(self, image, text, scale, bias, alpha, need_t=True):
        """(dI, dT or None, sum G, sum G * <I, T>) of the single-process loss, dI and dT = alpha * (G @ T,
        G.T @ I) in the features' dtype (alpha a device scalar)."""
        batch, dim = image.shape
        dev = image.device
        scale, bias = _f32(scale), _f32(bias)
        alpha = alpha.detach().float().reshape(1)
        plan = _plan(batch, batch, dim, image.dtype, need_t, workspace_bytes())
        work = _workspace(plan, batch, batch, dim, image.dtype, dev)
        rows = _fill(work, image, text, scale, bias, True)
        # G.T has the same form (z is symmetric in (I, T), positives on the diagonal)
        cols = _fill(work, text, image, scale, bias, True, stats=False)
        d_image, d_text, stats = work.gradients(image, text, rows, cols, alpha, need_t)
        return d_image, d_text, stats[1], stats[0]

    def grads(self, image, text, scale, bias, diag, need_t=True):
        """(G @ T [M, D], G.T @ I [N, D] or None, sum G, sum G * <I, T>) in fp32 (the ring Function's block
        products), G chunks of rows; G.T @ I accumulates in its fp32 output."""
        m, dim = image.shape
        n = text.shape[0]
        dev = image.device
        scale, bias = _f32(scale), _f32(bias)
        plan = _plan(m, n, dim, image.dtype, False, workspace_bytes())
        work = _workspace(plan, m, n, dim, image.dtype, dev)
        a_i, a_t, stats = work.fp32_products(image, text, _fill(work, image, text, scale, bias, diag), need_t)
        return a_i, a_t, stats[1], stats[0]
