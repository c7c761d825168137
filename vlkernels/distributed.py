"""Distributed losses on torch.distributed: the block-row scheme of DESIGN.md section 4.

Rank r of n holds b pairs (I_r, T_r), B = n b. Only the texts are all-gathered (T, [B, D]); rank r
runs the single-process backends on its block-row S_r = s I_r T.T ([b, B], tiled, never stored): exact
row statistics for its own images and partial column statistics for all B texts, which a log-sum-exp
all-reduce merges (a MAX, then a SUM of O(B) floats). Each rank scores its own columns. Backward:
dI_r = s G_r T stays local; the column products s G_r.T I_r ([B, D], fp32) are reduce-scattered to the
texts' owners. Per rank, with the torch backend: 2 b B D FLOPs forward and 6 b B D backward (8 b B D,
the floor); memory O(B D) for the gathered texts and the column products, no b x B tensor beyond the
backend's chunk. Communication per rank and step: the gathered texts ((n - 1) b D elements in the input
dtype), 2-3 all-reduces of O(B + D) floats, one reduce-scatter of (n - 1) b D fp32 values, and a few
scalars; plus one small all-gather that checks the ranks agree on shapes and dtypes (a clear error on
every rank rather than a hang).

Gradient semantics follow open_clip's ``gather_features`` (``gather_with_grad``, ``local_loss``):

- ``local_loss=False``: every rank returns the full-batch loss L. With ``gather_with_grad=True`` the
  gradient of every rank's loss reaches every rank's features, so rank r's features get
  (sum_r' g_r') dL/df_r (n dL/df_r when every rank back-propagates 1): after DDP's gradient averaging
  every parameter gradient equals the single-process full-batch gradient. With ``gather_with_grad=False``
  only the rank's own loss reaches its features: g_r dL/df_r.
- ``local_loss=True``: rank r returns the mean of the row terms of its images and the column terms of
  its texts (b of each, over all B candidates); the average over ranks is L. With
  ``gather_with_grad=True`` features get the gradient of sum_r' g_r' L_r'; with ``False`` the gathered
  features are constants: images get only their row terms' gradient, texts only their column terms'.
- ``logit_scale`` gets g_r dL_r/ds on each rank (its own loss), as in open_clip.
"""

from __future__ import annotations

import struct
import warnings

import torch
import torch.distributed as dist

_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_CODE_DTYPES = {v: k for k, v in _DTYPE_CODES.items()}

