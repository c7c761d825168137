// Fused augmentation, C++ CPU kernel (registered as vlkernels::fused_augment for the CPU key).
//
// Per image: separable antialiased resize, bilinear or bicubic (horizontal pass over the crop rows into
// a float scratch, then vertical pass per output row), with the flip folded into the horizontal tap
// table; bicubic rows are clamped to [0, 1]; the colour ops run on the output rows while they are hot
// in cache. Contrast needs the gray mean of the whole image as it stands just before it, so rows are
// kept in a per-image scratch and finished in a second pass over rows only when contrast is active.
// Gaussian blur (after the colour ops and grayscale, before solarize) needs the neighbourhood: the
// colour-processed image is kept in that per-image scratch (one image per thread in the image-parallel
// mode) and blurred separably (reflect-padded rows into a second scratch, then columns per output row),
// then solarized, normalised and written.
// Parallel over images (torch's intra-op OpenMP pool, at::parallel_for); when there are fewer images
// than threads, over rows inside each image instead. With a source index, output i reads image
// source[i] (several views of one image, no copy of its bytes).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "augment.h"
#include "augment_checks.h"

// Hot row loops are compiled twice, for AVX2 and for the baseline, and picked at load time (ifunc):
// 8-wide instead of 4-wide vectors where the CPU has them, same results (-ffp-contract=off under
// -std=c++17, and no FMA in the clone's target).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VLK_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VLK_CLONES
#endif

namespace vlkernels {
namespace augment {
namespace {

// Uninitialised float scratch (std::vector would zero it first: a wasted pass over the buffer).
using Scratch = std::unique_ptr<float[]>;
Scratch scratch(int64_t n) { return Scratch(new float[static_cast<size_t>(n)]); }

// Per-thread scratch, kept across images and calls: a fresh allocation per image (a few MB for a large
// crop) is an mmap, first-touch page faults and an munmap per image, and with two or more threads
// every munmap is a TLB shootdown interrupting the other threads (costly in a VM): that made 2 threads
// slower than 1 on batches of real photos. Each thread owns one buffer per slot (buffers used at the
// same time by one thread have different slots; a parallel_for chunk run by the calling thread uses
// the chunk slots, the caller the image slots). Grown geometrically, never shrunk, except requests
// above kCacheMax floats, which get their own allocation.
enum Slot : int { kSlotTmp = 0, kSlotImg, kSlotBlur, kSlotLine, kSlotRow, kSlotVline, kSlots };
constexpr int64_t kCacheMax = int64_t{16} << 20;  // 64 MiB per slot

class Buf {
 public:
  Buf(Slot slot, int64_t n) {
    if (n <= 0) return;
    if (n > kCacheMax) {
      own_ = scratch(n);
      ptr_ = own_.get();
      return;
    }
    struct Cache {
      Scratch buf[kSlots];
      int64_t cap[kSlots] = {};
    };
    thread_local Cache cache;
    if (cache.cap[slot] < n) {
      const int64_t cap = std::min(kCacheMax, std::max(n, cache.cap[slot] + cache.cap[slot] / 2));
      cache.buf[slot].reset();
      cache.buf[slot] = scratch(cap);
      cache.cap[slot] = cap;
    }
    ptr_ = cache.buf[slot].get();
  }
  float* get() const { return ptr_; }

