"""Sigmoid (SigLIP) loss: every impl against a float64 naive reference, values and all four gradients;
memory (no B x B tensor, linear slope), torch.compile, hostile inputs and SigLipLoss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests._ref import (
    PeakLive,
    assert_within_float64_error,
    examples,
    features,
    force_plan,
    g_rounding,
    largest_tensors,
    record_tma,
)
from vlkernels import SigLipLoss, sigmoid_loss
from vlkernels._dispatch import resolve_impl
from vlkernels.reference import sigmoid_loss_naive

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NAMES = ("loss", "d_image", "d_text", "d_scale", "d_bias")
TRITON = pytest.param("triton", marks=pytest.mark.interpreter)


def run(fn, img, txt, scale, bias, grad_out: float = 1.0, **kw):
    """(loss, d_image, d_text, d_scale, d_bias) for fresh leaf copies of the inputs."""
    scale = torch.as_tensor(scale, device=img.device)
    leaves = [x.detach().clone().requires_grad_() for x in (img, txt, scale)]
    bias = torch.as_tensor(bias, dtype=scale.dtype, device=img.device)
    leaves.append(bias.detach().clone().requires_grad_())
    loss = fn(*leaves, **kw)
    loss.backward(torch.tensor(grad_out, dtype=loss.dtype, device=loss.device))
    return [loss.detach()] + [x.grad for x in leaves]


def _exact(img, txt, scale, bias, grad_out):
    scale64 = torch.tensor(float(scale), dtype=torch.float64, device=img.device)
    return run(sigmoid_loss_naive, img.double(), txt.double(), scale64, float(bias), grad_out)


def _naive(img, txt, scale, bias, **kw):
    return sigmoid_loss(img, txt, scale, bias, impl="naive", **kw)


def error_scales(batch: int, scale: float, bias: float, grad_out: float):
    """Error scales of (loss, dI, dT, ds, db): the logits err by ~ulp(1 + s + |b|), which the softplus
    terms and G carry; a row of dI sums B such errors (a random walk: sqrt(B)) times s g / B; the loss, ds
    and db sum B^2 of them, divided by B."""
    z = 1.0 + scale + abs(bias)
    root = math.sqrt(batch)
    feat = grad_out * (1.0 + scale) * z / root
    return z * root, feat, feat, grad_out * z * root, grad_out * z * root


def assert_within_float64(got, base, exact, terms, rounding=None):
    """tests/_ref.py's rule against float64, over the sigmoid loss's five quantities."""
    assert_within_float64_error(got, base, exact, terms, names=NAMES, rounding=rounding)


def rounding_of_g(img, txt, scale, bias, grad_out, exact):
    """What rounding G to a 16-bit input dtype adds (tests/_ref.py's g_rounding) to (loss, dI, dT, ds,
    db): G = sigmoid(z) - [i == j] as the kernels store it, each term of dI and dT scaled by s g / B."""
    img64, txt64 = img.double(), txt.double()
    z = scale * img64 @ txt64.T + bias
    g = torch.sigmoid(z) - torch.eye(z.shape[0], z.shape[1], dtype=torch.float64, device=z.device)
    return g_rounding(img.dtype, exact, g, img64, txt64, grad_out * scale / z.shape[0], scalars=2)


def check(
    impl, batch, dim, dtype=torch.float32, scale=10.0, bias=-10.0, grad_out=1.7, seed=None, device="cpu"
):
    """``check_features`` on random features (tests/test_gpu_sigmoid.py passes ``device="cuda"``)."""
    seed = batch * 1000 + dim if seed is None else seed
    img, txt = features(batch, dim, dtype, device=device, seed=seed)
    return check_features(impl, img, txt, scale, bias, grad_out)


def check_features(impl, img, txt, scale, bias, grad_out):
    """The loss and its four gradients of ``impl`` against float64 (``assert_within_float64``, with what
    rounding G to a 16-bit dtype adds on the Triton path); returns them."""
    batch, dtype = img.shape[0], img.dtype
    exact = _exact(img, txt, scale, bias, grad_out)
    base = run(_naive, img, txt, scale, bias, grad_out)
    got = run(sigmoid_loss, img, txt, scale, bias, grad_out, impl=impl)
    assert got[0].dtype == torch.float32 and got[0].dim() == 0
    assert got[1].dtype == dtype and got[2].dtype == dtype
    rounding = rounding_of_g(img, txt, scale, bias, grad_out, exact) if impl == "triton" else None
    assert_within_float64(got, base, exact, error_scales(batch, scale, bias, grad_out), rounding)
    return got


# --- values and gradients ----------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2, 3, 17, 127, 257])
@pytest.mark.parametrize("dim", [1, 7, 64, 100, 129])
def test_torch_matches_float64_shapes(batch, dim):
    check("torch", batch, dim)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale,bias", [(1.0, 0.0), (10.0, -10.0), (100.0, -10.0), (30.0, -3.0)])
def test_torch_matches_float64_dtypes_scales(dtype, scale, bias):
    check("torch", 33, 65, dtype=dtype, scale=scale, bias=bias, grad_out=0.3)


def test_torch_scale_gradient_of_alike_terms():
    """D = 1: every dot product is +-1 and G takes two values, so d_scale sums B^2 alike terms. A BLAS dot
    over each chunk's terms accumulated their rounding coherently: 1.9e-5 on 12.6 at B = 41 (12 ulps,
    680x naive's error, past the float64 rule's 8 ulps of its error scale; found by the explore profile
    of ``test_hypothesis_torch``); torch's pairwise sum leaves 1.9e-6 (1.2 ulps), within the rule."""
    check("torch", 41, 1, scale=1.5, bias=0.0, grad_out=1.0, seed=0)


