"""open_clip integration: ``patch_open_clip`` (create_loss / open_clip_train build vlkernels' classes, undo,
unknown layouts), the launcher's argv, and parity with open_clip's real loss classes (values and
gradients, fp32 and bf16 against float64, per rank on 2 gloo processes)."""

from __future__ import annotations

import argparse
import sys
import warnings

import pytest
import torch

import tests._torchvision_shim  # noqa: F401  (before open_clip imports torchvision)
import vlkernels
from tests._ref import features
from tests._spawn import spawn
from vlkernels import open_clip_train as launcher
from vlkernels.integrations import open_clip as integration

import open_clip  # noqa: E402  isort: skip
import open_clip.factory  # noqa: E402  isort: skip
import open_clip.loss as oc_loss  # noqa: E402  isort: skip

NAMES = ("ClipLoss", "DistillClipLoss", "SigLipLoss", "CoCaLoss")
MODULES = (open_clip.factory, oc_loss, open_clip)
ORIGINAL = {name: getattr(oc_loss, name) for name in NAMES}


def _snapshot():
    return {(m.__name__, n): vars(m)[n] for m in MODULES for n in NAMES if n in vars(m)}


def _args(**kw):
    """The attributes of open_clip_train's parsed args that create_loss reads."""
    base = dict(
        distill=False,
        model="ViT-B-32",
        siglip=False,
        local_loss=False,
        gather_with_grad=False,
        rank=0,
        world_size=1,
        horovod=False,
        coca_caption_loss_weight=2.0,
        coca_contrastive_loss_weight=1.0,
        loss_dist_impl=None,
    )
    return argparse.Namespace(**{**base, **kw})


CASES = {
    "ClipLoss": _args(),
    "DistillClipLoss": _args(distill=True),
    "SigLipLoss": _args(siglip=True),
    "CoCaLoss": _args(model="coca_ViT-B-32"),
}


# --- the patch -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_create_loss_builds_vlkernels_classes(name):
    before = _snapshot()
    with vlkernels.patch_open_clip(impl="torch") as patch:
        loss = open_clip.create_loss(CASES[name])
        assert isinstance(loss, getattr(vlkernels, name)), type(loss).__mro__
        assert isinstance(loss, getattr(oc_loss, name)) and isinstance(loss, patch.classes[name])
        assert loss.impl == "torch"
        assert type(loss).__name__ == name
        for module in MODULES:
            if (module.__name__, name) in before:
                assert vars(module)[name] is patch.classes[name], module.__name__
    assert _snapshot() == before and all(_snapshot()[k] is v for k, v in before.items())
    assert type(open_clip.create_loss(CASES[name])) is ORIGINAL[name]


def test_undo_restores_every_attribute_and_adds_none():
    before = _snapshot()
    patch = vlkernels.patch_open_clip()
    assert patch.active
    # Every binding of the four names was rebound, no new attribute was added.
    assert sorted(patch.changed) == sorted(before)
    assert all(vars(sys.modules[m])[n] is not before[(m, n)] for m, n in before)
    assert not hasattr(open_clip, "SigLipLoss") or ("open_clip", "SigLipLoss") in before
    # A second (nested) patch and its undo leave the first in place.
    inner = vlkernels.patch_open_clip(impl="naive", clip=False)
    assert open_clip.create_loss(CASES["DistillClipLoss"]).impl == "naive"
    assert open_clip.create_loss(CASES["ClipLoss"]).impl == "auto"
    inner.undo()
    assert open_clip.create_loss(CASES["DistillClipLoss"]).impl == "auto"
    patch.undo()
    patch.undo()  # idempotent
    assert not patch.active and "undone" in repr(patch)
    after = _snapshot()
    assert after.keys() == before.keys() and all(after[k] is v for k, v in before.items())


