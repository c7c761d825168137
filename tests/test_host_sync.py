r"""The single-process losses read no device value on the host: their forward and backward queue work and
never wait for it (no ``.item()``, ``bool(tensor)``, ``.tolist()``, ``nonzero`` or boolean-mask indexing,
whose sizes depend on values). On a GPU each such read stalls the host until every kernel queued before
it has run (the model's whole forward, at the loss) and cannot be captured in a CUDA graph. The check
runs on CPU: a dispatch mode records the aten calls that read values or size their outputs by them,
which on CUDA synchronise (the Triton kernels' own launches, under the interpreter, do not dispatch
through torch). Copies to the host, which on CPU look like any copy, are not seen here; the library
makes none (``grep -rn "\.cpu()\|numpy()" vlkernels/ops vlkernels/functional.py``).

Known and intended reads: a CPU tensor ``alpha`` (``SoftTargetLoss``'s schedule buffer on a CPU module)
is range-checked on the host (on a GPU it stays on the device; not covered here), and the distributed
losses' rank-agreement check (``_dist.check_ranks``) reads one small all-gather of settings per call
(the distributed test allows exactly that one)."""

from __future__ import annotations

import sys
import traceback
from unittest import mock

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests._ref import features
from tests._spawn import spawn
from tests.test_launch_device import distributed_cases, fresh_leaves, loss_cases, teacher_features
from vlkernels import ClipLoss, DistillClipLoss, SigLipLoss
from vlkernels._checks import to_device
from vlkernels.functional import (
    contrastive_loss,
    sigmoid_loss,
)

# aten calls that read a value on the host or size their output by the values (on CUDA: a host sync)
READS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.equal.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
    torch.ops.aten._unique2.default,
    torch.ops.aten.unique_consecutive.default,
    torch.ops.aten.repeat_interleave.Tensor,
}


