"""Hostile uses of the loss APIs: double backward, torch.func, autocast, meta tensors, constructor checks.
Each case gets a clear error or the right answer (the distributed ones live in test_distributed.py)."""

from __future__ import annotations

import pytest
import torch

from tests._ref import features
from vlkernels import (
    ClipLoss,
    DistillClipLoss,
    SoftTargetLoss,
    contrastive_loss,
    sigmoid_loss,
    soft_target_loss,
)

IMPLS_O_B = ["torch", pytest.param("triton", marks=pytest.mark.interpreter)]


def _losses(impl):
    t_img, t_txt = features(9, 5, seed=3)
    return {
        "contrastive": lambda i, t, s: contrastive_loss(i, t, s, impl=impl, label_smoothing=0.1),
        "soft_target": lambda i, t, s: soft_target_loss(i, t, s, 0.3, impl=impl),
        "soft_target teacher": lambda i, t, s: soft_target_loss(
            i,
            t,
            s,
            0.3,
            impl=impl,
            teacher_image_features=t_img,
            teacher_text_features=t_txt,
            teacher_logit_scale=4.0,
        ),  # fmt: skip
        "distill": lambda i, t, s: sum(DistillClipLoss(impl=impl)(i, t, s, t_img, t_txt, 4.0)),
    }


def _leaves(batch=9, dim=6):
    img, txt = features(batch, dim, seed=1)
    return img.requires_grad_(), txt.requires_grad_(), torch.tensor(7.0, requires_grad=True)


@pytest.mark.parametrize("impl", IMPLS_O_B)
@pytest.mark.parametrize("name", ["contrastive", "soft_target", "soft_target teacher", "distill"])
def test_double_backward_is_a_clear_error(impl, name):
    fn = _losses(impl)[name]
    img, txt, scale = _leaves()
    grads = torch.autograd.grad(fn(img, txt, scale), [img, txt, scale], create_graph=True)
    img2, txt2, scale2 = _leaves()
    want = torch.autograd.grad(_losses("naive")[name](img2, txt2, scale2), [img2, txt2, scale2])
    for g, w in zip(grads, want, strict=True):
        torch.testing.assert_close(g.detach(), w, atol=2e-5, rtol=2e-5)  # first order stays exact
    for g in grads:
        with pytest.raises(RuntimeError, match="double backward"):
            (g * g).sum().backward(retain_graph=True)


@pytest.mark.parametrize("impl", IMPLS_O_B)
@pytest.mark.parametrize("name", ["contrastive", "soft_target", "distill"])
def test_gradient_penalty_through_a_parameter_is_a_clear_error(impl, name):
    """A gradient penalty differentiated with ``torch.autograd.grad`` with respect to the parameter that
    makes the features: the gradients' error node lies on the path to it. (Before, it hung off fresh
    leaves: the call found no path and said the parameter was unused, and ``materialize_grads=True``
    returned zeros, a silently wrong second derivative.) The naive loss gives a non-zero one."""
    img, txt = features(9, 6, seed=1)
    noise = torch.randn(6, 6, generator=torch.Generator().manual_seed(2))
    weight = (torch.eye(6) + 0.1 * noise).requires_grad_()

    def penalty(impl):
        (g,) = torch.autograd.grad(_losses(impl)[name](img @ weight, txt, 7.0), [weight], create_graph=True)
        return g.pow(2).sum()

    (want,) = torch.autograd.grad(penalty("naive"), [weight])
    assert want.abs().sum() > 0
    pen = penalty(impl)
    for kw in ({}, dict(allow_unused=True), dict(materialize_grads=True)):
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(pen, [weight], retain_graph=True, **kw)


@pytest.mark.parametrize("name", ["contrastive", "soft_target", "distill"])
def test_naive_supports_double_backward(name):
    img, txt, scale = _leaves()
    (g,) = torch.autograd.grad(_losses("naive")[name](img, txt, scale), [img], create_graph=True)
    (gg,) = torch.autograd.grad((g * g).sum(), [img])
    assert torch.isfinite(gg).all() and gg.abs().sum() > 0


@pytest.mark.parametrize("impl", IMPLS_O_B)
@pytest.mark.parametrize("transform", ["grad", "vmap"])
def test_torch_func_is_a_clear_error(impl, transform):
    img, txt = features(9, 6, seed=1)
    if transform == "grad":
        run = torch.func.grad(lambda i: contrastive_loss(i, txt, 3.0, impl=impl))
        arg = img
    else:
        run = torch.func.vmap(lambda i: contrastive_loss(i, txt, 3.0, impl=impl))
        arg = img[None].expand(2, -1, -1)
    with pytest.raises(RuntimeError, match="torch.func transforms"):
        run(arg)
    with pytest.raises(RuntimeError, match="torch.func transforms"):
        torch.func.grad(lambda i: soft_target_loss(i, txt, 3.0, 0.5, impl=impl))(img)