# torch >= 2.11 renamed the tensor collectives (the old names warn); same semantics.
_all_gather_tensor = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_tensor = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def world(group=None) -> tuple[int, int]:
    """(world size, rank) of ``group``; a clear error when no process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "gather=True needs an initialised torch.distributed process group: call "
            "torch.distributed.init_process_group(...) first (torchrun sets up the environment), "
            "or use gather=False for a single process"
        )
    return dist.get_world_size(group), dist.get_rank(group)


def check_world(group, rank: int, world_size: int, owner: str) -> None:
    """``owner``'s rank / world_size arguments (open_clip's) must describe this process in ``group``."""
    size, actual = world(group)
    if (size, actual) != (world_size, rank):
        raise ValueError(
            f"{owner} was built with rank={rank}, world_size={world_size} but this process is rank "
            f"{actual} of {size} in its process group"
        )


def _gather(x: torch.Tensor, group, async_op: bool = False):
    """Concatenation over ranks of x ([b, ...] -> [n b, ...]) and the async work handle (or None)."""
    x = x.contiguous()
    out = x.new_empty((dist.get_world_size(group) * x.shape[0], *x.shape[1:]))
    return out, _all_gather_tensor(out, x, group=group, async_op=async_op)


def _float_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def _describe(name: str, value: int) -> str:
    if name.endswith("dtype"):
        return str(_CODE_DTYPES.get(value, value)).replace("torch.", "")
    if name in ("label_smoothing", "reduction factor"):
        return repr(struct.unpack("<d", struct.pack("<q", value))[0])
    return str(value)


def check_ranks(group, device: torch.device, fields: dict[str, int]) -> None:
    """One small all-gather: raise the same ValueError on every rank when the ranks disagree.

    Without it, ranks with different local batch sizes, widths or dtypes would deadlock or fail
    inside a collective with an opaque message (or, worse, silently mis-slice)."""
    names = list(fields)
    mine = torch.tensor([int(fields[k]) for k in names], dtype=torch.int64, device=device)
    rows, _ = _gather(mine[None], group)
    rows = rows.tolist()
    bad = []
    for idx, name in enumerate(names):
        values = [row[idx] for row in rows]
        if len(set(values)) > 1:
            per_rank = ", ".join(f"rank {r}: {_describe(name, v)}" for r, v in enumerate(values))
            bad.append(f"{name} ({per_rank})")
    if bad:
        raise ValueError(
            "gather=True needs the same local batch size, feature width, dtype and loss settings on "
            "every rank; the ranks disagree on " + "; ".join(bad)
        )


def _common_fields(image, text, scale, eps: float, factor: float, local_loss: bool, with_grad: bool):
    return {
        "local batch size": image.shape[0],
        "feature width D": image.shape[1],
        "feature dtype": _DTYPE_CODES[image.dtype],
        "label_smoothing": _float_bits(eps),
        "reduction factor": _float_bits(factor),
        "local_loss": int(local_loss),
        "gather_with_grad": int(with_grad),
        "logit_scale requires grad": int(scale.requires_grad),
    }


def _merge_columns(lse_parts, weighted, extra, group):
    """Merge per-rank partial column statistics over the ranks' rows.

    ``lse_parts``: per-rank partial log-sum-exps [B]; ``weighted``: (k, w) pairs where w [B] is a
    softmax-weighted sum normalised by the partial LSE ``lse_parts[k]``; ``extra``: a fp32 vector summed
    over ranks in the same all-reduce. Returns (global LSEs, global weighted sums, summed extra)."""
    cols = lse_parts[0].shape[0]
    peak = torch.stack(lse_parts)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    scaled = [torch.exp(part - peak[k]) for k, part in enumerate(lse_parts)]
    parts = scaled + [w * scaled[k] for k, w in weighted]
    buf = torch.cat([p.reshape(-1) for p in parts] + [extra])
    dist.all_reduce(buf, group=group)
    sums = buf[: len(parts) * cols].view(len(parts), cols)
    lses = [peak[k] + torch.log(sums[k]) for k in range(len(lse_parts))]
    sums_w = [sums[len(lse_parts) + j] / sums[k] for j, (k, _) in enumerate(weighted)]
    return lses, sums_w, buf[len(parts) * cols :]


class GatheredContrastiveFunction(torch.autograd.Function):
    """The contrastive loss over the gathered batch (``local_loss=False``) on a contrastive backend
    (``lse`` / ``accumulate``, see ops/contrastive.py); returns the full-batch loss on every rank."""

    @staticmethod
    def forward(ctx, image, text, scale, eps: float, factor: float, backend, group, with_grad: bool):
        batch = dist.get_world_size(group) * image.shape[0]
        texts, _ = _gather(text, group)
        r, c_part = backend.lse(image, texts, scale)
        i32, t32 = image.float(), text.float()
        colsum_i = i32.sum(0)
        local = (1.0 - eps) * (i32 * t32).sum()
        if eps:
            local = local + (eps / batch) * torch.dot(colsum_i, texts.sum(0, dtype=torch.float32))
        local = r.sum() - 2.0 * scale * local
        (c,), _, rest = _merge_columns([c_part], [], torch.cat([local.reshape(1), colsum_i]), group)
        loss = (rest[0] + c.sum()) * (factor / (2.0 * batch))
        ctx.save_for_backward(image, text, texts, scale, r, c, rest[1:])
        ctx.eps, ctx.factor, ctx.backend, ctx.group, ctx.with_grad = eps, factor, backend, group, with_grad
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        image, text, texts, scale, r, c, colsum_i = ctx.saved_tensors
        eps, group = ctx.eps, ctx.group
        batch = texts.shape[0]
        need_i, need_t, need_s = ctx.needs_input_grad[:3]
        a_i, a_t = ctx.backend.accumulate(image, texts, scale, r, c)
        u_t = torch.empty_like(a_i)
        rs_work = _reduce_scatter_tensor(u_t, a_t, group=group, async_op=True)
        i32, t32 = image.float(), text.float()
        u_i = a_i.sub_(t32, alpha=2.0 * (1.0 - eps))
        if eps:
            u_i.sub_(texts.sum(0, dtype=torch.float32)[None], alpha=2.0 * eps / batch)
        # Sum over ranks of the block-rows' ds parts, and of the upstream grads (gather_with_grad: every
        # rank's loss reaches these features).
        red = torch.stack([(i32 * u_i).sum(), grad_out.float().reshape(())])
        ar_work = dist.all_reduce(red, group=group, async_op=True)
        rs_work.wait()
        u_t.sub_(i32, alpha=2.0 * (1.0 - eps))
        if eps:
            u_t.sub_(colsum_i[None], alpha=2.0 * eps / batch)
        ar_work.wait()
        coef = ctx.factor / (2.0 * batch)
        g_feat = (red[1] if ctx.with_grad else grad_out.float()) * (coef * scale)
        d_image = (u_i * g_feat).to(image.dtype) if need_i else None
        d_text = (u_t * g_feat).to(text.dtype) if need_t else None
        d_scale = red[0] * coef * grad_out.float() if need_s else None
        return d_image, d_text, d_scale, None, None, None, None, None


class GatheredSoftTargetFunction(torch.autograd.Function):
    """The soft-target loss (ops/soft_target.py's (hard, soft) pair) over the gathered batch on a
    soft-target backend (``stats`` / ``accumulate``), for every (local_loss, gather_with_grad) mode.

    Also the contrastive loss with ``local_loss=True`` (hard weights 1, soft weights 0): the per-rank
    logit_scale gradient of a local loss needs the softmax-weighted sums that only ``stats`` yields.
    The logit_scale gradient comes from those sums in the forward (divided by s: s must be nonzero);
    with a separate teacher it costs one more ``stats`` pass (2 b B D FLOPs) when s requires grad.
    """

    @staticmethod
    def forward(
        ctx,
        image,
        text,
        scale,
        hard_w,
        soft_w,
        t_image,
        t_text,
        t_scale,
        eps: float,
        factor: float,
        backend,
        group,
        local_loss: bool,
        with_grad: bool,
    ):
        n, rank = dist.get_world_size(group), dist.get_rank(group)
        b, dim = image.shape
        batch = n * b
        own = slice(rank * b, (rank + 1) * b)
        i32, t32 = image.float(), text.float()
        # One fp32 all-gather for the pair weights (needed for every column) and two D-vectors per rank.
        meta = torch.cat([hard_w, soft_w, i32.sum(0), hard_w @ i32])
        meta_all, meta_work = _gather(meta[None], group, async_op=True)
        texts, text_work = _gather(text, group, async_op=True)
        teacher = None
        if t_image is not None:
            t_texts, _ = _gather(t_text, group)
            teacher = (t_image, t_texts, t_scale)
        text_work.wait()
        meta_work.wait()
        h_all, a_all = meta_all[:, :b].reshape(batch), meta_all[:, b : 2 * b].reshape(batch)
        colsum_i = meta_all[:, 2 * b : 2 * b + dim].sum(0)
        hsum_i = meta_all[:, 2 * b + dim :]
        need_s = ctx.needs_input_grad[2]

        r, c_part, tr, tc_part, w, wc_part = backend.stats(image, texts, scale, teacher)
        lse_parts, weighted = [c_part], [(0, wc_part)]
        if teacher is not None:
            lse_parts.append(tc_part)
            weighted = [(1, wc_part)]
            if need_s:
                # d r_i / ds needs the student's own softmax-weighted sums: one more stats pass.
                _, _, _, _, ws, ws_part = backend.stats(image, texts, scale, None)
                weighted.append((0, ws_part))
        lses, sums_w, _ = _merge_columns(lse_parts, weighted, meta.new_empty(0), group)
        c = lses[0]
        tc = lses[-1]
        wc = sums_w[0]
        if teacher is None:
            ws, wsc = w, wc
        else:
            wsc = sums_w[1] if need_s else None

        colsum_t = texts.sum(0, dtype=torch.float32)
        diag = (i32 * t32).sum(1)
        h_row = scale * ((1.0 - eps) * diag + (eps / batch) * (i32 @ colsum_t))
        h_col = scale * ((1.0 - eps) * diag + (eps / batch) * (t32 @ colsum_i))
        c_own, wc_own = c[own], wc[own]
        parts = [
            torch.dot(hard_w, r - h_row) + torch.dot(hard_w, c_own - h_col),
            torch.dot(soft_w, r - w) + torch.dot(soft_w, c_own - wc_own),
        ]
        if need_s:
            # ds of each part (the teacher, and the targets' S_ii, are linear in s or constant).
            wsc_own = wsc[own]
            parts.append((torch.dot(hard_w, ws - h_row) + torch.dot(hard_w, wsc_own - h_col)) / scale)
            parts.append((torch.dot(soft_w, ws - w) + torch.dot(soft_w, wsc_own - wc_own)) / scale)
        parts = torch.stack(parts)
        if not local_loss:
            dist.all_reduce(parts, group=group)
        parts = parts * (factor / (2.0 * (b if local_loss else batch)))
        ds_parts = parts[2:] if need_s else parts.new_zeros(2)
        if teacher is None:
            tr = tc = t_texts = None
        ctx.save_for_backward(
            image, text, texts, scale, r, c, h_all, a_all, colsum_i, hsum_i, ds_parts, t_image, t_texts,
            t_scale, tr, tc,
        )  # fmt: skip
        ctx.eps, ctx.factor, ctx.backend, ctx.group = eps, factor, backend, group
        ctx.local_loss, ctx.with_grad = local_loss, with_grad
        return parts[0], parts[1]

    @staticmethod
    def backward(ctx, g_hard, g_soft):
        (image, text, texts, scale, r, c, h_all, a_all, colsum_i, hsum_i, ds_parts, t_image, t_texts,
         t_scale, tr, tc) = ctx.saved_tensors  # fmt: skip
        eps, group, backend = ctx.eps, ctx.group, ctx.backend
        need_i, need_t, need_s = ctx.needs_input_grad[:3]
        n, rank = dist.get_world_size(group), dist.get_rank(group)
        b = image.shape[0]
        batch = n * b
        own = slice(rank * b, (rank + 1) * b)
        teacher = None if t_image is None else (t_image, t_texts, t_scale)
        mine = torch.stack([g_hard.float().reshape(()), g_soft.float().reshape(())])
        grads, _ = _gather(mine[None], group)  # [n, 2]: every rank's upstream grads
        coef = ctx.factor / (2.0 * (b if ctx.local_loss else batch))
        # Upstream grad that weighs each pair's terms: the owner's (local losses), the sum over ranks
        # (full loss, gradients through the gather), or this rank's own (full loss, no gather grad).
        if ctx.local_loss:
            g_pair = grads.repeat_interleave(b, dim=0)
            hsum_weighted = grads[:, 0] @ hsum_i
        else:
            g_pair = (grads.sum(0) if ctx.with_grad else grads[rank]).expand(batch, 2)
            hsum_weighted = g_pair[0, 0] * hsum_i.sum(0)
        e = coef * g_pair[:, 0] * h_all
        q = coef * g_pair[:, 1] * a_all
        p = e + q
        e_own = e[own, None]
        i32, t32 = image.float(), text.float()
        if ctx.local_loss and not ctx.with_grad:
            # The gathered features are constants: row terms reach only the images, column terms only
            # the texts, so the two products need separate passes.
            zero_b, zero_n = p.new_zeros(b), p.new_zeros(batch)
            args = (image, texts, scale, r, c)
            a_i, _ = backend.accumulate(*args, p[own], zero_n, q[own], zero_n, teacher, tr, tc)
            _, a_t = backend.accumulate(*args, zero_b, p, zero_b, q, teacher, tr, tc)
            u_t = torch.empty_like(a_i)
            work = _reduce_scatter_tensor(u_t, a_t, group=group, async_op=True)
            colsum_t = texts.sum(0, dtype=torch.float32)
            u_i = a_i.sub_(e_own * ((1.0 - eps) * t32 + (eps / batch) * colsum_t))
            work.wait()
            u_t.sub_(e_own * ((1.0 - eps) * i32 + (eps / batch) * colsum_i))
        else:
            args = (image, texts, scale, r, c)
            if ctx.local_loss or ctx.with_grad or torch.equal(grads, grads[rank].expand_as(grads)):
                a_i, a_t = backend.accumulate(*args, p[own], p, q[own], q, teacher, tr, tc)
            else:
                # Full loss without gather grads and ranks with different (g_hard, g_soft): column j's
                # product takes its owner's pair of grads, so the hard and soft parts go separately.
                e1, q1 = coef * h_all, coef * a_all
                h_i, h_t = backend.accumulate(*args, e1[own], e1, 0 * q1[own], 0 * q1, teacher, tr, tc)
                s_i, s_t = backend.accumulate(*args, q1[own], q1, q1[own], q1, teacher, tr, tc)
                g_col = grads.repeat_interleave(b, dim=0)
                a_i = h_i.mul_(grads[rank, 0]).add_(s_i.mul_(grads[rank, 1]))
                a_t = h_t.mul_(g_col[:, :1]).add_(s_t.mul_(g_col[:, 1:]))
            u_t = torch.empty_like(a_i)
            work = _reduce_scatter_tensor(u_t, a_t, group=group, async_op=True)
            u_i = a_i.sub_(e_own * t32, alpha=2.0 * (1.0 - eps))
            if eps:
                texts32 = texts.float()
                u_i.sub_(e_own * texts32.sum(0) + (e @ texts32)[None], alpha=eps / batch)
            work.wait()
            u_t.sub_(e_own * i32, alpha=2.0 * (1.0 - eps))
            if eps:
                u_t.sub_(e_own * colsum_i + (coef * hsum_weighted)[None], alpha=eps / batch)
        d_image = (u_i * scale).to(image.dtype) if need_i else None
        d_text = (u_t * scale).to(text.dtype) if need_t else None
        d_scale = torch.dot(mine, ds_parts) if need_s else None
        return (d_image, d_text, d_scale) + (None,) * 11


def _teacher_fields(teacher) -> dict[str, int]:
    if teacher is None:
        return {"teacher given": 0, "teacher width D": 0, "teacher dtype": -1}
    t_image = teacher[0]
    return {
        "teacher given": 1,
        "teacher width D": t_image.shape[1],
        "teacher dtype": _DTYPE_CODES[t_image.dtype],
    }


def _check_group(image, text, scale, eps, factor, teacher, group, local_loss, with_grad) -> None:
    world(group)
    fields = _common_fields(image, text, scale, eps, factor, local_loss, with_grad)
    fields.update(_teacher_fields(teacher))
    check_ranks(group, image.device, fields)


def open_clip_gather(image, text, *, local_loss: bool, gather_with_grad: bool, group=None):
    """open_clip's ``gather_features``: ([B, D], [B, D]) with autograd through the gather, or detached
    copies with the local slice put back (``local_loss=False``) so that the local features keep theirs."""
    from torch.distributed.nn.functional import all_gather

    _, rank = world(group)
    if gather_with_grad:
        with warnings.catch_warnings():
            # torch >= 2.11 deprecates the autograd all_gather that open_clip (and this baseline) uses.
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(all_gather(image, group=group)), torch.cat(all_gather(text, group=group))
    all_image, all_text = _gather(image.detach(), group)[0], _gather(text.detach(), group)[0]
    if not local_loss:
        b = image.shape[0]
        head, tail = slice(0, rank * b), slice((rank + 1) * b, None)
        all_image = torch.cat([all_image[head], image, all_image[tail]])
        all_text = torch.cat([all_text[head], text, all_text[tail]])
    return all_image, all_text


def open_clip_logits(image, text, scale, *, local_loss: bool, gather_with_grad: bool, group=None):
    """open_clip's ``gather_features`` + ``get_logits`` (B x B or b x B logits, fp32) and its labels:
    the naive distributed baseline."""
    _, rank = world(group)
    all_image, all_text = open_clip_gather(
        image, text, local_loss=local_loss, gather_with_grad=gather_with_grad, group=group
    )
    if local_loss:
        per_image = scale * image.float() @ all_text.float().T
        per_text = scale * text.float() @ all_image.float().T
        labels = torch.arange(image.shape[0], device=image.device) + image.shape[0] * rank
    else:
        per_image = scale * all_image.float() @ all_text.float().T
        per_text = per_image.T
        labels = torch.arange(per_image.shape[0], device=image.device)
    return per_image, per_text, labels


def contrastive_loss(
    image,
    text,
    scale,
    *,
    eps: float,
    factor: float,
    impl: str,
    group=None,
    local_loss: bool = False,
    gather_with_grad: bool = True,
):
    """The contrastive loss of ``impl`` (resolved) over the ranks of ``group``; see the module docstring."""
    _check_group(image, text, scale, eps, factor, None, group, local_loss, gather_with_grad)
    if impl == "naive":
        import torch.nn.functional as F

        per_image, per_text, labels = open_clip_logits(
            image, text, scale, local_loss=local_loss, gather_with_grad=gather_with_grad, group=group
        )
        loss_i = F.cross_entropy(per_image, labels, label_smoothing=eps)
        loss_t = F.cross_entropy(per_text, labels, label_smoothing=eps)
        return (loss_i + loss_t) * (factor / 2.0)
    if local_loss:
        ones = torch.ones(image.shape[0], dtype=torch.float32, device=image.device)
        hard, _ = GatheredSoftTargetFunction.apply(
            image, text, scale, ones, torch.zeros_like(ones), None, None, None, eps, factor,
            _soft_backend(impl), group, True, gather_with_grad,
        )  # fmt: skip
        return hard
    from vlkernels.functional import _backend

    return GatheredContrastiveFunction.apply(
        image, text, scale, eps, factor, _backend(impl), group, gather_with_grad
    )


def _soft_backend(impl: str):
    from vlkernels.distill import _backend

    return _backend(impl)


def soft_target_loss(
    image,
    text,
    scale,
    hard_w,
    soft_w,
    teacher,
    *,
    eps: float,
    factor: float,
    impl: str,
    group=None,
    local_loss=False,
    gather_with_grad=True,
):
    """(hard, soft) parts of the soft-target loss (ops/soft_target.py) over the ranks of ``group``
    (``impl`` "torch" or "triton"; ``teacher`` None or (I_t, T_t, s_t), detached)."""
    _check_group(image, text, scale, eps, factor, teacher, group, local_loss, gather_with_grad)
    t_args = (None, None, None) if teacher is None else teacher
    return GatheredSoftTargetFunction.apply(
        image, text, scale, hard_w, soft_w, *t_args, eps, factor, _soft_backend(impl), group, local_loss,
        gather_with_grad,
    )  # fmt: skip


def distill_clip_naive(
    image, text, scale, teacher, *, eps: float, local_loss: bool, gather_with_grad: bool, group
):
    """open_clip's ``DistillClipLoss.forward`` over the ranks (B x B or b x B logits): the baseline."""
    import torch.nn.functional as F

    flags = dict(local_loss=local_loss, gather_with_grad=gather_with_grad, group=group)
    per_image, per_text, labels = open_clip_logits(image, text, scale, **flags)
    t_per_image, t_per_text, _ = open_clip_logits(*teacher, **flags)
    contrastive = 0.5 * (
        F.cross_entropy(per_image, labels, label_smoothing=eps)
        + F.cross_entropy(per_text, labels, label_smoothing=eps)
    )

    def dist_loss(teacher_logits, student_logits):
        return -(teacher_logits.softmax(dim=1) * student_logits.log_softmax(dim=1)).sum(dim=1).mean(dim=0)

    distill = 0.5 * (dist_loss(t_per_image, per_image) + dist_loss(t_per_text, per_text))
    return contrastive, distill


def soft_target_naive(
    image, text, scale, alpha, teacher, soft_mask, *, eps, reduction, gather_with_grad, group
):
    """The B x B soft-target reference on open_clip-style gathered features (``local_loss=False``)."""
    from vlkernels.reference import soft_target_loss_naive

    flags = dict(local_loss=False, gather_with_grad=gather_with_grad, group=group)
    all_image, all_text = open_clip_gather(image, text, **flags)
    t_args = (None, None, None)
    if teacher is not None:
        t_args = (*open_clip_gather(teacher[0], teacher[1], **flags), teacher[2])
    mask = None if soft_mask is None else _gather(soft_mask.to(torch.uint8), group)[0].bool()
    return soft_target_loss_naive(all_image, all_text, scale, alpha, *t_args, mask, eps, reduction)


def soft_target_checked(
    image,
    text,
    logit_scale,
    alpha,
    teacher_image,
    teacher_text,
    teacher_scale,
    soft_mask,
    *,
    label_smoothing,
    reduction: str,
    impl: str,
    group,
    local_loss: bool,
    gather_with_grad: bool,
):
    """``vlkernels.soft_target_loss`` over the ranks of ``group`` (the argument checks, then the
    block-row Function, or the naive B x B baseline), for every open_clip flag combination."""
    from vlkernels import _checks
    from vlkernels.distill import _check_alpha, _check_soft_mask, _check_teacher
    from vlkernels.functional import resolve_impl

    _checks.check_features(image, text)
    eps = _checks.check_label_smoothing(label_smoothing)
    factor = _checks.reduction_factor(reduction)
    scale = _checks.scale_tensor(logit_scale, image)
    alpha_t = _check_alpha(alpha, image)
    teacher = _check_teacher(image, teacher_image, teacher_text, teacher_scale)
    mask = _check_soft_mask(soft_mask, image)
    impl = resolve_impl(impl, image.device)
    if impl == "naive":
        _check_group(image, text, scale, eps, factor, teacher, group, local_loss, gather_with_grad)
        if local_loss:
            raise ValueError(
                "impl='naive' computes the soft-target loss over the full gathered batch only; "
                "use local_loss=False, or impl='torch' / 'triton' for local_loss=True"
            )
        return soft_target_naive(
            image, text, scale, alpha_t, teacher, mask, eps=eps, reduction=reduction,
            gather_with_grad=gather_with_grad, group=group,
        )  # fmt: skip
    soft_w = alpha_t.expand(image.shape[0])
    if mask is not None:
        soft_w = soft_w * mask
    hard, soft = soft_target_loss(
        image, text, scale, 1.0 - soft_w, soft_w, teacher, eps=eps, factor=factor, impl=impl, group=group,
        local_loss=local_loss, gather_with_grad=gather_with_grad,
    )  # fmt: skip
    return hard + soft


def distill_clip_checked(
    image, text, logit_scale, teacher_image, teacher_text, teacher_scale, *, label_smoothing, impl: str,
    group, local_loss: bool, gather_with_grad: bool,
):  # fmt: skip
    """``DistillClipLoss`` over the ranks of ``group``: (contrastive, distill), open_clip's per-rank values
    and gradients for its (local_loss, gather_with_grad) combination."""
    from vlkernels import _checks
    from vlkernels.distill import _check_teacher
    from vlkernels.functional import resolve_impl

    _checks.check_features(image, text)
    eps = _checks.check_label_smoothing(label_smoothing)
    scale = _checks.scale_tensor(logit_scale, image)
    teacher = _check_teacher(image, teacher_image, teacher_text, teacher_scale)
    if teacher is None:
        raise ValueError("dist_image_features, dist_text_features and dist_logit_scale are required")
    impl = resolve_impl(impl, image.device)
    flags = dict(local_loss=local_loss, gather_with_grad=gather_with_grad, group=group)
    if impl == "naive":
        _check_group(image, text, scale, eps, 1.0, teacher, group, local_loss, gather_with_grad)
        return distill_clip_naive(image, text, scale, teacher, eps=eps, **flags)
    ones = torch.ones(image.shape[0], dtype=torch.float32, device=image.device)
    return soft_target_loss(image, text, scale, ones, ones, teacher, eps=eps, factor=1.0, impl=impl, **flags)
