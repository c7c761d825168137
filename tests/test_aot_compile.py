"""Every Triton kernel variant the backends select, compiled ahead of time for sm_90 and sm_80 without a GPU
(benchmarks/aot.py): it compiles, its shared memory fits the architecture's per-block limit, every
bf16/fp16/TF32 dot lowers to the architecture's tensor-core instruction (wgmma.mma_async on sm_90,
mma.sync on sm_80), nothing spills, no variant has a float atomic (one path each), registers <= 255. The
sigmoid (SigLIP) kernels are in the grid too (forward ``_loss_kernel``, the backward's G tiles
``_weights_kernel``, whose GEMMs are the shared ``matmul`` variants); they have no atomic path at all (the
backward is deterministic by design), checked separately from the xfails.

The capture and the compiles run in one subprocess without TRITON_INTERPRET (conftest.py sets it for
this process; the kernels' configs are the interpreter's small ones under it). Variants that miss a
target today because of a known defect are strict xfails: the test flips when the kernel is fixed.
Needs Triton with its bundled ptxas; no GPU, no CUDA toolkit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import aot
from tests._ci import skip_or_fail

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = (90, 80)

# No known defects: every variant meets every target on both architectures (the soft-target kernels'
# spills, listed here until they moved onto the G-chunk engine with their own tile configs, are gone).
# The sigmoid kernels meet every target too, in this grid and in the full one (``python -m benchmarks.aot``:
# all 608 variants on sm_90 and sm_80 under Triton 3.9 and 3.8; under 3.6 all but two soft-target
# statistics variants on sm_80, README; the narrow bf16 weights kernels at 254-255 registers, the wide
# ones at the 16-warp cap, 127-128).
KNOWN_SIGMOID: dict = {}

KNOWN = {**KNOWN_SIGMOID}


def known_defect(vid: str, arch: int) -> str | None:
    return KNOWN.get((vid, arch))


def _have_ptxas() -> bool:
    try:
        from triton import knobs

        return os.path.exists(knobs.nvidia.ptxas.path)
    except Exception:
        return False


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    pytest.importorskip("triton")
    if not _have_ptxas():
        skip_or_fail("triton's bundled ptxas is missing: cannot compile for sm_90/sm_80")
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    cmd = ["-m", "benchmarks.aot", "--grid", "test", "--json", str(out), "--out-dir", ""]
    _without_interpreter(cmd + ["--arch", *map(str, ARCHS), "--jobs", "2"], timeout=1200)
    return json.loads(out.read_text())


def _without_interpreter(args: list, timeout: float | None = None) -> str:
    """stdout of ``python *args`` in the repository without TRITON_INTERPRET (a compile or capture for a
    GPU target), asserting that it succeeded."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _features(rec: dict, dtype) -> tuple:
    """Features standing for the variant's call: row-major, or with "/colmajor" column-major image features
    (TMA cannot read them: the launchers' pointer-load fallbacks)."""
    import torch

    x = torch.zeros(64, rec["call"]["D"], dtype=dtype)
    return (x.t().contiguous().t(), x) if rec["call"].get("colmajor") else (x, x)


def _sigmoid_gpu_config(rec: dict, monkeypatch, matmul_precision, arch: int) -> dict:
    """The config the sigmoid launchers pick on sm_``arch`` for this variant's call (interpreter off; the
    float32 matmul precision set through the ``matmul_precision`` fixture, which restores it)."""
    import torch

    from vlkernels.ops.sigmoid_triton import loss_config, weights_config  # before the interpreter is unset

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("VLKERNELS_FP32_DOTS", aot.DTYPES[rec["call"]["dtype"]][2])
    dtype = getattr(torch, aot.DTYPES[rec["call"]["dtype"]][0])
    D = rec["call"]["D"]
    matmul_precision(aot.DTYPES[rec["call"]["dtype"]][1])  # tf32: "high"
    if rec["kernel"] == "sigmoid_weights":
        return weights_config(D, dtype, arch, *_features(rec, dtype))
    return loss_config(D, dtype, arch, *_features(rec, dtype))


