"""fp32 inputs: ``VLKERNELS_FP32_DOTS`` (ieee | tf32x3 | bf16x6) picks how the Triton kernels run fp32 dots
under torch's default "highest" precision; torch's own setting decides first ("high" / "medium": TF32).

On CPU the kernels run in Triton's interpreter, whose dots are numpy's whatever the precision: these tests
check the plumbing (the precision each launcher passes, the tile configs the split-precision dots take on
a GPU, the error for a bad value) and that the values and every gradient still match the references
through those paths. The split products' accuracy is measured on a GPU (benchmarks/bench_fp32_dots.py;
modelled on CPU by its ``--emulate``; tests/test_gpu_contrastive.py)."""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks import bench_fp32_dots
from tests._ref import assert_within_float64_error, features, run_loss, term_scales
from tests.test_contrastive import _check as check_contrastive
from tests.test_sigmoid import check as check_sigmoid
from tests.test_soft_target import _check as check_soft_target
from vlkernels import contrastive_loss
from vlkernels.ops import soft_target_triton
from vlkernels.ops.sigmoid_triton import loss_config
from vlkernels.ops.triton_utils import config, dot_precision, fp32_dots, matmul_config, split_dots
from vlkernels.reference import contrastive_loss_naive

SPLIT = ["tf32x3", "bf16x6"]
KNOB_VALUES = [(None, "ieee"), ("", "ieee"), ("ieee", "ieee"), (" TF32x3 ", "tf32x3"), ("BF16X6", "bf16x6")]


def check_fp32_class(device, batch, dim, scale=30.0, grad_out=0.7, within=10.0) -> list[float]:
    """The Triton loss under the current VLKERNELS_FP32_DOTS against float64, by tests/_ref.py's rule
    with ``within`` for its factor: the loss and every gradient within ``within`` x torch fp32's own error
    plus 8 fp32 ulps of the quantity's scale. Returns each error over torch's."""
    img, txt = features(batch, dim, device=device, seed=batch)
    s = torch.tensor(scale, device=device)
    ref = run_loss(contrastive_loss_naive, img.double(), txt.double(), s.double(), grad_out)
    base = run_loss(contrastive_loss_naive, img, txt, s, grad_out)
    got = run_loss(lambda i, t, c: contrastive_loss(i, t, c, impl="triton"), img, txt, s, grad_out)
    assert all(g.dtype == torch.float32 for g in got)
    assert_within_float64_error(got, base, ref, term_scales(batch, scale, grad_out), factor=within)
    return [
        (g.double() - r).abs().max().item() / max((b.double() - r).abs().max().item(), 1e-300)
        for g, b, r in zip(got, base, ref, strict=True)
    ]


@pytest.fixture
def highest(matmul_precision):
    """torch's default float32 matmul precision for the test (``matmul_precision`` restores the value
    before it)."""
    matmul_precision("highest")


@pytest.mark.parametrize("value,want", KNOB_VALUES)
def test_knob_values(monkeypatch, value, want):
    if value is None:
        monkeypatch.delenv("VLKERNELS_FP32_DOTS", raising=False)
    else:
        monkeypatch.setenv("VLKERNELS_FP32_DOTS", value)
    assert fp32_dots() == want


@pytest.mark.parametrize("value", ["fp64", "tf32", "3xtf32"])
def test_bad_knob_is_named(monkeypatch, highest, value):
    monkeypatch.setenv("VLKERNELS_FP32_DOTS", value)
    with pytest.raises(ValueError, match="VLKERNELS_FP32_DOTS must be one of"):
        fp32_dots()
    img, txt = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match="VLKERNELS_FP32_DOTS"):
        contrastive_loss(img, txt, torch.tensor(2.0), impl="triton")
    # the torch path has no Triton dots: the knob is not read there
    contrastive_loss(img, txt, torch.tensor(2.0), impl="torch")