 private:
  float* ptr_ = nullptr;
  Scratch own_;
};

struct TapTable {
  int K = 0;                   // taps per output pixel (the largest count, shorter ones zero-padded)
  std::vector<int64_t> start;  // first source index (relative to the crop) per output pixel
  std::vector<int> count;
  std::vector<float> w;        // [out, K]
};

// Tap table of one axis. With pad, every pixel gets exactly K taps (its window shifted left where it
// would run past the end, zero weights filling in), so the horizontal loop has a fixed trip count;
// adding zero-weight terms leaves each sum unchanged.
TapTable make_taps(int64_t in, int64_t out, bool reverse, bool pad, int interp) {
  const int kmax = max_taps(in, out, interp);
  std::vector<float> raw(static_cast<size_t>(out) * kmax);
  std::vector<int64_t> start(out);
  std::vector<int> count(out);
  int K = 1;
  for (int64_t i = 0; i < out; ++i) {
    const int64_t src = reverse ? out - 1 - i : i;
    aa_weights(in, out, src, interp, &raw[i * kmax], &start[i], &count[i]);
    K = std::max(K, count[i]);
  }
  TapTable t;
  t.K = pad ? K : kmax;
  t.start = start;
  t.count = count;
  t.w.assign(static_cast<size_t>(out) * t.K, 0.0f);
  for (int64_t i = 0; i < out; ++i) {
    const int64_t s0 = pad ? std::min<int64_t>(start[i], in - K) : start[i];
    for (int k = 0; k < count[i]; ++k) t.w[i * t.K + (start[i] - s0) + k] = raw[i * kmax + k];
    t.start[i] = s0;
    t.count[i] = pad ? K : count[i];
  }
  return t;
}

// Horizontal pass of one source row: `line` holds the crop row as interleaved RGB floats.
template <int K>
__attribute__((always_inline)) inline void hpass_fixed(const float* line, const TapTable& t, int64_t ow, float* d0, float* d1, float* d2) {
  for (int64_t j = 0; j < ow; ++j) {
    const float* w = &t.w[j * K];
    const float* s = line + 3 * t.start[j];
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f;
    for (int k = 0; k < K; ++k) {
      a0 += w[k] * s[3 * k];
      a1 += w[k] * s[3 * k + 1];
      a2 += w[k] * s[3 * k + 2];
    }
    d0[j] = a0;
    d1[j] = a1;
    d2[j] = a2;
  }
}

VLK_CLONES void hpass(const float* line, const TapTable& t, int64_t ow, float* d0, float* d1, float* d2) {
  switch (t.K) {
    case 1: return hpass_fixed<1>(line, t, ow, d0, d1, d2);
    case 2: return hpass_fixed<2>(line, t, ow, d0, d1, d2);
    case 3: return hpass_fixed<3>(line, t, ow, d0, d1, d2);
    case 4: return hpass_fixed<4>(line, t, ow, d0, d1, d2);
    case 5: return hpass_fixed<5>(line, t, ow, d0, d1, d2);
    case 6: return hpass_fixed<6>(line, t, ow, d0, d1, d2);
    case 8: return hpass_fixed<8>(line, t, ow, d0, d1, d2);
    default: break;
  }
  for (int64_t j = 0; j < ow; ++j) {
    const float* w = &t.w[j * t.K];
    const float* s = line + 3 * t.start[j];
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f;
    for (int k = 0; k < t.K; ++k) {
      a0 += w[k] * s[3 * k];
      a1 += w[k] * s[3 * k + 1];
      a2 += w[k] * s[3 * k + 2];
    }
    d0[j] = a0;
    d1[j] = a1;
    d2[j] = a2;
  }
}

// Apply `ops[from, to)` of a plan to one row of planar pixels (one vectorisable loop per op).
VLK_CLONES void row_ops(const OpPlan& plan, int from, int to, float mean, float* r, float* g, float* b, int64_t n) {
  for (int k = from; k < to; ++k) {
    const float f = plan.factors[k];
    switch (plan.ops[k]) {
      case kBrightness:
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) color_op(kBrightness, f, mean, r[j], g[j], b[j]);
        break;
      case kContrast:
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) color_op(kContrast, f, mean, r[j], g[j], b[j]);
        break;
      case kSaturation:
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) color_op(kSaturation, f, mean, r[j], g[j], b[j]);
        break;
      default:
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) hue_shift(r[j], g[j], b[j], f);
        break;
    }
  }
}

