"""Contrastive loss: every impl against the naive reference, values and all gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests._ref import (
    NEAR_ONE_HOT_DRAWS,
    TOL,
    PeakLive,
    as_float64,
    assert_close_all,
    assert_relatively_exact,
    assert_within_float64_error,
    exact_contrastive,
    examples,
    features,
    force_plan,
    g_rounding,
    largest_tensors,
    logit_term_scales,
    pair_value,
    paired_features,
    record_tma,
    run_loss,
    smoothed_targets,
    term_scales,
)
from vlkernels import ClipLoss, contrastive_loss
from vlkernels._dispatch import resolve_impl
from vlkernels.reference import contrastive_loss_naive

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _naive(img, txt, scale, **kw):
    return contrastive_loss(img, txt, scale, impl="naive", **kw)


def _check(
    impl, batch, dim, dtype=torch.float32, scale=14.3, eps=0.0, grad_out=1.0, reduction="mean", device="cpu"
):
    """The loss and the grads of (image, text, logit_scale) of ``impl`` on the float64 rule
    (``_check_features``), on ``device`` (tests/test_gpu_contrastive.py passes "cuda"); returns them."""
    img, txt = features(batch, dim, dtype, device=device, seed=batch * 1000 + dim)
    return _check_features(impl, img, txt, scale, grad_out, label_smoothing=eps, reduction=reduction)


def _check_features(impl, img, txt, scale, grad_out, label_smoothing=0.0, reduction="mean", terms=None):
    """The loss and the grads of ``impl`` on these features, on flash-attention's rule: they err from the
    float64 loss by at most twice what torch's naive loss in the features' dtype errs
    (``assert_within_float64_error``), and, on the Triton path in a 16-bit dtype, what rounding
    G = P_row + P_col - 2 targets to it adds, each term scaled by s g / (2B) (``g_rounding``). Gradients
    in the features' dtype, the loss and d_scale in fp32 (as naive's); returns them. ``terms``: the error
    scales (default ``term_scales``, for unit features; ``logit_term_scales`` for others)."""
    batch, dtype, device = img.shape[0], img.dtype, img.device
    kw = dict(label_smoothing=label_smoothing, reduction=reduction)
    s = torch.tensor(scale, device=device)  # run_loss makes a fresh leaf of it for each run
    got = run_loss(contrastive_loss, img, txt, s, grad_out, impl=impl, **kw)
    img64, txt64, scale64 = as_float64(img, txt, s)[:3]
    exact = run_loss(contrastive_loss_naive, img64, txt64, scale64, grad_out, **kw)
    base = run_loss(_naive, img, txt, s, grad_out, **kw)
    g = grad_out * (2.0 if reduction == "sum" else 1.0)  # "sum": the two directional means summed
    rounding = None
    if impl == "triton":
        logits = scale * img64 @ txt64.T
        g64 = logits.softmax(1) + logits.softmax(0) - 2.0 * smoothed_targets(batch, label_smoothing, device)
        rounding = g_rounding(dtype, exact, g64, img64, txt64, g * scale / (2 * batch))
    terms = terms or term_scales(batch, scale, g)
    assert_within_float64_error(got, base, exact, terms, rounding=rounding)
    return got


@pytest.mark.parametrize("batch", [1, 2, 3, 17, 127, 257])
@pytest.mark.parametrize("dim", [1, 7, 64, 100, 129])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_torch_matches_naive_shapes(batch, dim, eps):
    _check("torch", batch, dim, eps=eps, grad_out=1.7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_torch_matches_naive_dtypes_scales(dtype, scale):
    _check("torch", 33, 65, dtype=dtype, scale=scale, eps=0.1, grad_out=0.3)


def test_torch_small_chunks_match(monkeypatch):
    monkeypatch.setenv("VLKERNELS_TORCH_CHUNK_ROWS", "5")
    _check("torch", 37, 19, eps=0.1, grad_out=2.0)


@pytest.mark.interpreter
@pytest.mark.parametrize(
    "batch,dim",
    [(1, 1), (2, 7), (3, 64), (17, 100), (17, 129), (40, 1), (33, 65), (64, 32)],
)
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_triton_matches_naive_shapes(batch, dim, eps):
    _check("triton", batch, dim, eps=eps, grad_out=1.7)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch", [1, 70])
def test_triton_wide_tiles_match_naive(dtype, batch):
    """16-bit features with D a multiple of 16 above 64 take the wide score tiles: the forward's, each
    tile's epilogue in four column parts (config "fwd_wide"; in the interpreter 16 x 64 tiles, parts of
    16: at 70 columns the second tile's last two parts hold no column at all), and the G kernel's, read
    through tensor descriptors with its epilogue in four parts ("weights_wide": 32 x 64 here)."""
    from vlkernels.ops.contrastive_triton import weights_config
    from vlkernels.ops.triton_utils import config

    assert config(80, dtype, "fwd_wide").get("PARTS") == 4
    assert config(80, dtype, "fwd_wide", arch=80).get("PARTS", 1) == 1  # mma.sync: 128 x 128
    assert "PARTS" not in config(72, dtype, "fwd_wide")  # no divisibility hint
    x = torch.zeros(4, 80, dtype=dtype)
    assert (
        weights_config(80, dtype, None, x, x)["TMA"]
        and weights_config(80, dtype, 80, x, x).get("TMA") is None
    )
    _check("triton", batch, 80, dtype=dtype, eps=0.1, grad_out=1.3)


def test_wide_tiles_switch(monkeypatch):
    """VLKERNELS_WIDE_TILES=0 gives the 128 x 128 tiles everywhere (the GPU suite's baseline for the wide
    ones); anything but 0 / 1 is an error naming the variable."""
    from vlkernels.ops.contrastive_triton import weights_config
    from vlkernels.ops.soft_target_triton import tile_config
    from vlkernels.ops.triton_utils import config

    x = torch.zeros(4, 1024, dtype=torch.bfloat16)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the GPU configs
    assert config(1024, torch.bfloat16, "fwd_wide")["BLOCK_N"] == 256
    monkeypatch.setenv("VLKERNELS_WIDE_TILES", "0")
    assert config(1024, torch.bfloat16, "fwd_wide") == config(1024, torch.bfloat16, "fwd")
    assert weights_config(1024, torch.bfloat16, None, x, x) == config(1024, torch.bfloat16, "weights")
    narrow = tile_config(1024, torch.bfloat16, None, "stats")  # 128 x 64, pointer loads (epilogue in parts)
    assert (narrow["BLOCK_M"], narrow["BLOCK_N"]) == (128, 64) and "TMA" not in narrow
    monkeypatch.setenv("VLKERNELS_WIDE_TILES", "yes")
    with pytest.raises(ValueError, match="VLKERNELS_WIDE_TILES"):
        config(1024, torch.bfloat16, "fwd_wide")


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_wide_tiles_fall_back_for_strided_features(monkeypatch, dtype):
    """Features TMA cannot read (a column-major view: last stride not 1) take the pointer-load configs,
    forward and G (with the same plan and workspace: its column blocks are the narrower ones), and still
    match naive."""
    from vlkernels.ops import contrastive_triton as ct

    picked = record_tma(
        monkeypatch, ct, ("weights_config", "forward_config")
    )  # the backward's, the forward's
    img, txt = features(37, 80, dtype, seed=5)
    img = img.t().contiguous().t()
    assert img.stride(1) != 1
    _check_features("triton", img, txt, 14.3, 1.3, label_smoothing=0.1)
    assert picked and not any(picked), picked
    picked.clear()
    _check("triton", 37, 80, dtype=dtype, eps=0.1, grad_out=1.3)
    assert picked and all(picked), picked


def test_tma_ready_needs_unit_last_stride_and_16_byte_alignment():
    """The wide G kernels (and the sigmoid forward) read through TMA descriptors only features with unit
    last stride, a 16-byte aligned base and 16-byte aligned rows; the rest take the pointer-load
    configs."""
    from vlkernels.ops.triton_utils import tma_ready

    x = torch.zeros(8, 80, dtype=torch.bfloat16)
    assert tma_ready(x, x) and tma_ready(x[2:], x[:, 8:])  # 160-byte rows, bases 320 / 16 bytes on
    assert not tma_ready(x, x.t().contiguous().t())  # column-major
    assert not tma_ready(x[:, 1:])  # base 2 bytes off
    assert not tma_ready(torch.zeros(8, 100, dtype=torch.bfloat16))  # 200-byte rows
    assert not tma_ready(x.reshape(-1))  # not 2-D
    assert not tma_ready(x[:1].expand(8, 80))  # row stride 0: features expanded from one row
    assert not tma_ready(x.reshape(-1).as_strided((8, 80), (8, 1)))  # rows overlap (16-byte stride)
    assert tma_ready(x[:1])  # one row


@pytest.mark.interpreter
@pytest.mark.parametrize(
    "device,dim", [("cpu", 80), pytest.param("cuda", 512, marks=pytest.mark.gpu, id="cuda")]
)
def test_features_with_zero_or_overlapping_row_strides(device, dim):
    """Image features expanded from one row (row stride 0) and texts whose rows overlap (an as_strided
    view, 16 elements apart) in bf16 at a D that takes the TMA-read tiles: the launchers read them with
    pointer loads (``tma_ready``) and give naive's values on the same features (fp32), the gradients
    summed into the rows and the buffer they view."""
    batch, dtype = 37, torch.bfloat16
    gen = torch.Generator().manual_seed(5)
    row = (torch.randn(1, dim, generator=gen) / dim**0.5).to(device=device, dtype=dtype)
    buf = (torch.randn(16 * batch + dim, generator=gen) / dim**0.5).to(device=device, dtype=dtype)
    results = {}
    for impl in ["triton", "naive"]:
        cast = torch.bfloat16 if impl == "triton" else torch.float32  # naive in fp32 on the same values
        base_row = row.to(cast, copy=True).requires_grad_()
        base_buf = buf.to(cast, copy=True).requires_grad_()
        img = base_row.expand(batch, dim)
        txt = base_buf.as_strided((batch, dim), (16, 1))
        scale = torch.tensor(10.0, device=device, requires_grad=True)
        loss = contrastive_loss(img, txt, scale, label_smoothing=0.1, impl=impl)
        loss.backward(torch.tensor(1.3, device=device))
        results[impl] = [loss.detach(), base_row.grad, base_buf.grad, scale.grad]
    names = ["loss", "d_row", "d_buf", "d_scale"]
    for got, want, what in zip(results["triton"], results["naive"], names, strict=True):
        tol = 2e-2 * want.abs().max().item()
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=tol, msg=what)


@pytest.mark.interpreter
@pytest.mark.slow
def test_triton_matches_naive_large():
    _check("triton", 127, 129, eps=0.1, grad_out=0.5)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_triton_matches_naive_dtypes(dtype, scale):
    _check("triton", 20, 40, dtype=dtype, scale=scale, eps=0.1, grad_out=0.7)


def _plan_for(batch, dim, workspace, dtype=torch.float32):
    from vlkernels.ops.contrastive_triton import _plan

    return _plan(batch, batch, dim, dtype, True, workspace)


def _partial_workspace(batch, dim, dtype):
    """The smallest workspace (bytes) whose plan covers some of the text columns but not all."""
    for nbytes in range(0, 1 << 16, 64):
        if 0 < _plan_for(batch, dim, nbytes, dtype).covered < batch:
            return nbytes
    raise AssertionError("no partial plan")


@pytest.mark.interpreter
@pytest.mark.parametrize(
    "dtype,workspace",
    [(torch.bfloat16, "none"), (torch.bfloat16, "partial"), (torch.float16, "all"), (torch.float32, "none")],
)
def test_triton_backward_plans_match(monkeypatch, dtype, workspace):
    """Every backward plan matches naive. 16-bit features: no workspace (G in slabs of one block of
    columns, the image gradient accumulated over slabs, every text gradient from the column pass), a
    workspace whose LO remainder covers some columns (the rest from the column pass), one that covers
    all of them. fp32 features: the text gradient accumulates in place, so even no workspace covers
    every column."""
    batch, dim = 37, 19
    nbytes = {"none": 0, "all": 2**20}.get(workspace)
    if nbytes is None:
        nbytes = _partial_workspace(batch, dim, dtype)
    plan = _plan_for(batch, dim, nbytes, dtype)
    if dtype == torch.float32:
        assert plan.slab < batch and plan.covered == batch, plan
    else:
        expect = {"none": (plan.slab < batch and plan.covered == 0), "partial": 0 < plan.covered < batch}
        assert expect.get(workspace, plan.covered == batch), plan
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", str(nbytes / 2**20))
    _check("triton", batch, dim, dtype=dtype, eps=0.1, grad_out=1.3)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_triton_backward_large_chunks_in_slabs(monkeypatch, dtype):
    """The kind of plan large batches take (B = 262144, D = 1024, 256 MiB: chunks of 8192 rows, G in slabs
    of 4096 columns, 162816 of the text columns accumulated in the row pass), at a small size against
    naive: 150 rows in chunks of 64 (the last one short), slabs of 48 columns (the last one short; each
    chunk's image gradient summed over its slabs in fp32), the first 112 text columns (two slabs and part
    of a third) accumulated over the chunks, the rest from the column pass (in the same slabs)."""
    from vlkernels.ops import contrastive_triton as ct

    calls = force_plan(monkeypatch, ct, chunk=64, slab=48, covered=112)
    _check("triton", 150, 24, dtype=dtype, eps=0.1, grad_out=1.3)
    assert calls


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_16bit_remainder_over_many_chunks(monkeypatch, dtype):
    """The loss path with the text gradient summed over 10 chunks of rows in the 16-bit (dT, LO) pair
    (every column covered, chunks of 16 rows) matches naive; the pair's precision itself is checked by
    test_matmul_16bit_pair_accumulates_like_fp32 (naive's bf16 tolerance is too loose to see it here)."""
    batch, dim = 150, 24
    nbytes = next(n for n in range(0, 1 << 17, 256) if _plan_for(batch, dim, n, dtype).covered == batch)
    plan = _plan_for(batch, dim, nbytes, dtype)
    assert plan.chunk == 16 and plan.slab == batch, plan
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", str(nbytes / 2**20))
    _check("triton", batch, dim, dtype=dtype, scale=30.0, eps=0.1, grad_out=0.7)


def test_matmul_config_follows_arch_and_layout(monkeypatch):
    """The 16-bit GEMM's GPU tiles: K chunks of 32 only where an accumulating product reads ``b``
    K-contiguous (column-major features) on mma.sync (sm_80), where 64 spilled; 64 elsewhere. ``matmul``
    passes the device's architecture and ``b``'s layout (tests/test_aot_compile.py sees the launches)."""
    from vlkernels.ops.triton_utils import matmul_config

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for dtype in (torch.bfloat16, torch.float16):
        assert matmul_config(dtype, True, True, 1024, True, 80, True)["BLOCK_K"] == 32
        assert matmul_config(dtype, False, True, 100, False, 80, True)["BLOCK_K"] == 32
        for arch, acc, k_major in [(90, True, True), (80, False, True), (80, True, False)]:
            assert matmul_config(dtype, True, acc, 1024, acc, arch, k_major)["BLOCK_K"] == 64


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(37, 29, 21), (37, 200, 24)], ids=["unaligned", "aligned-parts"])
def test_matmul_16bit_pair_accumulates_like_fp32(dtype, shape):
    """``matmul(..., accumulate=True, lo=)``: 12 products summed in the pair (hi, int8 lo) agree with the
    same products summed in fp32 to ~2^-16 of the largest partial sum, and hi is the exact sum rounded to
    the dtype within one unit plus what the remainder's quantisation can lose (each step at most 1/512 of
    the dtype's spacing at the element's running sum); summed in hi alone (no remainder), the error is
    several units of the dtype (the check below would fail). Aligned rows take the epilogue in four column
    parts (as the GPU's 128 x 256 tiles do), unaligned ones the whole tile."""
    from vlkernels.ops.triton_utils import matmul, matmul_config

    m, n, k = shape
    assert matmul_config(dtype, n % 8 == 0 and k % 8 == 0, True, n, True)["PARTS"] == (4 if n % 8 == 0 else 1)
    g = torch.Generator().manual_seed(5)
    steps = 12
    a = [torch.randn(m, k, generator=g).to(dtype) for _ in range(steps)]
    b = [torch.randn(k, n, generator=g).to(dtype) for _ in range(steps)]
    one = torch.ones(1)
    hi, lo = torch.zeros(m, n, dtype=dtype), torch.zeros(m, n, dtype=torch.int8)
    alone = torch.zeros(m, n, dtype=dtype)
    ref, running = torch.zeros(m, n, dtype=torch.float64), torch.zeros(m, n, dtype=torch.float64)
    for x, y in zip(a, b, strict=True):
        matmul(x, y, one, hi, accumulate=True, lo=lo)
        matmul(x, y, one, alone, accumulate=True)
        ref += x.double() @ y.double()
        running = torch.maximum(running, ref.abs())
    peak = running.max().item()
    eps = torch.finfo(dtype).eps
    assert lo.abs().max() > 32  # the remainder is in use
    pair_err = (pair_value(hi, lo) - ref).abs().max().item()
    assert pair_err <= 4 * steps * eps * eps * peak + 1e-6 * peak, (pair_err, peak)
    lost = steps * (eps / 512 + 2.0**-23) * running  # the remainder's quantisation and fp32 rounding
    units = ((hi.double() - ref).abs() - lost) / (ref.abs() * eps).clamp_min(eps * 1e-3)
    assert units.max().item() <= 1.0, units.max().item()
    alone_units = ((alone.double() - ref).abs() / (ref.abs() * eps).clamp_min(eps * 1e-3)).max().item()
    assert alone_units > 2.0, alone_units  # the remainder is what keeps hi correctly rounded


