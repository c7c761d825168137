"""The CUDA kernel's host-testable parts, checked with the C++ compiler (no GPU): the band split
(csrc/augment.h: band_rows_for), its index and conversion helpers (GridWalk, u8_to_float), its tap loops
(sum_taps, sum_taps_pair) and its whole resampling (csrc/augment_resample.h: for_each_pixel, run by host
threads standing in for a thread block).

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
#include "host_block.h"
using namespace vlkernels::augment;
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


# The CUDA kernel's resampling (csrc/augment_resample.h: for_each_pixel, the code the kernel runs) on the
# host, a thread block emulated by host threads and a barrier: the separable passes (the row buffer in
# chunks, both passes in pairs of outputs, the last output alone when a count is odd) against the direct
# sums from the same tables, bitwise, and the direct sums against plain indexing of the tables (rows
# outer, columns inner, in order), bitwise; the on-the-fly taps (no tables) within float rounding of
# them. Both layouts, bilinear and bicubic, flipped crops, odd output widths, row bands, chunks of the
# fewest rows the kernel allows (many chunks) and of all rows, 7 and 32 threads.
RESAMPLE = r"""
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <vector>
#include "augment_resample.h"
#include "host_block.h"
using namespace vlkernels::augment;
static std::vector<float> run(const Image& im, bool tables, const Tables& t, int buf_rows, int oh, int ow,
                              int row0, int row1, int threads) {
  std::vector<float> out(3 * oh * ow, NAN), buf(static_cast<size_t>(buf_rows > 0 ? buf_rows : 1) * 3 * ow);
  Shared sh;
  sh.bar.n = threads;
  std::vector<std::thread> th;
  const int np = oh * ow;
  for (int k = 0; k < threads; ++k)
    th.emplace_back([&, k] {
      auto emit = [&](int p, float r, float g, float b) {
        out[p] = r;
        out[np + p] = g;
        out[2 * np + p] = b;
      };
      for_each_pixel(HostBlock{k, threads, &sh}, Plain{}, im, tables, t, buf.data(), buf_rows, oh, ow, row0,
                     row1, emit);
    });
  for (auto& x : th) x.join();
  return out;
}
int main() {
  std::mt19937 rng(11);
  const int H = 150, W = 200;
  std::vector<uint8_t> img(3 * H * W);
  for (auto& v : img) v = rng() & 255;
  const int outs[][2] = {{1, 7}, {7, 1}, {5, 13}, {37, 31}, {24, 24}, {19, 64}};
  long long cases = 0, bad_sep = 0, bad_naive = 0, bad_fly = 0;
  for (const auto& o : outs)
    for (int interp = 0; interp < 2; ++interp)
      for (int hwc = 0; hwc < 2; ++hwc)
        for (int rep = 0; rep < 3; ++rep) {
          const int oh = o[0], ow = o[1];
          Image im;
          im.src = img.data();
          im.set_layout(hwc, H, W);
          im.ch = 1 + rng() % H;
          im.cw = 1 + rng() % W;
          im.top = rng() % (H - im.ch + 1);
          im.left = rng() % (W - im.cw + 1);
          im.flip = rep == 1;
          im.interp = interp;
          const int taps = std::max(max_taps(im.cw, ow, interp), max_taps(im.ch, oh, interp));
          std::vector<unsigned char> smem(static_cast<size_t>(oh + ow) * (taps * 4 + 8) + 16);
          const Tables t = carve_tables(smem.data(), oh, ow, taps);
          fill_tables(SerialBlock{}, im, oh, ow, t);
          const int bands[][2] = {{0, oh}, {oh / 3, oh - oh / 4}};
          for (const auto& band : bands) {
            const int row0 = band[0], row1 = band[1];
            if (row0 >= row1) continue;
            for (int threads : {7, 32}) {
              const std::vector<float> direct = run(im, true, t, 0, oh, ow, row0, row1, threads);
              // Buffers of the fewest rows the kernel allows (one output row's taps: many chunks), a few
              // more, and more than the image has (one chunk).
              for (int buf_rows : {taps, taps + 5, 2 * H}) {
                ++cases;
                const std::vector<float> sep = run(im, true, t, buf_rows, oh, ow, row0, row1, threads);
                if (std::memcmp(sep.data(), direct.data(), sep.size() * sizeof(float)) != 0) ++bad_sep;
              }
              // Plain indexing of the tables, rows outer and columns inner, in order.
              const int np = oh * ow;
              for (int i = row0; i < row1; ++i)
                for (int j = 0; j < ow; ++j) {
                  float acc[3] = {0, 0, 0};
                  for (int ky = 0; ky < t.ny[i]; ++ky) {
                    float rs[3] = {0, 0, 0};
                    for (int kx = 0; kx < t.nx[j]; ++kx)
                      for (int c = 0; c < 3; ++c)
                        rs[c] += t.wx[kx * ow + j] *
                                 static_cast<float>(img[(im.top + t.loy[i] + ky) * im.sy +
                                                        (im.left + t.lox[j] + kx) * im.sx + c * im.sc]);
                    for (int c = 0; c < 3; ++c) acc[c] += t.wy[ky * oh + i] * rs[c];
                  }
                  for (int c = 0; c < 3; ++c) {
                    float v = acc[c] / 255.0f;
                    if (interp == kBicubic) v = clamp01(v);
                    if (std::memcmp(&v, &direct[c * np + i * ow + j], sizeof v) != 0) ++bad_naive;
                  }
                }
              const std::vector<float> fly = run(im, false, t, 0, oh, ow, row0, row1, threads);
              for (size_t k = 0; k < fly.size(); ++k)
                if (!(std::isnan(fly[k]) && std::isnan(direct[k])) &&
                    !(std::fabs(fly[k] - direct[k]) <= 1e-5f))
                  ++bad_fly;
            }
          }
        }
  std::printf("%lld %lld %lld %lld\n", cases, bad_sep, bad_naive, bad_fly);
  return 0;
}
"""


def test_kernel_resampling_on_host_threads(tmp_path):
    cases, bad_sep, bad_naive, bad_fly = (int(v) for v in run_cxx(RESAMPLE, tmp_path).split())
    assert cases > 300
    assert bad_sep == 0, f"{bad_sep} separable runs differ from the direct sums"
    assert bad_naive == 0, f"{bad_naive} direct values differ from plain indexing of the tables"
    assert bad_fly == 0, f"{bad_fly} on-the-fly values differ from the tables' by more than 1e-5"


# The same code against the CPU op (the reference the GPU tests hold the kernel to): the resampled image
# of the kernel's for_each_pixel on the host (the separable passes, the direct sums from the tables, the
# on-the-fly taps) equals the CPU op's output with no colour op and an identity normalisation within the
# GPU tests' tolerance (ATOL01 on the [0, 1] scale; measured: at most 4e-7). Channels-last and planar
# sources, bilinear and bicubic, flipped and not, sampled crops.
AGAINST_CPU = r"""
#include <cstdio>
#include <vector>
#include "augment_resample.h"
#include "host_block.h"
using namespace vlkernels::augment;
int main() {
  FILE* in = std::fopen("%(inp)s", "rb");
  FILE* out = std::fopen("%(out)s", "wb");
  long long hd[11];
  while (std::fread(hd, sizeof hd, 1, in) == 1) {
    const long long H = hd[0], W = hd[1], hwc = hd[2];
    const int oh = static_cast<int>(hd[9]), ow = static_cast<int>(hd[10]);
    std::vector<uint8_t> img(3 * H * W);
    if (std::fread(img.data(), 1, img.size(), in) != img.size()) return 1;
    Image im;
    im.src = img.data();
    im.set_layout(hwc, H, W);
    im.top = hd[3];
    im.left = hd[4];
    im.ch = hd[5];
    im.cw = hd[6];
    im.flip = hd[7] != 0;
    im.interp = static_cast<int>(hd[8]);
    const int taps = std::max(max_taps(im.cw, ow, im.interp), max_taps(im.ch, oh, im.interp));
    std::vector<unsigned char> smem(static_cast<size_t>(oh + ow) * (taps * 4 + 8) + 16);
    const Tables t = carve_tables(smem.data(), oh, ow, taps);
    fill_tables(SerialBlock{}, im, oh, ow, t);
    std::vector<float> buf(static_cast<size_t>(taps + 3) * 3 * ow);
    const int np = oh * ow;
    // Three ways: separable passes (a buffer of taps + 3 rows), direct sums from the tables, on the fly.
    for (int way = 0; way < 3; ++way) {
      std::vector<float> res(3 * np);
      auto emit = [&](int p, float r, float g, float b) {
        res[p] = r;
        res[np + p] = g;
        res[2 * np + p] = b;
      };
      const int rows = way == 0 ? taps + 3 : 0;
      for_each_pixel(SerialBlock{}, Plain{}, im, way < 2, t, buf.data(), rows, oh, ow, 0, oh, emit);
      std::fwrite(res.data(), sizeof(float), res.size(), out);
    }
  }
  std::fclose(out);
  return 0;
}
"""


@pytest.mark.parametrize("layout", ["hwc", "chw"])
def test_kernel_resampling_on_host_equals_the_cpu_op(layout, tmp_path):
    torch = pytest.importorskip("torch")
    from vlkernels.augment import fused_augment, sample_augment_params

    g = torch.Generator().manual_seed(5)
    sizes = [(375, 500), (260, 240), (90, 120)]
    outs = [(224, 224), (37, 301), (64, 48)]
    inp, res = tmp_path / "in.bin", tmp_path / "out.bin"
    expected = []
    with open(inp, "wb") as f:
        for k, (h, w) in enumerate(sizes):
            img = torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8, generator=g)
            src = img if layout == "hwc" else img.permute(0, 3, 1, 2).contiguous()
            for interp in ("bilinear", "bicubic"):
                oh, ow = outs[k]
                p = sample_augment_params(src, generator=g, scale=(0.1, 1.0), jitter_p=0.0, grayscale_p=0.0)
                p.flip[0] = interp == "bicubic"  # each image once flipped, once not
                ident = dict(mean=(0, 0, 0), std=(1, 1, 1))
                want = fused_augment(src, (oh, ow), params=p, interpolation=interp, impl="cpu", **ident)
                expected.append(want[0])
                top, left, ch, cw = p.boxes[0].tolist()
                head = [
                    h,
                    w,
                    int(layout == "hwc"),
                    top,
                    left,
                    ch,
                    cw,
                    int(p.flip[0]),
                    int(interp == "bicubic"),
                    oh,
                    ow,
                ]
                f.write(torch.tensor(head, dtype=torch.int64).numpy().tobytes())
                f.write(src[0].contiguous().numpy().tobytes())
    run_cxx(AGAINST_CPU % dict(inp=inp, out=res), tmp_path)
    got = torch.frombuffer(bytearray(res.read_bytes()), dtype=torch.float32)
    off = 0
    for want in expected:
        n = want.numel()
        for way in ("separable", "direct", "on the fly"):
            mine = got[off : off + n].view_as(want)
            off += n
            err = (mine - want).abs().max().item()
            assert err <= 1e-4, f"{way}: {err:.3g} from the CPU op ({want.shape})"
    assert off == got.numel()
