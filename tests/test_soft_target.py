"""Soft-target (PSD) loss: every impl against the naive reference, values and all gradients; the
open_clip DistillClipLoss formula; schedules; errors; no B x B tensor."""

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
    assert_within_float64_error,
    centered_scale_grad,
    exact_hard_part,
    exact_soft_target_grads,
    examples,
    features,
    force_plan,
    g_rounding_bound,
    largest_tensors,
    logit_term_scales,
    paired_features,
    relative_ulps,
    run_loss,
    smoothed_targets,
    soft_relative_ulps,
    teacher_rounding,
    term_scales,
)
from tests.test_contrastive import dominant_diagonal
from vlkernels import DistillClipLoss, SoftTargetLoss, contrastive_loss, progressive_alpha, soft_target_loss
from vlkernels.ops.soft_target import mean_difference, row_terms
from vlkernels.ops.soft_target_torch import TorchSoftTargetBackend
from vlkernels.ops.torch_utils import lse_nats, pack_lse, rest_below_one, weighted_row_sum
from vlkernels.reference import distill_clip_loss_naive, soft_target_loss_naive

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TRITON = pytest.param("triton", marks=pytest.mark.interpreter)


def _teacher_kwargs(batch: int, t_dim: int | None, dtype=torch.float32, t_scale=9.0, device="cpu"):
    if t_dim is None:
        return {}
    t_img, t_txt = features(batch, t_dim, dtype, device=device, seed=batch * 7 + t_dim)
    return dict(teacher_image_features=t_img, teacher_text_features=t_txt, teacher_logit_scale=t_scale)


def _mask(batch: int, device="cpu") -> torch.Tensor:
    return torch.arange(batch, device=device) % 3 != 1


def _float64_run(img, txt, scale, alpha, kw, grad_out):
    """The exact (float64 naive) loss and gradients for ``soft_target_loss``'s keywords ``kw``, and the
    float64 (image, text, [teacher image, teacher text, teacher scale]) it used."""
    img64, txt64, scale64, kw64 = as_float64(img, txt, torch.tensor(scale, device=img.device), kw)
    eps = kw64.pop("label_smoothing")
    keys = ("teacher_image_features", "teacher_text_features", "teacher_logit_scale")
    teacher = [kw64.get(k) for k in keys]
    mask, reduction = kw64.get("soft_mask"), kw64.get("reduction", "mean")
    exact = run_loss(
        lambda i, t, s: soft_target_loss_naive(i, t, s, alpha, *teacher, mask, eps, reduction),
        img64, txt64, scale64, grad_out,
    )  # fmt: skip
    return exact, (img64, txt64, teacher)


def _run_impl(impl, img, txt, scale, alpha, kw, grad_out):
    """``run_loss`` of ``soft_target_loss`` with ``impl`` and the keywords ``kw``."""
    fn = lambda i, t, s: soft_target_loss(i, t, s, alpha, impl=impl, **kw)  # noqa: E731
    return run_loss(fn, img, txt, torch.tensor(scale, device=img.device), grad_out)


def _check(
    impl,
    batch,
    dim,
    dtype=torch.float32,
    alpha=0.3,
    t_dim=None,
    mask=False,
    eps=0.0,
    reduction="mean",
    grad_out=1.0,
    scale=14.3,
    t_dtype=torch.float32,
    t_scale=9.0,
    device="cpu",
):
    """The loss and the grads of (image, text, logit_scale) of ``impl`` on the float64 rule
    (``_check_features``); none to the teacher (features ``t_dtype``, scale ``t_scale``). On
    ``device`` (tests/test_gpu_soft_target.py passes "cuda")."""
    img, txt = features(batch, dim, dtype, device=device, seed=batch * 1000 + dim)
    teacher_kw = _teacher_kwargs(batch, t_dim, t_dtype, t_scale, device)
    kw = dict(label_smoothing=eps, reduction=reduction, **teacher_kw)
    if mask:
        kw["soft_mask"] = _mask(batch, device)
    teacher = [kw[k] for k in ("teacher_image_features", "teacher_text_features") if k in kw]
    for t in teacher:
        t.requires_grad_()
    got = _check_features(impl, img, txt, scale, alpha, kw, grad_out)
    assert all(t.grad is None for t in teacher), "the teacher must get no gradient"
    return got


def _check_features(impl, img, txt, scale, alpha, kw, grad_out, terms=None):
    """The loss and the grads of ``impl`` (``soft_target_loss`` with the keywords ``kw``) on these features,
    on flash-attention's rule: they err from the float64 loss by at most twice what torch's naive loss
    in the features' dtype errs (``assert_within_float64_error``), and, on the Triton path in a 16-bit
    dtype, what rounding dL/dS to it adds (``g_rounding_bound``: the kernels round it at a scale of their
    own): its elements are at most the student's row and column softmaxes plus the targets' (smoothed
    one-hot and the teacher's softmaxes, whatever alpha and the mask), each term scaled by s g / (2B).
    Gradients in the features' dtype, the loss and d_scale in fp32 (as naive's); returns them. ``terms``:
    the error scales (default ``term_scales``, for unit features; ``logit_term_scales`` for others)."""
    batch, dtype = img.shape[0], img.dtype
    got = _run_impl(impl, img, txt, scale, alpha, kw, grad_out)
    exact, (img64, txt64, teacher) = _float64_run(img, txt, scale, alpha, kw, grad_out)
    base = _run_impl("naive", img, txt, scale, alpha, kw, grad_out)
    g = grad_out * (2.0 if kw.get("reduction") == "sum" else 1.0)  # "sum": the two directional means
    rounding = None
    if impl == "triton":
        logits = scale * img64 @ txt64.T
        t_logits = logits if teacher[0] is None else teacher[2] * teacher[0] @ teacher[1].T
        weights = logits.softmax(1) + logits.softmax(0) + t_logits.softmax(1) + t_logits.softmax(0)
        weights += 2.0 * smoothed_targets(batch, kw["label_smoothing"], img.device)
        rounding = g_rounding_bound(dtype, exact, weights, img64, txt64, g * scale / (2 * batch))
    terms = terms or term_scales(batch, scale, g)
    assert_within_float64_error(got, base, exact, terms, rounding=rounding)
    return got


# --- torch backend (fast) ---------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2, 3, 17, 127])
@pytest.mark.parametrize("dim", [1, 7, 64, 100, 129])
@pytest.mark.parametrize("t_dim", [None, 33])
def test_torch_matches_naive_shapes(batch, dim, t_dim):
    _check("torch", batch, dim, t_dim=t_dim, mask=batch > 2, eps=0.1, grad_out=1.7)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0, "tensor"])
