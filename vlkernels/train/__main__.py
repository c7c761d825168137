"""Command line of the trainer: ``python -m vlkernels.train`` / ``vlkernels-train``.

With no arguments: synthetic data, ``--compare`` on CPU (naive and vlkernels from the same seed, then the
parity / speed / memory table and the zero-shot accuracy). ``--loss naive|vlkernels`` trains one run.
Multi-process: ``torchrun --nproc_per_node N -m vlkernels.train --loss vlkernels ...`` (gloo on CPU,
NCCL on GPU; ``--batch-size`` is per process, the losses gather across processes).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from vlkernels.train.loop import TrainConfig, train
from vlkernels.train.model import ClipConfig


def _size(text: str) -> int:
    """'512MiB', '2GiB', '1.5G', '300M' or bytes -> bytes."""
    t = text.strip().lower().replace("ib", "").replace("b", "")
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(float(t))


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
    g.add_argument("--memory-max-batch", type=int, default=16384,
                   help="--compare: stop doubling the batch size here")  # fmt: skip
    g = p.add_argument_group("data")
    g.add_argument("--train-data", help="CSV/TSV of image paths and captions (default: synthetic set)")
    g.add_argument("--val-data", help="CSV/TSV for image->text retrieval evaluation")
    g.add_argument("--csv-img-key", default=d.csv_img_key)
    g.add_argument("--csv-caption-key", default=d.csv_caption_key)
    g.add_argument("--csv-separator", help="default: tab for .tsv, comma otherwise")
    g.add_argument("--synthetic-train-size", type=int, default=d.synthetic_train_size)
    g.add_argument("--synthetic-val-size", type=int, default=d.synthetic_val_size)
    g.add_argument("--tokenizer", help="a Hugging Face tokenizer.json (needs `pip install tokenizers`); "
                   "default: built-in word-level tokenizer")  # fmt: skip
    g = p.add_argument_group("model")
    for f in dataclasses.fields(ClipConfig):
        if f.name != "vocab_size":
            g.add_argument("--" + f.name.replace("_", "-"), type=int, default=getattr(m, f.name))
    g = p.add_argument_group("loss and recipe")
    g.add_argument("--psd", action="store_true", help="progressive self-distillation (soft targets)")
    g.add_argument("--alpha-max", type=float, default=d.alpha_max, help="PSD: alpha ramps linearly 0 -> this")
    g.add_argument("--recipe", choices=["baseline", "improved"], default=d.recipe,
                   help="improved: strong image views (fused_augment), label smoothing 0.1, caption "
                   "augmentation (stop words, deletion, swap)")  # fmt: skip
    g.add_argument("--grad-cache-chunks", type=int, default=d.grad_cache_chunks,
                   help="embedding-level gradient caching in K chunks (1: plain step)")  # fmt: skip
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
    g.add_argument("--max-nonfinite", type=int, default=d.max_nonfinite,
                   help="stop after this many non-finite losses (each such step is skipped)")  # fmt: skip
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--no-plot", action="store_true")
    return p


def config_from_args(args, out: str) -> TrainConfig:
    model = ClipConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ClipConfig)
                          if f.name != "vocab_size"})  # fmt: skip
    return TrainConfig(
        train_data=args.train_data, val_data=args.val_data, csv_img_key=args.csv_img_key,
        csv_caption_key=args.csv_caption_key, csv_separator=args.csv_separator,
        synthetic_train_size=args.synthetic_train_size, synthetic_val_size=args.synthetic_val_size,
        tokenizer=args.tokenizer, model=model, loss=args.loss or "vlkernels", psd=args.psd,
        alpha_max=args.alpha_max, recipe=args.recipe, grad_cache_chunks=args.grad_cache_chunks,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
        weight_decay=args.weight_decay, seed=args.seed, device=args.device or "cpu", out=out,
        eval_every=args.eval_every, save_every=args.save_every, resume=args.resume,
        stop_at_step=args.stop_at_step, max_nonfinite=args.max_nonfinite, progress=not args.no_progress,
        plot=not args.no_plot,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    compare = args.compare or args.loss is None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = args.name or (f"compare-{stamp}" if compare else f"{args.loss}-{stamp}")
    out = os.path.join(args.out_dir, name)
    if args.resume and args.resume not in ("latest", "auto") and not args.name:
        out = os.path.dirname(os.path.abspath(args.resume))  # continue in the checkpoint's run directory
    elif args.resume in ("latest", "auto") and not args.name:
        print("--resume latest needs the run's --name (resumes OUT_DIR/NAME/checkpoint.pt)", file=sys.stderr)
        return 2
    if compare:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            print("--compare is single-process; under torchrun pass --loss naive|vlkernels", file=sys.stderr)
            return 2
        from vlkernels.train.compare import compare as run_compare

        return run_compare(args, out)
    summary = train(config_from_args(args, out))
    if int(os.environ.get("RANK", "0")) == 0:
        keys = ("final_loss", "zeroshot_top1", "retrieval_top1", "median_step_ms", "skipped_images")
        print(", ".join(f"{k} {summary[k]:.4g}" for k in keys if isinstance(summary.get(k), (int, float))))
        print(f"outputs in {out}/ (metrics.jsonl, curves.png, checkpoint.pt, summary.json)")
    return 1 if summary.get("stopped") else 0


if __name__ == "__main__":
    sys.exit(main())
