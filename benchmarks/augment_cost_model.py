"""Analytic cost model of the fused augmentation's CUDA kernel on an H100: MODELLED, not measured.

The kernel (csrc/cuda/augment_cuda.cu) runs a grid of outputs x row bands, 512 threads a block, one
resident block per SM (ptxas: about 120 registers a thread, tests/test_cuda_compile.py -s). Per output
pixel a thread reads the taps of its crop straight from the uint8 source (rows outer, columns inner: ny x
nx taps, three channels each: a byte load, an exact uint8 -> float (u8_to_float: an integer add and an
FADD) and an FMA per tap and channel, the tap weights from shared-memory tables), or, for downscales, in
two separable passes through a shared-memory row buffer; applies the colour ops, grayscale, solarize and
the normalisation, and stores three values. Outputs with contrast or blur go to the cluster launch (one
resampling pass, the band kept in shared memory); without it contrast resamples the image twice (a first
pass for the gray mean) and blur goes through a global workspace. This model counts that work per output
from the real sampled parameters (crop boxes, op plans, sigmas: the same
geometry as aa_weights and band_rows_for), turns each block's counts into time on one SM, and schedules
the blocks onto the SMs in launch order (as the hardware hands them out), so that the tail of the last
wave and the band split of small batches are in the prediction.

Per block, time = its instructions per SM pipe / the pipe's rate, and its HBM bytes at the SM's share of
the bandwidth: the maximum of these terms and of the issue limit (low) and their sum (high). The
resampling loops' instructions per tap are counted in the kernel's SASS (X_TAP, Y_TAP; benchmarks/sass.py
disassembles nvcc's output without a GPU); the colour ops' and the per-pixel overheads are estimates
(OP_FP32, INT_PER_ITEM).

The baseline, torchvision v2 applied per sample on the GPU (benchmarks/bench_augment.py's
``torchvision_v2_chain``), runs tiny kernels one eager op at a time: it is bound by the host's cost per
op. Its ops per sample are counted here (a dispatch-mode counter on CPU tensors: the same aten ops a
GPU run launches); the cost per op is a stated range (PER_OP_S), which the one H100 measurement implies
(1.37 ms per sample, 2026-11-25).

The floor is the benchmark's: read every input byte once and write the output once at the HBM bandwidth.

    python -m benchmarks.augment_cost_model   # prints the table, writes results/model/h100_augment_model.md
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

import torch

from benchmarks.cost_model import H100, RESULTS, Hardware, write_report

# Threads per block and resident blocks per SM of the kernel (100 registers x 512 threads: one block).
THREADS = 512
BLOCKS_PER_SM = 1
MIN_BAND_PIXELS = 4 * THREADS  # kMinBandPixels in csrc/cuda/augment_cuda.cu
TAP_CHOICES = (24, 16, 8)  # kTapChoices: the most taps whose tables fit 48 KiB with the static smem
STATIC_SMEM = 144
SMEM_DEFAULT = 48 * 1024
SMEM_BUDGET = 160 * 1024  # kSmemBudget
SEPARABLE_MIN_TAPS = 12.0  # kSeparableMinTaps
CLUSTER_BLOCKS = 8  # kClusterBlocks
OPTIN = 227 * 1024  # H100: shared memory a block may opt in to


@dataclass(frozen=True)
class Rates:
    """Per-SM rates (thread-level instructions per clock) on an H100: the CUDA programming guide's
    throughput table for compute capability 9.0, and the issue limit of four schedulers."""

    issue: float = 128.0  # every instruction: 4 schedulers x one warp instruction per clock
    lsu: float = 32.0  # global / shared loads and stores: one warp instruction per clock
    xu: float = 16.0  # conversions (I2F, F2I) and MUFU (exp, reciprocal)
    fp32: float = 128.0  # FFMA / FADD / FMUL
    int32: float = 64.0  # integer add / logic / compare / shift and IMAD: addresses, indices, loops


RATES = Rates()

# fp32-pipe instructions per output pixel of each step (estimates from the source: three channels each;
# hue's RGB -> HSV -> RGB is most of the colour work).
OP_FP32 = {
    "brightness": 6,
    "contrast": 9,
    "saturation": 14,
    "hue": 60,
    "gray": 5,
    "solarize": 6,
    "normalise": 6,
    "quantise": 12,  # uint8 output: scale, round, clamp
    "on_the_fly_tap": 10,  # a filter weight evaluated per tap (no tables), divided by the total
}
# Integer-pipe instructions (an estimate) per pixel or buffered item: index division and modulo, row and
# column addresses.
INT_PER_ITEM = 30
# Instructions per tap (three channels) of the resampling loops, by pipe: counted in the kernel's SASS
# (nvcc 13 for sm_90, unrolled by 4 taps; `python -m benchmarks.sass OBJECT fused_augment`), the costliest
# of its instances (layouts, output dtypes, launches) for each count. X_TAP: sum_taps' tap (three byte
# loads, the weight from shared memory, three u8_to_float: an integer add and an FADD each, three FFMA;
# the address arithmetic once per unrolled step); PAIR_TAP: a source position that sum_taps_pair sums
# for two neighbouring columns at once (its bytes loaded and converted once, two weights, six FFMA);
# Y_TAP: the separable y pass's tap (three buffered values and the weight from shared memory, three
# FFMA); Y_PAIR_TAP: a buffered row two neighbouring output rows share. tests/test_cuda_compile.py
# recounts them from the compiled source. Every tap is counted at its loop's unrolled rate: the loops'
# remainders (the last 1-3 taps, straight-line code) and each sum's set-up are left to INT_PER_ITEM's
# estimate, so short runs of taps (bilinear near-unity scales) cost more than the model says. The kernel
# before u8_to_float, the pointer-stepping loops and the pairs (2026-12-04) had 75 instructions per 4 x
# taps, 12 of them I2FP conversions (the XU pipe, 16 per clock per SM), and no shared positions.
X_TAP = {"issue": 74 / 4, "lsu": 4.0, "xu": 0.0, "fp32": 6.0, "int32": 33 / 4}
PAIR_TAP = {"issue": 53 / 2, "lsu": 5.0, "xu": 0.0, "fp32": 9.0, "int32": 24 / 2}
Y_TAP = {"issue": 50 / 4, "lsu": 4.0, "xu": 0.0, "fp32": 3.0, "int32": 19 / 4}
Y_PAIR_TAP = {"issue": 35 / 2, "lsu": 5.0, "xu": 0.0, "fp32": 6.0, "int32": 12 / 2}
LOOPS = (("x_taps", X_TAP), ("pair_taps", PAIR_TAP), ("y_taps", Y_TAP), ("y_pair_taps", Y_PAIR_TAP))
COLOUR = ("brightness", "contrast", "saturation", "hue")

# Cost per eager op of torchvision v2 on a GPU (host dispatch + launch of a tiny kernel), (low, high):
# an assumption; the H100 measurement of 2026-11-25 (43.99 ms for 32 samples of the bench's 256 x 256
# batch, 75 aten ops a sample) implies 18.3 us.
PER_OP_S = (10e-6, 20e-6)


def axis_taps(n_in: int, n_out: int, interp: str) -> tuple[list[int], list[int]]:
    """First source index and tap count of every output pixel along one axis: aa_weights' geometry
    (csrc/augment.h), in float32 as the kernel computes it."""
    scale = torch.tensor(n_in, dtype=torch.float32) / torch.tensor(n_out, dtype=torch.float32)
    half = 2.0 if interp == "bicubic" else 1.0
    support = half * scale if scale >= 1 else torch.tensor(half)
    center = (scale.double() * (torch.arange(n_out, dtype=torch.float64) + 0.5)).float()
    lo = (center - support + 0.5).long().clamp(min=0)
    hi = (center + support + 0.5).long().clamp(max=n_in)
    return lo.tolist(), (hi - lo).tolist()


def max_taps(n_in: int, n_out: int, interp: str) -> int:
    scale = n_in / n_out
    half = 2.0 if interp == "bicubic" else 1.0
    return math.ceil(2 * (half * scale if scale >= 1 else half)) + 2


def table_taps(oh: int, ow: int) -> int:
    for taps in TAP_CHOICES:
        if STATIC_SMEM + (oh + ow) * (taps * 4 + 8) <= SMEM_DEFAULT:
            return taps
    return 0


def table_bytes(oh: int, ow: int, taps: int) -> int:
    """The tap tables' shared memory, rounded up to 16 (table_bytes_aligned, csrc/augment_resample.h)."""
    return -(-((oh + ow) * (taps * 4 + 8)) // 16) * 16


def cluster_layout(oh: int, ow: int, separable: bool = True, optin: int = OPTIN) -> dict | None:
    """The cluster launch's plan (plan_cluster_launch in augment_cuda.cu): bands of ceil(oh / 8) rows kept
    in shared memory after the tables and the buffer region, then the blur's taps, up to the opt-in limit.
    band: rows a block; region: rows of the buffer region; buf_rows: the separable passes' (0: none);
    mode: 2 (blurred outputs too) when the region holds a band, else 1 (contrast only); smem: the dynamic
    shared memory. None when there is no cluster launch (no tables, fewer than 8 rows, a band too
    large)."""
    taps = table_taps(oh, ow)
    if taps == 0 or oh < CLUSTER_BLOCKS:
        return None
    band = -(-oh // CLUSTER_BLOCKS)
    tables = table_bytes(oh, ow, taps)
    keep = band * 12 * ow
    blur_taps = 8 * (ow + oh)
    if STATIC_SMEM + tables + keep + blur_taps > optin:
        return None
    rows = (optin - STATIC_SMEM - tables - keep - blur_taps) // (12 * ow)
    buf_rows = rows if rows >= taps and separable else 0
    smem = tables + rows * 12 * ow + keep + blur_taps
    return dict(band=band, region=rows, buf_rows=buf_rows, mode=2 if rows >= band else 1, smem=smem)


def cluster_plan(oh: int, ow: int, separable: bool = True, optin: int = OPTIN) -> tuple[int, int, int] | None:
    """(band rows, separable buffer rows, mode) of the cluster launch (cluster_layout)."""
    c = cluster_layout(oh, ow, separable, optin)
    return None if c is None else (c["band"], c["buf_rows"], c["mode"])


def shared_taps(lo: list[int], n: list[int], start: int, end: int) -> int:
    """Source positions that the pairs of neighbouring outputs (start, start + 1), (start + 2, ...) below
    end share (sum_taps_pair reads them once for both): the overlap of each pair's tap ranges. (A flipped
    crop mirrors the columns; at an even width the pairs and their overlaps are the same.)"""
    return sum(max(0, min(lo[k] + n[k], lo[k + 1] + n[k + 1]) - lo[k + 1]) for k in range(start, end - 1, 2))


def taps_product(ch: int, oh: int, cw: int, ow: int, interp: str) -> float:
    """(2 support_y) x (2 support_x): about the taps a pixel sums directly (the kernel's rule for the
    separable passes, csrc/augment.h taps_product)."""
    half = 2.0 if interp == "bicubic" else 1.0
    sy, sx = ch / oh, cw / ow
    return (2 * half * max(sy, 1.0)) * (2 * half * max(sx, 1.0))


def buffer_rows(oh: int, ow: int, optin: int = 227 * 1024) -> int:
    """Source rows of the separable passes' shared-memory buffer (plan_launch in augment_cuda.cu): what
    kSmemBudget (160 KiB) or the opt-in limit leaves after the tables; 0 (no separable passes) when that
    is fewer than the tables' taps."""
    taps = table_taps(oh, ow)
    if taps == 0:
        return 0
    room = max(0, min(optin, SMEM_BUDGET) - STATIC_SMEM - table_bytes(oh, ow, taps))
    rows = room // (12 * ow)
    return rows if rows >= taps else 0


def band_rows(n: int, oh: int, ow: int, slots: int) -> int:
    """band_rows_for (csrc/augment.h)."""
    if n >= slots:
        return oh
    want = -(-slots // n)
    min_rows = -(-MIN_BAND_PIXELS // ow)
    most = max(1, oh // min_rows)
    bands = min(want, most, 65535)
    return -(-oh // bands)


def blur_radius(sigma: float, n: int) -> int:
    return int(min(math.ceil(3.0 * sigma), n - 1))


@dataclass
class Work:
    """Operations of one block (thread-level counts summed over its pixels) and its HBM bytes."""

    lsu: float = 0.0
    xu: float = 0.0
    fp32: float = 0.0
    int32: float = 0.0
    x_taps: float = 0.0  # taps of sum_taps (each: three channels)
    pair_taps: float = 0.0  # source positions sum_taps_pair sums for two columns
    y_taps: float = 0.0  # taps of the separable y pass
    y_pair_taps: float = 0.0  # buffered rows the y pass sums for two output rows
    hbm: float = 0.0
    ws_bytes: float = 0.0  # blur workspace traffic (HBM when the in-flight workspaces exceed L2)

    def add(self, o: Work) -> Work:
        return Work(*(getattr(self, f) + getattr(o, f) for f in self.__dataclass_fields__))

    def pipes(self) -> dict[str, float]:
        """Instructions per pipe and issued in all, the tap loops' counted in SASS (LOOPS)."""
        out = {
            k: getattr(self, k) + sum(c[k] * getattr(self, f) for f, c in LOOPS)
            for k in ("lsu", "xu", "fp32", "int32")
        }
        loops = sum(c["issue"] * getattr(self, f) for f, c in LOOPS)
        out["issue"] = loops + self.lsu + self.xu + self.fp32 + self.int32
        return out

    def time(self, rates: Rates, hw: Hardware, ws_in_l2: bool, high: bool) -> float:
        """low: the busiest of the pipes, the issue limit and the bytes; high: the pipes and the bytes
        one after another (no overlap)."""
        clk = hw.clock_hz
        n = self.pipes()
        terms = [n[k] / getattr(rates, k) / clk for k in ("lsu", "xu", "fp32", "int32")]
        per_sm_bw = hw.hbm / hw.sms
        mem = (self.hbm + (0.0 if ws_in_l2 else self.ws_bytes)) / per_sm_bw
        return sum(terms) + mem if high else max(*terms, n["issue"] / rates.issue / clk, mem)


def output_blocks(
    size,
    box,
    factors,
    order,
    gray,
    solar,
    sigma,
    oh,
    ow,
    interp,
    out_esize,
    rows,
    taps_cap,
    buf_rows,
    cluster=None,
):
    """The blocks of one output (one, or one per band) as Work, whether it was split, and whether they
    belong to the cluster launch (cluster: cluster_plan's (band rows, buffer rows), None without one)."""
    top, left, ch, cw = box
    loy, ny = axis_taps(ch, oh, interp)
    lox, nx = axis_taps(cw, ow, interp)
    tables = max_taps(cw, ow, interp) <= taps_cap and max_taps(ch, oh, interp) <= taps_cap
    separable = tables and buf_rows > 0 and taps_product(ch, oh, cw, ow, interp) >= SEPARABLE_MIN_TAPS
    active = [COLOUR[op] for op in order if (factors[op] != 0.0 if op == 3 else factors[op] != 1.0)]
    needs_mean = "contrast" in active
    blur = sigma > 0
    whole = needs_mean or blur
    sum_x = float(sum(nx))
    # The x pass in pairs of neighbouring columns (row_sum_pair): per source row, the positions a pair
    # shares (loaded once for both) and the taps summed for one column alone.
    shared = shared_taps(lox, nx, 0, ow)
    single = sum_x - 2 * shared
    pairs = -(-ow // 2)

    def direct(r0: int, r1: int) -> Work:
        ty = float(sum(ny[r0:r1]))
        taps = ty * sum_x  # sum over the rows' pixels of ny * nx
        px = (r1 - r0) * ow
        w = Work(x_taps=taps, lsu=ty * ow, fp32=3 * ty * ow, int32=INT_PER_ITEM * px)
        if not tables:
            w.fp32 += OP_FP32["on_the_fly_tap"] * (taps + 2 * px * (ty / (r1 - r0) + sum_x / ow))
        return w

    def separable_passes(r0: int, r1: int) -> Work:
        w = Work()
        i0 = r0
        while i0 < r1:  # the kernel's chunks (for_each_pixel)
            y0 = loy[i0]
            i1 = i0 + 1
            while i1 < r1 and loy[i1] + ny[i1] - y0 <= buf_rows:
                i1 += 1
            nrows = loy[i1 - 1] + ny[i1 - 1] - y0
            # y pass, in pairs of output rows: the buffered rows a pair shares, and the rest.
            y_shared = shared_taps(loy, ny, i0, i1)
            y_single = float(sum(ny[i0:i1])) - 2 * y_shared
            # items: every buffered row at every pair of columns (x), every pair of rows at every column (y)
            items = nrows * pairs + -(-(i1 - i0) // 2) * ow
            w = w.add(
                Work(
                    x_taps=nrows * single,
                    pair_taps=nrows * shared,
                    y_taps=y_single * ow,
                    y_pair_taps=y_shared * ow,
                    lsu=3 * nrows * ow,
                    int32=INT_PER_ITEM * items,
                )
            )
            i0 = i1
        return w

    def resample(r0: int, r1: int) -> Work:
        return separable_passes(r0, r1) if separable else direct(r0, r1)

    def colour(px: float, ops) -> Work:
        return Work(fp32=px * sum(OP_FP32[o] for o in ops))

    def finish(px: float) -> Work:
        f = colour(px, (["gray"] if gray else []) + (["solarize"] if solar else []))
        f.fp32 += px * OP_FP32["quantise" if out_esize == 1 else "normalise"]
        f.lsu += 3 * px
        f.hbm += 3 * px * out_esize
        return f

    blocks = []
    table_work = Work(fp32=(oh + ow) * (taps_cap or 8) * 12.0)
    if cluster is not None and ((needs_mean and not blur) or (blur and cluster[2] == 2)):
        # One resampling pass: each of the cluster's blocks keeps its band's pixels in shared memory (3
        # stores and 3 loads a pixel) while the cluster sums the mean; a blur runs from there, its rows in
        # the block, its columns through distributed shared memory (no global workspace).
        band, buf_rows, _ = cluster
        separable = tables and buf_rows > 0 and taps_product(ch, oh, cw, ow, interp) >= SEPARABLE_MIN_TAPS
        kx = 2 * blur_radius(sigma, ow) + 1 if blur else 0
        ky = 2 * blur_radius(sigma, oh) + 1 if blur else 0
        for r0 in range(0, CLUSTER_BLOCKS * band, band):
            r0, r1 = min(r0, oh), min(oh, r0 + band)
            px = (r1 - r0) * ow
            w = table_work.add(resample(r0, r1) if px else Work()).add(colour(px, active + ["gray"]))
            w.lsu += 6 * px
            w.hbm += 3.0 * cw * ch * (r1 - r0) / oh
            if blur:
                w.lsu += px * 3 * (kx + 1 + 1 + ky)  # row taps, write, write back, column taps (remote)
                w.fp32 += px * 3 * (kx + ky)
                w.int32 += px * (3 * 4 * kx + 8 * ky)  # reflect indices; the remote row's address
                w.xu += kx + ky
            blocks.append(w.add(finish(px)))
        return blocks, False, True
    if whole:
        npix = oh * ow
        w = table_work.add(resample(0, oh))
        w = w.add(colour(npix, active))
        if needs_mean:
            split = active.index("contrast")
            w = w.add(resample(0, oh)).add(colour(npix, active[:split] + ["gray"]))
        w.hbm += 3.0 * ch * cw  # the crop's source bytes, read once (neighbours hit L1 / L2)
        if blur:
            kx, ky = 2 * blur_radius(sigma, ow) + 1, 2 * blur_radius(sigma, oh) + 1
            w.lsu += npix * 3 * (1 + 1 + kx + 1 + ky)  # write, read + taps, write, column taps
            w.fp32 += npix * 3 * (kx + ky)
            w.int32 += npix * 3 * 4 * (kx + ky)  # reflect-padding indices
            w.xu += kx + ky
            w.ws_bytes += npix * 3 * 4 * 4  # two float images written and read back
        blocks.append(w.add(finish(npix)))
        return blocks, False, False
    for r0 in range(0, oh, rows):
        r1 = min(oh, r0 + rows)
        px = (r1 - r0) * ow
        w = table_work.add(resample(r0, r1)).add(colour(px, active))
        w.hbm += 3.0 * cw * ch * (r1 - r0) / oh
        blocks.append(w.add(finish(px)))
    return blocks, rows < oh, False


def schedule(times: list[float], slots: int) -> float:
    """Makespan of blocks handed out in launch order to the first free of `slots` resident slots."""
    import heapq

    free = [0.0] * slots
    heapq.heapify(free)
    end = 0.0
    for t in times:
        start = heapq.heappop(free)
        heapq.heappush(free, start + t)
        end = max(end, start + t)
    return end


def predict(
    sizes,
    params,
    out_size=(224, 224),
    out_dtype=torch.float32,
    interpolation="bilinear",
    hw: Hardware = H100,
    rates: Rates = RATES,
    bands: bool = True,
    separable: bool = True,
    clusters: bool = True,
) -> dict:
    """Modelled kernel time (low, high) of fused_augment on the GPU and the bandwidth floor.

    sizes: [N, 2] (H, W) of the source images; params: their AugmentParams (CPU tensors). bands /
    separable / clusters: the kernel's band split of small batches, its separable passes and the cluster
    launch for contrast (False: the designs they replaced, one block per output, nx x ny sums, contrast
    resampled twice). The two launches run side by side (the cluster one on a forked stream); the cluster
    launch's co-scheduling (8 free SMs in one GPC a cluster) is not modelled.
    """
    oh, ow = out_size
    esize = torch.empty(0, dtype=out_dtype).element_size()
    sizes = torch.as_tensor(sizes).reshape(-1, 2).tolist()
    m = params.boxes.shape[0]
    source = params.source.tolist() if params.source is not None else list(range(m))
    boxes, fac, order = params.boxes.tolist(), params.factors().tolist(), params.order.tolist()
    gray, solar = params.grayscale.tolist(), params.solarize.tolist()
    sigma = params.blur_sigma.tolist() if params.blur_sigma is not None else [0.0] * m
    slots = hw.sms * BLOCKS_PER_SM
    rows = band_rows(m, oh, ow, slots) if bands else oh
    cap = table_taps(oh, ow)
    brows = buffer_rows(oh, ow) if separable else 0
    cplan = cluster_plan(oh, ow, separable) if clusters else None
    blocks, cblocks, split = [], [], 0
    for i in range(m):
        b, s, in_cluster = output_blocks(
            sizes[source[i]],
            boxes[i],
            fac[i],
            order[i],
            gray[i],
            solar[i],
            sigma[i],
            oh,
            ow,
            interpolation,
            esize,
            rows,
            cap,
            brows,
            cplan,
        )
        if in_cluster:
            cblocks += b
        else:
            blocks += b
        split += s
    ws_live = slots * (6 * oh * ow * 4)
    ws_in_l2 = ws_live <= hw.l2_bytes * hw.l2_usable
    # The two launches run side by side (the cluster launch on a forked stream): blocks of both in one
    # list, the plain launch's first.
    t = {
        k: schedule([b.time(rates, hw, ws_in_l2, k == "high") for b in blocks + cblocks], slots)
        for k in ("low", "high")
    }
    in_bytes = sum(3 * h * w for h, w in sizes)
    out_bytes = m * 3 * oh * ow * esize
    floor = (in_bytes + out_bytes) / hw.hbm
    total = Work()
    for b in blocks + cblocks:
        total = total.add(b)
    return dict(
        time_s=(t["low"], t["high"]),
        floor_s=floor,
        fraction_of_floor=(floor / t["high"], floor / t["low"]),
        blocks=len(blocks) + len(cblocks),
        cluster_outputs=len(cblocks) // CLUSTER_BLOCKS,
        split_outputs=split,
        band_rows=rows,
        buffer_rows=brows,
        work=total,
        ws_in_l2=ws_in_l2,
    )


def count_torchvision_ops(images, params, size: int) -> float:
    """aten ops per sample of torchvision v2 applied per sample (bench_augment.torchvision_v2_chain),
    counted on CPU tensors, views excluded (they launch no kernel)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import tests._torchvision_shim  # noqa: F401  (CPU torch beside the CUDA torchvision wheel) isort: skip
    from benchmarks.bench_augment import torchvision_v2_chain

    views = {
        "view",
        "unbind",
        "unsqueeze",
        "unsqueeze_",
        "slice",
        "permute",
        "lift_fresh",
        "alias",
        "expand",
        "select",
        "as_strided",
        "squeeze",
        "detach",
        "t",
        "transpose",
        "_unsafe_view",
    }

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ not in views:
                self.n += 1
            return func(*args, **(kwargs or {}))

    with Count() as c:
        torchvision_v2_chain(images, params, size)
    return c.n / len(images)


def scenarios():
    """(label, sizes, sampling keywords, interpolation, out dtype, measured ms or None)."""
    g = torch.Generator().manual_seed(0)
    mixed = torch.randint(128, 385, (256, 2), generator=g).tolist()
    photos = [[375, 500]] * 256
    strong = dict(scale=(0.08, 1.0), blur_p=0.5)
    open_clip = dict(scale=(0.9, 1.0), hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    return [
        (
            "bench: 256 x 256x256, default sampling, bilinear, fp32",
            [[256, 256]] * 256,
            {},
            "bilinear",
            torch.float32,
            0.6416,
        ),
        (
            "bench: 256 x 256x256, default sampling, bilinear, bf16",
            [[256, 256]] * 256,
            {},
            "bilinear",
            torch.bfloat16,
            0.6167,
        ),
        (
            "bench: 256 mixed 128-384, default sampling, bilinear, fp32",
            mixed,
            {},
            "bilinear",
            torch.float32,
            0.6880,
        ),
        (
            "open_clip: 256 x 500x375, RRC (0.9, 1) bicubic, fp32",
            photos,
            open_clip,
            "bicubic",
            torch.float32,
            None,
        ),
        (
            "open_clip: 256 x 500x375, RRC (0.9, 1) bicubic, uint8",
            photos,
            open_clip,
            "bicubic",
            torch.uint8,
            None,
        ),
        (
            "open_clip: 32 x 500x375, RRC (0.9, 1) bicubic, fp32",
            photos[:32],
            open_clip,
            "bicubic",
            torch.float32,
            None,
        ),
        (
            "strong view: 256 x 500x375, bicubic, jitter, gray, blur 0.5, fp32",
            photos,
            strong,
            "bicubic",
            torch.float32,
            None,
        ),
    ]


def _ms(x) -> str:
    return f"{x * 1e3:.3f}"


def table(hw: Hardware = H100, count_ops: bool = True) -> str:
    from vlkernels.augment import sample_augment_params

    lines = [
        f"# Cost model of the fused augmentation's CUDA kernel on an {hw.name}: MODELLED, not measured",
        "",
        "Generated by `python -m benchmarks.augment_cost_model` (benchmarks/augment_cost_model.py), "
        "224 x 224 "
        "output, parameters sampled with a fixed seed. Kernel: low = the busiest pipe of each block, or its "
        "instruction issue, or its bytes (every term overlapped), high = the sum of the terms; the "
        "resampling loops' instructions per tap counted in the kernel's SASS (nvcc for sm_90), the rest "
        "estimated; blocks scheduled in launch order onto "
        f"{hw.sms} SMs x {BLOCKS_PER_SM} resident block. Floor: every input byte read once and the output "
        f"written once at {hw.hbm / 1e12:.2f} TB/s. Baseline: torchvision v2 per sample on the GPU, its aten "
        f"ops per sample counted, {PER_OP_S[0] * 1e6:.0f}-{PER_OP_S[1] * 1e6:.0f} us each (host-bound). "
        "Targets (issue 17): >= 20x the baseline, >= 50% of the floor.",
        "",
        "| scenario | outputs / blocks (split) | kernel ms | floor ms | % of floor | before: direct sums, "
        "one block per output, ms | measured ms | tv2 ops / sample | tv2 ms | x tv2 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, sizes, kw, interp, dtype, measured in scenarios():
        gen = torch.Generator().manual_seed(1)
        p = sample_augment_params(torch.tensor(sizes), generator=gen, **kw)
        r = predict(sizes, p, out_dtype=dtype, interpolation=interp, hw=hw)
        if label.startswith("open_clip: 256") and dtype == torch.float32:
            w = r["work"]
            x_instr = w.x_taps * X_TAP["issue"] + w.pair_taps * PAIR_TAP["issue"]
            x_issue = x_instr / (RATES.issue * hw.clock_hz * hw.sms)
            per_tap = x_instr / (w.x_taps + 2 * w.pair_taps)
            loops = sum(c["issue"] * getattr(w, f) for f, c in LOOPS) / w.pipes()["issue"]
            bound = (r["floor_s"], x_issue, loops, per_tap)
        before = predict(
            sizes,
            p,
            out_dtype=dtype,
            interpolation=interp,
            hw=hw,
            separable=False,
            bands=False,
            clusters=False,
        )
        lo, hi = r["time_s"]
        m = len(sizes)
        if count_ops:
            k = min(8, m)
            imgs = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=gen) for h, w in sizes[:k]]
            sub = type(p)(**{f: (v[:k] if v is not None else None) for f, v in vars(p).items()})
            ops = count_torchvision_ops(imgs, sub, 224)
            tv = (ops * PER_OP_S[0] * m, ops * PER_OP_S[1] * m)
            ops_s, tv_s, x_s = (
                f"{ops:.0f}",
                f"{_ms(tv[0])}-{_ms(tv[1])}",
                f"{tv[0] / hi:,.0f}-{tv[1] / lo:,.0f}",
            )
        else:
            ops_s = tv_s = x_s = "-"
        frac = f"{100 * r['fraction_of_floor'][0]:.0f}-{100 * r['fraction_of_floor'][1]:.0f}"
        meas = f"{measured:.3f} (older kernel)" if measured else "-"
        lines.append(
            f"| {label} | {m} / {r['blocks']} ({r['split_outputs']}) | {_ms(lo)}-{_ms(hi)} | "
            f"{_ms(r['floor_s'])} | {frac} | {_ms(before['time_s'][0])}-{_ms(before['time_s'][1])} | "
            f"{meas} | {ops_s} | {tv_s} | {x_s} |"
        )
    lines += [
        "",
        "What the model says (modelled): the designs of the 'before' column's kernel (direct ny x nx sums, "
        "one block per output, contrast resampled twice, blur through global memory) against today's "
        "(separable passes for downscales, the band split of small batches, the cluster launch for "
        "contrast and blur); both columns with today's instructions per tap. Fractions above 100% are the "
        "floor's definition (every input byte read once; the kernel reads only the crops). For float32 "
        "output of large photos instruction issue, not bytes, bounds the kernel: at open_clip's 256 x "
        f"500x375 the tap loops issue {100 * bound[2]:.0f}% of the instructions, and the x pass alone "
        f"({bound[3]:.1f} instructions a tap: {X_TAP['issue']:g} for a column's tap alone, three byte "
        "loads, a weight, three exact u8_to_float, three FMAs and the address arithmetic; "
        f"{PAIR_TAP['issue']:g} for a position two neighbouring columns share, loaded and converted once; "
        f"sm_90 SASS) takes {_ms(bound[1])} ms at 128 a clock per SM against a floor of "
        f"{_ms(bound[0])} ms. Only the low end (every pipe overlapped) reaches 50% there; the whole range "
        "would need fewer instructions a tap (word loads of four bytes, or the separable passes as banded "
        "tensor-core products), not a tuning of these loops. "
        "The baseline's ratio holds by an order of magnitude or more everywhere but the "
        "crop-only recipe, where torchvision does 5 ops a sample.",
        "",
        "Measured (benchmarks/results/2026-11-25-h100/augment.json: 256 images, the op alone, do_bench) on "
        "the "
        "kernel of that day (one block per image, 8-tap tables, taps in double beyond them): 0.64 ms, "
        "10.6% of the floor at the measured copy bandwidth, 548x torchvision v2. The model's 'before' "
        "column (those designs, with today's tap loops; that kernel's loops also converted each byte on "
        "the 16-a-clock XU pipe) is 2-4x below it: the kernel was latency- or occupancy-bound beyond what "
        "the pipe counts capture (one 512-thread block per SM, dependent gathers). A profile on a GPU "
        "(ncu: stall reasons, achieved occupancy) and the bench's cuda / cuda_direct rows are owed before "
        "this model is trusted for the kernel's absolute time.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Analytic H100 cost model of the augmentation kernel (modelled)")
    ap.add_argument("--out", default=os.path.join(RESULTS, "h100_augment_model.md"), help="'' for none")
    args = ap.parse_args(argv)
    write_report(table(), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
