"""Analytic cost model of the Triton kernels on an H100: MODELLED, not measured.

Every loss's backward runs on the G-chunk engine (ops/gchunk_triton.py): per chunk of rows a weights
kernel recomputes the score tiles and writes G (W) in the features' dtype, two tiled GEMMs consume it;
every tiled launch reads its BLOCK_M rows and BLOCK_N columns at full depth from L2, G chunks round-trip
through HBM. No float atomics anywhere (one path per loss: ``deterministic`` changes nothing). From the
launchers' real tile configs and plans evaluated with the interpreter off, for (op, B, D, dtype,
teacher, workspace):

- The contrastive loss (``contrastive_v2_launches``): the one-pass forward, then ``_gchunk_backward``
  (dI stored in the features' dtype, the covered text columns accumulated in dT itself, with an int8
  remainder for 16-bit features, a column pass for the rest).
- The soft-target loss (``soft_target_launches``): the statistics kernel (one pass over S, and S' for a
  separate teacher: rows online, columns as per-program partials), then W chunks whose GEMMs write fp32
  products (the hard targets' algebra is O(B D) torch).
- Per launch: FLOPs of the dots (2 M N D per product) by the unit that runs them (bf16/fp16 tensor cores,
  TF32 tensor cores, or CUDA-core FFMA for fp32 inputs under torch's default "highest" precision: IEEE
  dots); exponentials (MUFU ex2: one per element of each exp2 tile, one per row and column tile for an
  online rescale); bytes from L2 into the SMs (each program re-reads its operands per tile: the column
  operand always, its own row block too when D is walked in chunks); bytes from HBM (inputs, outputs, G
  chunks, the partner operand per chunk, the column operand per wave of programs when it does not fit
  in the usable part of L2 (80 % of 50 MB), the accumulator's read-modify-write per chunk when it does
  not fit: 4 bytes per element for fp32, 3 for a 16-bit dT and its int8 remainder, each way).

The sigmoid (SigLIP) loss (op "sigmoid", ``vlkernels/ops/sigmoid_triton.py``, ``sigmoid_launches``): the
forward is one ``_loss_kernel`` launch (``loss_config``: the contrastive forward's tiles, 128 x 256 on
sm_90 through TMA descriptors; row sums of softplus(-y z): 2 B^2 D FLOPs, one exp2 per element, the
softplus's log2 as libdevice's polynomial on the FMA pipe); the backward runs on the same G-chunk engine
as the contrastive loss (``_gchunk_backward``) with the sigmoid's weights kernel (``weights_config``: 256
x 128 through TMA descriptors, the epilogue in eight parts; G = sigmoid(z) - [i == j]: one exp2 and one
division per element, two fp32 statistics per row and 16 columns). Its elementwise fp32 work (select,
compare, the log2 polynomial; static PTX counts per element from the AOT compile, ``ALU_PER_ELEMENT``) is
a term of its own on the FP32 pipe (not modelled for the other ops).

Time per launch = max of the terms (perfect overlap) at the optimistic rates (low) and at the
pessimistic ones (high, where the dots and the exponentials do not overlap either). A call's time is the
sum over its launches. The FLOP floor is the minimum work of the loss at the dense tensor-core rate:
8 B^2 D (forward 2 B^2 D in one pass, backward 6 B^2 D), plus 4 B^2 D' for a separate teacher (S' once
in the forward, once in the backward).

    from benchmarks.cost_model import predict
    predict("contrastive", 65536, 1024, "bf16")["time_s"]        # (low, high)

CLI: ``python -m benchmarks.cost_model`` prints the table and writes
benchmarks/results/model/h100_cost_model.md.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "model")


@dataclass(frozen=True)
class Hardware:
    """H100 SXM5 (dense rates, no sparsity)."""

    name: str = "H100 SXM5 80GB"
    sms: int = 132
    clock_hz: float = 1.83e9  # boost clock
    tc_bf16: float = 790e12  # bf16/fp16 tensor-core FLOP/s, dense
    tc_tf32: float = 395e12  # tf32 tensor-core FLOP/s, dense
    ffma_fp32: float = 60e12  # fp32 FFMA FLOP/s on CUDA cores (67 peak)
    mufu_per_clk_sm: int = 16  # ex2 per clock per SM
    hbm: float = 3.35e12  # bytes/s
    l2_bytes: float = 50e6
    l2_usable: float = 0.8  # fraction of L2 a working set may occupy and still be modelled as L2-resident
    l2_to_sm: tuple = (10e12, 5.5e12)  # bytes/s into the SMs, (optimistic, pessimistic): an assumption
    atomics_fp32: tuple = (3e12, 1e12)  # bytes/s of fp32 red.add, (optimistic, pessimistic): an assumption
    ctas_per_sm: int = 1  # 8 warps at 140-255 registers (benchmarks/results/model/aot_sm90.md)
    fp32_lanes_per_clk_sm: int = 128  # FP32 pipe: instructions per clock per SM
    launch_s: tuple = (2e-6, 5e-6)  # a kernel launch's fixed cost, (optimistic, pessimistic): an assumption

    @property
    def tc_tf32x3(self) -> float:
        """fp32 dots as three TF32 products (Triton's "tf32x3"): the TF32 rate over three (an assumption:
        the operands' splitting, an FADD and a conversion per loaded element, not counted)."""
        return self.tc_tf32 / 3

    @property
    def tc_bf16x6(self) -> float:
        """fp32 dots as six bf16 products of three parts each (Triton's "bf16x6"): the bf16 rate over six."""
        return self.tc_bf16 / 6

    @property
    def exp_rate(self) -> float:
        return self.mufu_per_clk_sm * self.sms * self.clock_hz

    @property
    def alu_rate(self) -> float:
        return self.fp32_lanes_per_clk_sm * self.sms * self.clock_hz


H100 = Hardware()

# dtype label -> (element bytes, torch dtype name, unit of its dots)
DTYPES = {
    "bf16": (2, "bfloat16", "tc_bf16"),
    "fp16": (2, "float16", "tc_bf16"),
    "tf32": (4, "float32", "tc_tf32"),  # fp32 inputs, torch.set_float32_matmul_precision("high")
    "fp32": (4, "float32", "ffma_fp32"),  # fp32 inputs, torch's default precision: IEEE dots
    # fp32 inputs under the default precision with VLKERNELS_FP32_DOTS (experimental candidates)
    "tf32x3": (4, "float32", "tc_tf32x3"),
    "bf16x6": (4, "float32", "tc_bf16x6"),
}
# fp32 labels -> (torch.set_float32_matmul_precision, VLKERNELS_FP32_DOTS) under which the kernels run
FP32_SETTINGS = {
    "fp32": ("highest", "ieee"),
    "tf32": ("high", "ieee"),
    "tf32x3": ("highest", "tf32x3"),
    "bf16x6": ("highest", "bf16x6"),
}
OPS = ("contrastive", "soft_target", "sigmoid")
# fp32 arithmetic / compare / select PTX instructions (add, sub, mul, fma, abs, neg, max, min, selp, setp on
# .f32 / .b32) per element of S of the sigmoid kernels: static counts in the compiled PTX / elements per
# thread, rounded up, the larger of D = 64 and 1024 (triton 3.9, sm_90, bf16; benchmarks/aot.py compiles
# them): the forward's softplus (35.8-36.5; log2 is libdevice's polynomial: 12 FMA), the weights kernel's
# sigmoid, G, the diagonal and the two partial sums (13.3-14.1). MUFU (ex2, the division's rcp) counted
# apart; conversions, loads and stores not counted. The one-pass forwards likewise: the contrastive forward's
# row and column LSE terms (18.3-18.9), the soft target's statistics with the self teacher (41.5-42.1: the
# soft gaps' rest and weighted distances beside the LSEs and the weighted dot products; 22.4 without them)
# and with a separate teacher (72.8 per element of S, its teacher tile's work included; 42.2 without; 61.6
# before the teacher's rests, whose row and column sums below the max added 11.2: the same count before and
# after, 58.9 -> 70.1 at D = 1024, a bf16 teacher of width 768). The
# backward's weights kernels are not counted (the same structure in the contrastive and soft-target
# losses).
ALU_PER_ELEMENT = {"sigmoid_loss": 37, "sigmoid_weights": 15, "fwd": 19, "stats": 43, "stats_teacher": 73}


@contextlib.contextmanager
def _compiled_configs(*labels):
    """The launchers' GPU configs for operands of these dtype labels (a student, a teacher): ``config()``
    returns small interpreter blocks under TRITON_INTERPRET=1, so that is switched off meanwhile, and
    torch's fp32 matmul precision and VLKERNELS_FP32_DOTS are those the labels run under (an IEEE fp32
    side makes it "highest", as a user's setting would for both; bf16 / fp16 follow the other side)."""
    import torch

    fp32 = [FP32_SETTINGS[label] for label in labels if label in FP32_SETTINGS]
    precision = "highest" if any(p == "highest" for p, _ in fp32) or not fp32 else "high"
    dots = next((d for _, d in fp32 if d != "ieee"), "ieee")
    saved = {k: os.environ.pop(k, None) for k in ("TRITON_INTERPRET", "VLKERNELS_FP32_DOTS")}
    old_precision = torch.get_float32_matmul_precision()
    os.environ["VLKERNELS_FP32_DOTS"] = dots
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old_precision)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tile_config(D: int, dtype: str, kernel: str) -> dict:
    """The launch config the kernels use on a GPU ("lse" for the LSE/stats passes, "grad" for the
    backward), from vlkernels.ops.triton_utils.config."""
    import torch

    from vlkernels.ops.triton_utils import config

    with _compiled_configs(dtype):
        return config(D, getattr(torch, DTYPES[dtype][1]), kernel)


