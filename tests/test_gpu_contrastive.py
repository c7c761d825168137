"""GPU checks of the contrastive loss (run by benchmarks/gpu_suite.sh; skipped with a reason on CPU).

The same rule as tests/test_contrastive.py (its ``_check``, on "cuda"): the loss and every gradient err
from the float64 loss by at most twice what torch's naive loss in the features' dtype errs, plus 8 fp32
ulps of their error scale, plus, on the Triton path in a 16-bit dtype, what rounding G to it adds.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests._ref import assert_relatively_exact, features, force_plan, pair_value, run_loss
from tests.test_contrastive import _check, _check_huge_logits, check_diagonal_is_the_walks
from vlkernels import contrastive_loss
from vlkernels.ops.contrastive_triton import both_lse, weights
from vlkernels.ops.triton_utils import matmul

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch,dim", [(1, 1), (257, 129), (4099, 512), (8192, 1024), (3001, 256)])
@pytest.mark.parametrize("workspace_mb", ["0", "256"])
def test_triton_cuda_matches_float64(monkeypatch, dtype, batch, dim, workspace_mb):
    # "0": G in slabs of one block, every text gradient from the column pass; "256": the default plan
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", workspace_mb)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # torch's fp32 base: IEEE
    _check("triton", batch, dim, dtype, scale=50.0, eps=0.1, grad_out=1.3, device="cuda")


@pytest.mark.parametrize("norm", [1e3, 1e7, 1e13, 1e22])
def test_triton_cuda_huge_logits(monkeypatch, norm):
    """Logits past fp32's integer range on the float64 rule (tests/test_contrastive.py's check on the
    GPU's real tiles): passes only where the G kernel recomputes the forward's scores bitwise (the same
    dots in another tile shape), which the interpreter cannot show."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # torch's fp32 base: IEEE
    _check_huge_logits(norm, batch=1031, dim=200, device="cuda")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_cuda_large_chunks_in_slabs(monkeypatch, dtype):
    """The plan large batches take (B = 262144, D = 1024 at 256 MiB: chunks of 8192 rows, G in slabs of
    4096 columns, 162816 columns covered), scaled down with the GPU's real tiles: 9001 rows in chunks of
    4096 (the last one short), slabs of 2048 columns (the last one short), 5120 columns covered (two
    slabs and half of a third), the rest from the column pass; on the float64 rule."""
    from vlkernels.ops import contrastive_triton as ct

    calls = force_plan(monkeypatch, ct, chunk=4096, slab=2048, covered=5120)
    _check("triton", 9001, 1024, dtype, scale=50.0, eps=0.1, grad_out=1.3, device="cuda")
    assert calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,dim,row0", [(257, 64, 0), (4099, 1024, 0), (1000, 256, 3001)])
