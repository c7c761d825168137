"""Process-group helpers of the distributed losses (a leaf: imports nothing from vlkernels).

``world`` / ``check_world`` describe this process in a group, ``check_ranks`` makes every rank raise the
same error when the ranks disagree on a setting (instead of a hang or a silent mis-slice), ``gather`` /
``reduce_scatter`` wrap the tensor collectives, and ``merge_columns`` merges per-rank partial column
log-sum-exps (and softmax-weighted sums) into global ones with two O(B) all-reduces.
"""

from __future__ import annotations

import struct

import torch
import torch.distributed as dist

from vlkernels._checks import to_device

DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
IMPL_CODES = {"torch": 0, "triton": 1, "naive": 2}
_CODE_IMPLS = {v: k for k, v in IMPL_CODES.items()}
# Fields whose int64 value is the bit pattern of a float64 (see float_bits); a 0-d tensor value of any
# field is sent that way too, from its device (no host sync before the one all-gather).
FLOAT_FIELDS = ("label_smoothing", "reduction factor", "logit_scale", "teacher_logit_scale", "alpha")

# torch >= 2.11 renamed the tensor collectives (the old names warn); same semantics.
_all_gather_tensor = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def world(group=None) -> tuple[int, int]:
    """(world size, rank) of ``group``; a clear error when no process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "gather=True needs an initialised torch.distributed process group: call "
            "torch.distributed.init_process_group(...) first (torchrun sets up the environment), "
            "or use gather=False for a single process"
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError(
            f"this process (global rank {dist.get_rank()}) is not a member of the process group passed "
            "as `group`: call the loss only on that group's ranks, or pass a group this process belongs to"
        )
    return dist.get_world_size(group), rank


def check_world(group, rank: int, world_size: int, owner: str) -> None:
    """``owner``'s rank / world_size arguments (open_clip's) must describe this process in ``group``."""
    size, actual = world(group)
    if (size, actual) != (world_size, rank):
        raise ValueError(
            f"{owner} was built with rank={rank}, world_size={world_size} but this process is rank "
            f"{actual} of {size} in its process group"
        )


def gather(x: torch.Tensor, group, async_op: bool = False):
    """Concatenation over ranks of x ([b, ...] -> [n b, ...]) and the async work handle (or None)."""
    x = x.contiguous()
    out = x.new_empty((dist.get_world_size(group) * x.shape[0], *x.shape[1:]))
    return out, _all_gather_tensor(out, x, group=group, async_op=async_op)


def float_bits(value: float) -> int:
    """An exact int64 encoding of a float, for ``check_ranks``."""
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def _describe(name: str, value: int) -> str:
    if name.endswith("dtype"):
        return str(_CODE_DTYPES.get(value, value)).replace("torch.", "")
    if name == "impl":
        return repr(_CODE_IMPLS.get(value, value))
    if name in FLOAT_FIELDS:
        return repr(struct.unpack("<d", struct.pack("<q", value))[0])
    return str(value)


def _host_bits(value) -> int:
    return float_bits(value) if isinstance(value, float) else int(value)


def check_ranks(group, device: torch.device, fields: dict[str, int | float | torch.Tensor]) -> None:
    """One small all-gather: raise the same ValueError on every rank when the ranks disagree.

    Without it, ranks with different local batch sizes, widths, dtypes, scales or implementations would
    deadlock, fail inside a collective with an opaque message or, worse, silently compute a wrong loss.
    Values: ints, floats (compared bit for bit) or 0-d tensors (their float64 bits)."""
    # the host values in one non-blocking copy (one blocking copy each would synchronise the stream each),
    # then the tensors' float64 bits; the names in that order
    host = [k for k, v in fields.items() if not isinstance(v, torch.Tensor)]
    on_device = [k for k in fields if k not in host]
    names = host + on_device
    bits = torch.tensor([_host_bits(fields[k]) for k in host], dtype=torch.int64)
    parts = [to_device(bits, device, torch.int64)]
    parts += [
        to_device(fields[k].detach().reshape(1), device, torch.float64).view(torch.int64) for k in on_device
    ]
    mine = torch.cat(parts)
    rows, _ = gather(mine[None], group)
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


def merge_columns(lse_parts, weighted, extra, group, base2: bool = False, gaps=(), rests=(0,)):
    """Merge per-rank partial column statistics over the ranks' rows.

    ``lse_parts``: per-rank partial log-sum-exps [B] (natural, or base 2 with ``base2``: the backend's
    units, kept); ``weighted``: (k, w) pairs where w [B] is a softmax-weighted sum normalised by the
    partial LSE ``lse_parts[k]``; ``extra``: a fp32 vector summed over ranks in the same all-reduce;
    ``gaps``: (k, g) pairs (or none), g [B] the rank's partial soft gaps (``torch_utils.soft_rows``) of
    the student's LSE ``lse_parts[0]`` under the softmax of ``lse_parts[k]``, merged as the statistics
    merge partial sums (``ColumnSoft``; sums of non-negative terms: a near one-hot column keeps the
    precision of its partial gaps). Returns (global LSEs, global weighted sums, summed extra, and with
    gaps ([rest, one per k of ``rests``], [weighted distances, one per gaps pair]) in float64, else None:
    each gap is log1p(rest) in the LSEs' units plus its distances, ``torch_utils.log1p_units``, with the
    student's rest, rests[0] = 0; a rest is the other ranks' partial sums of ``lse_parts[k]`` relative to
    the largest, ``soft_target.merged_mass``)."""
    exp, log = (torch.exp2, torch.log2) if base2 else (torch.exp, torch.log)
    cols = lse_parts[0].shape[0]
    # in float64 where a part is (the student's two-part LSEs keep their precision); each result in its
    # part's dtype
    wide = max((p.dtype for p in lse_parts), key=lambda t: torch.finfo(t).bits)
    peak = torch.stack([p.to(wide) for p in lse_parts])
    dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    scaled = [exp(part - peak[k]) for k, part in enumerate(lse_parts)]
    parts = scaled + [w * scaled[k] for k, w in weighted]
    if gaps:
        # per rest: the other ranks' terms below the peak and each further rank at the peak; then the
        # weighted gaps
        for k in rests:
            top = lse_parts[k].to(wide) == peak[k]
            parts += [torch.where(top, 0.0, scaled[k]), top.to(wide)]
        c0 = lse_parts[0].to(wide)
        parts += [(g.to(wide) + (peak[0] - c0)) * scaled[k] for k, g in gaps]
    buf = torch.cat([p.reshape(-1).to(wide) for p in parts] + [extra.to(wide)])
    dist.all_reduce(buf, group=group)
    sums = buf[: len(parts) * cols].view(len(parts), cols)
    lses = [(peak[k] + log(sums[k])).to(part.dtype) for k, part in enumerate(lse_parts)]
    sums_w = [(sums[len(lse_parts) + j] / sums[k]).to(w.dtype) for j, (k, w) in enumerate(weighted)]
    merged = None
    if gaps:
        first = len(parts) - len(gaps)
        at = first - 2 * len(rests)
        # each rest: its terms below the peak and each further rank at the peak
        merged_rests = [sums[at + 2 * i] + (sums[at + 2 * i + 1] - 1.0) for i in range(len(rests))]
        merged = (merged_rests, [sums[first + j] / sums[k] for j, (k, _) in enumerate(gaps)])
    return lses, sums_w, buf[len(parts) * cols :].to(extra.dtype), merged


# --- ring (P2P) helpers of the sigmoid loss ---------------------------------------------------------

# Tags of the two kinds of ring messages (feature blocks, gradient partials), so that a block and a
# partial in flight between the same two ranks at the same time are never mixed up (gloo matches by tag;
# NCCL ignores tags and matches in issue order, which every rank shares).
RING_TAG_BLOCK = 17
RING_TAG_GRAD = 18
FLOAT_FIELDS = FLOAT_FIELDS + ("logit_bias",)


def _global_rank(group, group_rank: int) -> int:
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


def ring_shift(send: torch.Tensor, recv: torch.Tensor, group, tag: int = 0):
    """Start sending ``send`` to the next rank of ``group``'s ring and receiving ``recv`` from the
    previous one (``dist.batch_isend_irecv``); returns the works to wait on. Both tensors must stay alive
    until then."""
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    right = _global_rank(group, (rank + 1) % size)
    left = _global_rank(group, (rank - 1) % size)
    ops = [
        dist.P2POp(dist.isend, send, right, group=group, tag=tag),
        dist.P2POp(dist.irecv, recv, left, group=group, tag=tag),
    ]
    return dist.batch_isend_irecv(ops)
