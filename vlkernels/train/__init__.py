"""The thin trainer: a tiny CLIP trained with vlkernels' losses or the naive ones.

``python -m vlkernels.train`` with no arguments trains the tiny CLIP on the built-in synthetic data twice,
with the naive loss and with vlkernels, from the same seed, and prints the parity / speed / memory table
and the zero-shot accuracy (``--help`` for everything else). From Python::

    from vlkernels.train import TrainConfig, train
    summary = train(TrainConfig(loss="vlkernels", steps=100, out="runs/demo"))
"""

from vlkernels.train.loop import TrainConfig, train
from vlkernels.train.model import ClipConfig, TinyClip

__all__ = ["ClipConfig", "TinyClip", "TrainConfig", "train"]
