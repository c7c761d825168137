// Fused augmentation, C++ CPU kernel (registered as vlkernels::fused_augment for the CPU key).
//
// Per image: separable antialiased resize (horizontal pass over the crop rows into a float scratch,
// then vertical pass per output row), with the flip folded into the horizontal tap table; the colour
// ops run on the output rows while they are hot in cache. Contrast needs the gray mean of the whole
// image as it stands just before it, so rows are kept in a per-image scratch and finished in a second
// pass over rows only when contrast is active.
// Parallel over images (torch's intra-op OpenMP pool, at::parallel_for); when there are fewer images
// than threads, over rows inside each image instead.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "augment.h"
#include "augment_checks.h"

namespace vlkernels {
namespace augment {
namespace {

struct TapTable {
  int K = 0;                   // taps stored per output pixel
  std::vector<int64_t> start;  // first source index (relative to the crop) per output pixel
  std::vector<int> count;
  std::vector<float> w;        // [out, K], zero-padded
};

TapTable make_taps(int64_t in, int64_t out, bool reverse) {
  TapTable t;
  t.K = max_taps(in, out);
  t.start.resize(out);
  t.count.resize(out);
  t.w.assign(static_cast<size_t>(out) * t.K, 0.0f);
  for (int64_t i = 0; i < out; ++i) {
    const int64_t src = reverse ? out - 1 - i : i;
    aa_weights(in, out, src, &t.w[i * t.K], &t.start[i], &t.count[i]);
  }
  return t;
}

// Apply `ops[from, to)` of a plan to one row of planar pixels (one vectorisable loop per op).
void row_ops(const OpPlan& plan, int from, int to, float mean, float* r, float* g, float* b, int64_t n) {
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

template <typename out_t>
struct ImageJob {
  const uint8_t* src;
  int64_t H, W, sy, sx, sc;  // element strides of row, column, channel
  int64_t top, left, ch, cw;
  bool flip, gray;
  const float* factors;
  const int64_t* order;
  const float* mean;
  const float* std;
  int64_t oh, ow;
  out_t* out;  // [3, oh, ow]

  // par: split the row loops across threads (used when there are fewer images than threads).
  void run(bool par) const {
    const TapTable tx = make_taps(cw, ow, flip);
    const TapTable ty = make_taps(ch, oh, false);
    const int64_t y0 = ty.start[0];
    const int64_t rows = ty.start[oh - 1] + ty.count[oh - 1] - y0;
    const int64_t plane = rows * ow;
    std::vector<float> tmp(static_cast<size_t>(3 * plane));
    const int64_t grain_h = par ? 1 : rows + 1;
    at::parallel_for(0, rows, grain_h, [&](int64_t r0, int64_t r1) {
      std::vector<float> line(static_cast<size_t>(3 * cw));
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* row = src + (top + y0 + r) * sy + left * sx;
        for (int c = 0; c < 3; ++c) {
          float* lc = line.data() + c * cw;
          const uint8_t* rc = row + c * sc;
          for (int64_t x = 0; x < cw; ++x) lc[x] = static_cast<float>(rc[x * sx]);
        }
        for (int c = 0; c < 3; ++c) {
          const float* lc = line.data() + c * cw;
          float* dst = tmp.data() + c * plane + r * ow;
          for (int64_t j = 0; j < ow; ++j) {
            const float* w = &tx.w[j * tx.K];
            const float* s = lc + tx.start[j];
            const int n = tx.count[j];
            float acc = 0.0f;
            for (int k = 0; k < n; ++k) acc += w[k] * s[k];
            dst[j] = acc;
          }
        }
      }
    });

    const OpPlan plan = plan_ops(factors, order);
    const int64_t npix = oh * ow;
    std::vector<float> img(plan.needs_mean ? static_cast<size_t>(3 * npix) : 0);
    std::vector<double> row_sum(plan.needs_mean ? oh : 0);
    const int64_t grain_o = par ? 1 : oh + 1;
    at::parallel_for(0, oh, grain_o, [&](int64_t i0, int64_t i1) {
      std::vector<float> scratch(plan.needs_mean ? 0 : static_cast<size_t>(3 * ow));
      for (int64_t i = i0; i < i1; ++i) {
        float* rgb[3];
        for (int c = 0; c < 3; ++c) {
          rgb[c] = plan.needs_mean ? img.data() + c * npix + i * ow : scratch.data() + c * ow;
        }
        const float* w = &ty.w[i * ty.K];
        const int n = ty.count[i];
        const int64_t rr = ty.start[i] - y0;
        for (int c = 0; c < 3; ++c) {
          float* d = rgb[c];
          std::fill(d, d + ow, 0.0f);
          for (int k = 0; k < n; ++k) {
            const float wk = w[k];
            const float* s = tmp.data() + c * plane + (rr + k) * ow;
#pragma omp simd
            for (int64_t j = 0; j < ow; ++j) d[j] += wk * s[j];
          }
#pragma omp simd
          for (int64_t j = 0; j < ow; ++j) d[j] /= 255.0f;
        }
        row_ops(plan, 0, plan.split, 0.0f, rgb[0], rgb[1], rgb[2], ow);
        if (plan.needs_mean) {
          double s = 0.0;
          for (int64_t j = 0; j < ow; ++j) s += gray_of(rgb[0][j], rgb[1][j], rgb[2][j]);
          row_sum[i] = s;
        } else {
          finish_row(plan, 0.0f, rgb, i);
        }
      }
    });
    if (!plan.needs_mean) return;
    double total = 0.0;
    for (int64_t i = 0; i < oh; ++i) total += row_sum[i];
    const float gmean = static_cast<float>(total / static_cast<double>(npix));
    at::parallel_for(0, oh, grain_o, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        float* rgb[3] = {img.data() + i * ow, img.data() + npix + i * ow, img.data() + 2 * npix + i * ow};
        finish_row(plan, gmean, rgb, i);
      }
    });
  }

