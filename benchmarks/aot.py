"""Ahead-of-time compile check of the Triton kernels for sm_90 / sm_80, on a machine without a GPU.

Two steps, both without a GPU:

1. Capture (``capture``), once per architecture: with TRITON_INTERPRET unset, a fake active Triton
   driver reports that CUDA target (and ``triton_utils.HOST_ARCH`` is set to it: the launchers choose
   some tiles by architecture, e.g. the contrastive forward's 128 x 256 on sm_90 only) and
   ``triton.knobs.runtime.jit_cache_hook`` records every kernel launch (signature, constexprs,
   specialisation attributes, num_warps, num_stages) and returns True, so nothing is compiled or launched.
   The REAL backends (``TritonBackend``, ``TritonSoftTargetBackend``, ``TritonSigmoidBackend``) and
   launchers run on small CPU tensors for every variant they can select: dtype (bf16, fp16, fp32 under
   torch's default "highest" matmul precision -> IEEE dots, fp32 under "high" -> TF32 dots, fp32 with
   ``VLKERNELS_FP32_DOTS`` tf32x3 / bf16x6 -> split-precision tensor-core dots) x D (single-D path,
   chunked path, unaligned D) x (soft target) teacher (none / a separate teacher of another width
   and dtype) x the grid of the one-tile-per-program weights launches (IEEE fp32, a separate teacher:
   column tiles along y, or past 65,535 of them in slabs along z, ``Call.slabs``); the contrastive v2
   kernels (the one-pass forward, its exact fallback, G with and without
   targets, the GEMMs storing in the features' dtype / in fp32 / accumulating in fp32); the soft-target
   statistics ``_stats_kernel``, its W chunks ``_weights_kernel`` and the same GEMMs; the sigmoid
   (SigLIP) forward ``_loss_kernel``, its G chunks ``_weights_kernel`` and the same GEMMs. No float
   atomics anywhere (one path per backend).
2. Compile (``compile_all``): each distinct specialisation captured for an architecture once, with
   ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` (a process pool), recording
   ptxas' registers and spill bytes (``knobs.nvidia.dump_ptxas_log``), shared memory (``metadata.shared``),
   how every ``tt.dot`` was lowered (TTGIR: ``ttng.warp_group_dot`` = wgmma, ``tt.dot`` on an
   ``nvidia_mma`` v2 layout = mma.sync, else CUDA-core FMA), tensor-core instructions in the PTX and
   float atomics (``atom``/``red`` ... ``.f32``) in the PTX, static counts of MUFU instructions (ex2, lg2,
   rcp, fp32 division) in the PTX.

``violations`` states the targets (design.md, "Kernel plan v2": verified without a GPU); the test
(tests/test_aot_compile.py) asserts them per variant and architecture. CLI::

    python -m benchmarks.aot                 # writes benchmarks/results/model/aot_sm90.md, aot_sm80.md
    python -m benchmarks.aot --json out.json --grid test --jobs 2
    python -m benchmarks.aot --grid sigmoid  # the sigmoid kernels only: aot_sigmoid.md (both archs)
    python -m benchmarks.aot --diff old.json new.json  # what a change did to the compiled variants

Nothing here is imported by the package.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "model")

# Shared memory a block may use (opt-in maximum), CUDA C++ Programming Guide, "Features and Technical
# Specifications", table "Technical Specifications per Compute Capability": compute capability 9.0:
# 228 KB per SM, 227 KB per thread block (1 KB of each SM's 228 KB is reserved for the system); 8.0:
# 164 KB per SM, 163 KB per thread block. Same numbers in the NVIDIA Hopper and Ampere tuning guides.
# 8.6, 8.9 and 12.0 (the RTX 30 / 40 / 50 series): 100 KB per SM, 99 KB per thread block; their tensor
# cores take mma.sync, as 8.0's (no wgmma; 12.0 has no tcgen05 either).
ARCHS = {
    90: dict(name="sm_90", smem_limit=227 * 1024, tc_kind="wgmma", tc_ptx="wgmma.mma_async"),
    80: dict(name="sm_80", smem_limit=163 * 1024, tc_kind="mma.sync", tc_ptx="mma.sync"),
    86: dict(name="sm_86", smem_limit=99 * 1024, tc_kind="mma.sync", tc_ptx="mma.sync"),
    89: dict(name="sm_89", smem_limit=99 * 1024, tc_kind="mma.sync", tc_ptx="mma.sync"),
    120: dict(name="sm_120", smem_limit=99 * 1024, tc_kind="mma.sync", tc_ptx="mma.sync"),
    # 10.0 (B200): 228 KB per SM, 227 KB per block, as 9.0; tensor cores through tcgen05 (accumulators in
    # tensor memory)
    100: dict(name="sm_100", smem_limit=227 * 1024, tc_kind="tcgen05", tc_ptx="tcgen05.mma"),
}
# the PTX count (``_compile_one``) of each tensor-core kind's instructions
TC_PTX_FIELD = {"wgmma": "ptx_wgmma", "mma.sync": "ptx_mma_sync", "tcgen05": "ptx_tcgen05"}


def tc_ptx_count(res: dict, arch: int) -> int:
    """How many of sm_``arch``'s tensor-core instructions a compiled variant's PTX has."""
    return res.get(TC_PTX_FIELD[ARCHS[arch]["tc_kind"]], 0)


MAX_REGISTERS = 255  # per thread, the ptxas limit and the budget per kernel

# dtype label -> (torch dtype name, torch.set_float32_matmul_precision value, VLKERNELS_FP32_DOTS)
DTYPES = {
    "bf16": ("bfloat16", "highest", "ieee"),
    "fp16": ("float16", "highest", "ieee"),
    "fp32": ("float32", "highest", "ieee"),  # IEEE fp32 dots (torch's default precision)
    "tf32": ("float32", "high", "ieee"),  # fp32 inputs, TF32 dots
    # fp32 inputs under the default precision as split tensor-core products (experimental candidates)
    "tf32x3": ("float32", "highest", "tf32x3"),
    "bf16x6": ("float32", "highest", "bf16x6"),
}
SPLIT = ("tf32x3", "bf16x6")
KERNELS = {
    "_forward_kernel": "fwd",
    "_lse_kernel": "lse",
    "_diagonal_kernel": "diag",
    "_weights_kernel": "weights",
    "_matmul_kernel": "matmul",
}
# The sigmoid and soft-target kernels' names collide with the contrastive ones': keyed by module too.
SIGMOID_MODULE = "vlkernels.ops.sigmoid_triton"
SIGMOID_KERNELS = {"_loss_kernel": "sigmoid_loss", "_weights_kernel": "sigmoid_weights"}
SOFT_MODULE = "vlkernels.ops.soft_target_triton"
SOFT_KERNELS = {
    "_stats_kernel": "stats",
    "_merge_kernel": "st_merge",
    "_weights_kernel": "st_weights",
    "_teacher_diagonal_kernel": "st_tdiag",
}
TEACHER_D = 768
# The sigmoid calls of the "test" grid (each launches the forward, the weights kernel and the shared GEMMs),
# within CI's time: the single-D forward (D = 64, IEEE fp32 included), the chunked one (D = 256 / 1024:
# bf16, TF32) and an unaligned D (TF32 at D = 100: masked chunks, 64-column tiles). The IEEE fp32 chunked
# variants (the slowest compiles) are in the "sigmoid" and "full" grids only.
# D of the full grid: the single-D path (64), a multiple of 8 but not of 16 (72: no divisibility hint, the
# masked last D chunk), unaligned (100), chunked and aligned (256, 1024).
FULL_DIMS = (64, 72, 100, 256, 1024)
SIGMOID_TEST = [("bf16", 64), ("bf16", 256), ("bf16", 1024), ("tf32", 100), ("tf32", 1024), ("fp32", 64)]


@dataclass(frozen=True)
class Call:
    """One backend call: op "contrastive" | "soft_target" | "sigmoid"; teacher None or (dtype label, width).
    Every backend has one path (no float atomics anywhere: deterministic by design)."""

    op: str
    dtype: str
    D: int
    teacher: tuple | None = None
    # column-major image features (last stride not 1): TMA cannot read them, so the launchers take the
    # pointer-load fallbacks of their wide tiles (``tma_ready``); the variant ids end in "/colmajor"
    colmajor: bool = False
    # the one-tile-per-program weights launches (IEEE fp32 dots, a separate teacher) past 65,535 column
    # tiles, the tiles in slabs along the grid's z (the kernels' SLABS; the capture lowers
    # ``triton_utils.GRID_YZ_MAX`` to 1): only the weights kernels are recorded, their ids end in "/slabs"
    slabs: bool = False


def _base(call: Call) -> str:
    """The variant ids' "dtype/D" part of a call (with "/colmajor" for column-major features)."""
    return f"{call.dtype}/D{call.D}" + ("/colmajor" if call.colmajor else "")


