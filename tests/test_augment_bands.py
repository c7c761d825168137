"""The CUDA kernel's band split (csrc/augment.h: band_rows_for), checked on the host.

A batch smaller than the GPU's resident block slots is split into bands of output rows, one block
each (images that need the whole output in one block, contrast or blur, are done by band 0). The
split is host code shared with the CUDA launcher; this compiles it with the C++ compiler (no GPU) and
checks, over a grid of shapes: one band when the batch fills the slots; otherwise enough bands to fill
them where the output allows, never a band below the minimum pixel count (unless there is one band),
the bands tile rows [0, out_h) exactly, at most 65535 of them. The split's values on a GPU (every band
of every output equal to the CPU op) are tests/test_gpu_augment.py's.
"""

from __future__ import annotations

import pytest

from tests._cxx import run_cxx

HARNESS = r"""
#include <cstdio>
#include "augment.h"
int main() {
  const long long ns[] = {1, 2, 3, 5, 64, 131, 132, 133, 1000};
  const long long sizes[][2] = {{224, 224}, {1, 1}, {17, 9}, {9, 17}, {1, 5000}, {5000, 1}, {613, 613},
                                {2000000, 1}, {3, 2048}};
  const long long slots[] = {1, 132, 264, 1056};
  for (long long n : ns)
    for (const auto& s : sizes)
      for (long long k : slots)
        std::printf("%lld %lld %lld %lld %lld\n", n, s[0], s[1], k,
                    (long long)vlkernels::augment::band_rows_for(n, s[0], s[1], k, 2048));
  return 0;
}
"""


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    out = run_cxx(HARNESS, tmp_path_factory.mktemp("bands"))
    return [tuple(int(v) for v in line.split()) for line in out.splitlines()]