def _soft_gpu_config(rec: dict, monkeypatch, matmul_precision, arch: int) -> dict:
    """The config the soft-target launchers pick on sm_``arch`` for this variant's call (interpreter
    off; the precision as in ``_sigmoid_gpu_config``)."""
    import torch

    from vlkernels.ops.soft_target_triton import slabs_config, tile_config

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    call = rec["call"]
    monkeypatch.setenv("VLKERNELS_FP32_DOTS", aot.fp32_dots_of(aot.Call(**call)))
    dtype = getattr(torch, aot.DTYPES[call["dtype"]][0])
    teacher = None
    if call["teacher"] is not None:
        t_dtype = getattr(torch, aot.DTYPES[call["teacher"][0]][0])
        teacher = (torch.empty(0, call["teacher"][1], dtype=t_dtype),)
    matmul_precision(aot.DTYPES[call["dtype"]][1])
    ready = not call.get("colmajor")  # else the pointer-load fallbacks (tma_ready fails)
    kernel = "stats" if rec["kernel"] == "stats" else "weights"
    cfg = tile_config(call["D"], dtype, teacher, kernel, arch, tma=ready)
    return slabs_config(cfg, dtype, teacher) if call.get("slabs") else cfg


@pytest.mark.parametrize("arch", ARCHS)
def test_capture_covers_the_plan(compiled, monkeypatch, matmul_precision, arch):
    """Every variant the grid selects was launched (through the real backends) for each architecture, and
    nothing else."""
    assert set(aot.records(compiled, arch)) == set(aot.plan("test"))
    for vid, rec in aot.records(compiled, arch).items():
        cfg = rec["config"]
        if rec["kernel"].startswith("sigmoid_"):
            # exactly the launchers' GPU configs
            want = _sigmoid_gpu_config(rec, monkeypatch, matmul_precision, arch)
            assert {k: cfg[k] for k in want} == want, vid
            assert "ATOMIC_DK" not in cfg and cfg["DIAG"], vid
        elif rec["kernel"] in ("stats", "st_weights"):
            want = _soft_gpu_config(rec, monkeypatch, matmul_precision, arch)
            assert {k: cfg[k] for k in want} == want, vid
            assert cfg["BLOCK_M"] >= 64 and cfg["BLOCK_N"] >= 32, vid
        elif rec["kernel"] in ("diag", "st_diag"):
            pass  # its walk's tile config (test_diagonal_scores_take_their_walks_tiles)
        elif rec["kernel"] == "st_tdiag":  # the statistics kernel's teacher tiles (the same test)
            continue
        elif rec["kernel"] == "st_merge":  # no dots: the compiled block of columns, nothing else to check
            assert cfg["BLOCK"] == 256, vid
            continue
        else:
            # the compiled configs, not the interpreter's 16x16 blocks (the IEEE fp32 G kernel at unaligned
            # D: 64 x 32)
            narrow = 32 if rec["kernel"] == "weights" and rec["call"]["dtype"] == "fp32" else 64
            assert cfg["BLOCK_M"] >= 64 and cfg["BLOCK_N"] >= narrow and "num_warps" in cfg, vid
        assert not cfg["UPCAST"], vid
        call = rec["call"]
        if "SINGLE_D" in cfg:  # the G and GEMM kernels always walk their reduction dimension
            assert cfg["SINGLE_D"] == (call["D"] <= cfg["BLOCK_D"]), vid
        torch_dtype, precision, fp32_dots = aot.DTYPES[call["dtype"]]
        want = fp32_dots if torch_dtype == "float32" and precision == "highest" else "tf32"
        assert cfg["DOT_PREC"] == want, vid


def _cases():
    for arch in ARCHS:
        for vid in aot.plan("test"):
            reason = known_defect(vid, arch)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(vid, arch, marks=marks, id=f"sm{arch}-{vid}")


@pytest.mark.parametrize("vid,arch", list(_cases()))
def test_variant_meets_targets(compiled, vid, arch):
    rec = aot.records(compiled, arch)[vid]
    res = compiled["compiled"][str(arch)][rec["spec"]]
    problems = aot.violations(rec, res, arch)
    assert not problems, f"{vid} on sm_{arch}: " + "; ".join(problems)