def fp32_dots_of(call: Call) -> str:
    """VLKERNELS_FP32_DOTS for a call: a split-precision label's, the student's or the teacher's."""
    labels = [call.dtype] + ([] if call.teacher is None else [call.teacher[0]])
    split = [DTYPES[label][2] for label in labels if label in SPLIT]
    return split[0] if split else "ieee"


def grid(name: str = "full") -> list[Call]:
    """The backend calls to capture. "full": every dtype x D in FULL_DIMS x (soft target)
    teacher (none, fp32 x 768, for half students also their own dtype x 768; the split-precision fp32
    candidates "tf32x3" and "bf16x6" with their own kind of teacher, and bf16 beside both), and the
    sigmoid backend's forward + backward per dtype x D; identical specialisations (D = 256 and D = 1024:
    both chunked and 16-aligned, except the sigmoid backward, whose D chunk is 256 for 16-bit inputs) are
    compiled once; and for 16-bit features at D = 1024 each op once more with column-major image features
    (``Call.colmajor``: the pointer-load fallbacks of the wide tiles, which TMA cannot read).
    "test": the variants of "full" that differ in what the targets check, within CI's time. "sigmoid": the
    sigmoid calls of "full" only (benchmarks/results/model/aot_sigmoid.md)."""
    if name == "sigmoid":
        return [c for c in grid("full") if c.op == "sigmoid"]
    if name == "test":
        c, s = "contrastive", "soft_target"
        f32t = ("fp32", TEACHER_D)
        calls = [Call(c, dt, D) for dt, D in [("bf16", 64), ("bf16", 72), ("bf16", 100), ("bf16", 1024)]]
        calls.append(Call(c, "fp16", 1024))
        calls += [Call(c, dt, 1024) for dt in ("tf32", "fp32")]
        calls += [Call(s, "bf16", 64), Call(s, "bf16", 1024), Call(s, "fp32", 64)]
        calls += [Call(s, "bf16", 1024, f32t), Call(s, "bf16", 1024, ("bf16", TEACHER_D))]
        calls += [Call("sigmoid", dt, D) for dt, D in SIGMOID_TEST]
        # the split-precision fp32 candidates: their own D chunks and tiles (aligned and not)
        calls += [Call(c, "tf32x3", 1024), Call(c, "bf16x6", 100), Call("sigmoid", "tf32x3", 1024)]
        calls += [Call(s, "bf16x6", 1024), Call(s, "bf16", 1024, ("tf32x3", TEACHER_D))]
        # the soft target's statistics configs that the two-part LSEs re-tiled: split-precision dots at
        # unaligned D (D chunks of 16), an fp32 student and teacher at aligned D (eight warps)
        calls += [Call(s, "tf32x3", 100), Call(s, "fp32", 64, f32t)]
        # the dL/dS kernel with TF32 student and teacher (sixteen warps: at eight, with the packed
        # teacher LSEs, it spilled 4 B)
        calls.append(Call(s, "tf32", 64, f32t))
        # the wide tiles' pointer-load fallbacks (features TMA cannot read)
        calls += [Call(op, "bf16", 1024, colmajor=True) for op in (c, s, "sigmoid")]
        # the one-tile launches past 65,535 column tiles (slabs along z)
        calls += [Call(op, "fp32", 100, slabs=True) for op in (c, s, "sigmoid")]
        calls += [Call(s, dt, D, f32t, slabs=True) for dt, D in [("bf16", 1024), ("fp32", 100), ("tf32", 64)]]
        return calls
    calls = []
    for dt in DTYPES:
        teachers = [None, (dt if dt in SPLIT else "fp32", TEACHER_D)]
        if dt in ("bf16", "fp16"):
            teachers.append((dt, TEACHER_D))
        if dt == "bf16":  # beside split-precision fp32 teachers
            teachers += [(split, TEACHER_D) for split in SPLIT]
        for D in FULL_DIMS:
            calls.append(Call("contrastive", dt, D))
            calls.extend(Call("soft_target", dt, D, t) for t in teachers)
        calls.extend(Call("sigmoid", dt, D) for D in FULL_DIMS)
        if dt in ("bf16", "fp16"):
            ops = ("contrastive", "soft_target", "sigmoid")
            calls.extend(Call(op, dt, 1024, colmajor=True) for op in ops)
    # every one-tile-per-program weights launch again past 65,535 column tiles (``Call.slabs``)
    return calls + [replace(call, slabs=True) for call in calls if one_tile(call)]