@pytest.mark.interpreter
def test_triton_is_deterministic(monkeypatch):
    """No float atomics: two runs give bitwise-equal losses and gradients (both backward passes in use)."""
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", str(_partial_workspace(37, 19, torch.bfloat16) / 2**20))
    img, txt = features(37, 19, torch.bfloat16, seed=3)
    runs = [run_loss(contrastive_loss, img, txt, torch.tensor(30.0), 0.7, impl="triton") for _ in range(2)]
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def _unnormalised(batch, dim, seed):
    """Features with norms from 0.05 to 20 and one row far longer than the rest: the column bound
    s |T_j| max_i |I_i| then overestimates most columns' scores by hundreds of bits."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, dim, generator=g) * torch.logspace(-1.3, 1.3, batch)[:, None]
    txt = torch.randn(batch, dim, generator=g) * torch.logspace(1.3, -1.3, batch)[:, None]
    img[0] *= 50.0
    return img, txt


@pytest.mark.interpreter
@pytest.mark.parametrize("scale", [1.0, 30.0, 100.0])
def test_triton_unnormalised_features_and_fallback(monkeypatch, scale):
    """Unnormalised features at scales up to 100 match naive (float64 rule), and the exact fallback of the
    forward runs where the fixed-reference column sums underflow (a spy counts the flagged columns: it can
    fail if the bound were never loose)."""
    from vlkernels.ops import contrastive_triton as ct

    flagged = []
    real = ct._exact_rows

    def spy(q, k, s, top, off, todo, diag0):
        flagged.append(int(todo.sum()))
        return real(q, k, s, top, off, todo, diag0)

    monkeypatch.setattr(ct, "_exact_rows", spy)
    img, txt = _unnormalised(29, 13, seed=int(scale))
    # error scales from the actual logits (term_scales assumes unit features)
    terms = logit_term_scales(img, txt, scale, 1.3)
    _check_features("triton", img, txt, scale, 1.3, label_smoothing=0.1, terms=terms)
    assert flagged and flagged[0] > 0, flagged


def _check_huge_logits(norm: float, batch: int = 7, dim: int = 5, device="cpu"):
    """fp32 image features of norm ``norm``, unit texts, s = 10, on the Triton path: the float64 rule with
    error scales from the actual logits (tests/test_gpu_contrastive.py passes "cuda")."""
    img, txt = features(batch, dim, device=device, seed=3)
    img = img * norm
    terms = logit_term_scales(img, txt, 10.0, 1.3)
    _check_features("triton", img, txt, 10.0, 1.3, label_smoothing=0.1, terms=terms)


@pytest.mark.interpreter
@pytest.mark.parametrize(
    "norm,batch,dim", [(1e3, 7, 5), (1e7, 7, 5), (1e13, 7, 5), (1e22, 7, 5), (1e13, 70, 40)]
)
def test_triton_huge_logits(norm, batch, dim):
    """Logits past fp32's integer range (|S| up to ~1e23 here) on the float64 rule: the backward's
    exponents exp2(S2 - lse) subtract the forward's own base-2 LSEs (bitwise the forward's scores: the
    G kernel recomputes them with the same dots). With a round trip through natural logs (~2 ulps of
    |S| log2(e) in every exponent) d_image erred by 414 against an allowance of 171 at 1e7 and was not
    finite at 1e13 and 1e22 (naive's is exact to 6e-8 there)."""
    _check_huge_logits(norm, batch, dim)


def _check_on_own_scale(impl, img, txt, scale: float, eps: float = 0.0):
    """The loss and the feature and scale gradients of ``impl`` (grad_output 1.3) against the float64
    reference that keeps every diagonal term (``exact_contrastive``): within twice naive's error plus 8
    ulps of each quantity's own largest element (not the unit-feature error scale: the exact loss and
    gradients of near one-hot rows are far below it), and within 16 ulps of each quantity's own error
    scale (``assert_relatively_exact``), which naive misses by orders near one-hot."""
    s = torch.tensor(scale)
    got = run_loss(contrastive_loss, img, txt, s, 1.3, impl=impl, label_smoothing=eps)
    base = run_loss(_naive, img, txt, s, 1.3, label_smoothing=eps)
    exact, _ = exact_contrastive(img, txt, scale, eps, 1.3)
    assert_within_float64_error(got, base, exact, (0.0,) * 4)
    assert_relatively_exact(got, img, txt, scale, eps, 1.3)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
@pytest.mark.parametrize("batch,dim", [(2, 7), (2, 64), (17, 64)])
def test_near_one_hot_loss_and_gradients_match_naive(impl, batch, dim):
    """Aligned pairs at s = 100 (loss 1e-21 to 1e-35): the exact loss and gradients are that small and fp32
    keeps them, so each may err by 16 ulps of its own error scale (``_check_on_own_scale``). The torch
    backend subtracted the diagonal targets after the products: 2 T_i plus the tiny rest rounded to 2 T_i
    and every feature gradient came out 0 (B = 2) or lost all its digits. Then the diagonal weights
    W_ii - 2, formed from exp(S_ii - LSE_i) near 1, kept an ulp of 2 where the exact value is the rows'
    and columns' off-diagonal mass (naive's softmax - one-hot likewise): 1e5 ulps of the error scale on
    the loss and every gradient. Now the forward sums the off-diagonal terms apart and the loss and G's
    diagonal come from those masses (docs/design.md, "Off-diagonal masses")."""
    img, txt = features(batch, dim, seed=batch + dim)
    _check_on_own_scale(impl, img, txt, 100.0)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_weights_near_one_keep_an_ulp_of_one(impl, eps):
    """Well-matched pairs at s = 30 (B = 64, D = 32, texts = normalise(images + 0.1 noise): loss ~1e-5,
    rows whose off-diagonal softmax mass is ~1e-7 to 1e-5, so many weights lie just below 1), with and
    without label smoothing (``_check_on_own_scale``). With fp32 LSEs (rounded to an ulp of |S| ~ 30-43)
    every weight near 1 erred by up to that, where naive's softmax keeps an ulp of 1: the torch path erred
    by 8-14x naive's error, the Triton path by 25-38x (its forward's column sums also rounded S2 - ref at
    an ulp of |S2 - ref|); the LSEs are float64 since, split into fp32 hi + lo for the exponents, and the
    column terms compensated (docs/design.md, "Two-part LSEs"). The diagonal weights' ulp of 1 (naive's
    too) still cost 1e5 ulps of the feature gradients' error scale until the off-diagonal masses."""
    g = torch.Generator().manual_seed(2)
    img = F.normalize(torch.randn(64, 32, generator=g), dim=1)
    txt = F.normalize(img + 0.1 * torch.randn(64, 32, generator=g), dim=1)
    _check_on_own_scale(impl, img, txt, 30.0, eps)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_confident_rows_at_s_60_keep_their_gradient(impl):
    """B = 257 (prime), D = 64, texts = normalise(images + 0.1 noise), s = 60: loss ~1e-9, the diagonal
    weights 2 - W_ii ~1e-12 to 1e-8. The Triton path's column LSEs through a fixed reference carry the
    fp32 exp2's own ulp of 1, so that its W_ii - 2 erred by 2.4-2.5x naive's error (past the float64 rule)
    and every path's by 1.6e5 ulps of the feature gradients' error scale; from the off-diagonal masses
    both are within 3 ulps."""
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(257, 64, generator=g), dim=1)
    txt = F.normalize(img + 0.1 * torch.randn(257, 64, generator=g), dim=1)
    _check_on_own_scale(impl, img, txt, 60.0)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_near_one_hot_loss_subtracts_the_pass_own_diagonal(monkeypatch, impl, seed):
    """test_weights_near_one_keep_an_ulp_of_one's features (loss ~1e-5, B = 64, s = 30) in many pieces
    (torch: chunks of 7 rows; Triton: one program per forward launch), the loss within twice naive's error
    plus 8 ulps of itself. Near one-hot a row's LSE is its diagonal score plus a tiny rest, which naive's
    log_softmax keeps to an ulp of the rest; the loss took S_ii from separate fp32 dot products, not the
    pass's scores, and kept an ulp of |S| per row: 35-143x naive's error (torch), 25-121x (Triton). Now
    the LSE pass returns its own diagonal scores."""
    monkeypatch.setenv("VLKERNELS_TORCH_CHUNK_ROWS", "7")
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", "0")
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(64, 32, generator=g), dim=1)
    txt = F.normalize(img + 0.1 * torch.randn(64, 32, generator=g), dim=1)
    s = torch.tensor(30.0)
    got = contrastive_loss(img, txt, s, impl=impl)
    exact = contrastive_loss_naive(img.double(), txt.double(), s.double())
    assert_within_float64_error([got], [_naive(img, txt, s)], [exact], [0.0], names=("loss",))