@pytest.mark.parametrize("split", SPLIT)
def test_torch_precision_decides_first(monkeypatch, highest, matmul_precision, split):
    monkeypatch.setenv("VLKERNELS_FP32_DOTS", split)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert dot_precision(torch.float32) == split and split_dots(torch.float32)
    assert dot_precision(torch.bfloat16) == "tf32" and not split_dots(torch.float16)
    for precision in ("high", "medium"):
        matmul_precision(precision)
        assert dot_precision(torch.float32) == "tf32" and not split_dots(torch.float32)


def test_interpreter_runs_bf16x6_as_tf32x3(monkeypatch, highest):
    """Triton's interpreter refuses "bf16x6" (its dots are numpy's, exact in fp32 either way)."""
    monkeypatch.setenv("VLKERNELS_FP32_DOTS", "bf16x6")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dot_precision(torch.float32) == "tf32x3"


@pytest.mark.parametrize("split", SPLIT)
def test_gpu_configs(monkeypatch, highest, split):
    """The tiles the split-precision dots take on a GPU (benchmarks/aot.py compiles them without spills on
    sm_90 and sm_80): tensor-core tiles with D chunks of 16; IEEE keeps its CUDA-core tiles."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("VLKERNELS_FP32_DOTS", split)
    f32 = torch.float32
    want = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_D=16, num_warps=8, num_stages=3)
    assert config(1024, f32, "fwd") == want and config(1024, f32, "weights") == want
    assert config(100, f32, "weights")["BLOCK_N"] == 64  # unaligned rows: 64-column tiles, as for TF32
    # mma.sync (sm_80): 64-column tiles (at 128, 253-255 registers, spills with some Triton releases)
    assert all(config(1024, f32, kind, 80) == dict(want, BLOCK_N=64) for kind in ("fwd", "weights"))
    assert loss_config(1024, f32) == dict(want, BLOCK_N=64)
    gemm = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=16, num_warps=8, num_stages=3)
    assert matmul_config(f32, True, False, 1024) == gemm
    assert loss_config(1024, f32, 80) == dict(want, BLOCK_N=64)
    st = soft_target_triton.tile_config
    assert st(1024, f32, None, "weights") == dict(want, BLOCK_N=64, BLOCK_DT=16)
    teacher = (torch.empty(0, 768),)
    blocks = ("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_DT")
    g = st(1024, torch.bfloat16, teacher, "weights")
    assert [g[k] for k in blocks] == [64, 32, 64, 16]
    stats = st(1024, torch.bfloat16, teacher, "stats")
    assert [stats[k] for k in blocks[2:]] + [stats["num_stages"]] == [64, 16, 2]
    assert st(1024, f32, teacher, "stats")["BLOCK_D"] == 16
    monkeypatch.setenv("VLKERNELS_FP32_DOTS", "ieee")
    assert config(1024, f32, "fwd")["BLOCK_M"] == 64 and config(1024, f32, "fwd")["num_warps"] == 4
    assert matmul_config(f32, True, False, 1024) == dict(
        BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=3
    )


@pytest.mark.interpreter
@pytest.mark.parametrize("split", SPLIT)
@pytest.mark.parametrize("batch,dim", [(1, 1), (17, 100), (33, 65)])
def test_contrastive_split_path_matches_naive(monkeypatch, highest, split, batch, dim):
    monkeypatch.setenv("VLKERNELS_FP32_DOTS", split)
    check_contrastive("triton", batch, dim, eps=0.1, grad_out=1.7)


@pytest.mark.interpreter
@pytest.mark.parametrize("split", SPLIT)
def test_fp32_class_check(monkeypatch, highest, split):
    """tests/test_gpu_contrastive.py's check of the split dots on a GPU, here through the interpreter
    (numpy's fp32 dots: fp32 class)."""
    monkeypatch.setenv("VLKERNELS_FP32_DOTS", split)
    ratios = check_fp32_class("cpu", 37, 24)
    assert len(ratios) == 4 and all(0 <= r < float("inf") for r in ratios)


@pytest.mark.interpreter
@pytest.mark.parametrize("split", SPLIT)
def test_sigmoid_split_path_matches_float64(monkeypatch, highest, split):
    monkeypatch.setenv("VLKERNELS_FP32_DOTS", split)
    check_sigmoid("triton", 17, 100)


@pytest.mark.interpreter
@pytest.mark.parametrize("split", SPLIT)
@pytest.mark.parametrize("t_dim", [None, 24])
def test_soft_target_split_path_matches_naive(monkeypatch, highest, split, t_dim):
    monkeypatch.setenv("VLKERNELS_FP32_DOTS", split)
    check_soft_target("triton", 17, 100, t_dim=t_dim, grad_out=0.7)


def test_emulated_split_products():
    """The CPU emulation the design notes quote: parts that add up to the operand (to fp32 rounding of the
    last part), tf32x3 / bf16x6 products near fp32's accuracy, a plain TF32 product far from it."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 300, generator=g), torch.randn(300, 48, generator=g)
    exact = a.double() @ b.double()
    for mode, bits in (("tf32x3", 10), ("bf16x6", 7)):
        parts = bench_fp32_dots._parts(a, mode)
        assert all((p.view(torch.int32) & ((1 << (23 - bits)) - 1) == 0).all() for p in parts)
        assert (sum(p.double() for p in parts) - a.double()).abs().max() <= 2.0**-22 * a.abs().max()
        err = (bench_fp32_dots.emulated_mm(a, b, mode).double() - exact).abs().max()
        ieee = ((a @ b).double() - exact).abs().max()
        assert err <= 4 * ieee, (mode, err, ieee)
    tf32 = bench_fp32_dots._round_mantissa(a, 10) @ bench_fp32_dots._round_mantissa(b, 10)
    assert (tf32.double() - exact).abs().max() > 30 * ((a @ b).double() - exact).abs().max()


@pytest.mark.interpreter
def test_gpu_measurement_script_runs(monkeypatch, highest, tmp_path):
    """benchmarks/bench_fp32_dots.py's GPU measurement, run here through the interpreter at tiny sizes (its
    timer swapped for one call), so that the one GPU run it gets does not die on a typo: rows for every
    mode, errors against float64 within 1e-5 (fp32 class: the interpreter's dots are numpy's), the report."""
    import triton.testing

    monkeypatch.setattr(bench_fp32_dots, "GPU_CASES", [(33, 40, 30.0, 0.2)])
    monkeypatch.setattr(bench_fp32_dots, "TIME_CASE", (24, 16))
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, warmup, rep: (fn(), 1.0)[1])
    monkeypatch.setenv("VLKERNELS_FP32_DOTS", "ieee")
    rows = bench_fp32_dots.measure("cpu")
    assert os.environ["VLKERNELS_FP32_DOTS"] == "ieee"  # restored
    errors = [r for r in rows if r["kind"] == "error"]
    assert [r["mode"] for r in errors] == ["torch fp32", "ieee", "tf32x3", "bf16x6"]
    for r in errors:
        assert all(0 <= e < 1e-5 for e in r["err"].values()), r
    times = [r for r in rows if r["kind"] == "time"]
    assert [r["mode"] for r in times] == ["torch fp32", "ieee", "tf32x3", "bf16x6"]
    assert times[0]["modelled_h100_ms"] is None and times[2]["modelled_h100_ms"][0] > 0
    report = bench_fp32_dots.measured_report(rows, dict(device="cpu", torch="x", triton="y"))
    assert "| B=33 D=40 s=30 | tf32x3 |" in report and "| 24 x 16 | bf16x6 | 1.00 |" in report
    ieee_row = next(line for line in report.splitlines() if line.startswith("| B=33 D=40 s=30 | ieee |"))
    assert ieee_row.endswith("| 1.00 |")  # the IEEE mode against itself
