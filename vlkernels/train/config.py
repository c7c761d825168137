"""The settings of one training run (``TrainConfig``) and their validation (``check_config``).

``check_config`` is the one place that knows which values make sense; both the Python API (``train``)
and the command line (which turns a ``UsageError`` into an argparse usage error, exit code 2) call it, so
a bad value is reported, naming its command-line option, before anything is read or written.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from vlkernels.train.model import ClipConfig

MAX_SEED = 2**31 - 1  # the per-step seeds (seed * 1_000_003 + step) * 4099 + rank must fit torch's 64 bits


class UsageError(ValueError):
    """A problem with the run's options or input files (named in the message), found before the run writes
    anything; the command line reports it as a usage error (exit code 2)."""


@dataclass
class TrainConfig:
    # data
    train_data: str | None = None  # None: the built-in synthetic set
    val_data: str | None = None
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_separator: str | None = None
    synthetic_train_size: int = 8192
    synthetic_val_size: int = 1024
    tokenizer: str | None = None
    # model
    model: ClipConfig = field(default_factory=ClipConfig)
    # loss and recipe
    loss: str = "vlkernels"  # naive | vlkernels
    psd: bool = False
    alpha_max: float = 0.2
    recipe: str = "baseline"  # baseline | improved
    grad_cache_chunks: int = 1
    # optimisation
    steps: int = 200
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 20
    weight_decay: float = 0.1
    seed: int = 0
    device: str = "cpu"
    # bookkeeping
    out: str = "runs/train"
    eval_every: int = 50
    save_every: int = 100
    resume: str | None = None
    stop_at_step: int | None = None
    max_nonfinite: int = 10
    progress: bool = True
    plot: bool = True
    overwrite: bool = False  # start afresh in a run directory that already holds a checkpoint


def option(name: str) -> str:
    """The command-line option of a TrainConfig / ClipConfig field: 'batch_size' -> '--batch-size'."""
    return "--" + name.replace("_", "-")


# (field, smallest allowed value) of the integer settings; ClipConfig's fields are checked the same way.
_INT_MIN = {
    "synthetic_train_size": 1,
    "synthetic_val_size": 1,
    "grad_cache_chunks": 1,
    "steps": 1,
    "batch_size": 2,  # a contrastive loss needs at least 2 pairs (per process)
    "warmup": 0,
    "seed": 0,
    "eval_every": 0,  # 0: only at the end
    "save_every": 0,  # 0: only at the end
    "stop_at_step": 1,
    "max_nonfinite": 1,
}
_MODEL_MIN = {
    "image_size": 1,
    "patch_size": 2,
    "vision_width": 2,  # the stem's first convolution has vision_width // 2 channels
    "vision_layers": 1,
    "context_length": 2,  # the start and end tokens
    "text_width": 1,
    "text_layers": 1,
    "heads": 1,
    "embed_dim": 1,
}
_WHY = {
    "batch_size": " (a contrastive loss needs at least 2 pairs per process)",
    "context_length": " (the start and end tokens)",
    "vision_width": " (the stem's first convolution has width / 2 channels)",
}


def _int(name: str, value, low: int, problems: list[str]) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        problems.append(f"{option(name)} must be an integer, got {value!r}")
        return False
    if value < low:
        problems.append(f"{option(name)} must be >= {low}{_WHY.get(name, '')}, got {value}")
        return False
    return True


def _float(name: str, value, low: float, high: float, low_open: bool, problems: list[str]) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        problems.append(f"{option(name)} must be a finite number, got {value!r}")
    elif value < low or (low_open and value == low) or value > high:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        problems.append(
            f"{option(name)} must be {bound}"
            + (f" and <= {high:g}" if high < math.inf else "")
            + f", got {value:g}"
        )


def _check_device(device, problems: list[str]) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        problems.append(f"--device must be cpu, cuda or cuda:N, got {device!r}")
        return
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        problems.append(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    elif not torch.cuda.is_available():
        problems.append(
            f"--device {device}: no CUDA device is available (torch.cuda.is_available() is False)"
        )
    elif dev.index is not None and dev.index >= torch.cuda.device_count():
        problems.append(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")


def problems(cfg: TrainConfig, world: int = 1) -> list[str]:
    """Every problem with ``cfg``'s values (empty when it is valid), each naming its option."""
    out: list[str] = []
    if cfg.loss not in ("naive", "vlkernels"):
        out.append(f"--loss must be 'naive' or 'vlkernels', got {cfg.loss!r}")
    if cfg.recipe not in ("baseline", "improved"):
        out.append(f"--recipe must be 'baseline' or 'improved', got {cfg.recipe!r}")
    ok = {}
    for name, low in _INT_MIN.items():
        value = getattr(cfg, name)
        if name == "stop_at_step" and value is None:
            continue
        ok[name] = _int(name, value, low, out)
    if ok["seed"] and cfg.seed > MAX_SEED:
        out.append(f"--seed must be <= {MAX_SEED}, got {cfg.seed}")
    _float("lr", cfg.lr, 0.0, math.inf, True, out)
    _float("weight_decay", cfg.weight_decay, 0.0, math.inf, False, out)
    _float("alpha_max", cfg.alpha_max, 0.0, 1.0, False, out)
    m = cfg.model
    mok = {name: _int(name, getattr(m, name), low, out) for name, low in _MODEL_MIN.items()}
    if mok["patch_size"] and mok["image_size"]:
        if m.patch_size % 2 or m.image_size % m.patch_size:
            out.append(f"--patch-size {m.patch_size} must be even and divide --image-size {m.image_size}")
    if mok["heads"]:
        for name in ("vision_width", "text_width"):
            if mok[name] and getattr(m, name) % m.heads:
                out.append(f"--heads {m.heads} must divide {option(name)} {getattr(m, name)}")
    if cfg.train_data is None and ok["synthetic_train_size"] and ok["batch_size"]:
        if cfg.synthetic_train_size < cfg.batch_size * world:
            out.append(
                f"--synthetic-train-size {cfg.synthetic_train_size} is smaller than one global batch "
                f"(--batch-size {cfg.batch_size} x {world} process(es))"
            )
    if cfg.csv_separator is not None and len(cfg.csv_separator) != 1:
        out.append(f"--csv-separator must be one character (or \\t / tab), got {cfg.csv_separator!r}")
    for name in ("train_data", "val_data", "tokenizer", "resume"):
        value = getattr(cfg, name)
        if value is not None and (not isinstance(value, str) or not value):
            out.append(f"{option(name)} must be a non-empty path, got {value!r}")
    if cfg.val_data is not None and cfg.train_data is None:
        out.append("--val-data needs --train-data (the synthetic set is evaluated zero-shot)")
    _check_device(cfg.device, out)
    return out


def check_config(cfg: TrainConfig, world: int = 1) -> None:
    """Raise ``UsageError`` listing every problem with ``cfg``'s values."""
    found = problems(cfg, world)
    if found:
        raise UsageError("; ".join(found))