def one_tile(call: Call) -> bool:
    """Whether a call's weights kernels take one tile per program (``triton_utils.walk_grid``'s walk
    False): IEEE fp32 dots, or the soft target with a separate teacher."""
    teacher = call.op == "soft_target" and call.teacher is not None
    return not call.colmajor and (call.dtype == "fp32" or teacher)


def variant_ids(call: Call) -> list[str]:
    """The kernel variants a call launches (static: the test parametrises over these); a ``slabs`` call's:
    its weights kernels' with "/slabs"."""
    if call.slabs:
        plain = variant_ids(replace(call, slabs=False))
        return [f"{i}/slabs" for i in plain if i.split("/")[0] in WEIGHTS_KERNELS]
    base = _base(call)
    if call.op == "contrastive":
        # (the gathered path's products fold the targets in too: the same G specialisation)
        ids = [f"fwd/{base}", f"lse/{base}", f"diag/{base}", f"weights/{base}/G"]
        ids += [f"matmul/{base}/store", f"matmul/{base}/acc"]
        if call.dtype in ("bf16", "fp16"):
            # dT accumulated in dT with a 16-bit remainder; the gathered path's fp32 products
            ids += [f"matmul/{base}/acc-split", f"matmul/{base}/store-fp32"]
        return ids
    if call.op == "sigmoid":
        # forward, G chunks, and the shared GEMMs: dI stored, dT accumulated, the ring's fp32 products
        ids = [f"sigmoid_loss/{base}", f"sigmoid_weights/{base}"]
        ids += [f"matmul/{base}/store", f"matmul/{base}/acc"]
        if call.dtype in ("bf16", "fp16"):
            ids += [f"matmul/{base}/acc-split", f"matmul/{base}/store-fp32"]
        return ids
    # soft target: the statistics pass (with a separate teacher its own diagonal scores too); the
    # single-process backward (dL/dS chunks with the hard targets: "G" for one soft weight expanded, no
    # mask, "M" for a uint8 soft mask; dI stored in the features' dtype, dT accumulated) and the gathered
    # path's products (W: fp32 weight vectors, fp32 outputs)
    t = "" if call.teacher is None else f"/T{call.teacher[0]}x{call.teacher[1]}"
    ids = [f"stats/{base}{t}", f"st_merge/{base}{t}", f"st_diag/{base}{t}"]
    if call.teacher is not None:
        ids.append(f"st_tdiag/{base}{t}")
    ids += [f"st_weights/{base}{t}/{k}" for k in "GMW"]
    ids += [f"matmul/{base}/store", f"matmul/{base}/acc"]
    if call.dtype in ("bf16", "fp16"):
        ids += [f"matmul/{base}/acc-split", f"matmul/{base}/store-fp32"]
    return ids


def plan(name: str = "full") -> list[str]:
    ids = []
    for call in grid(name):
        ids.extend(i for i in variant_ids(call) if i not in ids)
    return ids


# ----------------------------------------------------------------------------------------------------
# Capture


class _FakeDriver:
    """What JITFunction.run / create_binder touch: the target, the device and the stream."""

    def __init__(self, target):
        self.target = target

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def is_active(self):
        return True