@dataclass
class Launch:
    kernel: str
    M: int
    N: int
    config: dict
    flops: dict  # unit -> FLOPs
    exps: float  # MUFU operations (exp2; for the sigmoid kernels also the fp32 division's rcp)
    l2_bytes: float
    atomic_bytes: float
    hbm_bytes: float
    detail: dict  # the L2 / HBM terms by name
    alu: float = 0.0  # fp32-pipe elementwise instructions (the sigmoid kernels and the one-pass forwards)
    count: int = 1  # kernel launches the aggregate stands for (each costs ``Hardware.launch_s``)
    filled: float = 1.0  # the FLOP-weighted fraction of the SMs its programs keep busy over their waves


def _stats_launch(M, N, D, dtype, teacher, hw: Hardware, cfg: dict) -> Launch:
    """The soft-target statistics kernel on Q [M, D], K [N, D] (config ``cfg``), one pass: every program
    walks all column tiles with the online row statistics (student LSE, teacher LSE, weighted sums, the
    soft gap's rest) and writes its column partials (the student's max and rest, the teacher's max, sum
    and rest, the two weighted sums: 4 floats per column for the self teacher, 7 with a separate one),
    merged by a small kernel (read once); teacher None or (D', dtype label)."""
    e, _, unit = DTYPES[dtype]
    bm, bn, bd = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"]
    single = D <= bd
    P, C = math.ceil(M / bm), math.ceil(N / bn)
    waves = math.ceil(P / (hw.sms * hw.ctas_per_sm))
    flops = {unit: 2.0 * M * N * D}
    l2 = {}
    # The score tiles: the column operand per program, the row block once (single-D) or per column tile.
    l2["K tiles"] = P * N * D * e
    l2["Q tiles"] = M * D * e if single else M * C * D * e
    # exp2 per element for the rows and for the columns, the online rescale per row and column tile (per
    # part of it: the self teacher's wide tiles, ``PARTS``)
    exps = 2 * M * N + M * C * cfg.get("PARTS", 1)
    parts = 4 if teacher is None else 7
    # outputs: the LSEs in float64 (two-part; a separate teacher's too), the weighted sums, soft gaps and
    # rests fp32 (a separate teacher's rests too)
    outputs = (M + N) * (20 if teacher is None else 32)
    hbm = {"inputs": (M + N) * D * e, "outputs": outputs, "column partials": 2 * 4.0 * parts * P * N}
    column_bytes = N * D * e
    if teacher is not None:
        dt, tdtype = teacher
        te, _, tunit = DTYPES[tdtype]
        flops[tunit] = flops.get(tunit, 0.0) + 2.0 * M * N * dt
        l2["teacher tiles"] = P * N * dt * te + M * C * dt * te  # dot_tile: always chunked
        hbm["inputs"] += (M + N) * dt * te
        column_bytes += N * dt * te
        exps += 2 * M * N + M * C
    if column_bytes > hw.l2_usable * hw.l2_bytes:
        hbm["column operand per wave"] = (waves - 1) * column_bytes
    return Launch(
        kernel="stats",
        M=M,
        N=N,
        config=dict(cfg, SINGLE_D=single, programs=P, column_tiles=C, waves=waves),
        flops=flops,
        exps=float(exps),
        l2_bytes=float(sum(l2.values())),
        atomic_bytes=0.0,
        hbm_bytes=float(sum(hbm.values())),
        detail=dict(l2=l2, hbm=hbm),
        alu=float(ALU_PER_ELEMENT["stats" if teacher is None else "stats_teacher"]) * M * N,
    )


