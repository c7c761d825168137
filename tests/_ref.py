"""Shared helpers for the loss tests: inputs, per-dtype tolerances, comparison of values and grads."""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.harness import PeakLive  # noqa: F401  (the tests' live-bytes tracker)

# Per-dtype tolerances for comparing against the fp32 naive reference computed from the same inputs:
# differences come from fp32 accumulation order and from rounding the gradients to the input dtype.
TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=2e-3, rtol=4e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


def examples(count: int) -> int:
    """A hypothesis test's number of examples: ``count`` in CI (profile "ci", derandomized), ten times it
    under ``HYPOTHESIS_PROFILE=explore`` (drawn at random). A test's own ``max_examples`` wins over a
    profile's, so the tests ask here."""
    return 10 * count if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else count


def features(batch: int, dim: int, dtype=torch.float32, device="cpu", seed: int = 0):
    """L2-normalised random image and text features (never zeros), correlated along the diagonal."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    img = torch.randn(batch, dim, generator=g)
    txt = img + 0.8 * torch.randn(batch, dim, generator=g)
    img, txt = F.normalize(img, dim=1), F.normalize(txt, dim=1)
    return img.to(device=device, dtype=dtype), txt.to(device=device, dtype=dtype)


def paired_features(batch: int, dim: int, noise: float, seed: int, dtype=torch.float32):
    """Unit image features and texts = normalise(images + ``noise`` noise): well matched (near one-hot at
    large scales) for small noise, generic for large."""
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(batch, dim, generator=g), dim=1)
    txt = F.normalize(img + noise * torch.randn(batch, dim, generator=g), dim=1)
    return img.to(dtype), txt.to(dtype)


# The hypothesis draws of the near-one-hot precision tests (``relative_ulps``): from near one-hot to generic
NEAR_ONE_HOT_DRAWS = dict(
    batch=st.integers(1, 40),
    dim=st.integers(1, 48),
    noise=st.floats(0.01, 1.0),
    scale=st.floats(1.0, 100.0),
    eps=st.sampled_from([0.0, 0.1]),
    grad_out=st.floats(0.1, 3.0),
    seed=st.integers(0, 10_000),
)


def run_loss(fn, img, txt, scale, grad_out: float = 1.0, **kwargs):
    """Loss value and the grads of (img, txt, scale) for fresh leaf copies of the inputs."""
    img = img.detach().clone().requires_grad_()
    txt = txt.detach().clone().requires_grad_()
    leaves = [img, txt]
    if isinstance(scale, torch.Tensor):
        scale = scale.detach().clone().requires_grad_()
        leaves.append(scale)
    loss = fn(img, txt, scale, **kwargs)
    loss.backward(torch.tensor(grad_out, dtype=loss.dtype, device=loss.device))
    return [loss.detach()] + [leaf.grad for leaf in leaves]


def assert_close_all(got, want, dtype, tol=None):
    tol = (tol or TOL)[dtype]
    names = ["loss", "d_image", "d_text", "d_scale"]
    for name, a, b in zip(names, got, want, strict=True):
        assert a is not None and b is not None, name
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
        assert torch.isfinite(a).all(), f"{name} is not finite"
        torch.testing.assert_close(a.float(), b.float(), msg=lambda m, n=name: f"{n}: {m}", **tol)


class MaxNumel(TorchDispatchMode):
    """Records the largest tensor any op produces (to check that no B x B tensor is ever allocated)."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def largest_tensors(fn) -> tuple[int, int]:
    """(numel of the largest tensor any op produced, numel of the largest tensor saved for backward)
    while running ``fn()`` (forward and backward)."""
    saved = [0]

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), MaxNumel() as mode:
        fn()
    return mode.max_numel, max(saved)


def as_float64(img, txt, scale, teacher_kwargs=None):
    """float64 copies of the inputs (and of a teacher's), for the exact reference."""
    kw = {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
          for k, v in (teacher_kwargs or {}).items()}  # fmt: skip
    return img.double(), txt.double(), scale.double(), kw