def _set_up_capture(records: list, arch: int = 90):
    """Fake driver (reporting sm_``arch``) + jit_cache_hook; must run before triton compiles or launches
    anything. The launchers configure CPU tensors for ``triton_utils.HOST_ARCH``: set to ``arch``."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("capture needs TRITON_INTERPRET unset (run it in a subprocess without it)")
    import triton
    from triton.backends.compiler import GPUTarget

    import vlkernels._dispatch
    import vlkernels._triton
    from vlkernels.ops import triton_utils

    triton.runtime.driver.set_active(_FakeDriver(GPUTarget("cuda", arch, 32)))
    triton_utils.HOST_ARCH = arch

    def hook(*, key, repr, fn, compile, is_manual_warmup, already_compiled):
        records.append(
            dict(
                module=fn.module,
                name=fn.name,
                signature=dict(compile["signature"]),
                constexprs=[[list(k), v] for k, v in compile["constants"].items()],
                attrs=[[list(k), v] for k, v in compile["configs"][0].items()],
                num_warps=compile["num_warps"],
                num_stages=compile["num_stages"],
            )
        )
        return True  # nothing is compiled or launched

    triton.knobs.runtime.jit_cache_hook = hook
    # CPU tensors are allowed to reach the launchers (they are never launched).
    vlkernels._triton.unavailable_reason = vlkernels._dispatch.unavailable_reason = lambda device: None


def _spec_key(rec: dict) -> str:
    blob = json.dumps(
        [rec["module"], rec["name"], rec["signature"], rec["constexprs"], rec["attrs"]]
        + [rec["num_warps"], rec["num_stages"]],
        sort_keys=True,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _run_call(call: Call):
    import torch

    from vlkernels.ops.contrastive_triton import TritonBackend
    from vlkernels.ops.soft_target_triton import TritonSoftTargetBackend

    dtype = getattr(torch, DTYPES[call.dtype][0])
    n = 144 if call.slabs else 48  # slabs: at least two column tiles of 64 (a multiple of 16, as 48)
    image = torch.randn(n, call.D).to(dtype)
    if call.colmajor:
        image = image.t().contiguous().t()
    text = torch.randn(n, call.D).to(dtype)
    scale = torch.tensor(10.0)
    if call.op == "sigmoid":
        from vlkernels.ops.sigmoid_triton import TritonSigmoidBackend

        be = TritonSigmoidBackend()
        bias = torch.tensor(-10.0)
        # the single-process call (diag; the backward's G chunks and GEMMs) and the ring's block products
        be.loss_sum(image, text, scale, bias, True)
        be.gradients(image, text, scale, bias, torch.tensor(0.5), True)
        be.grads(image, text, scale, bias, True, True)  # the ring's own block: the same G specialisation
        return
    if call.op == "contrastive":
        # the forward (one pass + the exact fallback's launch), the single-process backward (G with
        # targets, dI, the fp32 accumulator) and the gathered path's products (G, fp32 outputs)
        be = TritonBackend()
        be.lse(image, text, scale)
        z = torch.zeros(n, dtype=torch.float64)  # the LSEs' dtype (two-part)
        diag = torch.full((n,), -0.5)  # G's diagonal (fp32)
        be.gradients(image, text, scale, z, z, torch.tensor(0.5), 0.1, diag, True)
        be.accumulate(image, text, scale, z, z, (0, 0.1, diag))
        return
    teacher = None
    if call.teacher is not None:
        tdt = getattr(torch, DTYPES[call.teacher[0]][0])
        teacher = (torch.randn(n, call.teacher[1]).to(tdt), torch.randn(n, call.teacher[1]).to(tdt), scale)
    be = TritonSoftTargetBackend()
    be.stats(image, text, scale, teacher)
    z = torch.zeros(n, dtype=torch.float64)  # the student's LSEs (two-part; the gathered products')
    vec = torch.ones(n)
    # the LSEs packed as the single-process Function keeps them (fp32 hi, bf16 lo), the teacher's too
    packed = (torch.zeros(n), torch.zeros(n, dtype=torch.bfloat16))
    tr = tc = None if teacher is None else packed
    coefs = torch.tensor([0.5, 0.25])
    # as the single-process Function: no soft mask (one weight expanded) and a soft mask (uint8),
    # h = x a + y, the diagonal factors (v, u)
    u = None if teacher is None else vec * 0.25
    hard = (torch.tensor(-0.4), 1.0)
    for soft in (torch.ones(1, dtype=torch.uint8).expand(n), torch.ones(n, dtype=torch.uint8)):
        args = (hard, soft, coefs, 0.1, (-vec, u), teacher, tr, tc, True)
        be.gradients(image, text, scale, packed, packed, *args)
    be.accumulate(image, text, scale, z, z, vec, vec, vec * 0.5, vec * 0.5, teacher, tr, tc, (0, -vec, u))


def _short(rec: dict) -> str:
    if rec["module"] == SIGMOID_MODULE:
        return SIGMOID_KERNELS[rec["name"]]
    if rec["module"] == SOFT_MODULE:
        return SOFT_KERNELS[rec["name"]]
    return KERNELS.get(rec["name"], rec["name"])


def capture(calls: list[Call], arch: int = 90) -> dict:
    """Run the real backends for every call, configured for sm_``arch``; {variant id: record} (record: the
    launch's specialisation, the tile config, the spec key shared by identical specialisations)."""
    import torch

    from vlkernels.ops import triton_utils

    records: list = []
    old_arch = triton_utils.HOST_ARCH
    _set_up_capture(records, arch)
    variants: dict = {}
    old_precision = torch.get_float32_matmul_precision()
    old_dots = os.environ.get("VLKERNELS_FP32_DOTS")
    try:
        for call in calls:
            torch.set_float32_matmul_precision(DTYPES[call.dtype][1])
            os.environ["VLKERNELS_FP32_DOTS"] = fp32_dots_of(call)
            start = len(records)
            if call.slabs:
                with _slabs():
                    _run_call(call)
            else:
                _run_call(call)
            expected = variant_ids(call)
            for rec in records[start:]:
                kernel = _short(rec)
                if call.slabs and kernel not in WEIGHTS_KERNELS:
                    continue  # recorded by the call without slabs
                if kernel == "diag" and call.op == "soft_target":
                    kernel = "st_diag"  # the contrastive module's kernel on the statistics kernel's tiles
                consts = _constexpr_names(rec)
                vid = _variant_of(kernel, rec, consts, call, expected)
                rec = dict(rec, spec=_spec_key(rec), kernel=kernel, call=asdict(call), config=consts)
                prev = variants.get(vid)
                if prev is not None and prev["spec"] != rec["spec"]:
                    raise AssertionError(f"{vid}: two different specialisations for one variant id")
                variants.setdefault(vid, rec)
    finally:
        triton_utils.HOST_ARCH = old_arch
        torch.set_float32_matmul_precision(old_precision)
        if old_dots is None:
            os.environ.pop("VLKERNELS_FP32_DOTS", None)
        else:
            os.environ["VLKERNELS_FP32_DOTS"] = old_dots
    return variants


@contextlib.contextmanager
def _slabs():
    """The weights launchers' one-tile grids in slabs along z whatever their size (``Call.slabs``)."""
    from vlkernels.ops import triton_utils

    old = triton_utils.GRID_YZ_MAX
    triton_utils.GRID_YZ_MAX = 1
    try:
        yield
    finally:
        triton_utils.GRID_YZ_MAX = old


def _variant_of(kernel: str, rec: dict, consts: dict, call: Call, expected: list) -> str:
    """The variant id of a captured launch: the v2 contrastive kernels launch several specialisations per
    call (G with / without targets; GEMMs that store in the features' dtype, in fp32, or accumulate)."""
    if consts.get("SLABS"):
        plain = [i.removesuffix("/slabs") for i in expected]
        return _variant_of(kernel, rec, dict(consts, SLABS=False), call, plain) + "/slabs"
    if kernel == "weights":
        want = f"weights/{_base(call)}/" + ("G" if consts["TARGETS"] else "W")
    elif kernel == "st_weights":
        t = "" if call.teacher is None else f"/T{call.teacher[0]}x{call.teacher[1]}"
        single = rec["signature"]["h_q_ptr"] == "*u8"  # the single-process Function's soft weights
        want = f"st_weights/{_base(call)}{t}/" + (("M" if consts["W_STEP"] else "G") if single else "W")
    elif kernel == "matmul":
        out_fp32 = rec["signature"]["c_ptr"] == "*fp32" and call.dtype in ("bf16", "fp16")
        mode = "acc" if consts["ACCUMULATE"] else ("store-fp32" if out_fp32 else "store")
        if consts["ACCUMULATE"] and consts.get("SPLIT"):
            mode = "acc-split"
        want = f"matmul/{_base(call)}/{mode}"
    else:
        return next(i for i in expected if i.startswith(kernel + "/"))
    assert want in expected, (want, expected)
    return want


def _constexpr_names(rec: dict) -> dict:
    names = list(rec["signature"])
    out = {}
    for path, value in rec["constexprs"]:
        name = names[path[0]]
        if name.isupper():  # the tl.constexpr parameters (stride-1 specialisations are lower case)
            out[name] = value
    out["num_warps"] = rec["num_warps"]
    out["num_stages"] = rec["num_stages"]
    return out


# ----------------------------------------------------------------------------------------------------
# Compile and inspect

_MMA_ALIAS = re.compile(r"^(#\w+) = #ttg\.nvidia_mma<\{versionMajor = (\d+)", re.M)
# a dot's TTGIR op: tt.dot (mma.sync or FMA by its result's layout), wgmma, or tcgen05 (no result: it
# accumulates in tensor memory, so its line starts with the op)
_DOT = re.compile(r"(?:= |^[ \t]*)(ttng\.warp_group_dot|tt\.dot|ttng\.tc_gen5_mma) (.*)$", re.M)
_OPERAND = re.compile(r" : (?:tensor|!ttg\.memdesc)<(?:\d+x)+(\w+)[,>]")
_RESULT_ENC = re.compile(r"-> tensor<[^,>]+, (#[\w.]+)")
_PREC = re.compile(r"inputPrecision = (\w+)")
# MUFU-bound PTX instructions (static counts): the exponentials and logarithms of the loss and the
# fp32 divisions (div.full.f32: MUFU.RCP and a multiply; div.rn.f32: IEEE division, MUFU.RCP + Newton steps)
_MUFU = {
    "ex2": re.compile(r"\bex2\.approx\S*\.f32\b"),
    "lg2": re.compile(r"\blg2\.approx\S*\.f32\b"),
    "rcp": re.compile(r"\brcp\.\S*f32\b"),
    "div": re.compile(r"\bdiv\.(?:full|approx|rn)\S*\.f32\b"),
}
_FLOAT_ATOMIC = re.compile(r"\b(?:atom|red)\.\S*\.(?:f16|bf16|f32|f64|f16x2|bf16x2)\b")
# Lines of a PTX module that carry source positions only: line directives and the labels that the
# debug sections' inlining scopes point at (``code_digest`` leaves them out).
_DEBUG_ONLY = re.compile(r"^\s*(?:\.loc|\.file)\b|^\$L__(?:tmp|func_begin|func_end)\d+:")
_PTXAS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
}