def test_sigmoid_grid_covers_dtypes_and_paths():
    """The test grid has both sigmoid kernels for every dtype kind, single-D and chunked, aligned and not."""
    sig = [vid for vid in aot.plan("test") if vid.startswith("sigmoid_")]
    for kernel in ("sigmoid_loss", "sigmoid_weights"):
        for dt in ("bf16", "tf32", "fp32"):
            assert any(v.startswith(f"{kernel}/{dt}/") for v in sig), (kernel, dt)
        for D in (64, 100, 256, 1024):
            assert any(v.startswith(kernel + "/") and v.endswith(f"/D{D}") for v in sig), (kernel, D)
    full = aot.plan("full")
    sig_full = {v for v in aot.plan("sigmoid") if v.startswith("sigmoid_")}
    assert {v for v in full if v.startswith("sigmoid_")} == sig_full
    # every dtype x D, the 16-bit dtypes' column-major features at D = 1024 (the pointer-load fallbacks),
    # and the IEEE fp32 G kernel's launches past 65,535 column tiles at every D (slabs along z)
    assert len(sig_full) == 2 * len(aot.DTYPES) * len(aot.FULL_DIMS) + 2 * 2 + len(aot.FULL_DIMS)
    assert {v for v in sig_full if v.endswith("/colmajor")} == {
        f"{k}/{dt}/D1024/colmajor" for k in ("sigmoid_loss", "sigmoid_weights") for dt in ("bf16", "fp16")
    }
    assert {v for v in sig_full if v.endswith("/slabs")} == {
        f"sigmoid_weights/fp32/D{D}/slabs" for D in aot.FULL_DIMS
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_sigmoid_kernels_have_no_float_atomics(compiled, arch):
    """No sigmoid variant has a float atomic in its PTX, xfailed ones included (deterministic by design)."""
    mine = aot.records(compiled, arch)
    sig = {vid: rec for vid, rec in mine.items() if rec["kernel"].startswith("sigmoid_")}
    assert sig
    for vid, rec in sig.items():
        res = compiled["compiled"][str(arch)][rec["spec"]]
        assert not res.get("error"), (vid, res.get("error"))
        assert res["ptx_float_atomics"] == 0, vid
        # one exp2 per element; the backward's G one fp32 division (MUFU.RCP) too, the forward's softplus
        # none (log1p as log(u) - ((u - 1) - e))
        want_div = res["ptx_mufu"]["ex2"] if rec["kernel"] == "sigmoid_weights" else 0
        assert res["ptx_mufu"]["ex2"] > 0 and res["ptx_mufu"]["div"] == want_div, vid


def test_known_defects_name_planned_variants():
    """No stale entry: every known defect names a variant of the test grid."""
    planned = {(vid, arch) for vid in aot.plan("test") for arch in ARCHS}
    assert set(KNOWN) <= planned, set(KNOWN) - planned


@pytest.mark.parametrize("arch", ARCHS)
def test_contrastive_v2_kernels_are_deterministic_and_on_tensor_cores(compiled, arch):
    """The contrastive v2 kernels (one-pass forward, its exact fallback, G, the GEMMs): no float atomic in
    any PTX, every 16-bit / TF32 variant on tensor cores, nothing spills (no known defect among them)."""
    mine = {v: r for v, r in aot.records(compiled, arch).items() if r["call"]["op"] == "contrastive"}
    assert {r["kernel"] for r in mine.values()} == {"fwd", "lse", "diag", "weights", "matmul"}
    for vid, rec in mine.items():
        res = compiled["compiled"][str(arch)][rec["spec"]]
        assert not aot.violations(rec, res, arch), (vid, aot.violations(rec, res, arch))
        assert res["ptx_float_atomics"] == 0, vid
        if rec["call"]["dtype"] != "fp32":
            assert aot.tc_ptx_count(res, arch) > 0, vid


def test_score_tiles_follow_the_architecture(compiled):
    """Each architecture is captured with its own launch configs: on sm_90 the contrastive forward takes
    128 x 256 score tiles and its G kernel 256 x 128 on 16 warps, both read through TMA descriptors
    (the soft target's dL/dS / W kernel with the self teacher too, its epilogue in eight parts), and the
    soft target's statistics with the self teacher 128 x 128 through TMA descriptors, the others' epilogues
    in four parts (16-bit, D a multiple of 16 above 64); the sigmoid forward 128 x 256 and its G kernel
    256 x 128, both through TMA descriptors, the G epilogue in eight parts; on sm_80 (mma.sync: those
    spilled) 128 x 128 (the soft statistics 128 x 64, in four parts). D = 72 (a multiple of 8, not of
    16) takes 64-column tiles everywhere. The split-precision fp32 dots take 128 x 64 score tiles on
    sm_80, and the statistics beside a split-precision teacher 32-column tiles there. Every other variant
    is the same specialisation on both."""
    v90, v80 = aot.records(compiled, 90), aot.records(compiled, 80)
    wide = {
        vid for vid, rec in v90.items() if rec["config"].get("PARTS", 1) > 1 and rec["kernel"] != "matmul"
    }
    g = {f"weights/{dt}/D1024/G" for dt in ("bf16", "fp16")}
    g |= {f"st_weights/bf16/D1024/{k}" for k in "GMW"}
    g |= {f"sigmoid_{k}/bf16/D{d}" for k in ("loss", "weights") for d in (256, 1024)}
    assert wide == {"fwd/bf16/D1024", "fwd/fp16/D1024", "stats/bf16/D1024", "stats/bf16/D1024/colmajor"} | g
    tiles = {  # (sm_90, sm_80) tiles, parts on sm_90, TMA on sm_90
        "fwd": ((128, 256), (128, 128), 4, True),
        "stats": ((128, 128), (128, 64), 4, True),
        "stats/colmajor": ((128, 128), (128, 64), 4, False),  # TMA cannot read the features: pointer loads
        "weights": ((256, 128), (128, 128), 4, True),
        "st_weights": ((256, 128), (128, 128), 8, True),  # eight parts: four spilled with two-part LSEs
        "sigmoid_loss": ((128, 256), (128, 128), 4, True),
        "sigmoid_weights": ((256, 128), (128, 128), 8, True),
    }
    for vid in wide:
        cfg90, cfg80 = v90[vid]["config"], v80[vid]["config"]
        *want, parts, tma = tiles[v90[vid]["kernel"] + ("/colmajor" if vid.endswith("/colmajor") else "")]
        assert [(cfg90["BLOCK_M"], cfg90["BLOCK_N"]), (cfg80["BLOCK_M"], cfg80["BLOCK_N"])] == want, vid
        # sm_80's statistics tiles are 128 x 64 with chunked D, their epilogue in four parts too (in one it
        # spilled on sm_90 at D = 72 once the kernel kept the soft gaps' sums: ``tile_config``)
        parts80 = 4 if v90[vid]["kernel"] == "stats" else 1
        assert cfg80.get("PARTS", 1) == parts80 and not cfg80.get("TMA"), vid
        assert cfg90["PARTS"] == parts and cfg90.get("TMA", False) == tma, vid
    # and the column-major features' accumulating GEMMs, K chunks of 32 on sm_80 (spilled under Triton 3.6)
    acc_colmajor = {f"matmul/bf16/D1024/colmajor/{mode}" for mode in ("acc", "acc-split")}
    assert all(v80[vid]["config"]["BLOCK_K"] == 32 < v90[vid]["config"]["BLOCK_K"] for vid in acc_colmajor)
    # and the split-precision fp32 dots' score tiles, 128 x 64 on sm_80 (128 x 128 sat at 253-255 registers
    # there, and spilled under Triton 3.8; the sigmoid forward and the soft target's kernels take 64 columns
    # on both)
    split80 = {f"{k}/tf32x3/D1024" for k in ("fwd", "lse", "sigmoid_weights")}
    split80 |= {"weights/tf32x3/D1024/G"}
    for vid in split80:
        cfg90, cfg80 = v90[vid]["config"], v80[vid]["config"]
        tiles = (cfg90["BLOCK_M"], cfg90["BLOCK_N"], cfg80["BLOCK_M"], cfg80["BLOCK_N"])
        assert tiles == (128, 128, 128, 64), vid
    # and the statistics beside a split-precision teacher: 32-column tiles on sm_80 (64 spilled 16-60 B once
    # the kernel kept the soft gaps' sums), 64 on sm_90
    split_teacher = {"stats/bf16/D1024/Ttf32x3x768"}
    for vid in split_teacher:
        assert (v90[vid]["config"]["BLOCK_N"], v80[vid]["config"]["BLOCK_N"]) == (64, 32), vid
    # and a 16-bit teacher's weights kernel: 128 x 32 tiles on sm_80 (128 x 64 spilled 12-20 B once the
    # teacher's soft part on the diagonal came from the masses), 128 x 64 on sm_90
    teacher16 = {f"st_weights/bf16/D1024/Tbf16x768/{k}" for k in "GMW"}
    for vid in teacher16:
        assert (v90[vid]["config"]["BLOCK_N"], v80[vid]["config"]["BLOCK_N"]) == (64, 32), vid
    differ = wide | acc_colmajor | split80 | split_teacher | teacher16
    differ |= {vid for vid in v90 if v90[vid]["kernel"] in DIAGONALS and _walk_of(vid) in differ}
    assert {vid for vid in v90 if v90[vid]["spec"] != v80[vid]["spec"]} == differ
    # the other column-major variants take the pointer-load fallbacks: no TMA anywhere
    assert not any(v90[vid]["config"].get("TMA") for vid in v90 if "/colmajor" in vid)
    assert {v90[vid]["config"]["BLOCK_N"] for vid in v90 if "/D72" in vid and "matmul" not in vid} == {64}


# The diagonal-score kernels and the column walks whose tiles they recompute
DIAGONALS = {"diag": "fwd", "st_diag": "stats", "st_tdiag": "stats"}


def _walk_of(vid: str) -> str:
    """The column walk whose diagonal scores the variant ``vid`` ("diag/...", "st_diag/...", "st_tdiag/...")
    recomputes: the contrastive forward or the soft target's statistics kernel of the same call."""
    kernel, rest = vid.split("/", 1)
    return DIAGONALS[kernel] + "/" + rest


@pytest.mark.parametrize("arch", ARCHS)
def test_diagonal_scores_take_their_walks_tiles(compiled, arch):
    """The diagonal scores the loss subtracts from the LSEs come from ``_diagonal_kernel``, which recomputes
    the walk's own diagonal tiles: bitwise the walk's scores only with the same tile sizes, dot precision,
    operand loads (TMA or pointers) and warps (the MMA instruction shapes), which every variant here must
    share with its walk (the contrastive forward, the soft target's statistics kernel). It runs at one
    pipeline stage (its loop is one to three tiles; the stages move loads, not products): at the walks'
    three, the 64 x 32 IEEE fp32 tiles spilled 4-16 B."""
    mine = aot.records(compiled, arch)
    diag = {vid: rec for vid, rec in mine.items() if rec["kernel"] in ("diag", "st_diag")}
    assert len(diag) == sum(1 for vid in aot.plan("test") if vid.split("/")[0] in ("diag", "st_diag")) > 0
    assert {rec["kernel"] for rec in diag.values()} == {"diag", "st_diag"}
    keys = ("BLOCK_M", "BLOCK_N", "BLOCK_D", "SINGLE_D", "DOT_PREC", "UPCAST", "num_warps")
    for vid, rec in diag.items():
        walk = mine[_walk_of(vid)]["config"]
        assert {k: rec["config"][k] for k in keys} == {k: walk[k] for k in keys}, vid
        assert rec["config"]["num_stages"] == 1, vid
        assert rec["config"].get("TMA", False) == walk.get("TMA", False), vid
    # a separate teacher's diagonal scores (``_teacher_diagonal_kernel``): the statistics kernel's teacher
    # tiles (its dot_tile at the same sizes, teacher D chunk, dot precision and warps)
    teacher = {vid: rec for vid, rec in mine.items() if rec["kernel"] == "st_tdiag"}
    assert len(teacher) == sum(1 for vid in aot.plan("test") if vid.startswith("st_tdiag/")) > 0
    keys = ("BLOCK_M", "BLOCK_N", "BLOCK_DT", "T_DOT_PREC", "T_UPCAST", "num_warps")
    for vid, rec in teacher.items():
        walk = mine["stats/" + vid.split("/", 1)[1]]["config"]
        assert {k: rec["config"][k] for k in keys} == {k: walk[k] for k in keys}, vid
        assert rec["config"]["num_stages"] == 1, vid


_PTX = """//
// Generated by LLVM NVPTX Back-End
.version 9.4
.target sm_90a
.visible .entry k(
	.param .u64 k_param_0
)
{
$L__func_begin0:
	.loc	1 10 0
	ld.param.u64 	%rd1, [k_param_0];
$L__tmp0:
	.loc	1 12 5                          // a comment
	ld.global.f32 	%f1, [%rd1];
	add.f32 	%f2, %f1, %f1;
$L__BB0_1:
	st.global.f32 	[%rd1], %f2;
	ret;
$L__tmp1:
$L__func_end0:
}
	.file	1 "/a/kernels.py"
	.section	.debug_abbrev
	{
.b8 1
	}
"""


def test_code_digest_sees_instructions_not_source_positions():
    """``code_digest`` (``--diff``: what a refactor did to the compiled code) ignores what only places the
    source (line directives, the inlining scopes' labels, comments, file names, debug sections) and sees
    every instruction and branch label."""
    base = aot.code_digest(_PTX)
    moved = _PTX.replace("1 10 0", "2 99 4").replace("$L__tmp0:", "$L__tmp7:\n$L__tmp8:")
    moved = moved.replace("/a/kernels.py", "/b/k.py").replace("a comment", "").replace(".b8 1", ".b8 2")
    assert aot.code_digest(moved) == base
    assert len(base) == 16 and int(base, 16) >= 0
    for edit in [("add.f32", "mul.f32"), ("%f1, %f1", "%f1, %f2"), ("$L__BB0_1:", "$L__BB0_2:")]:
        assert aot.code_digest(_PTX.replace(*edit)) != base, edit


def test_diff_reports_changed_and_missing_variants():
    def run(code, regs, extra=()):
        variants = {"fwd/x": dict(spec="s1"), "lse/x": dict(spec="s2")} | {v: dict(spec="s3") for v in extra}
        res = dict(code=code, registers=regs, spill_stores=0, spill_loads=0, shared=1024)
        return dict(
            variants=variants,
            variants_by_arch={"90": variants},
            compiled={"90": {s: dict(res) for s in ("s1", "s2", "s3")}},
        )

    assert aot.diff(run("a", 100), run("a", 100)) == []
    assert aot.diff(run("a", 100), run("b", 102)) == [
        "sm_90 fwd/x: code a -> b, registers 100 -> 102",
        "sm_90 lse/x: code a -> b, registers 100 -> 102",
    ]
    assert aot.diff(run("a", 100), run("a", 100, ["diag/x"])) == ["sm_90 diag/x: only in the second run"]


def test_every_compiled_variant_has_a_code_digest(compiled):
    for arch in ARCHS:
        done = {spec: res for spec, res in compiled["compiled"][str(arch)].items() if not res.get("error")}
        assert done and all(len(res["code"]) == 16 for res in done.values()), arch


# The GPUs whose tensor cores take mma.sync, as sm_80's, with 99 KiB of shared memory per block (100 KB per
# SM): sm_86 / sm_89 / sm_120, the RTX 30 / 40 / 50 series (``triton_utils.mma_sync``).
MMA_SYNC_ARCHS = (86, 89, 120)


def test_mma_sync_gpus_take_the_sm80_tiles():
    """Every variant of the grid is launched on sm_86, sm_89 and sm_120 with sm_80's specialisation (the
    same tiles, warps and stages; captured through the real backends as the compile test captures
    them). ``benchmarks/results/model/aot_sm89.md`` / ``aot_sm120.md`` have them compiled for those
    targets."""
    code = (
        "import json, sys; from benchmarks import aot; calls = aot.grid('test'); "
        "json.dump({a: {v: r['spec'] for v, r in aot.capture(calls, a).items()} "
        f"for a in (80, {', '.join(map(str, MMA_SYNC_ARCHS))})}}, sys.stdout)"
    )
    specs = json.loads(_without_interpreter(["-c", code]))
    assert set(specs["80"]) == set(aot.plan("test"))
    for arch in MMA_SYNC_ARCHS:
        differ = sorted(v for v in specs["80"] if specs[str(arch)].get(v) != specs["80"][v])
        assert not differ, f"sm_{arch} launches {len(differ)} variants unlike sm_80: {differ[:8]}"


def test_sm80_tiles_fit_the_mma_sync_gpus(compiled):
    """sm_80's variants (the tiles the mma.sync GPUs launch) use at most 99 KiB of shared memory, the
    per-block limit of sm_86, sm_89 and sm_120 (sm_80 allows 163)."""
    limit = min(aot.ARCHS[a]["smem_limit"] for a in MMA_SYNC_ARCHS)
    assert limit == 99 * 1024
    over = {
        vid: compiled["compiled"]["80"][rec["spec"]]["shared"]
        for vid, rec in aot.records(compiled, 80).items()
        if compiled["compiled"]["80"][rec["spec"]]["shared"] > limit
    }
    assert not over, over


def test_tcgen05_gpus_launch_at_most_eight_warps():
    """On sm_100 (B200: tensor cores through tcgen05) Triton lowers a dot on more than eight warps to
    mma.sync; the launchers keep every variant of the grid within eight there (the wide G kernels and the
    teacher's weights kernel take sixteen on sm_90). Captured through the real backends, no compile;
    ``benchmarks/results/model/aot_sm100.md`` has them compiled: every tensor-core dot on tcgen05."""
    code = (
        "import json, sys; from benchmarks import aot; calls = aot.grid('test'); "
        "json.dump({v: r['num_warps'] for v, r in aot.capture(calls, 100).items()}, sys.stdout)"
    )
    warps = json.loads(_without_interpreter(["-c", code]))
    assert set(warps) == set(aot.plan("test"))
    over = {vid: w for vid, w in warps.items() if w > 8}
    assert not over, over


def test_classify_dots_reads_each_lowering():
    """``aot.classify_dots`` on the TTGIR forms of a dot: mma.sync (a ``tt.dot`` with an MMA v2 result),
    FMA (IEEE fp32, a blocked result), wgmma, and tcgen05 (no result: it accumulates in tensor memory,
    its fp32 operands TF32)."""
    ttgir = "\n".join(
        [
            "#mma = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0}>",
            "    %a = tt.dot %x, %y, %z : tensor<128x64xbf16, #d0> * tensor<64x128xbf16, #d1>"
            " -> tensor<128x128xf32, #mma>",
            "    %b = tt.dot %x, %y, %z : tensor<64x16xf32, #d0> * tensor<16x64xf32, #d1>"
            " -> tensor<64x64xf32, #blocked>",
            "    %c = ttng.warp_group_dot %x, %y, %z {inputPrecision = tf32}"
            " : !ttg.memdesc<128x32xf32, #s> * x",
            "      ttng.tc_gen5_mma %x, %y, %acc, %f, %p[%t] {is_async} : !ttg.memdesc<128x64xbf16, #s>, x",
            "      ttng.tc_gen5_mma %x, %y, %acc, %f, %p[%t] {is_async} : !ttg.memdesc<128x32xf32, #s>, x",
        ]
    )
    got = [(d["kind"], d["dtype"], d["precision"], d["needs_tc"]) for d in aot.classify_dots(ttgir)]
    assert got == [
        ("mma.sync", "bf16", "ieee", True),
        ("fma", "f32", "ieee", False),
        ("wgmma", "f32", "tf32", True),
        ("tcgen05", "bf16", "ieee", True),
        ("tcgen05", "f32", "tf32", True),
    ]