  // Colour ops after the mean, grayscale, normalise, convert: output row i.
  void finish_row(const OpPlan& plan, float gmean, float* const* rgb, int64_t i) const {
    float* r = rgb[0];
    float* g = rgb[1];
    float* b = rgb[2];
    row_ops(plan, plan.split, plan.count, gmean, r, g, b, ow);
    if (gray) {
#pragma omp simd
      for (int64_t j = 0; j < ow; ++j) {
        const float l = gray_of(r[j], g[j], b[j]);
        r[j] = l;
        g[j] = l;
        b[j] = l;
      }
    }
    for (int c = 0; c < 3; ++c) {
      const float m = mean[c];
      const float s = std[c];
      const float* v = rgb[c];
      out_t* d = out + (c * oh + i) * ow;
      for (int64_t j = 0; j < ow; ++j) d[j] = static_cast<out_t>((v[j] - m) / s);
    }
  }
};

template <typename out_t>
void run_batch(const at::Tensor& data, const at::Tensor& offsets, const at::Tensor& sizes, bool hwc,
               const at::Tensor& boxes, const at::Tensor& flip, const at::Tensor& factors,
               const at::Tensor& order, const at::Tensor& gray, const float* mean, const float* std,
               int64_t oh, int64_t ow, at::Tensor& out) {
  const int64_t n = offsets.size(0);
  const uint8_t* base = data.data_ptr<uint8_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* sz = sizes.data_ptr<int64_t>();
  const int64_t* bx = boxes.data_ptr<int64_t>();
  const bool* fl = flip.data_ptr<bool>();
  const float* fa = factors.data_ptr<float>();
  const int64_t* od = order.data_ptr<int64_t>();
  const bool* gr = gray.data_ptr<bool>();
  out_t* o = out.data_ptr<out_t>();
  auto job = [&](int64_t i) {
    const int64_t H = sz[2 * i], W = sz[2 * i + 1];
    ImageJob<out_t> jb;
    jb.src = base + off[i];
    jb.H = H;
    jb.W = W;
    jb.sy = hwc ? W * 3 : W;
    jb.sx = hwc ? 3 : 1;
    jb.sc = hwc ? 1 : H * W;
    jb.top = bx[4 * i];
    jb.left = bx[4 * i + 1];
    jb.ch = bx[4 * i + 2];
    jb.cw = bx[4 * i + 3];
    jb.flip = fl[i];
    jb.gray = gr[i];
    jb.factors = fa + 4 * i;
    jb.order = od + 4 * i;
    jb.mean = mean;
    jb.std = std;
    jb.oh = oh;
    jb.ow = ow;
    jb.out = o + i * 3 * oh * ow;
    return jb;
  };
  if (n >= at::get_num_threads()) {
    at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) job(i).run(false);
    });
  } else {
    for (int64_t i = 0; i < n; ++i) job(i).run(true);
  }
}