def test_torch_small_chunks_match(monkeypatch):
    monkeypatch.setenv("VLKERNELS_TORCH_CHUNK_ROWS", "5")
    check("torch", 37, 19, scale=20.0, bias=-4.0, grad_out=2.0)


@pytest.mark.interpreter
@pytest.mark.parametrize(
    "batch,dim", [(1, 1), (2, 7), (3, 64), (17, 100), (17, 129), (40, 1), (33, 65), (64, 32)]
)
def test_triton_matches_float64_shapes(batch, dim):
    check("triton", batch, dim)


@pytest.mark.interpreter
@pytest.mark.slow
@pytest.mark.parametrize("batch,dim", [(127, 64), (257, 7)])
def test_triton_matches_float64_large(batch, dim):
    check("triton", batch, dim, scale=30.0, bias=-5.0, grad_out=0.5)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale,bias", [(1.0, 0.0), (100.0, -10.0)])
def test_triton_matches_float64_dtypes(dtype, scale, bias):
    check("triton", 20, 40, dtype=dtype, scale=scale, bias=bias, grad_out=0.7)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("workspace", ["none", "partial"])
def test_triton_backward_plans_match_float64(monkeypatch, dtype, workspace):
    """No workspace (16-bit: every text gradient from the column pass) and the smallest one whose plan
    covers some columns (16-bit: those accumulated in the gradient with the int8 remainder, the rest from
    the column pass); fp32 features accumulate every text column in place whatever the budget."""
    from vlkernels.ops.sigmoid_triton import _plan

    if workspace == "none":
        workspace = 0
    else:
        bf16 = (_plan(37, 37, 19, torch.bfloat16, True, n).covered for n in range(0, 1 << 15, 64))
        workspace = 64 * next(i for i, c in enumerate(bf16) if 0 < c < 37)
    covered = _plan(37, 37, 19, dtype, True, workspace).covered
    if dtype == torch.float32:
        assert covered == 37
    else:
        assert (covered == 0) if workspace == 0 else (0 < covered < 37), covered
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", str(workspace / 2**20))
    check("triton", 37, 19, dtype=dtype, scale=20.0, bias=-4.0, grad_out=1.3)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype,dim", [(torch.bfloat16, 24), (torch.float32, 24), (torch.bfloat16, 80)])
