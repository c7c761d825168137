"""The trainer's command line: ``python -m vlkernels.train`` / ``vlkernels-train``.

With no arguments: synthetic data, ``--compare`` on CPU (naive and vlkernels from the same seed, then the
parity / speed / memory table and the zero-shot accuracy). ``--loss naive|vlkernels`` trains one run.
Multi-process: ``torchrun --nproc_per_node N -m vlkernels.train --loss vlkernels ...`` (gloo on CPU,
NCCL on GPU; ``--batch-size`` is per process, the losses gather across processes).

Exit codes: 0 the run did what was asked; 1 it stopped early (non-finite loss limit, no step could be
trained) or failed (an exception: the traceback, then the summary); 2 a bad option value or input file
(an argparse usage error, nothing written); 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
import traceback

from vlkernels.train.config import TrainConfig, UsageError, check_config
from vlkernels.train.model import ClipConfig


def _size(text: str) -> int:
    """'512MiB', '2GiB', '1.5G', '300M' or bytes -> bytes (positive)."""
    t = text.strip().lower().replace("ib", "").replace("b", "")
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    scale = units.get(t[-1:], 1)
    try:
        value = float(t[:-1] if t[-1:] in units else t) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size such as 512MiB or 8GiB, got {text!r}")
    return int(value)


def _separator(text: str) -> str:
    """One character; '\\t' (as typed in a shell) and 'tab' mean a tab."""
    return "\t" if text in ("\\t", "tab", "TAB") else text


def parser() -> argparse.ArgumentParser:
    d, m = TrainConfig(), ClipConfig()
    p = argparse.ArgumentParser(
        prog="python -m vlkernels.train",
        description="Train a tiny CLIP with vlkernels' O(B) losses or the naive ones. With no arguments: "
        "synthetic data, --compare on CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("mode")
    g.add_argument(
        "--compare",
        action="store_true",
        help="train naive and vlkernels (same seed and data) and print the parity / speed / memory "
        "table (the default when --loss is not given)",
    )
    g.add_argument("--loss", choices=["naive", "vlkernels"], help="train one run with this loss")
    g.add_argument(
        "--memory-budget",
        type=_size,
        default=256 * 2**20,
        help="--compare: largest batch size whose loss step (fwd+bwd on [B, embed-dim] embeddings) fits "
        "this budget (CPU: peak RSS; GPU: per-process memory fraction); e.g. 512MiB, 8GiB",
    )
    g.add_argument(
        "--memory-max-batch", type=int, default=16384, help="--compare: stop doubling the batch size here"
    )
    g = p.add_argument_group("data")
    g.add_argument("--train-data", help="CSV/TSV of image paths and captions (default: synthetic set)")
    g.add_argument("--val-data", help="CSV/TSV for image->text retrieval evaluation")
    g.add_argument("--csv-img-key", default=d.csv_img_key)
    g.add_argument("--csv-caption-key", default=d.csv_caption_key)
    g.add_argument("--csv-separator", type=_separator, help="default: tab for .tsv, comma otherwise")
    g.add_argument("--synthetic-train-size", type=int, default=d.synthetic_train_size)
    g.add_argument("--synthetic-val-size", type=int, default=d.synthetic_val_size)
    g.add_argument(
        "--tokenizer",
        help="a Hugging Face tokenizer.json (needs `pip install tokenizers`); "
        "default: built-in word-level tokenizer",
    )
    g = p.add_argument_group("model")
    for f in dataclasses.fields(ClipConfig):
        if f.name != "vocab_size":
            g.add_argument("--" + f.name.replace("_", "-"), type=int, default=getattr(m, f.name))
    g = p.add_argument_group("loss and recipe")
    g.add_argument("--psd", action="store_true", help="progressive self-distillation (soft targets)")
    g.add_argument("--alpha-max", type=float, default=d.alpha_max, help="PSD: alpha ramps linearly 0 -> this")
    g.add_argument(
        "--recipe",
        choices=["baseline", "improved"],
        default=d.recipe,
        help="improved: strong image views (fused_augment), label smoothing 0.1, caption "
        "augmentation (stop words, deletion, swap)",
    )
    g.add_argument(
        "--grad-cache-chunks",
        type=int,
        default=d.grad_cache_chunks,
        help="embedding-level gradient caching in K chunks (1: plain step)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--warmup", type=int, default=d.warmup)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=None, help="cpu | cuda (default: cpu)")
    g.add_argument("--threads", type=int, help="torch.set_num_threads")
    g = p.add_argument_group("outputs")
    g.add_argument("--out-dir", default="runs", help="runs go to OUT_DIR/NAME/")
    g.add_argument("--name", help="default: compare-<time> or <loss>-<time>")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="zero-shot / retrieval every N steps")
    g.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (atomic)")
    g.add_argument(
        "--resume", help="a checkpoint path (continues in its directory), or 'latest' with --name NAME"
    )
    g.add_argument("--stop-at-step", type=int, help="stop after this step as if interrupted (then --resume)")
    g.add_argument(
        "--max-nonfinite",
        type=int,
        default=d.max_nonfinite,
        help="stop after this many non-finite losses (each such step is skipped)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a run directory that already holds a checkpoint",
    )
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--no-plot", action="store_true")
    return p


def config_from_args(args, out: str) -> TrainConfig:
    model = ClipConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(ClipConfig) if f.name != "vocab_size"}
    )
    return TrainConfig(
        train_data=args.train_data,
        val_data=args.val_data,
        csv_img_key=args.csv_img_key,
        csv_caption_key=args.csv_caption_key,
        csv_separator=args.csv_separator,
        synthetic_train_size=args.synthetic_train_size,
        synthetic_val_size=args.synthetic_val_size,
        tokenizer=args.tokenizer,
        model=model,
        loss=args.loss or "vlkernels",
        psd=args.psd,
        alpha_max=args.alpha_max,
        recipe=args.recipe,
        grad_cache_chunks=args.grad_cache_chunks,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        seed=args.seed,
        device=args.device or "cpu",
        out=out,
        eval_every=args.eval_every,
        save_every=args.save_every,
        resume=args.resume,
        stop_at_step=args.stop_at_step,
        max_nonfinite=args.max_nonfinite,
        progress=not args.no_progress,
        plot=not args.no_plot,
        overwrite=args.overwrite,
    )


def _run_dir(p: argparse.ArgumentParser, args) -> tuple[bool, str]:
    """(--compare?, the run directory)."""
    compare = args.compare or args.loss is None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = args.name or (f"compare-{stamp}" if compare else f"{args.loss}-{stamp}")
    if name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name):
        p.error(f"--name must be a plain name (the run goes to OUT_DIR/NAME/), got {name!r}")
    out = os.path.join(args.out_dir, name)
    if args.resume and args.resume not in ("latest", "auto") and not args.name:
        path = args.resume.rstrip("/" + (os.altsep or ""))
        # continue in the checkpoint's run directory (or in the run directory given)
        out = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    elif args.resume in ("latest", "auto") and not args.name:
        p.error(f"--resume {args.resume} needs the run's --name (resumes OUT_DIR/NAME/checkpoint.pt)")
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        p.error(f"the run directory {out} (--out-dir/--name): {parent} exists and is not a directory")
    return compare, out


def _check_cli(p: argparse.ArgumentParser, args, compare: bool, out: str, world: int) -> TrainConfig:
    """Argparse-style usage errors (exit code 2, nothing written) for bad option values."""
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.memory_max_batch < 2:
        p.error(f"--memory-max-batch must be >= 2, got {args.memory_max_batch}")
    cfg = config_from_args(args, out)
    try:
        check_config(cfg, world)
    except UsageError as e:
        p.error(str(e))
    if compare:
        if world > 1:
            p.error("--compare is single-process; under torchrun pass --loss naive|vlkernels")
        if args.resume not in (None, "latest", "auto"):
            p.error(
                "--compare resumes its two runs with --resume latest --name NAME, not from one checkpoint"
            )
    runs = [os.path.join(out, loss) for loss in ("naive", "vlkernels")] if compare else [out]
    for run in runs:
        if not args.resume and not args.overwrite and os.path.exists(os.path.join(run, "checkpoint.pt")):
            p.error(
                f"{run} already holds a run (checkpoint.pt): continue it with --resume latest, start "
                "afresh in it with --overwrite, or pick another --name"
            )
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        p.error(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer")
    compare, out = _run_dir(p, args)
    cfg = _check_cli(p, args, compare, out, world)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if compare:
        from vlkernels.train.compare import compare as run_compare

        return run_compare(cfg, args.memory_budget, args.memory_max_batch)
    from vlkernels.train.loop import train

    lead = int(os.environ.get("RANK", "0")) == 0
    try:
        summary = train(cfg)
    except UsageError as e:  # found before anything was written (a file, the checkpoint)
        p.print_usage(sys.stderr)
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if lead:
            print(f"interrupted; summary in {out}/summary.json", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - the traceback, then where the run stands
        traceback.print_exc()
        if lead:
            print(
                f"the run failed; its status is in {out}/summary.json (and the last checkpoint, if any, in "
                f"{out}/checkpoint.pt)",
                file=sys.stderr,
            )
        return 1
    if lead:
        keys = ("final_loss", "zeroshot_top1", "retrieval_top1", "median_step_ms", "skipped_images")
        print(", ".join(f"{k} {summary[k]:.4g}" for k in keys if isinstance(summary.get(k), (int, float))))
        line = f"status {summary['status']}: {summary['steps_done']}/{summary['steps']} steps"
        print(line + (f" ({summary['stopped']})" if summary.get("stopped") else ""))
        print(f"outputs in {out}/ (metrics.jsonl, curves.png, checkpoint.pt, summary.json)")
    return 1 if summary.get("stopped") else 0


def run() -> None:
    """Console-script and ``python -m vlkernels.train`` entry: main(), then exit with its code. A rank
    of a torchrun job (WORLD_SIZE > 1) leaves with os._exit once its output is flushed: with torch 2.13
    and gloo a rank that finished (outputs written, process group destroyed after a barrier) can still
    abort in the interpreter's teardown ("terminate called without an active exception", SIGABRT; seen
    once in CI's two-rank PSD + GradCache test, not reproduced in 16 local runs), and nothing is left to
    run there. (All files are written and closed inside train().)"""
    code = main()
    try:
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        distributed = False
    if distributed:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)
