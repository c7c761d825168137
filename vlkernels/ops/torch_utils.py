"""Pieces shared by the PyTorch side of the ops: the row-chunk size of S for the chunked backends, and
the decorators of the autograd Functions (no autocast; first-order gradients only)."""

from __future__ import annotations

import contextlib
import functools
import math
import os

import torch

# A CPU cap on the elements of one fp32 chunk of S (the workspace bounds it elsewhere): 8 MiB, so that a
# backend's four chunk buffers stay within a large last-level cache (32 MiB) across the elementwise passes.
# Measured on a 2-core EPYC (one thread, B = 16384, D = 256, against 16 MiB chunks): the soft target's
# forward + backward 16% faster, the contrastive and sigmoid losses' 7%.
_CPU_CHUNK_ELEMS = 1 << 21
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def env_number(name: str, default: str, minimum: float, integer: bool = False) -> float:
    """The environment variable ``name`` (``default`` when unset or blank) as a finite number >= ``minimum``
    (a whole number with ``integer``); a ValueError naming the variable otherwise."""
    text = os.environ.get(name, "").strip() or default
    kind = "a whole number" if integer else "a number"
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise ValueError(f"{name} must be {kind} >= {minimum:g}, got {text!r}") from None
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be {kind} >= {minimum:g}, got {text!r}")
    return value


def workspace_bytes() -> int:
    """The workspace budget a backend may spend for speed: ``VLKERNELS_WORKSPACE_MB`` (default 256, in MiB;
    0 = the least each plan can run with)."""
    return int(env_number("VLKERNELS_WORKSPACE_MB", "256", 0.0) * 2**20)