def test_triton_backward_large_chunks_in_slabs(monkeypatch, dtype, dim):
    """The kind of plan large batches take (chunks of many rows, G in slabs of columns, part of the text
    columns accumulated in the row pass) at a small size against float64: 150 rows in chunks of 64, slabs
    of 48 columns (the last ones short), the first 112 text columns accumulated, the rest from the column
    pass; the statistics (the bias's and scale's gradients) summed over chunks and slabs. bf16 at D = 80:
    the wide tiles (32 x 64 here: a slab narrower than a tile, its partials per 8-column part)."""
    from vlkernels.ops import sigmoid_triton

    calls = force_plan(monkeypatch, sigmoid_triton, chunk=64, slab=48, covered=112)
    check("triton", 150, dim, dtype=dtype, scale=20.0, bias=-4.0, grad_out=1.3)
    assert calls


@pytest.mark.interpreter
@pytest.mark.parametrize("row0", [None, 0, 5, 19, -7, -40, 10**6, -(10**6)])
@pytest.mark.parametrize("dtype,dim,n", [(torch.float32, 24, 53), (torch.bfloat16, 80, 70)])
def test_triton_weights_kernel_positives_at_any_offset(row0, dtype, dim, n):
    """_weights_kernel's G = sigmoid(z) - [row0 + i == j] and its two partial sums, against float64, for
    diagonals inside, across and far outside its tiles (the kernel compares tile-local int32 indices
    with the tile's shift clamped to two blocks); M, N primes across several 16-wide blocks. bf16 at
    D = 80 takes the wide tiles (tensor descriptors, the epilogue in eight parts with their own partial
    sums; in the interpreter 32 x 64 tiles: at 70 columns the second tile's last seven parts hold no
    column and must store nothing, the partials buffer being exactly as long as the count returned)."""
    import triton

    from vlkernels.ops import sigmoid_triton
    from vlkernels.ops.triton_utils import partial_cols

    m = 37
    q, k = features(max(m, n), dim, dtype, seed=7)
    q, k = q[:m].contiguous(), k[:n].contiguous()
    cfg = sigmoid_triton.weights_config(dim, dtype, None, q, k)
    assert cfg.get("PARTS", 1) == (8 if dtype == torch.bfloat16 else 1)
    scale, bias = torch.tensor([8.0]), torch.tensor([-3.0])
    g = torch.full((m, n), float("nan"), dtype=dtype)
    blocks = triton.cdiv(n, partial_cols(cfg))
    part = torch.full((2 * m * blocks,), float("nan"))
    count = sigmoid_triton.weights(q, k, scale, bias, g, part, row0)
    assert count == m * blocks
    dots = q.double() @ k.double().T
    z = 8.0 * dots - 3.0
    pos = torch.zeros(m, n, dtype=torch.bool)
    if row0 is not None:
        i = torch.arange(m)[:, None] + row0
        pos = i == torch.arange(n)[None, :]
    want = torch.where(pos, -torch.sigmoid(-z), torch.sigmoid(z))
    assert int(pos.sum()) == (0 if row0 is None else len(range(max(0, row0), min(m + row0, n))))
    # G is stored in the features' dtype (one rounding); the sums are of the fp32 values
    g_tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2**-8, atol=1e-6)
    torch.testing.assert_close(g.double(), want, **g_tol)
    sums = part.view(2, m, blocks).double().sum(2)
    torch.testing.assert_close(sums[0], (want * dots).sum(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sums[1], want.sum(1), rtol=1e-5, atol=1e-5)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch", [1, 70])
def test_triton_wide_tiles_match_float64(dtype, batch):
    """16-bit features with D a multiple of 16 above 64 take the wide score tiles, as the contrastive
    loss's, both read through tensor descriptors: the forward's softplus in four column parts of each
    tile (config "fwd_wide"; in the interpreter 16 x 64 tiles), the G kernel's epilogue in eight parts
    ("weights_wide": 32 x 64 here); on sm_80 (mma.sync) the 128 x 128 ones."""
    from vlkernels.ops.sigmoid_triton import loss_config, weights_config

    x = torch.zeros(4, 80, dtype=dtype)
    assert loss_config(80, dtype, None, x, x)["PARTS"] == 4 and loss_config(80, dtype, None, x, x)["TMA"]
    assert "PARTS" not in loss_config(80, dtype, 80, x, x)
    assert weights_config(80, dtype, None, x, x)["TMA"] and "TMA" not in weights_config(80, dtype, 80, x, x)
    check("triton", batch, 80, dtype=dtype, scale=20.0, bias=-4.0, grad_out=1.3)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_wide_tiles_fall_back_for_strided_features(monkeypatch, dtype):
    """Features TMA cannot read (a column-major view: last stride not 1) take the pointer-load configs,
    forward and G (with the same plan and workspace: its column blocks are the narrower ones), and still
    match float64."""
    from vlkernels.ops import sigmoid_triton

    # the backward's and the forward's launches (the plan's blocks ask without tensors)
    picked = record_tma(monkeypatch, sigmoid_triton, ("weights_config", "loss_config"), launches_only=True)
    img, txt = features(37, 80, dtype, seed=5)
    img = img.t().contiguous().t()
    assert img.stride(1) != 1
    scale, bias, grad_out = 20.0, -4.0, 1.3
    check_features("triton", img, txt, scale, bias, grad_out)
    assert picked and not any(picked), picked
    picked.clear()
    check("triton", 37, 80, dtype=dtype, scale=scale, bias=bias, grad_out=grad_out)
    assert picked and all(picked), picked


@pytest.mark.interpreter
def test_triton_backward_is_deterministic():
    img, txt = features(37, 70)
    first = run(sigmoid_loss, img, txt, 9.0, -2.0, 1.3, impl="triton")
    second = run(sigmoid_loss, img, txt, 9.0, -2.0, 1.3, impl="triton")
    for name, a, b in zip(NAMES, first, second, strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("impl", ["torch", "naive", TRITON])
def test_matches_open_clip_formula(impl):
    # open_clip's SigLipLoss._loss, written independently of vlkernels.reference.
    img, txt = features(23, 16)
    scale, bias = torch.tensor(math.log(10.0)).exp(), torch.tensor(-10.0)
    logits = scale * img @ txt.T + bias
    labels = 2 * torch.eye(23) - torch.ones(23, 23)
    want = -F.logsigmoid(labels * logits).sum() / 23
    torch.testing.assert_close(sigmoid_loss(img, txt, scale, bias, impl=impl), want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("impl", ["torch", "naive", TRITON])
@pytest.mark.parametrize("scale,bias", [(100.0, -10.0), (200.0, 0.0), (200.0, 10.0), (0.0, -250.0)])
def test_large_logits_are_stable(impl, scale, bias):
    """|logit| up to ~250: finite, and equal to the float64 loss and gradients."""
    img, txt = features(24, 12, seed=5)
    txt[3] = img[3]  # a positive at exactly the largest logit
    exact = _exact(img, txt, scale, bias, 1.0)
    got = run(sigmoid_loss, img, txt, scale, bias, 1.0, impl=impl)
    for name, g, r in zip(NAMES, got, exact, strict=True):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g.double(), r, atol=2e-4 * (1 + r.abs().max().item()), rtol=1e-4)


@pytest.mark.parametrize("impl", ["torch", "naive", TRITON])
def test_non_contiguous_inputs(impl):
    img, txt = features(19, 30)
    img_nc = img.T.contiguous().T
    txt_nc = torch.cat([txt, txt], dim=1)[:, ::2]
    txt_nc.copy_(txt)
    assert not img_nc.is_contiguous() and not txt_nc.is_contiguous()
    want = run(sigmoid_loss, img, txt, 3.0, -1.0, 1.0, impl="naive")
    got = run(sigmoid_loss, img_nc, txt_nc, 3.0, -1.0, 1.0, impl=impl)
    for name, a, b in zip(NAMES, got, want, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("impl", ["torch", "naive", TRITON])
def test_scalar_forms_and_only_requested_grads(impl):
    img, txt = features(8, 5)
    want = sigmoid_loss(img, txt, 2.5, -1.5, impl="naive")
    s1, b1 = torch.tensor([2.5], requires_grad=True), torch.tensor([-1.5], requires_grad=True)
    loss = sigmoid_loss(img, txt, s1, b1, impl=impl)
    loss.backward()
    torch.testing.assert_close(loss.detach(), want)
    assert s1.grad.shape == (1,) and b1.grad.shape == (1,)
    torch.testing.assert_close(sigmoid_loss(img, txt, 2.5, -1.5, impl=impl), want)
    # None: no bias.
    torch.testing.assert_close(
        sigmoid_loss(img, txt, 2.5, None, impl=impl), sigmoid_loss(img, txt, 2.5, 0.0, impl="naive")
    )
    leaf = img.clone().requires_grad_()
    loss = sigmoid_loss(leaf, txt, torch.tensor(3.0), torch.tensor(-1.0), impl=impl)
    loss.backward()
    assert leaf.grad is not None and loss.dtype == torch.float32 and loss.dim() == 0


@pytest.mark.parametrize("impl", ["torch", TRITON])
def test_open_clip_parameters_get_their_gradients(impl):
    # open_clip: logit_scale = Parameter(log 10), passed as .exp(); logit_bias = Parameter(-10).
    img, txt = features(12, 9)
    grads = []
    for which in ("naive", impl):
        log_scale, bias = (
            torch.nn.Parameter(torch.tensor(math.log(10.0))),
            torch.nn.Parameter(torch.tensor(-10.0)),
        )
        sigmoid_loss(img, txt, log_scale.exp(), bias, impl=which).backward()
        grads.append((log_scale.grad, bias.grad))
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("impl", ["torch", "naive", TRITON])
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_inputs_give_non_finite_loss(impl, bad):
    img, txt = features(7, 5)
    img[3, 2] = float(bad)
    assert not torch.isfinite(sigmoid_loss(img, txt, 10.0, -1.0, impl=impl))
    img, txt = features(7, 5)
    assert not torch.isfinite(sigmoid_loss(img, txt, 10.0, torch.tensor(float("nan")), impl=impl))


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 48),
    dim=st.integers(1, 80),
    scale=st.floats(0.5, 100.0),
    bias=st.floats(-10.0, 0.0),
    grad_out=st.floats(0.1, 3.0),
    seed=st.integers(0, 10_000),
)
def test_hypothesis_torch(batch, dim, scale, bias, grad_out, seed):
    check("torch", batch, dim, scale=scale, bias=bias, grad_out=grad_out, seed=seed)


@pytest.mark.interpreter
@settings(max_examples=examples(10), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 40),
    dim=st.integers(1, 70),
    scale=st.floats(0.5, 100.0),
    bias=st.floats(-10.0, 0.0),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 10_000),
)
def test_hypothesis_triton(batch, dim, scale, bias, dtype, seed):
    check("triton", batch, dim, dtype=dtype, scale=scale, bias=bias, grad_out=1.0, seed=seed)