def term_scales(batch: int, scale: float, grad_out: float) -> tuple[float, float, float, float]:
    """Error scales of (loss, d_image, d_text, d_scale) in ulps, for L2-normalised features: the logits
    err by ~ulp(s), which the softmax weights W carry as a relative error ~ (1 + s) ulp; the loss is
    ~(1 + s), a feature-gradient row sums terms ~ g (1 + s) / B times W, d_scale terms ~ g times W."""
    feat = grad_out * (1.0 + scale) ** 2 / batch
    return 1.0 + scale, feat, feat, grad_out * (1.0 + scale)


def logit_term_scales(img, txt, scale: float, grad_out: float) -> tuple[float, float, float, float]:
    """``term_scales`` for features of any norm, from the actual logits: W errs by ~(1 + max|S|) ulps, a
    feature-gradient row sums terms ~ g (1 + max|S|) s max|partner| / B times W, d_scale terms
    ~ g (1 + max|S|) max|I| max|T|."""
    img64, txt64 = img.double(), txt.double()
    smax = scale * (img64 @ txt64.T).abs().max().item()
    imax, tmax = (x.norm(dim=1).max().item() for x in (img64, txt64))
    w, batch = grad_out * (1.0 + smax), img.shape[0]
    return 1.0 + smax, w * scale * tmax / batch, w * scale * imax / batch, w * imax * tmax


def assert_within_float64_error(
    got,
    base,
    exact,
    terms,
    factor: float = 2.0,
    names=("loss", "d_image", "d_text", "d_scale"),
    rounding=None,
):
    """flash-attention's rule against a float64 reference: each of (loss, d_image, d_text, d_scale) of
    ``got`` errs from ``exact`` by at most ``factor`` times what torch's naive computation in the same
    dtype (``base``) errs, plus 8 fp32 ulps of the larger of the quantity and its error scale
    (``terms``, see ``term_scales``): both bounds scale with the values, logit_scale and grad_output.
    ``names`` label the quantities (a loss with more scalar inputs passes more). ``rounding``: per
    quantity, what rounding G to a 16-bit input dtype adds (``g_rounding``; None: nothing). Each quantity
    has torch's dtype (``base``'s) and the exact shape."""
    rounding = rounding or (0.0,) * len(names)
    for name, g, b, r, term, extra in zip(names, got, base, exact, terms, rounding, strict=True):
        assert g is not None and torch.isfinite(g).all(), name
        assert g.shape == r.shape and g.dtype == b.dtype, (name, g.shape, r.shape, g.dtype, b.dtype)
        err_got = (g.double() - r).abs().max().item()
        err_base = (b.double() - r).abs().max().item()
        floor = 8 * torch.finfo(torch.float32).eps * max(r.abs().max().item(), term)
        assert err_got <= factor * err_base + floor + extra, (name, err_got, err_base, floor, extra)


def smoothed_targets(batch: int, eps: float, device="cpu") -> torch.Tensor:
    """The label-smoothed one-hot targets, float64 [B, B]: 1 - eps + eps / B on the diagonal, eps / B off."""
    eye = torch.eye(batch, dtype=torch.float64, device=device)
    return (1.0 - eps) * eye + eps / batch


def g_rounding(dtype, exact, g, image, text, coef: float, scalars: int = 1) -> tuple:
    """What the Triton kernels' rounding of G to a 16-bit input ``dtype`` adds to each quantity of ``exact``
    (loss, d_image, d_text, then ``scalars`` scalar gradients). The feature gradients are ``coef * G @ text``
    and ``coef * G.T @ image``, and the kernels store the B x B weights G in the input dtype for the
    tensor-core products (as torch's autocast backward rounds the logits' gradient to it). ``g``: G in
    float64 at the scale the kernels round it: twice the error that rounding it to ``dtype`` (to nearest)
    gives each gradient here, computed, plus one unit in the dtype's last place of the gradient (the
    kernels' fp32 G can round the other way at an element within fp32 error of a rounding boundary).
    Nothing for the loss and the scalars (fp32 sums), nor for float32 (the kernels keep G in fp32). Where
    the kernels round G at a scale the test cannot reproduce, ``g_rounding_bound``."""
    if dtype == torch.float32:
        return (0.0,) * (3 + scalars)
    dg = g.to(dtype).double() - g

    def feature(grad, dg, partner):
        err = coef * (dg @ partner.double()).abs().max().item()
        return 2.0 * err + torch.finfo(dtype).eps * grad.abs().max().item()

    return (0.0, feature(exact[1], dg, text), feature(exact[2], dg.T, image)) + (0.0,) * scalars


