"""Distributed sigmoid (SigLIP) loss on CPU: several processes (torch.multiprocessing, gloo on loopback).

References, computed in the workers: open_clip's SigLipLoss with its four ``dist_impl`` exchanges (a
re-implementation of open_clip's loss.py: neighbour exchanges with autograd, the bidirectional exchange
with its remainder hop, the masked all-reduce and the all-gather, each block scored by ``_loss`` with
``negative_only``), and the single-process full-batch loss (the contract of ``gather=True``). A hung
collective fails the test through the join deadline (and gloo's own timeout).
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (open_clip's reduce / gather exchanges)
import torch.nn.functional as F

from tests._ref import MaxNumel, assert_within_float64_error
from tests._spawn import spawn
from tests.test_sigmoid import NAMES, error_scales
from vlkernels import SigLipLoss, sigmoid_loss
from vlkernels.reference import sigmoid_loss_naive

pytestmark = pytest.mark.distributed

TOL = dict(atol=2e-5, rtol=2e-5)
DIST_IMPLS = (None, "bidir", "shift", "reduce", "gather")


# --- process plumbing (as in test_distributed.py) ------------------------------------------------


def _spawn(world: int, *calls):
    spawn(__name__, world, *calls)


# --- open_clip's SigLipLoss, re-implemented ------------------------------------------------------


def _p2p(pairs):
    """Post (send tensor, to rank) and (recv buffer, from rank) pairs at once; wait for all."""
    ops = []
    for send, to_rank, recv, from_rank in pairs:
        ops.append(dist.P2POp(dist.isend, send, to_rank))
        ops.append(dist.P2POp(dist.irecv, recv, from_rank))
    for req in dist.batch_isend_irecv(ops):
        req.wait()


class _Exchange(torch.autograd.Function):
    """open_clip's NeighbourExchange: send to ``to_rank``, receive from ``from_rank``; the gradient goes
    back the other way."""

    @staticmethod
    def forward(ctx, from_rank, to_rank, tensor):
        ctx.ranks = (from_rank, to_rank)
        recv = torch.zeros_like(tensor)
        _p2p([(tensor, to_rank, recv, from_rank)])
        return recv

    @staticmethod
    def backward(ctx, grad):
        from_rank, to_rank = ctx.ranks
        return None, None, _Exchange.apply(to_rank, from_rank, grad)


class _ExchangeBidir(torch.autograd.Function):
    """open_clip's NeighbourExchangeBidir: returns (tensor from the right, tensor from the left)."""

    @staticmethod
    def forward(ctx, left, right, to_left, to_right):
        ctx.ranks = (left, right)
        from_left, from_right = torch.zeros_like(to_right), torch.zeros_like(to_left)
        ops = [
            dist.P2POp(dist.isend, to_right, right),
            dist.P2POp(dist.isend, to_left, left),
            dist.P2POp(dist.irecv, from_right, right),
            dist.P2POp(dist.irecv, from_left, left),
        ]
        for req in dist.batch_isend_irecv(ops):
            req.wait()
        return from_right, from_left

    @staticmethod
    def backward(ctx, grad_from_right, grad_from_left):
        left, right = ctx.ranks
        return (None, None, *_ExchangeBidir.apply(right, left, grad_from_right, grad_from_left))


def _block_loss(image, text, scale, bias, negative_only=False):
    """open_clip's SigLipLoss._loss (logits and labels in the features' dtype)."""
    logits = scale * image @ text.T + bias
    labels = -torch.ones(logits.shape, dtype=image.dtype)
    if not negative_only:
        labels = labels + 2 * torch.eye(logits.shape[0], dtype=image.dtype)
    return -F.logsigmoid(labels * logits).sum() / image.shape[0]