# --- memory ------------------------------------------------------------------------------------


def _leaves(batch, dim, seed=0):
    img, txt = features(batch, dim, seed=seed)
    scalars = torch.tensor(5.0, requires_grad=True), torch.tensor(-2.0, requires_grad=True)
    return img.requires_grad_(), txt.requires_grad_(), *scalars


@pytest.mark.parametrize("impl", ["torch", TRITON])
def test_never_materialises_b_by_b(monkeypatch, impl):
    monkeypatch.setenv("VLKERNELS_TORCH_CHUNK_ROWS", "8")
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", "0")  # triton: G chunks of one block of rows
    batch, dim = 96, 4
    leaves = _leaves(batch, dim)
    largest, saved = largest_tensors(lambda: sigmoid_loss(*leaves, impl=impl).backward())
    # torch: chunks of 8 rows of S; triton: one 16-row fp32 chunk of G (the interpreter's block), which
    # the interpreter copies as a byte storage (4 x its elements).
    assert largest <= 4 * 16 * batch < batch * batch, largest
    assert saved <= batch * dim
    # The check can fail: the naive implementation does materialise B x B.
    largest, _ = largest_tensors(lambda: sigmoid_loss(*leaves, impl="naive").backward())
    assert largest >= batch * batch


def _peak_bytes(impl, batch, dim):
    leaves = _leaves(batch, dim)
    with PeakLive() as mode:
        sigmoid_loss(*leaves, impl=impl).backward()
    return mode.peak