def dominant_diagonal(rows, dim, row0, device="cpu", dtype=torch.float32):
    """(q [rows, dim], k [row0 + rows + 11, dim]) whose scores at s = 100 have each row's diagonal (column
    row0 + i) the largest by > 24 bits in base 2 (q's rows copies of k's plus a little noise): the rest of
    each row's sum rounds away, so its LSE is exactly its diagonal score as the pass formed it."""
    g = torch.Generator().manual_seed(rows + dim + row0)
    k = F.normalize(torch.randn(row0 + rows + 11, dim, generator=g), dim=1)
    q = F.normalize(k[row0 : row0 + rows] + 0.02 * torch.randn(rows, dim, generator=g), dim=1)
    scores = 100.0 * q.double() @ k.double().T
    at = (torch.arange(rows), torch.arange(rows) + row0)
    own = scores[at]
    scores[at] = float("-inf")
    assert (own - scores.amax(1)).min() > 24 * math.log(2.0)  # the premise, for this seed
    return q.to(device=device, dtype=dtype), k.to(device=device, dtype=dtype)


def check_diagonal_is_the_walks(impl, rows, dim, row0, device="cpu", dtype=torch.float32):
    """The LSE pass's diagonal scores x (``lse(q, k, s, row0)``) are bitwise its own: on
    ``dominant_diagonal``'s features each row's LSE is exactly its largest score, the diagonal one, and x
    must equal it (the Triton x comes from ``_diagonal_kernel``, the forward's diagonal tiles recomputed:
    tests/test_gpu_contrastive.py runs this on the GPU's real tiles; one ulp off is 1.5e-5 here)."""
    from vlkernels.ops.contrastive_torch import TorchBackend
    from vlkernels.ops.contrastive_triton import TritonBackend

    q, k = dominant_diagonal(rows, dim, row0, device, dtype)
    backend = TorchBackend() if impl == "torch" else TritonBackend()
    r, _, x, mass, _ = backend.lse(q, k, torch.tensor(100.0, device=device), row0)
    assert x.dtype == torch.float32 and x.shape == (rows,)
    assert torch.equal(x.double(), r), (x.double() - r).abs().max()
    # the off-diagonal mass (below 2^-24 here, where 1 - P_ii formed from P_ii would be 0 or 2^-24: 100%
    # off) to the logits' rounding: up to ~(1 + |S2|) ulps (|S2| < 145) on CPU, about sqrt(D) times that
    # for the GPU's long fp32 dot products at D = 1024
    s2 = 100.0 * q.double() @ k.double().T / math.log(2.0)
    own = s2[torch.arange(rows), torch.arange(rows) + row0]
    s2[torch.arange(rows), torch.arange(rows) + row0] = float("-inf")
    want = torch.exp2(torch.logsumexp(s2 * math.log(2.0), 1) / math.log(2.0) - own)
    assert mass.dtype == torch.float32 and (want < 2.0**-24).all() and (want > 0).all()
    err = ((mass.double().cpu() - want.cpu()) / want.cpu()).abs().max().item()
    assert err <= 2.0**-10, err


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
@pytest.mark.parametrize("rows,dim,row0", [(1, 16, 0), (7, 16, 0), (130, 72, 0), (50, 64, 37)])
def test_lse_pass_returns_its_own_diagonal_scores(monkeypatch, impl, rows, dim, row0):
    """``check_diagonal_is_the_walks`` in many pieces (torch: chunks of 3 rows; Triton: one program per
    forward launch), the block-row scheme's offset diagonal (row0 37: not on a tile boundary) included."""
    monkeypatch.setenv("VLKERNELS_TORCH_CHUNK_ROWS", "3")
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", "0")
    check_diagonal_is_the_walks(impl, rows, dim, row0)