def test_selected_classes_only():
    with vlkernels.patch_open_clip(clip=False, distill=False, coca=False) as patch:
        assert set(patch.classes) == {"SigLipLoss"}
        assert type(open_clip.create_loss(CASES["ClipLoss"])) is ORIGINAL["ClipLoss"]
        assert isinstance(open_clip.create_loss(CASES["SigLipLoss"]), vlkernels.SigLipLoss)
    with pytest.raises(ValueError, match="impl"):
        vlkernels.patch_open_clip(impl="cuda")
    assert _snapshot()[("open_clip.factory", "ClipLoss")] is ORIGINAL["ClipLoss"]


def test_unknown_layout_or_version_warns_and_patches_what_it_can(monkeypatch):
    monkeypatch.delattr(open_clip.factory, "create_loss")
    monkeypatch.delattr(oc_loss, "CoCaLoss")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        patch = vlkernels.patch_open_clip()
    messages = [str(w.message) for w in record if w.category is UserWarning]
    assert any("create_loss not found" in m for m in messages), messages
    assert any("open_clip.loss has no CoCaLoss" in m for m in messages), messages
    with patch:
        assert issubclass(oc_loss.ClipLoss, vlkernels.ClipLoss)
        assert issubclass(open_clip.factory.CoCaLoss, vlkernels.CoCaLoss)
    assert oc_loss.ClipLoss is ORIGINAL["ClipLoss"]
    monkeypatch.undo()
    monkeypatch.setattr(integration, "_open_clip_version", lambda: "2.24.0")
    with pytest.warns(UserWarning, match="written for open_clip_torch 3.x, found '2.24.0'"):
        vlkernels.patch_open_clip().undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.undo()
        vlkernels.patch_open_clip().undo()  # the installed version: no warning


def test_missing_open_clip_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ModuleNotFoundError
    with pytest.raises(ImportError, match=r"pip install vlkernels\[open_clip\]"):
        vlkernels.patch_open_clip()


