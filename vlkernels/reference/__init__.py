"""Naive PyTorch implementations: the parity baseline for tests and benchmarks (they materialise B x B)."""

from vlkernels.reference.contrastive import contrastive_loss_naive

__all__ = ["contrastive_loss_naive"]