def g_rounding_bound(dtype, exact, weights, image, text, coef: float, scalars: int = 1) -> tuple:
    """``g_rounding``'s worst case, for kernels that round G at a scale of their own (``weights``: a
    float64 bound on |G|): one unit in the dtype's last place of every term ``coef |G_ij| |x_j|`` summed,
    and one of the gradient itself."""

    def feature(grad, w, partner):
        if dtype == torch.float32:
            return 0.0
        terms = coef * (w.abs() @ partner.double().abs()).max().item()
        return torch.finfo(dtype).eps * (terms + grad.abs().max().item())

    return (0.0, feature(exact[1], weights, text), feature(exact[2], weights.T, image)) + (0.0,) * scalars


def teacher_rounding(img, txt, t_img, t_txt, t_scale, scale, coef: float, ulps: float = 4) -> tuple:
    """What a separate teacher's own score rounding may move (loss, d_image, d_text, d_scale) by, allowing
    ``ulps`` fp32 ulps per teacher score: each weight T_ij = exp(S'_ij - LSE'_i) (rows and columns alike)
    errs relatively by its exponent's rounding, ulps of |S'_ij| + |LSE'_i| (an implementation whose teacher
    dot products round otherwise than naive's differs by that much: 40 ulps of a weight at |S'| ~ 80), and
    the soft part weighs it by ``coef`` (its weight times grad_output / (2B)); the feature gradients take it
    times ``scale`` and the partners' features. Nothing for the loss (its value is checked elsewhere)."""
    i64, t64 = img.detach().double().cpu(), txt.detach().double().cpu()
    t = float(t_scale) * (t_img.detach().double().cpu() @ t_txt.detach().double().cpu().T)
    rows = t.softmax(1) * (t.abs() + t.logsumexp(1, keepdim=True).abs())
    cols = t.softmax(0) * (t.abs() + t.logsumexp(0, keepdim=True).abs())
    w = (rows + cols) * (ulps * torch.finfo(torch.float32).eps * abs(coef))
    d_image = abs(scale) * (w @ t64.abs()).max().item()
    d_text = abs(scale) * (w.T @ i64.abs()).max().item()
    return 0.0, d_image, d_text, (w * (i64 @ t64.T).abs()).sum().item()


def pair_value(hi, lo):
    """hi + lo * unit, the unit 1/256 of hi's dtype spacing at hi (the int8 remainder of ``matmul``'s
    16-bit pair), from frexp: an independent reading of the kernel's bit arithmetic."""
    info = torch.finfo(hi.dtype)
    mant = {torch.bfloat16: 7, torch.float16: 10}[hi.dtype]
    _, e = torch.frexp(hi.double())  # |hi| in [2^(e-1), 2^e)
    spacing = torch.exp2((e - 1 - mant).double()).clamp_min(info.smallest_normal * info.eps)
    return hi.double() + lo.double() * spacing / 256


def force_plan(monkeypatch, module, chunk: int, slab: int, covered: int):
    """Make ``module``'s backward (its ``backward_plan`` name) use chunks of ``chunk`` rows, slabs of
    ``slab`` columns and ``covered`` columns accumulated in the row pass whatever its budget (the rest of
    the plan, the statistics' blocks, is the real one's); returns the list of the calls' arguments (empty
    if the backward never asked for a plan)."""
    calls = []
    real = getattr(module.backward_plan, "real", module.backward_plan)  # not a forced one, when forced again

    def forced(*args, **kwargs):
        calls.append(args)
        return dataclasses.replace(real(*args, **kwargs), chunk=chunk, slab=slab, covered=covered)

    forced.real = real

    monkeypatch.setattr(module, "backward_plan", forced)
    return calls