def test_torch_lse_merges_columns_across_chunks(monkeypatch):
    """The torch backend's column LSEs, merged across chunks of two rows as (max, sum) pairs, on scores
    that are -inf in the first chunk (column 0) or ~-6e19 there and O(1) later (columns 2-4): the float64
    logsumexp of the same fp32 scores, to an ulp of fp32 (a reference kept at 0 until a column's first
    finite max, or rescaled from it, overflowed exp and gave NaN)."""
    from vlkernels.ops.contrastive_torch import TorchBackend

    monkeypatch.setenv("VLKERNELS_TORCH_CHUNK_ROWS", "2")
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 4, generator=g), torch.randn(5, 4, generator=g)
    img[0:2, 0], img[0:2, 1:], txt[0, 0] = 1e20, 0.0, -1e20
    scores = img @ txt.T
    assert torch.isneginf(scores[:2, 0]).all() and scores[:2, 2:].max() < -1e19
    r, c, *_ = TorchBackend().lse(img, txt, torch.tensor(1.0))
    for got, dim in ((r, 1), (c, 0)):
        want = torch.logsumexp(scores.double(), dim)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=2 * torch.finfo(torch.float32).eps, atol=1e-6)


@pytest.mark.interpreter
def test_triton_normalised_features_need_no_fallback(monkeypatch):
    """CLIP's case (unit features, s = 100): no column is flagged, the forward is one pass."""
    from vlkernels.ops import contrastive_triton as ct

    flagged = []
    real = ct._exact_rows

    def spy(q, k, s, top, off, todo, diag0):
        flagged.append(int(todo.sum()))
        return real(q, k, s, top, off, todo, diag0)

    monkeypatch.setattr(ct, "_exact_rows", spy)
    img, txt = features(40, 24, seed=5)
    contrastive_loss(img, txt, torch.tensor(100.0), impl="triton")
    assert flagged == [0]