@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("t_dim", [None, 24])
def test_torch_matches_naive_options(alpha, mask, eps, reduction, t_dim):
    alpha = torch.tensor(0.6) if alpha == "tensor" else alpha
    _check("torch", 19, 23, alpha=alpha, t_dim=t_dim, mask=mask, eps=eps, reduction=reduction, grad_out=0.7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t_dim", [None, 48])
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_torch_matches_naive_dtypes(dtype, t_dim, scale):
    _check("torch", 33, 65, dtype=dtype, t_dim=t_dim, mask=True, eps=0.1, grad_out=0.3, scale=scale)


def test_torch_small_chunks_match(monkeypatch):
    # Several chunks: exercises the online merge of the column statistics across chunks.
    monkeypatch.setenv("VLKERNELS_TORCH_CHUNK_ROWS", "5")
    for t_dim in (None, 11):
        _check("torch", 37, 19, t_dim=t_dim, mask=True, eps=0.1, grad_out=2.0)


# --- Triton kernels under the interpreter -----------------------------------------------------


@pytest.mark.interpreter
@pytest.mark.parametrize("batch,dim", [(1, 1), (2, 7), (3, 64), (17, 100), (17, 129), (40, 1), (33, 65)])
@pytest.mark.parametrize("t_dim", [None, 5, 40])
def test_triton_matches_naive_shapes(batch, dim, t_dim):
    _check("triton", batch, dim, t_dim=t_dim, mask=batch > 2, eps=0.1, grad_out=1.7)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch", [1, 70])
def test_triton_wide_tiles_match_naive(dtype, batch):
    """16-bit features with D a multiple of 16 above 64 and the self teacher: the statistics kernel's wide
    score tiles and the dL/dS kernel's, both read through tensor descriptors, each tile's epilogue in four
    column parts (the dL/dS ones with their own ds partials; ``tile_config``; in the interpreter 16 x 64
    and 32 x 64 tiles, parts of 16: at 70 columns the second tile's last two parts hold no column),
    against naive."""
    from vlkernels.ops.soft_target_triton import tile_config

    assert tile_config(80, dtype, None, "stats").get("PARTS") == 4
    assert tile_config(80, dtype, None, "stats")["TMA"]
    assert not tile_config(80, dtype, None, "stats", tma=False).get("TMA")
    assert tile_config(80, dtype, None, "stats", arch=80).get("PARTS", 1) == 1
    assert tile_config(80, dtype, None, "weights")["TMA"]
    assert not tile_config(80, dtype, None, "weights", arch=80).get("TMA")
    _check("triton", batch, 80, dtype=dtype, mask=batch > 2, eps=0.1, grad_out=1.3)


@pytest.mark.interpreter
def test_triton_wide_tiles_fall_back_for_strided_features(monkeypatch):
    """Features TMA cannot read (a column-major view) take the pointer-load configs of the statistics
    (the wide tiles' parts, 128 x 128 on a GPU) and of dL/dS, and still match naive; contiguous ones are
    read through descriptors by both kernels."""
    from vlkernels.ops import soft_target_triton as stt
    from vlkernels.ops import triton_utils as tu

    made = []
    real = tu.TensorDescriptor

    class Spy:
        @staticmethod
        def from_tensor(t, block):
            made.append(t.shape)
            return real.from_tensor(t, block)

    stats = []
    real_meta = stt._launch_meta

    def meta_spy(q, k, teacher):
        meta, rest = real_meta(q, k, teacher)
        stats.append((meta.get("PARTS"), bool(meta.get("TMA"))))
        return meta, rest

    monkeypatch.setattr(tu, "TensorDescriptor", Spy)
    monkeypatch.setattr(stt, "_launch_meta", meta_spy)
    img, txt = features(37, 80, torch.bfloat16, seed=3)
    img = img.t().contiguous().t()
    kw = dict(label_smoothing=0.1)
    _check_features("triton", img, txt, 14.3, 0.3, kw, 1.0)
    assert not made and stats and set(stats) == {(4, False)}, stats
    stats.clear()
    _check("triton", 37, 80, dtype=torch.bfloat16, eps=0.1, grad_out=1.3)
    assert made and stats and set(stats) == {(4, True)}, stats


@pytest.mark.interpreter
@pytest.mark.parametrize("alpha", [0.0, 1.0, "tensor"])
@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("t_dim", [None, 24])
def test_triton_matches_naive_options(alpha, mask, t_dim):
    alpha = torch.tensor(0.6) if alpha == "tensor" else alpha
    _check("triton", 19, 23, alpha=alpha, t_dim=t_dim, mask=mask, eps=0.0, reduction="sum", grad_out=0.7)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t_dim", [None, 48])
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_triton_matches_naive_dtypes(dtype, t_dim, scale):
    _check("triton", 20, 40, dtype=dtype, t_dim=t_dim, mask=True, eps=0.1, grad_out=0.7, scale=scale)


@pytest.mark.parametrize("impl", ["torch", TRITON])
@pytest.mark.parametrize("workspace_mb", [None, "0"])
@pytest.mark.parametrize("t_dim", [None, 70])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_paths(monkeypatch, impl, workspace_mb, t_dim, dtype):
    """The single-process backward's paths against naive. Triton: D = 70 > BLOCK_D (the score tiles walk
    D in chunks); a zero workspace budget: dL/dS in chunks of one block of rows and slabs of one block of
    columns; bf16: no text columns covered by the row pass's accumulator (all from the column pass);
    fp32: every text column accumulated in place in the gradient. torch: with the default budget one
    pass (an fp32 W.T @ I accumulator), with none a second pass over column chunks; chunks of 8 rows."""
    if workspace_mb is not None:
        monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", workspace_mb)
    monkeypatch.setenv("VLKERNELS_TORCH_CHUNK_ROWS", "8")
    _check(impl, 41, 70, dtype=dtype, t_dim=t_dim, mask=True, eps=0.1, grad_out=1.3)


@pytest.mark.interpreter
@pytest.mark.parametrize("t_dim", [None, 70])
def test_triton_backward_large_chunks_in_slabs(monkeypatch, t_dim):
    """The kind of plan large batches take (chunks of many rows, dL/dS in slabs of columns, part of the text
    columns accumulated in the row pass) at a small size against naive, bf16: 150 rows in chunks of 64,
    slabs of 48 columns (the last ones short), the first 112 text columns accumulated, the rest from the
    column pass; with a teacher, its tiles recomputed per slab."""
    from vlkernels.ops import soft_target_triton

    calls = force_plan(monkeypatch, soft_target_triton, chunk=64, slab=48, covered=112)
    _check("triton", 150, 24, dtype=torch.bfloat16, t_dim=t_dim, mask=True, eps=0.1, grad_out=1.3)
    assert calls


def _extra_bytes(batch, dim, dtype, impl, t_dim=None):
    """Live bytes the loss's forward + backward create beyond the gradients of the two features."""
    img, txt = features(batch, dim, dtype, seed=batch)
    img.requires_grad_(), txt.requires_grad_()
    scale = torch.tensor(10.0, requires_grad=True)
    kw = _teacher_kwargs(batch, t_dim, dtype)
    mask = _mask(batch)  # an input, as the features
    with PeakLive() as mode:
        loss = soft_target_loss(img, txt, scale, 0.4, soft_mask=mask, label_smoothing=0.1, impl=impl, **kw)
        loss.backward()
    return mode.peak - 2 * batch * dim * img.element_size()


def _slope_plan(impl):
    """(workspace in bytes, two batch sizes) between which the extra memory's per-row slope is the state
    the loss keeps per row. Triton: no workspace (its plans fall back to their smallest buffers, whose size
    does not grow with B). Torch: its smallest chunk is a row of S, whose [1, N] buffers (three at once)
    would count 12 B/row with no workspace; with 32 KiB, chunks of 1024 scores ([4, 256], [2, 512]) and
    slabs alike at both sizes, both of which take the two-pass plan (an [N, D] text accumulator does not
    fit half the workspace at D = 24)."""
    return (0, (64, 96)) if impl == "triton" else (2**15, (256, 512))


@pytest.mark.parametrize("impl", ["torch", TRITON])
def test_distill_clip_loss_memory_is_32_bytes_per_row(monkeypatch, impl):
    """DistillClipLoss (a separate teacher, hard and soft weights 1) under the same bound: the per-row
    slope of the extra memory is at most 32 bytes (``_slope_plan``)."""
    workspace, sizes = _slope_plan(impl)
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", str(workspace / 2**20))

    def extra(batch, dim=24):
        img, txt = features(batch, dim, seed=batch)
        img.requires_grad_(), txt.requires_grad_()
        t_img, t_txt = features(batch, 40, seed=batch + 1)
        scale = torch.tensor(10.0, requires_grad=True)
        with PeakLive() as mode:
            sum(DistillClipLoss(impl=impl)(img, txt, scale, t_img, t_txt, 9.0)).backward()
        return mode.peak - 2 * batch * dim * 4

    # the state: r, c, r', c' as fp32 hi + bf16 lo (24 B), the diagonal factors v and u (8 B); the soft
    # weights are 1 (none saved): Triton 32 B/row, torch at most that
    small, large = extra(sizes[0]), extra(sizes[1])
    assert (large - small) / (sizes[1] - sizes[0]) <= 32, (small, large)


@pytest.mark.parametrize("impl", ["torch", TRITON])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t_dim", [None, 40])
def test_memory_is_32_bytes_per_row_plus_workspace(monkeypatch, impl, dtype, t_dim):
    """The contrastive loss's bound (issue: every impl, a separate teacher included): beyond the inputs and
    the features' gradients, at most 32 bytes per row plus the workspace budget (no fp32 copy of the
    features, no fp32 [B, D] gradient or product buffers): the per-row slope between two batch sizes
    (``_slope_plan``) is at most 32 bytes, and with a workspace the extra stays within 32 bytes per row
    plus it."""
    # The slope is exact: the state per row. The student's r and c as fp32 hi + bf16 lo (12 B) and the hard
    # diagonal factors v (4 B); with a teacher r' and c' alike (12) and the soft diagonal factors u (4); the
    # soft weights are the caller's mask times alpha (no saved vector; a fp32 one made the teacher's 36 B):
    # Triton 16 / 32 B/row, torch 17.6-19.1 / 27-31 (its peak holds chunk temporaries). r' and c' in float64
    # (4 B more), or an fp32 row of D = 24 (96 B), fail. Triton's sizes stay small (the interpreter).
    measured = {}

    def extra(workspace, batch):  # (torch's slope plan has the bound's workspace: each size runs once)
        if (workspace, batch) not in measured:
            monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", str(workspace / 2**20))
            measured[workspace, batch] = _extra_bytes(batch, 24, dtype, impl, t_dim)
        return measured[workspace, batch]

    workspace, sizes = _slope_plan(impl)
    small, large = (extra(workspace, batch) for batch in sizes)
    bound = 32 if t_dim else (16 if impl == "triton" else 20)
    assert (large - small) / (sizes[1] - sizes[0]) <= bound, (small, large)
    for batch in sizes:
        assert extra(2**15, batch) <= 32 * batch + 2**15, (batch, measured)


def test_gathered_row_terms_convert_the_features_by_chunks(monkeypatch):
    """The gathered Function's O(b D) row terms: the pair-weighted feature sum (``weighted_row_sum``; also
    sum_j e_j T_j over the B gathered texts in the backward) and <I_i, T_i>, <I_i, colsum_t>,
    <T_i, colsum_i> (``row_terms``: the hard targets and the label smoothing's mean logits, over s)
    convert 16-bit features a chunk of rows at a time. Before, fp32 copies of the local features and, with
    label smoothing, of all B gathered texts: 49 KiB each here, against a bound of a few chunks. Values
    against float64, within fp32's accumulation error."""
    monkeypatch.setenv("VLKERNELS_TORCH_CHUNK_ROWS", "8")
    batch, dim = 257, 48
    img, txt = features(batch, dim, torch.bfloat16, seed=3)
    w = torch.rand(batch, generator=torch.Generator().manual_seed(5)) + 0.5
    colsum_i, colsum_t = img.sum(0, dtype=torch.float32), txt.sum(0, dtype=torch.float32)
    with PeakLive() as mode:
        got_w = weighted_row_sum(w, img)
        diag, row_t, col_i = row_terms(img, txt, colsum_i, colsum_t, diag=True)
    chunk = 8 * dim * 4
    assert mode.peak <= 6 * chunk + 3 * batch * 4 + 4 * dim, mode.peak
    assert row_terms(img, txt)[1:] == (None, None) and row_terms(img, txt, colsum_i, colsum_t)[0] is None
    i64, t64 = img.double(), txt.double()
    ci, ct = colsum_i.double(), colsum_t.double()
    wants = [
        (got_w, w.double() @ i64, w.double() @ i64.abs()),
        (diag, (i64 * t64).sum(1), (i64 * t64).abs().sum(1)),
        (row_t, i64 @ ct, i64.abs() @ ct.abs()),
        (col_i, t64 @ ci, t64.abs() @ ci.abs()),
    ]
    for got, want, magnitude in wants:
        assert got.dtype == torch.float32
        # fp32 accumulation: at most n roundings of sums bounded by the magnitude (n = batch or dim)
        assert ((got.double() - want).abs() <= 2.0**-23 * batch * magnitude + 1e-30).all()


@pytest.mark.interpreter
@pytest.mark.slow
@pytest.mark.parametrize("t_dim", [None, 100])
def test_triton_matches_naive_large(t_dim):
    _check("triton", 127, 129, t_dim=t_dim, mask=True, eps=0.1, grad_out=0.5)


@pytest.mark.parametrize("impl", ["torch", TRITON])
@pytest.mark.parametrize(
    "dim,teacher,alpha,eps",
    [
        (7, False, 0.4, 0.0),
        (64, False, 0.4, 0.0),
        (64, True, 0.3, 0.0),
        (64, False, 0.0, 0.0),
        (7, True, 0.0, 0.0),
        (64, True, 1.0, 0.1),
        (7, False, 1.0, 0.1),
    ],
)
def test_near_one_hot_gradients_match_naive(impl, dim, teacher, alpha, eps):
    """Aligned pairs at s = 100, B = 2 (loss ~1e-30, gradients ~1e-30 to 1e-36): fp32 keeps those gradients
    (naive errs by 1e-35 at most), so each feature and scale gradient may err from float64 by twice
    naive's error plus 8 ulps of its own largest element, not of the unit-feature error scale; so does the
    loss of the hard targets alone (alpha 0: the LSEs less the pass's own diagonal scores, ``hard_gaps``).
    Not the loss with a soft part: its soft gaps keep log1p(rest) ~ 1e-31 (``soft_partials``), which the
    float64 reference's log-softmax rounds away (log(1 + 1e-31) = 0 in float64: 1.4% of that loss;
    ``test_soft_part_near_one_hot_keeps_its_own_ulps`` checks it where float64 sees the rest). The torch
    backend formed the column hard weights in another rounding than the rows', so the hard targets left
    an ulp of the weight on the diagonal: 9e-7 at D = 64, 2.6e-6 at D = 7. With a separate teacher, also
    near one-hot (s' = 100), the torch backend's diagonal 2 p - q - q - 2 e (p = e + q) left an ulp of p:
    5.6e-7 where the exact gradient is 4e-38. At alpha 1 with label smoothing the hard weights h = 1 - a
    are 0, and the torch backend subtracted the smoothing's column term as +a_j eps / B, then -eps / B:
    the first rounded the separate teacher's tiny weights away (1e5-5e5x naive's error, 100% of them).
    The reference takes the hard part's exact values (``exact_hard_part``: float64 autograd drops masses
    below 2^-53, which the losses now keep), and where the gradients are 1 - alpha times the contrastive
    loss's (the self teacher, alpha 0) each is held to 16 ulps of its own error scale (``relative_ulps``):
    the diagonal's hard part formed from P_ii failed that by ~1e5. With a separate teacher and a soft part
    the reference's diagonal is the masses' too (``exact_soft_target_grads``: autograd's P_ii - P'_ii is 0
    there) and the gradients are held to 16 ulps of their own error scales (``soft_relative_ulps``): the
    soft part's diagonal formed from the two softmaxes erred by 2.3e-33 where naive's error was 7e-36."""
    img, txt = features(2, dim, seed=2 + dim)
    kw = dict(label_smoothing=eps)
    if teacher:
        t_img, t_txt = features(2, 5, seed=3)
        kw.update(teacher_image_features=t_img, teacher_text_features=t_txt, teacher_logit_scale=100.0)
    got = _run_impl(impl, img, txt, 100.0, alpha, kw, 1.3)
    base = _run_impl("naive", img, txt, 100.0, alpha, kw, 1.3)
    exact, _ = _float64_run(img, txt, 100.0, alpha, kw, 1.3)
    soft_teacher = teacher and alpha > 0.0
    if soft_teacher:
        grads, _ = exact_soft_target_grads(img, txt, 100.0, t_img, t_txt, 100.0, alpha, eps, 1.3)
        exact = [exact[0], *(g.to(e.device) for g, e in zip(grads, exact[1:], strict=True))]
    elif alpha < 1.0:
        exact = exact_hard_part(exact, img, txt, 100.0, 1.0 - alpha, eps, 1.3)
    first = 0 if alpha == 0.0 else 1
    names = ("loss", "d_image", "d_text", "d_scale")[first:]
    assert_within_float64_error(got[first:], base[first:], exact[first:], (0.0,) * len(names), names=names)
    if soft_teacher:
        worst = soft_relative_ulps(got[1:], img, txt, 100.0, t_img, t_txt, 100.0, alpha, eps, 1.3)
    else:
        # the gradients are 1 - alpha times the contrastive loss's (the self teacher's soft part has
        # none): each within 16 ulps of its own error scale (the masses on the diagonal)
        worst = relative_ulps(got, img, txt, 100.0, eps, 1.3 * (1.0 - alpha))[first:]
    assert max(worst) <= 16, worst


@pytest.mark.parametrize("dim", [0, 1])
def test_rest_below_one_sums_the_terms_below_one(dim):
    """The torch backend's rests (``torch_utils.rest_below_one``) on terms exp(s - max): every term below 1
    summed, the terms that round to 1 counted, less one (or none where ``exclude`` is False), against
    float64 sums; ties of the max count whole; a NaN term gives NaN and an infinite one inf (as the
    masked_fill formulation it replaced, whose values it must keep bitwise)."""
    gen = torch.Generator().manual_seed(3)
    e = torch.rand(9, 37, generator=gen).mul_(0.999)
    e[:, 0] = 1.0  # each line's max
    e[2, 5:8] = 1.0  # three ties with it
    e[4, 1:] = torch.rand(36, generator=gen) * 1e-30  # a near one-hot line: the rest is tiny
    e[6, 3] = float("nan")
    e[7, 9] = float("inf")
    lines = e if dim == 1 else e.T.contiguous()
    exclude = torch.arange(9) % 2 == 0
    e64 = e.double()
    below64, ones = e64.where(e64 < 1.0, 0.0).sum(1), (e64 >= 1.0).sum(1).double()
    finite = torch.arange(9) < 6
    for ex in (None, exclude):
        got = rest_below_one(lines.clone(), dim, exclude=ex)
        want = below64 + (ones - (1.0 if ex is None else ex.double()))
        assert torch.allclose(got[finite].double(), want[finite], rtol=4e-7, atol=0.0), (got, want)
        assert got[4] < 1e-28 and got[4] == pytest.approx(want[4], rel=1e-6)  # no ulp of 1 in a tiny rest
        assert torch.isnan(got[6]) and got[7] == float("inf")
        # the replaced formulation, bitwise
        old = lines.clone()
        total = old.sum(dim)
        below = old.masked_fill_(old >= 1.0, 0.0).sum(dim)
        count = torch.round(total - below)
        old_rest = below.add_(count.sub_(1.0 if ex is None else ex.to(count.dtype)))
        assert torch.allclose(got, old_rest, rtol=0.0, atol=0.0, equal_nan=True)  # NaN where it was


@pytest.mark.parametrize("teacher", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_centered_scale_grad_is_float64_autograd(teacher, eps):
    """``tests/_ref.centered_scale_grad``, the logit_scale gradient that the gathered near one-hot check
    (tests/test_distributed.py) holds the Function to, is float64 autograd's where float64 keeps every
    rest (B = 9, s = 7, alpha 0.3); near one-hot (B = 4, s = 100, aligned pairs: rests ~1e-26; the self
    teacher without smoothing, where the hard part is the whole gradient) autograd drops each row's
    -rest <I_i, T_i> (its softmax's diagonal rounds to 1) and errs by more than the whole gradient,
    which the centred form keeps."""
    for batch, scale, noise in ((9, 7.0, 0.8), (4, 100.0, 0.1)):
        g = torch.Generator().manual_seed(batch)
        img = F.normalize(torch.randn(batch, 64, generator=g, dtype=torch.float64), dim=1)
        txt = F.normalize(img + noise * torch.randn(batch, 64, generator=g, dtype=torch.float64), dim=1)
        t_args = (None, None, None)
        if teacher:
            t_img = F.normalize(img + noise * torch.randn(batch, 64, generator=g, dtype=torch.float64), dim=1)
            t_args = (t_img, txt, torch.tensor(scale, dtype=torch.float64))
        s = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
        (auto,) = torch.autograd.grad(soft_target_loss_naive(img, txt, s, 0.3, *t_args, None, eps, "sum"), s)
        want = centered_scale_grad(img, txt, scale, 0.3, None if not teacher else t_args, eps)
        if batch == 9:
            torch.testing.assert_close(want, auto, rtol=1e-12, atol=0.0)
        elif not (eps or teacher):  # (smoothing's eps (d_ii - mean) and the teacher's part dominate)
            assert (auto - want).abs() > want.abs(), (auto, want)


@pytest.mark.parametrize("impl", ["torch", TRITON])
@pytest.mark.parametrize("teacher", [False, True])
def test_weights_near_one_keep_an_ulp_of_one(impl, teacher):
    """The contrastive loss's test of this name for the soft target (alpha 0.3, no smoothing): B = 64,
    D = 32, texts = normalise(images + 0.1 noise), s = 30 (rows whose off-diagonal softmax mass is ~1e-7 to
    1e-5); with ``teacher`` a separate one built alike (D' = 24, s' = 30). The feature gradients within
    twice naive's error plus 8 ulps of their own largest element. With fp32 LSEs, the self teacher's
    gradients erred by 5.2-7.3x naive's error (torch and Triton), the separate teacher's by 7.3-8.8x; with
    the student's two-part and the teacher's fp32, 0.6-0.8x and 1.5-4.6x (the teacher's ulp of |S'| left
    in its weights); now the teacher's are two-part too, kept as fp32 hi + bf16 lo (32 B/row:
    docs/design.md, "Two-part LSEs"), 0.7-1.7x. d_scale on the unit-feature error scale (8 ulps of
    g (1 + s))."""
    g = torch.Generator().manual_seed(2)
    img = F.normalize(torch.randn(64, 32, generator=g), dim=1)
    txt = F.normalize(img + 0.1 * torch.randn(64, 32, generator=g), dim=1)
    kw = dict(label_smoothing=0.0)
    if teacher:
        t_img = F.normalize(torch.randn(64, 24, generator=g), dim=1)
        t_txt = F.normalize(t_img + 0.1 * torch.randn(64, 24, generator=g), dim=1)
        kw.update(teacher_image_features=t_img, teacher_text_features=t_txt, teacher_logit_scale=30.0)
    got = _run_impl(impl, img, txt, 30.0, 0.3, kw, 1.3)
    base = _run_impl("naive", img, txt, 30.0, 0.3, kw, 1.3)
    exact, _ = _float64_run(img, txt, 30.0, 0.3, kw, 1.3)
    terms = (0.0, 0.0, term_scales(64, 30.0, 1.3)[3])
    names = ("d_image", "d_text", "d_scale")
    assert_within_float64_error(got[1:], base[1:], exact[1:], terms, 2.0, names)


def _soft_error_scale(img, txt, scale, alpha, t_img=None, t_txt=None, t_scale=None) -> float:
    """The soft part's sensitivity to its scores' own rounding: sum_ij |softmax(S)_ij - P_ij| |S_ij| over
    rows and columns, times alpha / (2B) (P the teacher's softmax). Each fp32 score errs by a few ulps of
    itself, and d soft / d S_ij is alpha (softmax - P)_ij / (2B): with the self teacher it is 0 to first
    order (the loss is the entropy of the softmax), with a separate one the scores' rounding alone moves
    the loss by up to this many ulps, for any implementation, naive's included."""
    s = scale * (img.double() @ txt.double().T)
    t = s if t_img is None else t_scale * (t_img.double() @ t_txt.double().T)
    rows = ((s.softmax(1) - t.softmax(1)).abs() * s.abs()).sum()
    cols = ((s.softmax(0) - t.softmax(0)).abs() * s.abs()).sum()
    return alpha * (rows + cols).item() / (2 * img.shape[0])


@pytest.mark.parametrize("impl", ["torch", TRITON])
@pytest.mark.parametrize("teacher", [False, True])
@pytest.mark.parametrize("alpha", [1.0, 0.3])
@pytest.mark.parametrize("seed", [2, 11, 14])
def test_soft_part_near_one_hot_keeps_its_own_ulps(impl, teacher, alpha, seed):
    """The loss value near one-hot (``test_weights_near_one_keep_an_ulp_of_one``'s case: B = 64, D = 32,
    texts = normalise(images + 0.1 noise), s = 30; alpha 1: the soft part alone), on the float64 rule
    with 8 ulps of the soft part's own error scale (``_soft_error_scale``: 0 for the self teacher, so
    there 8 ulps of the loss itself). The soft gaps are sums of non-negative terms (``soft_partials``):
    LSE - sum_j P_ij S_ij formed as it reads kept an ulp of |S| per row, 4-29x naive's error on seed 2
    (torch and Triton); checked in fp32 torch ops over 20 seeds, 0.13-62x naive's error then, the soft
    gaps 0.01-0.22x (self teacher; with a separate one naive's own error, which the scores' rounding
    dominates, is sometimes 30x smaller than on other seeds: seeds 11 and 14 have the smallest)."""
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(64, 32, generator=g), dim=1)
    txt = F.normalize(img + 0.1 * torch.randn(64, 32, generator=g), dim=1)
    kw = dict(label_smoothing=0.0)
    t_args = ()
    if teacher:
        t_img = F.normalize(img + 0.05 * torch.randn(64, 32, generator=g), dim=1)
        t_txt = F.normalize(txt + 0.05 * torch.randn(64, 32, generator=g), dim=1)
        kw.update(teacher_image_features=t_img, teacher_text_features=t_txt, teacher_logit_scale=30.0)
        t_args = (t_img, t_txt, 30.0)
    got = _run_impl(impl, img, txt, 30.0, alpha, kw, 1.3)
    base = _run_impl("naive", img, txt, 30.0, alpha, kw, 1.3)
    exact, _ = _float64_run(img, txt, 30.0, alpha, kw, 1.3)
    term = _soft_error_scale(img, txt, 30.0, alpha, *t_args)
    assert teacher or term == 0.0
    assert_within_float64_error(got[:1], base[:1], exact[:1], (term,), names=("loss",))


def test_mean_difference_takes_the_form_that_rounds_less():
    """``soft_target.mean_difference`` (the gathered logit_scale gradient's row terms): near one-hot two
    means agree to fp32 and only their gaps (LSE - s * mean) carry the difference, which it returns (the
    means' own difference is 0); at s = 0, and where the gaps are large against s times the means, the
    means' difference (no division by a scale near 0); a negative scale divides with its sign; NaN
    propagates. Entries 2-3 are inconsistent on purpose (their gaps do not belong to their means), so
    that the value shows which form was taken."""
    a = torch.tensor([0.7, 0.7, 0.5, 0.5, float("nan")])
    b = torch.tensor([0.7, 0.7, 0.25, 0.25, 0.5])
    gap_a = torch.tensor([1e-18, 1e-18, 3.0, 3.0, 1.0], dtype=torch.float64)
    gap_b = torch.tensor([3e-18, 3e-18, 2.5, 2.5, 1.0], dtype=torch.float64)
    for scale in (100.0, -100.0):
        got = mean_difference(a, b, gap_a, gap_b, 1.0, torch.tensor(scale))
        assert got.dtype == torch.float32
        assert got[0].item() == pytest.approx(2e-20 / scale, rel=1e-6) and got[0] == got[1]
        # gaps 5.5 against |s| (|a| + |b|) = 75: the gaps' form, (2.5 - 3) / s
        assert got[2].item() == pytest.approx(-0.5 / scale, rel=1e-6)
        assert torch.isnan(got[4])
    at_zero = mean_difference(a, b, gap_a, gap_b, 1.0, torch.tensor(0.0))
    assert torch.equal(at_zero[:4], a[:4] - b[:4]) and torch.isnan(at_zero[4])
    small = mean_difference(a, b, gap_a, gap_b, 1.0, torch.tensor(1e-3))  # gaps 5.5 > 1e-3 * 0.75
    assert torch.equal(small[2:4], a[2:4] - b[2:4])


def _loss_error_scale(img, txt, scale, alpha, t_img=None, t_txt=None, t_scale=None) -> float:
    """The whole loss's sensitivity to its scores' own rounding (``_soft_error_scale``'s, with the hard
    part's too): sum_ij |d loss / d S_ij| |S_ij| = sum_ij ((1 - alpha) |softmax(S) - I| + alpha
    |softmax(S) - P|)_ij |S_ij| over rows and columns, over 2B (no smoothing)."""
    s = scale * (img.double() @ txt.double().T)
    t = s if t_img is None else t_scale * (t_img.double() @ t_txt.double().T)
    eye = torch.eye(s.shape[0], dtype=torch.float64)
    total = 0.0
    for q, p in ((s.softmax(1), t.softmax(1)), (s.softmax(0), t.softmax(0))):
        total += (((1 - alpha) * (q - eye).abs() + alpha * (q - p).abs()) * s.abs()).sum().item()
    return total / (2 * img.shape[0])


@pytest.mark.parametrize("impl", ["torch", TRITON])
@pytest.mark.parametrize("teacher", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_loss_near_one_hot_keeps_the_rows_rest(impl, teacher, alpha):
    """The loss near one-hot where float64 still sees the rows' rests (aligned pairs, texts =
    normalise(images + 0.1 noise), s = 30-40: rests 1e-10 to 1e-8, below fp32's 2^-24 next to 1) within
    8 ulps of the loss plus its sensitivity to the scores' own rounding (``_loss_error_scale``), with no
    allowance for naive's error, which is the rest itself (its log-sum-exp rounds 1 + rest): naive fails
    this bound (checked), at 0.4-99% of the loss. The statistics formed the rows' LSEs as m + log(l),
    which rounds the rest the same way (2.2e-11 to 1.5e-8 against float64 here); they are
    m + log1p(rest) now, as the columns' were (``soft_rows``, the statistics kernel's epilogue): 3e-16 to
    6.2e-12."""
    cases = ((4, 30.0, 1), (4, 40.0, 2), (16, 30.0, 2))
    for batch, scale, seed in cases:
        g = torch.Generator().manual_seed(seed)
        img = F.normalize(torch.randn(batch, 64, generator=g), dim=1)
        txt = F.normalize(img + 0.1 * torch.randn(batch, 64, generator=g), dim=1)
        kw, t_args = {}, (None, None, None)
        s = torch.tensor(scale)
        if teacher:
            t_img = F.normalize(img + 0.05 * torch.randn(batch, 64, generator=g), dim=1)
            kw = dict(teacher_image_features=t_img, teacher_text_features=txt, teacher_logit_scale=s)
            t_args = (t_img, txt, s)
        got = soft_target_loss(img, txt, s, alpha, impl=impl, **kw)
        naive = soft_target_loss_naive(img, txt, s, alpha, *t_args)
        t64 = [x if x is None else x.double() for x in t_args]
        exact = soft_target_loss_naive(img.double(), txt.double(), s.double(), alpha, *t64)
        term = _loss_error_scale(img, txt, scale, alpha, *t_args)
        bound = 8 * torch.finfo(torch.float32).eps * (exact.abs().item() + term)
        what = (batch, scale, seed)
        assert (got.double() - exact).abs().item() <= bound, (what, got.item(), exact.item(), bound)
        if not teacher:
            assert (naive.double() - exact).abs().item() > bound, (what, naive.item(), exact.item(), bound)


@pytest.mark.parametrize("impl", ["torch", TRITON])
@pytest.mark.parametrize("batch", [2, 5])
def test_distill_clip_loss_near_one_hot_two_grad_outputs(impl, batch):
    """DistillClipLoss near one-hot (student and teacher at s = s' = 100, well-matched pairs) with its two
    losses weighted apart (0.37 contrastive + 1.91 distill: hard and soft weights e != q): the float64
    rule with 8 ulps of each gradient's own largest element (test_near_one_hot_gradients_match_naive).
    Forming p = e + q rounds, and the diagonal's 2 p - 2 q - 2 e then kept that ulp of p: the torch and
    the Triton backends erred by ~1e-6 where the exact gradients are ~1e-36 (naive: 1e-41). The
    contrastive loss's value on the same rule. The reference's hard part is exact (``exact_hard_part``),
    and the allowance includes what the teacher scores' own rounding moves the soft part by
    (``teacher_rounding``, 4 ulps per score): at B = 2 a gradient row is a teacher weight 57 nats below
    its row's max, whose fp32 exponent Triton's dot products round otherwise than naive's (docs/design.md,
    "Two-part LSEs": which lands closer is a draw); it erred 3.2x naive's error, past the bare rule."""
    check_distill_near_one_hot(impl, batch, 64, 48)


def check_distill_near_one_hot(impl, batch, dim, t_dim, device="cpu"):
    """``test_distill_clip_loss_near_one_hot_two_grad_outputs``'s check (tests/test_gpu_soft_target.py
    runs it on "cuda")."""
    img, txt = features(batch, dim, seed=7, device=device)
    t_img, t_txt = features(batch, t_dim, seed=8, device=device)
    runs = []
    for fn, args in (
        (DistillClipLoss(impl=impl), (img, txt, t_img, t_txt)),
        (DistillClipLoss(impl="naive"), (img, txt, t_img, t_txt)),
        (distill_clip_loss_naive, [x.double() for x in (img, txt, t_img, t_txt)]),
    ):
        i, t = args[0].clone().requires_grad_(), args[1].clone().requires_grad_()
        s = torch.tensor(100.0, dtype=i.dtype, device=device, requires_grad=True)
        if fn is distill_clip_loss_naive:
            t_scale = torch.tensor(100.0, dtype=i.dtype, device=device)
            contrastive, distill = fn(i, t, s, args[2], args[3], t_scale, 0.0)
        else:
            contrastive, distill = fn(i, t, s, args[2], args[3], 100.0)
        (0.37 * contrastive + 1.91 * distill).backward()
        runs.append((contrastive.detach(), i.grad, t.grad, s.grad))
    got, base, exact = runs
    exact = exact_hard_part(exact, img, txt, 100.0, 0.37, loss_weight=1.0)
    # the contrastive loss's value too (the hard part: -log P_ii from the off-diagonal masses)
    names = ("contrastive", "d_image", "d_text", "d_scale")
    rounding = teacher_rounding(img, txt, t_img, t_txt, 100.0, 100.0, 1.91 / (2 * batch))
    assert_within_float64_error(got, base, exact, (0.0,) * 4, names=names, rounding=rounding)


def check_stats_diagonal_is_the_walks(impl, rows, dim, row0, teacher, device="cpu", dtype=torch.float32):
    """tests/test_contrastive.py's ``check_diagonal_is_the_walks`` for the statistics pass (``stats``, the
    self or a separate teacher of width 24, its features dominant too): x bitwise the student's LSE and
    x' the teacher's where each row's diagonal dominates (the Triton x from ``_diagonal_kernel`` on the
    statistics kernel's tile config, x' from ``_teacher_diagonal_kernel`` on its teacher tiles)."""
    from vlkernels.ops.soft_target_triton import TritonSoftTargetBackend

    q, k = dominant_diagonal(rows, dim, row0, device, dtype)
    t = None
    if teacher:
        t_q, t_k = dominant_diagonal(rows, 24, row0, device, dtype)
        t = (t_q, t_k, torch.tensor(100.0, device=device))
    backend = TorchSoftTargetBackend() if impl == "torch" else TritonSoftTargetBackend()
    got = backend.stats(q, k, torch.tensor(100.0, device=device), t, row0)
    for lse, x in ((got[0], got[6]), (got[2], got[11])):
        assert x.dtype == torch.float32 and x.shape == (rows,)
        assert torch.equal(x.double(), lse), (x.double() - lse).abs().max()


@pytest.mark.parametrize("impl", ["torch", TRITON])
@pytest.mark.parametrize("teacher", [False, True])
@pytest.mark.parametrize("rows,dim,row0", [(7, 16, 0), (130, 72, 0), (50, 64, 37)])
def test_stats_return_their_own_diagonal_scores(monkeypatch, impl, teacher, rows, dim, row0):
    """``check_stats_diagonal_is_the_walks`` in many pieces (torch: chunks of 3 rows; Triton: one program
    per statistics launch), the block-row scheme's offset diagonal included."""
    monkeypatch.setenv("VLKERNELS_TORCH_CHUNK_ROWS", "3")
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", "0")
    check_stats_diagonal_is_the_walks(impl, rows, dim, row0, teacher)


@pytest.mark.interpreter
@pytest.mark.parametrize("norm", [1e3, 1e5, 1e15])
def test_triton_huge_teacher_logits(norm):
    """A separate teacher with logits up to ~10 norm, the student's unit features: the float64 rule. The
    weights kernel's teacher exponents subtract the statistics kernel's own base-2 LSEs; with a round trip
    through natural logs (~2 ulps of |S'| log2(e)) d_image erred by 18x its allowance at 1e3 (teacher
    logits ~1e4), 1400x at 1e5, and was not finite at 1e15."""
    img, txt = features(7, 5, seed=4)
    t_img, t_txt = features(7, 5, seed=5)
    teacher = dict(teacher_image_features=t_img * norm, teacher_text_features=t_txt, teacher_logit_scale=10.0)
    _check_features("triton", img, txt, 10.0, 0.4, dict(label_smoothing=0.1, **teacher), 1.3)


@pytest.mark.interpreter
@pytest.mark.parametrize("norm", [1e7, 1e22])
def test_triton_huge_logits_self_teacher(norm):
    """The self teacher with logits past fp32's integer range (the contrastive loss's
    test_triton_huge_logits): the float64 rule with error scales from the actual logits."""
    img, txt = features(7, 5, seed=3)
    img = img * norm
    terms = logit_term_scales(img, txt, 10.0, 1.3)
    _check_features("triton", img, txt, 10.0, 0.4, dict(label_smoothing=0.1), 1.3, terms=terms)


@pytest.mark.interpreter
def test_triton_teacher_in_another_dtype():
    # bf16 student, fp16 teacher (each side gets its own upcast / dot precision).
    img, txt = features(18, 24, torch.bfloat16)
    kw = dict(label_smoothing=0.0, **_teacher_kwargs(18, 20, torch.float16))
    _check_features("triton", img, txt, 20.0, 0.5, kw, 1.0)


@pytest.mark.interpreter
@pytest.mark.parametrize("teacher", [False, True])
def test_triton_backend_matches_torch_backend_rectangular(teacher):
    # The backend interface on rectangular blocks (the distributed block-row scheme uses M != N), with
    # independent row/column weights, and non-contiguous inputs.
    from vlkernels.ops.soft_target_triton import TritonSoftTargetBackend

    m, n, dim = 13, 29, 10
    g = torch.Generator().manual_seed(3)
    img = F.normalize(torch.randn(dim, m, generator=g), dim=0).T  # column-major
    txt = F.normalize(torch.randn(n, dim, generator=g), dim=1)
    scale = torch.tensor(11.0)
    t = None
    if teacher:
        t = (
            F.normalize(torch.randn(m, 6, generator=g), dim=1),
            F.normalize(torch.randn(n, 6, generator=g), dim=1),
        )
        t = (*t, torch.tensor(7.0))
    fast, ref = TritonSoftTargetBackend(), TorchSoftTargetBackend()
    # the diagonal at column 5 + i (the block-row scheme's offset)
    got, want = fast.stats(img, txt, scale, t, 5), ref.stats(img, txt, scale, t, 5)
    assert fast.lse_base2 and not ref.lse_base2  # the Triton LSEs in base 2, the torch ones natural
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        # the LSEs, the diagonal scores (k = 6, 11) and the soft gaps (7, 8) in the backend's units; the
        # rests (9, 10, 12, 13) are unitless
        torch.testing.assert_close(
            a * (lse_nats(fast) if k in (0, 1, 2, 3, 6, 7, 8, 11) else 1.0), b, **TOL[torch.float32]
        )
    e_row, e_col, q_row, q_col = (torch.rand(k, generator=g) for k in (m, n, m, n))
    weights = (e_row, e_col, q_row, q_col, t)
    # each backend takes its own LSEs back, a separate teacher's packed as the Functions keep them
    t_fast, t_ref = ((pack_lse(x[2]), pack_lse(x[3])) if teacher else x[2:4] for x in (got, want))
    args_fast = (img, txt, scale, *got[:2], *weights, *t_fast)
    args_ref = (img, txt, scale, *want[:2], *weights, *t_ref)
    # and with the diagonal folded in (the block-row's at columns 5 + i; its factors v, and u with a
    # teacher)
    u = torch.rand(m, generator=g) - 0.5 if teacher else None
    for diag in (None, (5, torch.rand(m, generator=g) - 0.5, u)):
        got_a, want_a = fast.accumulate(*args_fast, diag), ref.accumulate(*args_ref, diag)
        for a, b in zip(got_a, want_a, strict=True):
            torch.testing.assert_close(a, b, **TOL[torch.float32])


# --- both backends: properties ----------------------------------------------------------------


@pytest.mark.parametrize("impl", ["torch", "naive", TRITON])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_alpha_zero_is_contrastive_loss(impl, eps, reduction):
    img, txt = features(15, 12)
    kw = dict(label_smoothing=eps, reduction=reduction, impl=impl)
    want = run_loss(lambda i, t, s: contrastive_loss(i, t, s, **kw), img, txt, torch.tensor(8.0), 1.3)

    def assert_same(got):
        if impl != "triton":
            assert_close_all(got, want, torch.float32, tol={torch.float32: dict(atol=1e-6, rtol=1e-6)})
            return
        # Triton: the soft-target kernels (v1) and the contrastive v2 kernels sum in different orders;
        # they agree to 8 fp32 ulps of each quantity's error scale (term_scales, x2 for "sum")
        k = 2.0 if reduction == "sum" else 1.0
        terms = term_scales(15, 8.0, 1.3 * k)
        for name, a, b, term in zip(("loss", "d_image", "d_text", "d_scale"), got, want, terms, strict=True):
            bound = 8 * torch.finfo(torch.float32).eps * max(term, b.abs().max().item())
            assert (a - b).abs().max().item() <= bound, (name, (a - b).abs().max().item(), bound)

    for alpha in (0.0, torch.tensor(0.0)):
        got = run_loss(
            lambda i, t, s, a=alpha: soft_target_loss(i, t, s, a, **kw), img, txt, torch.tensor(8.0), 1.3
        )
        assert_same(got)
    # Also with a teacher and a mask: their soft targets get weight 0.
    got = run_loss(
        lambda i, t, s: soft_target_loss(i, t, s, 0.0, soft_mask=_mask(15), **_teacher_kwargs(15, 9), **kw),
        img,
        txt,
        torch.tensor(8.0),
        1.3,
    )
    assert_same(got)


@pytest.mark.parametrize("impl", ["torch", "naive", TRITON])
def test_full_self_distillation_has_zero_gradient(impl):
    # alpha = 1, self teacher, no mask: the targets are the student's own (detached) softmax, so the loss
    # is the mean entropy of the two softmaxes and its gradient (P - Q) vanishes.
    img, txt = features(12, 16)
    loss, d_img, d_txt, d_scale = run_loss(
        lambda i, t, s: soft_target_loss(i, t, s, 1.0, impl=impl), img, txt, torch.tensor(10.0)
    )
    logits = 10.0 * img @ txt.T
    entropy = lambda x: -(x.softmax(1) * x.log_softmax(1)).sum(1).mean()  # noqa: E731
    torch.testing.assert_close(loss, 0.5 * (entropy(logits) + entropy(logits.T)), **TOL[torch.float32])
    for g in (d_img, d_txt, d_scale):
        assert g.abs().max() < 1e-5


@pytest.mark.parametrize("impl", ["torch", TRITON])
def test_self_teacher_equals_explicit_copy(impl):
    # The default teacher is the model itself, detached: passing a detached copy as teacher gives the same.
    img, txt = features(21, 14)
    kw = dict(soft_mask=_mask(21), label_smoothing=0.1, impl=impl)
    want = run_loss(lambda i, t, s: soft_target_loss(i, t, s, 0.4, **kw), img, txt, torch.tensor(6.0), 0.9)
    got = run_loss(
        lambda i, t, s: soft_target_loss(
            i, t, s, 0.4, teacher_image_features=i, teacher_text_features=t, teacher_logit_scale=s, **kw
        ),
        img,
        txt,
        torch.tensor(6.0),
        0.9,
    )
    assert_close_all(got, want, torch.float32)


@pytest.mark.parametrize("impl", ["torch", "naive", TRITON])
def test_sum_is_twice_mean(impl):
    img, txt = features(9, 11)
    kw = dict(impl=impl, soft_mask=_mask(9), **_teacher_kwargs(9, 4))
    mean = soft_target_loss(img, txt, 5.0, 0.5, **kw)
    total = soft_target_loss(img, txt, 5.0, 0.5, reduction="sum", **kw)
    torch.testing.assert_close(total, 2 * mean)


def test_reference_matches_direct_formula():
    # The naive reference against an independent expression: per-row probability targets.
    batch = 10
    img, txt = features(batch, 6)
    t_img, t_txt = features(batch, 3, seed=5)
    logits, t_logits = 7.0 * img @ txt.T, 4.0 * t_img @ t_txt.T
    mask = _mask(batch)
    a = torch.where(mask, 0.3, 0.0)[:, None]
    hard = 0.9 * torch.eye(batch) + 0.1 / batch
    q_i = (1 - a) * hard + a * t_logits.softmax(1)
    q_t = (1 - a) * hard + a * t_logits.softmax(0).T
    want = 0.5 * (
        -(q_i * logits.log_softmax(1)).sum(1).mean() - (q_t * logits.T.log_softmax(1)).sum(1).mean()
    )
    got = soft_target_loss_naive(img, txt, 7.0, 0.3, t_img, t_txt, 4.0, mask, 0.1)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("impl", ["torch", TRITON])
def test_open_clip_scale_parameter_gradient(impl):
    # open_clip passes logit_scale.exp(): the gradient reaches the log-parameter through exp.
    img, txt = features(12, 9)
    grads = []
    for which in ("naive", impl):
        param = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        soft_target_loss(img, txt, param.exp(), 0.5, impl=which, **_teacher_kwargs(12, 5)).backward()
        grads.append(param.grad)
    torch.testing.assert_close(grads[1], grads[0], **TOL[torch.float32])


@pytest.mark.parametrize("impl", ["torch", "naive", TRITON])
def test_only_requested_grads_and_dtype(impl):
    img, txt = features(6, 4, torch.float16)
    img.requires_grad_()
    loss = soft_target_loss(img, txt, torch.tensor(3.0), 0.5, impl=impl)
    loss.backward()
    assert img.grad is not None and txt.grad is None
    assert img.grad.dtype == torch.float16
    assert loss.dtype == torch.float32 and loss.dim() == 0


@pytest.mark.parametrize("impl", ["torch", TRITON])
def test_never_materialises_b_by_b(monkeypatch, impl):
    monkeypatch.setenv("VLKERNELS_TORCH_CHUNK_ROWS", "8")
    monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", "0")  # triton: W chunks of one block of rows
    batch, dim = 96, 4
    img, txt = features(batch, dim)
    img.requires_grad_()
    txt.requires_grad_()
    scale = torch.tensor(5.0, requires_grad=True)
    for kw in ({}, _teacher_kwargs(batch, 3)):

        def step(impl=impl, kw=kw):
            soft_target_loss(img, txt, scale, 0.5, soft_mask=_mask(batch), impl=impl, **kw).backward()

        produced, saved = largest_tensors(step)
        # torch: chunks of 8 rows of S (and of S'); triton: one 16-row fp32 chunk of W (the interpreter's
        # block), which the interpreter copies as a byte storage (4 x its elements).
        assert produced <= 4 * 16 * batch < batch * batch, produced
        assert saved <= batch * dim
    # The check can fail: the naive implementation does materialise B x B.
    produced, _ = largest_tensors(lambda: soft_target_loss(img, txt, scale, 0.5, impl="naive").backward())
    assert produced >= batch * batch


@pytest.mark.parametrize("impl", ["torch", "naive", TRITON])
def test_non_finite_inputs_give_non_finite_loss(impl):
    img, txt = features(7, 5)
    img[3, 2] = float("nan")
    assert not torch.isfinite(soft_target_loss(img, txt, 10.0, 0.5, impl=impl))
    img, txt = features(7, 5)
    kw = _teacher_kwargs(7, 3)
    kw["teacher_image_features"][1, 1] = float("inf")
    assert not torch.isfinite(soft_target_loss(img, txt, 10.0, 0.5, impl=impl, **kw))


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 48),
    dim=st.integers(1, 80),
    t_dim=st.one_of(st.none(), st.integers(1, 40)),
    scale=st.floats(0.5, 100.0),
    alpha=st.floats(0.0, 1.0),
    eps=st.sampled_from([0.0, 0.1, 0.5]),
    use_mask=st.booleans(),
    grad_out=st.floats(0.1, 3.0),
    seed=st.integers(0, 10_000),
)
def test_hypothesis_torch(batch, dim, t_dim, scale, alpha, eps, use_mask, grad_out, seed):
    img, txt = features(batch, dim, seed=seed)
    kw = dict(label_smoothing=eps, **_teacher_kwargs(batch, t_dim, t_scale=scale / 2))
    if use_mask:
        kw["soft_mask"] = torch.rand(batch, generator=torch.Generator().manual_seed(seed)) < 0.5
    # Judged against float64 (errors grow with logit_scale * grad_out): at most 2x the naive fp32 error.
    _check_features("torch", img, txt, scale, alpha, kw, grad_out)


