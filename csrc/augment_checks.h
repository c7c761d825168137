// Argument checks of vlkernels::fused_augment at the C++ boundary, shared by the CPU and CUDA ops:
// the same checks and the same messages whichever device the tensors are on.
//
// Two levels:
// - prepare_augment_args: types, devices, shapes, scalars (no tensor values read: no host sync);
//   returns contiguous tensors (a strided parameter tensor is copied, not rejected).
// - check_augment_values: every output's source index and its image's size and offset, its crop box,
//   colour-op order, jitter factors and blur sigma (check_output / check_sample in augment.h, the
//   predicate the CUDA kernel also evaluates as its guard), on host pointers. The CPU op runs it on the
//   tensors themselves; the CUDA op on one packed host copy.
//
// N images (data, offsets, sizes; or, on CPU, images: a list of N separate tensors, image s being
// images[s] from byte offsets[s], read in place) and M outputs (boxes, flip, factors, order, gray, solarize,
// blur_sigma, source): output m reads image source[m] (source absent: M = N, output m reads image m).
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "augment.h"

namespace vlkernels {
namespace augment {

struct AugmentArgs {
  at::Tensor data, offsets, sizes, boxes, flip, factors, order, gray, solarize;
  at::Tensor blur;    // float32 [M] when blur_sigma was given, undefined otherwise (no blur)
  at::Tensor source;  // int64 [M] when source was given, undefined otherwise (output m reads image m)
  // The images argument (CPU and CUDA): image s lives in images[s] (numels[s] bytes, read from bases[s])
  // instead of data; both empty when the images are back to back in data.
  std::vector<const uint8_t*> bases;
  std::vector<int64_t> numels;
  int interp;         // kBilinear or kBicubic
  float mean[3];
  float std[3];
  int64_t n;  // images
  int64_t m;  // outputs (== n without source)
};

inline void check_tensor(const at::Tensor& x, const char* name, at::ScalarType dtype, const at::Device& dev,
                         at::IntArrayRef shape) {
  TORCH_CHECK(x.scalar_type() == dtype, "fused_augment: ", name, " must be ", dtype, ", got ", x.scalar_type());
  TORCH_CHECK(x.device() == dev, "fused_augment: ", name, " must be on ", dev, " (where data is), got ",
              x.device());
  TORCH_CHECK(x.sizes().equals(shape), "fused_augment: ", name, " must have shape ", shape, ", got ", x.sizes());
}

inline AugmentArgs prepare_augment_args(const at::Tensor& data, const at::Tensor& offsets, const at::Tensor& sizes,
                                        const at::Tensor& boxes, const at::Tensor& flip, const at::Tensor& factors,
                                        const at::Tensor& order, const at::Tensor& gray,
                                        const std::optional<at::Tensor>& solarize, at::ArrayRef<double> mean,
                                        at::ArrayRef<double> std, int64_t out_h, int64_t out_w,
                                        at::ScalarType out_dtype, at::DeviceType dev, int64_t interpolation,
                                        const std::optional<at::Tensor>& blur_sigma,
                                        const std::optional<at::Tensor>& source,
                                        const std::optional<at::TensorList>& images = std::nullopt) {
  TORCH_CHECK(data.scalar_type() == at::kByte, "fused_augment: data must be uint8, got ", data.scalar_type());
  TORCH_CHECK(data.device().type() == dev, "fused_augment: data must be on ", dev, ", got ", data.device());
  TORCH_CHECK(data.dim() == 1, "fused_augment: data must be 1-d (the images back to back), got shape ",
              data.sizes());
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 1, "fused_augment: offsets must be [N] with N >= 1, got ",
              "shape ", offsets.sizes());
  const int64_t n = offsets.size(0);
  const at::Device d = data.device();
  check_tensor(offsets, "offsets", at::kLong, d, {n});
  check_tensor(sizes, "sizes", at::kLong, d, {n, 2});
  int64_t m = n;
  if (source.has_value()) {
    TORCH_CHECK(source->dim() == 1 && source->size(0) >= 1,
                "fused_augment: source must be [M] with M >= 1 (the image of each output), got shape ",
                source->sizes());
    m = source->size(0);
    check_tensor(*source, "source", at::kLong, d, {m});
  }
  check_tensor(boxes, "boxes", at::kLong, d, {m, 4});
  check_tensor(flip, "flip", at::kBool, d, {m});
  check_tensor(factors, "factors", at::kFloat, d, {m, 4});
  check_tensor(order, "order", at::kLong, d, {m, 4});
  check_tensor(gray, "gray", at::kBool, d, {m});
  if (solarize.has_value()) check_tensor(*solarize, "solarize", at::kBool, d, {m});
  if (blur_sigma.has_value()) check_tensor(*blur_sigma, "blur_sigma", at::kFloat, d, {m});
  TORCH_CHECK(interpolation == kBilinear || interpolation == kBicubic,
              "fused_augment: interpolation must be 0 (bilinear) or 1 (bicubic), got ", interpolation);
  TORCH_CHECK(mean.size() == 3 && std.size() == 3, "fused_augment: mean and std must have 3 values, got ",
              mean.size(), " and ", std.size());
  AugmentArgs a;
  for (int c = 0; c < 3; ++c) {
    a.mean[c] = static_cast<float>(mean[c]);
    a.std[c] = static_cast<float>(std[c]);
    TORCH_CHECK(std::isfinite(a.mean[c]), "fused_augment: mean must be finite (as float32), got ", mean[c]);
    TORCH_CHECK(std::isfinite(a.std[c]) && a.std[c] != 0.0f,
                "fused_augment: std must be finite and non-zero (as float32), got ", std[c]);
  }
  TORCH_CHECK(out_h >= 1 && out_w >= 1, "fused_augment: output size must be >= 1, got ", out_h, "x", out_w);
  TORCH_CHECK(out_h <= 2147483647 / out_w, "fused_augment: output images of at most 2^31 - 1 pixels, got ", out_h,
              "x", out_w);
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf ||
                  out_dtype == at::kByte,
              "fused_augment: out_dtype must be float32, bfloat16, float16 or uint8, got ", out_dtype);
  a.data = data.contiguous();
  a.offsets = offsets.contiguous();
  a.sizes = sizes.contiguous();
  a.boxes = boxes.contiguous();
  a.flip = flip.contiguous();
  a.factors = factors.contiguous();
  a.order = order.contiguous();
  a.gray = gray.contiguous();
  a.solarize = solarize.has_value() ? solarize->contiguous() : at::zeros({m}, gray.options());
  if (blur_sigma.has_value()) a.blur = blur_sigma->contiguous();
  if (source.has_value()) a.source = source->contiguous();
  if (images.has_value()) {
    TORCH_CHECK(static_cast<int64_t>(images->size()) == n, "fused_augment: images must hold one tensor per image (",
                n, ", the length of offsets), got ", images->size());
    a.bases.resize(n);
    a.numels.resize(n);
    for (int64_t s = 0; s < n; ++s) {
      const at::Tensor& t = (*images)[s];
      TORCH_CHECK(t.scalar_type() == at::kByte && t.device() == d && t.is_contiguous(), "fused_augment: images[", s,
                  "] must be a contiguous uint8 tensor on ", d, ", got ", t.scalar_type(), " on ", t.device(),
                  t.is_contiguous() ? "" : " (not contiguous)");
      a.bases[s] = t.data_ptr<uint8_t>();
      a.numels[s] = t.numel();
    }
  }
  a.interp = static_cast<int>(interpolation);
  a.n = n;
  a.m = m;
  return a;
}