def open_clip_siglip(image, text, scale, bias, rank, world, dist_impl):
    """open_clip's SigLipLoss.forward with world_size > 1."""
    loss = _block_loss(image, text, scale, bias)
    right, left = (rank + 1) % world, (rank - 1 + world) % world
    if dist_impl in (None, "bidir"):
        to_left = to_right = text
        num_bidir, remainder = divmod(world - 1, 2)
        for _ in range(num_bidir):
            received = _ExchangeBidir.apply(left, right, to_left, to_right)
            for block in received:
                loss = loss + _block_loss(image, block, scale, bias, negative_only=True)
            to_left, to_right = received
        if remainder:
            block = _Exchange.apply(left, right, to_right)
            loss = loss + _block_loss(image, block, scale, bias, negative_only=True)
    elif dist_impl == "shift":
        to_right = text
        for _ in range(world - 1):
            from_left = _Exchange.apply(left, right, to_right)
            loss = loss + _block_loss(image, from_left, scale, bias, negative_only=True)
            to_right = from_left
    else:
        with warnings.catch_warnings():
            # torch >= 2.11 deprecates the autograd collectives open_clip uses.
            warnings.simplefilter("ignore", FutureWarning)
            if dist_impl == "reduce":
                blocks = [
                    torch.distributed.nn.all_reduce(text * (rank == i), dist.ReduceOp.SUM)
                    for i in range(world)
                ]
            else:
                blocks = torch.distributed.nn.all_gather(text)
        for i in range(world):
            loss = loss + float(i != rank) * _block_loss(image, blocks[i], scale, bias, negative_only=True)
    return loss


# --- inputs --------------------------------------------------------------------------------------


def _inputs(batch: int, dim: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(batch, dim, generator=g), dim=1)
    txt = F.normalize(img + 0.8 * torch.randn(batch, dim, generator=g), dim=1)
    return img.to(dtype), txt.to(dtype)


def _leaves(img, txt, scale=9.0, bias=-4.0):
    return [x.detach().clone().requires_grad_() for x in (img, txt, torch.tensor(scale), torch.tensor(bias))]


def _run(fn, leaves, grad_out):
    loss = fn(*leaves)
    loss.backward(torch.as_tensor(grad_out, dtype=loss.dtype))
    return [loss.detach()] + [x.grad for x in leaves]


def _close(got, want, what, tol=TOL):
    names = ("loss", "d_image", "d_text", "d_scale", "d_bias")
    for name, a, w in zip(names, got, want, strict=True):
        assert a is not None, f"{what} {name}: no gradient"
        torch.testing.assert_close(a.float(), w.float(), msg=lambda m, n=name: f"{what} {n}: {m}", **tol)


# --- checks run inside the workers ---------------------------------------------------------------


def _check_open_clip_parity(rank, world, impl, sizes):
    """SigLipLoss(rank, world_size, dist_impl) == open_clip's per-rank loss and all four gradients, with a
    different upstream gradient on every rank (every rank's loss reaches every rank's texts)."""
    grad_out = 1.0 + 0.5 * rank
    for b in sizes:
        img, txt = _inputs(world * b, 7, seed=b)
        own = slice(rank * b, (rank + 1) * b)
        for dist_impl in DIST_IMPLS:
            ref = _leaves(img[own], txt[own])
            want = _run(lambda *a, d=dist_impl: open_clip_siglip(*a, rank, world, d), ref, grad_out)
            mod = SigLipLoss(rank=rank, world_size=world, dist_impl=dist_impl, impl=impl)
            got = _run(mod, _leaves(img[own], txt[own]), grad_out)
            _close(got, want, f"SigLipLoss {impl} b={b} dist_impl={dist_impl} rank={rank}")
            out = mod(*_leaves(img[own], txt[own]), output_dict=True)
            torch.testing.assert_close(out["contrastive_loss"], want[0], **TOL)


def _check_gather_contract(rank, world, impl, sizes):
    """gather=True: every rank returns the full-batch loss; features get (sum of the ranks' upstream grads)
    x dL/df, the scalars g_r dL/ds, dL/db (so that DDP's average is the single-process gradient)."""
    grad_out = 1.0 + 0.5 * rank
    total_g = sum(1.0 + 0.5 * r for r in range(world))
    for b in sizes:
        for dim, scale, bias in ((9, 9.0, -4.0), (16, 100.0, -10.0)):
            img, txt = _inputs(world * b, dim, seed=100 * b + dim)
            own = slice(rank * b, (rank + 1) * b)
            full = _run(sigmoid_loss_naive, _leaves(img, txt, scale, bias), 1.0)
            got = _run(
                lambda *a: sigmoid_loss(*a, impl=impl, gather=True),
                _leaves(img[own], txt[own], scale, bias),
                grad_out,
            )
            want = [
                full[0],
                total_g * full[1][own],
                total_g * full[2][own],
                grad_out * full[3],
                grad_out * full[4],
            ]
            _close(
                got,
                want,
                f"gather {impl} b={b} D={dim} s={scale} rank={rank}",
                tol=dict(atol=5e-5, rtol=5e-5),
            )