def chunk_rows(rows: int, cols: int, device: torch.device) -> int:
    """Rows of S per chunk: ``VLKERNELS_TORCH_CHUNK_ROWS`` if set, else the most whose fp32 chunk buffers
    (at most four of rows x cols alive at once) use half the workspace budget (capped on CPU)."""
    if os.environ.get("VLKERNELS_TORCH_CHUNK_ROWS", "").strip():
        return int(env_number("VLKERNELS_TORCH_CHUNK_ROWS", "1", 1, integer=True))
    elems = workspace_bytes() // 32
    if device.type != "cuda":
        elems = min(elems, _CPU_CHUNK_ELEMS)
    return max(1, min(rows, elems // cols))


def row_chunks(rows: int, cols: int, device: torch.device):
    """Slices covering ``range(rows)`` in chunks of ``chunk_rows`` rows."""
    step = chunk_rows(rows, cols, device)
    return [slice(start, start + step) for start in range(0, rows, step)]


def f32_rows(x: torch.Tensor, sl: slice) -> torch.Tensor:
    """Rows ``sl`` of ``x`` in fp32: a view for fp32 ``x``, a chunk-sized copy otherwise."""
    return x[sl].float()


def weighted_row_sum(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i w_i x_i (``w`` [M] fp32, ``x`` [M, D] any float dtype) in fp32 [D], converting ``x`` a chunk of
    rows at a time: never an fp32 copy of the whole of ``x``."""
    out = torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
    for sl in row_chunks(x.shape[0], x.shape[1], x.device):
        out.addmv_(f32_rows(x, sl).T, w[sl])
    return out


def matmul_f32(a32: torch.Tensor, b: torch.Tensor, transpose_b: bool, cols: int) -> torch.Tensor:
    """``a32 @ b.T`` (``transpose_b``) or ``a32 @ b`` in fp32, converting ``b`` (any float dtype, rows of
    the partner features) ``cols`` rows at a time: never an fp32 copy of the whole of ``b``."""
    if b.dtype == torch.float32:
        return a32 @ (b.T if transpose_b else b)
    if transpose_b:
        out = a32.new_empty((a32.shape[0], b.shape[0]))
        for start in range(0, b.shape[0], cols):
            out[:, start : start + cols] = a32 @ b[start : start + cols].float().T
        return out
    out = a32.new_zeros((a32.shape[0], b.shape[1]))
    for start in range(0, b.shape[0], cols):
        out.addmm_(a32[:, start : start + cols], b[start : start + cols].float())
    return out


def split_lse(x: torch.Tensor, lo_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi in fp32, lo in ``lo_dtype``) of float64 LSEs (x = hi + lo to ~2^-48 relative with an fp32 lo):
    the exponents take exp((S - hi) - lo), where S - hi is exact near a row's largest score, so that a
    weight near 1 keeps an ulp of 1 (an fp32 LSE would cost it an ulp of |S|)."""
    hi = x.float()
    return hi, (x - hi.double()).to(lo_dtype)


def pack_lse(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi fp32, lo bf16) of float64 LSEs, 6 bytes each: a separate teacher's saved LSEs (its r' and c'
    with the student's float64 r and c and the soft weights fit 32 bytes per row). lo's bf16 rounding
    costs the exponents (S - hi) - lo at most ulp(hi) / 1024 (0.06 ulp of 1 below |S| = 128), against an
    ulp of |S| for an fp32 LSE."""
    return split_lse(x, torch.bfloat16)


def lse_at(packed, idx) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed LSEs (``pack_lse``) at ``idx``: (hi[idx], lo[idx])."""
    return packed[0][idx], packed[1][idx]


def unpack_lse(packed) -> torch.Tensor:
    """hi + lo of packed LSEs in float64 (O(rows) uses: the soft target's ``_diagonal``)."""
    return packed[0].double() + packed[1].double()


def minus_lse_(s: torch.Tensor, lse, dim: int) -> torch.Tensor:
    """In place: S - lse along ``dim`` of the fp32 chunk ``s`` (lse [s.shape[dim]]: per row with dim 0,
    per column with 1) as (S - hi) - lo: ``lse`` float64 (split by ``split_lse``; the columns' split, 16
    bytes of temporaries per LSE, in slabs within the chunk budget, ``chunk_rows``, not as [N] vectors)
    or a packed (hi, lo) pair (``pack_lse``: no temporaries)."""
    if isinstance(lse, tuple):
        hi, lo = lse
        view = (slice(None), None) if dim == 0 else (None, slice(None))
        return s.sub_(hi[view]).sub_(lo[view])
    if dim == 0:
        hi, lo = split_lse(lse)
        return s.sub_(hi[:, None]).sub_(lo[:, None])
    step = chunk_rows(lse.shape[0], 16, s.device)
    for j in range(0, lse.shape[0], step):
        hi, lo = split_lse(lse[j : j + step])
        s[:, j : j + step].sub_(hi[None, :]).sub_(lo[None, :])
    return s


def finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def row_lse(s: torch.Tensor, col0: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(LSEs in float64, off-diagonal masses 1 - P_ii in fp32) of the rows of the fp32 chunk ``s``
    [rows, N], the diagonal at column ``col0`` + i (rows past N have none: mass 1): max + log(sum) formed
    in float64 from the fp32 max and the fp32 sum of exp(S - max) over the row's off-diagonal scores, the
    diagonal's term added in float64, as torch.logsumexp (an infinite max gives +-inf, not NaN); the
    mass is the off-diagonal sum over the whole, to an ulp of itself (formed from P_ii it would keep an
    ulp of 1: near one-hot, all of it)."""
    m = finite_or_zero(s.amax(1))
    e = torch.sub(s, m[:, None]).exp_()
    own = take_diagonal_(e, col0)
    return lse_and_mass(m, e.sum(1), own)


def lse_and_mass(top, off, own, base2: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(top + log(off + own) in float64, off / (off + own) in fp32), natural or (``base2``) base 2: an LSE
    and its off-diagonal mass 1 - P_ii (to an ulp of itself) from a reference ``top``, the sum ``off`` of
    exp(S - top) over the off-diagonal scores and the diagonal's term ``own`` (0 where there is none), the
    total formed in float64."""
    off = off.double()
    total = off + own.double()
    log = torch.log2 if base2 else torch.log
    return log(total).add_(top.double()), (off / total).float()


def take_diagonal_(e: torch.Tensor, col0: int) -> torch.Tensor:
    """The diagonal e[i, col0 + i] of the chunk ``e`` [rows, N] as a [rows] copy (``diagonal_of``: 0 where
    col0 + i is past N), zeroed in ``e``."""
    out = diagonal_of(e, col0)
    e.diagonal(offset=col0).zero_()
    return out


def diagonal_loss_terms(lse: torch.Tensor, x: torch.Tensor, mass: torch.Tensor, nats: float) -> torch.Tensor:
    """-log P_ii per row (or column) in natural logs, float64: -log1p(-(1 - P_ii)) from the off-diagonal
    mass (``row_lse``) where it is below 1/2, which keeps the tiny loss of a near one-hot row to
    an ulp of itself, else (lse - x) ``nats`` (x the diagonal scores in the LSE's units), whose error, an
    ulp of |S|, is then an ulp of a loss above log 2."""
    return torch.where(mass < 0.5, torch.log1p(-mass), (x.double() - lse) * nats).neg_()


def soft_partials(s: torch.Tensor, d: torch.Tensor, t: torch.Tensor | None = None, scratch=None):
    """Soft-target sums over each row of the fp32 chunk ``s`` [rows, N] of scores, natural logs:
    (m, l, rest, m', l', u, w, rest') in fp32 [rows] with m the row's largest score, l = sum_j
    exp(s_ij - m), rest the same less one largest term (exactly 1), m', l' and rest' the teacher's (``t``,
    its scores; None for the self teacher: m' and rest' are None, the weights are the student's own and l'
    is l), and under the teacher's weights p_ij = exp(t_ij - m'): u = sum_j p_ij (m - s_ij) and
    w = sum_j p_ij d_ij of the dot products ``d``. Every term is non-negative, so that the soft gap
    log1p(rest) + u / l' (the row's LSE less its teacher-softmax-weighted score) keeps a few ulps of
    itself near one-hot, where LSE - sum p S cancels to the rest and keeps an ulp of |S| (docs/design.md,
    "Soft gaps"). ``scratch``: two fp32 buffers of at least s's shape for the two [rows, N] temporaries
    (else allocated)."""
    e_buf, gap_buf = scratch if scratch is not None else (torch.empty_like(s), torch.empty_like(s))
    e_buf, gap_buf = e_buf[: s.shape[0]], gap_buf[: s.shape[0]]
    m = finite_or_zero(s.amax(1))
    e = torch.sub(s, m[:, None], out=e_buf).exp_()
    den = e.sum(1)
    if t is None:
        t_max, t_den, weights = None, den, e
    else:
        rest = rest_below_one(e, 1, den)
        t_max = finite_or_zero(t.amax(1))
        weights = torch.sub(t, t_max[:, None], out=e).exp_()
        t_den = weights.sum(1)
    gap = torch.sub(m[:, None], s, out=gap_buf)  # m - s >= 0, exactly 0 at the largest score
    u = gap.mul_(weights).sum(1)
    w = torch.mul(weights, d, out=gap).sum(1)
    del gap
    t_rest = None
    if t is None:
        rest = rest_below_one(e, 1, den)
    else:
        t_rest = rest_below_one(weights, 1, t_den)  # the teacher's off-diagonal masses
    del weights
    return m, den, rest, t_max, t_den, u, w, t_rest


def rest_below_one(e: torch.Tensor, dim: int, total=None, exclude=None) -> torch.Tensor:
    """sum of ``e`` (terms exp(s - max) <= 1) along ``dim`` less one term of exactly 1 (the largest), in
    fp32; ``e`` is overwritten. The terms below 1 are summed as they are and those that round to 1 (the
    max, and any tie within fp32 rounding of it) counted as round(total - below) (``total``: e's sum,
    computed if None), never formed as 1 + small - 1: without ties total - below is 1 within an ulp;
    with many, the count may be off by one where total's own rounding reaches 1/2, an error of the size
    of that rounding. ``exclude`` (bool [other dims]): where False, no term is left out (the largest is
    an earlier chunk's)."""
    if total is None:
        total = e.sum(dim)
    # the terms below 1 (the rest 0, NaN kept) as the negated terms through threshold (x <= -1: 0), summed
    # and negated back: the same values and sums as masked_fill_(e >= 1, 0), without its bool mask (6x
    # faster on CPU)
    below = torch.nn.functional.threshold_(e.neg_(), -1.0, 0.0).sum(dim).neg_()
    ones = torch.round(total - below)
    return below.add_(ones.sub_(1.0 if exclude is None else exclude.to(ones.dtype)))


def soft_rows(s: torch.Tensor, d: torch.Tensor, t: torch.Tensor | None = None, scratch=None):
    """(r, r', w, g, rest, rest') of the rows of the fp32 chunk ``s`` (``soft_partials``' arguments): the
    LSEs in float64, the student's m + log1p(rest) (as ``finish_partials`` forms the columns': log(l)
    would round the rest at 1 + rest in fp32), the teacher's m' + log(l') (r' is r for the self teacher),
    the teacher-softmax-weighted mean of the dot products w and the soft gap
    g = log1p(rest) + u / l' = r - sum_j softmax_j(t_i.) s_ij, both fp32, and the rests themselves (fp32:
    the off-diagonal masses, ``soft_target.diagonal_mass``; rest' None for the self teacher)."""
    m, den, rest, t_max, t_den, u, w, t_rest = soft_partials(s, d, t, scratch)
    above = log1p_units(rest)  # not log(den): den = 1 + rest rounds the rest in fp32
    r = above + m.double()
    tr = r if t is None else t_den.double().log_().add_(t_max.double())
    g = above.add_(u.div_(t_den)).float()
    return r, tr, w.div_(t_den), g, rest, t_rest


def log1p_units(rest: torch.Tensor, base2: bool = False) -> torch.Tensor:
    """log1p(rest) in float64, natural or (``base2``) base 2: the part of an LSE above its largest score
    (m + log1p(rest)), and of a soft gap (log1p(rest) plus the weighted distances to m)."""
    lg = torch.log1p(rest.double())
    return lg.mul_(LOG2E) if base2 else lg


def finish_partials(m, rest, t_max, t_den, u, w, base2: bool = False):
    """(c, c', g, w) from merged soft-target sums of columns [cols] (m, rest, m', l', u, w: ``ColumnSoft``,
    the Triton statistics' ``_merge_kernel``): the LSE m + log1p(rest) and the
    teacher's m' + log(l') in float64 (c' None for the self teacher), the soft gap log1p(rest) + u / l'
    and the weighted mean w / l' in fp32."""
    lg = log1p_units(rest, base2)
    log = torch.log2 if base2 else torch.log
    den = rest.double() + 1.0 if t_max is None else t_den.double()
    tc = None if t_max is None else log(den).add_(t_max.double())
    return lg + m.double(), tc, (u / den).add_(lg).float(), (w / den).float()


class ColumnSoft:
    """Soft-target sums of the columns of fp32 chunks of rows of S [rows, N], merged online in place (the
    torch backend's columns; the Triton statistics merge their programs' partials alike, ``_merge_kernel``):
    per column the largest score so far m, the rest below it, the teacher's m', l' and rest' (a separate
    teacher; else the student's weights, whose l' is 1 + rest), u and w (``soft_partials``): 16 bytes per
    column, 28 with a teacher, and a few [N] temporaries while a chunk is added."""

    def __init__(self, n: int, device: torch.device, teacher: bool):
        self.m = torch.full((n,), float("-inf"), dtype=torch.float32, device=device)
        self.rest, self.u, self.w = (torch.zeros_like(self.m) for _ in range(3))
        self.t_max = torch.full_like(self.m, float("-inf")) if teacher else None
        self.t_den = torch.zeros_like(self.m) if teacher else None
        self.t_rest = torch.zeros_like(self.m) if teacher else None

    def add(self, s: torch.Tensor, d: torch.Tensor, t: torch.Tensor | None = None, scratch=None) -> None:
        """Merge the chunk of scores ``s`` (its dot products ``d``; the teacher's scores ``t``, None for
        the self teacher), each [rows, N]; ``s`` and ``t`` are overwritten (``scratch``: an fp32 buffer of
        at least their shape for the one [rows, N] temporary, else allocated)."""
        top = torch.maximum(finite_or_zero(s.amax(0)), self.m)
        moved = top > self.m
        a = torch.sub(self.m, top).exp_()  # the running sums' rescale (0 before the first chunk)
        first = torch.isinf(self.m)
        gap = torch.empty_like(s) if scratch is None else scratch[: s.shape[0]]
        gap = torch.sub(top, s, out=gap)  # M - s >= 0, exactly 0 at the largest score
        e = s.sub_(top).exp_()
        if self.t_max is None:
            # the weights are the student's own, l' = 1 + rest: u shifts by the max's move times l'
            shift = torch.where(first, 0.0, (top - self.m).mul_(self.rest + 1.0))
            self.u.add_(shift).mul_(a).add_(gap.mul_(e).sum(0))
            self.w.mul_(a).add_(torch.mul(e, d, out=gap).sum(0))
        else:
            t_top = torch.maximum(finite_or_zero(t.amax(0)), self.t_max)
            b = torch.sub(self.t_max, t_top).exp_()
            shift = torch.where(first, 0.0, (top - self.m).mul_(self.t_den))
            p = t.sub_(t_top).exp_()
            self.u.add_(shift).mul_(b).add_(gap.mul_(p).sum(0))
            self.w.mul_(b).add_(torch.mul(p, d, out=gap).sum(0))
            self.t_den.mul_(b).add_(p.sum(0))
            # the teacher's rest below its largest score, as the student's below
            t_moved = t_top > self.t_max
            t_chunk = rest_below_one(p, 0, exclude=t_moved)
            self.t_rest = torch.where(t_moved, (self.t_rest + 1.0).mul_(b), self.t_rest).add_(t_chunk)
            self.t_max = t_top
        del gap
        # the rest: the former largest term joins it where the max moved, and every term of the chunk but
        # one largest where the max is the chunk's own (a tie with an earlier chunk's max counts whole)
        chunk = rest_below_one(e, 0, exclude=moved)
        self.rest = torch.where(moved, (self.rest + 1.0).mul_(a), self.rest).add_(chunk)
        self.m = top

    def partials(self) -> tuple:
        """(m, rest, m', l', u, w) of the columns so far (``finish_partials``' arguments)."""
        return self.m, self.rest, self.t_max, self.t_den, self.u, self.w


def diagonal_of(s: torch.Tensor, col0: int) -> torch.Tensor:
    """s[i, col0 + i] of the chunk ``s`` [rows, N] (a copy, [rows]): the pass's own diagonal scores, which
    the loss subtracts from its LSEs. Near one-hot a row's LSE is its diagonal score plus a tiny rest;
    a score from another rounding (a separate dot product) would leave an ulp of |S| in each row's loss,
    where torch's log_softmax keeps an ulp of the rest. Rows whose column is past N get 0 (as the Triton
    forward's)."""
    diag = s.diagonal(offset=col0)  # [min(rows, N - col0)], empty past N
    out = s.new_zeros(s.shape[0])
    out[: diag.shape[0]] = diag
    return out


class ColumnLSE:
    """Column LSEs of fp32 chunks of rows of S [rows, N], merged across chunks as (reference, sum) pairs
    in fp32 (8 bytes per column, 4 more for the off-diagonal sums): the reference is a column's largest
    finite score so far (0 before its first), the sums those of exp(S - reference) over the column's
    scores and over its off-diagonal ones (``add``'s ``col0``), so that ``lse()`` = reference + log(sum)
    in float64 keeps an ulp of 1 where torch's softmax would, and the ratio of the sums is the column's
    1 - Q_jj to an ulp of itself (``row_lse``'s mass). Scores of -inf, +inf or NaN give
    torch.logsumexp's -inf, +inf or NaN."""

    def __init__(self, n: int, device: torch.device):
        self.ref = torch.zeros(n, dtype=torch.float32, device=device)
        self.sum = torch.zeros_like(self.ref)
        self.off = torch.zeros_like(self.ref)

    def add(self, s: torch.Tensor, col0: int = 0) -> None:
        """Merge the chunk ``s`` [rows, N] (overwritten), whose row i meets the diagonal at column
        ``col0`` + i; in place where it can (a few bytes per column of temporaries)."""
        ref = s.amax(0).nan_to_num_(nan=float("-inf"), posinf=float("-inf"))  # the chunk's finite max
        self.ref.masked_fill_(self.sum == 0, float("-inf"))  # a placeholder: no finite score so far
        ref = torch.maximum(ref, self.ref, out=ref).nan_to_num_(neginf=0.0)  # still none: the placeholder
        rescale = self.ref.sub_(ref).exp_()  # <= 1 (0 from a placeholder)
        e = s.sub_(ref[None, :]).exp_()
        own = take_diagonal_(e, col0)
        off = e.sum(0)
        self.off.mul_(rescale).add_(off)
        self.sum.mul_(rescale).add_(off)
        n_own = max(0, min(own.shape[0], off.shape[0] - col0))  # the rows whose diagonal is a column here
        self.sum[col0 : col0 + n_own] += own[:n_own]
        self.ref = ref

    def lse(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(reference + log(sum) in float64 (two-part precision), the off-diagonal sum over the sum in
        fp32: 1 - Q_jj)."""
        return self.sum.double().log_().add_(self.ref), self.off.div_(self.sum)


# Whether autocast exists for a device type, asked once per type: torch 2.11's dynamo cannot trace
# ``torch.amp.is_autocast_available`` (a skipped builtin: torch.compile(fullgraph=True) of a loss failed
# there; 2.13's traces it), while a lookup in this dict it can. The usual types are asked at import.
_AUTOCAST_AVAILABLE: dict[str, bool] = {}


def autocast_available(device_type: str) -> bool:
    known = _AUTOCAST_AVAILABLE.get(device_type)
    if known is None:
        known = _AUTOCAST_AVAILABLE[device_type] = bool(torch.amp.is_autocast_available(device_type))
    return known


for _t in ("cpu", "cuda"):
    autocast_available(_t)
del _t


def autocast_off(x: torch.Tensor):
    """A context that disables autocast on ``x``'s device type: the losses run in their input dtype with
    fp32 accumulation, and autocast would silently compute their products in bf16. A plain
    ``torch.autocast`` context (not an ExitStack), so that torch.compile traces through it."""
    device_type = x.device.type
    if autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def exact(fn):
    """Decorator for an autograd Function's forward/backward: run without autocast (see autocast_off)."""

    @functools.wraps(fn)
    def wrapper(ctx, *args):
        with autocast_off(next(a for a in args if isinstance(a, torch.Tensor))):
            return fn(ctx, *args)

    return wrapper


def lse_nats(backend) -> float:
    """What one unit of ``backend``'s log-sum-exps is in natural logs: ln 2 where they are base 2 (its
    ``lse_base2``: the Triton backends keep their kernels' units), else 1."""
    return LN2 if backend.lse_base2 else 1.0


DOUBLE_BACKWARD_ERROR = (
    "vlkernels: the gradients of impl='torch' / impl='triton' losses cannot be differentiated again "
    "(double backward: create_graph=True followed by a backward through the gradients is not supported); "
    "use impl='naive' for second derivatives"
)


class _SecondOrder(torch.autograd.Function):
    """Identity on gradients (views of them), whose backward raises DOUBLE_BACKWARD_ERROR. Its other inputs
    are the tensors the gradients depend on (the Function's inputs that require grad), so that it lies on
    every path from the gradients back to the parameters: ``torch.autograd.grad(penalty, params)`` reaches
    it and raises instead of finding no path (an "unused" error, or silent zeros with ``allow_unused`` /
    ``materialize_grads``)."""

    @staticmethod
    def forward(ctx, count: int, *tensors):
        return tuple(g.view_as(g) for g in tensors[:count])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(DOUBLE_BACKWARD_ERROR)


def first_order_only(fn):
    """Decorator for an autograd Function's backward: under ``create_graph=True`` the returned gradients
    carry a node (``_SecondOrder``) that raises DOUBLE_BACKWARD_ERROR if anything differentiates through
    them, ``.backward()`` or ``torch.autograd.grad`` with respect to anything upstream of the loss (torch's
    ``once_differentiable`` leaves them constant when the upstream gradient does not require grad, which
    would drop second-order terms silently)."""

    @functools.wraps(fn)
    def wrapper(ctx, *args):
        with torch.no_grad():
            grads = fn(ctx, *args)
        if not torch.is_grad_enabled():
            return grads
        real = [i for i, g in enumerate(grads) if isinstance(g, torch.Tensor)]
        if not real:
            return grads
        upstream = [t for t in (*ctx.saved_tensors, *args) if isinstance(t, torch.Tensor) and t.requires_grad]
        # (With nothing upstream requiring grad, the gradients become leaves that do: differentiating
        # through them still reaches the node.)
        ours = [grads[i] if upstream else grads[i].detach().requires_grad_() for i in real]
        wrapped = _SecondOrder.apply(len(real), *ours, *upstream)
        out = list(grads)
        for i, g in zip(real, wrapped, strict=True):
            out[i] = g
        return tuple(out)

    return wrapper


class _ZeroGradient(torch.autograd.Function):
    """Identity on ``out``; ``bias`` gets its exact gradient, zeros (not ``0 * bias``: NaN for an infinite
    bias)."""

    @staticmethod
    def forward(ctx, out, bias):
        ctx.bias_meta = (bias.shape, bias.dtype, bias.device)
        return out.clone()

    @staticmethod
    def backward(ctx, grad):
        shape, dtype, device = ctx.bias_meta
        return grad, torch.zeros(shape, dtype=dtype, device=device)


def with_zero_gradient(out: torch.Tensor, bias) -> torch.Tensor:
    """``out``, connected to ``bias`` in the graph with a zero gradient when ``bias`` is a tensor that
    requires grad (a loss that does not depend on a parameter, e.g. a constant logit shift under a softmax:
    DDP would otherwise report the parameter as unused)."""
    if isinstance(bias, torch.Tensor) and bias.requires_grad and torch.is_grad_enabled():
        return _ZeroGradient.apply(out, bias)
    return out