at::Tensor fused_augment_cpu(const at::Tensor& data, const at::Tensor& offsets, const at::Tensor& sizes,
                             bool hwc, const at::Tensor& boxes, const at::Tensor& flip,
                             const at::Tensor& factors, const at::Tensor& order, const at::Tensor& gray,
                             at::ArrayRef<double> mean, at::ArrayRef<double> std, int64_t out_h,
                             int64_t out_w, at::ScalarType out_dtype) {
  check_augment_args(data, offsets, sizes, boxes, flip, factors, order, gray, mean, std, out_h, out_w,
                     out_dtype, at::kCPU);
  const int64_t n = offsets.size(0);
  // Host-side checks of every box against its image (the CUDA path leaves these to the Python side).
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* sz = sizes.data_ptr<int64_t>();
  const int64_t* bx = boxes.data_ptr<int64_t>();
  const int64_t* od = order.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t H = sz[2 * i], W = sz[2 * i + 1];
    TORCH_CHECK(H >= 1 && W >= 1, "fused_augment: image ", i, " has size ", H, "x", W);
    TORCH_CHECK(off[i] >= 0 && off[i] + 3 * H * W <= data.numel(), "fused_augment: image ", i,
                " (offset ", off[i], ", ", H, "x", W, "x3) lies outside data of ", data.numel(), " bytes");
    const int64_t t = bx[4 * i], l = bx[4 * i + 1], h = bx[4 * i + 2], w = bx[4 * i + 3];
    TORCH_CHECK(t >= 0 && l >= 0 && h >= 1 && w >= 1 && t + h <= H && l + w <= W, "fused_augment: crop box (",
                t, ", ", l, ", ", h, ", ", w, ") (top, left, height, width) of image ", i,
                " lies outside the ", H, "x", W, " image (or is empty)");
    int seen = 0;
    for (int k = 0; k < 4; ++k) {
      const int64_t op = od[4 * i + k];
      TORCH_CHECK(op >= 0 && op < 4, "fused_augment: order of image ", i, " holds ", op, ", not 0..3");
      seen |= 1 << op;
    }
    TORCH_CHECK(seen == 15, "fused_augment: order of image ", i, " is not a permutation of 0..3");
    const float hue = factors.data_ptr<float>()[4 * i + kHue];
    TORCH_CHECK(hue >= -0.5f && hue <= 0.5f, "fused_augment: hue factor of image ", i, " is ", hue,
                ", outside [-0.5, 0.5]");
  }
  at::Tensor out = at::empty({n, 3, out_h, out_w}, data.options().dtype(out_dtype));
  const float m[3] = {static_cast<float>(mean[0]), static_cast<float>(mean[1]), static_cast<float>(mean[2])};
  const float s[3] = {static_cast<float>(std[0]), static_cast<float>(std[1]), static_cast<float>(std[2])};
  switch (out_dtype) {
    case at::kFloat:
      run_batch<float>(data, offsets, sizes, hwc, boxes, flip, factors, order, gray, m, s, out_h, out_w, out);
      break;
    case at::kBFloat16:
      run_batch<c10::BFloat16>(data, offsets, sizes, hwc, boxes, flip, factors, order, gray, m, s, out_h,
                               out_w, out);
      break;
    default:
      run_batch<c10::Half>(data, offsets, sizes, hwc, boxes, flip, factors, order, gray, m, s, out_h, out_w,
                           out);
      break;
  }
  return out;
}

}  // namespace
}  // namespace augment
}  // namespace vlkernels

TORCH_LIBRARY_IMPL(vlkernels, CPU, m) { m.impl("fused_augment", &vlkernels::augment::fused_augment_cpu); }