// Vertical pass of output row i: d_c = sum_k w[k] * tmp_c[row0 + k] / 255.
VLK_CLONES void vpass(const float* tmp, int64_t plane, int64_t ow, const float* w, int n, int64_t row0,
                      float* const* rgb) {
  for (int c = 0; c < 3; ++c) {
    float* d = rgb[c];
    for (int64_t j = 0; j < ow; ++j) d[j] = 0.0f;
    for (int k = 0; k < n; ++k) {
      const float wk = w[k];
      const float* s = tmp + c * plane + (row0 + k) * ow;
#pragma omp simd
      for (int64_t j = 0; j < ow; ++j) d[j] += wk * s[j];
    }
#pragma omp simd
    for (int64_t j = 0; j < ow; ++j) d[j] /= 255.0f;
  }
}

// Vertical-first variant (used when the crop is taller than the output: fewer rows then go through
// the horizontal gather): out[3x + c] = sum_k w[k] * src(row0 + k, x, c), as interleaved RGB floats.
VLK_CLONES void vline(const uint8_t* row0, int64_t sy, int64_t sx, int64_t sc, int64_t cw, const float* w, int n,
                      float* out) {
  const int64_t len = 3 * cw;
  for (int64_t q = 0; q < len; ++q) out[q] = 0.0f;
  for (int k = 0; k < n; ++k) {
    const float wk = w[k];
    const uint8_t* s = row0 + k * sy;
    if (sx == 3 && sc == 1) {
#pragma omp simd
      for (int64_t q = 0; q < len; ++q) out[q] += wk * static_cast<float>(s[q]);
    } else {
      for (int c = 0; c < 3; ++c) {
        for (int64_t x = 0; x < cw; ++x) out[3 * x + c] += wk * static_cast<float>(s[c * sc + x * sx]);
      }
    }
  }
}

VLK_CLONES void div255(float* const* rgb, int64_t n) {
  for (int c = 0; c < 3; ++c) {
    float* d = rgb[c];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) d[j] /= 255.0f;
  }
}

// Bicubic weights have negative lobes: the resampled value can leave [0, 1]. Clamped, as torchvision's
// resize of a uint8 image clamps to [0, 255] (on a float image it does not), so that the colour ops see
// [0, 1] values.
VLK_CLONES void clamp_rows(float* const* rgb, int64_t n) {
  for (int c = 0; c < 3; ++c) {
    float* d = rgb[c];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) d[j] = clamp01(d[j]);
  }
}

// Normalised Gaussian taps (2 r + 1) of the blur.
std::vector<float> blur_weights(float sigma, int64_t r) {
  std::vector<float> w(static_cast<size_t>(2 * r + 1));
  float total = 0.0f;
  for (int64_t k = 0; k <= 2 * r; ++k) {
    w[k] = blur_raw(k, r, sigma);
    total += w[k];
  }
  for (auto& v : w) v /= total;  // total >= w[r] = 1
  return w;
}

// Horizontal blur of one row of n pixels: reflect-padded copy into `pad` (n + 2 r), then
// dst[j] = sum_t w[t] * pad[j + t], taps in order.
VLK_CLONES void blur_row(const float* src, int64_t n, int64_t r, const float* w, float* pad, float* dst) {
  for (int64_t q = 0; q < n + 2 * r; ++q) pad[q] = src[reflect_index(q - r, n)];
  for (int64_t j = 0; j < n; ++j) dst[j] = 0.0f;
  for (int64_t t = 0; t <= 2 * r; ++t) {
    const float wt = w[t];
    const float* s = pad + t;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dst[j] += wt * s[j];
  }
}

// Vertical blur of output row i of a plane [rows, n]: dst = sum_t w[t] * row(reflect(i - r + t)).
VLK_CLONES void blur_col(const float* plane, int64_t rows, int64_t n, int64_t i, int64_t r, const float* w,
                         float* dst) {
  for (int64_t j = 0; j < n; ++j) dst[j] = 0.0f;
  for (int64_t t = 0; t <= 2 * r; ++t) {
    const float wt = w[t];
    const float* s = plane + reflect_index(i - r + t, rows) * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dst[j] += wt * s[j];
  }
}

VLK_CLONES double gray_sum(const float* r, const float* g, const float* b, int64_t n) {
  // Float partial sums per block of 8, summed in double: vectorises, and stays far below the 1e-4
  // tolerance for any image size.
  double s = 0.0;
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    float part = 0.0f;
    for (int k = 0; k < 8; ++k) part += gray_of(r[j + k], g[j + k], b[j + k]);
    s += part;
  }
  for (; j < n; ++j) s += gray_of(r[j], g[j], b[j]);
  return s;
}