@pytest.mark.interpreter
@settings(max_examples=examples(12), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 40),
    dim=st.integers(1, 70),
    t_dim=st.one_of(st.none(), st.integers(1, 40)),
    scale=st.floats(0.5, 100.0),
    alpha=st.floats(0.0, 1.0),
    eps=st.sampled_from([0.0, 0.1]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 10_000),
)
def test_hypothesis_triton(batch, dim, t_dim, scale, alpha, eps, dtype, seed):
    # The float64 rule, with what rounding dL/dS to a 16-bit dtype adds (``_check_features``).
    img, txt = features(batch, dim, dtype, seed=seed)
    kw = dict(label_smoothing=eps, soft_mask=_mask(batch), **_teacher_kwargs(batch, t_dim, dtype, scale / 2))
    _check_features("triton", img, txt, scale, alpha, kw, 1.3)


@pytest.mark.parametrize("impl", ["torch", TRITON])
@settings(max_examples=examples(20), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**NEAR_ONE_HOT_DRAWS, case=st.sampled_from(["self", "self alpha 0.3", "teacher"]))
def test_hypothesis_hard_part_relatively_exact(impl, batch, dim, noise, scale, eps, case, grad_out, seed):
    """Where the soft target's gradients are 1 - alpha times the contrastive loss's (the self teacher; at
    alpha 0 with a separate teacher too, and the loss then), on drawn batches from near one-hot to
    generic (texts = normalise(images + noise)): within 16 ulps of their own error scales against the
    float64 reference that keeps the diagonal terms (``relative_ulps``), as the contrastive loss's
    ``test_hypothesis_relatively_exact``. Formed from P_ii, the diagonal's hard part kept an ulp of 1
    (about 1e5 of these ulps near one-hot)."""
    img, txt = paired_features(batch, dim, noise, seed)
    alpha = 0.3 if case == "self alpha 0.3" else 0.0
    kw = dict(label_smoothing=eps)
    if case == "teacher":
        t_img, t_txt = paired_features(batch, 24, noise, seed + 1)
        kw.update(teacher_image_features=t_img, teacher_text_features=t_txt, teacher_logit_scale=scale)
    got = _run_impl(impl, img, txt, scale, alpha, kw, grad_out)
    worst = relative_ulps(got, img, txt, scale, eps, grad_out * (1.0 - alpha))
    first = 0 if alpha == 0.0 else 1  # (with a soft part the loss is not the contrastive loss's)
    assert max(worst[first:]) <= 16, worst


