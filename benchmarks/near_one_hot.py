"""Precision near one-hot: each loss against the float64 reference that keeps every diagonal term.

    python -m benchmarks.near_one_hot                       # torch and naive on the CPU
    TRITON_INTERPRET=1 python -m benchmarks.near_one_hot --impl triton   # Triton under the interpreter

Prints, per case and loss, the worst error of (loss, d_image, d_text, d_scale) in fp32 ulps times
(1 + max |S|) of each quantity's own error scale (``tests/_ref.py`` ``relative_ulps`` against
``exact_contrastive``; grad_output 1.3). The losses are the contrastive loss and those whose value and
gradients equal it: ``soft_target_loss`` at alpha 0 with the self teacher and with a separate one (D' = 24,
s' = 30), and ``DistillClipLoss``'s contrastive part. The cases: well-matched pairs (texts =
normalise(images + 0.1 noise)) at s = 30 and 60, aligned pairs at s = 100 (off-diagonal masses 1e-20 to
1e-44), a generic batch; each without and with label smoothing 0.1. Formed from P_ii near 1, a diagonal
term keeps an ulp of 1: ~1e5 of these ulps on the first three (naive's error too); docs/design.md,
"Off-diagonal masses", has the numbers.

A second table (``--soft``) is a separate teacher's soft part: ``soft_target_loss`` at alpha 1, and at
alpha 0.4 with smoothing 0.1 and a soft mask, the teacher (D' = 24) built as the student's pairs with
s' = s; (d_image, d_text, d_scale) in the same unit against ``exact_soft_target_grads`` (the diagonal from
both softmaxes' off-diagonal masses: ``soft_relative_ulps``). docs/design.md, "The teacher's soft part on
the diagonal", has the numbers.
"""

from __future__ import annotations

import argparse

import torch

from tests._ref import paired_features, relative_ulps, soft_relative_ulps
from vlkernels.functional import contrastive_loss, distill_clip_loss, soft_target_loss

CASES = [(64, 32, 0.1, 30.0, 0), (257, 64, 0.1, 60.0, 1), (17, 64, 0.0, 100.0, 2), (33, 20, 1.0, 10.0, 3)]


def _quantities(fn, img, txt, scale: float, grad_out: float) -> list:
    i, t = img.clone().requires_grad_(), txt.clone().requires_grad_()
    s = torch.tensor(scale, requires_grad=True)
    out = fn(i, t, s)
    return [out.detach(), *torch.autograd.grad(out * grad_out, (i, t, s))]


LOSSES = ("contrastive", "soft target, self", "soft target, teacher", "DistillClipLoss")


def _loss(name: str, impl: str, eps: float, t_img, t_txt):
    """The loss ``name`` of (image, text, scale) with smoothing ``eps`` (the teacher's features for the last
    two)."""
    teacher = dict(teacher_image_features=t_img, teacher_text_features=t_txt, teacher_logit_scale=30.0)

    def fn(i, t, s):
        if name == "contrastive":
            return contrastive_loss(i, t, s, label_smoothing=eps, impl=impl)
        if name == "soft target, self":
            return soft_target_loss(i, t, s, 0.0, label_smoothing=eps, impl=impl)
        if name == "soft target, teacher":
            return soft_target_loss(i, t, s, 0.0, label_smoothing=eps, impl=impl, **teacher)
        return distill_clip_loss(i, t, s, t_img, t_txt, 30.0, label_smoothing=eps, impl=impl)[0]

    return fn


def rows(impl: str, grad_out: float = 1.3) -> list[str]:
    out = []
    for batch, dim, noise, scale, seed in CASES:
        img, txt = paired_features(batch, dim, noise, seed)
        t_img, t_txt = paired_features(batch, 24, 0.1, seed + 10)
        for eps in (0.0, 0.1):
            case = f"B={batch} D={dim} s={scale:g} noise={noise:g} eps={eps:g}"
            for name in LOSSES:
                got = _quantities(_loss(name, impl, eps, t_img, t_txt), img, txt, scale, grad_out)
                worst = relative_ulps(got, img, txt, scale, eps, grad_out)
                out.append(f"| {impl} | {case} | {name} | " + " | ".join(f"{w:.2g}" for w in worst) + " |")
    return out


# (B, D, noise, s = s', seed): well-matched pairs at s = 30 and 60 (closer at 60), aligned pairs, generic
SOFT_CASES = [(64, 32, 0.1, 30.0, 0), (64, 32, 0.05, 60.0, 1), (257, 64, 0.1, 60.0, 2)]
SOFT_CASES += [(17, 64, 0.0, 30.0, 3), (33, 20, 1.0, 10.0, 4)]


def soft_rows(impl: str, grad_out: float = 1.3) -> list[str]:
    """The ``--soft`` table's rows for ``impl``."""
    out = []
    for batch, dim, noise, scale, seed in SOFT_CASES:
        img, txt = paired_features(batch, dim, noise, seed)
        t_img, t_txt = paired_features(batch, 24, noise, seed + 10)
        teacher = dict(teacher_image_features=t_img, teacher_text_features=t_txt, teacher_logit_scale=scale)
        for alpha, eps, mask in ((1.0, 0.0, None), (0.4, 0.1, torch.arange(batch) % 3 != 0)):

            def fn(i, t, s, alpha=alpha, eps=eps, mask=mask, teacher=teacher):
                kw = dict(label_smoothing=eps, soft_mask=mask, impl=impl)
                return soft_target_loss(i, t, s, alpha, **kw, **teacher)

            got = _quantities(fn, img, txt, scale, grad_out)[1:]
            worst = soft_relative_ulps(got, img, txt, scale, t_img, t_txt, scale, alpha, eps, grad_out, mask)
            case = f"B={batch} D={dim} s=s'={scale:g} noise={noise:g}"
            setting = f"alpha={alpha:g} eps={eps:g}" + (" masked" if mask is not None else "")
            out.append(f"| {impl} | {case} | {setting} | " + " | ".join(f"{w:.2g}" for w in worst) + " |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", nargs="+", default=["torch", "naive"], choices=["torch", "triton", "naive"])
    ap.add_argument("--soft", action="store_true", help="a separate teacher's soft part (the second table)")
    args = ap.parse_args(argv)
    columns = ["impl", "case", "setting"] if args.soft else ["impl", "case", "function", "loss"]
    columns += ["d_image", "d_text", "d_scale"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for impl in args.impl:
        for line in (soft_rows if args.soft else rows)(impl):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