VLK_CLONES void gray_row(float* r, float* g, float* b, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float l = gray_of(r[j], g[j], b[j]);
    r[j] = l;
    g[j] = l;
    b[j] = l;
  }
}

VLK_CLONES void solarize_row(float* const* rgb, int64_t n) {
  for (int c = 0; c < 3; ++c) {
    float* d = rgb[c];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) d[j] = solarize(d[j]);
  }
}

VLK_CLONES void quantise_row(float* v, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) v[j] = quantise_u8(v[j]);
}

VLK_CLONES void normalise_row(const float* v, float m, float s, int64_t n, float* d) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) d[j] = (v[j] - m) / s;
}

template <typename out_t>
struct ImageJob {
  const uint8_t* src;
  int64_t H, W, sy, sx, sc;  // element strides of row, column, channel
  int64_t top, left, ch, cw;
  bool flip, gray, solar;
  int interp;   // kBilinear or kBicubic
  float sigma;  // Gaussian blur sigma, 0: no blur
  const float* factors;
  const int64_t* order;
  const float* mean;
  const float* std;
  int64_t oh, ow;
  out_t* out;  // [3, oh, ow], or [oh, ow, 3] when channels_last
  bool channels_last;

  // par: split the row loops across threads (used when there are fewer images than threads).
  void run(bool par) const {
    const TapTable tx = make_taps(cw, ow, flip, true, interp);
    const TapTable ty = make_taps(ch, oh, false, false, interp);
    const bool cubic = interp == kBicubic;
    // Crop taller than the output: resample columns first, straight from the uint8 rows, so that the
    // (gathering) horizontal pass runs on oh rows instead of ch. Otherwise rows first into `tmp`.
    const bool vfirst = ch > oh;
    const int64_t y0 = ty.start[0];
    const int64_t rows = vfirst ? 0 : ty.start[oh - 1] + ty.count[oh - 1] - y0;
    const int64_t plane = rows * ow;
    const Buf tmp(kSlotTmp, 3 * plane);
    const int64_t grain_h = par ? 1 : rows + 1;
    at::parallel_for(0, rows, grain_h, [&](int64_t r0, int64_t r1) {
      const Buf line(kSlotLine, 3 * cw);
      float* ln = line.get();
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* row = src + (top + y0 + r) * sy + left * sx;
        if (sc == 1 && sx == 3) {
#pragma omp simd
          for (int64_t q = 0; q < 3 * cw; ++q) ln[q] = static_cast<float>(row[q]);
        } else {
          for (int c = 0; c < 3; ++c) {
            const uint8_t* rc = row + c * sc;
            for (int64_t x = 0; x < cw; ++x) ln[3 * x + c] = static_cast<float>(rc[x * sx]);
          }
        }
        hpass(ln, tx, ow, tmp.get() + r * ow, tmp.get() + plane + r * ow, tmp.get() + 2 * plane + r * ow);
      }
    });