@pytest.mark.parametrize("impl", ["torch", TRITON])
def test_memory_grows_linearly_with_batch(monkeypatch, impl):
    """Extra memory beyond the inputs is O(B D + B * chunk): quadrupling B at most ~quadruples it, where the
    naive B x B logits grow ~16x (triton without a workspace: G chunks of one block of rows)."""
    monkeypatch.setenv("VLKERNELS_TORCH_CHUNK_ROWS", "8")
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", "0")
    dim = 8
    small, large = _peak_bytes(impl, 32, dim), _peak_bytes(impl, 128, dim)
    assert large <= 4.5 * small, (small, large)
    # gradients (2 B D fp32) and chunk buffers (a few 8 x B fp32) only
    assert large <= 4 * (2 * 128 * dim + 4 * 16 * 128) + 4096, large
    naive_small, naive_large = _peak_bytes("naive", 32, dim), _peak_bytes("naive", 128, dim)
    assert naive_large >= 12 * naive_small, (naive_small, naive_large)


def _extra_bytes(batch, dim, dtype, impl="triton"):
    img, txt = features(batch, dim, dtype, seed=batch)
    leaves = img.requires_grad_(), txt.requires_grad_(), torch.tensor(10.0, requires_grad=True), -3.0
    with PeakLive() as mode:
        sigmoid_loss(*leaves, impl=impl).backward()
    return mode.peak - 2 * batch * dim * img.element_size()  # minus the two feature gradients


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_memory_is_32_bytes_per_row_plus_workspace(monkeypatch, dtype):
    """The torch path's extra memory beyond the inputs and their gradients, forward and backward: at most
    32 bytes per row plus the workspace budget, by the slope between two batch sizes (no fp32 copy of the
    features, no fp32 [B, D] gradient buffers: before, 3 such buffers, 8 D + 4 D bytes per row). With a
    budget of 1 MiB, B = 2048 takes the two-pass backward (its fp32 [B, D] accumulator would not fit half
    of it), B = 512 the one-pass one."""
    workspace = 2**20
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", "1")
    dim = 96
    small, large = (_extra_bytes(batch, dim, dtype, "torch") for batch in (512, 2048))
    assert large <= 32 * 2048 + workspace and small <= 32 * 512 + workspace, (small, large)
    assert (large - small) / (2048 - 512) <= 32, (small, large)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("workspace_mb", ["0", "256"])
