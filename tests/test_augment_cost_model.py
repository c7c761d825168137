"""The augmentation kernel's cost model (benchmarks/augment_cost_model.py): its geometry is the kernel's
(checked against csrc/augment.h compiled for the host), its counts follow the formulas, and its design
comparisons point the way the kernel's choices assume (separable passes for downscales, bands for small
batches). The model's absolute times are modelled, not measured; nothing here times anything.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import augment_cost_model as acm
from tests._cxx import run_cxx
from vlkernels.augment import sample_augment_params

AXES = [(256, 224), (224, 256), (1300, 224), (1, 7), (7, 1), (500, 224), (3000, 64), (225, 224), (97, 300)]
SPLITS = [(1, 224, 224, 132), (3, 224, 224, 132), (64, 224, 224, 132), (200, 224, 224, 132), (5, 17, 9, 132),
          (2, 613, 613, 132), (1, 4100, 1, 132)]  # fmt: skip
CROPS = [
    (256, 224, 256, 224),
    (375, 224, 500, 224),
    (100, 224, 90, 224),
    (1300, 224, 224, 224),
    (448, 224, 224, 224),
]

HARNESS = r"""
#include <cstdio>
#include <vector>
#include "augment.h"
using namespace vlkernels::augment;
int main() {
  const long long axes[][2] = {%(axes)s};
  for (const auto& a : axes)
    for (int interp = 0; interp < 2; ++interp)
      for (long long i = 0; i < a[1]; ++i) {
        std::vector<float> w(64 + 4 * a[0] / a[1]);
        int64_t lo; int n;
        aa_weights(a[0], a[1], i, interp, w.data(), &lo, &n);
        std::printf("taps %%lld %%lld %%d %%lld %%lld %%d %%d\n", a[0], a[1], interp, i, (long long)lo, n,
                    max_taps(a[0], a[1], interp));
      }
  const long long splits[][4] = {%(splits)s};
  for (const auto& s : splits)
    std::printf("band %%lld %%lld %%lld %%lld %%lld\n", s[0], s[1], s[2], s[3],
                (long long)band_rows_for(s[0], s[1], s[2], s[3], 2048));
  const long long crops[][4] = {%(crops)s};
  for (const auto& c : crops)
    for (int interp = 0; interp < 2; ++interp)
      std::printf("prod %%lld %%lld %%lld %%lld %%d %%.6f\n", c[0], c[1], c[2], c[3], interp,
                  taps_product(c[0], c[1], c[2], c[3], interp));
  return 0;
}
"""


def _c(rows) -> str:
    return ", ".join("{" + ", ".join(str(v) for v in r) + "}" for r in rows)


@pytest.fixture(scope="module")
def kernel_geometry(tmp_path_factory):
    out = run_cxx(
        HARNESS % dict(axes=_c(AXES), splits=_c(SPLITS), crops=_c(CROPS)), tmp_path_factory.mktemp("g")
    )
    lines = [line.split() for line in out.splitlines()]
    return {
        kind: [tuple(float(v) for v in ln[1:]) for ln in lines if ln[0] == kind]
        for kind in ("taps", "band", "prod")
    }


def test_axis_taps_are_aa_weights(kernel_geometry):
    got = {}
    for n_in, n_out in AXES:
        for k, interp in enumerate(("bilinear", "bicubic")):
            lo, n = acm.axis_taps(n_in, n_out, interp)
            for i in range(n_out):
                got[(n_in, n_out, k, i)] = (lo[i], n[i], acm.max_taps(n_in, n_out, interp))
    rows = kernel_geometry["taps"]
    assert len(rows) == len(got)
    for n_in, n_out, k, i, lo, n, mt in rows:
        assert got[(int(n_in), int(n_out), int(k), int(i))] == (int(lo), int(n), int(mt)), (n_in, n_out, k, i)


def test_band_rows_and_taps_product_are_the_kernels(kernel_geometry):
    for n, oh, ow, slots, rows in kernel_geometry["band"]:
        assert acm.band_rows(int(n), int(oh), int(ow), int(slots)) == int(rows)
    for ch, oh, cw, ow, k, prod in kernel_geometry["prod"]:
        interp = ("bilinear", "bicubic")[int(k)]
        assert acm.taps_product(int(ch), int(oh), int(cw), int(ow), interp) == pytest.approx(prod, rel=1e-6)


def test_buffer_rows_and_table_tiers():
    assert acm.table_taps(224, 224) == 24 and acm.table_taps(340, 340) == 16 and acm.table_taps(612, 612) == 8
    assert acm.table_taps(700, 700) == 0 and acm.buffer_rows(700, 700) == 0
    assert acm.buffer_rows(224, 224) == 43  # 160 KiB - 144 B - 46592 B of tables, 2688 B a row
    assert acm.buffer_rows(600, 600) == (160 * 1024 - 144 - 48000) // 7200
    for oh, ow in [(224, 224), (64, 64), (17, 9), (1, 4100)]:
        taps = acm.table_taps(oh, ow)
        rows = acm.buffer_rows(oh, ow)
        assert rows == 0 or rows >= taps
        assert rows * 12 * ow + (oh + ow) * (taps * 4 + 8) + 144 <= 160 * 1024 + 16


def _params(sizes, seed=1, **kw):
    return sample_augment_params(torch.tensor(sizes), generator=torch.Generator().manual_seed(seed), **kw)


OPEN_CLIP = dict(scale=(0.9, 1.0), hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0)


def test_counts_follow_the_formulas():
    # One 448 x 448 image, whole crop, no colour op, bilinear to 224: 2x downscale, so every output pixel
    # of the direct sums reads ny x nx taps (row_sum's: 3 bytes, 3 u8_to_float, 3 FMAs, 1 weight load),
    # each costing X_TAP's instructions; a row of taps adds its weight load and 3 FMAs.
    sizes = [[448, 448]]
    p = _params(sizes, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    assert p.boxes.tolist() == [[0, 0, 448, 448]]
    r = acm.predict(sizes, p, interpolation="bilinear", separable=False, bands=False)
    _, n = acm.axis_taps(448, 224, "bilinear")
    taps = sum(n) * sum(n)
    assert r["work"].x_taps == taps and r["work"].y_taps == 0
    pipes = r["work"].pipes()
    assert pipes["lsu"] == acm.X_TAP["lsu"] * taps + sum(n) * 224 + 3 * 224 * 224
    assert pipes["xu"] == 0  # no conversion instruction per tap (u8_to_float)
    assert pipes["issue"] > acm.X_TAP["issue"] * taps
    assert r["work"].hbm == 3 * 448 * 448 + 4 * 3 * 224 * 224
    assert r["floor_s"] == pytest.approx((3 * 448 * 448 + 4 * 3 * 224 * 224) / acm.H100.hbm)
    # The separable passes: the x pass reads each source row once per output column and chunk (448 rows
    # at least; chunks of 43 buffered rows re-read the few rows where they overlap).
    s = acm.predict(sizes, p, interpolation="bilinear", bands=False)
    once = 448 * sum(n)
    taps = s["work"].x_taps + 2 * s["work"].pair_taps  # a shared position is a tap of both columns
    assert s["buffer_rows"] == 43 and once <= taps <= 1.2 * once
    # At a 2x downscale neighbouring columns share about half their taps (row_sum_pair).
    assert 0.4 * once <= 2 * s["work"].pair_taps <= 0.6 * once
    assert s["work"].y_taps + 2 * s["work"].y_pair_taps == sum(n) * 224  # pairs of rows share half
    assert 0.4 * sum(n) * 224 <= 2 * s["work"].y_pair_taps <= 0.6 * sum(n) * 224


def test_design_choices_are_cheaper_in_the_model():
    photos = [[375, 500]] * 32
    p = _params(photos, **OPEN_CLIP)
    full = acm.predict(photos, p, interpolation="bicubic")
    direct = acm.predict(photos, p, interpolation="bicubic", separable=False)
    one_block = acm.predict(photos, p, interpolation="bicubic", separable=False, bands=False)
    assert full["split_outputs"] == 32 and full["blocks"] > 32 and one_block["blocks"] == 32
    for k in (0, 1):
        assert full["time_s"][k] < direct["time_s"][k] < one_block["time_s"][k]
        assert 0 < full["fraction_of_floor"][k] <= 1


def test_time_grows_with_the_batch_and_the_recipe():
    sizes = [[375, 500]] * 256
    small, big = acm.predict(sizes[:140], _params(sizes[:140])), acm.predict(sizes, _params(sizes))
    assert big["time_s"][0] > small["time_s"][0] and big["time_s"][1] > small["time_s"][1]
    plain = acm.predict(sizes, _params(sizes, **OPEN_CLIP), interpolation="bicubic")
    strong = acm.predict(sizes, _params(sizes, blur_p=1.0, jitter_p=1.0), interpolation="bicubic")
    assert strong["time_s"][1] > plain["time_s"][1]
    assert strong["ws_in_l2"] is False  # 132 x 1.2 MB of blur workspace is beyond the L2


def test_torchvision_ops_are_counted():
    imgs = [torch.randint(0, 256, (60, 50, 3), dtype=torch.uint8) for _ in range(3)]
    crop_only = acm.count_torchvision_ops(imgs, _params([[60, 50]] * 3, **OPEN_CLIP), 32)
    everything = acm.count_torchvision_ops(imgs, _params([[60, 50]] * 3, jitter_p=1.0, grayscale_p=1.0), 32)
    assert 2 <= crop_only < everything


def test_table_renders_without_counting():
    text = acm.table(count_ops=False)
    assert "MODELLED" in text and text.count("\n| ") >= 8


def test_cluster_launch_for_contrast():
    # The cluster launch's plan (plan_cluster_launch): bands of ceil(oh / 8) rows kept in shared memory,
    # the row buffer in what the 227 KiB opt-in limit leaves; none for small or huge outputs.
    rows = (227 * 1024 - 144 - 46592 - 28 * 2688 - 8 * 448) // 2688
    assert acm.cluster_plan(224, 224) == (28, rows, 2) and rows >= acm.table_taps(224, 224)
    assert acm.cluster_plan(7, 5) is None and acm.cluster_plan(613, 613) is None
    assert acm.cluster_plan(224, 224, separable=False) == (28, 0, 2)
    assert acm.cluster_plan(320, 320) == (40, 0, 1)  # the region holds 7 rows: no blur, no separable passes
    sizes = [[375, 500]] * 64
    p = _params(sizes, jitter_p=0.7, jitter=(0.0, 0.4, 0.0, 0.0), blur_p=0.25)
    contrast = p.factors()[:, 1] != 1
    blurred = p.blur_sigma > 0
    assert (
        0 < int((contrast & ~blurred).sum())
        and 0 < int(blurred.sum())
        and 0 < int((~contrast & ~blurred).sum())
    )
    one_pass = acm.predict(sizes, p, interpolation="bicubic")
    two_pass = acm.predict(sizes, p, interpolation="bicubic", clusters=False)
    # At 224 x 224 the cluster launch (mode 2) takes the contrast outputs and the blurred ones.
    assert one_pass["cluster_outputs"] == int((contrast | blurred).sum()) and two_pass["cluster_outputs"] == 0
    assert one_pass["work"].x_taps < two_pass["work"].x_taps  # the second resampling pass is gone
    assert one_pass["work"].ws_bytes == 0 < two_pass["work"].ws_bytes  # no blur workspace
    assert one_pass["time_s"][0] < two_pass["time_s"][0] and one_pass["time_s"][1] < two_pass["time_s"][1]
    for n in (16, 256):
        q = _params(sizes[:1] * n, jitter_p=1.0, jitter=(0.0, 0.4, 0.0, 0.0))
        a = acm.predict(sizes[:1] * n, q, interpolation="bicubic")
        b = acm.predict(sizes[:1] * n, q, interpolation="bicubic", clusters=False)
        assert a["time_s"][0] < b["time_s"][0] and a["time_s"][1] < b["time_s"][1]


def test_profile_driver_prints_the_models_prediction(capsys, monkeypatch):
    # The GPU suite's ncu step runs `python -m benchmarks.profile_one --augment`: the model's instructions
    # and time for the profiled call come first (on a machine without a GPU, alone).
    from benchmarks import profile_one

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    profile_one.augment_once()
    line = capsys.readouterr().out.strip()
    assert line.startswith("model (open_clip: 256 x 500x375") and "M warp instructions issued" in line


def test_suite_summary_shows_the_profile_beside_the_model(tmp_path):
    # The GPU suite's summary carries the ncu step's lines that check the model (benchmarks/summary.py).
    from benchmarks.summary import summarize

    (tmp_path / "ncu_augment.txt").write_text(
        "model (open_clip: 256 x 500x375, RRC (0.9, 1) bicubic, fp32): 143.4 M warp instructions issued, "
        "0.158-0.419 ms\n==PROF== Connected\n    Duration                         us       250.3\n"
        "    Executed Instructions         inst  150000000\n    Unrelated line\n"
    )
    text = summarize(str(tmp_path))
    assert "against its cost model" in text and "143.4 M warp instructions" in text
    assert "Duration" in text and "Executed Instructions" in text and "Unrelated" not in text
    assert summarize(str(tmp_path / "empty")).startswith("no benchmark JSON")
