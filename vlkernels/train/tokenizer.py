"""Tokenizers: a built-in word-level one, and a Hugging Face ``tokenizer.json`` when the user gives one.

Both return ``(tokens [N, L] int64, lengths [N] int64)``: ``tokens[i, :lengths[i]]`` is the caption
(truncated to the context length, the last kept token being the end token), padding 0 after it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import torch

PAD, SOT, EOT, UNK = "<pad>", "<sot>", "<eot>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Lower-cased alphanumeric words; ids 0-3 are <pad>, <sot>, <eot>, <unk>."""

    def __init__(self, vocab: list[str], context_length: int):
        if vocab[:4] != [PAD, SOT, EOT, UNK]:
            vocab = [PAD, SOT, EOT, UNK] + [w for w in vocab if w not in (PAD, SOT, EOT, UNK)]
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.context_length = context_length

    @classmethod
    def build(cls, captions: Iterable[str], context_length: int, max_size: int = 20000) -> WordTokenizer:
        counts = Counter(w for c in captions for w in words(c))
        return cls(sorted(counts, key=lambda w: (-counts[w], w))[: max_size - 4], context_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def state(self) -> dict:
        return {"kind": "word", "vocab": self.vocab, "context_length": self.context_length}

    def ids(self, text: str) -> list[int]:
        unk = self.index[UNK]
        return [self.index[SOT], *(self.index.get(w, unk) for w in words(text)), self.index[EOT]]

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return _pad([self.ids(t) for t in texts], self.context_length, self.index[EOT])


class HFTokenizer:
    """A ``tokenizers`` ``tokenizer.json`` (optional dependency: ``pip install tokenizers``)."""

    def __init__(self, path: str, context_length: int):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise RuntimeError(
                "--tokenizer needs the 'tokenizers' package: pip install tokenizers "
                "(or leave --tokenizer out to use the built-in word-level tokenizer)"
            ) from e
        self.path = path
        self.tok = Tokenizer.from_file(path)
        self.tok.no_padding()
        self.tok.no_truncation()
        self.context_length = context_length
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)

    def state(self) -> dict:
        return {"kind": "hf", "path": self.path, "context_length": self.context_length}

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [e.ids or [0] for e in self.tok.encode_batch(texts)]
        return _pad(ids, self.context_length, None)


def _pad(ids: list[list[int]], context_length: int, eot: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.zeros(len(ids), context_length, dtype=torch.int64)
    lengths = torch.empty(len(ids), dtype=torch.int64)
    for i, seq in enumerate(ids):
        if len(seq) > context_length:
            seq = seq[:context_length]
            if eot is not None:
                seq[-1] = eot
        tokens[i, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
        lengths[i] = len(seq)
    return tokens, lengths


def from_state(state: dict):
    if state["kind"] == "word":
        return WordTokenizer(state["vocab"], state["context_length"])
    return HFTokenizer(state["path"], state["context_length"])