// The output tensor: a new [M, 3, out_h, out_w] tensor (NHWC memory with channels_last), or the caller's
// `out` (the op's out overload) after checking that it is exactly that: dtype, device, shape, memory
// format, and no overlap with the images it is computed from.
inline at::Tensor make_output(const AugmentArgs& a, int64_t out_h, int64_t out_w, at::ScalarType out_dtype,
                              bool channels_last, const std::optional<at::Tensor>& out) {
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  if (!out.has_value()) return at::empty({a.m, 3, out_h, out_w}, a.data.options().dtype(out_dtype), format);
  const at::Tensor& o = *out;
  TORCH_CHECK(o.scalar_type() == out_dtype, "fused_augment: out must be ", out_dtype, " (out_dtype), got ",
              o.scalar_type());
  TORCH_CHECK(o.device() == a.data.device(), "fused_augment: out must be on ", a.data.device(),
              " (where the images are), got ", o.device());
  TORCH_CHECK(o.sizes().equals({a.m, 3, out_h, out_w}), "fused_augment: out must have shape [", a.m, ", 3, ", out_h,
              ", ", out_w, "], got ", o.sizes());
  TORCH_CHECK(o.is_contiguous(format), "fused_augment: out must be ",
              channels_last ? "in channels-last (NHWC) memory (channels_last=True)" : "contiguous (channels_last=False)");
  at::assert_no_overlap(o, a.data);
  for (int64_t s = 0; s < static_cast<int64_t>(a.bases.size()); ++s) {
    const auto* lo = static_cast<const uint8_t*>(o.data_ptr());
    const uint8_t* hi = lo + o.nbytes();
    TORCH_CHECK(hi <= a.bases[s] || a.bases[s] + a.numels[s] <= lo, "fused_augment: out overlaps images[", s, "]");
  }
  return o;
}