    const OpPlan plan = plan_ops(factors, order);
    const int64_t npix = oh * ow;
    const bool blur = sigma > 0.0f;
    // The whole image is kept when contrast needs its mean or the blur its neighbourhood.
    const bool keep = plan.needs_mean || blur;
    const Buf img(kSlotImg, keep ? 3 * npix : 0);
    std::vector<double> row_sum(plan.needs_mean ? oh : 0);
    const int64_t grain_o = par ? 1 : oh + 1;
    at::parallel_for(0, oh, grain_o, [&](int64_t i0, int64_t i1) {
      const Buf row_buf(kSlotRow, keep ? 0 : 3 * ow);
      const Buf vl(kSlotVline, vfirst ? 3 * cw : 0);
      for (int64_t i = i0; i < i1; ++i) {
        float* rgb[3];
        for (int c = 0; c < 3; ++c) {
          rgb[c] = keep ? img.get() + c * npix + i * ow : row_buf.get() + c * ow;
        }
        if (vfirst) {
          vline(src + (top + ty.start[i]) * sy + left * sx, sy, sx, sc, cw, &ty.w[i * ty.K], ty.count[i], vl.get());
          hpass(vl.get(), tx, ow, rgb[0], rgb[1], rgb[2]);
          div255(rgb, ow);
        } else {
          vpass(tmp.get(), plane, ow, &ty.w[i * ty.K], ty.count[i], ty.start[i] - y0, rgb);
        }
        if (cubic) clamp_rows(rgb, ow);
        row_ops(plan, 0, plan.split, 0.0f, rgb[0], rgb[1], rgb[2], ow);
        if (plan.needs_mean) {
          row_sum[i] = gray_sum(rgb[0], rgb[1], rgb[2], ow);
        } else {
          colour_row(plan, 0.0f, rgb);
          if (!blur) write_row(rgb, i);
        }
      }
    });
    if (plan.needs_mean) {
      double total = 0.0;
      for (int64_t i = 0; i < oh; ++i) total += row_sum[i];
      const float gmean = static_cast<float>(total / static_cast<double>(npix));
      at::parallel_for(0, oh, grain_o, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          float* rgb[3] = {img.get() + i * ow, img.get() + npix + i * ow, img.get() + 2 * npix + i * ow};
          colour_row(plan, gmean, rgb);
          if (!blur) write_row(rgb, i);
        }
      });
    }
    if (blur) blur_and_write(img.get(), par);
  }

  // Separable Gaussian blur of the colour-processed image img [3, oh, ow], then write_row per row.
  void blur_and_write(const float* img, bool par) const {
    const int64_t npix = oh * ow;
    const int64_t rx = blur_radius(sigma, ow), ry = blur_radius(sigma, oh);
    const std::vector<float> wx = blur_weights(sigma, rx), wy = blur_weights(sigma, ry);
    const Buf hb(kSlotBlur, 3 * npix);
    // Rows of the three planes (row r of plane c is row c * oh + r of img).
    at::parallel_for(0, 3 * oh, par ? 1 : 3 * oh + 1, [&](int64_t r0, int64_t r1) {
      const Buf pad(kSlotLine, ow + 2 * rx);
      for (int64_t r = r0; r < r1; ++r) blur_row(img + r * ow, ow, rx, wx.data(), pad.get(), hb.get() + r * ow);
    });
    at::parallel_for(0, oh, par ? 1 : oh + 1, [&](int64_t i0, int64_t i1) {
      const Buf row_buf(kSlotRow, 3 * ow);
      for (int64_t i = i0; i < i1; ++i) {
        float* rgb[3];
        for (int c = 0; c < 3; ++c) {
          rgb[c] = row_buf.get() + c * ow;
          blur_col(hb.get() + c * npix, oh, ow, i, ry, wy.data(), rgb[c]);
        }
        write_row(rgb, i);
      }
    });
  }

  // Colour ops after the mean, grayscale: row in place.
  void colour_row(const OpPlan& plan, float gmean, float* const* rgb) const {
    row_ops(plan, plan.split, plan.count, gmean, rgb[0], rgb[1], rgb[2], ow);
    if (gray) gray_row(rgb[0], rgb[1], rgb[2], ow);
  }

  // Solarize, normalise, convert: output row i (rgb is overwritten).
  void write_row(float* const* rgb, int64_t i) const {
    if (solar) solarize_row(rgb, ow);
    for (int c = 0; c < 3; ++c) {
      // NCHW: channel plane c, row i; channels-last (NHWC memory): pixel (i, j) at (i * ow + j) * 3 + c.
      out_t* d = channels_last ? out + i * ow * 3 + c : out + (c * oh + i) * ow;
      const int64_t xs = channels_last ? 3 : 1;
      if constexpr (std::is_same_v<out_t, uint8_t>) {
        quantise_row(rgb[c], ow);
      } else if constexpr (std::is_same_v<out_t, float>) {
        if (!channels_last) {
          normalise_row(rgb[c], mean[c], std[c], ow, d);
          continue;
        }
        normalise_row(rgb[c], mean[c], std[c], ow, rgb[c]);
      } else {
        normalise_row(rgb[c], mean[c], std[c], ow, rgb[c]);
      }
      for (int64_t j = 0; j < ow; ++j) d[j * xs] = static_cast<out_t>(rgb[c][j]);
    }
  }
};