def _diagonal_launch(M, N, D, dtype, hw: Hardware, cfg: dict, kernel: str = "diag") -> Launch:
    """``_diagonal_kernel`` (``contrastive_triton.diagonal``) after a walk with the tile config ``cfg``: each
    program of BLOCK_M rows recomputes the score tiles its diagonal crosses (single-process, the diagonal
    from column 0: one tile where BLOCK_N is a multiple of BLOCK_M, BLOCK_M / BLOCK_N where BLOCK_N is
    smaller) and stores the diagonal scores (fp32). Also the soft target's ``_teacher_diagonal_kernel``
    (``kernel`` "st_tdiag": the teacher's D', dtype and D chunk)."""
    from vlkernels.ops import gchunk_triton as gchunk

    e, _, unit = DTYPES[dtype]
    bm, bn, bd = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"]
    P, tiles = math.ceil(M / bm), max(1, bm // bn)
    l2 = {"K tiles": P * tiles * bn * D * e, "Q tiles": M * D * e * (1 if D <= bd else tiles)}
    return Launch(
        kernel=kernel,
        M=M,
        N=N,
        config=dict(cfg, SINGLE_D=D <= bd, programs=P, tiles_per_program=tiles),
        flops={unit: 2.0 * P * tiles * bm * bn * D},
        exps=0.0,
        l2_bytes=float(sum(l2.values())),
        atomic_bytes=0.0,
        hbm_bytes=4.0 * M,
        detail=dict(l2=l2, hbm={"diagonal scores": 4.0 * M}),
        filled=gchunk._filled(P, hw.sms * hw.ctas_per_sm),
    )


def _sigmoid_forward(M, N, D, dtype, hw: Hardware) -> Launch:
    """The sigmoid forward ``_loss_kernel`` on Q [M, D], K [N, D] (``loss_config``): one program per BLOCK_M
    rows walks all column tiles (the row block re-read per column tile when D is walked in chunks); one
    exp2 per element (MUFU); the softplus's elementwise work on the FP32 pipe (``ALU_PER_ELEMENT``). FLOPs
    are the useful ones (masked padding not counted)."""
    import torch

    from vlkernels.ops.sigmoid_triton import loss_config

    with _compiled_configs(dtype):
        cfg = loss_config(D, getattr(torch, DTYPES[dtype][1]))
    e, _, unit = DTYPES[dtype]
    bm, bn, bd = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"]
    single = D <= bd
    P, C = math.ceil(M / bm), math.ceil(N / bn)
    waves = math.ceil(P / (hw.sms * hw.ctas_per_sm))
    l2 = {"K tiles": P * N * D * e, "Q tiles": M * D * e if single else M * C * D * e}
    hbm = {"inputs": (M + N) * D * e, "row sums": M * 4}
    column_bytes = N * D * e
    if column_bytes > hw.l2_usable * hw.l2_bytes:
        hbm["column operand per wave"] = (waves - 1) * column_bytes
    return Launch(
        kernel="sigmoid_loss",
        M=M,
        N=N,
        config=dict(cfg, SINGLE_D=single, programs=P, column_tiles=C, waves=waves),
        flops={unit: 2.0 * M * N * D},
        exps=1.0 * M * N,
        l2_bytes=float(sum(l2.values())),
        atomic_bytes=0.0,
        hbm_bytes=float(sum(hbm.values())),
        detail=dict(l2=l2, hbm=hbm),
        alu=float(ALU_PER_ELEMENT["sigmoid_loss"]) * M * N,
    )


def _sigmoid_weights_config(D, dtype) -> dict:
    """The sigmoid weights kernel's launch config on a GPU (``weights_config``; TMA-ready features)."""
    import torch

    from vlkernels.ops.sigmoid_triton import weights_config

    with _compiled_configs(dtype):
        return weights_config(D, getattr(torch, DTYPES[dtype][1]))


def sigmoid_launches(B, D, dtype="bf16", workspace=256 * 2**20, hw=H100) -> tuple[list, int, dict]:
    """(launches, how many are the forward, the backward plan) of one single-process sigmoid forward +
    backward (``TritonSigmoidBackend``): the forward, then ``_gchunk_backward`` with the weights kernel
    (G = sigmoid(z) - [i == j]: one exp2 and one division per element, two fp32 statistics per row and
    column block, ``ALU_PER_ELEMENT["sigmoid_weights"]``)."""
    fwd = _sigmoid_forward(B, B, D, dtype, hw)
    bwd, plan = _gchunk_backward(
        B,
        D,
        dtype,
        workspace,
        hw,
        stats=2,
        mufu=2.0,
        alu=ALU_PER_ELEMENT["sigmoid_weights"],
        partials=2,
        wcfg=_sigmoid_weights_config(D, dtype),  # its own G kernel's
    )
    return [fwd] + bwd, 1, plan


# ----------------------------------------------------------------------------------------------------
# The contrastive v2 kernels (vlkernels/ops/contrastive_triton.py)


def _gemm(kernel, M, N, K, cfg, e, unit, hbm: dict, hw: Hardware, exps=0.0) -> Launch:
    """A tiled product [M, K] x [K, N] (the G kernel's scores or a GEMM): every program reads its BLOCK_M
    rows of A and BLOCK_N columns of B at full K from L2; ``hbm`` the launch's HBM terms."""
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    P = math.ceil(M / bm) * math.ceil(N / bn)
    l2 = {"A tiles": math.ceil(N / bn) * M * K * e, "B tiles": math.ceil(M / bm) * N * K * e}
    return Launch(
        kernel=kernel,
        M=M,
        N=N,
        config=dict(cfg, programs=P, waves=math.ceil(P / (hw.sms * hw.ctas_per_sm)), K=K),
        flops={unit: 2.0 * M * N * K},
        exps=float(exps),
        l2_bytes=float(sum(l2.values())),
        atomic_bytes=0.0,
        hbm_bytes=float(sum(hbm.values())),
        detail=dict(l2=l2, hbm=hbm),
    )


def _v2_configs(D: int, dtype: str) -> tuple[dict, dict, dict, dict]:
    """(forward, weights, GEMM storing, GEMM accumulating in fp32) launch configs on a GPU, as the v2
    launchers pick them (fp32 under "highest" -> IEEE dots, "tf32" under "high")."""
    import torch

    from vlkernels.ops.triton_utils import matmul_config

    tdtype = getattr(torch, DTYPES[dtype][1])
    fcfg = tile_config(D, dtype, "fwd_wide")
    wcfg = tile_config(D, dtype, "weights_wide")
    with _compiled_configs(dtype):
        store = matmul_config(tdtype, D % 16 == 0, False, D)
        acc_cfg = matmul_config(tdtype, D % 16 == 0, True, D, tdtype != torch.float32)
    return fcfg, wcfg, store, acc_cfg


def _filled_mean(parts) -> float:
    """The FLOP-weighted fraction of the SMs kept busy over launches given as (FLOPs, filled, count)."""
    flops = sum(f * c for f, _, c in parts)
    return flops / sum(f / fl * c for f, fl, c in parts) if flops else 1.0


def _gchunk_backward(
    B,
    D,
    dtype,
    workspace,
    hw: Hardware,
    stats: int,
    mufu: float,
    alu=0.0,
    partials=0,
    wcfg=None,
    teacher=None,
):
    """(launches, plan) of the G-chunk backward (ops/gchunk_triton.py) on I, T [B, D] (``backward_plan``
    with ``stats`` statistics): per chunk of rows and slab of columns the weights kernel (``mufu`` MUFU
    and ``alu`` fp32-pipe instructions per element of G; ``partials`` fp32 partial row sums per row and
    column block, written, and summed in the row pass) and dI = G @ T (split along K when its tiles do not
    fill the SMs; over several slabs the later ones accumulate in an fp32 [chunk, D] buffer: its reads and
    writes cross L2, and HBM when it does not fit the usable L2); the accumulator dT[covered] += G.T @ I
    per chunk and slab (in dT: fp32, or dT and an int8 remainder: 4 or 3 bytes per element); the column
    pass (weights + GEMM) for the columns the workspace leaves. Each pass as one aggregate of its launches
    (same tiles; ``count`` launches at the FLOP-weighted fraction ``filled`` of the SMs their programs
    keep busy): the partner operand streamed from HBM once per chunk, every G chunk written and read back
    (not assumed L2-resident); the accumulator's read-modify-write per chunk is HBM traffic when it
    exceeds the usable L2. ``wcfg``: the weights kernel's config (default the contrastive one);
    ``teacher`` (D', dtype label): its tiles recomputed in every weights launch (2 rows x B x D' more
    FLOPs, its rows and columns read)."""
    from vlkernels.ops import gchunk_triton as gchunk
    from vlkernels.ops.triton_utils import partial_cols, split_k, walk_filled, walk_groups

    e, _, unit = DTYPES[dtype]
    _, default_wcfg, store, acc_cfg = _v2_configs(D, dtype)
    wcfg = wcfg or default_wcfg
    bm, bn = wcfg["BLOCK_M"], wcfg["BLOCK_N"]
    # the partials' column block: a tile's epilogue in parts stores each part's (the wide G kernel)
    plan = gchunk.backward_plan(B, B, D, e, True, workspace, (bm, bn, partial_cols(wcfg)), stats=stats)
    ch, sl = min(plan.chunk, B), min(plan.slab, B)
    chunks = math.ceil(B / ch)
    fits = lambda nbytes: nbytes <= hw.l2_usable * hw.l2_bytes  # noqa: E731
    filled = lambda programs: gchunk._filled(programs, hw.sms * hw.ctas_per_sm)  # noqa: E731

    def weights(name, rows, n_chunks, summed):
        g_hbm = {
            "own rows": rows * D * e,
            "partner per chunk": n_chunks * B * D * e,
            "G written": rows * B * e,
        }
        if partials:
            # written; read back and summed in the row pass (the column pass does not need them)
            n_part = 4.0 * partials * rows * math.ceil(B / partial_cols(wcfg))
            g_hbm["statistics partials"] = (2 if summed else 1) * n_part
        if teacher is not None:
            dt, tlabel = teacher
            te = DTYPES[tlabel][0]
            g_hbm["teacher rows + partner per chunk"] = (1 + n_chunks) * B * dt * te
        ln = _gemm(name, rows, B, D, wcfg, e, unit, g_hbm, hw, exps=mufu * rows * B)
        ln.alu = alu * rows * B
        if teacher is not None:
            tunit = DTYPES[tlabel][2]
            ln.flops[tunit] = ln.flops.get(tunit, 0.0) + 2.0 * rows * B * dt
            t_l2 = (math.ceil(B / bn) * rows + math.ceil(rows / bm) * B) * dt * te
            ln.detail["l2"]["teacher tiles"] = t_l2
            ln.l2_bytes += t_l2
        sms = hw.sms * hw.ctas_per_sm
        # the tile walk (triton_utils.walk_grid) on tensor cores without a teacher: row blocks x programs
        # per row block; else one program per tile
        walk = dtype != "fp32" and teacher is None
        parts, programs = [], 0
        for r, rc in gchunk.pieces(rows, ch):
            for w, wc in gchunk.pieces(B, sl):
                rb, cb = math.ceil(r / bm), math.ceil(w / bn)
                groups = walk_groups(rb, cb, sms) if walk else cb
                fill = walk_filled(rb, cb, sms) if walk else filled(rb * cb)
                parts.append((2.0 * r * w * D, fill, rc * wc))
                programs += rc * wc * rb * groups
        ln.filled, ln.count = _filled_mean(parts), sum(c for *_, c in parts)
        ln.config.update(programs=programs, waves=math.ceil(programs / ln.count / sms))
        return ln

    def storing(name, rows, hbm):
        """dX = G @ Y for ``rows`` rows in chunks: split-K or slabs accumulated in fp32, as ``products``."""
        ln = _gemm(name, rows, D, B, store, e, unit, hbm, hw)
        tiles_n = math.ceil(D / store["BLOCK_N"])
        slabs = gchunk.pieces(B, sl)  # the first slab may split along K; the later ones accumulate
        parts, count = [], 0
        for r, rc in gchunk.pieces(rows, ch):
            tiles = math.ceil(r / store["BLOCK_M"]) * tiles_n
            split = split_k(r, D, sl, store, hw.sms * hw.ctas_per_sm)
            parts.append((2.0 * r * slabs[0][0] * D, filled(tiles * split), rc))
            for i, (w, wc) in enumerate(slabs):
                parts.append((2.0 * r * w * D, filled(tiles), rc * (wc - (i == 0))))
            # the slabs' launches, the partials' sum, the slabs' scaling and copy
            count += rc * (sum(wc for _, wc in slabs) + (split > 1) + 2 * (sl < B))
        if sl < B:
            # written by the first slab, then read and written by each later one
            acc = rows * D * 4.0 * (2 * math.ceil(B / sl) - 1)
            ln.detail["l2"]["fp32 row accumulator per slab"] = acc
            ln.l2_bytes += acc
            if not fits(4.0 * ch * D):
                ln.detail["hbm"]["fp32 row accumulator per slab"] = acc
                ln.hbm_bytes += acc
        ln.filled, ln.count = _filled_mean(parts), count
        return ln

    out = [weights("weights (row pass)", B, chunks, True)]
    di_hbm = {"G read": B * B * e, "T per chunk": chunks * B * D * e, "dI": B * D * e}
    out.append(storing("dI = G @ T", B, di_hbm))
    if plan.covered:
        acc_bytes = gchunk.rmw_bytes(e) / 2 * plan.covered * D  # fp32, or the (dT, int8 remainder) pair
        hbm = {"G read": B * plan.covered * e, "I rows": B * D * e, "dT written": plan.covered * D * e}
        if not fits(acc_bytes):
            hbm["accumulator read-modify-write per chunk"] = chunks * 2 * acc_bytes
        ln = _gemm("dT[covered] += G.T @ I", plan.covered, D, B, acc_cfg, e, unit, hbm, hw)
        tiles_n = math.ceil(D / acc_cfg["BLOCK_N"])
        parts = [
            (2.0 * w * r * D, filled(math.ceil(w / acc_cfg["BLOCK_M"]) * tiles_n), rc * wc)
            for r, rc in gchunk.pieces(B, ch)
            for w, wc in gchunk.pieces(plan.covered, sl)
        ]
        ln.filled, ln.count = _filled_mean(parts), sum(c for *_, c in parts)
        out.append(ln)
    rest = B - plan.covered
    if rest:
        col_chunks = math.ceil(rest / ch)
        out.append(weights("weights (column pass)", rest, col_chunks, False))
        dt_hbm = {"G read": rest * B * e, "I per chunk": col_chunks * B * D * e, "dT": rest * D * e}
        out.append(storing("dT = G @ I (column pass)", rest, dt_hbm))
    return out, dict(chunk=plan.chunk, slab=plan.slab, covered=plan.covered, workspace=plan.workspace)


def contrastive_v2_launches(B, D, dtype="bf16", workspace=256 * 2**20, hw=H100) -> tuple[list, int, dict]:
    """(launches, how many are the forward, the backward plan) of one single-process forward + backward on
    the v2 kernels, from their launchers' configs and plans (``forward_rows_per_launch``, ``backward_plan``).
    Normalised features: no column is flagged, the fallback's programs exit at once (not counted). The
    backward: ``_gchunk_backward`` (two exp2 per element of G: the row and the column softmax)."""
    from vlkernels.ops import contrastive_triton as ct

    e, _, unit = DTYPES[dtype]
    fcfg = _v2_configs(D, dtype)[0]
    out = []
    # forward: one pass; the row groups that fit the column partials in the workspace
    rows = ct.forward_rows_per_launch(B, B, fcfg["BLOCK_M"], workspace)
    bm, bn, bd = fcfg["BLOCK_M"], fcfg["BLOCK_N"], fcfg["BLOCK_D"]
    single = D <= bd
    P, C = math.ceil(B / bm), math.ceil(B / bn)
    l2 = {"K tiles": P * B * D * e, "Q tiles": B * D * e if single else B * C * D * e}
    hbm = {"inputs": 2 * B * D * e, "column partials (write + sum)": 2 * 4.0 * P * B, "row LSE": 8 * B}
    waves = math.ceil(P / (hw.sms * hw.ctas_per_sm))
    if B * D * e > hw.l2_usable * hw.l2_bytes:
        hbm["column operand per wave"] = (waves - 1) * B * D * e
    hbm["O(BD) torch ops (norms, targets)"] = 4 * B * D * e
    out.append(
        Launch(
            kernel="fwd",
            M=B,
            N=B,
            config=dict(
                fcfg, SINGLE_D=single, programs=P, column_tiles=C, waves=waves, launches=math.ceil(B / rows)
            ),
            flops={unit: 2.0 * B * B * D},
            # row and column exp2 per element, the online rescale per tile (per part of it)
            exps=2.0 * B * B + B * C * fcfg.get("PARTS", 1),
            l2_bytes=float(sum(l2.values())),
            atomic_bytes=0.0,
            hbm_bytes=float(sum(hbm.values())),
            detail=dict(l2=l2, hbm=hbm),
            alu=float(ALU_PER_ELEMENT["fwd"]) * B * B,
            count=math.ceil(B / rows),
        )
    )
    out.append(_diagonal_launch(B, B, D, dtype, hw, fcfg))
    bwd, plan = _gchunk_backward(B, D, dtype, workspace, hw, stats=1, mufu=2.0)
    return out + bwd, 2, plan


def _soft_weights_config(D, dtype, teacher) -> dict:
    """The soft-target weights / statistics kernels' configs (``soft_target_triton.tile_config``) with the
    interpreter off, for teacher None or (D', dtype label)."""
    import torch

    from vlkernels.ops import soft_target_triton as st

    tdtype = getattr(torch, DTYPES[dtype][1])
    t = None
    if teacher is not None:
        t = (torch.empty(0, teacher[0], dtype=getattr(torch, DTYPES[teacher[1]][1])),)
    with _compiled_configs(dtype, *([] if teacher is None else [teacher[1]])):
        return {k: st.tile_config(D, tdtype, t, k) for k in ("stats", "weights")}


def soft_target_launches(B, D, dtype="bf16", teacher=None, workspace=256 * 2**20, hw=H100) -> tuple:
    """The soft-target loss's launches (``TritonSoftTargetBackend``): the statistics kernel, one pass over S
    (and S' for a teacher) with the row statistics online and the column partials, then the single-process
    backward on the G-chunk engine (``_gchunk_backward``): dL/dS chunks with the hard targets folded in
    (two exp2 per element, four with a teacher, whose tiles are recomputed) and the contrastive loss's
    GEMMs (dI stored, the covered columns accumulated in dT, a column pass for the rest). ``teacher``
    None or (D', dtype label)."""

    cfgs = _soft_weights_config(D, dtype, teacher)
    out = [_stats_launch(B, B, D, dtype, teacher, hw, cfgs["stats"])]
    out.append(_diagonal_launch(B, B, D, dtype, hw, cfgs["stats"]))
    if teacher is not None:  # the teacher's own diagonal scores, on the statistics kernel's teacher tiles
        t_cfg = dict(cfgs["stats"], BLOCK_D=cfgs["stats"]["BLOCK_DT"])
        out.append(_diagonal_launch(B, B, teacher[0], teacher[1], hw, t_cfg, "st_tdiag"))
    bwd, plan = _gchunk_backward(
        B,
        D,
        dtype,
        workspace,
        hw,
        stats=1,
        mufu=2.0 if teacher is None else 4.0,
        partials=1,
        wcfg=cfgs["weights"],
        teacher=teacher,
    )
    return out + bwd, len(out), plan


def _build(op, B, D, dtype, teacher_D, teacher_dtype, hw, workspace) -> tuple[list, int, dict]:
    """(launches, how many are the forward, the backward plan) of ``op``."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}")
    if op != "soft_target" and teacher_D is not None:
        raise ValueError("a separate teacher needs op='soft_target'")
    if op == "sigmoid":
        return sigmoid_launches(B, D, dtype, workspace, hw)
    if op == "contrastive":
        return contrastive_v2_launches(B, D, dtype, workspace, hw)
    teacher = None if teacher_D is None else (teacher_D, teacher_dtype or dtype)
    return soft_target_launches(B, D, dtype, teacher, workspace, hw)


def launches(
    op,
    B,
    D,
    dtype="bf16",
    deterministic=False,
    teacher_D=None,
    teacher_dtype=None,
    hw=H100,
    workspace=256 * 2**20,
):
    """The launches of one forward + backward, as the backends issue them. Every backend has one backward
    path (no atomics): ``deterministic`` changes nothing (kept for callers)."""
    return _build(op, B, D, dtype, teacher_D, teacher_dtype, hw, workspace)[0]


def launch_time(ln: Launch, hw=H100) -> dict:
    """Seconds per term and the (low, high) range of one launch."""
    compute = sum(f / getattr(hw, unit) for unit, f in ln.flops.items()) / ln.filled
    exp = ln.exps / hw.exp_rate / ln.filled
    alu = ln.alu / hw.alu_rate / ln.filled
    hbm = ln.hbm_bytes / hw.hbm
    l2 = tuple(ln.l2_bytes / bw for bw in hw.l2_to_sm)
    atomics = tuple(ln.atomic_bytes / bw for bw in hw.atomics_fp32)
    fixed = tuple(ln.count * t for t in hw.launch_s)
    low = max(compute, exp, alu, hbm, l2[0], atomics[0]) + fixed[0]
    high = max(compute + exp + alu, hbm, l2[1], atomics[1]) + fixed[1]
    return dict(
        compute=compute, exp=exp, alu=alu, hbm=hbm, l2=l2, atomics=atomics, launches=fixed, low=low, high=high
    )


def floor_flops(B: int, D: int, teacher_D: int | None = None) -> float:
    """Minimum FLOPs of forward + backward: 8 B^2 D (+ 4 B^2 D' for a separate teacher)."""
    return 8.0 * B * B * D + (4.0 * B * B * teacher_D if teacher_D else 0.0)


def predict(
    op,
    B,
    D,
    dtype="bf16",
    deterministic=False,
    teacher_D=None,
    teacher_dtype=None,
    hw=H100,
    workspace=256 * 2**20,
) -> dict:
    """Modelled cost of one forward + backward of ``op`` ("contrastive" | "soft_target"; with teacher_D a
    separate teacher of that width, else the self teacher | "sigmoid") with the Triton kernels.

    Returns FLOPs by unit, exponentials, L2 / atomic / HBM bytes, per-phase and total (low, high) seconds,
    the FLOP floor and its time at the dense bf16 tensor-core rate, and the ratios to the floor."""
    lns, nf, plan = _build(op, B, D, dtype, teacher_D, teacher_dtype, hw, workspace)
    times = [launch_time(ln, hw) for ln in lns]
    flops: dict = {}
    for ln in lns:
        for unit, f in ln.flops.items():
            flops[unit] = flops.get(unit, 0.0) + f
    low = sum(t["low"] for t in times)
    high = sum(t["high"] for t in times)
    fl = floor_flops(B, D, teacher_D)
    floor_s = fl / hw.tc_bf16
    return dict(
        op=op,
        B=B,
        D=D,
        dtype=dtype,
        deterministic=True,
        workspace=workspace,
        plan=plan,
        teacher_D=teacher_D,
        teacher_dtype=(teacher_dtype or dtype) if teacher_D else None,
        flops=flops,
        flops_total=sum(flops.values()),
        flops_forward=sum(sum(ln.flops.values()) for ln in lns[:nf]),
        flops_backward=sum(sum(ln.flops.values()) for ln in lns[nf:]),
        exps=sum(ln.exps for ln in lns),
        alu=sum(ln.alu for ln in lns),
        l2_bytes=sum(ln.l2_bytes for ln in lns),
        atomic_bytes=sum(ln.atomic_bytes for ln in lns),
        hbm_bytes=sum(ln.hbm_bytes for ln in lns),
        forward_s=(sum(t["low"] for t in times[:nf]), sum(t["high"] for t in times[:nf])),
        backward_s=(sum(t["low"] for t in times[nf:]), sum(t["high"] for t in times[nf:])),
        time_s=(low, high),
        floor_flops=fl,
        floor_s=floor_s,
        ratio_to_floor=(low / floor_s, high / floor_s),
        launches=[dict(asdict(ln), time=t) for ln, t in zip(lns, times, strict=True)],
        hardware=asdict(hw),
    )


# ----------------------------------------------------------------------------------------------------
# Table


def _ms(t) -> str:
    return f"{t[0] * 1e3:,.1f}-{t[1] * 1e3:,.1f}"


def table(
    Bs=(16384, 65536, 262144, 1048576), Ds=(512, 1024), dtype="bf16", hw=H100, sigmoid_Ds=(256, 512, 1024)
) -> str:
    lines = [
        f"# Cost model of the Triton kernels on an {hw.name}: MODELLED, not measured",
        "",
        "Generated by `python -m benchmarks.cost_model` (benchmarks/cost_model.py) from the kernels' real "
        "tile configs and plans (`vlkernels.ops.triton_utils.config`, the backends' `tile_config` and "
        "`backward_plan`). Forward + backward of one loss call, the launches listed per section. Times are "
        "ranges: low = every term overlapped at the optimistic rates, high = at the pessimistic rates "
        "(dots and exponentials not overlapped either).",
        "",
        "Assumptions (dense rates, no sparsity): bf16/fp16 tensor cores "
        f"{hw.tc_bf16 / 1e12:.0f} TFLOP/s, TF32 {hw.tc_tf32 / 1e12:.0f} TFLOP/s, fp32 FFMA "
        f"{hw.ffma_fp32 / 1e12:.0f} TFLOP/s; HBM {hw.hbm / 1e12:.2f} TB/s; L2 {hw.l2_bytes / 1e6:.0f} MB, "
        f"L2->SM {hw.l2_to_sm[1] / 1e12:.1f}-{hw.l2_to_sm[0] / 1e12:.0f} TB/s (an assumption, stated as a "
        f"range); exponentials {hw.mufu_per_clk_sm} MUFU ex2/clk/SM x {hw.sms} SMs x "
        f"{hw.clock_hz / 1e9:.2f} GHz = {hw.exp_rate / 1e12:.2f} T/s; {hw.ctas_per_sm} resident program per "
        "SM, a launch's compute and exponentials at the fraction of the SMs its programs fill over their "
        f"waves; {hw.launch_s[0] * 1e6:.0f}-{hw.launch_s[1] * 1e6:.0f} us of fixed cost per launch (an "
        "assumption); a working set (the column operand, an accumulator) is L2-resident when it fits in "
        f"{hw.l2_usable:.0%} of L2, else it is re-streamed from HBM per wave of programs (per chunk for "
        "an accumulator). No float atomics in any kernel. Floor: 8 B^2 D FLOPs at the bf16 tensor-core "
        "rate.",
        "",
    ]
    for ws_mb in (256, 1024):
        lines += [
            f"## contrastive (v2 kernels), {dtype}, workspace {ws_mb} MiB"
            + (" (the default budget)" if ws_mb == 256 else " (VLKERNELS_WORKSPACE_MB=1024)"),
            "",
            "Launches: the one-pass forward; per chunk of G rows the G kernel and dI = G @ T, the "
            "accumulator dT[covered] += G.T @ I (in dT itself, with an int8 remainder: 1 byte per element "
            "of workspace); the column pass (G kernel + GEMM) for the uncovered columns. Deterministic by "
            "design (no float atomics). ALU: the forward's fp32-pipe elementwise instructions "
            f"({ALU_PER_ELEMENT['fwd']} per element of S, static PTX counts), one more term of the max (low) "
            "and of the sum (high); the backward's not modelled. FLOPs in units of B^2 D (floor 8).",
            "",
            "| B | D | chunk / slab / covered columns | B^2 D | TFLOP | floor ms | L2->SM GB | HBM GB | "
            "forward ms | backward ms | total ms | x floor |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for B in Bs:
            for D in Ds:
                p = predict("contrastive", B, D, dtype, hw=hw, workspace=ws_mb * 2**20)
                r, pl = p["ratio_to_floor"], p["plan"]
                lines.append(
                    f"| {B} | {D} | {pl['chunk']} / {pl['slab']} / {pl['covered']} | "
                    f"{p['flops_total'] / (B * B * D):.2f} | "
                    f"{p['flops_total'] / 1e12:,.1f} | {p['floor_s'] * 1e3:,.1f} | "
                    f"{p['l2_bytes'] / 1e9:,.0f} | {p['hbm_bytes'] / 1e9:,.1f} | {_ms(p['forward_s'])} | "
                    f"{_ms(p['backward_s'])} | "
                    f"{_ms(p['time_s'])} | {r[0]:.2f}-{r[1]:.2f} |"
                )
        lines.append("")
    lines += fp32_table(hw=hw)
    lines += [
        f"## soft_target (PSD), {dtype}, workspace 256 MiB",
        "",
        "Launches: the statistics kernel (student LSE, teacher LSE, the teacher-softmax-weighted sums, "
        "rows online and columns as per-program partials: one pass over S, and over S' for a separate "
        "teacher), then the contrastive loss's G-chunk backward with dL/dS (the hard targets folded in; "
        "dI stored, the covered columns accumulated in dT, the column pass). Self teacher: "
        "S' = S (no teacher dots); separate teacher: width D' = 768 in the student's dtype or fp32 "
        "(IEEE dots on CUDA cores, 64 x 32 tiles). ALU: the statistics' fp32-pipe instructions per "
        f"element of S ({ALU_PER_ELEMENT['stats']} with the self teacher, {ALU_PER_ELEMENT['stats_teacher']} "
        "with a separate one: the soft gaps' sums beside the LSEs', and the teacher's rests), as the "
        "contrastive forward's; with a separate teacher also its diagonal scores' launch. Ratio: "
        "to the contrastive loss at the same shape (the issue's target for the self teacher: at most "
        "1.15x).",
        "",
        "| B | D | teacher | TFLOP (tensor core) | TFLOP (FFMA) | floor ms | L2->SM GB | HBM GB | "
        "statistics ms | backward ms | total ms | x floor | x contrastive |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for B in Bs[:3]:
        for D in Ds:
            c = predict("contrastive", B, D, dtype, hw=hw)
            for t in (None, dtype, "fp32"):
                kw = {} if t is None else dict(teacher_D=768, teacher_dtype=t)
                p = predict("soft_target", B, D, dtype, hw=hw, **kw)
                tc = p["flops"].get("tc_bf16", 0) + p["flops"].get("tc_tf32", 0)
                ffma = p["flops"].get("ffma_fp32", 0)
                r = p["ratio_to_floor"]
                rc = (p["time_s"][0] / c["time_s"][0], p["time_s"][1] / c["time_s"][1])
                lines.append(
                    f"| {B} | {D} | {'self' if t is None else f'{t} x 768'} | {tc / 1e12:,.1f} | "
                    f"{ffma / 1e12:,.1f} | {p['floor_s'] * 1e3:,.1f} | {p['l2_bytes'] / 1e9:,.0f} | "
                    f"{p['hbm_bytes'] / 1e9:,.1f} | {_ms(p['forward_s'])} | {_ms(p['backward_s'])} | "
                    f"{_ms(p['time_s'])} | {r[0]:.2f}-{r[1]:.2f} | {rc[0]:.2f}-{rc[1]:.2f} |"
                )
    lines.append("")
    for B, D in ((65536, 1024), (262144, 1024)):
        lines += _breakdown(predict("contrastive", B, D, dtype, hw=hw))
    lines += [
        "",
        "The v1 contrastive kernels at B = 65536 were modelled at 151-350 ms (3.4-7.9x the floor): two LSE "
        "passes and a backward with a per-tile fp32 read-modify-write of dQ and fp32 dK atomics. The v2 "
        "terms are bound by L2->SM traffic at the optimistic rate (score tiles of 128 x 256 in the forward "
        "and 256 x 128 in the G kernel, through TMA descriptors, on sm_90: 85 FLOP per byte, 64 at the "
        "128 x 128 of before and of sm_80) and by the column pass for the columns the workspace cannot "
        "cover: dT accumulates them in place with an int8 "
        "remainder (1 byte per element of workspace; at B = 65536 a bf16 remainder's 2 covered 46080, an "
        "fp32 accumulator's 4 covered 26112). At B = 262144 G for every column holds at most 512 rows: "
        "chunks of many rows take G in slabs of columns (their dI summed over the slabs in an fp32 "
        "buffer that stays in L2), so the covered columns' read-modify-write comes once per large chunk.",
    ]
    lines += sigmoid_table(Bs, sigmoid_Ds, dtype, hw)
    return "\n".join(lines) + "\n"


FP32_LABELS = {
    "fp32": "IEEE fp32 on CUDA cores (FFMA), the default",
    "tf32x3": "three TF32 products (VLKERNELS_FP32_DOTS=tf32x3)",
    "bf16x6": "six bf16 products (VLKERNELS_FP32_DOTS=bf16x6)",
    "tf32": 'TF32 (torch.set_float32_matmul_precision("high"))',
}


def fp32_table(Bs=(16384, 65536), D=1024, hw=H100) -> list:
    """The contrastive loss on fp32 features, per way of running its dots (``FP32_LABELS``)."""
    lines = [
        "",
        f"## contrastive (v2 kernels), fp32 features, D = {D}, workspace 256 MiB",
        "",
        "Under torch's default precision the dots run in IEEE fp32 on CUDA cores "
        f"({hw.ffma_fp32 / 1e12:.0f} TFLOP/s); the split-precision candidates run on tensor cores at the "
        f"TF32 rate over three ({hw.tc_tf32x3 / 1e12:.0f} TFLOP/s) or the bf16 rate over six "
        f"({hw.tc_bf16x6 / 1e12:.0f} TFLOP/s), their tiles those of `config` with D chunks of 16, and are "
        "adopted only where a GPU measures them within 2x torch's fp32 error against float64 "
        "(`python -m benchmarks.bench_fp32_dots`; modelled on CPU by its `--emulate`: "
        'benchmarks/results/model/fp32_dots_emulated.md). TF32 is what torch\'s "high" precision allows. '
        "Floor: 8 B^2 D at the bf16 rate, as above.",
        "",
        "| B | dots | forward ms | backward ms | total ms | x floor | x IEEE (low end) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for B in Bs:
        ieee = predict("contrastive", B, D, "fp32", hw=hw)["time_s"][0]
        for label, what in FP32_LABELS.items():
            p = predict("contrastive", B, D, label, hw=hw)
            r = p["ratio_to_floor"]
            lines.append(
                f"| {B} | {what} | {_ms(p['forward_s'])} | {_ms(p['backward_s'])} | {_ms(p['time_s'])} | "
                f"{r[0]:.2f}-{r[1]:.2f} | {p['time_s'][0] / ieee:.2f} |"
            )
    return lines


def _breakdown(p: dict) -> list:
    """The per-launch table of one ``predict`` result (aggregates of a pass's launches)."""
    B, D, pl = p["B"], p["D"], p["plan"]
    lines = [
        "",
        f"## Breakdown: {p['op']}, B = {B}, D = {D}, {p['dtype']}, workspace {p['workspace'] // 2**20} MiB "
        f"(chunks of {pl['chunk']} rows, slabs of {pl['slab']} columns, {pl['covered']} columns covered)",
        "",
        "| launch | config (programs in all; launches, the SMs filled) | TFLOP | exp G | L2->SM GB (terms) | "
        "HBM GB (terms) | dots / L2 / HBM ms | time ms |",
        "|---|---|---:|---:|---|---|---|---:|",
    ]
    for ln in p["launches"]:
        c = ln["config"]
        cfg = (
            f"{c['BLOCK_M']}x{c['BLOCK_N']}x{c.get('BLOCK_D', c.get('BLOCK_K'))}, {c['programs']} programs; "
            f"{ln['count']} launches, {ln['filled']:.0%}"
        )
        l2 = ", ".join(f"{k} {v / 1e9:,.0f}" for k, v in ln["detail"]["l2"].items())
        hbm = ", ".join(f"{k} {v / 1e9:,.1f}" for k, v in ln["detail"]["hbm"].items())
        t = ln["time"]
        lines.append(
            f"| {ln['kernel']} | {cfg} | {sum(ln['flops'].values()) / 1e12:,.1f} | {ln['exps'] / 1e9:,.1f} | "
            f"{ln['l2_bytes'] / 1e9:,.0f} ({l2}) | {ln['hbm_bytes'] / 1e9:,.1f} ({hbm}) | "
            f"{t['compute'] * 1e3:,.1f} / {_ms(t['l2'])} / {t['hbm'] * 1e3:,.1f} | "
            f"{_ms((t['low'], t['high']))} |"
        )
    return lines


def sigmoid_table(Bs=(16384, 65536, 262144, 1048576), Ds=(256, 512, 1024), dtype="bf16", hw=H100) -> list:
    """The sigmoid (SigLIP) section of ``table``: one row per (B, D) at the default workspace, then the
    per-launch breakdown at B = 65536, D = 1024."""
    lines = [
        "",
        f"## sigmoid (SigLIP), {dtype}, workspace 256 MiB (the default budget)",
        "",
        "Launches: `_loss_kernel` (the forward, row sums of softplus(-y z); `loss_config`: 128 x 256 tiles "
        "through TMA descriptors on sm_90 where the wide tiles apply, the softplus in four column parts); "
        "the backward on the G-chunk engine shared with the contrastive loss: per chunk of rows "
        "`_weights_kernel` (G = sigmoid(z) - [i == j] in the features' dtype, two fp32 partial sums per row "
        "and block of 16 columns; `weights_config`: 256 x 128 through TMA descriptors, the epilogue in eight "
        "parts) and dI = G @ T, the accumulator dT[covered] += G.T @ I (in dT, with an int8 remainder), "
        "the column pass for the columns the workspace leaves. No atomics (deterministic by design). "
        "MUFU: one ex2 per element of the forward, one ex2 and one fp32 division (rcp) per element of "
        "every G tile. ALU: "
        "fp32-pipe elementwise "
        f"instructions per element ({ALU_PER_ELEMENT['sigmoid_loss']} forward, "
        f"{ALU_PER_ELEMENT['sigmoid_weights']} weights; static PTX counts) at {hw.fp32_lanes_per_clk_sm} "
        f"lanes/clk/SM = {hw.alu_rate / 1e12:.1f} T/s, one more term of the max (low) and of the sum with "
        "the dots and MUFU (high). FLOPs in units of B^2 D (floor 8: forward 2, G 2, the two GEMMs 4; the "
        "column pass recomputes G for the uncovered columns).",
        "",
        "| B | D | chunk / slab / covered columns | B^2 D | TFLOP | floor ms | MUFU G | ALU G | L2->SM GB | "
        "HBM GB | forward ms | backward ms | total ms | x floor |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for B in Bs:
        for D in Ds:
            p = predict("sigmoid", B, D, dtype, hw=hw)
            r, pl = p["ratio_to_floor"], p["plan"]
            lines.append(
                f"| {B} | {D} | {pl['chunk']} / {pl['slab']} / {pl['covered']} | "
                f"{p['flops_total'] / (B * B * D):.2f} | "
                f"{p['flops_total'] / 1e12:,.1f} | {p['floor_s'] * 1e3:,.1f} | {p['exps'] / 1e9:,.0f} | "
                f"{p['alu'] / 1e9:,.0f} | {p['l2_bytes'] / 1e9:,.0f} | {p['hbm_bytes'] / 1e9:,.1f} | "
                f"{_ms(p['forward_s'])} | {_ms(p['backward_s'])} | {_ms(p['time_s'])} | "
                f"{r[0]:.2f}-{r[1]:.2f} |"
            )
    B, D = 65536, 1024
    p = predict("sigmoid", B, D, dtype, hw=hw)
    lines += ["", f"### Breakdown: sigmoid, B = {B}, D = {D}, {dtype}, workspace 256 MiB", ""]
    lines += [
        "| launch | config | TFLOP | MUFU G | ALU G | L2->SM GB | HBM GB (terms) | "
        "dots / MUFU / ALU / L2 / HBM ms | time ms |",
        "|---|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for ln in p["launches"]:
        c = ln["config"]
        cfg = f"{c['BLOCK_M']}x{c['BLOCK_N']}x{c.get('BLOCK_D', c.get('BLOCK_K'))}, {c['programs']} programs"
        hbm = ", ".join(f"{k} {v / 1e9:,.1f}" for k, v in ln["detail"]["hbm"].items())
        t = ln["time"]
        parts = (
            f"{t['compute'] * 1e3:,.1f} / {t['exp'] * 1e3:,.1f} / {t['alu'] * 1e3:,.1f} / {_ms(t['l2'])} / "
            f"{t['hbm'] * 1e3:,.1f}"
        )
        lines.append(
            f"| {ln['kernel']} | {cfg} | {sum(ln['flops'].values()) / 1e12:,.1f} | {ln['exps'] / 1e9:,.1f} | "
            f"{ln['alu'] / 1e9:,.0f} | {ln['l2_bytes'] / 1e9:,.0f} | {ln['hbm_bytes'] / 1e9:,.1f} ({hbm}) | "
            f"{parts} | {_ms((t['low'], t['high']))} |"
        )
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Analytic H100 cost model of the Triton kernels (modelled)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--out", default=os.path.join(RESULTS, "h100_cost_model.md"), help="'' for none")
    args = ap.parse_args(argv)
    write_report(table(dtype=args.dtype), args.out)
    return 0


def write_report(text: str, out: str) -> None:
    """Print a model's table and write it to `out` ('' for none)."""
    print(text)
    if out:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    raise SystemExit(main())