def code_digest(ptx: str) -> str:
    """A digest of a PTX module's code alone: the text before its debug sections, without comments, line
    directives and debug-only labels. A change that moves source lines (a helper extracted, a docstring
    edited) and leaves the instructions alone leaves it unchanged (``--diff``)."""
    lines = []
    for line in ptx.split("\t.section\t.debug", 1)[0].splitlines():
        line = line.split("//", 1)[0].rstrip()
        if line and not _DEBUG_ONLY.match(line):
            lines.append(line)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def classify_dots(ttgir: str) -> list[dict]:
    """Every dot of a TTGIR module: operand dtype, input precision, lowering (wgmma | mma.sync | tcgen05 |
    fma)."""
    mma_version = {alias: int(v) for alias, v in _MMA_ALIAS.findall(ttgir)}
    dots = []
    for op, rest in _DOT.findall(ttgir):
        operand = _OPERAND.search(rest)
        dtype = operand.group(1) if operand else "?"
        prec = _PREC.search(rest)
        # tt.dot prints inputPrecision only when it is not the default, IEEE
        prec = prec.group(1) if prec else "ieee"
        if op == "ttng.warp_group_dot":
            kind = "wgmma"
        elif op == "ttng.tc_gen5_mma":
            kind = "tcgen05"
            prec = "tf32" if dtype == "f32" else prec  # its fp32 operands are TF32 (no precision printed)
        else:
            enc = _RESULT_ENC.search(rest)
            kind = "mma.sync" if enc and mma_version.get(enc.group(1)) == 2 else "fma"
        # Tensor cores are required unless the dot is an IEEE fp32 one.
        ieee = dtype == "f32" and op == "tt.dot" and prec == "ieee"
        dots.append(dict(dtype=dtype, precision=prec, kind=kind, needs_tc=not ieee))
    return dots


# The kernels that walk column tiles of a row block (the forwards and statistics: every column tile, one
# program per row block; the weights kernels: a share of them, ``triton_utils.walk_grid``): on tensor cores
# the walk must be one loop over (column tile, D chunk), which Triton's pipeliner keeps fed across column
# tiles (``tl.range(..., flatten=True)``); a D loop nested in the column loop drains the loads at every tile.
# Not checked: IEEE fp32 (CUDA-core FMA: FFMA-bound, and flattening spilled there) and the soft-target
# statistics with a separate teacher (two D walks per column tile, the student's and the teacher's, which
# the pass cannot fuse into one loop).
WEIGHTS_KERNELS = ("weights", "st_weights", "sigmoid_weights")
COLUMN_WALKS = ("fwd", "lse", "stats", "sigmoid_loss", "weights", "st_weights", "sigmoid_weights")


def dot_loop_depth(ttgir: str) -> int:
    """The deepest ``scf.for`` nesting around a dot in a TTGIR module (regions open on a line ending in
    ``{`` and close on a line starting with ``}``)."""
    stack: list = []
    depth = 0
    for line in ttgir.splitlines():
        s = line.strip()
        if s.startswith("}"):
            stack.pop()
        if _DOT.search(s):
            depth = max(depth, stack.count("for"))
        if s.endswith("{"):
            stack.append("for" if "scf.for" in s else "region")
    if stack:
        raise ValueError(f"unbalanced TTGIR regions: {len(stack)} left open")
    return depth