// Checks every output (check_output) on host copies of the parameters; the message names the argument.
// n images (off, sz), m outputs (bx, od, fa, sigma, src; src == nullptr: m == n, output i reads image i).
// Image s lies in a buffer of numels[s] bytes (the images argument), or, numels == nullptr, in data of
// numel bytes.
inline void check_augment_values(int64_t n, int64_t m, int64_t numel, const int64_t* off, const int64_t* sz,
                                 const int64_t* bx, const int64_t* od, const float* fa, const float* sigma,
                                 const int64_t* src, const int64_t* numels = nullptr) {
  for (int64_t i = 0; i < m; ++i) {
    const int64_t* b = bx + 4 * i;
    const int64_t* o = od + 4 * i;
    const float* f = fa + 4 * i;
    const float sg = sigma != nullptr ? sigma[i] : 0.0f;
    const int64_t s_i = source_of(src, i, n);  // -1: check_output reports kBadSource before the bytes
    const int64_t bytes = numels != nullptr && s_i >= 0 ? numels[s_i] : numel;
    const int err = check_output(bytes, n, src, i, off, sz, b, o, f, sg);
    if (err == kSampleOk) continue;
    TORCH_CHECK(err != kBadSource, "fused_augment: source[", i, "] is ", src[i], ": not the index of one of the ",
                n, " images (must be in [0, ", n, "))");
    // "image 3" without a source index; "output 5 (image 3)" with one.
    const int64_t s = src != nullptr ? src[i] : i;
    const std::string who = src != nullptr ? "output " + std::to_string(i) + " (image " + std::to_string(s) + ")"
                                           : "image " + std::to_string(i);
    const int64_t H = sz[2 * s], W = sz[2 * s + 1];
    switch (err) {
      case kBadSize:
        TORCH_CHECK(false, "fused_augment: sizes of ", who, " are ", H, "x", W,
                    ": both must be >= 1 and 3 * H * W must fit int64");
      case kBadOffset:
        TORCH_CHECK(false, "fused_augment: offsets: ", who, " (offset ", off[s], ", ", H, "x", W,
                    "x3 bytes) lies outside ", numels != nullptr ? "images[" + std::to_string(s) + "]" : "data",
                    " of ", bytes, " bytes");
      case kBadBox:
        TORCH_CHECK(false, "fused_augment: boxes: crop box (", b[0], ", ", b[1], ", ", b[2], ", ", b[3],
                    ") (top, left, height, width) of ", who, " lies outside the ", H, "x", W,
                    " image (or is empty)");
      case kBadOrder:
        TORCH_CHECK(false, "fused_augment: order of ", who, " is (", o[0], ", ", o[1], ", ", o[2], ", ", o[3],
                    "), not a permutation of 0..3");
      case kBadFactor:
        TORCH_CHECK(false, "fused_augment: factors of ", who, ": brightness, contrast, saturation (", f[0], ", ",
                    f[1], ", ", f[2], ") must be finite and >= 0");
      case kBadHue:
        TORCH_CHECK(false, "fused_augment: factors of ", who, ": hue factor ", f[kHue],
                    " lies outside [-0.5, 0.5]");
      default:
        TORCH_CHECK(false, "fused_augment: blur_sigma of ", who, " is ", sg,
                    ": must be finite and >= 0 (0: no blur)");
    }
  }
}

