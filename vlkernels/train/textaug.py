"""Caption augmentation of the improved-baselines recipe (Fini et al., 2023, after EDA): stop-word
removal, random word deletion and random swaps, each applied with a probability per caption."""

from __future__ import annotations

import random

STOP_WORDS = frozenset(
    "a an the of in on at to and or with is are there this that its it for from by as be".split()
)


def augment_caption(
    caption: str, rng: random.Random, p_stop: float = 0.3, p_delete: float = 0.3, p_swap: float = 0.3
) -> str:
    """One augmented caption; never returns an empty string (the original's words are kept instead)."""
    toks = caption.split()
    if rng.random() < p_stop:
        kept = [t for t in toks if t.lower() not in STOP_WORDS]
        toks = kept or toks
    if rng.random() < p_delete and len(toks) > 1:
        del toks[rng.randrange(len(toks))]
    if rng.random() < p_swap and len(toks) > 1:
        i, j = rng.sample(range(len(toks)), 2)
        toks[i], toks[j] = toks[j], toks[i]
    return " ".join(toks)


def augment_captions(captions: list[str], seed: int) -> list[str]:
    """Deterministic in ``seed`` (the trainer derives it from the run seed and the step)."""
    rng = random.Random(seed)
    return [augment_caption(c, rng) for c in captions]