@pytest.mark.parametrize("impl", ["torch", "naive", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_sum_is_twice_mean(impl):
    img, txt = features(9, 11)
    mean = contrastive_loss(img, txt, 5.0, impl=impl)
    total = contrastive_loss(img, txt, 5.0, impl=impl, reduction="sum")
    torch.testing.assert_close(total, 2 * mean)
    _check(impl, 9, 11, reduction="sum", grad_out=0.5, eps=0.1)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_matches_open_clip_formula(impl):
    # open_clip's own expression, written independently of vlkernels.reference.
    img, txt = features(23, 16)
    scale = torch.tensor(math.log(1 / 0.07)).exp()
    logits = scale * img @ txt.T
    labels = torch.arange(23)
    want = (
        torch.nn.functional.cross_entropy(logits, labels)
        + torch.nn.functional.cross_entropy(logits.T, labels)
    ) / 2
    torch.testing.assert_close(contrastive_loss(img, txt, scale, impl=impl), want, **TOL[torch.float32])


@pytest.mark.parametrize("impl", ["torch", "naive", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_non_contiguous_inputs(impl):
    img, txt = features(19, 30)
    img_nc = img.T.contiguous().T  # column-major storage
    txt_nc = torch.cat([txt, txt], dim=1)[:, ::2]  # strided view
    txt_nc.copy_(txt)
    assert not img_nc.is_contiguous() and not txt_nc.is_contiguous()
    want = run_loss(_naive, img, txt, torch.tensor(3.0), 1.0)
    got = run_loss(contrastive_loss, img_nc, txt_nc, torch.tensor(3.0), 1.0, impl=impl)
    assert_close_all(got, want, torch.float32)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_scale_as_float_and_one_element_tensor(impl):
    img, txt = features(8, 5)
    a = contrastive_loss(img, txt, 2.5, impl=impl)
    s = torch.tensor([2.5], requires_grad=True)
    b = contrastive_loss(img, txt, s, impl=impl)
    b.backward()
    torch.testing.assert_close(a, b.detach())
    assert s.grad.shape == s.shape
    s0 = torch.tensor(2.5, requires_grad=True)
    contrastive_loss(img, txt, s0, impl="naive").backward()
    torch.testing.assert_close(s.grad.reshape(()), s0.grad, **TOL[torch.float32])


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_open_clip_scale_parameter_gradient(impl):
    # open_clip passes logit_scale.exp(): the gradient reaches the log-parameter through exp.
    img, txt = features(12, 9)
    grads = []
    for which in ("naive", impl):
        param = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        contrastive_loss(img, txt, param.exp(), impl=which, label_smoothing=0.1).backward()
        grads.append(param.grad)
    torch.testing.assert_close(grads[1], grads[0], **TOL[torch.float32])


@pytest.mark.parametrize("impl", ["torch", "naive", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_only_requested_grads(impl):
    img, txt = features(6, 4)
    img.requires_grad_()
    loss = contrastive_loss(img, txt, torch.tensor(3.0), impl=impl)
    loss.backward()
    assert img.grad is not None and txt.grad is None
    assert loss.dtype == torch.float32 and loss.dim() == 0


@pytest.mark.parametrize("impl", ["torch", "naive", pytest.param("triton", marks=pytest.mark.interpreter)])
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_inputs_give_non_finite_loss(impl, bad):
    img, txt = features(7, 5)
    img[3, 2] = float(bad)
    assert not torch.isfinite(contrastive_loss(img, txt, 10.0, impl=impl))
    img, txt = features(7, 5)
    assert not torch.isfinite(contrastive_loss(img, txt, torch.tensor(float(bad)), impl=impl))


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_never_materialises_b_by_b(monkeypatch, impl):
    monkeypatch.setenv("VLKERNELS_TORCH_CHUNK_ROWS", "8")
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", "0")  # triton: G chunks of one block of rows
    batch, dim = 96, 4
    img, txt = features(batch, dim)
    img.requires_grad_()
    txt.requires_grad_()
    largest, saved = largest_tensors(
        lambda: contrastive_loss(img, txt, torch.tensor(5.0, requires_grad=True), impl=impl).backward()
    )
    # torch: one chunk of 8 rows of S; triton: one 16-row fp32 chunk of G (the interpreter's block), which
    # the interpreter copies as a byte storage (4 x its elements).
    assert largest <= 4 * 16 * batch < batch * batch, largest
    assert saved <= batch * dim
    # The check can fail: the naive implementation does materialise B x B.
    largest, _ = largest_tensors(lambda: contrastive_loss(img, txt, 5.0, impl="naive").backward())
    assert largest >= batch * batch


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 48),
    dim=st.integers(1, 80),
    scale=st.floats(0.5, 100.0),
    eps=st.sampled_from([0.0, 0.1, 0.5]),
    grad_out=st.floats(0.1, 3.0),
    seed=st.integers(0, 10_000),
)
def test_hypothesis_torch(batch, dim, scale, eps, grad_out, seed):
    # Judged against float64 (errors grow with logit_scale * grad_out): at most 2x the naive fp32 error.
    img, txt = features(batch, dim, seed=seed)
    _check_features("torch", img, txt, scale, grad_out, label_smoothing=eps)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
@settings(max_examples=examples(20), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**NEAR_ONE_HOT_DRAWS)
def test_hypothesis_relatively_exact(impl, batch, dim, noise, scale, eps, grad_out, seed):
    """Drawn batches from near one-hot to generic: the loss and every gradient within 16 ulps of their own
    error scales against the float64 reference that keeps the diagonal terms (``assert_relatively_exact``)."""
    img, txt = paired_features(batch, dim, noise, seed)
    got = run_loss(contrastive_loss, img, txt, torch.tensor(scale), grad_out, impl=impl, label_smoothing=eps)
    assert_relatively_exact(got, img, txt, scale, eps, grad_out)


@pytest.mark.interpreter
@settings(max_examples=examples(12), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 40),
    dim=st.integers(1, 70),
    scale=st.floats(0.5, 100.0),
    eps=st.sampled_from([0.0, 0.1]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 10_000),
)
def test_hypothesis_triton(batch, dim, scale, eps, dtype, seed):
    # The float64 rule, with what rounding G to a 16-bit dtype adds (``_check_features``).
    img, txt = features(batch, dim, dtype, seed=seed)
    _check_features("triton", img, txt, scale, 1.3, label_smoothing=eps)


def test_reference_matches_direct_formula_with_smoothing():
    img, txt = features(10, 6)
    logits = 7.0 * img @ txt.T
    ls = torch.log_softmax(logits, 1)
    lt = torch.log_softmax(logits.T, 1)
    target = 0.9 * torch.eye(10) + 0.1 / 10
    want = 0.5 * (-(target * ls).sum(1).mean() - (target * lt).sum(1).mean())
    torch.testing.assert_close(contrastive_loss_naive(img, txt, 7.0, 0.1), want)


# --- implementation selection and errors -------------------------------------------------------


def test_auto_is_torch_on_cpu():
    assert resolve_impl("auto", torch.device("cpu")) == "torch"


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    img, txt = features(4, 4)
    with pytest.raises(RuntimeError, match="impl='triton' cannot run.*CUDA"):
        contrastive_loss(img, txt, 1.0, impl="triton")


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda i, t: (i, t[:3]), ValueError, "same shape"),
        (lambda i, t: (i[0], t[0]), ValueError, "2-D"),
        (lambda i, t: (i.unsqueeze(0), t.unsqueeze(0)), ValueError, "2-D"),
        (lambda i, t: (i[:0], t[:0]), ValueError, "empty batch"),
        (lambda i, t: (i[:, :0], t[:, :0]), ValueError, "D=0"),
        (lambda i, t: (i, t.half()), TypeError, "same dtype"),
        (lambda i, t: ((i * 10).long(), (t * 10).long()), TypeError, "image_features has dtype"),
        (lambda i, t: (i.double(), t.double()), TypeError, "supported"),
        (lambda i, t: (i.numpy(), t), TypeError, "torch.Tensor"),
        (lambda i, t: (i, t.to("meta")), ValueError, "same device"),
    ],
)
def test_bad_features(make, exc, match):
    img, txt = features(5, 3)
    a, b = make(img, txt)
    with pytest.raises(exc, match=match):
        contrastive_loss(a, b, 1.0)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(logit_scale=torch.ones(2)), ValueError, "logit_scale must be a scalar"),
        (dict(logit_scale=torch.tensor(3)), TypeError, "floating-point"),
        (dict(logit_scale="3"), TypeError, "logit_scale must be a float"),
        (dict(logit_scale=float("nan")), ValueError, "finite"),
        (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
        (dict(label_smoothing=-0.1), ValueError, "label_smoothing"),
        (dict(reduction="none"), ValueError, "reduction"),
        (dict(impl="cuda"), ValueError, "impl must be one of"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    img, txt = features(5, 3)
    kwargs = dict(kwargs)
    scale = kwargs.pop("logit_scale", 1.0)
    with pytest.raises(exc, match=match):
        contrastive_loss(img, txt, scale, **kwargs)


# --- ClipLoss ---------------------------------------------------------------------------------


def test_clip_loss_module_matches_functional():
    img, txt = features(14, 10)
    scale = torch.tensor(20.0)
    mod = ClipLoss(impl="torch")
    want = contrastive_loss(img, txt, scale, impl="naive")
    torch.testing.assert_close(mod(img, txt, scale), want, **TOL[torch.float32])
    out = mod(img, txt, scale, logit_bias=torch.tensor(-3.0), output_dict=True)
    assert set(out) == {"contrastive_loss"}
    torch.testing.assert_close(out["contrastive_loss"], want, **TOL[torch.float32])
    smoothed = ClipLoss(label_smoothing=0.1)(img, txt, scale)
    torch.testing.assert_close(smoothed, contrastive_loss(img, txt, scale, label_smoothing=0.1, impl="naive"))


def test_clip_loss_rejects_vector_bias():
    img, txt = features(4, 3)
    with pytest.raises(ValueError, match="logit_bias"):
        ClipLoss()(img, txt, 1.0, logit_bias=torch.ones(4))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("workspace_mb", ["0", "256"])
def test_torch_backward_passes_match(monkeypatch, dtype, workspace_mb):
    """The one-pass backward (a W.T @ I accumulator in the workspace) and the two-pass backward (no
    accumulator: a workspace of 0) both match the naive reference, in every dtype, with small chunks."""
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", workspace_mb)
    monkeypatch.setenv("VLKERNELS_TORCH_CHUNK_ROWS", "7")
    _check("torch", 37, 19, dtype=dtype, eps=0.1, grad_out=1.7)


def _extra_bytes(batch, dim, dtype, impl="torch"):
    img, txt = features(batch, dim, dtype, seed=batch)
    img.requires_grad_(), txt.requires_grad_()
    scale = torch.tensor(10.0, requires_grad=True)
    with PeakLive() as mode:
        contrastive_loss(img, txt, scale, impl=impl, label_smoothing=0.1).backward()
    grads = 2 * batch * dim * img.element_size()
    return mode.peak - grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_memory_is_32_bytes_per_row_plus_workspace(monkeypatch, dtype):
    """Extra memory beyond the inputs and their gradients (live bytes of every tensor the ops create, forward
    and backward) is at most 32 bytes per row plus the workspace budget: no fp32 copy of the features, no
    fp32 [B, D] gradient buffers. The per-row slope is measured between two batch sizes."""
    workspace = 2**20
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", "1")
    dim = 96
    small, large = _extra_bytes(512, dim, dtype), _extra_bytes(2048, dim, dtype)
    assert large <= 32 * 2048 + workspace, (small, large)
    assert (large - small) / (2048 - 512) <= 32, (small, large)


@pytest.mark.interpreter
@pytest.mark.parametrize("batch,dim,kib", [(640, 16, 86), (300, 24, 30), (512, 16, 200)])
def test_triton_backward_stays_in_its_plan(monkeypatch, batch, dim, kib):
    """The backward's live bytes beyond its two outputs are the plan's workspace (a few scalars more), the
    split-K partials of G @ K included: ``matmul`` splits no further than the workspace holds. (Before,
    the plan counted at most four partials while the split filled the SMs: 1024 x 16 with 64 KiB went
    3 KiB over its budget.) 640 x 16 with 86 KiB takes the same paths in under half the interpreter time:
    G in slabs of 256 of the 640 columns (with the slabs' fp32 accumulator), a column pass for the 256
    columns the accumulator leaves uncovered, and products that split along K unless bound by the
    workspace (without the bound it goes 16 KiB over)."""
    from vlkernels.ops import contrastive_triton as ct

    workspace = kib << 10
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", str(workspace / 2**20))
    img, txt = features(batch, dim, torch.bfloat16, seed=batch)
    scale = torch.tensor(10.0)
    logits = scale * img.float() @ txt.float().T  # the statistics the forward kernel gives, outside the count
    r, c = logits.logsumexp(1) / math.log(2.0), logits.logsumexp(0) / math.log(2.0)  # the backend's base 2
    diag = torch.full((batch,), -0.3)  # G's diagonal (any values: the memory is the question)
    plan = ct._plan(batch, batch, dim, torch.bfloat16, True, workspace)
    assert plan.workspace <= workspace
    with PeakLive() as mode:
        ct.TritonBackend().gradients(img, txt, scale, r, c, 0.5, 0.1, diag)
    outputs = 2 * batch * dim * img.element_size()
    assert mode.peak - outputs <= plan.workspace + 64, (mode.peak - outputs, plan)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk,dim,k", [(16, 16, 1024), (40, 24, 2100)])
def test_split_products_stay_in_their_count(dtype, chunk, dim, k):
    """The plan's count of G @ K's buffers (``_gemm_bytes``: the split-K partials, which ``matmul`` takes
    from the workspace, and the sum's [chunk, dim] fp32 temporary of a 16-bit output) against the live
    bytes of a ``matmul`` given a workspace of ``split_partials`` elements, at shapes that do split (the
    backward tests' sizes are too small to: their workspace holds no partials)."""
    from vlkernels.ops import gchunk_triton as gc
    from vlkernels.ops.triton_utils import matmul, split_partials

    partials = split_partials(chunk, dim, k)
    assert partials > 0  # the shape splits on an H100 (and so in the interpreter, within the workspace)
    g = torch.randn(chunk, k, generator=torch.Generator().manual_seed(k)).to(dtype)
    keys = torch.randn(k, dim, generator=torch.Generator().manual_seed(dim)).to(dtype)
    workspace = torch.empty(partials, dtype=torch.float32)
    out = torch.empty(chunk, dim, dtype=dtype)
    alpha = torch.tensor(0.5)
    with PeakLive() as mode:
        matmul(g, keys, alpha, out, workspace=workspace)
    assert mode.peak + 4 * partials <= gc._gemm_bytes(chunk, dim, k, False), (mode.peak, partials)
    if dtype != torch.float32:  # the sum goes through its fp32 temporary: the count is not slack
        assert mode.peak >= 4 * chunk * dim, mode.peak
    want = 0.5 * g.double() @ keys.double()
    # fp32 accumulation (at most k roundings of the running sum) and the output's rounding
    magnitude = 0.5 * g.double().abs() @ keys.double().abs()
    bound = k * 2.0**-24 * magnitude + torch.finfo(dtype).eps * want.abs()
    assert ((out.double() - want).abs() <= bound).all(), (out.double() - want).abs().max()


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_memory_is_32_bytes_per_row_plus_workspace(monkeypatch, dtype):
    """The same bound on the Triton path (interpreter). With no workspace the plans fall back to their
    smallest buffers (one block of rows and columns of G, one program's column partials): the per-row
    slope is at most 32 bytes. With a workspace, the extra stays within 32 bytes per row plus it."""
    dim, sizes = 24, (64, 160)  # the slope is exact and the same over 64-256 rows (8 B/row): 160 suffice
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", "0")
    small, large = (_extra_bytes(batch, dim, dtype, "triton") for batch in sizes)
    assert (large - small) / (sizes[1] - sizes[0]) <= 32, (small, large)
    workspace = 2**15
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", str(workspace / 2**20))
    for batch in sizes:
        extra = _extra_bytes(batch, dim, dtype, "triton")
        assert extra <= 32 * batch + workspace, (batch, extra)