@pytest.mark.parametrize("impl", ["torch", TRITON])
@settings(max_examples=examples(20), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**NEAR_ONE_HOT_DRAWS, alpha=st.sampled_from([0.4, 1.0]), masked=st.booleans())
def test_hypothesis_teacher_soft_part_relatively_exact(
    impl, batch, dim, noise, scale, eps, alpha, masked, grad_out, seed
):
    """A separate teacher's soft part, on drawn batches from near one-hot to generic (student and teacher
    pairs alike, texts = normalise(images + noise), s' = s): the feature and scale gradients within 16 ulps
    of their own error scales against the float64 reference that forms the diagonal from the student's and
    the teacher's off-diagonal masses (``soft_relative_ulps``). Formed from the two softmaxes, the soft
    part's diagonal q (P_ii - P'_ii) kept an ulp of 1: 1.2e4-1.4e5 of these ulps near one-hot on the
    feature gradients, as naive's (``python -m benchmarks.near_one_hot``)."""
    img, txt = paired_features(batch, dim, noise, seed)
    t_img, t_txt = paired_features(batch, 24, noise, seed + 1)
    mask = (torch.arange(batch) % 3 != 1) if masked else None
    kw = dict(label_smoothing=eps, soft_mask=mask)
    kw.update(teacher_image_features=t_img, teacher_text_features=t_txt, teacher_logit_scale=scale)
    got = _run_impl(impl, img, txt, scale, alpha, kw, grad_out)
    worst = soft_relative_ulps(got[1:], img, txt, scale, t_img, t_txt, scale, alpha, eps, grad_out, mask)
    assert max(worst) <= 16, worst


