"""A real open_clip_train run through ``python -m vlkernels.open_clip_train`` against open_clip's own entry
point (``python -m open_clip_train.main``), same arguments and seed: the same logged losses and the same
trained weights. Tiny model (``local-dir:`` config, no weights), a generated CSV dataset of PNG images."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "tests" / "open_clip_site"  # sitecustomize: the torchvision shim for the subprocesses
N_IMAGES, BATCH = 24, 8
MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PREPROCESS_CFG = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear",
                  "resize_mode": "shortest"}  # fmt: skip
WORDS = ["red", "green", "blue", "small", "large", "square", "circle", "stripe", "dot", "noise", "cat", "sky"]
LOSS_RE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/.*?Logit Scale: ([-\d.]+) (.*)$")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The model directory and the CSV dataset (PNG images, tab-separated captions)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("open_clip_train")
    model_dir = root / "tiny_model"
    model_dir.mkdir()
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}
    (model_dir / "open_clip_config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    rows = ["filepath\ttitle"]
    for i in range(N_IMAGES):
        path = root / "images" / f"{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
        pixels[:, : 4 * (i % 12)] //= 2  # some structure tied to the caption
        Image.fromarray(pixels).save(path)
        rows.append(f"{path}\ta {WORDS[i % 12]} {WORDS[(5 * i + 1) % 12]} picture number {i}")
    csv = root / "train.csv"
    csv.write_text("\n".join(rows) + "\n")
    return root, model_dir, csv


def _start(entry: list[str], root: Path, model_dir: Path, csv: Path, name: str, extra: list[str]):
    args = [
        "--model", f"local-dir:{model_dir}", "--train-data", str(csv), "--dataset-type", "csv",
        "--csv-img-key", "filepath", "--csv-caption-key", "title", "--batch-size", str(BATCH),
        "--epochs", "1", "--workers", "0", "--device", "cpu", "--precision", "fp32", "--seed", "0",
        "--lr", "1e-3", "--warmup", "1", "--logs", str(root / "logs"), "--name", name,
        "--log-every-n-steps", "1", "--save-frequency", "1", "--report-to", "", *extra,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SITE), str(ROOT)]), OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", *entry, *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=root
    )
    return proc, root / "logs" / name


def _finish(run):
    proc, log_dir = run
    try:
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-6000:]
    return (log_dir / "out.log").read_text(), log_dir / "checkpoints" / "epoch_1.pt"


def _losses(log: str) -> list[dict[str, float]]:
    """Per logged step: {'scale': ..., 'contrastive_loss': ..., 'loss': ...} (the step's values)."""
    steps = []
    for line in log.splitlines():
        match = LOSS_RE.search(line)
        if match:
            values = {"scale": float(match.group(3))}
            for key, val in re.findall(r"(\w+): ([-\d.e+]+) \(", match.group(4)):
                values[key.lower()] = float(val)
            steps.append(values)
    return steps


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_same_run_as_open_clip_entry_point(setup, loss):
    root, model_dir, csv = setup
    extra = ["--siglip"] if loss == "siglip" else []
    # Both runs at once (start-up, mostly imports, dominates; one thread each).
    theirs = _start(["open_clip_train.main"], root, model_dir, csv, f"open_clip_{loss}", extra)
    ours = _start(
        ["vlkernels.open_clip_train", "--vlkernels-impl", "torch"], root, model_dir, csv, f"vl_{loss}", extra
    )
    theirs, ours = _finish(theirs), _finish(ours)
    want, got = _losses(theirs[0]), _losses(ours[0])
    assert len(want) == N_IMAGES // BATCH, theirs[0]
    assert [sorted(s) for s in got] == [sorted(s) for s in want]
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        for key in w:
            # The log prints 5 significant digits: equal to the last printed digit.
            assert g[key] == pytest.approx(w[key], rel=2e-5, abs=1e-12), (loss, step, key, g, w)
    # The checkpoints: the same trained weights (every step's loss and gradients, through AdamW).
    want_ckpt = torch.load(theirs[1], map_location="cpu", weights_only=False)
    got_ckpt = torch.load(ours[1], map_location="cpu", weights_only=False)
    assert got_ckpt.keys() == want_ckpt.keys()
    assert got_ckpt["epoch"] == want_ckpt["epoch"] == 1
    for key, value in want_ckpt["state_dict"].items():
        mine = got_ckpt["state_dict"][key]
        if key.endswith("attn.in_proj_bias"):
            # The key bias has an exact zero gradient (a constant shift of each query's attention logits):
            # AdamW turns its rounding noise into lr-sized steps, different in any two implementations.
            width = value.shape[0] // 3
            value, mine = (
                torch.cat([value[:width], value[2 * width :]]),
                torch.cat([mine[:width], mine[2 * width :]]),
            )
        torch.testing.assert_close(mine, value, rtol=1e-5, atol=1e-6, msg=key)