def record_tma(monkeypatch, module, names, launches_only: bool = False) -> list:
    """Spy the config functions ``names`` of ``module``: the list gets, per call, whether the config it
    returned reads through TMA descriptors; with ``launches_only`` only the calls given the features
    (more than ``(dim, dtype, arch)``: the launchers', not the plan's)."""
    picked = []

    def spy(real):
        def config(*args):
            cfg = real(*args)
            if not launches_only or len(args) > 3:
                picked.append(bool(cfg.get("TMA")))
            return cfg

        return config

    for name in names:
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    return picked


def centered_scale_grad(img, txt, scale, alpha, teacher=None, eps: float = 0.0) -> torch.Tensor:
    """d/ds of ``soft_target_loss_naive(img, txt, s, alpha, *teacher, None, eps, "sum")`` in float64,
    formed on centred dot products: per row, sum_j (Q_ij - P_ij) d_ij equals sum_j (Q_ij - P_ij)
    (d_ij - d_ii) for any two distributions Q, P over j, and the latter keeps the diagonal's share. Near
    one-hot (rests below 2^-53) the softmax's diagonal rounds to 1 even in float64, and autograd's
    sum_j (softmax_ij - onehot_ij) d_ij drops the term -rest d_ii, of the size of the whole gradient
    (measured: 100-150% off at s = 100). Rows: hard part sum_j Q_ij (d_ij - d_ii) + eps (d_ii - mean_j d_ij),
    soft part sum_j (Q_ij - P_ij) (d_ij - d_ii), P the teacher's softmax (the student's own for the self
    teacher); columns alike on the transpose; weights 1 - alpha and alpha; the "sum" reduction's 1 / B.
    ``teacher``: None or (I', T', s')."""
    img, txt = img.double(), txt.double()
    batch = img.shape[0]
    dots = img @ txt.T
    logits = float(scale) * dots
    t_logits = logits if teacher is None else float(teacher[2]) * teacher[0].double() @ teacher[1].double().T
    total = dots.new_zeros(())
    for d, s, t in ((dots, logits, t_logits), (dots.T, logits.T, t_logits.T)):
        q, p = s.softmax(1), t.softmax(1)
        own = d.diagonal()
        centred = d - own[:, None]
        hard = (q * centred).sum(1) + eps * (own - d.mean(1))
        soft = ((q - p) * centred).sum(1)
        total = total + ((1.0 - alpha) * hard + alpha * soft).sum()
    return total / batch


