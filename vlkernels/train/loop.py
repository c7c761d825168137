"""The training loop: data, model, loss, optimiser, evaluation, checkpoints, metrics (one run).

Every random choice of a step (its batch, its augmentations, the PSD alpha, the learning rate) is a pure
function of (seed, step), and the checkpoint holds the model and optimiser state, so ``--resume``
continues exactly the trajectory of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

from vlkernels.train import data as data_mod
from vlkernels.train.config import TrainConfig, UsageError, check_config
from vlkernels.train.gradcache import forward_backward
from vlkernels.train.model import TinyClip, param_groups
from vlkernels.train.report import MetricsLog, PeakMemory, Progress, atomic_write, plot_runs, save_json
from vlkernels.train.tokenizer import HFTokenizer, WordTokenizer, from_state


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 0 (open_clip's default schedule)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, t)))


def make_loss_fn(cfg: TrainConfig, step: int, world: int):
    """The loss of step ``step``: ``fn(image [B, E], text [B, E], scale) -> 0-d``, vlkernels or naive."""
    from vlkernels import contrastive_loss, progressive_alpha, soft_target_loss

    impl = "naive" if cfg.loss == "naive" else "auto"
    smoothing = 0.1 if cfg.recipe == "improved" else 0.0
    extra = {"gather": True} if world > 1 else {}
    if cfg.psd:
        alpha = progressive_alpha(step, cfg.steps, cfg.alpha_max)
        return lambda i, t, s: soft_target_loss(i, t, s, alpha, label_smoothing=smoothing, impl=impl, **extra)
    return lambda i, t, s: contrastive_loss(i, t, s, label_smoothing=smoothing, impl=impl, **extra)


def strong_view(images_u8: torch.Tensor, size: int, seed: int, synthetic: bool, device) -> torch.Tensor:
    """The improved recipe's image view: random-resized crop, colour jitter (and, for real data, flips and
    grayscale) in one fused pass. The synthetic captions name colours and left/right positions, so there
    the view keeps hue, colour and orientation."""
    from vlkernels.augment import fused_augment

    g = torch.Generator(device=device).manual_seed(seed)
    if synthetic:
        kw = dict(scale=(0.6, 1.0), hflip_p=0.0, jitter=(0.3, 0.3, 0.2, 0.0), jitter_p=0.8, grayscale_p=0.0)
    else:
        kw = dict(scale=(0.4, 1.0), hflip_p=0.5, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2)
    return fused_augment(
        images_u8.to(device), size, generator=g, mean=data_mod.MEAN, std=data_mod.STD, **kw
    ).float()


@torch.no_grad()
def zero_shot(model: TinyClip, tokenizer, images_u8: torch.Tensor, labels: torch.Tensor, device) -> float:
    """Top-1 accuracy of nearest class-prompt embedding (prompt ensemble averaged, as CLIP)."""
    was_training = model.training
    model.eval()
    _, prompts = data_mod.class_prompts()
    flat = [p for ps in prompts for p in ps]
    tok, lengths = tokenizer(flat)
    txt = model.encode_text(tok.to(device), lengths.to(device)).view(len(prompts), len(prompts[0]), -1)
    classes = torch.nn.functional.normalize(txt.mean(1), dim=-1)
    correct = 0
    for start in range(0, len(labels), 512):
        img = model.encode_image(data_mod.normalize(images_u8[start : start + 512]).to(device))
        correct += (img @ classes.T).argmax(1).cpu().eq(labels[start : start + 512]).sum().item()
    model.train(was_training)
    return correct / len(labels)


@torch.no_grad()
def retrieval(model: TinyClip, tokenizer, dataset, device, limit: int = 1024) -> float:
    """Image->text top-1 retrieval on (up to ``limit`` readable pairs of) a validation CSV."""
    was_training = model.training
    model.eval()
    images, captions, _ = dataset.batch(list(range(min(limit, len(dataset)))))
    if len(captions) < 2:
        return float("nan")
    img = model.encode_image(data_mod.normalize(images).to(device))
    tok, lengths = tokenizer(captions)
    txt = model.encode_text(tok.to(device), lengths.to(device))
    model.train(was_training)
    return (img @ txt.T).argmax(1).cpu().eq(torch.arange(len(captions))).float().mean().item()


def _dist_setup(cfg: TrainConfig) -> tuple[int, int, torch.device, bool]:
    """(world, rank, device, whether this call created the process group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(cfg.device)
    if world <= 1:
        return 1, 0, device, False
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = torch.device("cuda", torch.cuda.current_device())
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_world_size(), dist.get_rank(), device, created


def _world_from_env() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise UsageError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def _build_tokenizer(cfg: TrainConfig, captions: list[str] | None):
    """--tokenizer's file, or the built-in word-level tokenizer (the synthetic vocabulary, or the words of
    the training captions)."""
    ctx = cfg.model.context_length
    if cfg.tokenizer:
        try:
            return HFTokenizer(cfg.tokenizer, ctx)
        except RuntimeError:
            raise
        except Exception as e:  # noqa: BLE001 - the tokenizers package raises plain Exceptions
            raise UsageError(f"--tokenizer {cfg.tokenizer}: cannot load it ({e})") from e
    if captions is None:
        return WordTokenizer(data_mod.synthetic_vocab(), ctx)
    return WordTokenizer.build(captions, ctx)


def _build_data(cfg: TrainConfig):
    """(train set, tokenizer, eval callable(model, tokenizer, device) -> (metric name, value) or None).

    The evaluation takes the tokenizer as an argument: on resume the run uses the checkpoint's tokenizer,
    which the evaluation must use too."""
    if cfg.train_data is None:
        images, captions, _ = data_mod.synthetic(cfg.synthetic_train_size, cfg.seed, cfg.model.image_size)
        val_images, _, val_labels = data_mod.synthetic(
            cfg.synthetic_val_size, cfg.seed + 7919, cfg.model.image_size
        )

        def evaluate(model, tokenizer, device):
            return "zeroshot_top1", zero_shot(model, tokenizer, val_images, val_labels, device)

        return data_mod.ImageTextSet(images, captions), _build_tokenizer(cfg, None), evaluate
    train = data_mod.CsvImageTextSet(
        cfg.train_data, cfg.csv_img_key, cfg.csv_caption_key, cfg.model.image_size, cfg.csv_separator
    )
    tokenizer = _build_tokenizer(cfg, train.captions)
    if cfg.val_data is None:
        return train, tokenizer, None
    val = data_mod.CsvImageTextSet(
        cfg.val_data,
        cfg.csv_img_key,
        cfg.csv_caption_key,
        cfg.model.image_size,
        cfg.csv_separator,
        option="--val-data",
    )
    return train, tokenizer, lambda m, tok, dev: ("retrieval_top1", retrieval(m, tok, val, dev))


def config_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


_BOOKKEEPING = {
    "out",
    "eval_every",
    "save_every",
    "resume",
    "stop_at_step",
    "max_nonfinite",
    "progress",
    "plot",
    "overwrite",
}


def _trajectory_changes(saved: dict, now: dict) -> list[str]:
    """Settings that differ between a checkpoint's run and this one and change the training itself."""
    return [k for k in now if k not in _BOOKKEEPING and k in saved and saved[k] != now[k]]


_CKPT_KEYS = ("model", "optimizer", "step", "nonfinite", "skipped_images", "tokenizer", "model_config")


def _resume_path(cfg: TrainConfig) -> str:
    if cfg.resume in ("latest", "auto"):
        path = os.path.join(cfg.out, "checkpoint.pt")
        if not os.path.exists(path):
            raise UsageError(
                f"--resume {cfg.resume}: no checkpoint at {path} yet (a run saves one every --save-every "
                "steps, at --stop-at-step and at its end); start the run without --resume"
            )
        return path
    path = cfg.resume
    if os.path.isdir(path):  # a run directory
        path = os.path.join(path, "checkpoint.pt")
    if not os.path.isfile(path):
        raise UsageError(f"--resume {cfg.resume}: no checkpoint file at {path}")
    return path


def _load_checkpoint(cfg: TrainConfig, path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, not a torch file, unpickling refused, ...
        raise UsageError(f"--resume: cannot read the checkpoint {path} ({type(e).__name__}: {e})") from e
    missing = [k for k in _CKPT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise UsageError(f"--resume: {path} is not a checkpoint of this trainer (no {', '.join(missing)})")
    return state


def _check_resume(cfg: TrainConfig, state: dict, path: str, tokenizer) -> None:
    """The settings a checkpoint cannot be resumed under: a different data source, tokenizer or model
    shape (the weights or the vocabulary would not fit), or a step at or past --steps / --stop-at-step."""
    saved = state.get("config", {}) if isinstance(state.get("config"), dict) else {}
    if "train_data" in saved and (saved["train_data"] is None) != (cfg.train_data is None):
        was = "the synthetic set" if saved["train_data"] is None else f"--train-data {saved['train_data']}"
        now = "the synthetic set" if cfg.train_data is None else f"--train-data {cfg.train_data}"
        raise UsageError(
            f"--resume: {path} was trained on {was}, this run uses {now}; pass the same data "
            "(or start a new run under another --name)"
        )
    kind = state["tokenizer"].get("kind") if isinstance(state["tokenizer"], dict) else None
    if kind != ("hf" if cfg.tokenizer else "word"):
        raise UsageError(
            f"--resume: {path} used the {'--tokenizer file' if kind == 'hf' else 'built-in'} "
            "tokenizer, this run the other one; pass the same --tokenizer"
        )
    saved_model = state["model_config"]
    shape = [
        k
        for k in dataclasses.asdict(cfg.model)
        if k != "vocab_size" and saved_model.get(k) != getattr(cfg.model, k)
    ]
    if shape:
        opts = ", ".join(
            f"--{k.replace('_', '-')} {saved_model.get(k)} (now {getattr(cfg.model, k)})" for k in shape
        )
        raise UsageError(f"--resume: {path} has another model shape: {opts}; pass the checkpoint's values")
    if saved_model.get("vocab_size") != tokenizer.vocab_size:
        raise UsageError(
            f"--resume: {path} has a vocabulary of {saved_model.get('vocab_size')} tokens, the "
            f"tokenizer {tokenizer.vocab_size}; pass the run's --tokenizer"
        )
    step = state["step"]
    if step >= cfg.steps:
        raise UsageError(
            f"--resume: {path} is at step {step}, the run has --steps {cfg.steps}: nothing left "
            "to train (a larger --steps continues it, on a changed schedule)"
        )
    if cfg.stop_at_step is not None and cfg.stop_at_step <= step:
        raise UsageError(
            f"--resume: {path} is at step {step}, at or past --stop-at-step {cfg.stop_at_step}: "
            "nothing to train"
        )


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) one training; returns the summary (also written to ``<out>/summary.json``).

    The summary's ``status`` is ``completed``, ``paused`` (``stop_at_step``), ``stopped`` (the non-finite
    loss limit, or no step could be trained) or ``failed`` (an exception, which is re-raised after the
    summary is written); ``stopped`` holds the reason whenever the run did not end as asked.
    ``UsageError``: a bad setting or input file, found before anything is written."""
    check_config(cfg, _world_from_env())
    world, rank, device, created = _dist_setup(cfg)
    if not created:
        return _train(cfg, world, rank, device)
    # torch 2.13 + gloo: a process that exits with its group alive aborts about half the time
    # ("terminate called without an active exception"), so the group this call made is torn down here:
    # after a barrier when every rank finished (no barrier after an error: peers may be mid-collective).
    try:
        summary = _train(cfg, world, rank, device)
        dist.barrier()
        return summary
    finally:
        dist.destroy_process_group()


def _train(cfg: TrainConfig, world: int, rank: int, device: torch.device) -> dict:
    lead = rank == 0
    # Everything that can be wrong with the options, the files or the checkpoint is found here, before
    # the first write (metrics.jsonl, config.json, checkpoint.pt).
    train_set, tokenizer, evaluate = _build_data(cfg)
    if len(train_set) < cfg.batch_size * world:
        what = "--train-data " + cfg.train_data if cfg.train_data else "--synthetic-train-size"
        raise UsageError(
            f"{what}: {len(train_set)} samples, fewer than one global batch (--batch-size "
            f"{cfg.batch_size} x {world} process(es))"
        )

    ckpt_path = os.path.join(cfg.out, "checkpoint.pt")
    state, path = None, None
    if cfg.resume:
        path = _resume_path(cfg)
        state = _load_checkpoint(cfg, path)
        if isinstance(tokenizer, WordTokenizer) and state["tokenizer"].get("kind") == "word":
            tokenizer = from_state(state["tokenizer"])
        _check_resume(cfg, state, path, tokenizer)
        changed = _trajectory_changes(state.get("config", {}), config_dict(cfg))
        if changed and rank == 0:
            print(
                f"warning: resuming with changed settings ({', '.join(changed)}): the run will not follow "
                "the trajectory of an uninterrupted one",
                file=sys.stderr,
            )
    elif os.path.exists(ckpt_path) and not cfg.overwrite:
        raise UsageError(
            f"{cfg.out} already holds a run (checkpoint.pt): continue it with --resume latest, "
            "start afresh in it with --overwrite, or pick another --name"
        )

    model_cfg = dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(cfg.seed)
    model = TinyClip(model_cfg).to(device)
    if world > 1:
        for p in model.parameters():
            dist.broadcast(p.data, src=0)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    start, nonfinite, skipped, skipped_steps = 0, 0, 0, 0
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UsageError(f"--resume: {path} does not fit this model: {e}") from e
        start, nonfinite, skipped = state["step"], state["nonfinite"], state["skipped_images"]
        skipped_steps = state.get("skipped_steps", 0)

    metrics = None
    if lead:
        try:
            metrics = MetricsLog(os.path.join(cfg.out, "metrics.jsonl"), start if state is not None else None)
        except ValueError as e:  # a damaged line before the last one (a torn last line is only dropped)
            raise UsageError(f"--resume: {e}; repair or delete that line") from e
    if lead and state is None:
        save_json(config_dict(cfg), os.path.join(cfg.out, "config.json"))
    name = os.path.basename(os.path.normpath(cfg.out))
    progress = Progress(cfg.steps, name, start=start, enabled=cfg.progress and lead)
    if state is not None:
        progress.message(f"[{name}] resumed from {path} at step {start}")
    saved_step = start if state is not None else None

    def save(step: int) -> None:
        nonlocal saved_step
        if not lead:
            return
        ckpt = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "nonfinite": nonfinite,
            "skipped_images": skipped,
            "skipped_steps": skipped_steps,
            "tokenizer": tokenizer.state(),
            "model_config": model_cfg.to_dict(),
            "config": config_dict(cfg),
            "world_size": world,
        }
        atomic_write(ckpt_path, lambda tmp: torch.save(ckpt, tmp))
        saved_step = step

    def run_eval(step: int) -> dict | None:
        if evaluate is None or not lead:
            return None
        key, value = evaluate(model, tokenizer, device)
        if not math.isfinite(value):  # no 2 readable validation pairs: JSON has no NaN, say it instead
            value = None
            progress.message(f"[{name}] step {step}: {key} n/a (fewer than 2 readable --val-data images)")
        else:
            progress.message(f"[{name}] step {step}: {key} {value:.3f}")
        rec = {"type": "eval", "step": step, key: value}
        metrics.write(rec)
        return rec

    model.train()
    mem = PeakMemory(device)
    mem.start()
    step_ms, last_eval, stopped, error = [], None, None, None
    end = cfg.steps if cfg.stop_at_step is None else min(cfg.steps, cfg.stop_at_step)
    done = start  # steps completed (the checkpoint's step)
    updating = False  # inside the parameter update: the model is then neither step `done`'s nor the next's
    try:
        for step in range(start, end):
            t_iter = time.perf_counter()
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            idx = data_mod.batch_indices(len(train_set), cfg.batch_size, step, cfg.seed, rank, world)
            images_u8, captions, n_skip = train_set.batch(idx)
            skipped += n_skip
            n = len(captions)
            if world > 1:  # the gathered loss needs the same batch size on every rank
                n_t = torch.tensor([n], device=device)
                dist.all_reduce(n_t, op=dist.ReduceOp.MIN)
                n = int(n_t)
                images_u8, captions = images_u8[:n], captions[:n]
            if n < 2:
                progress.message(f"[{name}] step {step + 1}: fewer than 2 readable samples, step skipped")
                skipped_steps += 1
                done = step + 1  # a skipped step is consumed (its batch is not redrawn on resume)
                continue
            step_seed = (cfg.seed * 1_000_003 + step) * 4099 + rank
            if cfg.recipe == "improved":
                from vlkernels.train.textaug import augment_captions

                synthetic = cfg.train_data is None
                images = strong_view(images_u8, model_cfg.image_size, step_seed, synthetic, device)
                captions = augment_captions(captions, step_seed)
            else:
                images = data_mod.normalize(images_u8).to(device)
            tokens, lengths = tokenizer(captions)
            tokens, lengths = tokens.to(device), lengths.to(device)

            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss_fn = make_loss_fn(cfg, step, world)
            loss = forward_backward(model, images, tokens, lengths, loss_fn, cfg.grad_cache_chunks)
            if not bool(torch.isfinite(loss)):  # the full-batch loss: the same on every rank
                nonfinite += 1
                done = step + 1
                opt.zero_grad(set_to_none=True)
                if lead:
                    rec = {"type": "nonfinite", "step": step + 1, "loss": float(loss), "count": nonfinite}
                    metrics.write(rec)
                progress.message(
                    f"[{name}] step {step + 1}: non-finite loss {float(loss)}, step skipped "
                    f"({nonfinite}/{cfg.max_nonfinite})"
                )
                if nonfinite >= cfg.max_nonfinite:
                    stopped = f"stopped after {nonfinite} non-finite losses (--max-nonfinite)"
                    progress.message(f"[{name}] {stopped}")
                    break
                continue
            if world > 1:
                for p in model.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad.div_(world)
            updating = True
            opt.step()
            model.clamp_logit_scale()
            done, updating = step + 1, False
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            step_ms.append((now - t0) * 1e3)
            rate = n * world / (now - t_iter)
            if lead:
                metrics.write(
                    {
                        "type": "train",
                        "step": step + 1,
                        "loss": float(loss),
                        "lr": lr,
                        "logit_scale": model.logit_scale.exp().item(),
                        "alpha": make_alpha(cfg, step),
                        "batch": n * world,
                        "step_ms": step_ms[-1],
                        "samples_per_s": rate,
                        "skipped_images": skipped,
                        "nonfinite": nonfinite,
                    }
                )
            progress.update(step + 1, float(loss), rate)
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
                last_eval = run_eval(step + 1)
            if cfg.save_every and (step + 1) % cfg.save_every == 0:
                save(step + 1)
    except KeyboardInterrupt:
        if not updating:
            save(done)
        progress.message(
            f"[{name}] interrupted: checkpoint at step {saved_step}; continue with --resume latest"
        )
        _finish(
            cfg,
            lead,
            metrics,
            name,
            _summary(
                cfg,
                name,
                done,
                start,
                step_ms,
                mem,
                nonfinite,
                skipped,
                skipped_steps,
                saved_step,
                "interrupted",
                "interrupted (KeyboardInterrupt)",
                world,
                device,
            ),
            None,
        )
        raise
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        stopped = f"failed at step {done + 1}: {error}"
        try:
            if not updating:  # the model and optimiser are step `done`'s: keep that progress
                save(done)
        except Exception as save_error:  # noqa: BLE001 - the original error is the one to report
            progress.message(f"[{name}] could not save a checkpoint after the failure: {save_error}")
        summary = _summary(
            cfg,
            name,
            done,
            start,
            step_ms,
            mem,
            nonfinite,
            skipped,
            skipped_steps,
            saved_step,
            "failed",
            stopped,
            world,
            device,
        )
        summary["error"] = error
        try:
            _finish(cfg, lead, metrics, name, summary, None)
        except Exception as finish_error:  # noqa: BLE001
            progress.message(f"[{name}] could not write the summary after the failure: {finish_error}")
        raise
    final_step = done
    trained = len(step_ms)
    if stopped is None and end > start and trained == 0:
        why = "no step ran"
        if skipped_steps:
            why = (
                f"every batch had fewer than 2 readable samples ({skipped} unreadable images); check "
                f"--train-data {cfg.train_data}'s image paths"
            )
        stopped = f"no step was trained: {why}"
    save(final_step)
    if final_step == cfg.steps and stopped is None:
        last_eval = run_eval(final_step) or last_eval
    if stopped is not None:
        status = "stopped"
    else:
        status = "completed" if final_step >= cfg.steps else "paused"
    summary = _summary(
        cfg,
        name,
        final_step,
        start,
        step_ms,
        mem,
        nonfinite,
        skipped,
        skipped_steps,
        saved_step,
        status,
        stopped,
        world,
        device,
    )
    _finish(cfg, lead, metrics, name, summary, last_eval)
    if stopped is not None and lead:
        print(f"[{name}] {stopped}", file=sys.stderr)
    return summary


def _summary(
    cfg,
    name,
    done,
    start,
    step_ms,
    mem,
    nonfinite,
    skipped,
    skipped_steps,
    saved_step,
    status,
    stopped,
    world,
    device,
) -> dict:
    return {
        "name": name,
        "loss_impl": cfg.loss,
        "status": status,
        "stopped": stopped,
        "steps_done": done,
        "steps": cfg.steps,
        "steps_trained": len(step_ms),  # optimiser steps of this invocation
        "skipped_steps": skipped_steps,  # steps without 2 readable samples, over the whole run
        "checkpoint_step": saved_step,
        "final_loss": None,
        "median_step_ms": statistics.median(step_ms) if step_ms else None,
        "peak_memory_bytes": mem.peak(),
        "nonfinite": nonfinite,
        "skipped_images": skipped,
        "world_size": world,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _finish(cfg: TrainConfig, lead: bool, metrics, name: str, summary: dict, last_eval: dict | None) -> None:
    """The lead process: the final loss and evaluation into the summary, an "end" record (status, reason)
    into metrics.jsonl, summary.json, the plot."""
    if not lead or metrics is None:
        return
    from vlkernels.train.report import read_jsonl

    metrics.write(
        {
            "type": "end",
            "step": summary["steps_done"],
            "status": summary["status"],
            "reason": summary["stopped"],
        }
    )
    records = read_jsonl(metrics.path)
    train_recs = [r for r in records if r.get("type") == "train"]
    if train_recs:
        summary["final_loss"] = train_recs[-1]["loss"]
    if last_eval is not None:
        summary.update({k: v for k, v in last_eval.items() if k not in ("type", "step")})
    save_json(summary, os.path.join(cfg.out, "summary.json"))
    if cfg.plot:
        plot_runs({name: records}, os.path.join(cfg.out, "curves.png"), f"{name}: {cfg.loss} loss")


def make_alpha(cfg: TrainConfig, step: int) -> float | None:
    if not cfg.psd:
        return None
    from vlkernels import progressive_alpha

    return progressive_alpha(step, cfg.steps, cfg.alpha_max)