# --- DistillClipLoss: open_clip's formula -----------------------------------------------------


def _open_clip_distill(image, text, scale, t_image, t_text, t_scale):
    """open_clip.loss.DistillClipLoss (world_size 1), written out: (contrastive_loss, distill_loss)."""
    logits_per_image = scale * image @ text.T
    logits_per_text = logits_per_image.T
    t_logits_per_image = t_scale * t_image @ t_text.T
    t_logits_per_text = t_logits_per_image.T
    labels = torch.arange(image.shape[0])
    contrastive = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2

    def dist_loss(teacher_logits, student_logits):
        return -(teacher_logits.softmax(dim=1) * student_logits.log_softmax(dim=1)).sum(dim=1).mean(dim=0)

    distill = (
        dist_loss(t_logits_per_image, logits_per_image) + dist_loss(t_logits_per_text, logits_per_text)
    ) / 2
    return contrastive, distill


@pytest.mark.parametrize("impl", ["torch", "naive", TRITON])
@pytest.mark.parametrize("batch,dim,t_dim", [(1, 3, 2), (23, 16, 40)])
def test_distill_clip_loss_matches_open_clip(impl, batch, dim, t_dim):
    img, txt = features(batch, dim)
    t_img, t_txt = features(batch, t_dim, seed=1)
    scale, t_scale = torch.tensor(math.log(1 / 0.07)).exp(), torch.tensor(30.0)
    mod = DistillClipLoss(impl=impl)
    grads = []
    for fn in (_open_clip_distill, mod):
        i, t = img.clone().requires_grad_(), txt.clone().requires_grad_()
        s = scale.clone().requires_grad_()
        ti, tt = t_img.clone().requires_grad_(), t_txt.clone().requires_grad_()
        # The teacher is detached in open_clip's training loop (computed under no_grad); here by the loss.
        teacher = (ti, tt, t_scale) if fn is mod else (ti.detach(), tt.detach(), t_scale)
        contrastive, distill = fn(i, t, s, *teacher)
        (0.6 * contrastive + 1.7 * distill).backward()
        grads.append((contrastive.detach(), distill.detach(), i.grad, t.grad, s.grad))
        assert ti.grad is None and tt.grad is None
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    out = mod(img, txt, scale, t_img, t_txt, t_scale, output_dict=True)
    assert set(out) == {"contrastive_loss", "distill_loss"}
    torch.testing.assert_close(out["distill_loss"], grads[0][1], **TOL[torch.float32])