def test_triton_cuda_diagonal_is_the_forwards(monkeypatch, dtype, rows, dim, row0):
    """tests/test_contrastive.py's ``check_diagonal_is_the_walks`` on the GPU's real tiles (the 128 x 256
    TMA tiles at D = 1024 in bf16, IEEE fp32 at D = 64 / 256): ``_diagonal_kernel``'s recomputed tiles give
    bitwise the forward's scores, or the loss keeps an ulp of |S| per row."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    check_diagonal_is_the_walks("triton", rows, dim, row0, device="cuda", dtype=dtype)


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cuda_confident_rows_keep_their_gradient(monkeypatch, impl, eps):
    """tests/test_contrastive.py's ``test_confident_rows_at_s_60_keep_their_gradient`` on the GPU (fp32,
    IEEE dots): the loss and every gradient within 16 ulps of their own error scales against the float64
    reference that keeps the diagonal terms (``assert_relatively_exact``): the off-diagonal masses on the
    real tiles, where the forward's branch picks the tiles the diagonal crosses."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(257, 64, generator=g), dim=1)
    txt = torch.nn.functional.normalize(img + 0.1 * torch.randn(257, 64, generator=g), dim=1)
    s = torch.tensor(60.0, device="cuda")
    got = run_loss(contrastive_loss, img.cuda(), txt.cuda(), s, 1.3, impl=impl, label_smoothing=eps)
    assert_relatively_exact([x.cpu() for x in got], img, txt, 60.0, eps, 1.3)


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("batch,dim", [(64, 32), (1031, 256), (4099, 1024)])
def test_cuda_near_one_hot_loss_subtracts_the_pass_own_diagonal(monkeypatch, impl, batch, dim):
    """tests/test_contrastive.py's near-one-hot loss check on the GPU's real tiles (IEEE fp32: torch's naive
    the same precision): the loss within twice naive's error plus 8 ulps of itself. The Triton path's
    diagonal scores come from ``_diagonal_kernel``, the forward's diagonal tiles recomputed with its tile
    config: this passes only where that is bitwise the forward's scores (an ulp of |S| per row otherwise,
    25-120x naive's error on CPU), which the interpreter cannot show."""
    import torch.nn.functional as F

    from tests._ref import assert_within_float64_error
    from vlkernels.reference import contrastive_loss_naive

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    g = torch.Generator().manual_seed(batch)
    img = F.normalize(torch.randn(batch, dim, generator=g), dim=1)
    # noise of norm ~0.6 at every width (cosines ~0.85: the CPU test's well-matched pairs)
    txt = F.normalize(img + 0.6 / math.sqrt(dim) * torch.randn(batch, dim, generator=g), dim=1)
    img, txt, s = img.cuda(), txt.cuda(), torch.tensor(30.0, device="cuda")
    got = contrastive_loss(img, txt, s, impl=impl)
    base = contrastive_loss(img, txt, s, impl="naive")
    exact = contrastive_loss_naive(img.double(), txt.double(), s.double())
    assert_within_float64_error([got], [base], [exact], [0.0], names=("loss",))


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_cuda_fp32_ieee(monkeypatch, impl):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    _check(impl, 1000, 300, torch.float32, scale=30.0, grad_out=0.7, device="cuda")


@pytest.mark.parametrize("split", ["tf32x3", "bf16x6"])
@pytest.mark.parametrize("batch,dim", [(1000, 300), (4099, 1024)])
def test_cuda_split_fp32_dots(monkeypatch, matmul_precision, split, batch, dim):
    """The split-precision fp32 dots (experimental: VLKERNELS_FP32_DOTS) run on tensor cores with
    fp32-class results: against float64, the loss and every gradient within 10x torch fp32's own error
    plus 8 ulps of their scale (tests/_ref.py's rule with factor 10; a plain TF32 product errs 77-800x
    torch's in the gradients, benchmarks/results/model/fp32_dots_emulated.md). Whether they stay within
    2x, the rule for adopting one, is benchmarks/bench_fp32_dots.py's measurement (it reports the ratios)."""
    from tests.test_fp32_dots import check_fp32_class

    monkeypatch.setenv("VLKERNELS_FP32_DOTS", split)
    matmul_precision("highest")
    check_fp32_class("cuda", batch, dim)


def test_auto_picks_triton_on_cuda():
    from vlkernels._dispatch import resolve_impl

    assert resolve_impl("auto", torch.device("cuda")) == "triton"