def exact_contrastive(
    img, txt, scale, eps: float = 0.0, grad_out: float = 1.0, factor: float = 1.0, split: bool = False
):
    """(loss, d_image, d_text, d_scale) of ``contrastive_loss`` (label smoothing ``eps``, reduction factor
    1 for "mean", 2 for "sum") in float64, with every diagonal term formed from its off-diagonal mass:
    -log P_ii = softplus(LSE_{j != i} S_ij - S_ii) and P_ii - 1 = -sigmoid(LSE_{j != i} S_ij - S_ii), the
    columns' alike. Autograd of the float64 naive loss forms them from P_ii, so that a row whose
    off-diagonal mass is below 2^-53 (near one-hot: aligned pairs at s = 100 give 1e-20 to 1e-40) gets
    loss 0 and loses its whole diagonal gradient term; here each keeps its relative precision. Also
    returns, for the error scales (``assert_relatively_exact``), the magnitudes of the parts of the loss
    (the -log P_ii and the smoothing's |S_ii| and |mean_j S_ij|, summed) and of each dL/dS_ij (the
    softmax weights, the off-diagonal masses and the smoothing's targets; float64 [B, B]), each at least
    fp32's smallest normal (2^-126: below it fp32 keeps an absolute ulp of 2^-149, not a relative one).
    ``split``: the gradients of open_clip's local loss without gather grads, whose gathered features are
    constants: d_image from the rows' cross-entropy only, d_text from the columns' only (the magnitudes
    then a pair, the rows' and the columns'; d_scale is not formed)."""
    img, txt = img.double(), txt.double()
    batch = img.shape[0]
    s = float(scale)
    dots = img @ txt.T
    logits = s * dots
    eye = torch.eye(batch, dtype=torch.bool)
    coef = factor * grad_out / (2.0 * batch)
    loss = logits.new_zeros(())
    loss_abs = logits.new_zeros(())
    parts, parts_abs = [], []
    for sc, transpose in ((logits, False), (logits.T, True)):
        own = sc.diagonal()
        lse = torch.logsumexp(sc, 1)
        off = torch.logsumexp(sc.masked_fill(eye, float("-inf")), 1) - own  # -inf for B = 1
        nll = F.softplus(off, threshold=1e9)  # log1p(exp(off)): -log P_ii to its relative precision
        loss = loss + (nll + eps * (own - sc.mean(1))).sum()
        loss_abs = loss_abs + (nll + eps * (own.abs() + sc.mean(1).abs())).sum()
        p = torch.exp(sc - lse[:, None]).masked_fill(eye, 0.0)
        mass = torch.sigmoid(off)
        parts.append((p + torch.diag(eps - mass) - eps / batch).transpose(0, int(transpose)) * coef)
        parts_abs.append((p + torch.diag(eps + mass) + eps / batch).transpose(0, int(transpose)))
    # fp32's subnormal floor: a quantity, or a dL/dS element at the scale the backends hold it (at most
    # grad_out k / (2B)), below the smallest normal keeps an absolute ulp of 2^-149 (masses below
    # ~1e-38: gaps of 87 nats), so each scale counts at least the smallest normal
    tiny = torch.finfo(torch.float32).tiny
    loss_scale = loss_abs * factor / (2.0 * batch) + tiny
    value = loss * factor / (2.0 * batch)
    if split:
        (g_rows, g_cols), (a_rows, a_cols) = parts, parts_abs
        grads = [value, s * g_rows @ txt, s * g_cols.T @ img, None]
        return grads, (loss_scale, ((a_rows + tiny) * abs(coef), (a_cols + tiny) * abs(coef)))
    g, g_abs = parts[0] + parts[1], parts_abs[0] + parts_abs[1]
    d_image = s * g @ txt
    d_text = s * g.T @ img
    d_scale = (g * dots).sum()
    scales = (loss_scale, (g_abs + tiny) * abs(coef))
    return [value, d_image, d_text, d_scale], scales


def exact_hard_part(
    exact, img, txt, scale, weight: float, eps: float = 0.0, grad_out: float = 1.0, loss_weight=None
) -> list:
    """``exact`` (float64 autograd's [loss, d_image, d_text, d_scale], backward with ``grad_out``, of a loss
    whose hard part is ``weight`` times ``contrastive_loss`` with smoothing ``eps``; its value
    ``loss_weight`` times it, default ``weight``) with that part's autograd values replaced by
    ``exact_contrastive``'s. Autograd forms the diagonal terms from P_ii, so that near one-hot
    (off-diagonal masses below 2^-53) it drops them whole, where the losses keep each to an ulp of
    itself. Formed on the CPU in float64, returned on ``exact``'s devices."""
    from vlkernels.reference import contrastive_loss_naive

    img64, txt64 = img.detach().double().cpu(), txt.detach().double().cpu()
    s64 = torch.tensor(float(scale), dtype=torch.float64)
    loss_weight = weight if loss_weight is None else loss_weight
    naive = lambda i, t, s: contrastive_loss_naive(i, t, s, eps)  # noqa: E731
    auto = run_loss(naive, img64, txt64, s64, grad_out * weight)
    want, _ = exact_contrastive(img64, txt64, s64, eps, grad_out * weight)
    auto[0], want[0] = auto[0] * loss_weight, want[0] * loss_weight
    return [e - a.to(e.device) + w.to(e.device) for e, a, w in zip(exact, auto, want, strict=True)]


