"""Every Triton launch runs on its tensors' CUDA device. Triton launches on the *current* device and its
current stream, whatever device the pointers it is given are on: a loss on features on cuda:1 while
cuda:0 is current was refused ("Pointer argument cannot be accessed from Triton") or would run outside
cuda:1's stream order. The Triton backends' methods set the device (``triton_utils.on_device``).

On this machine there is one device kind, the CPU, so the interpreter tests below pretend: every CPU
tensor reads as one on cuda:1 to ``on_device`` (``triton_utils.tensor_device``), the current device is a
number that ``torch.cuda.device`` sets and restores, and each kernel launch records the number current
when it starts. Every launch of the contrastive, sigmoid and soft-target losses (forward and backward,
single process and across two gloo ranks) must find cuda:1 current, and cuda:0 current again after.
On two or more GPUs the "cuda" test runs the losses on cuda:1 for real."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch

from tests._ref import features
from tests._spawn import spawn
from vlkernels.functional import (
    contrastive_loss,
    contrastive_loss_distributed,
    distill_clip_loss,
    sigmoid_loss,
    sigmoid_loss_distributed,
    soft_target_loss,
    soft_target_loss_distributed,
)
from vlkernels.ops import triton_utils as tu


@contextlib.contextmanager
def pretend_second_device():
    """CPU tensors read as on cuda:1 while cuda:0 is current; yields the list of the device numbers
    current at each kernel launch (and at each entry of ``torch.cuda.device``, as ("enter", index))."""
    from triton.runtime.interpreter import InterpretedFunction

    state = {"current": 0}
    seen: list = []
    real_device_of = tu.tensor_device
    real_run = InterpretedFunction.run

    def device_of(args):
        dev = real_device_of(args)
        return torch.device("cuda", 1) if dev is not None and dev.type == "cpu" else dev

    @contextlib.contextmanager
    def set_device(index):
        seen.append(("enter", index))
        before, state["current"] = state["current"], index
        try:
            yield
        finally:
            state["current"] = before

    def run(self, *args, **kwargs):
        seen.append(state["current"])
        return real_run(self, *args, **kwargs)

    with (
        mock.patch.object(tu, "tensor_device", device_of),
        mock.patch.object(torch.cuda, "current_device", lambda: state["current"]),
        mock.patch.object(torch.cuda, "device", set_device),
        mock.patch.object(InterpretedFunction, "run", run),
    ):
        yield seen
    assert state["current"] == 0, "the current device was not restored"


def teacher_features(batch: int, dim: int, seed: int, device="cpu"):
    """The teacher's features of ``loss_cases`` (D + 3 wide)."""
    return features(batch, dim + 3, device=device, seed=seed + 7)


def loss_cases(batch: int, dim: int, seed: int, device="cpu", impl="triton"):
    """name -> loss(image, text, scale), a scalar whose backward launches the backward kernels, for each
    single-process loss (tests/test_host_sync.py runs them too); the teacher and the soft mask on
    ``device``."""
    t_image, t_text = teacher_features(batch, dim, seed, device)
    mask = (torch.rand(batch, generator=torch.Generator().manual_seed(seed)) < 0.5).to(device)

    def soft(i, t, s):
        return soft_target_loss(
            i, t, s, 0.4, teacher_image_features=t_image, teacher_text_features=t_text,
            teacher_logit_scale=5.0, soft_mask=mask, label_smoothing=0.1, impl=impl,
        )  # fmt: skip

    return {
        "contrastive": lambda i, t, s: contrastive_loss(i, t, s, label_smoothing=0.1, impl=impl),
        "sigmoid": lambda i, t, s: sigmoid_loss(i, t, s, -3.0, impl=impl),
        "soft_target": soft,
        "soft_target_self": lambda i, t, s: soft_target_loss(i, t, s, 0.3, impl=impl),
        "distill": lambda i, t, s: sum(distill_clip_loss(i, t, s, t_image, t_text, 5.0, impl=impl)),
    }


def distributed_cases(rank: int, impl: str, batch: int = 5, dim: int = 12):
    """(this rank's image and text features, name -> loss(image, text, scale)) for each distributed loss
    and mode (tests/test_host_sync.py and tests/test_races.py run them too)."""
    image, text = features(batch, dim, seed=11 + rank)
    t_image, t_text = features(batch, dim - 3, seed=31 + rank)
    teacher = dict(teacher_image_features=t_image, teacher_text_features=t_text, teacher_logit_scale=4.0)
    return (
        image,
        text,
        {
            "contrastive": lambda i, t, s: contrastive_loss_distributed(
                i, t, s, label_smoothing=0.1, impl=impl
            ),
            "contrastive local": lambda i, t, s: contrastive_loss_distributed(
                i, t, s, impl=impl, local_loss=True, gather_with_grad=False
            ),
            "sigmoid": lambda i, t, s: sigmoid_loss_distributed(i, t, s, -2.0, impl=impl),
            "sigmoid per rank": lambda i, t, s: sigmoid_loss_distributed(
                i, t, s, -2.0, impl=impl, per_rank=True
            ),
            "soft target": lambda i, t, s: soft_target_loss_distributed(i, t, s, 0.4, impl=impl, **teacher),
            "soft target self": lambda i, t, s: soft_target_loss_distributed(i, t, s, 0.3, impl=impl),
        },
    )


