// Entry point of the compiled extension vlkernels._C: the Python module init (so that
// `import vlkernels._C` loads this library and runs the static op registrations) and the
// op schemas, declared once here; each backend registers implementations in its own file.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// An empty module: the ops live in torch.ops.vlkernels, not in this module's namespace.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(vlkernels, m) {
  // A trivial op that proves the build and the registration path work on every backend.
  m.def("build_info() -> str");
  // Fused CLIP augmentation over a (ragged) batch; layout in vlkernels/augment/_op.py.
  m.def(
      "fused_augment(Tensor data, Tensor offsets, Tensor sizes, bool hwc, Tensor boxes, Tensor flip, "
      "Tensor factors, Tensor order, Tensor gray, float[] mean, float[] std, int out_h, int out_w, "
      "ScalarType out_dtype, bool check=True, Tensor? solarize=None, bool channels_last=False, "
      "int interpolation=0, Tensor? blur_sigma=None, Tensor? source=None, Tensor[]? images=None, "
      "bool clusters=True) -> Tensor");
  // The same into the caller's tensor (dtype out_dtype, shape [M, 3, out_h, out_w], contiguous or, with
  // channels_last, NHWC), e.g. one buffer reused batch after batch. Returns nothing: a custom op whose
  // output aliases an input cannot be functionalized (torch.compile).
  m.def(
      "fused_augment.out(Tensor data, Tensor offsets, Tensor sizes, bool hwc, Tensor boxes, Tensor flip, "
      "Tensor factors, Tensor order, Tensor gray, float[] mean, float[] std, int out_h, int out_w, "
      "ScalarType out_dtype, bool check=True, Tensor? solarize=None, bool channels_last=False, "
      "int interpolation=0, Tensor? blur_sigma=None, Tensor? source=None, Tensor[]? images=None, "
      "bool clusters=True, *, Tensor(a!) out) -> ()");
}

namespace {
std::string build_info() {
#ifdef VLKERNELS_WITH_CUDA
  return "cpu+cuda";
#else
  return "cpu";
#endif
}
}  // namespace

TORCH_LIBRARY_IMPL(vlkernels, CompositeExplicitAutograd, m) { m.impl("build_info", &build_info); }