// A batch output is large (154 MB for 256 x 3 x 224 x 224 fp32) and freshly mapped on every call:
// with 4 KiB pages, the first-touch page faults cost as much as the resampling itself. Ask for
// transparent huge pages on the 2 MiB-aligned part (best effort, advice only; what torch's
// THP_MEM_ALLOC_ENABLE=1 does for every large CPU allocation).
void advise_huge_pages(void* ptr, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  const uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (p + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)ptr;
  (void)bytes;
#endif
}

template <typename out_t>
void run_batch(const AugmentArgs& a, bool hwc, int64_t oh, int64_t ow, bool channels_last, at::Tensor& out) {
  const float* sg = a.blur.defined() ? a.blur.data_ptr<float>() : nullptr;
  // Output i reads image src[i] (several views of one image share its bytes), or image i.
  const int64_t* src = a.source.defined() ? a.source.data_ptr<int64_t>() : nullptr;
  const int64_t n = a.m;
  const uint8_t* base = a.data.data_ptr<uint8_t>();
  const int64_t* off = a.offsets.data_ptr<int64_t>();
  const int64_t* sz = a.sizes.data_ptr<int64_t>();
  const int64_t* bx = a.boxes.data_ptr<int64_t>();
  // The flags are read as bytes (any non-zero byte is true): a bool tensor viewed from other bytes may
  // hold values other than 0 and 1, which are undefined behaviour when read as C++ bool.
  const uint8_t* fl = static_cast<const uint8_t*>(a.flip.data_ptr());
  const float* fa = a.factors.data_ptr<float>();
  const int64_t* od = a.order.data_ptr<int64_t>();
  const uint8_t* gr = static_cast<const uint8_t*>(a.gray.data_ptr());
  const uint8_t* so = static_cast<const uint8_t*>(a.solarize.data_ptr());
  out_t* o = out.data_ptr<out_t>();
  auto job = [&](int64_t i) {
    const int64_t s = src != nullptr ? src[i] : i;
    const int64_t H = sz[2 * s], W = sz[2 * s + 1];
    ImageJob<out_t> jb;
    jb.src = (a.bases.empty() ? base : a.bases[s]) + off[s];
    jb.H = H;
    jb.W = W;
    jb.sy = hwc ? W * 3 : W;
    jb.sx = hwc ? 3 : 1;
    jb.sc = hwc ? 1 : H * W;
    jb.top = bx[4 * i];
    jb.left = bx[4 * i + 1];
    jb.ch = bx[4 * i + 2];
    jb.cw = bx[4 * i + 3];
    jb.flip = fl[i] != 0;
    jb.gray = gr[i] != 0;
    jb.solar = so[i] != 0;
    jb.interp = a.interp;
    jb.sigma = sg != nullptr ? sg[i] : 0.0f;
    jb.factors = fa + 4 * i;
    jb.order = od + 4 * i;
    jb.mean = a.mean;
    jb.std = a.std;
    jb.oh = oh;
    jb.ow = ow;
    jb.out = o + i * 3 * oh * ow;
    jb.channels_last = channels_last;
    return jb;
  };
  const int64_t threads = at::get_num_threads();
  if (n >= threads) {
    // One task per thread, each pulling the next image from a shared counter: images differ in cost
    // (crop size, contrast pass) and threads of a shared machine in speed, so a static split of the
    // images would wait for the slowest chunk. Largest (estimated) first: the last images handed out
    // are the cheapest, so the threads finish close together (a big crop pulled last left the other
    // threads idle for its whole duration).
    std::vector<int64_t> todo(n);
    for (int64_t i = 0; i < n; ++i) todo[i] = i;
    if (threads > 1) {
      std::vector<double> cost(n);
      for (int64_t i = 0; i < n; ++i) {
        // Source pixels read (uint8 -> float and the first resampling pass) plus output pixels (second
        // pass, colour ops, writes; a blurred image twice more); relative weights measured roughly.
        const double src_px = static_cast<double>(bx[4 * i + 2]) * static_cast<double>(bx[4 * i + 3]);
        const double blur_w = (sg != nullptr && sg[i] > 0.0f) ? 3.0 : 1.0;
        cost[i] = src_px + 6.0 * blur_w * static_cast<double>(oh * ow);
      }
      std::stable_sort(todo.begin(), todo.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
    }
    std::atomic<int64_t> next{0};
    at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
      for (int64_t k = next.fetch_add(1); k < n; k = next.fetch_add(1)) job(todo[k]).run(false);
    });
  } else {
    for (int64_t i = 0; i < n; ++i) job(i).run(true);
  }
}