def test_torch_backward_passes_match(monkeypatch, dtype, workspace_mb):
    """The one-pass backward (a G.T @ I accumulator in the workspace) and the two-pass one (no workspace:
    column chunks of z.T for the text gradient) against float64, in every dtype, with small chunks."""
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", workspace_mb)
    monkeypatch.setenv("VLKERNELS_TORCH_CHUNK_ROWS", "7")
    check("torch", 37, 19, dtype=dtype, scale=20.0, bias=-4.0, grad_out=1.7)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_memory_is_32_bytes_per_row_plus_workspace(monkeypatch, dtype):
    """Extra memory beyond the inputs and their gradients (every tensor the ops create, forward and
    backward): with no workspace the plan falls back to its smallest buffers and the per-row slope is at
    most 32 bytes (no fp32 [B, D] copy of a gradient); with one, at most 32 bytes per row plus it."""
    dim, sizes = 24, (40, 104)
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", "0")
    small, large = (_extra_bytes(batch, dim, dtype) for batch in sizes)
    assert (large - small) / (sizes[1] - sizes[0]) <= 32, (small, large)
    workspace = 2**15
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", str(workspace / 2**20))
    for batch in sizes:
        extra = _extra_bytes(batch, dim, dtype)
        assert extra <= 32 * batch + workspace, (batch, extra)