def test_distill_clip_loss_label_smoothing_is_contrastive_only():
    img, txt = features(11, 8)
    t_img, t_txt = features(11, 5, seed=2)
    c, d = DistillClipLoss(label_smoothing=0.1, impl="torch")(img, txt, 12.0, t_img, t_txt, 20.0)
    torch.testing.assert_close(c, contrastive_loss(img, txt, 12.0, label_smoothing=0.1, impl="naive"))
    _, d0 = DistillClipLoss(impl="torch")(img, txt, 12.0, t_img, t_txt, 20.0)
    torch.testing.assert_close(d, d0)


def test_distill_clip_loss_needs_a_teacher():
    img, txt = features(4, 3)
    with pytest.raises(ValueError, match="dist_image_features"):
        DistillClipLoss()(img, txt, 1.0, None, None, None)
    with pytest.raises(ValueError, match="go together"):
        DistillClipLoss()(img, txt, 1.0, img, None, 1.0)


# --- SoftTargetLoss and progressive_alpha -----------------------------------------------------


def test_progressive_alpha_values():
    assert progressive_alpha(0, 10, 0.5) == 0.0
    assert progressive_alpha(5, 10, 0.5) == pytest.approx(0.25)
    assert progressive_alpha(10, 10, 0.5) == pytest.approx(0.5)
    assert progressive_alpha(25, 10, 0.5) == pytest.approx(0.5)
    assert progressive_alpha(-3, 10, 0.5) == 0.0
    assert isinstance(progressive_alpha(3, 10, 0.5), float)
    steps = torch.tensor([0, 4, 8, 12])
    torch.testing.assert_close(progressive_alpha(steps, 8, 1.0), torch.tensor([0.0, 0.5, 1.0, 1.0]))