def test_band_split_properties(splits):
    assert len(splits) == 9 * 9 * 4
    for n, oh, ow, slots, rows in splits:
        where = dict(n=n, out_h=oh, out_w=ow, slots=slots, rows=rows)
        assert 1 <= rows <= oh, where
        bands = -(-oh // rows)
        assert bands <= 65535, where
        assert (bands - 1) * rows < oh <= bands * rows, where  # the bands tile the rows, none empty
        if n >= slots:
            assert bands == 1, where
            continue
        min_rows = -(-2048 // ow)
        if bands > 1:
            assert rows >= min_rows, where  # no band below the minimum work
        # Bands enough to fill the slots (ceil(slots / n)), or as many as the minimum work allows
        # (oh // min_rows), rounded to whole rows (so up to a few bands fewer).
        want = min(-(-slots // n), 65535, max(1, oh // min_rows))
        assert rows <= -(-oh // want), where
        assert bands >= want - (want * want) // oh - 1, where


def test_band_split_examples(splits):
    table = {(n, oh, ow, k): rows for n, oh, ow, k, rows in splits}
    assert table[(1000, 224, 224, 132)] == 224  # a full batch: one block per image, as before
    assert table[(64, 224, 224, 132)] == 75  # 3 bands of 75, 75, 74 rows: 192 blocks
    assert table[(1, 224, 224, 132)] == 11  # 21 bands: 22 at most of >= 10 rows (2048 pixels), in whole rows
    assert table[(1, 17, 9, 132)] == 17  # too small to split


def test_fused_augment_says_when_the_cluster_launch_has_work(monkeypatch):
    # The CUDA op's cluster launch (contrast and blur) is skipped when no output can have either: known
    # from the sampling settings, or from the explicit parameters' validation (the same sync).
    import torch

    from vlkernels.augment import _op, fused_augment, sample_augment_params

    seen = []
    real = _op.run
    monkeypatch.setattr(_op, "run", lambda *a, **k: seen.append(k["clusters"]) or real(*a, **k))
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (4, 20, 24, 3), dtype=torch.uint8, generator=gen)
    cases = [
        (dict(jitter_p=0.0), False),
        (dict(jitter_p=0.8, jitter=(0.4, 0.0, 0.4, 0.1)), False),  # jitter without contrast
        (dict(jitter_p=0.8), True),
        (dict(jitter_p=0.0, blur_p=0.5), True),
        (dict(jitter_p=0.0, views=[dict(), dict(blur_p=1.0)]), True),
        (dict(jitter_p=0.0, views=[dict(), dict(jitter_p=1.0)]), True),
    ]
    for kw, want in cases:
        fused_augment(imgs, 8, impl="cpu", **kw)
        assert seen[-1] is want, kw
    g = torch.Generator().manual_seed(1)
    off = sample_augment_params(imgs, generator=g, jitter_p=0.0)
    fused_augment(imgs, 8, params=off, impl="cpu")
    assert seen[-1] is False
    on = sample_augment_params(imgs, generator=g, jitter_p=1.0, jitter=(0.0, 0.5, 0.0, 0.0))
    fused_augment(imgs, 8, params=on, impl="cpu")
    assert seen[-1] is True
    assert on.validate(torch.tensor([[20, 24]] * 4), with_contrast=True) == (False, True)
    assert off.validate(torch.tensor([[20, 24]] * 4)) is False


# The kernel's index and conversion helpers (csrc/augment.h), on the host: GridWalk (the row and column
# of q = row * w + col as a thread strides over an output, without a division per item) against q / w and
# q % w, and u8_to_float (uint8 -> float through the float's bits) against the plain conversion, bitwise.
HELPERS = r"""
#include <cstdio>
#include <cstring>
#include "augment.h"
using vlkernels::augment::GridWalk;
int main() {
  const int widths[] = {1, 2, 3, 7, 224, 511, 512, 513, 1000, 4099};
  const int strides[] = {1, 32, 224, 512, 1024};
  long long bad = 0, walked = 0;
  for (int w : widths)
    for (int stride : strides)
      for (int t = 0; t < stride && t < 600; t += (t < 40 ? 1 : 37)) {
        GridWalk at(t, stride, w);
        for (int q = t; q < 20 * w + 3 * stride; q += stride, at.step()) {
          ++walked;
          if (at.row != q / w || at.col != q % w) ++bad;
        }
      }
  int conv = 0;
  for (unsigned b = 0; b < 256; ++b) {
    const float want = static_cast<float>(b), got = vlkernels::augment::u8_to_float(b);
    if (std::memcmp(&want, &got, sizeof want) != 0) ++conv;
  }
  std::printf("%lld %lld %d\n", walked, bad, conv);
  return 0;
}
"""


def test_grid_walk_and_u8_to_float(tmp_path):
    walked, bad, conv = (int(v) for v in run_cxx(HELPERS, tmp_path).split())
    assert walked > 100_000
    assert bad == 0, f"{bad} of {walked} GridWalk steps differ from q / w, q % w"
    assert conv == 0, f"u8_to_float differs from float(b) for {conv} of 256 values"


# sum_taps_pair (two neighbouring outputs at once, each source value read and converted once where their
# taps overlap) against sum_taps one output at a time: bitwise, over the bytes of a source row in both
# layouts (the x pass: the tap ranges aa_weights gives neighbouring columns, downscales and upscales,
# bilinear and bicubic, and arbitrary nested ranges) and over a column of the float row buffer (the y
# pass).
PAIRS = r"""
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
#include "augment.h"
using namespace vlkernels::augment;
struct Plain { uint32_t operator()(const uint8_t* p) const { return *p; } };
static long long bad = 0, checked = 0;
static bool same(const float* x, const float* y) { return std::memcmp(x, y, 3 * sizeof(float)) == 0; }
template <bool kHwc>
void check(const std::vector<uint8_t>& img, int64_t sc, int64_t step, int lo_a, int n_a, int lo_b, int n_b,
           const std::vector<float>& w, int stride, int ja, int jb) {
  // ja, jb: the columns' slots in the tap-major table w (tap k of column j at w[k * stride + j]).
  using Src = ByteSource<kHwc, Plain>;
  float a1[3] = {0, 0, 0}, b1[3] = {0, 0, 0}, a2[3] = {0, 0, 0}, b2[3] = {0, 0, 0};
  sum_taps(Src(img.data() + lo_a * step, sc, Plain{}), n_a, StridedWeights{w.data() + ja, stride}, 0, a1);
  sum_taps(Src(img.data() + lo_b * step, sc, Plain{}), n_b, StridedWeights{w.data() + jb, stride}, 0, b1);
  sum_taps_pair(Src(img.data() + lo_a * step, sc, Plain{}), n_a, w.data() + ja, lo_b - lo_a, n_b,
                w.data() + jb, stride, a2, b2);
  // And sum_taps against the plain indexing of the image (channel c of position x at x * step + c * chan).
  const int64_t chan = kHwc ? 1 : sc;
  float a0[3] = {0, 0, 0};
  for (int k = 0; k < n_a; ++k)
    for (int c = 0; c < 3; ++c)
      a0[c] += w[k * stride + ja] * static_cast<float>(img[(lo_a + k) * step + c * chan]);
  ++checked;
  if (!same(a1, a2) || !same(b1, b2) || !same(a0, a1)) ++bad;
}
// The y pass's source: a column of the float row buffer ([row][channel][width], one column j).
void check_rows(const std::vector<float>& buf, int width, int j, int lo_a, int n_a, int lo_b, int n_b,
                const std::vector<float>& w, int stride, int ja, int jb) {
  auto src = [&](int row) { return RowSource{buf.data() + 3 * row * width + j, width, 3 * width}; };
  float a1[3] = {0, 0, 0}, b1[3] = {0, 0, 0}, a2[3] = {0, 0, 0}, b2[3] = {0, 0, 0};
  sum_taps(src(lo_a), n_a, StridedWeights{w.data() + ja, stride}, 0, a1);
  sum_taps(src(lo_b), n_b, StridedWeights{w.data() + jb, stride}, 0, b1);
  sum_taps_pair(src(lo_a), n_a, w.data() + ja, lo_b - lo_a, n_b, w.data() + jb, stride, a2, b2);
  float a0[3] = {0, 0, 0};
  for (int k = 0; k < n_a; ++k)
    for (int c = 0; c < 3; ++c) a0[c] += w[k * stride + ja] * buf[(3 * (lo_a + k) + c) * width + j];
  ++checked;
  if (!same(a1, a2) || !same(b1, b2) || !same(a0, a1)) ++bad;
}
int main() {
  std::mt19937 rng(7);
  const int W = 700;
  std::vector<uint8_t> hwc(3 * W), planar(3 * W);
  for (auto& v : hwc) v = rng() & 255;
  for (auto& v : planar) v = rng() & 255;
  // Geometry of aa_weights: neighbouring columns of real resamplings.
  const int ins[] = {700, 500, 375, 224, 97, 33, 5};
  const int outs[] = {224, 64, 301, 7};
  for (int in : ins)
    for (int out : outs)
      for (int interp = 0; interp < 2; ++interp) {
        const int taps = max_taps(in, out, interp);
        std::vector<float> w(static_cast<size_t>(taps) * out);
        std::vector<int64_t> lo(out);
        std::vector<int> n(out);
        for (int j = 0; j < out; ++j) aa_weights(in, out, j, interp, w.data() + j, &lo[j], &n[j], out);
        for (int j = 0; j + 1 < out; ++j) {
          check<true>(hwc, 1, 3, lo[j], n[j], lo[j + 1], n[j + 1], w, out, j, j + 1);
          check<false>(planar, W, 1, lo[j], n[j], lo[j + 1], n[j + 1], w, out, j, j + 1);
        }
      }
  // Arbitrary nested ranges: 0 <= d, n_a <= d + n_b (including no overlap and empty ranges).
  std::vector<float> w(64 * 2);
  for (auto& v : w) v = std::uniform_real_distribution<float>(-0.3f, 1.0f)(rng);
  for (int t = 0; t < 20000; ++t) {
    const int n_a = rng() % 20, d = rng() % 24;
    const int n_b = (n_a > d ? n_a - d : 0) + rng() % 20;
    const int lo_a = rng() % 100;
    check<true>(hwc, 1, 3, lo_a, n_a, lo_a + d, n_b, w, 2, 0, 1);
    check<false>(planar, W, 1, lo_a, n_a, lo_a + d, n_b, w, 2, 0, 1);
  }
  // The y pass: 64 buffered rows of width 9, float values (the x pass's sums), pairs of output rows.
  std::vector<float> rows(64 * 3 * 9);
  for (auto& v : rows) v = std::uniform_real_distribution<float>(-20.0f, 300.0f)(rng);
  for (int t = 0; t < 5000; ++t) {
    const int n_a = rng() % 12, d = rng() % 14;
    const int n_b = (n_a > d ? n_a - d : 0) + rng() % 12;
    const int lo_a = rng() % (64 - 27);
    check_rows(rows, 9, rng() % 9, lo_a, n_a, lo_a + d, n_b, w, 2, 0, 1);
  }
  std::printf("%lld %lld\n", checked, bad);
  return 0;
}
"""


def test_pair_sums_are_the_single_sums(tmp_path):
    checked, bad = (int(v) for v in run_cxx(PAIRS, tmp_path).split())
    assert checked > 40_000
    assert bad == 0, f"{bad} of {checked} pairs differ from the single sums or the plain indexing"