def fresh_leaves(image, text, scale=7.0):
    """Leaf copies of the features and a scale tensor on their device, all requiring grad."""
    scale = torch.tensor(scale, device=image.device, requires_grad=True)
    return image.clone().requires_grad_(True), text.clone().requires_grad_(True), scale


def _launches_on_device(seen: list) -> None:
    launches = [x for x in seen if not isinstance(x, tuple)]
    assert launches, "no kernel was launched"
    off = [x for x in launches if x != 1]
    assert not off, f"{len(off)} of {len(launches)} launches ran with cuda:{off[0]} current, not cuda:1"


@pytest.mark.interpreter
@pytest.mark.parametrize("loss", ["contrastive", "sigmoid", "soft_target", "soft_target_self", "distill"])
def test_every_launch_runs_on_the_tensors_device(loss):
    image, text, scale = fresh_leaves(*features(13, 24, seed=3))
    fn = loss_cases(13, 24, seed=3)[loss]
    with pretend_second_device() as seen:
        out = fn(image, text, scale)
        out.backward(torch.tensor(1.3))
    _launches_on_device(seen)
    assert image.grad is not None and text.grad is not None and scale.grad is not None


@pytest.mark.interpreter
def test_on_device_enters_only_off_the_current_device():
    """On the current device (and off CUDA) ``on_device`` calls the method as it is; elsewhere it makes
    the tensors' device current for the call and restores the previous one."""
    calls = []
    method = tu.on_device(lambda *args, **kw: calls.append(torch.cuda.current_device()) or "result")
    x = torch.ones(2)
    with pretend_second_device() as seen:
        assert method(object(), x, k=1) == "result"
        assert method(object(), 3.0) == "result"  # no tensor: nothing to set
    assert calls == [1, 0]
    assert seen == [("enter", 1)]
    with mock.patch.object(tu, "tensor_device", lambda args: torch.device("cuda", 0)):
        with mock.patch.object(torch.cuda, "current_device", lambda: 0):
            with mock.patch.object(torch.cuda, "device", lambda i: pytest.fail("entered a device")):
                assert tu.on_device(lambda x: x)(x) is x
    assert tu.on_device(lambda x: x)(x) is x  # a CPU tensor: torch.cuda is never asked


# The distributed losses: the gathered and ring Functions call the same backend methods on each rank.


def _check_distributed_launches(rank, world):
    image, text, runs = distributed_cases(rank, "triton")
    for name, run in runs.items():
        with pretend_second_device() as seen:
            run(*fresh_leaves(image, text)).backward(torch.tensor(0.7))
        try:
            _launches_on_device(seen)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


@pytest.mark.interpreter
def test_every_distributed_launch_runs_on_the_tensors_device():
    spawn(__name__, 2, ("_check_distributed_launches",))


@pytest.mark.gpu
def test_cuda_losses_on_a_device_that_is_not_current():
    """Features on cuda:1 with cuda:0 current: each Triton loss gives the naive loss's value and gradients,
    on cuda:1, and leaves cuda:0 current. Needs two GPUs."""
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    torch.cuda.set_device(0)
    for name in ["contrastive", "sigmoid", "soft_target", "soft_target_self", "distill"]:
        results = {}
        for impl in ["triton", "naive"]:
            image, text, scale = fresh_leaves(*features(257, 96, device="cuda:1", seed=5))
            loss = loss_cases(257, 96, 5, "cuda:1", impl)[name](image, text, scale)
            loss.backward(torch.tensor(1.3, device="cuda:1"))
            results[impl] = (loss, image.grad, text.grad, scale.grad)
        assert torch.cuda.current_device() == 0, name
        names = ["loss", "d_image", "d_text", "d_scale"]
        for got, want, what in zip(results["triton"], results["naive"], names, strict=True):
            assert got.device == torch.device("cuda", 1), f"{name} {what} on {got.device}"
            tol = 1e-4 * want.abs().max().item()
            torch.testing.assert_close(got, want, rtol=1e-4, atol=tol, msg=f"{name} {what}")