def _compile_one(job: tuple) -> tuple:
    spec, arch, rec = job
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    triton.knobs.nvidia.dump_ptxas_log = True
    triton.knobs.compilation.always_compile = True
    fn = getattr(importlib.import_module(rec["module"]), rec["name"])
    constexprs = {tuple(k): v for k, v in rec["constexprs"]}
    attrs = {tuple(k): v for k, v in rec["attrs"]}
    src = ASTSource(fn, rec["signature"], constexprs=constexprs, attrs=attrs)
    out = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out):
            kernel = triton.compile(
                src,
                target=GPUTarget("cuda", arch, 32),
                options=dict(num_warps=rec["num_warps"], num_stages=rec["num_stages"]),
            )
    except Exception as exc:  # reported, not raised: the test asserts on it
        return spec, arch, dict(error=f"{type(exc).__name__}: {str(exc)[-2000:]}")
    log = out.getvalue()
    ptx = kernel.asm["ptx"]
    res = dict(error=None, compile_s=round(time.perf_counter() - t0, 2), shared=int(kernel.metadata.shared))
    for field, pattern in _PTXAS.items():
        m = pattern.search(log)
        res[field] = int(m.group(1)) if m else None
    res["dots"] = classify_dots(kernel.asm["ttgir"])
    res["dot_loop_depth"] = dot_loop_depth(kernel.asm["ttgir"])
    res["ptx_wgmma"] = ptx.count("wgmma.mma_async")
    res["ptx_mma_sync"] = len(re.findall(r"\bmma\.sync\b", ptx))
    res["ptx_tcgen05"] = len(re.findall(r"\btcgen05\.mma\b", ptx))
    res["ptx_mufu"] = {k: len(p.findall(ptx)) for k, p in _MUFU.items()}
    res["ptx_float_atomics"] = sum(1 for line in ptx.splitlines() if _FLOAT_ATOMIC.search(line))
    res["code"] = code_digest(ptx)
    return spec, arch, res


def compile_all(by_arch: dict, jobs: int = 2) -> dict:
    """{str(arch): {spec: result}} for every distinct specialisation of ``by_arch`` ({str(arch): {variant
    id: record}}, each architecture's own capture), compiled for its architecture."""
    unique = {}
    for arch, variants in by_arch.items():
        for rec in variants.values():
            unique.setdefault((rec["spec"], int(arch)), rec)
    # longest first (chunked D, teacher, backward), for the pool's balance
    weight = {"st_weights": 3, "sigmoid_weights": 2, "stats": 2, "fwd": 2, "weights": 2}
    weight.update(lse=1, diag=1, st_diag=1, st_tdiag=1, st_merge=1, matmul=1, sigmoid_loss=1)

    def cost(item):
        cfg = item[1]["config"]
        return -(weight[item[1]["kernel"]] + 2 * (not cfg.get("SINGLE_D", False)) + 2 * cfg.get("TEACHER", 0))

    todo = [(spec, arch, rec) for (spec, arch), rec in sorted(unique.items(), key=cost)]
    results: dict = {arch: {} for arch in by_arch}
    if jobs <= 1:
        done = map(_compile_one, todo)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"))
        done = pool.map(_compile_one, todo)
    for spec, arch, res in done:
        results[str(arch)][spec] = res
    if jobs > 1:
        pool.shutdown()
    return results


# ----------------------------------------------------------------------------------------------------
# Targets


def violations(rec: dict, res: dict, arch: int) -> list[str]:
    """The targets a compiled variant misses (empty: all met)."""
    a = ARCHS[arch]
    if res.get("error"):
        return [f"does not compile: {res['error'][:300]}"]
    out = []
    if res["shared"] > a["smem_limit"]:
        out.append(f"shared memory {res['shared']} B > {a['smem_limit']} B ({a['name']} per-block limit)")
    if res["registers"] is None or res["registers"] > MAX_REGISTERS:
        out.append(f"registers {res['registers']} > {MAX_REGISTERS}")
    tc_dots = [d for d in res["dots"] if d["needs_tc"]]
    wrong = [d for d in tc_dots if d["kind"] != a["tc_kind"]]
    if wrong:
        kinds = ", ".join(f"{d['dtype']}/{d['precision']}->{d['kind']}" for d in wrong)
        out.append(f"{len(wrong)} of {len(tc_dots)} tensor-core dots not lowered to {a['tc_kind']}: {kinds}")
    if tc_dots and not tc_ptx_count(res, arch):
        out.append(f"no {a['tc_ptx']} in the PTX")
    spills = (res["spill_stores"] or 0) + (res["spill_loads"] or 0)
    if spills:
        out.append(f"spills {res['spill_stores']} B stores + {res['spill_loads']} B loads")
    walk = rec["kernel"] in COLUMN_WALKS and not rec["config"].get("TEACHER")
    if walk and tc_dots and res["dot_loop_depth"] > 1:
        out.append(f"column walk not one pipelined loop (dots {res['dot_loop_depth']} loops deep)")
    if res["ptx_float_atomics"]:
        n = res["ptx_float_atomics"]
        out.append(f"{n} float atomics (none by design: every kernel is deterministic)")
    return out


# ----------------------------------------------------------------------------------------------------
# Tables and CLI


def records(data: dict, arch: int) -> dict:
    """{variant id: record} as captured for sm_``arch`` (a run's JSON from before the per-architecture
    capture: its one capture)."""
    return data.get("variants_by_arch", {}).get(str(arch), data["variants"])


