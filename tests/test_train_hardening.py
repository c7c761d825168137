"""The trainer against hostile inputs: bad option values, bad CSVs, damaged or mismatched checkpoints and
metrics, runs that train nothing, stop or fail. Each is reported (naming the option / file / line) before
anything is written, or, once the run has started, in the summary, metrics.jsonl and the exit code."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest
import torch
from test_train import TINY, _write_images, losses, params, tiny_cfg  # tests/ is on sys.path

from vlkernels.train import cli, compare, loop
from vlkernels.train.config import TrainConfig, UsageError, check_config
from vlkernels.train.report import read_jsonl
from vlkernels.train.tokenizer import WordTokenizer

TINY_ARGS = [
    "--synthetic-train-size", "128", "--synthetic-val-size", "32", "--image-size", "16", "--vision-width",
    "32", "--text-width", "32", "--embed-dim", "32", "--heads", "2", "--vision-layers", "1", "--no-progress",
    "--no-plot", "--steps", "4", "--batch-size", "16", "--warmup", "1", "--eval-every", "0", "--save-every",
    "0",
]  # fmt: skip


def run_cli(tmp_path, *args, name="run"):
    return cli.main(["--loss", "vlkernels", *TINY_ARGS, "--out-dir", str(tmp_path), "--name", name, *args])


def snapshot(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# --- 5: bad option values are usage errors (exit code 2, nothing written), not tracebacks or no-ops ------

BAD_OPTIONS = [
    (["--batch-size", "-4"], "--batch-size"), (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "1"], "--batch-size"), (["--synthetic-val-size", "0"], "--synthetic-val-size"),
    (["--synthetic-val-size", "-1"], "--synthetic-val-size"),
    (["--synthetic-train-size", "0"], "--synthetic-train-size"),
    (["--synthetic-train-size", "8"], "--synthetic-train-size"),  # smaller than one batch
    (["--steps", "0"], "--steps"), (["--steps", "-3"], "--steps"), (["--lr", "0"], "--lr"),
    (["--lr", "-1e-3"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"),
    (["--weight-decay", "-0.1"], "--weight-decay"), (["--weight-decay", "nan"], "--weight-decay"),
    (["--warmup", "-1"], "--warmup"), (["--seed", "-1"], "--seed"), (["--seed", str(2**40)], "--seed"),
    (["--eval-every", "-5"], "--eval-every"), (["--save-every", "-5"], "--save-every"),
    (["--stop-at-step", "0"], "--stop-at-step"), (["--stop-at-step", "-2"], "--stop-at-step"),
    (["--max-nonfinite", "0"], "--max-nonfinite"), (["--grad-cache-chunks", "0"], "--grad-cache-chunks"),
    (["--grad-cache-chunks", "-2"], "--grad-cache-chunks"), (["--psd", "--alpha-max", "1.5"], "--alpha-max"),
    (["--alpha-max", "-0.1"], "--alpha-max"), (["--alpha-max", "nan"], "--alpha-max"),
    (["--heads", "3"], "--heads"), (["--heads", "0"], "--heads"), (["--heads", "-2"], "--heads"),
    (["--image-size", "0"], "--image-size"), (["--patch-size", "3"], "--patch-size"),
    (["--patch-size", "0"], "--patch-size"), (["--image-size", "12"], "--patch-size"),
    (["--vision-width", "0"], "--vision-width"), (["--vision-layers", "-1"], "--vision-layers"),
    (["--vision-layers", "0"], "--vision-layers"), (["--text-layers", "0"], "--text-layers"),
    (["--text-width", "0"], "--text-width"), (["--embed-dim", "0"], "--embed-dim"),
    (["--embed-dim", "-8"], "--embed-dim"), (["--context-length", "1"], "--context-length"),
    (["--context-length", "0"], "--context-length"), (["--threads", "0"], "--threads"),
    (["--threads", "-2"], "--threads"), (["--memory-budget", "0"], "--memory-budget"),
    (["--memory-budget", "-1GiB"], "--memory-budget"), (["--memory-budget", "lots"], "--memory-budget"),
    (["--memory-budget", "inf"], "--memory-budget"), (["--memory-budget", "nanG"], "--memory-budget"),
    (["--memory-max-batch", "0"], "--memory-max-batch"), (["--csv-separator", "ab"], "--csv-separator"),
    (["--csv-separator", ""], "--csv-separator"), (["--device", "foo"], "--device"),
    (["--device", "cuda:99"], "--device"), (["--val-data", "x.csv"], "--val-data"),
    (["--name", "../escape"], "--name"), (["--resume", "latest", "--name", ""], "--resume"),
    (["--resume", ""], "--resume"),
]  # fmt: skip


@pytest.mark.parametrize("args,option", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option_values_are_usage_errors(tmp_path, capsys, args, option):
    base = ["--loss", "vlkernels", *TINY_ARGS, "--out-dir", str(tmp_path / "out")]
    if "--name" not in args:
        base += ["--name", "run"]
    with pytest.raises(SystemExit) as e:
        cli.main(base + args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and option in err and "usage:" in err, err
    assert not (tmp_path / "out").exists()  # nothing written


def test_out_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for out_dir, name in ((tmp_path / "afile", "run"), (tmp_path, "afile")):
        with pytest.raises(SystemExit) as e:
            cli.main(["--loss", "naive", *TINY_ARGS, "--out-dir", str(out_dir), "--name", name])
        assert e.value.code == 2 and "is not a directory" in capsys.readouterr().err


def test_bad_values_through_the_python_api(tmp_path):
    """The same checks guard train(): no negative-slice batch, no ZeroDivisionError, nothing written."""
    for kw in ({"batch_size": -4}, {"batch_size": 1}, {"synthetic_val_size": 0}, {"steps": 2.5},
               {"lr": float("nan")}, {"loss": "fast"}, {"model": TINY.__class__(heads=3)}):  # fmt: skip
        with pytest.raises(UsageError):
            loop.train(tiny_cfg(tmp_path / "run", **kw))
        assert not (tmp_path / "run").exists(), kw
    check_config(tiny_cfg(tmp_path))  # the tests' own configuration is valid
    problems = loop.check_config.__globals__["problems"](TrainConfig(batch_size=0, steps=0, lr=0.0))
    assert len(problems) == 3  # every problem is listed at once, not the first only


def test_world_size_counts_in_the_batch_check(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(UsageError, match="x 4 process"):
        check_config(TrainConfig(synthetic_train_size=256, batch_size=128), world=4)


# --- 5: a run that trained nothing exits non-zero --------------------------------------------------------


def _bad_csv(tmp_path):
    (tmp_path / "adir.png").mkdir()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    rows = [("missing.png", "a missing one"), ("adir.png", "a directory"), ("broken.png", "broken")] * 4
    path = tmp_path / "bad.csv"
    path.write_text("filepath,title\n" + "".join(f"{p},{c}\n" for p, c in rows))
    return path


def test_run_that_trains_nothing_fails(tmp_path, capsys):
    pytest.importorskip("PIL")
    path = _bad_csv(tmp_path)
    code = run_cli(tmp_path, "--train-data", str(path), "--batch-size", "4", "--steps", "3")
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert code == 1 and "no step was trained" in out and "status stopped" in out
    assert summary["status"] == "stopped" and summary["steps_trained"] == 0 and summary["skipped_steps"] == 3
    assert "no step was trained" in summary["stopped"] and summary["final_loss"] is None
    end = read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]
    assert end["type"] == "end" and end["status"] == "stopped"


def test_unreadable_validation_set_is_reported_not_nan(tmp_path):
    pytest.importorskip("PIL")
    rows = _write_images(tmp_path, 6)
    good = tmp_path / "good.tsv"
    good.write_text("filepath\ttitle\n" + "".join(f"{p}\t{c}\n" for p, c in rows))
    cfg = tiny_cfg(tmp_path / "run", train_data=str(good), val_data=str(_bad_csv(tmp_path)), batch_size=4)
    summary = loop.train(dataclasses.replace(cfg, steps=2, eval_every=1))
    assert summary["status"] == "completed" and summary["retrieval_top1"] is None
    text = (tmp_path / "run" / "summary.json").read_text() + (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "NaN" not in text  # strict JSON


def test_plot_of_a_retrieval_run(tmp_path):
    """A CSV run with --val-data logs retrieval_top1, not zeroshot_top1: its plot used to raise KeyError."""
    pytest.importorskip("matplotlib")
    from vlkernels.train.report import plot_runs

    recs = [{"type": "train", "step": 1, "loss": 2.0}, {"type": "eval", "step": 1, "retrieval_top1": 0.5},
            {"type": "eval", "step": 2, "retrieval_top1": None}, {"type": "end", "step": 2}]  # fmt: skip
    assert plot_runs({"run": recs}, str(tmp_path / "c.png"), "t") and (tmp_path / "c.png").stat().st_size


def test_some_skipped_steps_still_succeed(tmp_path):
    """One step away: a CSV where only some batches are unreadable trains and counts the skipped steps."""
    pytest.importorskip("PIL")
    rows = _write_images(tmp_path, 6)
    path = tmp_path / "mixed.tsv"
    path.write_text("filepath\ttitle\n" + "".join(f"{p}\t{c}\n" for p, c in rows))
    summary = loop.train(tiny_cfg(tmp_path / "run", train_data=str(path), batch_size=2, steps=8))
    assert summary["status"] == "completed" and summary["stopped"] is None
    assert summary["steps_trained"] + summary["skipped_steps"] == 8 and summary["steps_trained"] > 0


# --- 6: bad CSV files --------------------------------------------------------------------------------------


def _csv_error(tmp_path, content: bytes, name="t.csv", **kw) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UsageError) as e:
        loop.train(tiny_cfg(tmp_path / "run", train_data=str(path), batch_size=2, **kw))
    assert not (tmp_path / "run").exists()
    return str(e.value)


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"filepath,title\na.png,one\nb.png\nc.png,three\n", ["line 3", "'title'", "--train-data"]),
        (b"title,filepath\none,a.png\ntwo\n", ["line 3", "'filepath'"]),
        (b"filepath,title\na.png,caf\xe9\n", ["line 2", "not UTF-8"]),
        (b"filepath,title\n" + b"a.png,x\n" * 3 + b"\xff\xfe,y\n", ["line 5", "not UTF-8"]),
        (b"", ["empty file"]),
        (b"filepath,title\n", ["no rows"]),
        (b"path,caption\na.png,x\n", ["--csv-img-key 'filepath'", "--csv-caption-key 'title'"]),
        (b'filepath,title\na.png,"unterminated\nb.png,y\n', ["malformed CSV"]),
        (b"filepath,title\na.png,x\0y\n", ["line 2"]),
    ],
    ids=[
        "no-caption",
        "no-path",
        "latin-1",
        "late-bad-byte",
        "empty",
        "header-only",
        "wrong-columns",
        "bad-quote",
        "nul-byte",
    ],  # fmt: skip
)
def test_bad_csv_is_a_clear_error(tmp_path, content, expected):
    message = _csv_error(tmp_path, content)
    assert str(tmp_path / "t.csv") in message
    for part in expected:
        assert part in message, message


def test_missing_csv_and_val_csv(tmp_path):
    with pytest.raises(UsageError, match="--train-data .*nope.csv: cannot read"):
        loop.train(tiny_cfg(tmp_path / "run", train_data=str(tmp_path / "nope.csv")))
    good = tmp_path / "good.csv"
    good.write_text("filepath,title\n" + "a.png,x\n" * 4)
    with pytest.raises(UsageError, match="--val-data .*: cannot read"):
        loop.train(tiny_cfg(tmp_path / "run", train_data=str(good), val_data=str(tmp_path), batch_size=2))
    with pytest.raises(UsageError, match="fewer than one global batch"):
        loop.train(tiny_cfg(tmp_path / "run", train_data=str(good), batch_size=8))
    assert not (tmp_path / "run").exists()


def test_csv_with_byte_order_mark_trains(tmp_path):
    pytest.importorskip("PIL")
    rows = _write_images(tmp_path, 6)
    for name, sep in (("bom.csv", ","), ("bom.tsv", "\t")):
        text = f"filepath{sep}title\n" + "".join(f"{p}{sep}{c}\n" for p, c in rows)
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
        summary = loop.train(tiny_cfg(tmp_path / name.replace(".", "_"), train_data=str(tmp_path / name),
                                      batch_size=4, steps=2))  # fmt: skip
        assert summary["status"] == "completed"


def test_cli_reports_csv_errors_without_traceback(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_bytes(b"filepath,title\na.png,one\nb.png\n")
    assert run_cli(tmp_path, "--train-data", str(path), "--batch-size", "2") == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "Traceback" not in err and "usage:" in err
    assert not (tmp_path / "run").exists()


# --- 6: resume problems are found before anything is overwritten --------------------------------------------


def test_resume_latest_before_the_first_checkpoint(tmp_path, capsys):
    assert run_cli(tmp_path, "--resume", "latest") == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "without --resume" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(UsageError, match="no checkpoint file"):
        loop.train(tiny_cfg(tmp_path / "r2", resume=str(tmp_path / "nothing.pt")))


def test_resume_csv_run_with_synthetic_data_is_refused(tmp_path):
    pytest.importorskip("PIL")
    rows = _write_images(tmp_path, 9)
    path = tmp_path / "t.tsv"
    path.write_text("filepath\ttitle\n" + "".join(f"{p}\t{c}\n" for p, c in rows))
    run = tmp_path / "run"
    loop.train(tiny_cfg(run, train_data=str(path), steps=4, batch_size=4))
    before = snapshot(run)
    with pytest.raises(UsageError, match="trained on --train-data .*this run uses the synthetic set"):
        loop.train(tiny_cfg(run, steps=8, batch_size=4, resume="latest", eval_every=2))
    with pytest.raises(UsageError, match="trained on the synthetic set"):  # and the other way round
        loop.train(tiny_cfg(tmp_path / "syn", steps=2))
        loop.train(tiny_cfg(tmp_path / "syn", steps=4, train_data=str(path), batch_size=4, resume="latest"))
    assert snapshot(run) == before


def test_resume_with_another_model_shape_or_a_damaged_checkpoint(tmp_path):
    run = tmp_path / "run"
    loop.train(tiny_cfg(run, steps=4))
    before = snapshot(run)
    wide = TINY.__class__(**{**TINY.to_dict(), "embed_dim": 16})
    with pytest.raises(UsageError, match="--embed-dim 32 \\(now 16\\)"):
        loop.train(tiny_cfg(run, steps=8, resume="latest", model=wide))
    with pytest.raises(UsageError, match="at step 4, the run has --steps 4: nothing left"):
        loop.train(tiny_cfg(run, steps=4, resume="latest"))
    with pytest.raises(UsageError, match="--stop-at-step 3"):
        loop.train(tiny_cfg(run, steps=8, stop_at_step=3, resume="latest"))
    assert snapshot(run) == before
    other = tmp_path / "damaged"
    other.mkdir()
    (other / "checkpoint.pt").write_bytes(before["checkpoint.pt"][:5000])  # truncated copy
    with pytest.raises(UsageError, match="cannot read the checkpoint"):
        loop.train(tiny_cfg(other, steps=8, resume="latest"))
    torch.save({"weights": 1}, other / "checkpoint.pt")
    with pytest.raises(UsageError, match="not a checkpoint of this trainer"):
        loop.train(tiny_cfg(other, steps=8, resume="latest"))
    assert sorted(os.listdir(other)) == ["checkpoint.pt"]


def test_resume_from_a_run_directory(tmp_path, capsys):
    """--resume accepts the run directory (continues there) as well as the checkpoint file."""
    assert run_cli(tmp_path, "--stop-at-step", "2") == 0
    assert cli.main(["--loss", "vlkernels", *TINY_ARGS, "--resume", str(tmp_path / "run")]) == 0
    assert sorted(losses(tmp_path / "run")) == [1, 2, 3, 4]
    assert "status completed" in capsys.readouterr().out


def test_fresh_run_does_not_clobber_an_existing_one(tmp_path, capsys):
    assert run_cli(tmp_path, "--stop-at-step", "2") == 0
    before = snapshot(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        run_cli(tmp_path)  # forgot --resume
    assert e.value.code == 2 and "--resume latest" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--overwrite"):
        loop.train(tiny_cfg(tmp_path / "run", steps=4))
    assert snapshot(tmp_path / "run") == before
    assert run_cli(tmp_path, "--overwrite") == 0


def test_resume_evaluates_with_the_checkpoints_tokenizer(tmp_path):
    """The CSV gained rows (new words) between the runs: the resumed run keeps the checkpoint's vocabulary,
    and so must its evaluation (it used the rebuilt one: token ids past the embedding, IndexError)."""
    pytest.importorskip("PIL")
    rows = _write_images(tmp_path, 9)
    path = tmp_path / "t.tsv"
    path.write_text("filepath\ttitle\n" + "".join(f"{p}\t{c}\n" for p, c in rows))
    run = tmp_path / "run"
    loop.train(tiny_cfg(run, train_data=str(path), val_data=str(path), steps=6, batch_size=4, stop_at_step=2))
    extra = " ".join(f"word{i}" for i in range(40))
    with open(path, "a") as f:
        f.write("".join(f"good{i}.png\t{extra} number {i}\n" for i in range(4)))
    summary = loop.train(tiny_cfg(run, train_data=str(path), val_data=str(path), steps=6, batch_size=4,
                                  resume="latest", eval_every=2))  # fmt: skip
    assert summary["status"] == "completed" and math.isfinite(summary["retrieval_top1"])


# --- 2: a torn last line in metrics.jsonl ------------------------------------------------------------------

TORN = [
    b'{"type": "train", "step": 5, "lo',  # killed mid-write
    b'{"type": "train", "step": 5, "lo\x00\x00\x00\x00',  # NUL-padded block
    b'{"type": "train", "step": 5, "lo\n\n',  # torn, then blank lines
    b'{"type": "train", "step": 5, "caption": "caf\xc3',  # a multi-byte character cut in two
    b"5",  # a torn record that happens to parse, as a number
]


@pytest.mark.parametrize("torn", TORN, ids=["cut", "nul-padded", "blank-after", "cut-utf8", "number"])
def test_resume_tolerates_a_torn_last_metrics_line(tmp_path, torn):
    full, part = tmp_path / "full", tmp_path / "part"
    loop.train(tiny_cfg(full, steps=8, eval_every=4))
    loop.train(tiny_cfg(part, steps=8, eval_every=4, stop_at_step=3))
    with open(part / "metrics.jsonl", "ab") as f:
        f.write(torn)
    with pytest.warns(RuntimeWarning, match="torn last record"):
        summary = loop.train(tiny_cfg(part, steps=8, eval_every=4, resume="latest"))
    assert summary["status"] == "completed" and losses(part) == losses(full)
    assert max((params(full)[k] - params(part)[k]).abs().max().item() for k in params(full)) == 0.0
    assert [r for r in read_jsonl(part / "metrics.jsonl") if r["type"] == "end"] == [
        {"type": "end", "step": 8, "status": "completed", "reason": None}
    ]


def test_damaged_middle_metrics_line_is_an_error_with_file_and_line(tmp_path, capsys):
    part = tmp_path / "run"
    assert run_cli(tmp_path, "--stop-at-step", "3") == 0
    lines = (part / "metrics.jsonl").read_bytes().split(b"\n")
    lines[1] = lines[1][:10]
    (part / "metrics.jsonl").write_bytes(b"\n".join(lines))
    before = snapshot(part)
    assert run_cli(tmp_path, "--resume", "latest") == 2
    err = capsys.readouterr().err
    assert f"{part / 'metrics.jsonl'}, line 2" in err and "Traceback" not in err
    assert snapshot(part) == before
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(part / "metrics.jsonl")
    (part / "metrics.jsonl").write_text('{"step": 1}\n[1, 2]\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2: not a JSON record \\(a JSON list"):
        read_jsonl(part / "metrics.jsonl")


# --- 10: stopped or failed runs say so (summary, metrics.jsonl, exit code) ---------------------------------


def _poison(monkeypatch, steps, kind):
    real = loop.make_loss_fn

    def fn(cfg, step, world):
        inner = real(cfg, step, world)
        if step not in steps:
            return inner
        if kind == "nan":
            return lambda i, t, s: inner(i, t, s) * float("nan")

        def boom(i, t, s):
            raise RuntimeError("simulated out of memory")

        return boom

    monkeypatch.setattr(loop, "make_loss_fn", fn)


def test_nonfinite_limit_is_reported_everywhere(tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, {1, 2}, "nan")
    assert run_cli(tmp_path, "--max-nonfinite", "2") == 1
    out = capsys.readouterr().out
    assert "status stopped" in out and "non-finite" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "stopped" and "non-finite" in summary["stopped"]
    end = read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]
    assert end["type"] == "end" and end["status"] == "stopped" and "non-finite" in end["reason"]


def test_exception_is_reported_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    full = tmp_path / "full"
    loop.train(tiny_cfg(full, steps=6))
    _poison(monkeypatch, {3}, "raise")
    with pytest.raises(RuntimeError, match="simulated"):
        loop.train(tiny_cfg(tmp_path / "api", steps=6))
    summary = json.loads((tmp_path / "api" / "summary.json").read_text())
    assert summary["status"] == "failed" and "simulated out of memory" in summary["error"]
    assert summary["steps_done"] == 3 and summary["checkpoint_step"] == 3  # progress kept
    end = read_jsonl(tmp_path / "api" / "metrics.jsonl")[-1]
    assert end["status"] == "failed" and "failed at step 4" in end["reason"]

    code = cli.main(["--loss", "vlkernels", *TINY_ARGS, "--out-dir", str(tmp_path), "--name", "cli"])
    err = capsys.readouterr().err
    assert code == 1 and "simulated out of memory" in err and "summary.json" in err
    monkeypatch.undo()
    resumed = loop.train(tiny_cfg(tmp_path / "api", steps=6, resume="latest"))
    assert resumed["status"] == "completed" and losses(tmp_path / "api") == losses(full)


def test_compare_worker_exit_code_follows_the_run(tmp_path, monkeypatch):
    _poison(monkeypatch, {0}, "nan")
    cfg = tiny_cfg(tmp_path / "w", steps=2, max_nonfinite=1)
    assert compare._worker(json.dumps(dataclasses.asdict(cfg))) == 1
    monkeypatch.undo()
    cfg = tiny_cfg(tmp_path / "ok", steps=2)
    assert compare._worker(json.dumps(dataclasses.asdict(cfg))) == 0


def test_word_tokenizer_state_round_trip():
    tok = WordTokenizer.build(["a red circle", "a blue square"], 8)
    assert WordTokenizer(**{k: v for k, v in tok.state().items() if k != "kind"}).vocab == tok.vocab