def _masses(sc: torch.Tensor) -> torch.Tensor:
    """1 - P_ii of the rows of the float64 scores ``sc`` [B, B] to their relative precision (0 for B = 1)."""
    eye = torch.eye(sc.shape[0], dtype=torch.bool)
    off = torch.logsumexp(sc.masked_fill(eye, float("-inf")), 1) - sc.diagonal()
    return torch.sigmoid(off)


def exact_soft_target_grads(
    img, txt, scale, t_img, t_txt, t_scale, alpha: float, eps: float = 0.0, grad_out: float = 1.0, mask=None
):
    """(d_image, d_text, d_scale) of ``soft_target_loss`` with a separate teacher (soft weights a = alpha
    on the ``mask``ed pairs, hard weights 1 - a, smoothing ``eps``, backward with ``grad_out``) in float64,
    every diagonal term formed from the off-diagonal masses of the student and the teacher (rows and
    columns, ``_masses``): dL/dS_ii = e_i (2 eps - mass_r - mass_c) + q_i ((mass'_r - mass_r) +
    (mass'_c - mass_c)) less the smoothing's 2 e_i eps / B (e = coef h, q = coef a), where autograd forms
    P_ii - P'_ii from the two softmaxes and drops masses below 2^-53. Also returns each dL/dS_ij's
    magnitude (the sum of its parts', at least fp32's smallest normal times the weights' scale; float64
    [B, B]) for the error scales (``soft_relative_ulps``)."""
    img, txt, t_img, t_txt = (x.detach().double().cpu() for x in (img, txt, t_img, t_txt))
    batch = img.shape[0]
    s, ts = float(scale), float(t_scale)
    dots = img @ txt.T
    student, teacher = s * dots, ts * (t_img @ t_txt.T)
    a = torch.full((batch,), float(alpha), dtype=torch.float64)
    if mask is not None:
        a = a * mask.cpu().double()
    coef = grad_out / (2.0 * batch)
    e, q = coef * (1.0 - a), coef * a
    p = e + q
    eye = torch.eye(batch, dtype=torch.bool)
    soft = lambda x: torch.softmax(x, 1).masked_fill(eye, 0.0)  # noqa: E731
    pr, pc, tr, tc = soft(student), soft(student.T).T, soft(teacher), soft(teacher.T).T
    own, targets = p[:, None] * pr + p[None, :] * pc, q[:, None] * tr + q[None, :] * tc
    smooth = (e[:, None] + e) * eps / batch
    g, g_abs = own - targets - smooth, own + targets + smooth
    m_r, m_c, t_r, t_c = _masses(student), _masses(student.T), _masses(teacher), _masses(teacher.T)
    diag = e * (2.0 * eps - m_r - m_c) + q * ((t_r - m_r) + (t_c - m_c))
    diag_abs = e * (2.0 * eps + m_r + m_c) + q * (t_r + m_r + t_c + m_c)
    g = g + torch.diag(diag)
    g_abs = g_abs + torch.diag(diag_abs)
    tiny = torch.finfo(torch.float32).tiny
    return [s * g @ txt, s * g.T @ img, (g * dots).sum()], g_abs + tiny * coef


