"""One forward/backward of the CLIP loss, plain or with embedding-level gradient caching (GradCache).

GradCache (Gao et al., 2021) splits the towers' work from the loss: (1) embed the batch in K chunks
without autograd, (2) compute the loss on the [B, E] embeddings and its gradient with respect to them
(and to logit_scale), (3) re-run each chunk's forward with autograd and back-propagate the cached
embedding gradient through it. Activation memory is then that of one chunk, and what remains O(B) or
worse is the loss itself: with vlkernels' O(B) loss the batch size is bounded by the embeddings, with the
naive loss by its B x B logits. The parameter gradient equals the one-pass gradient (same maths, up to
float rounding of the chunked matmuls).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _encode(model, images, tokens, lengths):
    return model.encode_image(images), model.encode_text(tokens, lengths)


def forward_backward(model, images, tokens, lengths, loss_fn: LossFn, chunks: int = 1) -> torch.Tensor:
    """Accumulates the loss's parameter gradients into ``.grad``; returns the detached loss.

    ``chunks`` = 1: one forward with autograd, then backward (the usual step). ``chunks`` > 1: GradCache
    as in the module docstring (``chunks`` is capped at the batch size).
    """
    if chunks <= 1:
        img, txt = _encode(model, images, tokens, lengths)
        loss = loss_fn(img, txt, model.logit_scale.exp())
        loss.backward()
        return loss.detach()
    splits = (x.tensor_split(chunks) for x in (images, tokens, lengths))
    parts = [p for p in zip(*splits, strict=True) if p[0].shape[0]]
    with torch.no_grad():
        embs = [_encode(model, *p) for p in parts]
    img = torch.cat([e[0] for e in embs]).requires_grad_()
    txt = torch.cat([e[1] for e in embs]).requires_grad_()
    loss = loss_fn(img, txt, model.logit_scale.exp())
    loss.backward()  # grads of the embeddings (cached) and of logit_scale (accumulated into .grad)
    if not bool(torch.isfinite(loss)):  # the step will be skipped: no need to re-run the towers
        return loss.detach()
    sizes = [p[0].shape[0] for p in parts]
    for p, g_img, g_txt in zip(parts, img.grad.split(sizes), txt.grad.split(sizes), strict=True):
        i, t = _encode(model, *p)
        torch.autograd.backward([i, t], [g_img, g_txt])
    return loss.detach()