// The same checks for parameters that live on another device (CUDA): one packed device-to-host copy
// (a single synchronisation for the whole batch), then check_augment_values on the host.
inline void check_augment_values_via_host(const AugmentArgs& a) {
  const int64_t n = a.n, m = a.m;
  // factors (and blur sigmas) travel as their bit patterns (float32 -> int32 view, widened to int64 for
  // the packing). Images [n, 3] (offset, H, W) and outputs [m, kCols] in one flat tensor, one copy.
  const bool blur = a.blur.defined();
  const bool src = a.source.defined();
  std::vector<at::Tensor> cols = {a.boxes, a.order, a.factors.view(at::kInt).to(at::kLong)};
  if (blur) cols.push_back(a.blur.view(at::kInt).to(at::kLong).view({m, 1}));
  if (src) cols.push_back(a.source.view({m, 1}));
  const at::Tensor images = at::cat({a.offsets.view({n, 1}), a.sizes}, 1).reshape({-1});
  const at::Tensor packed = at::cat({images, at::cat(cols, 1).reshape({-1})}).cpu();
  const int64_t* p = packed.data_ptr<int64_t>();
  std::vector<int64_t> off(n), sz(2 * n), bx(4 * m), od(4 * m), so(src ? m : 0);
  std::vector<float> fa(4 * m), sg(blur ? m : 0);
  for (int64_t i = 0; i < n; ++i) {
    off[i] = p[3 * i];
    sz[2 * i] = p[3 * i + 1];
    sz[2 * i + 1] = p[3 * i + 2];
  }
  const int kCols = 4 + 4 + 4 + (blur ? 1 : 0) + (src ? 1 : 0);
  for (int64_t i = 0; i < m; ++i) {
    const int64_t* r = p + 3 * n + i * kCols;
    for (int k = 0; k < 4; ++k) bx[4 * i + k] = r[k];
    for (int k = 0; k < 4; ++k) od[4 * i + k] = r[4 + k];
    for (int k = 0; k < 4; ++k) {
      const int32_t bits = static_cast<int32_t>(r[8 + k]);
      std::memcpy(&fa[4 * i + k], &bits, sizeof(float));
    }
    if (blur) {
      const int32_t bits = static_cast<int32_t>(r[12]);
      std::memcpy(&sg[i], &bits, sizeof(float));
    }
    if (src) so[i] = r[kCols - 1];
  }
  check_augment_values(n, m, a.data.numel(), off.data(), sz.data(), bx.data(), od.data(), fa.data(),
                       blur ? sg.data() : nullptr, src ? so.data() : nullptr,
                       a.numels.empty() ? nullptr : a.numels.data());
}

// The op's two overloads (fused_augment, fused_augment.out) for a backend whose implementation takes
// every argument of the schema and the optional output (Impl(..., clusters, out_arg) -> the output):
// registered as &augment_functional<Impl> and &augment_out<Impl>, one copy of the schema's argument
// list for every backend.
template <auto Impl>
at::Tensor augment_functional(const at::Tensor& data, const at::Tensor& offsets, const at::Tensor& sizes, bool hwc,
                              const at::Tensor& boxes, const at::Tensor& flip, const at::Tensor& factors,
                              const at::Tensor& order, const at::Tensor& gray, at::ArrayRef<double> mean,
                              at::ArrayRef<double> std, int64_t out_h, int64_t out_w, at::ScalarType out_dtype,
                              bool check, const std::optional<at::Tensor>& solarize, bool channels_last,
                              int64_t interpolation, const std::optional<at::Tensor>& blur_sigma,
                              const std::optional<at::Tensor>& source, const std::optional<at::TensorList>& images,
                              bool clusters) {
  return Impl(data, offsets, sizes, hwc, boxes, flip, factors, order, gray, mean, std, out_h, out_w, out_dtype, check,
              solarize, channels_last, interpolation, blur_sigma, source, images, clusters, std::nullopt);
}

template <auto Impl>
void augment_out(const at::Tensor& data, const at::Tensor& offsets, const at::Tensor& sizes, bool hwc,
                 const at::Tensor& boxes, const at::Tensor& flip, const at::Tensor& factors, const at::Tensor& order,
                 const at::Tensor& gray, at::ArrayRef<double> mean, at::ArrayRef<double> std, int64_t out_h,
                 int64_t out_w, at::ScalarType out_dtype, bool check, const std::optional<at::Tensor>& solarize,
                 bool channels_last, int64_t interpolation, const std::optional<at::Tensor>& blur_sigma,
                 const std::optional<at::Tensor>& source, const std::optional<at::TensorList>& images, bool clusters,
                 at::Tensor& out) {
  Impl(data, offsets, sizes, hwc, boxes, flip, factors, order, gray, mean, std, out_h, out_w, out_dtype, check,
       solarize, channels_last, interpolation, blur_sigma, source, images, clusters, out);
}

}  // namespace augment
}  // namespace vlkernels
