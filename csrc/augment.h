// Fused augmentation: the per-pixel maths shared by the C++ (CPU) and CUDA kernels, written once so
// that both backends follow the same formulas as the PyTorch reference (vlkernels/augment/reference.py,
// i.e. torchvision's resized_crop(antialias=True), adjust_* and rgb_to_grayscale, gaussian_blur and
// solarize on float images).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define VLK_HD __host__ __device__ __forceinline__
#else
#define VLK_HD inline
#endif

namespace vlkernels {
namespace augment {

// Colour-op ids in the per-sample order (torchvision's ColorJitter numbering).
enum ColorOp : int { kBrightness = 0, kContrast = 1, kSaturation = 2, kHue = 3 };

// Per-image validity of the op's arguments, written once for the host (the CPU op, the CUDA op's
// checked path) and the device (the CUDA kernel's guard). Every comparison is free of overflow:
// differences are only formed of values already known to be in range, so hostile int64 values
// (top + height past INT64_MAX, 3 * H * W past INT64_MAX) cannot wrap into a passing check.
enum SampleError : int {
  kSampleOk = 0,
  kBadSize,     // sizes: H, W >= 1 and 3 * H * W representable
  kBadOffset,   // offsets: the image's 3 * H * W bytes lie inside data
  kBadBox,      // boxes: 0 <= top <= H - height, 0 <= left <= W - width, height, width >= 1
  kBadOrder,    // order: a permutation of 0..3
  kBadFactor,   // factors: brightness, contrast, saturation finite and >= 0
  kBadHue,      // factors: hue finite, in [-0.5, 0.5]
  kBadSigma,    // blur_sigma: finite and >= 0 (0 = no blur)
  kBadSource,   // source: 0 <= source[m] < N (the image output m reads)
};

// Interpolation ids of the op's `interpolation` argument.
enum Interpolation : int { kBilinear = 0, kBicubic = 1 };

VLK_HD int check_sample(int64_t numel, int64_t off, int64_t H, int64_t W, const int64_t* box,
                        const int64_t* order, const float* factors, float sigma) {
  constexpr int64_t kMax = INT64_MAX;
  if (H < 1 || W < 1 || H > kMax / 3 / W) return kBadSize;
  const int64_t bytes = 3 * H * W;
  if (off < 0 || off > numel || bytes > numel - off) return kBadOffset;
  const int64_t t = box[0], l = box[1], h = box[2], w = box[3];
  if (h < 1 || w < 1 || h > H || w > W || t < 0 || l < 0 || t > H - h || l > W - w) return kBadBox;
  int seen = 0;
  for (int k = 0; k < 4; ++k) {
    const int64_t op = order[k];
    if (op < 0 || op > 3) return kBadOrder;
    seen |= 1 << op;
  }
  if (seen != 15) return kBadOrder;
  for (int c = 0; c < 3; ++c) {
    // Written so that NaN fails too (every comparison with NaN is false).
    if (!(factors[c] >= 0.0f && factors[c] <= 3.4028234663852886e38f)) return kBadFactor;
  }
  if (!(factors[kHue] >= -0.5f && factors[kHue] <= 0.5f)) return kBadHue;
  if (!(sigma >= 0.0f && sigma <= 3.4028234663852886e38f)) return kBadSigma;
  return kSampleOk;
}

// Which image output m reads: source[m] when the op got a source index (several outputs, or views,
// per image without copying it), else m itself. -1 when the index is out of range [0, n_images).
VLK_HD int64_t source_of(const int64_t* source, int64_t m, int64_t n_images) {
  const int64_t s = source != nullptr ? source[m] : m;
  return (s < 0 || s >= n_images) ? -1 : s;
}

// check_sample of output m: its source index first (kBadSource), then its image (offset, size) and
// its own parameters (box, order, factors, sigma). The host checks and the CUDA guard both call this.
VLK_HD int check_output(int64_t numel, int64_t n_images, const int64_t* source, int64_t m,
                        const int64_t* offsets, const int64_t* sizes, const int64_t* box, const int64_t* order,
                        const float* factors, float sigma) {
  const int64_t s = source_of(source, m, n_images);
  if (s < 0) return kBadSource;
  return check_sample(numel, offsets[s], sizes[2 * s], sizes[2 * s + 1], box, order, factors, sigma);
}

constexpr float kGrayR = 0.2989f;
constexpr float kGrayG = 0.587f;
constexpr float kGrayB = 0.114f;

// Plain compares rather than fminf/fmaxf: the same values on [0, 1] data, and they vectorise.
VLK_HD float vmax(float a, float b) { return a > b ? a : b; }
VLK_HD float vmin(float a, float b) { return a < b ? a : b; }
VLK_HD float clamp01(float x) { return vmin(vmax(x, 0.0f), 1.0f); }

// A uint8 value as a float, exactly, without a conversion instruction: the bits 0x4B000000 | b are the
// float 2^23 + b (b fills the low mantissa bits), and subtracting 2^23 is exact. On the GPU that is an
// integer OR and an FADD (64 and 128 per clock per SM on sm_80 / sm_90) instead of an I2F, which the
// hardware issues at 16 per clock per SM (the CUDA programming guide's rate for conversions): the
// resampling loops convert one byte per tap and channel. tests/test_augment_bands.py checks all 256
// values against the plain conversion.
VLK_HD float u8_to_float(uint32_t b) {
  const uint32_t bits = 0x4B000000u | b;
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits) - 8388608.0f;
#else
  float f;
  __builtin_memcpy(&f, &bits, sizeof f);
  return f - 8388608.0f;
#endif
}

// Row and column of the flat index q = row * w + col as a thread visits q0, q0 + stride, ... (a block's
// threads striding over an output of width w): one division at the start, then per step an add and at
// most one subtraction (stride % w < w), where row = q / w, col = q % w per item was an integer division
// by a runtime width (on the GPU a reciprocal and conversions on the 16-per-clock XU pipe) in every
// resampling loop. tests/test_augment_bands.py walks it against q / w, q % w on the host.
struct GridWalk {
  int row, col;
  int drow, dcol, w;
  VLK_HD GridWalk(int q0, int stride, int w_) : row(q0 / w_), col(q0 % w_), drow(stride / w_), dcol(stride % w_), w(w_) {}
  VLK_HD void step() {
    row += drow;
    col += dcol;
    if (col >= w) {
      col -= w;
      ++row;
    }
  }
};

// The resampling's inner loops, written once for the CUDA kernel and the host tests. A source is a run of
// three-channel values along one axis, read in order: read(x) gives the current position's three values
// as floats, next() steps one position, at(k) is the source k positions on.
//
// ByteSource: one row of a uint8 image (the x taps), through Load (__ldg on the GPU, a plain read in the
// tests). Channels adjacent in channels-last images (kHwc: a position 3 bytes on, the channels at +1, +2
// of one pointer) or a plane apart (sc bytes: a pointer a plane); each byte as an exact float
// (u8_to_float). Unrolled on the GPU, a step's loads take immediate offsets from the stepped pointers.
template <bool kHwc, typename Load>
struct ByteSource {
  const uint8_t* p;
  const uint8_t* g;  // planar: the other planes' pointers
  const uint8_t* b;
  Load ld;
  VLK_HD ByteSource(const uint8_t* p_, int64_t sc, Load ld_)
      : p(p_), g(kHwc ? p_ : p_ + sc), b(kHwc ? p_ : p_ + 2 * sc), ld(ld_) {}
  VLK_HD void read(float* x) const {
    x[0] = u8_to_float(ld(p));
    x[1] = u8_to_float(ld(kHwc ? p + 1 : g));
    x[2] = u8_to_float(ld(kHwc ? p + 2 : b));
  }
  VLK_HD void next() {
    p += kHwc ? 3 : 1;
    if (!kHwc) {
      ++g;
      ++b;
    }
  }
  VLK_HD ByteSource at(int k) const {
    ByteSource s = *this;
    const int64_t off = static_cast<int64_t>(k) * (kHwc ? 3 : 1);
    s.p += off;
    s.g += off;
    s.b += off;
    return s;
  }
};

// RowSource: one column of the separable passes' float row buffer (the y taps): a position `step` floats
// on (a buffered row), the channels `plane` floats apart.
struct RowSource {
  const float* h;
  int plane, step;
  VLK_HD void read(float* x) const {
    x[0] = h[0];
    x[1] = h[plane];
    x[2] = h[2 * plane];
  }
  VLK_HD void next() { h += step; }
  VLK_HD RowSource at(int k) const { return RowSource{h + static_cast<int64_t>(k) * step, plane, step}; }
};

// acc[c] += w(k0 + k) * value, k = 0 .. n-1, in order: the summation order of the CPU kernel's passes.
template <typename Src, typename W>
VLK_HD void sum_taps(Src src, int n, const W& w, int k0, float* acc) {
#if defined(__CUDA_ARCH__)
#pragma unroll 4
#endif
  for (int k = 0; k < n; ++k, src.next()) {
    const float wk = w(k0 + k);
    float x[3];
    src.read(x);
    acc[0] += wk * x[0];
    acc[1] += wk * x[1];
    acc[2] += wk * x[2];
  }
}

// Tap weights in a tap-major table: tap k at w[k * stride].
struct StridedWeights {
  const float* w;
  int stride;
  VLK_HD float operator()(int k) const { return w[k * stride]; }
};

// Whether two outputs' tap ranges nest as sum_taps_pair needs: b's taps [d, d + n_b) start no earlier
// than a's [0, n_a) and end no earlier (always so for neighbouring outputs of an antialiased resampling
// ordered by their first tap: first and last taps never decrease along the output).
VLK_HD bool taps_nest(int d, int n_a, int n_b) { return d >= 0 && n_a <= d + n_b; }

// The same sums for two neighbouring outputs a and b at once: taps [0, n_a) of a and [d, d + n_b) of b
// counted from a's first tap (src), where taps_nest(d, n_a, n_b). Weights from tap-major tables (wa, wb, both with stride). Where the ranges overlap, each
// source value is read (and converted) once for both outputs (about half the loads of two separate sums
// where the taps of neighbours overlap, as in every downscale); each output's terms are still added in
// tap order, so acc_a and acc_b are bitwise the sums sum_taps gives one at a time.
template <typename Src>
VLK_HD void sum_taps_pair(const Src& src, int n_a, const float* wa, int d, int n_b, const float* wb, int stride,
                          float* acc_a, float* acc_b) {
  const int a_only = d < n_a ? d : n_a;
  sum_taps(src, a_only, StridedWeights{wa, stride}, 0, acc_a);
  Src both = src.at(d);
  const float* pa = wa + static_cast<int64_t>(d) * stride;
  const float* pb = wb;
#if defined(__CUDA_ARCH__)
#pragma unroll 2
#endif
  for (int k = d; k < n_a; ++k, both.next(), pa += stride, pb += stride) {
    float x[3];
    both.read(x);
    const float w0 = *pa, w1 = *pb;
    acc_a[0] += w0 * x[0];
    acc_a[1] += w0 * x[1];
    acc_a[2] += w0 * x[2];
    acc_b[0] += w1 * x[0];
    acc_b[1] += w1 * x[1];
    acc_b[2] += w1 * x[2];
  }
  const int b_from = d > n_a ? d : n_a;
  sum_taps(src.at(b_from), d + n_b - b_from, StridedWeights{wb, stride}, b_from - d, acc_b);
}

VLK_HD float gray_of(float r, float g, float b) { return kGrayR * r + kGrayG * g + kGrayB * b; }

// uint8 output: the [0, 1] value times 255, rounded half to even, clamped to [0, 255] (no
// normalisation). Returned as a float holding the integer, exactly representable.
VLK_HD float quantise_u8(float x) {
  const float v = rintf(x * 255.0f);
  return v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
}

// torchvision v2 F.solarize on a float image with threshold 128/255: x >= threshold -> 1 - x. (The
// float32 of 128/255 equals the float32 quotient 128.0f / 255.0f, the threshold the reference uses.)
constexpr float kSolarizeThreshold = 128.0f / 255.0f;
VLK_HD float solarize(float x) { return x >= kSolarizeThreshold ? 1.0f - x : x; }

// Whether op `op` with factor `f` changes the image (identity factors are skipped, as torchvision
// skips an op whose range is the single identity value).
VLK_HD bool op_active(int op, float f) { return op == kHue ? f != 0.0f : f != 1.0f; }

// Antialiased resampling filters, PyTorch's interpolate(antialias=True) (aten's _upsample_bilinear2d_aa
// and _upsample_bicubic2d_aa, which torchvision's resize(antialias=True) calls on float images):
// - bilinear: triangle filter, half-width 1;
// - bicubic: Keys' cubic convolution with a = -0.5 (the antialias path's coefficient; plain bicubic
//   without antialias uses a = -0.75), half-width 2.
// The half-width is scaled by the downscale factor when downscaling (scale = in / out >= 1), and the
// filter argument divided by it; when upscaling both stay as they are (so bicubic upscaling with
// antialias=True is the a = -0.5 cubic, not the a = -0.75 of antialias=False).
VLK_HD float aa_filter(float x, int interp) {
  x = fabsf(x);
  if (interp != kBicubic) return x < 1.0f ? 1.0f - x : 0.0f;
  constexpr float a = -0.5f;
  if (x < 1.0f) return ((a + 2.0f) * x - (a + 3.0f)) * x * x + 1.0f;
  if (x < 2.0f) return ((a * x - 5.0f * a) * x + 8.0f * a) * x - 4.0f * a;
  return 0.0f;
}

// a / b rounded to nearest, also in CUDA code built with --use_fast_math (where '/' is an approximate
// division, up to 2 ulp off). The resampling geometry goes through it: the tap centre is scale * (i + 0.5),
// so an ulp of error in scale grows with the output index i (seen on an H100: 612-700 pixel outputs
// 3e-4 away from the CPU op on the [0, 1] scale, against 1e-4 allowed).
VLK_HD float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

VLK_HD float aa_support(float scale, int interp) {
  const float half = interp == kBicubic ? 2.0f : 1.0f;
  return scale >= 1.0f ? half * scale : half;
}

// Upper bound on the taps of one output pixel along an axis of `in` -> `out` pixels.
VLK_HD int max_taps(int64_t in, int64_t out, int interp) {
  const float scale = div_rn(static_cast<float>(in), static_cast<float>(out));
  return static_cast<int>(ceilf(2.0f * aa_support(scale, interp))) + 2;
}

// Antialiased weights (aa_filter, support scaled by the downscale factor) of output pixel i along one
// axis, normalised to sum 1, taps cut at the borders of the crop (and renormalised): PyTorch's
// interpolate(antialias=True) rule. Writes taps to w[0], w[stride], ..., w[(n-1) * stride] (stride > 1:
// the tap-major tables of the CUDA kernel), returns the first source index in *start and the count in
// *n.
VLK_HD void aa_weights(int64_t in, int64_t out, int64_t i, int interp, float* w, int64_t* start, int* n,
                       int64_t stride = 1) {
  const float scale = div_rn(static_cast<float>(in), static_cast<float>(out));
  const float support = aa_support(scale, interp);
  const float invscale = scale >= 1.0f ? div_rn(1.0f, scale) : 1.0f;
  const float center = static_cast<float>(scale * (i + 0.5));
  int64_t lo = static_cast<int64_t>(center - support + 0.5f);
  lo = lo < 0 ? 0 : lo;
  int64_t hi = static_cast<int64_t>(center + support + 0.5f);
  hi = hi > in ? in : hi;
  const int count = static_cast<int>(hi - lo);
  float total = 0.0f;
  for (int j = 0; j < count; ++j) {
    const float x = static_cast<float>((static_cast<double>(j + lo) - center + 0.5) * invscale);
    const float wj = aa_filter(x, interp);
    w[j * stride] = wj;
    total += wj;
  }
  if (total != 0.0f) {
    for (int j = 0; j < count; ++j) w[j * stride] = div_rn(w[j * stride], total);
  }
  *start = lo;
  *n = count;
}

// Gaussian blur (torchvision v2 F.gaussian_blur on a float image: separable Gaussian, reflect padding,
// kernel x = -(k-1)/2 .. (k-1)/2, exp(-0.5 (x / sigma)^2), normalised to sum 1). The kernel size is
// not a parameter: k = 2 * ceil(3 sigma) + 1 (ceil in double), clipped per axis to 2 n - 1 for an axis of
// n output pixels (the largest size reflect padding allows, pad <= n - 1). blur_radius is (k - 1) / 2.
VLK_HD int64_t blur_radius(float sigma, int64_t n) {
  const double r = ceil(3.0 * static_cast<double>(sigma));
  const double lim = static_cast<double>(n - 1);
  return static_cast<int64_t>(r < lim ? r : lim);
}

// Unnormalised Gaussian weight of tap k (0 .. 2 radius) of a kernel of half-width radius.
VLK_HD float blur_raw(int64_t k, int64_t radius, float sigma) {
  const float t = static_cast<float>(k - radius) / sigma;
  return expf(-0.5f * (t * t));
}

// Reflect padding (torch's pad(mode="reflect"), no edge repeat) of index i in [-(n-1), 2 (n-1)].
VLK_HD int64_t reflect_index(int64_t i, int64_t n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); }