@pytest.mark.parametrize(
    "args,exc,match",
    [
        ((1, 0, 0.5), ValueError, "total_steps"),
        ((1, 2.5, 0.5), ValueError, "total_steps"),
        ((1, 10, 1.5), ValueError, "alpha_max"),
        ((1, 10, "0.5"), TypeError, "alpha_max"),
        (("1", 10, 0.5), TypeError, "step"),
        ((float("nan"), 10, 0.5), TypeError, "step"),
    ],
)
def test_progressive_alpha_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        progressive_alpha(*args)


def test_soft_target_loss_module_schedule_and_state_dict():
    mod = SoftTargetLoss(alpha_max=0.5, total_steps=4, impl="torch")
    assert float(mod.alpha) == 0.0 and mod.num_steps == 0
    values = [mod.step() for _ in range(6)]
    assert values == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.5, 0.5])
    assert float(mod.alpha) == pytest.approx(0.5)
    fresh = SoftTargetLoss(alpha_max=0.5, total_steps=4, impl="torch")
    mod2 = SoftTargetLoss(alpha_max=0.5, total_steps=4, impl="torch")
    for _ in range(2):
        mod2.step()
    fresh.load_state_dict(mod2.state_dict())
    assert fresh.num_steps == 2 and float(fresh.alpha) == pytest.approx(0.25)
    assert fresh.step() == pytest.approx(0.375)
    # forward uses the current alpha: the same as the functional form with that alpha.
    img, txt = features(10, 6)
    kw = _teacher_kwargs(10, 4)
    mask = _mask(10)
    want = soft_target_loss(img, txt, 7.0, 0.375, soft_mask=mask, impl="naive", **kw)
    got = fresh(img, txt, 7.0, *kw.values(), soft_mask=mask)
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    assert "num_steps=3" in repr(fresh)