def table(data: dict, arch: int) -> str:
    a = ARCHS[arch]
    results = data["compiled"][str(arch)]
    lines = [
        f"# Triton kernels compiled ahead of time for {a['name']} (no GPU)",
        "",
        "Generated by `python -m benchmarks.aot` (triton " + data["triton"] + "). Each row is one kernel "
        "launch variant the backends select; rows with the same `spec` are one specialisation, compiled "
        "once. Registers / spills: ptxas -v; shared: `metadata.shared` (limit "
        f"{a['smem_limit'] // 1024} KiB per block on {a['name']}); dots: how each `tt.dot` is lowered "
        "(TTGIR); dot loops: the deepest loop nesting around a dot (TTGIR; 1 = the column walk is one "
        "pipelined loop); TC PTX: tensor-core instructions in the PTX; atomics: float `atom`/`red` "
        "instructions in the PTX. `targets`: what `benchmarks.aot.violations` reports (empty = all met). "
        "`/slabs`: a one-tile-per-program G kernel (IEEE fp32, a separate teacher) launched past 65,535 "
        "column tiles, the tiles in slabs along the grid's z.",
        "",
        "| variant | flags | BLOCK M/N/D(/DT) | warps | stages | regs | spill B (st+ld) | shared KiB | "
        "dots | dot loops | TC PTX | atomics | spec | targets |",
        "|---|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---|---|",
    ]
    n_ok = 0
    for vid, rec in records(data, arch).items():
        res = results[rec["spec"]]
        cfg = rec["config"]
        if "BLOCK_M" in cfg:
            blocks = f"{cfg['BLOCK_M']}/{cfg['BLOCK_N']}/{cfg.get('BLOCK_D', cfg.get('BLOCK_K'))}"
            if cfg.get("TEACHER"):
                blocks += f"/{cfg['BLOCK_DT']}"
        else:  # the soft target's merge of column partials: a block of columns
            blocks = f"{cfg['BLOCK']} columns"
        call = rec["call"]
        flags = []
        if "SINGLE_D" in cfg:
            flags.append("single-D" if cfg["SINGLE_D"] else "chunked-D")
        if "ACCUMULATE" in cfg:
            acc = "16-bit pair accumulate" if cfg.get("SPLIT") else "fp32 accumulate"
            flags.append(acc if cfg["ACCUMULATE"] else "store")
            if cfg.get("PARTS", 1) > 1:
                flags.append(f"epilogue in {cfg['PARTS']} parts")
        if "TARGETS" in cfg:
            flags.append("G (targets)" if cfg["TARGETS"] else "W")
        if cfg.get("PARTS", 1) > 1 and "ACCUMULATE" not in cfg:
            flags.append(f"epilogue in {cfg['PARTS']} parts")
        if cfg.get("TMA"):
            flags.append("TMA descriptors")
        if "HARD" in cfg:
            flags.append("dL/dS (hard targets)" if cfg["HARD"] else "W")
        if DTYPES[call["dtype"]][0] == "float32" and "DOT_PREC" in cfg:
            flags.append(cfg["DOT_PREC"] + " dots")
        if cfg.get("TEACHER"):
            t_dtype = call["teacher"][0]
            dots = DTYPES[t_dtype][0] == "float32" and "T_DOT_PREC" in cfg
            prec = f" ({cfg['T_DOT_PREC']} dots)" if dots else ""
            flags.append(f"teacher {t_dtype}{prec}")
        if cfg.get("SLABS"):
            flags.append("column tiles in slabs along z")
        bad = violations(rec, res, arch)
        n_ok += not bad
        if res.get("error"):
            lines.append(
                f"| {vid} | {', '.join(flags)} | {blocks} | | | | | | | | | | {rec['spec']} | {bad[0]} |"
            )
            continue
        kinds: dict = {}
        for d in res["dots"]:
            kinds[f"{d['dtype']}:{d['kind']}"] = kinds.get(f"{d['dtype']}:{d['kind']}", 0) + 1
        dots = " ".join(f"{n}x{k}" for k, n in kinds.items())
        tc = tc_ptx_count(res, arch)
        lines.append(
            f"| {vid} | {', '.join(flags)} | {blocks} | {cfg['num_warps']} | {cfg['num_stages']} | "
            f"{res['registers']} | {res['spill_stores']}+{res['spill_loads']} | {res['shared'] / 1024:.0f} | "
            f"{dots} | {res.get('dot_loop_depth', '')} | {tc} {a['tc_ptx']} | {res['ptx_float_atomics']} | "
            f"{rec['spec']} | "
            f"{'; '.join(bad)} |"
        )
    n_spec = len({rec["spec"] for rec in records(data, arch).values()})
    lines[4:4] = [
        f"{len(records(data, arch))} variants ({n_spec} distinct specialisations); {n_ok} meet every target "
        f"on {a['name']}. tests/test_aot_compile.py asserts the targets on a subset of these rows (its "
        "strict xfails name the known misses).",
        "",
    ]
    return "\n".join(lines) + "\n"


def sigmoid_table(data: dict, archs=(90, 80)) -> str:
    """One table of the sigmoid variants, every architecture side by side, with the static counts of their
    MUFU instructions (``ex2.approx``, ``div.full.f32``; ``tl.log2`` of the softplus is libdevice's
    polynomial, on the FMA pipe, no ``lg2.approx``)."""
    sig = {vid: rec for vid, rec in data["variants"].items() if rec["kernel"].startswith("sigmoid_")}
    lines = [
        "# The sigmoid (SigLIP) Triton kernels compiled ahead of time for "
        + " / ".join(ARCHS[a]["name"] for a in archs)
        + " (no GPU)",
        "",
        "Generated by `python -m benchmarks.aot --grid sigmoid` (triton " + data["triton"] + "): every "
        "launch variant `TritonSigmoidBackend` selects (vlkernels/ops/sigmoid_triton.py; forward "
        "`_loss_kernel` with `loss_config`, backward `_weights_kernel` with `weights_config`: on sm_90 for "
        "16-bit features at D a multiple of 16 above 64 the wide tiles through TMA descriptors, 128 x 256 "
        "and 256 x 128 with the epilogues in parts, elsewhere and on sm_80 128 x 128; the flags, blocks, "
        "warps and stages shown are sm_90's; the G chunks "
        "of the shared G-chunk engine, whose GEMMs are the `matmul/...` rows of aot_sm90.md / aot_sm80.md) "
        "for bf16 / fp16 / fp32 under torch's default precision "
        '(IEEE dots) / fp32 under "high" (TF32 dots) / fp32 as split-precision tensor-core dots '
        "(VLKERNELS_FP32_DOTS=tf32x3 / bf16x6, experimental) x D in (64, 72, 100, 256, 1024), and for "
        "bf16 / fp16 at D = 1024 column-major image features (`/colmajor`: TMA cannot read them, the "
        "pointer-load fallbacks of the wide tiles), and the IEEE fp32 G kernels' launches past 65,535 "
        "column tiles (`/slabs`: the tiles in slabs along the grid's z), captured and "
        "compiled as in aot_sm90.md / aot_sm80.md (which have the same rows, one architecture each). Per "
        "architecture: registers, "
        "spill bytes (stores+loads), shared KiB, tensor-core instructions in the PTX (wgmma.mma_async on "
        "sm_90, mma.sync on sm_80; 0 = CUDA-core FFMA), float atomics in the PTX (none anywhere: the sigmoid "
        "backward is deterministic by design), static MUFU counts ex2/div per thread, and the targets "
        "`benchmarks.aot.violations` reports (empty = all met).",
        "",
    ]
    n_spec = len({rec["spec"] for rec in sig.values()})
    n_ok = {a: 0 for a in archs}
    head = "| variant | flags | BLOCK M/N/D | warps/stages |"
    rule = "|---|---|---|---|"
    for a in archs:
        name = ARCHS[a]["name"]
        head += f" {name} regs | {name} spill B | {name} shared KiB | {name} TC PTX | {name} atomics | "
        head += f"{name} ex2/div | {name} targets |"
        rule += "---:|---:|---:|---:|---:|---:|---|"
    rows = []
    for vid, rec in sig.items():
        cfg = rec["config"]
        flags = []
        if "SINGLE_D" in cfg:
            flags.append("single-D" if cfg["SINGLE_D"] else "chunked-D")
        if DTYPES[rec["call"]["dtype"]][0] == "float32":
            flags.append(cfg["DOT_PREC"] + " dots")
        if cfg.get("PARTS", 1) > 1:
            flags.append(f"epilogue in {cfg['PARTS']} parts")
        if cfg.get("TMA"):
            flags.append("TMA descriptors")
        row = (
            f"| {vid} | {', '.join(flags)} | {cfg['BLOCK_M']}/{cfg['BLOCK_N']}/{cfg['BLOCK_D']} | "
            f"{cfg['num_warps']}/{cfg['num_stages']} |"
        )
        for a in archs:
            rec_a = records(data, a)[vid]
            res = data["compiled"][str(a)][rec_a["spec"]]
            bad = violations(rec_a, res, a)
            n_ok[a] += not bad
            if res.get("error"):
                row += f" | | | | | | {bad[0]} |"
                continue
            tc = tc_ptx_count(res, a)
            mufu = res.get("ptx_mufu", {})
            row += (
                f" {res['registers']} | {res['spill_stores']}+{res['spill_loads']} | "
                f"{res['shared'] / 1024:.0f} | {tc} | {res['ptx_float_atomics']} | "
                f"{mufu.get('ex2', '?')}/{mufu.get('div', '?')} | {'; '.join(bad)} |"
            )
        rows.append(row)
    ok = ", ".join(f"{n_ok[a]} on {ARCHS[a]['name']}" for a in archs)
    lines += [f"{len(sig)} variants ({n_spec} distinct specialisations); meeting every target: {ok}.", ""]
    return "\n".join(lines + [head, rule] + rows) + "\n"


