"""torch.compile(fullgraph=True) of the loss functions and modules: one graph, the same values and
gradients as eager, and no recompilation when a tensor alpha changes every step."""

from __future__ import annotations

import pytest
import torch

from tests._ref import features
from vlkernels import ClipLoss, DistillClipLoss, SoftTargetLoss, contrastive_loss, soft_target_loss


def _inputs():
    img, txt = features(13, 6, seed=2)
    t_img, t_txt = features(13, 4, seed=5)
    return img, txt, t_img, t_txt


CASES = {
    "contrastive_loss": lambda i, t, s, ti, tt: contrastive_loss(i, t, s, impl="torch", label_smoothing=0.1),
    "ClipLoss": lambda i, t, s, ti, tt: ClipLoss(impl="torch")(i, t, s),
    "soft_target_loss": lambda i, t, s, ti, tt: soft_target_loss(i, t, s, torch.tensor(0.3), impl="torch"),
    "soft_target_loss teacher": lambda i, t, s, ti, tt: soft_target_loss(
        i,
        t,
        s,
        0.3,
        impl="torch",
        teacher_image_features=ti,
        teacher_text_features=tt,
        teacher_logit_scale=2.0,
    ),
    "DistillClipLoss": lambda i, t, s, ti, tt: sum(DistillClipLoss(impl="torch")(i, t, s, ti, tt, 2.0)),
}


def _run(fn):
    img, txt, t_img, t_txt = _inputs()
    leaves = [img.requires_grad_(), txt.requires_grad_(), torch.tensor(6.0, requires_grad=True)]
    loss = fn(*leaves, t_img, t_txt)
    loss.backward()
    return [loss.detach()] + [x.grad for x in leaves]


@pytest.mark.parametrize("name", list(CASES))
def test_fullgraph_compile_matches_eager(name):
    torch._dynamo.reset()
    want = _run(CASES[name])
    got = _run(torch.compile(CASES[name], fullgraph=True, backend="aot_eager"))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)


def test_soft_target_module_steps_without_recompiling():
    torch._dynamo.reset()
    mod = SoftTargetLoss(alpha_max=0.5, total_steps=4, impl="torch")
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    img, txt, _, _ = _inputs()
    values = []
    for step in range(4):
        if step == 1:
            torch.compiler.set_stance("fail_on_recompile")
        try:
            values.append(compiled(img, txt, 6.0).item())
        finally:
            torch.compiler.set_stance("default")
        eager = SoftTargetLoss(alpha_max=0.5, total_steps=4, impl="torch")
        eager.load_state_dict(mod.state_dict())
        torch.testing.assert_close(values[-1], eager(img, txt, 6.0).item(), atol=1e-6, rtol=1e-6)
        mod.step()
    assert len(set(values)) == 4  # alpha changed every step, the graph did not


@pytest.mark.parametrize("name", ["contrastive_loss", "DistillClipLoss"])
def test_autocast_probe_stays_out_of_the_losses(name, monkeypatch):
    """torch 2.11's dynamo cannot trace ``torch.amp.is_autocast_available`` (a skipped builtin: every case
    above failed there): the losses ask it once per device type, at import, so that no call, eager or
    compiled, reaches it. A probe that raises stands in for 2.11's graph break (2.13 traces the call)."""

    def probe(device_type):
        raise AssertionError(f"torch.amp.is_autocast_available({device_type!r}) called inside a loss")

    monkeypatch.setattr(torch.amp, "is_autocast_available", probe)
    torch._dynamo.reset()
    want = _run(CASES[name])
    got = _run(torch.compile(CASES[name], fullgraph=True, backend="aot_eager"))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)