def test_torch_func_grad_works_with_naive():
    img, txt = features(9, 6, seed=1)
    got = torch.func.grad(lambda i: contrastive_loss(i, txt, 3.0, impl="naive"))(img)
    leaf = img.clone().requires_grad_()
    contrastive_loss(leaf, txt, 3.0, impl="torch").backward()
    torch.testing.assert_close(got, leaf.grad, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("impl", ["naive", *IMPLS_O_B])
@pytest.mark.parametrize("name", ["contrastive", "soft_target teacher", "distill"])
def test_autocast_does_not_downcast_the_loss(impl, name):
    """Under CPU bf16 autocast every impl computes exactly what it computes without it; the O(B) impls
    also when the backward runs inside the autocast region (naive's backward is torch's own autograd,
    which autocast does reach there: torch advises against backward under autocast)."""
    fn = _losses(impl)[name]
    img, txt, scale = _leaves()
    want = fn(img, txt, scale)
    want_g = torch.autograd.grad(want, [img, txt, scale])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(img, txt, scale)
        if impl != "naive":
            got_g = torch.autograd.grad(got, [img, txt, scale], retain_graph=True)
    if impl == "naive":
        got_g = torch.autograd.grad(got, [img, txt, scale])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    for g, w in zip(got_g, want_g, strict=True):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)


def test_meta_scalars_are_named():
    img, txt = features(5, 4)
    meta = torch.tensor(2.0, device="meta")
    with pytest.raises(ValueError, match="logit_scale is on the meta device"):
        contrastive_loss(img, txt, meta)
    with pytest.raises(ValueError, match="logit_scale is on the meta device"):
        ClipLoss()(img, txt, meta)
    with pytest.raises(ValueError, match="alpha is on the meta device"):
        soft_target_loss(img, txt, 2.0, meta)
    with pytest.raises(ValueError, match="teacher_logit_scale is on the meta device"):
        soft_target_loss(
            img,
            txt,
            2.0,
            0.5,
            teacher_image_features=img,
            teacher_text_features=txt,
            teacher_logit_scale=meta,
        )
    with pytest.raises(ValueError, match="dist_logit_scale is on the meta device"):
        DistillClipLoss()(img, txt, 2.0, img, txt, meta)


def test_sparse_features_are_named():
    """Sparse features get an error naming the argument (torch's own came from deep inside a kernel)."""
    img, txt = features(5, 4)
    for layout in ("to_sparse", "to_sparse_csr"):
        sparse = getattr(img, layout)()
        with pytest.raises(TypeError, match="image_features must be a dense"):
            contrastive_loss(sparse, txt, 2.0)
        with pytest.raises(TypeError, match="text_features must be a dense"):
            sigmoid_loss(img, getattr(txt, layout)(), 2.0, -1.0)
        with pytest.raises(TypeError, match="teacher_image_features must be a dense"):
            soft_target_loss(
                img,
                txt,
                2.0,
                0.5,
                teacher_image_features=sparse,
                teacher_text_features=txt,
                teacher_logit_scale=1.0,
            )


@pytest.mark.parametrize("cls", [ClipLoss, DistillClipLoss])
def test_modules_validate_in_the_constructor(cls):
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        cls(label_smoothing=5)
    with pytest.raises(TypeError, match="label_smoothing must be a float"):
        cls(label_smoothing="0.1")
    with pytest.raises(ValueError, match="impl must be one of"):
        cls(impl="bogus")
    with pytest.raises(ValueError, match="rank < world_size"):
        cls(rank=-1, world_size=2)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        SoftTargetLoss(0.5, 10, label_smoothing=-0.1)


def test_flags_and_ranks_must_have_their_types():
    img, txt = features(5, 4)
    with pytest.raises(TypeError, match="gather must be a bool"):
        contrastive_loss(img, txt, 2.0, gather="yes")
    with pytest.raises(TypeError, match="gather must be a bool"):
        soft_target_loss(img, txt, 2.0, 0.5, gather=1)
    with pytest.raises(TypeError, match="rank must be an int"):
        ClipLoss(rank=0.5, world_size=2)
    with pytest.raises(TypeError, match="world_size must be an int"):
        DistillClipLoss(world_size=2.0)
    with pytest.raises(TypeError, match="local_loss must be a bool"):
        ClipLoss(local_loss="False")
    with pytest.raises(TypeError, match="gather_with_grad must be a bool"):
        SoftTargetLoss(0.5, 10, gather_with_grad=None)


@pytest.mark.parametrize(
    "name,value,kind",
    [
        ("VLKERNELS_WORKSPACE_MB", "abc", "a number >= 0"),
        ("VLKERNELS_WORKSPACE_MB", "-5", "a number >= 0"),
        ("VLKERNELS_WORKSPACE_MB", "nan", "a number >= 0"),
        ("VLKERNELS_WORKSPACE_MB", "inf", "a number >= 0"),
        ("VLKERNELS_TORCH_CHUNK_ROWS", "0", "a whole number >= 1"),
        ("VLKERNELS_TORCH_CHUNK_ROWS", "1.5", "a whole number >= 1"),
        ("VLKERNELS_TORCH_CHUNK_ROWS", "-3", "a whole number >= 1"),
    ],
)
def test_bad_environment_knobs_are_named(monkeypatch, name, value, kind):
    """A mistyped knob is an error that names it, not a silent minimum or a bare float() message."""
    monkeypatch.setenv(name, value)
    img, txt, scale = _leaves()
    with pytest.raises(ValueError, match=f"{name} must be {kind}, got '{value}'"):
        contrastive_loss(img, txt, scale, impl="torch").backward()


@pytest.mark.parametrize(
    "name,value", [("VLKERNELS_WORKSPACE_MB", " 0.5 "), ("VLKERNELS_TORCH_CHUNK_ROWS", "4")]
)
def test_good_environment_knobs_give_the_same_loss(monkeypatch, name, value):
    img, txt, scale = _leaves()
    want = contrastive_loss(img, txt, scale, impl="naive")
    monkeypatch.setenv(name, value)
    torch.testing.assert_close(contrastive_loss(img, txt, scale, impl="torch"), want)