// torchvision's adjust_hue on one pixel: RGB -> HSV (_rgb2hsv), h = (h + hue) mod 1, HSV -> RGB
// (_hsv2rgb). Branch-free so that the CPU loop vectorises. The two modulo steps are written as
// exact conditional +-1: h / 6 + 1 lies in [5/6, 11/6] and, for |hue| <= 0.5, h + hue in [-0.5, 1.5),
// where fmod / torch.remainder reduce to these (exact) subtractions.
VLK_HD void hue_shift(float& r, float& g, float& b, float hue) {
  const float maxc = vmax(vmax(r, g), b);
  const float minc = vmin(vmin(r, g), b);
  const float cr = maxc - minc;
  // (No bool temporaries: an 8-bit mask next to the float-lane masks stops GCC's vectoriser.)
  const float s = cr / (maxc == minc ? 1.0f : maxc);
  const float div = maxc == minc ? 1.0f : cr;
  const float rc = (maxc - r) / div;
  const float gc = (maxc - g) / div;
  const float bc = (maxc - b) / div;
  const float h_r = bc - gc;
  const float h_g = 2.0f + rc - bc;
  const float h_b = 4.0f + gc - rc;
  float h = maxc == r ? h_r : (maxc == g ? h_g : h_b);
  // Both arms of every select are computed first: conditional FP arithmetic would stop GCC from
  // vectorising the loop (it must not speculate operations that may trap).
  h = h / 6.0f + 1.0f;
  const float h_wrap = h - 1.0f;
  h = h >= 1.0f ? h_wrap : h;
  h = h + hue;
  const float h_up = h + 1.0f;
  const float h_down = h - 1.0f;
  h = h < 0.0f ? h_up : (h >= 1.0f ? h_down : h);
  const float v = maxc;
  const float h6 = h * 6.0f;
  // h6 >= 0: truncation is floor. The sector is kept as a float so that every mask in the selects
  // has the width of a float lane (mixed-width masks stop GCC's vectoriser).
  const float fi = static_cast<float>(static_cast<int>(h6));
  const float f = h6 - fi;
  const float sec = fi == 6.0f ? 0.0f : fi;
  const float p = clamp01(v * (1.0f - s));
  const float q = clamp01(v * (1.0f - s * f));
  const float t = clamp01(v * (1.0f - s * (1.0f - f)));
  // One-hot sector weights times the candidates, as torchvision's einsum does (exact: one term is
  // 1 * x, the others 0 * y); branch-free, so the CPU loop vectorises.
  const float e0 = sec == 0.0f ? 1.0f : 0.0f;
  const float e1 = sec == 1.0f ? 1.0f : 0.0f;
  const float e2 = sec == 2.0f ? 1.0f : 0.0f;
  const float e3 = sec == 3.0f ? 1.0f : 0.0f;
  const float e4 = sec == 4.0f ? 1.0f : 0.0f;
  const float e5 = sec == 5.0f ? 1.0f : 0.0f;
  const float ro = e0 * v + e1 * q + e2 * p + e3 * p + e4 * t + e5 * v;
  const float go = e0 * t + e1 * v + e2 * v + e3 * q + e4 * p + e5 * p;
  const float bo = e0 * p + e1 * p + e2 * t + e3 * v + e4 * v + e5 * q;
  r = clamp01(ro);
  g = clamp01(go);
  b = clamp01(bo);
}

