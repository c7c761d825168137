// Argument checks of vlkernels::fused_augment at the C++ boundary, shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#define VLK_CHECK_TENSOR(x, dtype, dev, ...)                                                          \
  TORCH_CHECK((x).scalar_type() == (dtype), "fused_augment: ", #x, " must be ", (dtype), ", got ",    \
              (x).scalar_type());                                                                     \
  TORCH_CHECK((x).device().type() == (dev), "fused_augment: ", #x, " must be on ", (dev), ", got ",   \
              (x).device());                                                                          \
  TORCH_CHECK((x).is_contiguous(), "fused_augment: ", #x, " must be contiguous");                     \
  TORCH_CHECK((x).sizes().equals(at::IntArrayRef({__VA_ARGS__})), "fused_augment: ", #x,              \
              " must have shape ", at::IntArrayRef({__VA_ARGS__}), ", got ", (x).sizes())

namespace vlkernels {
namespace augment {

inline void check_augment_args(const at::Tensor& data, const at::Tensor& offsets, const at::Tensor& sizes,
                               const at::Tensor& boxes, const at::Tensor& flip, const at::Tensor& factors,
                               const at::Tensor& order, const at::Tensor& gray, at::ArrayRef<double> mean,
                               at::ArrayRef<double> std, int64_t out_h, int64_t out_w,
                               at::ScalarType out_dtype, at::DeviceType dev) {
  TORCH_CHECK(data.scalar_type() == at::kByte, "fused_augment: data must be uint8, got ", data.scalar_type());
  TORCH_CHECK(data.device().type() == dev, "fused_augment: data must be on ", dev, ", got ", data.device());
  TORCH_CHECK(data.is_contiguous(), "fused_augment: data must be contiguous");
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 1, "fused_augment: offsets must be [N] with N >= 1");
  const int64_t n = offsets.size(0);
  VLK_CHECK_TENSOR(offsets, at::kLong, dev, n);
  VLK_CHECK_TENSOR(sizes, at::kLong, dev, n, 2);
  VLK_CHECK_TENSOR(boxes, at::kLong, dev, n, 4);
  VLK_CHECK_TENSOR(flip, at::kBool, dev, n);
  VLK_CHECK_TENSOR(factors, at::kFloat, dev, n, 4);
  VLK_CHECK_TENSOR(order, at::kLong, dev, n, 4);
  VLK_CHECK_TENSOR(gray, at::kBool, dev, n);
  TORCH_CHECK(mean.size() == 3 && std.size() == 3, "fused_augment: mean and std must have 3 values");
  TORCH_CHECK(std[0] != 0.0 && std[1] != 0.0 && std[2] != 0.0, "fused_augment: std must be non-zero");
  TORCH_CHECK(out_h >= 1 && out_w >= 1, "fused_augment: output size must be >= 1, got ", out_h, "x", out_w);
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf,
              "fused_augment: out_dtype must be float32, bfloat16 or float16, got ", out_dtype);
}

}  // namespace augment
}  // namespace vlkernels