def _check_low_precision(rank, world):
    """bf16 / fp16 features (blocks travel in that dtype, gradients returned in it) on the single-process
    float64 rule (tests/test_sigmoid.py's): the rank's loss and its four gradients err from open_clip's
    per-rank loss on the float64 inputs by at most twice what that loss computed in fp32 from the same
    rounded inputs errs (gradients returned in their dtype), plus 8 fp32 ulps of their error scale."""
    b, scale, bias, grad_out = 6, 9.0, -4.0, 1.3
    own = slice(rank * b, (rank + 1) * b)
    open_clip = lambda *a: open_clip_siglip(*a, rank, world, "shift")  # noqa: E731
    in_fp32 = lambda i, t, s, c: open_clip(i.float(), t.float(), s, c)  # noqa: E731
    terms = error_scales(world * b, scale, bias, grad_out)
    for dtype in (torch.bfloat16, torch.float16):
        img, txt = _inputs(world * b, 12, seed=b, dtype=dtype)
        leaves64 = [x.detach().double().requires_grad_() for x in _leaves(img[own], txt[own], scale, bias)]
        exact = _run(open_clip, leaves64, grad_out)
        base = _run(in_fp32, _leaves(img[own], txt[own], scale, bias), grad_out)
        module = SigLipLoss(rank=rank, world_size=world, impl="torch")
        got = _run(module, _leaves(img[own], txt[own], scale, bias), grad_out)
        assert got[1].dtype == dtype and got[2].dtype == dtype
        assert_within_float64_error(got, base, exact, terms, names=NAMES)


def _check_memory_independent_of_world(rank, world):
    """No rank ever makes a tensor of the gathered texts ([B, D]) or a b x B block: the largest tensor any
    op makes is one text block or gradient partial ([b, D]), whatever the world size."""
    os.environ["VLKERNELS_TORCH_CHUNK_ROWS"] = "4"
    b, dim = 8, 64
    img, txt = _inputs(b, dim, seed=rank)
    runs = {
        "SigLipLoss": SigLipLoss(rank=rank, world_size=world, impl="torch"),
        "gather=True": lambda *a: sigmoid_loss(*a, impl="torch", gather=True),
        "naive control": lambda *a: sigmoid_loss(*a, impl="naive", gather=True),
    }
    for name, fn in runs.items():
        with MaxNumel() as mode:
            fn(*_leaves(img, txt)).backward()
        if name == "naive control":
            assert mode.max_numel >= world * b * dim, (name, mode.max_numel)
        else:
            assert mode.max_numel <= b * dim, (name, world, mode.max_numel)


def _check_ddp_step(rank, world, b):
    """End to end: DDP-wrapped towers with sigmoid_loss(gather=True); the averaged parameter gradients
    equal the single-process full-batch gradients (the logit scale and bias included)."""
    batch, dim_in, dim = world * b, 8, 6
    g = torch.Generator().manual_seed(3)
    x_img, x_txt = torch.randn(batch, dim_in, generator=g), torch.randn(batch, dim_in, generator=g)

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.img = torch.nn.Linear(dim_in, dim)
            self.txt = torch.nn.Linear(dim_in, dim)
            self.logit_scale = torch.nn.Parameter(torch.tensor(2.3))
            self.logit_bias = torch.nn.Parameter(torch.tensor(-5.0))

        def forward(self, xi, xt):
            feats = F.normalize(self.img(xi), dim=1), F.normalize(self.txt(xt), dim=1)
            return *feats, self.logit_scale.exp(), self.logit_bias

    single = Tower()
    sigmoid_loss_naive(*single(x_img, x_txt)).backward()
    model = torch.nn.parallel.DistributedDataParallel(Tower())
    own = slice(rank * b, (rank + 1) * b)
    sigmoid_loss(*model(x_img[own], x_txt[own]), impl="torch", gather=True).backward()
    for (name, p), q in zip(model.module.named_parameters(), single.parameters(), strict=True):
        torch.testing.assert_close(
            p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"DDP {n}: {m}"
        )