// One colour op on one pixel. `mean` is the gray mean of the whole current image (contrast only).
// (1 - factor) is formed in double, as the reference's Python float does, then rounded once.
VLK_HD void color_op(int op, float f, float mean, float& r, float& g, float& b) {
  if (op == kBrightness) {
    r = clamp01(f * r);
    g = clamp01(f * g);
    b = clamp01(f * b);
  } else if (op == kContrast) {
    const float k = static_cast<float>(1.0 - static_cast<double>(f)) * mean;
    r = clamp01(f * r + k);
    g = clamp01(f * g + k);
    b = clamp01(f * b + k);
  } else if (op == kSaturation) {
    const float k = static_cast<float>(1.0 - static_cast<double>(f));
    const float l = gray_of(r, g, b);
    r = clamp01(f * r + k * l);
    g = clamp01(f * g + k * l);
    b = clamp01(f * b + k * l);
  } else {
    hue_shift(r, g, b, f);
  }
}

// The active colour ops of one sample, in order, split at contrast (which needs the mean gray of the
// image as it is just before contrast): ops [0, split) run before the mean, [split, count) after.
struct OpPlan {
  int ops[4];
  float factors[4];
  int count;
  int split;  // == count when no contrast: everything runs in one pass
  bool needs_mean;
};