def soft_relative_ulps(
    got, img, txt, scale, t_img, t_txt, t_scale, alpha, eps=0.0, grad_out=1.0, mask=None, rows=slice(None)
):
    """The worst error of each of ``got`` (d_image, d_text[, d_scale]; the feature gradients those of the
    batch's ``rows``) against ``exact_soft_target_grads``, in fp32 ulps of each quantity's own error scale
    (as ``relative_ulps``: a gradient row's the sum of its terms' magnitudes, d_scale's the sum of
    |G|_ij |<I_i, T_j>|) times 1 + max |S|, |S'| (the student's and the teacher's logits' rounding: each
    weight's relative error)."""
    want, g_abs = exact_soft_target_grads(img, txt, scale, t_img, t_txt, t_scale, alpha, eps, grad_out, mask)
    i64, t64 = img.detach().double().cpu(), txt.detach().double().cpu()
    s = float(scale)
    smax = max(
        s * (i64 @ t64.T).abs().max().item(),
        float(t_scale) * (t_img.double().cpu() @ t_txt.double().cpu().T).abs().max().item(),
    )
    unit = torch.finfo(torch.float32).eps * (1.0 + smax)
    scales = (
        abs(s) * g_abs @ t64.abs().amax(1, keepdim=True),
        abs(s) * g_abs.T @ i64.abs().amax(1, keepdim=True),
        (g_abs * (i64 @ t64.T).abs()).sum(),
    )
    worst = []
    for a, w, sc in zip(got, want[: len(got)], scales[: len(got)], strict=True):
        if w.dim() == 2:
            w, sc = w[rows], sc[rows]
        err = (a.detach().double().cpu() - w).abs()
        if err.dim() == 2:
            err = err.amax(1, keepdim=True)
        worst.append((err / (unit * sc).clamp_min(1e-300)).max().item())
    return worst


def relative_ulps(
    got, img, txt, scale, eps: float = 0.0, grad_out: float = 1.0, rows=slice(None), split: bool = False
) -> list:
    """The worst error of each of ``got`` (loss, d_image, d_text, d_scale; the feature gradients those of
    the batch's ``rows``) against ``exact_contrastive``, in fp32 ulps of each quantity's own error scale
    times (1 + max |S|) (the logits' rounding: each weight's relative error): the loss's scale is the sum
    of its parts' magnitudes, a gradient row's the sum of its terms' magnitudes, s |G|_ij |T_j| over j,
    d_scale's the sum of |G|_ij |<I_i, T_j>|, where |G|_ij sums the magnitudes of dL/dS_ij's parts
    (``exact_contrastive``: without smoothing, on the diagonal, the masses). ``split``: the local loss
    without gather grads (``exact_contrastive``'s; ``got`` then (loss, d_image, d_text) or fewer)."""
    wants, (loss_abs, ga) = exact_contrastive(img, txt, scale, eps, grad_out, split=split)
    ga_i, ga_t = ga if split else (ga, ga)
    i64, t64 = img.double(), txt.double()
    s = float(scale)
    smax = s * (i64 @ t64.T).abs().max().item()
    unit = torch.finfo(torch.float32).eps * (1.0 + smax)
    scales = [
        loss_abs,
        abs(s) * ga_i @ t64.abs().amax(1, keepdim=True),
        abs(s) * ga_t.T @ i64.abs().amax(1, keepdim=True),
    ]
    if not split:
        scales.append((ga * (i64 @ t64.T).abs()).sum())
    worst = []
    for a, want, sc in zip(got, wants[: len(got)], scales[: len(got)], strict=True):
        if want.dim() == 2:
            want, sc = want[rows], sc[rows]
        err = (a.double() - want).abs()
        if err.dim() == 2:
            err = err.amax(1, keepdim=True)
        ratio = err / (unit * sc).clamp_min(1e-300)
        worst.append(ratio.max().item())
    return worst


def assert_relatively_exact(
    got, img, txt, scale, eps: float = 0.0, grad_out: float = 1.0, ulps: float = 16, rows=slice(None)
):
    """``got`` (loss, d_image, d_text, d_scale; the feature gradients those of the batch's ``rows``: a
    rank's share of a gathered loss) against ``exact_contrastive`` within ``ulps`` of ``relative_ulps``'
    unit. Near one-hot these are far below naive's error (which keeps an ulp of 1 per diagonal weight):
    a diagonal term formed from P_ii fails this by many orders."""
    worst = relative_ulps(got, img, txt, scale, eps, grad_out, rows)
    names = ("loss", "d_image", "d_text", "d_scale")
    for name, w in zip(names, worst, strict=True):
        assert w <= ulps, (name, w, worst)