def _expect_error(fn, match):
    with pytest.raises(ValueError, match=match):
        fn()


def _check_errors(rank, world):
    """Ranks that disagree get the same clear error on every rank (no hang), then the group still works."""
    img, txt = _inputs(8, 4, seed=rank)
    b_bad = 3 if rank == 0 else 4
    dim = 4 if rank == 0 else 3
    dtype = torch.float32 if rank == 0 else torch.float16
    impl = ("torch", "naive")[rank]
    mod = dict(rank=rank, world_size=world, impl="torch")
    bias_maybe_grad = torch.tensor(-1.0, requires_grad=rank == 1)
    cases = [
        (lambda: sigmoid_loss(img[:b_bad], txt[:b_bad], 2.0, -1.0, impl="torch", gather=True),
         r"local batch size \(rank 0: 3, rank 1: 4"),
        (lambda: SigLipLoss(**mod)(img[:, :dim], txt[:, :dim], 2.0, -1.0),
         r"feature width D \(rank 0: 4, rank 1: 3"),
        (lambda: SigLipLoss(**mod)(img.to(dtype), txt.to(dtype), 2.0, -1.0),
         r"feature dtype \(rank 0: float32, rank 1: float16"),
        (lambda: SigLipLoss(**mod)(img, txt, 2.0 + rank, -1.0), r"logit_scale \(rank 0: 2.0, rank 1: 3.0"),
        (lambda: sigmoid_loss(img, txt, 2.0, torch.tensor(-1.0 - rank), impl="torch", gather=True),
         r"logit_bias \(rank 0: -1.0, rank 1: -2.0"),
        (lambda: sigmoid_loss(img, txt, 2.0, bias_maybe_grad, impl="torch", gather=True),
         r"logit_bias requires grad \(rank 0: 0, rank 1: 1"),
        (lambda: SigLipLoss(rank=rank, world_size=world, impl=impl)(img, txt, 2.0, -1.0),
         r"impl \(rank 0: 'torch', rank 1: 'naive'"),
        (lambda: SigLipLoss(rank=1 - rank, world_size=world)(img, txt, 2.0, -1.0),
         "SigLipLoss was built with rank"),
    ]  # fmt: skip
    if rank == 0:
        cases.append(
            (lambda: SigLipLoss(**mod)(img, txt, 2.0, -1.0), r"per-rank loss \(SigLipLoss\) \(rank 0: 1")
        )
    else:
        cases.append((lambda: sigmoid_loss(img, txt, 2.0, -1.0, impl="torch", gather=True), r"per-rank loss"))
    for fn, match in cases:
        _expect_error(fn, match)
    loss = sigmoid_loss(img, txt, 2.0, -1.0, impl="torch", gather=True)
    full = [torch.cat(x) for x in zip(*[_inputs(8, 4, seed=r) for r in range(world)], strict=True)]
    torch.testing.assert_close(loss, sigmoid_loss_naive(*full, 2.0, -1.0), **TOL)


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [2, 3])
def test_siglip_matches_open_clip_every_dist_impl(world):
    _spawn(
        world,
        ("_check_open_clip_parity", "torch", (1, 5)),
        ("_check_open_clip_parity", "naive", (4,)),
        ("_check_low_precision",),
    )


@pytest.mark.parametrize("world", [2, 3])
def test_gather_matches_full_batch(world):
    _spawn(
        world,
        ("_check_gather_contract", "torch", (1, 6)),
        ("_check_gather_contract", "naive", (3,)),
        ("_check_memory_independent_of_world",),
    )


def test_world_size_one():
    _spawn(1, ("_check_gather_contract", "torch", (7,)))


def test_ddp_step_and_rank_mismatch_raises_on_every_rank():
    _spawn(2, ("_check_ddp_step", 5), ("_check_errors",))


@pytest.mark.interpreter
@pytest.mark.slow
def test_ring_triton_interpreter():
    assert os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
    _spawn(3, ("_check_open_clip_parity", "triton", (3,)), ("_check_gather_contract", "triton", (2,)))