def test_int64_offsets_beyond_2_to_31_elements():
    # K has more than 2^31 elements: offsets into it must be computed in int64.
    dim = 1024
    rows = (2**31) // dim + 4099
    k = torch.empty(rows, dim, dtype=torch.bfloat16, device="cuda")
    k.normal_()
    k = torch.nn.functional.normalize(k, dim=1)
    q = torch.nn.functional.normalize(torch.randn(64, dim, device="cuda"), dim=1).bfloat16()
    k[-3:] = q[:3]  # the last rows matter: they sit past the 2^31 boundary
    scale = torch.tensor(20.0, device="cuda")
    lse2, lse2_k, *_ = both_lse(q, k, scale)  # base 2, the kernels' units
    lse, lse_k = (lse2 * math.log(2.0)).float(), (lse2_k * math.log(2.0)).float()  # float64 LSEs
    tail = scale * q.float() @ k[-5000:].float().T
    assert torch.isfinite(lse).all() and torch.isfinite(lse_k).all()
    # The matching rows in the tail dominate the row LSE of the first three queries.
    assert (lse[:3] >= torch.logsumexp(tail[:3], 1) - 1e-3).all()
    torch.testing.assert_close(lse_k[-5000:], torch.logsumexp(tail, 0), atol=1e-3, rtol=1e-3)
    g = torch.empty(64, rows, dtype=torch.bfloat16, device="cuda")
    weights(q, k, scale, lse2, lse2_k, g, None, 0, None, rows)
    dq = matmul(g, k, torch.ones(1, device="cuda"), torch.empty(64, dim, device="cuda"))
    assert torch.isfinite(dq).all() and dq[:3].abs().sum() > 0


def test_memory_is_o_b():
    batch, dim = 65536, 512
    img, txt = features(batch, dim, torch.bfloat16, device="cuda")
    img.requires_grad_()
    txt.requires_grad_()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    contrastive_loss(img, txt, torch.tensor(30.0, device="cuda"), impl="triton").backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base - 2 * batch * dim * 2  # beyond the two gradients
    # v2's promise: 32 bytes per row plus the 256 MiB workspace (16 MiB of allocator slack)
    assert extra < 32 * batch + (256 << 20) + (16 << 20), extra


def test_triton_cuda_is_deterministic():
    img, txt = features(3001, 256, torch.bfloat16, device="cuda", seed=7)
    scale = torch.tensor(40.0, device="cuda")
    runs = [
        run_loss(lambda i, t, s: contrastive_loss(i, t, s, impl="triton"), img, txt, scale, 0.9) for _ in "ab"
    ]
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [64, 384, 1000, 1024])
def test_matmul_pair_accumulate_tiles_cuda(dtype, n):
    """The accumulating GEMM's tiles on the GPU (64 / 128 / 256 wide by D, the 256-wide one with its
    epilogue in four parts; n = 1000 masks the last tile): 6 products summed in the pair (hi, int8 lo)
    agree with the float64 sum to ~2^-16 of the largest partial sum; storing gives the float64 product
    within one rounding and the fp32 accumulation's bound."""
    from vlkernels.ops.triton_utils import matmul_config

    g = torch.Generator(device="cuda").manual_seed(n)
    m, k, steps = 300, 520, 6
    one = torch.ones(1, device="cuda")
    hi = torch.zeros(m, n, dtype=dtype, device="cuda")
    lo = torch.zeros(m, n, dtype=torch.int8, device="cuda")
    ref, peak = torch.zeros(m, n, dtype=torch.float64, device="cuda"), 0.0
    assert matmul_config(dtype, True, True, n, True)["BLOCK_N"] == {64: 64, 384: 128, 1000: 256, 1024: 256}[n]
    for _ in range(steps):
        a = torch.randn(m, k, generator=g, device="cuda").to(dtype)
        b = torch.randn(k, n, generator=g, device="cuda").to(dtype)
        matmul(a, b, one, hi, accumulate=True, lo=lo)
        ref += a.double() @ b.double()
        peak = max(peak, ref.abs().max().item())
    eps = torch.finfo(dtype).eps
    err = (pair_value(hi, lo) - ref).abs().max().item()
    assert err <= 4 * steps * eps * eps * peak + 1e-6 * peak, (err, peak)
    out = matmul(a, b, one, torch.empty(m, n, dtype=dtype, device="cuda")).double()
    exact = a.double() @ b.double()
    # one rounding to the dtype plus fp32 accumulation over k terms (bounded by |a| @ |b|)
    bound = eps * exact.abs() + 2 * k * 2.0**-24 * (a.double().abs() @ b.double().abs())
    assert ((out - exact).abs() <= bound).all(), ((out - exact).abs() / bound).max().item()