class HostReads(TorchDispatchMode):
    """Records each call that reads device values on the host, with the library function that made it:
    the aten calls above (``.item()``, ``bool()``, ``float()`` come through ``_local_scalar_dense``) and
    ``Tensor.tolist`` / ``Tensor.numpy``, which read a CPU tensor's memory without dispatching (on CUDA
    they copy to the host first); and ``torch.tensor`` / ``torch.as_tensor`` called by the library with a
    device (host data copied to the features' device: a blocking copy, which synchronises the stream)."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []
        self._patches = []

    def _record(self, what) -> None:
        ours = [f for f in traceback.extract_stack() if "/vlkernels/" in f.filename.replace("\\", "/")]
        last = ours[-1] if ours else None
        where = f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno} ({last.name})" if last else "outside"
        self.reads.append(f"{what} at {where}")

    def __enter__(self):
        for name in ("tolist", "numpy"):
            real = getattr(torch.Tensor, name)

            def read(t, *args, _real=real, _name=name, **kwargs):
                self._record(f"Tensor.{_name}")
                return _real(t, *args, **kwargs)

            self._patch(torch.Tensor, name, read)
        for name in ("tensor", "as_tensor"):
            real = getattr(torch, name)

            def copy(data, *args, _real=real, _name=name, **kwargs):
                # host data made a tensor on the features' device by the library: on a GPU a blocking copy
                if kwargs.get("device") is not None and "/vlkernels/" in sys._getframe(1).f_code.co_filename:
                    self._record(f"torch.{_name}(..., device=)")
                return _real(data, *args, **kwargs)

            self._patch(torch, name, copy)
        return super().__enter__()

    def _patch(self, owner, name, value) -> None:
        patch = mock.patch.object(owner, name, value)
        patch.start()
        self._patches.append(patch)

    def __exit__(self, *exc):
        for patch in self._patches:
            patch.stop()
        self._patches.clear()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        read = func in READS
        if func is torch.ops.aten.index.Tensor:  # x[mask]: a boolean index is a nonzero
            read = any(i is not None and i.dtype == torch.bool for i in args[1])
        if read:
            self._record(func)
        return func(*args, **kwargs)


def _cases(impl: str):
    """The single-process losses (``loss_cases``), the modules, and Python floats for every scalar."""
    t_image, t_text = teacher_features(37, 24, seed=1)
    return {
        **loss_cases(37, 24, seed=1, impl=impl),
        "ClipLoss": lambda i, t, s: ClipLoss(impl=impl)(i, t, s),
        "SigLipLoss": lambda i, t, s: SigLipLoss(impl=impl)(i, t, s, torch.tensor(-2.0, requires_grad=True)),
        "DistillClipLoss": lambda i, t, s: sum(DistillClipLoss(impl=impl)(i, t, s, t_image, t_text, 5.0)),
        # Python floats for every scalar: made on the device without a host copy
        "contrastive float scale": lambda i, t, s: contrastive_loss(i, t, 7.0, impl=impl),
        "sigmoid float scale": lambda i, t, s: sigmoid_loss(i, t, 7.0, -3.0, impl=impl),
    }


NAMES = list(_cases("torch"))


def _check(impl: str, name: str) -> None:
    image, text, scale = fresh_leaves(*features(37, 24, seed=1))
    loss_fn = _cases(impl)[name]
    mode = HostReads()
    with mode:
        loss = loss_fn(image, text, scale)
        loss.backward(torch.tensor(1.3))
    assert not mode.reads, f"{name} ({impl}) read device values on the host: {mode.reads}"
    assert image.grad is not None and text.grad is not None


@pytest.mark.parametrize("name", NAMES)
def test_torch_losses_read_no_device_value(name):
    _check("torch", name)


@pytest.mark.interpreter
@pytest.mark.parametrize("name", NAMES)
def test_triton_losses_read_no_device_value(name):
    _check("triton", name)


# The distributed losses: one read per call, the rank-agreement check's (``_dist.check_ranks``: every rank
# raises the same error when the ranks disagree, instead of hanging); none in their merges or backward.


def _check_distributed_reads(rank, world, impl):
    image, text, runs = distributed_cases(rank, impl)
    for name, run in runs.items():
        mode = HostReads()
        with mode:
            run(*fresh_leaves(image, text)).backward(torch.tensor(0.7))
        others = [r for r in mode.reads if not r.endswith("(check_ranks)")]
        assert not others and len(mode.reads) == 1, f"{name} ({impl}) on rank {rank}: {mode.reads}"


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_distributed_losses_read_only_the_rank_check(impl):
    spawn(__name__, 2, ("_check_distributed_reads", impl))


def test_scalars_reach_the_device_without_a_blocking_copy():
    """``_checks.to_device``: a CPU scalar (a logit_scale or alpha tensor, the rank check's settings) goes
    to a GPU with a non-blocking copy unless it is pinned (the caller could change it before the copy
    runs); to the CPU nothing is asked (``is_pinned`` could start CUDA)."""
    calls = []

    def to(t, *args, **kwargs):
        calls.append(kwargs["non_blocking"])
        return t

    x = torch.tensor(2.5)
    with mock.patch.object(torch.Tensor, "to", to):
        to_device(x, torch.device("cuda", 0))
        with mock.patch.object(torch.Tensor, "is_pinned", lambda t: True):
            to_device(x, torch.device("cuda", 0))
        with mock.patch.object(torch.Tensor, "is_pinned", lambda t: pytest.fail("asked is_pinned")):
            to_device(x, torch.device("cpu"))
    assert calls == [True, False, False]


def test_the_check_sees_a_read():
    """The mode is not blind: each of these reads is recorded once."""
    x = torch.arange(5.0)
    reads = [
        lambda: x.sum().item(),
        lambda: bool(x[0] > 1),
        lambda: float(x[1]),
        lambda: x[x > 2],
        lambda: x.nonzero(),
        lambda: x.tolist(),
        lambda: x.numpy(),
        lambda: _library_tensor(device=x.device),
    ]
    for read in reads:
        mode = HostReads()
        with mode:
            read()
        assert len(mode.reads) == 1, mode.reads


# a call from inside the library (the check looks at the caller's file)
_PROBE = "lambda device: torch.tensor(1.0, device=device)"
_library_tensor = eval(compile(_PROBE, "/vlkernels/probe.py", "eval"), {"torch": torch})