def test_open_clip_that_fails_to_import_is_an_import_error_that_says_why(monkeypatch, tmp_path):
    """An installed open_clip whose import dies (here as a torchvision built for CUDA dies beside a CPU
    torch) gives an ImportError naming the cause and the torchvision / torch pair, not the bare error."""
    package = tmp_path / "open_clip"
    package.mkdir()
    (package / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    for name in [m for m in sys.modules if m == "open_clip" or m.startswith("open_clip.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ImportError, match=r"could not import open_clip: RuntimeError: operator torchvision::nms"
    ) as info:
        vlkernels.patch_open_clip()
    assert f"beside torch {torch.__version__}" in str(info.value)


def test_launcher_strips_its_option_and_runs_open_clip_train_patched(monkeypatch):
    import open_clip_train.main as oc_main
    from open_clip_train.params import parse_args

    assert launcher.split_argv(["--vlkernels-impl", "naive", "--siglip"]) == ("naive", ["--siglip"])
    assert launcher.split_argv(["--batch-size", "8", "--vlkernels-impl=torch"]) == (
        "torch",
        ["--batch-size", "8"],
    )
    assert launcher.split_argv(["--lr", "1"]) == ("auto", ["--lr", "1"])
    with pytest.raises(SystemExit, match="needs a value"):
        launcher.split_argv(["--vlkernels-impl"])
    seen = []

    def fake_main(argv):  # what main() does with the args: parse them, build the loss
        args = parse_args(argv)
        args.rank, args.world_size, args.distill = 0, 1, False
        seen.append((argv, oc_main.create_loss(args)))

    monkeypatch.setattr(oc_main, "main", fake_main)
    launcher.main(["--siglip", "--vlkernels-impl", "naive", "--batch-size", "4"])
    ((argv, loss),) = seen
    assert argv == ["--siglip", "--batch-size", "4"]
    assert isinstance(loss, vlkernels.SigLipLoss) and loss.impl == "naive"
    assert oc_loss.SigLipLoss is ORIGINAL["SigLipLoss"]  # undone after the run


# --- compatibility gaps ----------------------------------------------------------------------------


def test_logit_bias_gets_its_zero_gradient_and_get_logits_matches():
    img, txt = features(6, 5)
    for bias_value in (-3.0, float("inf")):
        bias = torch.tensor(bias_value, requires_grad=True)
        scale = torch.tensor(7.0, requires_grad=True)
        loss = vlkernels.ClipLoss(impl="torch")(img, txt, scale, bias)
        loss.backward()
        assert torch.isfinite(loss)
        assert bias.grad is not None and torch.equal(bias.grad, torch.zeros(()))
        assert loss.grad_fn is not None and scale.grad is not None
    want = ORIGINAL["ClipLoss"]().get_logits(img, txt, 7.0, torch.tensor(-3.0))
    got = vlkernels.ClipLoss().get_logits(img, txt, 7.0, torch.tensor(-3.0))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    assert vlkernels.CoCaLoss(1.0, 1.0).get_logits(img, txt, 2.0)[0].shape == (6, 6)


def test_horovod_rejected_with_a_pointer_to_torch_distributed():
    for cls in (vlkernels.ClipLoss, vlkernels.DistillClipLoss):
        with pytest.raises(NotImplementedError, match="torch.distributed"):
            cls(use_horovod=True)
    with pytest.raises(NotImplementedError, match="torchrun"):
        vlkernels.CoCaLoss(1.0, 1.0, use_horovod=True)


def test_distill_warns_once_when_the_teacher_requires_grad():
    img, txt = features(5, 4)
    t_img, t_txt = (x.clone().requires_grad_() for x in features(5, 3, seed=1))
    mod = vlkernels.DistillClipLoss(impl="torch")
    with pytest.warns(UserWarning, match="detaches them"):
        mod(img, txt, 3.0, t_img, t_txt, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mod(img, txt, 3.0, t_img, t_txt, 2.0)
        mod(img, txt, 3.0, t_img.detach(), t_txt.detach(), 2.0)
        vlkernels.DistillClipLoss(impl="torch")(img, txt, 3.0, t_img.detach(), t_txt.detach(), 2.0)


# --- parity with open_clip's classes, single process ----------------------------------------------


def _evaluate(make, inputs: dict, weights, dtype):
    """Outputs and gradients of ``make()(**inputs)``: float leaves cast to ``dtype`` (the scale and bias
    stay fp32 unless dtype is float64, as open_clip keeps its parameters), upstream grads ``weights``."""
    leaves = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            keep = key in ("logit_scale", "logit_bias", "dist_logit_scale") and dtype != torch.float64
            value = (
                value.detach()
                .to(torch.float32 if keep else dtype)
                .requires_grad_(key.startswith(("i", "t", "logit")))
            )
        leaves[key] = value
    out = make()(**leaves)
    out = list(out.values()) if isinstance(out, dict) else out
    out = list(out) if isinstance(out, (tuple, list)) else [out]
    sum(w * o.float() for w, o in zip(weights, out, strict=True)).backward()
    grads = [v.grad for k, v in leaves.items() if isinstance(v, torch.Tensor) and v.grad is not None]
    names = [k for k, v in leaves.items() if isinstance(v, torch.Tensor) and v.grad is not None]
    return [o.detach() for o in out] + grads, names


def _judge(make_ours, make_theirs, inputs, weights, dtype, scale):
    """flash-attention's rule: ours errs from open_clip in float64 by at most 2x open_clip's own error in
    ``dtype``, plus 8 fp32 ulps of the quantity's scale."""
    got, names = _evaluate(make_ours, inputs, weights, dtype)
    base, base_names = _evaluate(make_theirs, inputs, weights, dtype)
    exact, exact_names = _evaluate(make_theirs, inputs, weights, torch.float64)
    assert names == base_names == exact_names
    labels = [f"output {i}" for i in range(len(weights))] + [f"d_{n}" for n in names]
    batch = inputs["image_features"].shape[0]
    for label, g, b, r in zip(labels, got, base, exact, strict=True):
        assert g.shape == r.shape and torch.isfinite(g).all(), label
        if label.startswith("d_"):  # (the losses are fp32 here, in the input dtype in open_clip)
            assert g.dtype == b.dtype, (label, g.dtype, b.dtype)
        err_got = (g.double() - r).abs().max().item()
        err_base = (b.double() - r).abs().max().item()
        term = (1.0 + scale) ** 2 / batch if label.endswith("features") else (1.0 + scale) * batch
        floor = 8 * torch.finfo(torch.float32).eps * max(r.abs().max().item(), term)
        assert err_got <= 2 * err_base + floor, (dtype, label, err_got, err_base, floor)
    return got, names


DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_loss_parity(dtype):
    img, txt = features(33, 20, seed=3)
    inputs = dict(
        image_features=img, text_features=txt, logit_scale=torch.tensor(12.0), logit_bias=torch.tensor(-2.5)
    )
    ours = lambda: vlkernels.ClipLoss(impl="torch")
    got, names = _judge(ours, ORIGINAL["ClipLoss"], {**inputs, "logit_bias": None}, [1.7], dtype, 12.0)
    assert names == ["image_features", "text_features", "logit_scale"]
    # With the bias: its exact gradient is 0 (open_clip's is rounding noise around 0).
    got_b, names_b = _evaluate(ours, inputs, [1.7], dtype)
    exact_b, _ = _evaluate(ORIGINAL["ClipLoss"], inputs, [1.7], torch.float64)
    assert names_b[-1] == "logit_bias" and torch.equal(got_b[-1], torch.zeros(()))
    assert exact_b[-1].abs().item() < 1e-12
    for g, w in zip(got_b[:-1], got, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_distill_clip_loss_parity(dtype):
    img, txt = features(29, 16, seed=4)
    t_img, t_txt = features(29, 12, seed=5)
    inputs = dict(
        image_features=img,
        text_features=txt,
        logit_scale=torch.tensor(9.0),
        dist_image_features=t_img,
        dist_text_features=t_txt,
        dist_logit_scale=torch.tensor(6.0),
    )
    _judge(
        lambda: vlkernels.DistillClipLoss(impl="torch"),
        ORIGINAL["DistillClipLoss"],
        inputs,
        [1.3, 0.6],
        dtype,
        9.0,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clip_weight", [1.5, 0.0])
def test_coca_loss_parity(dtype, clip_weight):
    img, txt = features(12, 16, seed=6)
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(12, 9, 23, generator=g)
    labels = torch.randint(0, 23, (12, 9), generator=g)
    labels[:, 6:] = 0  # padding (pad_id 0) is ignored
    inputs = dict(
        image_features=img, text_features=txt, logits=logits, labels=labels, logit_scale=torch.tensor(11.0)
    )
    ours = lambda: vlkernels.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=clip_weight, impl="torch")
    theirs = lambda: ORIGINAL["CoCaLoss"](caption_loss_weight=2.0, clip_loss_weight=clip_weight)
    inputs_in = dict(inputs, logits=logits.requires_grad_(False))
    if clip_weight:
        _judge(ours, theirs, inputs_in, [1.0, 0.8], dtype, 11.0)
    out_ours, out_theirs = (
        ours()(img, txt, logits, labels, 11.0, True),
        theirs()(img, txt, logits, labels, 11.0, True),
    )
    assert out_ours.keys() == out_theirs.keys() == {"contrastive_loss", "caption_loss"}
    torch.testing.assert_close(out_ours["caption_loss"], out_theirs["caption_loss"], rtol=0, atol=0)
    if not clip_weight:
        assert torch.equal(out_ours["contrastive_loss"], out_theirs["contrastive_loss"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_siglip_loss_parity(dtype):
    img, txt = features(31, 18, seed=8)
    inputs = dict(
        image_features=img, text_features=txt, logit_scale=torch.tensor(10.0), logit_bias=torch.tensor(-10.0)
    )
    _, names = _judge(
        lambda: vlkernels.SigLipLoss(impl="torch"), ORIGINAL["SigLipLoss"], inputs, [1.4], dtype, 10.0
    )
    assert names[-1] == "logit_bias"


# --- parity with open_clip's classes, per rank (gloo, 2 processes) ---------------------------------


def _spawn(world: int, *calls):
    spawn(__name__, world, *calls)


def _rank_inputs(rank, world, b, dim, seed):
    img, txt = features(world * b, dim, seed=seed)
    own = slice(rank * b, (rank + 1) * b)
    return img[own], txt[own]


def _per_rank(rank, make_ours, make_theirs, inputs, weights, what):
    """Values and gradients of ours and open_clip's, on this rank, with rank-dependent upstream grads."""
    got, names = _evaluate(make_ours, inputs, weights, torch.float32)
    want, want_names = _evaluate(make_theirs, inputs, weights, torch.float32)
    assert names == want_names, (what, names, want_names)
    for label, g, w in zip([f"out{i}" for i in range(len(weights))] + names, got, want, strict=True):
        torch.testing.assert_close(
            g.float(),
            w.float(),
            atol=2e-5,
            rtol=2e-5,
            msg=lambda m, label=label: f"{what} {label} rank={rank}: {m}",
        )


FLAGS = [(False, False), (False, True), (True, False), (True, True)]


def _check_clip_and_distill(rank, world):
    img, txt = _rank_inputs(rank, world, 5, 8, seed=11)
    t_img, t_txt = _rank_inputs(rank, world, 5, 6, seed=12)
    g = 1.0 + 0.5 * rank
    for local_loss, with_grad in FLAGS:
        flags = dict(local_loss=local_loss, gather_with_grad=with_grad, rank=rank, world_size=world)
        what = f"local_loss={local_loss} gather_with_grad={with_grad}"
        clip_in = dict(image_features=img, text_features=txt, logit_scale=torch.tensor(10.0))
        _per_rank(
            rank,
            lambda f=flags: vlkernels.ClipLoss(impl="torch", **f),
            lambda f=flags: ORIGINAL["ClipLoss"](**f),
            clip_in,
            [g],
            "ClipLoss " + what,
        )
        distill_in = dict(
            clip_in, dist_image_features=t_img, dist_text_features=t_txt, dist_logit_scale=torch.tensor(6.0)
        )
        _per_rank(
            rank,
            lambda f=flags: vlkernels.DistillClipLoss(impl="torch", **f),
            lambda f=flags: ORIGINAL["DistillClipLoss"](**f),
            distill_in,
            [g, 0.7 - 0.2 * rank],
            "DistillClipLoss " + what,
        )
        coca_in = dict(
            clip_in,
            logits=torch.randn(5, 4, 7, generator=torch.Generator().manual_seed(rank)),
            labels=torch.arange(20).view(5, 4) % 7,
        )
        _per_rank(
            rank,
            lambda f=flags: vlkernels.CoCaLoss(2.0, 1.5, impl="torch", **f),
            lambda f=flags: ORIGINAL["CoCaLoss"](2.0, 1.5, **f),
            coca_in,
            [g, 0.5],
            "CoCaLoss " + what,
        )
        # get_logits gathers as open_clip does (the bias: see ClipLoss.get_logits, added once here).
        bias = torch.tensor(-1.5) if local_loss else None
        for x, y in zip(
            vlkernels.ClipLoss(**flags).get_logits(img, txt, 10.0, bias),
            ORIGINAL["ClipLoss"](**flags).get_logits(img, txt, 10.0, bias),
            strict=True,
        ):
            torch.testing.assert_close(x, y, msg=lambda m, w=what: f"get_logits {w} rank={rank}: {m}")


def _check_siglip(rank, world):
    img, txt = _rank_inputs(rank, world, 6, 8, seed=13)
    inputs = dict(
        image_features=img, text_features=txt, logit_scale=torch.tensor(10.0), logit_bias=torch.tensor(-10.0)
    )
    for dist_impl in (None, "bidir", "shift", "reduce", "gather"):
        flags = dict(rank=rank, world_size=world, dist_impl=dist_impl)
        _per_rank(
            rank,
            lambda f=flags: vlkernels.SigLipLoss(impl="torch", **f),
            lambda f=flags: ORIGINAL["SigLipLoss"](**f),
            inputs,
            [1.0 + 0.5 * rank],
            f"SigLipLoss dist_impl={dist_impl}",
        )


@pytest.mark.distributed
def test_per_rank_parity_with_open_clip_classes():
    _spawn(2, ("_check_clip_and_distill",), ("_check_siglip",))