at::Tensor fused_augment_cpu_impl(const at::Tensor& data, const at::Tensor& offsets, const at::Tensor& sizes,
                             bool hwc, const at::Tensor& boxes, const at::Tensor& flip,
                             const at::Tensor& factors, const at::Tensor& order, const at::Tensor& gray,
                             at::ArrayRef<double> mean, at::ArrayRef<double> std, int64_t out_h,
                             int64_t out_w, at::ScalarType out_dtype, bool check,
                             const std::optional<at::Tensor>& solarize, bool channels_last,
                             int64_t interpolation, const std::optional<at::Tensor>& blur_sigma,
                             const std::optional<at::Tensor>& source,
                             const std::optional<at::TensorList>& images, bool /*clusters: a CUDA launch choice*/,
                             const std::optional<at::Tensor>& out_arg) {
  // The values are always checked on the CPU (`check` only spares the CUDA op a host copy): they are
  // host memory already, and the loop costs nanoseconds per image.
  (void)check;
  const AugmentArgs a = prepare_augment_args(data, offsets, sizes, boxes, flip, factors, order, gray, solarize,
                                             mean, std, out_h, out_w, out_dtype, at::kCPU, interpolation,
                                             blur_sigma, source, images);
  check_augment_values(a.n, a.m, a.data.numel(), a.offsets.data_ptr<int64_t>(), a.sizes.data_ptr<int64_t>(),
                       a.boxes.data_ptr<int64_t>(), a.order.data_ptr<int64_t>(), a.factors.data_ptr<float>(),
                       a.blur.defined() ? a.blur.data_ptr<float>() : nullptr,
                       a.source.defined() ? a.source.data_ptr<int64_t>() : nullptr,
                       a.numels.empty() ? nullptr : a.numels.data());
  at::Tensor out = make_output(a, out_h, out_w, out_dtype, channels_last, out_arg);
  // (A caller's out is typically reused batch after batch: its pages are already there.)
  if (!out_arg.has_value()) advise_huge_pages(out.data_ptr(), out.nbytes());
  switch (out_dtype) {
    case at::kFloat:
      run_batch<float>(a, hwc, out_h, out_w, channels_last, out);
      break;
    case at::kBFloat16:
      run_batch<c10::BFloat16>(a, hwc, out_h, out_w, channels_last, out);
      break;
    case at::kByte:
      run_batch<uint8_t>(a, hwc, out_h, out_w, channels_last, out);
      break;
    default:
      run_batch<c10::Half>(a, hwc, out_h, out_w, channels_last, out);
      break;
  }
  return out;
}

}  // namespace
}  // namespace augment
}  // namespace vlkernels

TORCH_LIBRARY_IMPL(vlkernels, CPU, m) {
  // fused_augment.out: the same into the caller's tensor (e.g. one buffer reused batch after batch: no
  // page faults of a fresh output on every call, which is what kept two threads from scaling).
  m.impl("fused_augment", &vlkernels::augment::augment_functional<vlkernels::augment::fused_augment_cpu_impl>);
  m.impl("fused_augment.out", &vlkernels::augment::augment_out<vlkernels::augment::fused_augment_cpu_impl>);
}
