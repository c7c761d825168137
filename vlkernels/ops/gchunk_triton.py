"""The G-chunk backward shared by the Triton backends of the pairwise losses (contrastive v2, sigmoid).

Both losses have gradients of the form dQ = alpha G K and dK = alpha G.T Q, where G [M, N] is an
elementwise function of the scores S = s Q K.T (and of per-row / per-column statistics from the forward).
The backward never holds G whole: for a chunk of rows a loss's weights kernel recomputes S and writes G
into the workspace in the features' dtype (``Fill``), then two tensor-core GEMMs (``triton_utils.matmul``)
consume it: dQ[rows] = alpha G @ K (stored) and, for the first ``covered`` columns, dK[:covered] +=
alpha G.T @ Q[rows] accumulated in dK itself: in place for fp32 features, and for 16-bit ones as the pair
(dK, LO), LO the running sum's remainder as an int8 count of 1/256 of dK's spacing (``matmul``'s ``lo``:
16 significant bits for bf16, 19 for fp16, against one rounding of the final result), so that the covered
columns cost ``acc_bytes`` (0 or 1) bytes per element of workspace instead of an fp32 accumulator's 4.
The columns the accumulator could not hold come from a column pass: the same products with the roles of Q
and K swapped (G.T has the same form for both losses). Where G for every column of a large enough chunk
does not fit (B = 262144 at 256 MiB holds 512 rows), G is cut in slabs of columns and each chunk's dQ is
summed over its slabs in an fp32 [chunk, D] buffer: chunks of thousands of rows read and write the
covered columns' accumulator a few dozen times instead of a thousand. ``backward_plan`` picks the chunk,
the slab and the coverage that minimise the modelled backward within the workspace budget (docs/design.md,
"Contrastive kernels v2"); benchmarks/cost_model.py evaluates the same plans.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton

from vlkernels.ops.triton_utils import DEFAULT_SMS, gpu_tile, matmul, split_k, split_partials, walk_filled

# FLOP per HBM byte at the H100's ridge (790 TFLOP/s / 3.35 TB/s): weighs the accumulator's
# read-modify-write against recomputation when ``backward_plan`` picks the chunk.
RIDGE_FLOP_PER_BYTE = 236.0
# The part of the H100's 50 MB L2 an accumulator may occupy and still be read and written there rather
# than in HBM (benchmarks/cost_model.py assumes the same 80 %).
L2_USABLE_BYTES = 40e6
# FLOP per L2->SM byte at 790 TFLOP/s and 7.5 TB/s (the middle of the cost model's 5.5-10 TB/s).
L2_FLOP_PER_BYTE = 105.0
# A launch's fixed cost (about 4 us of an H100 between kernels) in FLOPs at its 790 TFLOP/s: keeps
# ``backward_plan`` from cutting G into slabs too small to pay for their launches.
LAUNCH_FLOP = 790e12 * 4e-6

# fill(rows, s0, cols, g): write G for the rows ``rows`` of Q against the columns s0 .. s0 + cols of K into
# g [count, cols]; return the chunk's fp32 partial statistics (any shape, summed over chunks and slabs by
# the caller), or None.
Fill = Callable[[slice, int, int, torch.Tensor], "torch.Tensor | None"]


def rmw_bytes(esize: int) -> int:
    """HBM bytes per element of the covered columns' accumulator read and written once: fp32 (4 + 4), or
    the pair of a 16-bit dK and its int8 remainder (3 + 3)."""
    return 8 if esize == 4 else 2 * (esize + 1)


def acc_bytes(esize: int) -> int:
    """Workspace bytes per element of the covered columns' accumulator for features of ``esize`` bytes: 0
    for fp32 (dK accumulates in place), else the int8 remainder LO."""
    return 0 if esize == 4 else 1


@dataclass(frozen=True)
class BackwardPlan:
    """``chunk``: rows of G per weights-kernel launch (and of the GEMMs that consume it); ``slab``: its
    columns per launch (fewer than all when the plan's larger chunks pay for it, or when not even one
    block of rows of every column fits; the chunk's image gradient then accumulates over slabs in fp32);
    ``covered``: the first columns whose text gradient is accumulated during the row pass (the rest come
    from the column pass); ``workspace``: the
    bytes the plan may use (G, the statistics' partials, the split-K partials and their sum, the slabs'
    fp32 accumulator, the covered columns' accumulator: ``acc_bytes`` per element); ``part_n``: the column
    block of the weights kernel's fp32 statistics partials and ``stats`` how many per row and block (what
    ``Workspace`` allocates: the plan's budget counted them, so the two cannot disagree)."""

    chunk: int
    slab: int
    covered: int
    workspace: int
    part_n: int
    stats: int


def _gemm_bytes(chunk: int, dim: int, k: int, sliced: bool) -> int:
    """The fp32 buffers of G @ K for ``chunk`` rows over ``k`` columns of G: the split-K partials
    (``split_partials``: as many as fill an H100's SMs; ``matmul`` never takes more than the workspace
    holds) and their sum's temporary [chunk, dim], + the slabs' accumulator [chunk, dim] when ``sliced``."""
    partials = split_partials(chunk, dim, k)
    return 4 * (partials + (chunk * dim if partials else 0) + (chunk * dim if sliced else 0))


def _chunk_bytes(
    chunk: int, slab: int, dim: int, esize: int, block_n: int, stats: int = 1, rows: int = 0
) -> int:
    """G [chunk, slab] in the features' dtype + ``stats`` fp32 partials per row and column block + the
    buffers of G @ K (``_gemm_bytes``; the slabs' accumulator when a slab is narrower than the ``rows``
    columns)."""
    g = chunk * slab * esize + stats * chunk * triton.cdiv(slab, block_n) * 4
    return g + _gemm_bytes(chunk, dim, slab, slab < rows)


def pieces(total: int, size: int) -> list:
    """[(width, count)]: ``total`` cut in pieces of ``size`` (the last one narrower)."""
    size = min(size, total)
    n, rest = divmod(total, size)
    return [(size, n)] + ([(rest, 1)] if rest else [])


def _filled(programs: int, sms: int = DEFAULT_SMS) -> float:
    """The fraction of ``sms`` SMs a launch of ``programs`` one-per-SM programs keeps busy over its waves."""
    return programs / (math.ceil(programs / sms) * sms)


def _chunk_cost(ch: int, cols: int, dim: int, esize: int, slab: int, block, covered: int) -> float:
    """Modelled FLOP-equivalents of one chunk of ``ch`` rows of a pass over ``cols`` columns in slabs of
    ``slab``: per slab the weights kernel (at its tile walk's fill, ``walk_filled``) and the storing GEMM,
    each bound by its compute or its HBM traffic (the partner's rows and G) at the ridge (the GEMM split
    along K when its tiles alone do not fill the SMs; with slabs the later ones accumulate in the
    fp32 [ch, dim] buffer, whose read-modify-write is HBM traffic when it does not fit the usable L2), the
    covered columns' accumulation GEMM (its read-modify-write once per chunk when the accumulator does not
    fit the L2), each launch at the fraction of the SMs its programs fill, plus ``LAUNCH_FLOP`` per
    launch."""
    block_m, block_n = block
    tile = gpu_tile(dim)
    col_tiles = math.ceil(dim / tile["BLOCK_N"])
    tiles = math.ceil(ch / tile["BLOCK_M"]) * col_tiles
    cost, launches = 0.0, 0
    slab = min(slab, cols)
    widths = pieces(cols, slab)
    sliced = cols > slab

    # HBM per slab of ``sl`` columns (as the cost model): the partner's rows, streamed once per chunk, and
    # G, written by the weights kernel and read back by the GEMM (neither assumed L2-resident)
    def hbm(sl: int) -> float:
        return RIDGE_FLOP_PER_BYTE * (sl * dim + ch * sl) * esize

    for sl, count in widths:
        fill = walk_filled(math.ceil(ch / block_m), math.ceil(sl / block_n), DEFAULT_SMS)
        cost += count * max(2.0 * ch * sl * dim / fill, hbm(sl))
        launches += 2 * count
    split = split_k(ch, dim, slab, tile, DEFAULT_SMS)
    first = max(2.0 * ch * slab * dim / _filled(tiles * split), hbm(slab))
    launches += 1 if split > 1 else 0
    cost += first
    if sliced:
        rmw = RIDGE_FLOP_PER_BYTE * 8.0 * ch * dim if 4.0 * ch * dim > L2_USABLE_BYTES else 0.0
        for i, (sl, count) in enumerate(widths):
            later = count - 1 if i == 0 else count
            cost += later * max(2.0 * ch * sl * dim / _filled(tiles), rmw + hbm(sl))
            # its reads and writes add to the GEMM's operand traffic from L2 (its bound)
            cost += later * L2_FLOP_PER_BYTE * 8.0 * ch * dim
        launches += 1  # the scaled copy into the output
    if covered:
        acc = 0.0
        for w, count in pieces(covered, slab):
            acc += count * 2.0 * w * ch * dim / _filled(math.ceil(w / tile["BLOCK_M"]) * col_tiles)
            launches += count
        rmw = 0.0
        if 4.0 * covered * dim > L2_USABLE_BYTES:
            rmw = RIDGE_FLOP_PER_BYTE * rmw_bytes(esize) * covered * dim
        cost += max(acc, rmw)
    return cost + launches * LAUNCH_FLOP


def _pass_cost(rows: int, cols: int, dim: int, esize: int, chunk: int, slab: int, block, covered=0) -> float:
    """``_chunk_cost`` summed over the chunks of ``rows`` rows."""
    if rows <= 0:
        return 0.0
    return sum(n * _chunk_cost(ch, cols, dim, esize, slab, block, covered) for ch, n in pieces(rows, chunk))


@functools.lru_cache(maxsize=256)
def backward_plan(
    m: int, n: int, dim: int, esize: int, need_t: bool, workspace: int, block=(128, 128), stats: int = 1
) -> BackwardPlan:
    """The chunk, slab and accumulator's coverage that minimise the modelled backward (``_pass_cost``: the
    row pass with its covered columns, the column pass over the rest) within ``workspace`` bytes. Chunks
    and slabs: powers of two times the weights kernel's blocks, all the rows, and for each chunk the
    widest slab that fits; the coverage: all that fits beside G, as much as stays in L2, none. When not
    even one block of rows and columns fits, the smallest. ``block``: (rows, columns) of the weights
    kernel's tiles, and optionally the column block of its statistics' partials when narrower (a tile's
    epilogue in parts, each with its own partials; ``Workspace`` allocates them so)."""
    block_m, block_n, *part = block
    part_n = part[0] if part else block_n
    rows = max(m, n)
    chunks, c = [], block_m
    while c < rows:
        chunks.append(c)
        c *= 2
    chunks.append(rows)
    best = None
    per = acc_bytes(esize) * dim
    for chunk in chunks:
        slabs, s = {rows}, block_n
        while s < rows:
            slabs.add(s)
            s *= 2
        per_col = chunk * esize + 4 * stats
        fit = (workspace - _gemm_bytes(chunk, dim, rows, True)) // per_col // block_n * block_n
        if block_n <= fit < rows:
            slabs.add(int(fit))
        for slab in sorted(slabs, reverse=True):
            g_bytes = _chunk_bytes(chunk, slab, dim, esize, part_n, stats, rows)
            if g_bytes > workspace and (chunk, slab) != (chunks[0], min(slabs)):
                continue
            most = 0
            if need_t:
                left = max(0, workspace - g_bytes)
                most = n if per * n <= left else (left // per) // block_n * block_n
            in_l2 = min(most, int(L2_USABLE_BYTES // (4 * dim)) // block_n * block_n)
            for covered in sorted({most, in_l2, 0}, reverse=True):
                cost = _pass_cost(m, n, dim, esize, chunk, slab, (block_m, block_n), covered if need_t else 0)
                if need_t:
                    cost += _pass_cost(n - covered, m, dim, esize, chunk, slab, (block_m, block_n))
                key = (cost, -chunk, -slab, -covered)
                if best is None or key < best[0]:
                    best = (key, BackwardPlan(chunk, slab, covered, g_bytes + per * covered, part_n, stats))
    return best[1]


class Workspace:
    """The backward's buffers for one plan (G, the statistics' partials ``part``, the slabs' fp32
    accumulator) and the products of one chunk of rows."""

    def __init__(self, plan: BackwardPlan, rows: int, n: int, dim: int, dtype, dev):
        self.plan = plan
        chunk, slab = min(plan.chunk, rows), min(plan.slab, n)
        self.g = torch.empty(chunk * slab, dtype=dtype, device=dev)
        parts = plan.stats * chunk * triton.cdiv(slab, plan.part_n)
        self.part = torch.empty(parts, dtype=torch.float32, device=dev)
        self.rows_acc = torch.empty((chunk, dim), dtype=torch.float32, device=dev) if slab < n else None
        self.partials = torch.empty(split_partials(chunk, dim, slab), dtype=torch.float32, device=dev)
        self.one = torch.ones(1, dtype=torch.float32, device=dev)

    def products(self, q, k, fill: Fill, rows: slice, alpha, out, acc, covered: int, lo=None):
        """For the rows ``rows`` of q: out = alpha G @ k (out's dtype) and acc[:covered] += alpha
        G[:, :covered].T @ q[rows] (acc fp32, or the pair (acc, int8 lo)); returns the sum of ``fill``'s
        statistics over the slabs (None if it returns none)."""
        n, slab = k.shape[0], self.plan.slab
        count = rows.stop - rows.start
        q_rows = q[rows]
        stats = None
        for s0 in range(0, n, slab):
            cols = min(slab, n - s0)
            g = self.g[: count * cols].view(count, cols)
            part = fill(rows, s0, cols, g)
            if part is not None:
                stats = part if stats is None else stats + part
            if cols == n:
                matmul(g, k, alpha, out, workspace=self.partials)
            else:
                acc_rows = self.rows_acc[:count]
                matmul(g, k[s0 : s0 + cols], self.one, acc_rows, accumulate=s0 > 0, workspace=self.partials)
            if acc is not None and s0 < covered:
                width = min(covered, s0 + cols) - s0
                part_lo = lo[s0 : s0 + width] if lo is not None else None
                matmul(g[:, :width].T, q_rows, alpha, acc[s0 : s0 + width], accumulate=True, lo=part_lo)
        if self.rows_acc is not None and slab < n:
            out.copy_(self.rows_acc[:count].mul_(alpha))
        return stats

    def _rows(self, q, k, fill: Fill, alpha, out, acc, covered: int, start: int = 0, lo=None):
        """``products`` for every chunk of q's rows from ``start`` on; the sum of ``fill``'s statistics (None
        if it has none)."""
        stats = None
        for r0 in range(start, q.shape[0], self.plan.chunk):
            rows = slice(r0, min(r0 + self.plan.chunk, q.shape[0]))
            part = self.products(q, k, fill, rows, alpha, out[rows], acc, covered, lo)
            if part is not None:
                stats = part if stats is None else stats + part
        return stats

    def gradients(self, q, k, fill_rows: Fill, fill_cols: Fill, alpha, need_k: bool):
        """(dQ = alpha G @ K, dK = alpha G.T @ Q or None, the row pass's statistics) in the features' dtype:
        the row pass (dQ stored per chunk, the first ``covered`` columns of dK accumulated in dK itself, with
        an int8 remainder LO for 16-bit features), then the column pass over the rest (``fill_cols`` writes
        G.T for rows of K against Q)."""
        covered, dim = self.plan.covered if need_k else 0, q.shape[1]
        d_q = torch.empty_like(q)
        d_k = torch.empty_like(k) if need_k else None
        acc = d_k[:covered].zero_() if covered else None
        lo = None
        if covered and k.dtype != torch.float32:
            lo = torch.zeros((covered, dim), dtype=torch.int8, device=k.device)
        stats = self._rows(q, k, fill_rows, alpha, d_q, acc, covered, lo=lo)
        if not need_k:
            return d_q, None, stats
        del lo
        self._rows(k, q, fill_cols, alpha, d_k, None, 0, start=covered)
        return d_q, d_k, stats

    def fp32_products(self, q, k, fill: Fill, need_k: bool = True):
        """(G @ K [M, D], G.T @ Q [N, D] or None, the statistics) in fp32 (the gathered and ring Functions'
        block products); G.T @ Q accumulates in its fp32 output over the chunks of rows."""
        a_q = torch.empty((q.shape[0], q.shape[1]), dtype=torch.float32, device=q.device)
        a_k = torch.zeros((k.shape[0], q.shape[1]), dtype=torch.float32, device=q.device) if need_k else None
        stats = self._rows(q, k, fill, self.one, a_q, a_k, k.shape[0] if need_k else 0)
        return a_q, a_k, stats