def run(grid_name: str = "full", archs=(90, 80), jobs: int = 2) -> dict:
    """Capture and compile in this process (TRITON_INTERPRET must be unset before triton is imported)."""
    os.environ.pop("TRITON_INTERPRET", None)
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET"):
        raise RuntimeError("triton was imported in interpret mode")
    # A private Triton cache: every specialisation is really compiled (ptxas' log is the register count).
    cache = tempfile.mkdtemp(prefix="vlkernels-aot-")
    os.environ["TRITON_CACHE_DIR"] = cache
    # Triton 3.9's default (fusion on), without its warning about the default changing in 3.10.
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton

    t0 = time.perf_counter()
    try:
        by_arch = {str(arch): capture(grid(grid_name), arch) for arch in archs}
        t1 = time.perf_counter()
        compiled = compile_all(by_arch, jobs)
        t2 = time.perf_counter()
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return dict(
        triton=triton.__version__,
        variants=by_arch[str(archs[0])],
        variants_by_arch=by_arch,
        compiled=compiled,
        capture_s=round(t1 - t0, 1),
        compile_s=round(t2 - t1, 1),
    )


def diff(old: dict, new: dict) -> list[str]:
    """Lines for the variants whose compiled code (``code_digest``), registers or spills differ between two
    runs' JSON (``--json``), per architecture both ran, and for the variants only one of them has."""
    out = []
    fields = ("code", "registers", "spill_stores", "spill_loads", "shared")
    for arch in sorted(set(old["compiled"]) & set(new["compiled"])):
        a, b = records(old, int(arch)), records(new, int(arch))
        out += [f"sm_{arch} {vid}: only in the first run" for vid in sorted(set(a) - set(b))]
        out += [f"sm_{arch} {vid}: only in the second run" for vid in sorted(set(b) - set(a))]
        for vid in sorted(set(a) & set(b)):
            ra, rb = old["compiled"][arch][a[vid]["spec"]], new["compiled"][arch][b[vid]["spec"]]
            changed = [f"{f} {ra.get(f)} -> {rb.get(f)}" for f in fields if ra.get(f) != rb.get(f)]
            if changed:
                out.append(f"sm_{arch} {vid}: " + ", ".join(changed))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", default="full", choices=["full", "test", "sigmoid"])
    p.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=sorted(ARCHS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--json", help="write the raw results here")
    p.add_argument("--out-dir", default=RESULTS, help="where aot_sm<arch>.md go ('' for none)")
    p.add_argument("--from-json", help="render the tables of a saved --json run instead of compiling")
    p.add_argument(
        "--diff",
        nargs=2,
        metavar=("OLD", "NEW"),
        help="two saved --json runs: the variants whose code, registers, spills or shared memory differ",
    )
    args = p.parse_args(argv)
    if args.diff:
        runs = []
        for path in args.diff:
            with open(path) as f:
                runs.append(json.load(f))
        lines = diff(*runs)
        print("\n".join(lines) if lines else "the same code, registers, spills and shared memory everywhere")
        return 1 if lines else 0
    if args.from_json:
        with open(args.from_json) as f:
            data = json.load(f)
    else:
        data = run(args.grid, tuple(args.arch), args.jobs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f)
    if args.out_dir and args.grid == "sigmoid":
        os.makedirs(args.out_dir, exist_ok=True)
        path = os.path.join(args.out_dir, "aot_sigmoid.md")
        with open(path, "w") as f:
            f.write(sigmoid_table(data, tuple(args.arch)))
        print(f"wrote {path}")
    elif args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        for arch in args.arch:
            path = os.path.join(args.out_dir, f"aot_sm{arch}.md")
            with open(path, "w") as f:
                f.write(table(data, arch))
            print(f"wrote {path}")
    print(
        f"{len(data['variants'])} variants, capture {data['capture_s']} s, compile {data['compile_s']} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