# --- torch.compile -----------------------------------------------------------------------------


def test_torch_compile_fullgraph():
    img, txt = features(10, 6)
    fn = torch.compile(lambda *a: sigmoid_loss(*a, impl="torch"), backend="aot_eager", fullgraph=True)
    mod = SigLipLoss(impl="torch")
    compiled_mod = torch.compile(mod, backend="aot_eager", fullgraph=True)
    for call in (fn, compiled_mod):
        want = run(sigmoid_loss, img, txt, 7.0, -3.0, 1.3, impl="torch")
        got = run(call, img, txt, 7.0, -3.0, 1.3)
        for name, a, b in zip(NAMES, got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


# --- hostile inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["torch", TRITON])
def test_double_backward_is_a_clear_error(impl):
    img, txt, scale, bias = _leaves(9, 6)
    grads = torch.autograd.grad(sigmoid_loss(img, txt, scale, bias, impl=impl), [img, txt, scale, bias],
                                create_graph=True)  # fmt: skip
    want = torch.autograd.grad(sigmoid_loss(img, txt, scale, bias, impl="naive"), [img, txt, scale, bias])
    for g, w in zip(grads, want, strict=True):
        torch.testing.assert_close(g.detach(), w, atol=2e-5, rtol=2e-5)
    for g in grads:
        with pytest.raises(RuntimeError, match="double backward"):
            (g * g).sum().backward(retain_graph=True)


@pytest.mark.parametrize("impl", ["torch", TRITON])
def test_gradient_penalty_through_a_parameter_is_a_clear_error(impl):
    """``torch.autograd.grad`` of a gradient penalty with respect to the parameter that makes the features
    raises (before: no path found, zeros with ``materialize_grads=True``); naive gives a non-zero one."""
    img, txt, scale, bias = _leaves(9, 6)
    noise = torch.randn(6, 6, generator=torch.Generator().manual_seed(2))
    weight = (torch.eye(6) + 0.1 * noise).requires_grad_()

    def penalty(impl):
        loss = sigmoid_loss(img.detach() @ weight, txt.detach(), 7.0, -3.0, impl=impl)
        (g,) = torch.autograd.grad(loss, [weight], create_graph=True)
        return g.pow(2).sum()

    (want,) = torch.autograd.grad(penalty("naive"), [weight])
    assert want.abs().sum() > 0
    pen = penalty(impl)
    for kw in ({}, dict(materialize_grads=True)):
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(pen, [weight], retain_graph=True, **kw)


def test_naive_supports_double_backward():
    img, txt, scale, bias = _leaves(9, 6)
    (g,) = torch.autograd.grad(sigmoid_loss(img, txt, scale, bias, impl="naive"), [img], create_graph=True)
    (gg,) = torch.autograd.grad((g * g).sum(), [img])
    assert torch.isfinite(gg).all() and gg.abs().sum() > 0


@pytest.mark.parametrize("impl", ["torch", TRITON])
def test_torch_func_is_a_clear_error(impl):
    img, txt = features(9, 6, seed=1)
    with pytest.raises(RuntimeError, match="torch.func transforms"):
        torch.func.grad(lambda i: sigmoid_loss(i, txt, 3.0, -1.0, impl=impl))(img)


@pytest.mark.parametrize("impl", ["naive", "torch", TRITON])
def test_autocast_does_not_downcast(impl):
    leaves = _leaves(9, 6)
    want = sigmoid_loss(*leaves, impl=impl)
    want_g = torch.autograd.grad(want, leaves)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sigmoid_loss(*leaves, impl=impl)
        if impl != "naive":
            got_g = torch.autograd.grad(got, leaves, retain_graph=True)
    if impl == "naive":
        got_g = torch.autograd.grad(got, leaves)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    for g, w in zip(got_g, want_g, strict=True):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(logit_bias=torch.ones(2)), ValueError, "logit_bias must be a scalar"),
        (dict(logit_bias=torch.ones(1, 2)), ValueError, "logit_bias must be a scalar"),
        (dict(logit_bias=torch.tensor(3)), TypeError, "logit_bias must be a floating-point tensor"),
        (dict(logit_bias="-10"), TypeError, "logit_bias must be a float"),
        (dict(logit_bias=True), TypeError, "logit_bias must be a float"),
        (dict(logit_bias=float("nan")), ValueError, "logit_bias must be finite"),
        (dict(logit_bias=torch.tensor(-1.0, device="meta")), ValueError, "logit_bias is on the meta device"),
        (dict(logit_scale=torch.tensor(2.0, device="meta")), ValueError, "logit_scale is on the meta device"),
        (dict(logit_scale=torch.ones(2)), ValueError, "logit_scale must be a scalar"),
        (dict(logit_scale="3"), TypeError, "logit_scale must be a float"),
        (dict(impl="cuda"), ValueError, "impl must be one of"),
        (dict(group=object()), ValueError, "group is used only with gather=True"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    img, txt = features(5, 3)
    kwargs = dict(kwargs)
    scale, bias = kwargs.pop("logit_scale", 1.0), kwargs.pop("logit_bias", -1.0)
    with pytest.raises(exc, match=match):
        sigmoid_loss(img, txt, scale, bias, **kwargs)
    if "group" not in kwargs and "impl" not in kwargs:
        with pytest.raises(exc, match=match):
            SigLipLoss()(img, txt, scale, bias)


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda i, t: (i, t[:3]), ValueError, "same shape"),
        (lambda i, t: (i[0], t[0]), ValueError, "2-D"),
        (lambda i, t: (i[:0], t[:0]), ValueError, "empty batch"),
        (lambda i, t: (i[:, :0], t[:, :0]), ValueError, "D=0"),
        (lambda i, t: (i, t.half()), TypeError, "same dtype"),
        (lambda i, t: (i.double(), t.double()), TypeError, "supported"),
        (lambda i, t: (i.numpy(), t), TypeError, "torch.Tensor"),
        (lambda i, t: (i, t.to("meta")), ValueError, "same device"),
    ],
)
def test_bad_features(make, exc, match):
    img, txt = features(5, 3)
    a, b = make(img, txt)
    with pytest.raises(exc, match=match):
        sigmoid_loss(a, b, 1.0, -1.0)


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    img, txt = features(4, 4)
    with pytest.raises(RuntimeError, match="impl='triton' cannot run.*CUDA"):
        sigmoid_loss(img, txt, 1.0, 0.0, impl="triton")
    assert resolve_impl("auto", torch.device("cpu")) == "torch"