VLK_HD OpPlan plan_ops(const float* factors, const int64_t* order) {
  OpPlan plan;
  plan.count = 0;
  plan.split = -1;
  for (int k = 0; k < 4; ++k) {
    const int op = static_cast<int>(order[k]);
    const float f = factors[op];
    if (!op_active(op, f)) continue;
    if (op == kContrast) plan.split = plan.count;
    plan.ops[plan.count] = op;
    plan.factors[plan.count] = f;
    ++plan.count;
  }
  plan.needs_mean = plan.split >= 0;
  if (!plan.needs_mean) plan.split = plan.count;
  return plan;
}

// About the taps one output pixel sums directly, (2 support_y) x (2 support_x) for a ch x cw crop to
// oh x ow: the CUDA kernel resamples an image through its separable passes when this is at least
// kSeparableMinTaps (bicubic always, bilinear from about 1.7x downscales: below that the buffer's
// stores and reloads cost about what they save; benchmarks/augment_cost_model.py).
constexpr float kSeparableMinTaps = 12.0f;
VLK_HD float taps_product(int64_t ch, int64_t oh, int64_t cw, int64_t ow, int interp) {
  const float half = interp == kBicubic ? 2.0f : 1.0f;
  const float sy = static_cast<float>(ch) / static_cast<float>(oh);
  const float sx = static_cast<float>(cw) / static_cast<float>(ow);
  return (2.0f * half * vmax(sy, 1.0f)) * (2.0f * half * vmax(sx, 1.0f));
}

// Rows per band of the CUDA kernel's grid (outputs x bands) for n outputs of out_h x out_w on a GPU
// with `slots` resident blocks (SMs x blocks per SM): all rows (one band) when the n blocks fill the
// slots, else enough bands to fill them, each of at least min_band_pixels pixels (so that a block
// never gets less work than its set-up), at most 65535 bands (gridDim.y). Host code; the bands cover
// rows [0, out_h) exactly: ceil(out_h / rows) bands, the last possibly shorter.
inline int64_t band_rows_for(int64_t n, int64_t out_h, int64_t out_w, int64_t slots, int64_t min_band_pixels) {
  if (n >= slots) return out_h;
  const int64_t want = (slots + n - 1) / n;
  const int64_t min_rows = (min_band_pixels + out_w - 1) / out_w;
  const int64_t most = out_h / min_rows > 1 ? out_h / min_rows : 1;
  int64_t bands = want < most ? want : most;
  bands = bands < 65535 ? bands : 65535;
  return (out_h + bands - 1) / bands;
}

}  // namespace augment
}  // namespace vlkernels