def test_soft_target_loss_module_custom_schedule_and_options():
    mod = SoftTargetLoss(0.8, 10, schedule=lambda t: 0.1 * (t % 3), label_smoothing=0.1, reduction="sum")
    assert [mod.step() for _ in range(4)] == pytest.approx([0.1, 0.2, 0.0, 0.1])
    img, txt = features(8, 5)
    want = soft_target_loss(img, txt, 3.0, 0.1, label_smoothing=0.1, reduction="sum", impl="naive")
    torch.testing.assert_close(mod(img, txt, 3.0), want, **TOL[torch.float32])
    bad = SoftTargetLoss(0.5, 10, schedule=lambda t: 2.0 * t)
    with pytest.raises(ValueError, match="outside"):
        bad.step()
    with pytest.raises(ValueError, match="impl"):
        SoftTargetLoss(0.5, 10, impl="cuda")
    with pytest.raises(ValueError, match="alpha_max"):
        SoftTargetLoss(1.5, 10)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "alpha,exc,match",
    [
        (1.5, ValueError, r"alpha must be in \[0, 1\]"),
        (-0.1, ValueError, r"alpha must be in \[0, 1\]"),
        (float("nan"), ValueError, r"alpha must be in \[0, 1\]"),
        (torch.tensor(1.2), ValueError, r"alpha must be in \[0, 1\]"),
        (torch.tensor([0.1, 0.2]), ValueError, "scalar"),
        (torch.tensor(1), TypeError, "floating-point"),
        ("0.5", TypeError, "alpha must be a float"),
        (True, TypeError, "alpha must be a float"),
        (None, TypeError, "alpha must be a float"),
    ],
)
def test_bad_alpha(alpha, exc, match):
    img, txt = features(5, 3)
    with pytest.raises(exc, match=match):
        soft_target_loss(img, txt, 1.0, alpha)


@pytest.mark.parametrize("given", [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)])
def test_partial_teacher_arguments(given):
    img, txt = features(5, 3)
    full = _teacher_kwargs(5, 4)
    kw = {k: v for n, (k, v) in enumerate(full.items()) if n in given}
    with pytest.raises(ValueError, match="go together"):
        soft_target_loss(img, txt, 1.0, 0.5, **kw)


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (dict(teacher_image_features=features(6, 4)[0], teacher_text_features=features(6, 4)[1]),
         ValueError, "batch size"),
        (dict(teacher_text_features=features(5, 7)[1]), ValueError, "same shape"),
        (dict(teacher_text_features=features(5, 4, torch.float16)[1]), TypeError, "same dtype"),
        (dict(teacher_logit_scale="2"), TypeError, "teacher_logit_scale"),
        (dict(teacher_logit_scale=torch.ones(3)), ValueError, "teacher_logit_scale"),
        (dict(teacher_image_features=features(5, 4)[0].long()), TypeError, "teacher_image_features"),
    ],
)  # fmt: skip
def test_bad_teacher(change, exc, match):
    img, txt = features(5, 3)
    kw = _teacher_kwargs(5, 4)
    kw.update(change)
    with pytest.raises(exc, match=match):
        soft_target_loss(img, txt, 1.0, 0.5, **kw)


@pytest.mark.parametrize(
    "mask,exc,match",
    [
        (torch.ones(4, dtype=torch.bool), ValueError, r"soft_mask must have shape \(5,\)"),
        (torch.ones(5, 1, dtype=torch.bool), ValueError, r"soft_mask must have shape \(5,\)"),
        (torch.ones(5), TypeError, "torch.bool"),
        (torch.ones(5, dtype=torch.long), TypeError, "torch.bool"),
        ([True] * 5, TypeError, "bool tensor"),
    ],
)
def test_bad_soft_mask(mask, exc, match):
    img, txt = features(5, 3)
    with pytest.raises(exc, match=match):
        soft_target_loss(img, txt, 1.0, 0.5, soft_mask=mask)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
        (dict(reduction="none"), ValueError, "reduction"),
        (dict(impl="cuda"), ValueError, "impl must be one of"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    img, txt = features(5, 3)
    with pytest.raises(exc, match=match):
        soft_target_loss(img, txt, 1.0, 0.5, **kwargs)
    with pytest.raises(ValueError, match="same shape"):
        soft_target_loss(img, txt[:4], 1.0, 0.5)


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    img, txt = features(4, 4)
    with pytest.raises(RuntimeError, match="impl='triton' cannot run.*CUDA"):
        soft_target_loss(img, txt, 1.0, 0.5, impl="triton")