# --- SigLipLoss --------------------------------------------------------------------------------


def test_siglip_module_matches_functional():
    img, txt = features(14, 10)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    want = sigmoid_loss(img, txt, scale, bias, impl="naive")
    for dist_impl in (None, "bidir", "shift", "reduce", "gather"):
        mod = SigLipLoss(dist_impl=dist_impl, impl="torch")
        torch.testing.assert_close(mod(img, txt, scale, bias), want, atol=2e-5, rtol=2e-5)
        out = mod(img, txt, scale, bias, output_dict=True)
        assert set(out) == {"contrastive_loss"}
        torch.testing.assert_close(out["contrastive_loss"], want, atol=2e-5, rtol=2e-5)
    assert SigLipLoss().dist_impl == "bidir"
    assert "dist_impl='bidir'" in repr(SigLipLoss())


def test_siglip_module_validates_in_the_constructor():
    with pytest.raises(ValueError, match="dist_impl must be None or one of"):
        SigLipLoss(dist_impl="ring")
    with pytest.raises(ValueError, match="impl must be one of"):
        SigLipLoss(impl="bogus")
    with pytest.raises(ValueError, match="rank < world_size"):
        SigLipLoss(rank=2, world_size=2)


def test_distributed_without_process_group_raises():
    img, txt = features(4, 3)
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        sigmoid_loss(img, txt, 1.0, 0.0, gather=True)
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        SigLipLoss(rank=1, world_size=2)(img, txt, 1.0, 0.0)
