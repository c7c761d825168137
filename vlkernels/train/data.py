"""Data: the built-in synthetic image-caption set and open_clip-style CSV/TSV files.

Synthetic (no download, deterministic from a seed): each image holds one to three copies of a coloured
shape on a noisy dark background, placed in distinct cells of a 2 x 2 grid; the caption names the count,
colour and shape, and for a single object its size and position ("a small red circle in the top left",
"two blue squares"). Zero-shot classes are colour x shape (24 classes, chance 1/24), scored on a held-out
split drawn from another seed stream, with a prompt ensemble over counts.

CSV/TSV: open_clip's CsvDataset convention (``--csv-img-key filepath --csv-caption-key title``); images
are decoded with Pillow and resized (shorter side) and centre-cropped to the model's input size; an
unreadable or corrupt image is skipped and counted, never an error.
"""

from __future__ import annotations

import csv
import io
import os
import sys

import numpy as np
import torch

from vlkernels.train.config import UsageError

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 220, 50),
    "purple": (150, 60, 210),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle", "cross")
COUNTS = ("one", "two", "three")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # the cells of a 2 x 2 grid
TEMPLATES = ("{}", "a photo of {}", "an image of {}", "{} on a dark background", "a picture of {}")
PROMPTS = ("a photo of a small {c} {s}", "a photo of a large {c} {s}", "two {c} {ss}", "three {c} {ss}")
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def synthetic(n: int, seed: int, image_size: int = 32) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """``n`` images (uint8 [n, H, W, 3]), their captions, and class labels (colour x shape index)."""
    rng = np.random.default_rng(seed)
    colour_names = list(COLOURS)
    colour = rng.integers(len(COLOURS), size=n)
    shape = rng.integers(len(SHAPES), size=n)
    count = rng.integers(1, 4, size=n)
    large = rng.random(n) < 0.5
    cells = np.argsort(rng.random((n, 4)), axis=1)[:, :3]
    cell = image_size / 2
    centre = np.stack([cells % 2, cells // 2], axis=-1) * cell + cell / 2
    centre = centre + rng.uniform(-0.12, 0.12, size=centre.shape) * cell
    radius = np.where(large, 0.42, 0.3)[:, None] * cell * rng.uniform(0.9, 1.1, size=(n, 3))
    tint = np.asarray([COLOURS[c] for c in colour_names], dtype=np.float32)[colour]
    tint = np.clip(tint[:, None] + rng.normal(0, 12, size=(n, 3, 3)), 0, 255)
    noise = rng.normal(0, 8, size=(n, image_size, image_size, 3))
    background = rng.uniform(10, 70, size=(n, 1, 1, 1)) + noise

    centre, radius = centre.astype(np.float32), radius.astype(np.float32)
    grid = np.arange(image_size, dtype=np.float32) + 0.5
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    img = background.astype(np.float32)  # [n, H, W, 3]
    for k in range(3):
        dx = np.abs(xx[None] - centre[:, k, 0, None, None])
        dy = yy[None] - centre[:, k, 1, None, None]
        r = radius[:, k, None, None]
        ady = np.abs(dy)
        mask = np.empty(dx.shape, dtype=bool)
        for s_id, sel in enumerate(shape[None] == np.arange(len(SHAPES))[:, None]):
            x, y, ay, rr = dx[sel], dy[sel], ady[sel], r[sel]
            mask[sel] = (
                x**2 + y**2 <= rr**2,
                (x <= 0.85 * rr) & (ay <= 0.85 * rr),
                (ay <= rr) & (x <= (y + rr) * 0.55),
                ((x <= 0.3 * rr) & (ay <= rr)) | ((ay <= 0.3 * rr) & (x <= rr)),
            )[s_id]
        mask &= (k < count)[:, None, None]
        img[mask] = np.broadcast_to(tint[:, k, None, None, :], img.shape)[mask]
    images = torch.from_numpy(np.clip(img, 0, 255).round().astype(np.uint8))

    template = rng.integers(len(TEMPLATES), size=n)
    captions = []
    for i in range(n):
        c, s = colour_names[colour[i]], SHAPES[shape[i]]
        if count[i] == 1:
            size = "large" if large[i] else "small"
            what = f"a {size} {c} {s} in the {POSITIONS[cells[i, 0]]}"
        else:
            what = f"{COUNTS[count[i] - 1]} {c} {_plural(s)}"
        captions.append(TEMPLATES[template[i]].format(what))
    labels = torch.from_numpy(colour * len(SHAPES) + shape)
    return images, captions, labels


def class_prompts() -> tuple[list[str], list[list[str]]]:
    """Zero-shot class names (colour x shape, in label order) and each class's prompt ensemble."""
    names, prompts = [], []
    for c in COLOURS:
        for s in SHAPES:
            names.append(f"{c} {s}")
            prompts.append([p.format(c=c, s=s, ss=_plural(s)) for p in PROMPTS])
    return names, prompts


def synthetic_vocab() -> list[str]:
    """Every word the synthetic captions and prompts use (the built-in tokenizer's vocabulary)."""
    from vlkernels.train.tokenizer import words

    text = " ".join([*TEMPLATES, *PROMPTS, *COUNTS, *COLOURS, *SHAPES, *map(_plural, SHAPES)])
    text += " a large small in the top bottom left right"
    return sorted(set(words(text.replace("{c}", " ").replace("{s}", " ").replace("{ss}", " "))))


def read_rows(
    path: str, img_key: str, caption_key: str, separator: str, option: str
) -> list[tuple[str, str]]:
    """(image path, caption) of each row of a CSV/TSV; a ``UsageError`` naming the option, the file and the
    line for a file that is missing, not UTF-8 (a UTF-8 byte-order mark is fine), malformed, without the
    two columns, without rows, or with a row that lacks one of the two fields."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UsageError(f"{option} {path}: cannot read it ({e.strerror or e})") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UsageError(
            f"{option} {path}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); "
            "save the file as UTF-8"
        ) from e
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise UsageError(
            f"{option} {path}, line {line}: a NUL byte (a binary or UTF-16 file?); save it as UTF-8 text"
        )
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator, strict=True)
    rows = []
    try:
        header = next(reader, None)
        if not header:
            raise UsageError(f"{option} {path}: empty file (expected a header line with column names)")
        header = [h.strip() for h in header]
        missing = [
            f"{o} {k!r}"
            for o, k in (("--csv-img-key", img_key), ("--csv-caption-key", caption_key))
            if k not in header
        ]
        if missing:
            raise UsageError(
                f"{option} {path}: columns {header} do not include {' and '.join(missing)} "
                f"(separator {separator!r}; set --csv-separator)"
            )
        i_img, i_cap = header.index(img_key), header.index(caption_key)
        for fields in reader:
            if not fields or not any(x.strip() for x in fields):
                continue  # blank line
            if len(fields) <= max(i_img, i_cap):
                lacks = caption_key if len(fields) > i_img else img_key
                raise UsageError(
                    f"{option} {path}, line {reader.line_num}: no {lacks!r} field (the row has "
                    f"{len(fields)} field(s), the header {len(header)})"
                )
            rows.append((fields[i_img], fields[i_cap]))
    except csv.Error as e:
        raise UsageError(f"{option} {path}, line {reader.line_num}: malformed CSV: {e}") from e
    if not rows:
        raise UsageError(f"{option} {path}: no rows after the header")
    return rows


class ImageTextSet:
    """Images already in memory (uint8 [N, H, W, 3]) and captions: the synthetic set."""

    def __init__(self, images: torch.Tensor, captions: list[str]):
        self.images, self.captions = images, captions

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, idx: list[int]) -> tuple[torch.Tensor, list[str], int]:
        """(uint8 [n, H, W, 3], captions, number of skipped samples)."""
        return self.images[idx], [self.captions[i] for i in idx], 0


class CsvImageTextSet:
    """open_clip's CsvDataset: a CSV/TSV with an image-path column and a caption column.

    Relative image paths are looked up relative to the current directory, then to the CSV's directory.
    ``batch`` decodes with Pillow; images that fail (missing, truncated, not an image) are skipped and
    counted in ``skipped`` (and reported in the batch's skip count).
    """

    def __init__(
        self,
        path: str,
        img_key: str,
        caption_key: str,
        image_size: int,
        separator=None,
        option="--train-data",
    ):
        if separator is None:
            separator = "\t" if path.endswith((".tsv", ".tab")) else ","
        rows = read_rows(path, img_key, caption_key, separator, option)
        try:
            import PIL  # noqa: F401
        except ImportError as e:
            raise UsageError(f'{option} {path}: CSV data needs Pillow: pip install "vlkernels[train]"') from e
        root = os.path.dirname(os.path.abspath(path))
        self.paths = [self._resolve(r[0], root) for r in rows]
        self.captions = [r[1] for r in rows]
        self.image_size = image_size
        self.skipped = 0

    @staticmethod
    def _resolve(p: str, root: str) -> str:
        return p if os.path.isabs(p) or os.path.exists(p) else os.path.join(root, p)

    def __len__(self) -> int:
        return len(self.captions)

    def load(self, i: int) -> torch.Tensor | None:
        try:
            from PIL import Image
        except ImportError as e:
            raise RuntimeError('CSV data needs Pillow: pip install "vlkernels[train]"') from e
        try:
            with Image.open(self.paths[i]) as im:
                im = im.convert("RGB")
                w, h = im.size
                scale = self.image_size / min(w, h)
                size = (max(self.image_size, round(w * scale)), max(self.image_size, round(h * scale)))
                im = im.resize(size, Image.Resampling.BICUBIC)
                left, top = (im.size[0] - self.image_size) // 2, (im.size[1] - self.image_size) // 2
                im = im.crop((left, top, left + self.image_size, top + self.image_size))
                return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())
        except Exception as e:  # noqa: BLE001 - any decoding failure means "skip this sample"
            self.skipped += 1
            if self.skipped <= 5:
                print(f"skipping unreadable image {self.paths[i]}: {type(e).__name__}: {e}", file=sys.stderr)
            return None

    def batch(self, idx: list[int]) -> tuple[torch.Tensor, list[str], int]:
        images, captions = [], []
        for i in idx:
            img = self.load(i)
            if img is not None:
                images.append(img)
                captions.append(self.captions[i])
        size = (0, self.image_size, self.image_size, 3)
        stacked = torch.stack(images) if images else torch.empty(size, dtype=torch.uint8)
        return stacked, captions, len(idx) - len(images)


def batch_indices(n: int, batch_size: int, step: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """The samples of optimiser step ``step`` (0-based) for ``rank``: a pure function of its arguments, so a
    resumed run draws exactly the batches an uninterrupted one would. Each epoch is a fresh permutation
    (seeded by seed and epoch); the global batch is ``batch_size * world`` and the epoch drops the
    remainder; rank r takes the r-th slice."""
    global_batch = batch_size * world
    per_epoch = n // global_batch
    if per_epoch == 0:
        raise ValueError(f"the dataset ({n} samples) is smaller than one global batch ({global_batch})")
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    start = pos * global_batch + rank * batch_size
    return perm[start : start + batch_size].tolist()


def normalize(images: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W], (x / 255 - mean) / std."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s
