// Fused augmentation, CUDA kernel (registered as vlkernels::fused_augment for the CUDA key).
//
// One launch for the whole (ragged) batch: a grid of outputs x row bands (output m reads input image
// source[m] when the op gets a source index: several views of one image share its bytes), parameters
// read from device tensors, so nothing waits on the host per image. A batch large enough to fill the
// GPU runs one band (one block per output image); a smaller one splits each output into up to
// `bands` bands of rows, one block each, so that the SMs are not left idle (a block still computes
// every pixel from the source: the split changes no value). Images that need the whole output in one
// block (contrast's mean, the blur's neighbourhoods; device values, known only in the kernel) are
// done by their band-0 block, the other bands' blocks exit at once. The block first builds the
// antialiased tap tables of its crop in shared memory (aa_weights, bilinear or bicubic, as the CPU
// kernel; up to 24 taps per pixel at a 224 x 224 output, 8 up to out_h + out_w = 1225). With the tables it
// resamples in two separable passes through a shared-memory row buffer (for_each_pixel: source rows
// resampled along x into the buffer, then summed along y: (rows / out rows) x nx + ny taps per pixel);
// beyond the tables' downscale or size each pixel sums its nx x ny taps straight from the source, the
// taps evaluated on the fly in float. Both ways sum rows then columns (the association of the CPU
// kernel's separable passes; bicubic values clamped to [0, 1]). Each thread then applies the colour ops,
// grayscale, solarize and normalisation to its pixels and writes the three planes (coalesced along the
// row). Contrast needs the gray mean of the image as it stands just before contrast, the Gaussian blur
// the neighbourhood of every pixel after the colour ops. On sm_90 and later such outputs go to a second
// launch with thread-block clusters (kCluster), run beside the plain one on a forked stream: one cluster
// of kClusterBlocks blocks an output, each block resamples its band of rows once and keeps it in its
// shared memory; the cluster sums the gray mean (a partial a block, read across the cluster through
// distributed shared memory), the chain finishes from the kept pixels, and a blur runs its rows in the
// block and its columns from whichever block holds the rows they need: one resampling pass, nothing
// through global memory. Elsewhere (before sm_90, bands too large for shared memory,
// VLKERNELS_AUGMENT_CLUSTERS=0) the plain launch does them in one block an output: contrast with a first
// pass that recomputes the pixels up to contrast and reduces the mean (a round trip of the float image
// through global memory would move 24 bytes a pixel, twice the float32 output); blur through a global
// workspace (the colour-processed image, its rows blurred into a second image, then the columns while
// writing the output; [3, oh, ow] floats do not fit one block's shared memory: 602 KB at 224 x 224),
// allocated only when the op gets a blur_sigma tensor and the cluster launch does not take the blurred
// outputs. The resampling itself (tap tables' axes, row sums, for_each_pixel) is in
// csrc/augment_resample.h and a block's set-up and the two launches' work in csrc/augment_block.h, both
// written for host and device: tests/test_augment_bands.py and tests/test_augment_block.py run them on
// host threads (both launches against the CPU op, a cluster's blocks side by side).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cooperative_groups.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>

#include "augment.h"
#include "augment_checks.h"
#include "augment_block.h"
#include "augment_resample.h"

namespace vlkernels {
namespace augment {
namespace {

// 512 threads per block. ptxas (sm_90, tests/test_cuda_compile.py -s) gives the plain kernel 124 registers
// per thread (114 before its block moved to augment_block.h; the tap loops' SASS is the same), the
// cluster one 109: one block per SM (25% occupancy; the shared memory of the separable
// passes allows no more either). With __launch_bounds__(kThreads, 2) (64 registers) an earlier version
// spilled 104 B; whether more resident threads would pay is a GPU measurement still owed.
constexpr int kThreads = 512;

// The source reads of the tap loops (sum_taps in augment.h): through the read-only data cache.
struct Ldg {
  __device__ __forceinline__ uint32_t operator()(const uint8_t* p) const { return __ldg(p); }
};

// The thread block, as augment_resample.h / augment_block.h see it.
struct CudaBlock {
  __device__ __forceinline__ int tid() const { return threadIdx.x; }
  __device__ __forceinline__ int size() const { return blockDim.x; }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  // Sum of v over the block (every thread gets it), in double; warp_sums: kThreads / 32 of shared
  // memory. Contains barriers: every thread of the block must call it.
  __device__ __forceinline__ double sum(double v, double* warp_sums) const {
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
      v = lane < static_cast<int>(blockDim.x / 32) ? warp_sums[lane] : 0.0;
      for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
      if (lane == 0) warp_sums[0] = v;
    }
    __syncthreads();
    const double total = warp_sums[0];
    __syncthreads();  // warp_sums may be reused at once
    return total;
  }
};

// Taps per pixel stored in the shared-memory tables: the host picks the largest of kTapChoices whose
// tables fit the default 48 KiB with the kernel's static shared memory (24 at a 224 x 224 output:
// bilinear downscales up to 11x, bicubic up to 5.5x; max_taps = ceil(2 support) + 2). Larger
// downscales, or outputs too large for even 8 taps, evaluate the taps on the fly instead.
constexpr int kTapChoices[] = {24, 16, 8};

size_t table_bytes(int64_t oh, int64_t ow, int taps) {
  return static_cast<size_t>(oh + ow) * (taps * sizeof(float) + 2 * sizeof(int));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// The thread-block cluster, as cluster_block (augment_block.h) sees it.
struct CudaCluster {
  cooperative_groups::cluster_group g;
  __device__ __forceinline__ void sync() const { g.sync(); }
  __device__ __forceinline__ unsigned int num_blocks() const { return g.num_blocks(); }
  template <typename T>
  __device__ __forceinline__ T* map(T* p, unsigned int rank) const {
    return g.map_shared_rank(p, rank);
  }
};
#endif

// Cluster size of the cluster launch (kCluster): the blocks of one output, one band of rows each.
constexpr int kClusterBlocks = 8;

// The kernel's arguments are one struct in the parameter space (__grid_constant__: read in place, no
// copy; augment_block.h's functions take it by reference).
template <typename out_t, bool kCluster>
__global__ void __launch_bounds__(kThreads) fused_augment_kernel(const __grid_constant__ KernelArgs<out_t> a) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ double warp_sums[kThreads / 32];
  __shared__ float blur_total[2];
  // Block (n, band) computes rows [band * band_rows, (band + 1) * band_rows) of output n, from image
  // s = source[n] (or n without a source index); band 0 computes all rows of an output that needs the
  // whole image in one block. The set-up (augment_block.h) returns false when the block has nothing to do.
  const int64_t n = blockIdx.x;
  BlockJob<out_t> job;
  OpPlan plan;
  if (!setup_block(CudaBlock{}, a, kCluster, n, blockIdx.y, smem, job, plan)) return;
  if constexpr (kCluster) {
    // One resampling pass a block, the band kept in shared memory, the mean and the blur's columns across
    // the cluster (cluster_block, augment_block.h). Before sm_90 this instantiation is an empty stub.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    __shared__ double cluster_partial;
    cluster_block(CudaBlock{}, CudaCluster{cooperative_groups::this_cluster()}, Ldg{}, a, job, plan, warp_sums,
                  blur_total, &cluster_partial);
#endif
    return;
  } else {
    plain_block(CudaBlock{}, Ldg{}, a, n, job, plan, warp_sums, blur_total);
  }
}

// Shared memory a block may use without cudaFuncAttributeMaxDynamicSharedMemorySize.
constexpr size_t kDefaultSmem = 48 * 1024;

// Shared memory (static + dynamic) a block takes at most with the separable passes' row buffer: 160 KiB
// of the H100's 256 KiB of L1 + shared memory per SM leaves ~96 KiB of L1 for the source gathers
// (69 buffered rows of a 224-wide output fit the whole 227 KiB opt-in limit, 43 this budget).
constexpr size_t kSmemBudget = 160 * 1024;

// The fewest output pixels a band gives one block (4 per thread), so that splitting a small batch into
// bands never leaves a block with less work than its table set-up.
constexpr int64_t kMinBandPixels = 4 * kThreads;

// The kernel's static shared memory, as compiled (asked once per instantiation).
template <typename out_t, bool kCluster = false>
size_t static_smem_bytes() {
  static const size_t bytes = [] {
    cudaFuncAttributes attr;
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, fused_augment_kernel<out_t, kCluster>));
    return attr.sharedSizeBytes;
  }();
  return bytes;
}

// The launch of fused_augment_kernel<out_t> for n outputs: its dynamic shared memory (the tap tables,
// then the separable passes' row buffer), the rows of the buffer (0: no separable passes) and the rows
// per band of the grid.
struct LaunchPlan {
  size_t smem;
  int buf_rows;     // rows the separable passes may use (0: direct sums)
  int64_t band_rows;
  int region_rows;  // rows of the buffer region in shared memory (its layout)
  int cluster_mode; // the cluster launch: 0 none, 1 contrast outputs, 2 contrast and blurred outputs
};

// A query's result memoised per (device, kernel, dynamic shared memory): the occupancy calculators are
// host computations worth a few microseconds each, and their inputs repeat call after call.
template <typename Query>
int memo(int device, const void* kernel, size_t smem, Query&& query) {
  static std::mutex mutex;
  static std::map<std::tuple<int, const void*, size_t>, int> cache;
  const auto key = std::make_tuple(device, kernel, smem);
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  const int value = query();
  const std::lock_guard<std::mutex> lock(mutex);
  cache[key] = value;
  return value;
}

// A design switch read from the environment on every launch: on unless the variable is "0" (so that a
// GPU run can compare a design with the one it replaced, in values and in time).
bool switch_on(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr || std::string(v) != "0";
}

// VLKERNELS_AUGMENT_SEPARABLE=0: no separable passes (every pixel sums its taps directly).
bool separable_enabled() { return switch_on("VLKERNELS_AUGMENT_SEPARABLE"); }

// VLKERNELS_AUGMENT_CLUSTERS=0: no cluster launch (the plain launch does contrast in two passes and blur
// through its global workspace).
bool clusters_enabled() { return switch_on("VLKERNELS_AUGMENT_CLUSTERS"); }

// The launch configuration of either kernel: outputs x bands blocks of kThreads, `smem` bytes of
// dynamic shared memory, on `stream`; clustered: kClusterBlocks blocks along y a cluster (attr holds
// the attribute, so it must live as long as the configuration).
cudaLaunchConfig_t launch_config(int64_t n, unsigned int bands, size_t smem, cudaStream_t stream, bool clustered,
                                 cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned int>(n), bands);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = 1;
  attr->val.clusterDim.y = kClusterBlocks;
  attr->val.clusterDim.z = 1;
  cfg.attrs = clustered ? attr : nullptr;
  cfg.numAttrs = clustered ? 1 : 0;
  return cfg;
}

template <typename out_t>
LaunchPlan plan_launch(int64_t n, int64_t out_h, int64_t out_w, int table_taps, int device) {
  LaunchPlan lp{table_taps > 0 ? table_bytes(out_h, out_w, table_taps) : 0, 0, out_h, 0, 0};
  const size_t static_smem = static_smem_bytes<out_t>();
  if (table_taps > 0 && separable_enabled()) {
    // The row buffer takes what kSmemBudget (or the device's opt-in limit) leaves after the tables (one
    // resident block per SM already, by its registers): the more source rows it holds, the fewer chunks
    // restart the passes. It must hold the taps of one output row (ny <= table_taps), else no separable
    // passes.
    int optin = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    const size_t limit = std::min(static_cast<size_t>(optin), kSmemBudget);
    const size_t tables = table_bytes_aligned(out_h, out_w, table_taps);
    const size_t row = 3 * sizeof(float) * static_cast<size_t>(out_w);
    const size_t room = limit > static_smem + tables ? limit - static_smem - tables : 0;
    const size_t rows = std::min<size_t>(room / row, 1 << 20);
    if (rows >= static_cast<size_t>(table_taps)) {
      lp.buf_rows = static_cast<int>(rows);
      lp.region_rows = lp.buf_rows;
      lp.smem = tables + rows * row;
      // Above the default 48 KiB a kernel needs this attribute; set to the same bound on every call (no
      // race between host threads launching different sizes).
      C10_CUDA_CHECK(cudaFuncSetAttribute(fused_augment_kernel<out_t, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(limit - static_smem)));
    }
  }
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const auto kernel = fused_augment_kernel<out_t, false>;
  const int per_sm = memo(device, reinterpret_cast<const void*>(kernel), lp.smem, [&] {
    int v = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, kernel, kThreads, lp.smem));
    return v;
  });
  lp.band_rows = band_rows_for(n, out_h, out_w, static_cast<int64_t>(sms) * (per_sm > 0 ? per_sm : 1),
                               kMinBandPixels);
  return lp;
}

// The cluster launch (sm_90 and later: thread-block clusters): grid outputs x kClusterBlocks, one
// cluster an output, each block a band of ceil(out_h / kClusterBlocks) rows whose pixels stay in its
// shared memory: the tables, the buffer region (the separable passes' rows, then the blur's row-blurred
// band), keep (the band) and the blur's taps, up to the device's opt-in limit. cluster_mode 2 (blurred
// outputs too) when the region holds a band, 1 (contrast only) when it does not, 0 (smem == 0: no
// cluster launch) before sm_90, for outputs whose band does not fit, or when the device cannot schedule
// such a cluster; the plain launch then does those outputs.
template <typename out_t>
LaunchPlan plan_cluster_launch(int64_t n, int64_t out_h, int64_t out_w, int table_taps, int device) {
  LaunchPlan lp{0, 0, (out_h + kClusterBlocks - 1) / kClusterBlocks, 0, 0};
  int major = 0, optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (major < 9 || table_taps == 0 || out_h < kClusterBlocks || !clusters_enabled()) return lp;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const size_t static_smem = static_smem_bytes<out_t, true>();
  const size_t limit = static_cast<size_t>(optin);
  const size_t tables = table_bytes_aligned(out_h, out_w, table_taps);
  const size_t row = 3 * sizeof(float) * static_cast<size_t>(out_w);
  const size_t keep = static_cast<size_t>(lp.band_rows) * row;
  const size_t taps = (2 * static_cast<size_t>(out_w + out_h)) * sizeof(float);  // 2 rx + 1 + 2 ry + 1 at most
  if (static_smem + tables + keep + taps > limit) return lp;
  const size_t rows = std::min<size_t>((limit - static_smem - tables - keep - taps) / row, 1 << 20);
  lp.region_rows = static_cast<int>(rows);
  lp.buf_rows = rows >= static_cast<size_t>(table_taps) && separable_enabled() ? static_cast<int>(rows) : 0;
  const int mode = rows >= static_cast<size_t>(lp.band_rows) ? 2 : 1;
  const size_t smem = tables + rows * row + keep + taps;
  C10_CUDA_CHECK(cudaFuncSetAttribute(fused_augment_kernel<out_t, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(limit - static_smem)));
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = launch_config(n, kClusterBlocks, smem, nullptr, true, &attr);
  const auto kernel = fused_augment_kernel<out_t, true>;
  const int clusters = memo(device, reinterpret_cast<const void*>(kernel), smem, [&] {
    int v = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&v, kernel, &cfg));
    return v;
  });
  if (clusters > 0) {
    lp.smem = smem;
    lp.cluster_mode = mode;
  }
  return lp;
}

// Both launches of one call: the plain one (every output but, when the cluster launch runs, those with
// contrast and no blur) and the cluster one, which write disjoint outputs. The cluster launch runs on a
// side stream forked from the current one and joined back (events), so that the two kernels share the
// GPU instead of one waiting for the other's last wave (a batch with a few long blurred images in the
// plain launch would otherwise serialise behind them).
template <typename out_t>
void launch_kernels(const AugmentArgs& a, bool hwc, const at::Tensor& image_table, int64_t out_h, int64_t out_w,
                    int table_taps, bool channels_last, bool clusters, at::Tensor& out, cudaStream_t stream) {
  const int64_t n = a.m;
  const int device = a.data.get_device();
  const LaunchPlan plain = plan_launch<out_t>(n, out_h, out_w, table_taps, device);
  // clusters=False (the caller knows no output has contrast or blur): no cluster launch, whose blocks
  // would all find nothing to do.
  const LaunchPlan cluster = clusters ? plan_cluster_launch<out_t>(n, out_h, out_w, table_taps, device)
                                      : LaunchPlan{0, 0, out_h, 0, 0};
  const bool use_cluster = cluster.smem > 0;
  const bool blur = a.blur.defined();
  // The plain launch's blur workspace per output: two float images [3, out_h, out_w] and the taps
  // (2 out_w - 1 and 2 out_h - 1 floats at most); only with a blur_sigma tensor (whether an output is
  // blurred is a device value: sized for all) and when blurred outputs are not the cluster launch's.
  const bool ws_needed = blur && cluster.cluster_mode != 2;
  const int64_t ws_stride = ws_needed ? 6 * out_h * out_w + 2 * (out_h + out_w) : 0;
  const at::Tensor workspace = at::empty({ws_needed ? n * ws_stride : 0}, a.data.options().dtype(at::kFloat));
  auto launch = [&](auto kernel, const LaunchPlan& lp, unsigned int bands, bool clustered, cudaStream_t on) {
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg = launch_config(n, bands, lp.smem, on, clustered, &attr);
    const KernelArgs<out_t> args{
        static_cast<const uint8_t*>(a.data.data_ptr()), a.data.numel(),
        static_cast<const int64_t*>(a.offsets.data_ptr<int64_t>()),
        static_cast<const int64_t*>(a.sizes.data_ptr<int64_t>()), hwc,
        static_cast<const int64_t*>(a.boxes.data_ptr<int64_t>()), static_cast<const uint8_t*>(a.flip.data_ptr()),
        static_cast<const float*>(a.factors.data_ptr<float>()),
        static_cast<const int64_t*>(a.order.data_ptr<int64_t>()), static_cast<const uint8_t*>(a.gray.data_ptr()),
        static_cast<const uint8_t*>(a.solarize.data_ptr()),
        blur ? static_cast<const float*>(a.blur.data_ptr<float>()) : nullptr,
        a.source.defined() ? static_cast<const int64_t*>(a.source.data_ptr<int64_t>()) : nullptr,
        image_table.defined() ? static_cast<const int64_t*>(image_table.data_ptr<int64_t>()) : nullptr, a.n,
        a.interp, ws_needed ? workspace.data_ptr<float>() : nullptr, ws_stride, a.mean[0], a.mean[1], a.mean[2],
        a.std[0], a.std[1], a.std[2], out_h, out_w, table_taps, channels_last, lp.band_rows, lp.buf_rows,
        lp.region_rows, cluster.cluster_mode, out.data_ptr<out_t>()};
    C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, args));
  };
  const unsigned int plain_bands = static_cast<unsigned int>((out_h + plain.band_rows - 1) / plain.band_rows);
  if (!use_cluster) {
    launch(fused_augment_kernel<out_t, false>, plain, plain_bands, false, stream);
    return;
  }
  cudaEvent_t fork, join;
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, static_cast<c10::DeviceIndex>(device));
  C10_CUDA_CHECK(cudaEventRecord(fork, stream));
  C10_CUDA_CHECK(cudaStreamWaitEvent(side.stream(), fork, 0));
  launch(fused_augment_kernel<out_t, true>, cluster, kClusterBlocks, true, side.stream());
  C10_CUDA_CHECK(cudaEventRecord(join, side.stream()));
  launch(fused_augment_kernel<out_t, false>, plain, plain_bands, false, stream);
  // Everything after this call on the current stream (including the caching allocator's reuse of this
  // call's tensors, all allocated on it) waits for the cluster launch.
  C10_CUDA_CHECK(cudaStreamWaitEvent(stream, join, 0));
  C10_CUDA_CHECK(cudaEventDestroy(fork));  // (released once the recorded work completes)
  C10_CUDA_CHECK(cudaEventDestroy(join));
}

at::Tensor fused_augment_cuda_impl(const at::Tensor& data, const at::Tensor& offsets, const at::Tensor& sizes,
                              bool hwc, const at::Tensor& boxes, const at::Tensor& flip,
                              const at::Tensor& factors, const at::Tensor& order, const at::Tensor& gray,
                              at::ArrayRef<double> mean, at::ArrayRef<double> std, int64_t out_h,
                              int64_t out_w, at::ScalarType out_dtype, bool check,
                              const std::optional<at::Tensor>& solarize, bool channels_last,
                              int64_t interpolation, const std::optional<at::Tensor>& blur_sigma,
                              const std::optional<at::Tensor>& source,
                              const std::optional<at::TensorList>& images, bool clusters,
                              const std::optional<at::Tensor>& out_arg) {
  const AugmentArgs a = prepare_augment_args(data, offsets, sizes, boxes, flip, factors, order, gray, solarize,
                                             mean, std, out_h, out_w, out_dtype, at::kCUDA, interpolation,
                                             blur_sigma, source);
  const c10::cuda::CUDAGuard guard(a.data.device());
  // check=True (the default, for direct calls of the op): the same value checks and messages as the CPU
  // op, on one packed host copy of the parameters (one sync per batch). fused_augment passes False: its
  // sampled parameters are valid by construction and explicit ones were validated by
  // AugmentParams.validate, so the normal path never waits on the host. The kernel's guard
  // (check_sample) keeps even an unchecked call in bounds.
  if (check) check_augment_values_via_host(a);
  const int64_t n = a.m;  // outputs: the grid is n x bands
  TORCH_CHECK(n <= 2147483647, "fused_augment: at most 2^31 - 1 outputs per call");
  at::Tensor out = make_output(a, out_h, out_w, out_dtype, channels_last, out_arg);
  // The images argument: a device table of (address, bytes) per image, filled in pinned host memory and
  // copied without blocking (the pinned allocator keeps the host block until the copy has run).
  at::Tensor image_table;
  if (!a.bases.empty()) {
    at::Tensor host = at::empty({2 * a.n}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    int64_t* h = host.data_ptr<int64_t>();
    for (int64_t s = 0; s < a.n; ++s) {
      h[2 * s] = static_cast<int64_t>(reinterpret_cast<uintptr_t>(a.bases[s]));
      h[2 * s + 1] = a.numels[s];
    }
    image_table = host.to(a.data.device(), /*non_blocking=*/true);
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // Tap tables in shared memory: the most taps (kTapChoices) whose tables fit the default 48 KiB
  // together with the kernel's static shared memory (the reduction's warp sums) (8 taps: outputs up to
  // out_h + out_w = 1225 at 40 B per pixel of the two axes and 144 B static; 24 taps: out_h + out_w <= 471
  // at 104 B); the separable passes' row buffer comes on top, up to the device's opt-in limit.
  size_t static_smem = 0;
  switch (out_dtype) {
    case at::kFloat:
      static_smem = static_smem_bytes<float>();
      break;
    case at::kBFloat16:
      static_smem = static_smem_bytes<c10::BFloat16>();
      break;
    case at::kByte:
      static_smem = static_smem_bytes<uint8_t>();
      break;
    default:
      static_smem = static_smem_bytes<c10::Half>();
      break;
  }
  int table_taps = 0;
  for (const int taps : kTapChoices) {
    if (static_smem + table_bytes(out_h, out_w, taps) <= kDefaultSmem) {
      table_taps = taps;
      break;
    }
  }
  switch (out_dtype) {
    case at::kFloat:
      launch_kernels<float>(a, hwc, image_table, out_h, out_w, table_taps, channels_last, clusters, out,
                                  stream);
      break;
    case at::kBFloat16:
      launch_kernels<c10::BFloat16>(a, hwc, image_table, out_h, out_w, table_taps, channels_last, clusters, out,
                                  stream);
      break;
    case at::kByte:
      launch_kernels<uint8_t>(a, hwc, image_table, out_h, out_w, table_taps, channels_last, clusters, out,
                                  stream);
      break;
    default:
      launch_kernels<c10::Half>(a, hwc, image_table, out_h, out_w, table_taps, channels_last, clusters, out,
                                  stream);
      break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace augment
}  // namespace vlkernels

TORCH_LIBRARY_IMPL(vlkernels, CUDA, m) {
  m.impl("fused_augment", &vlkernels::augment::augment_functional<vlkernels::augment::fused_augment_cuda_impl>);
  m.impl("fused_augment.out", &vlkernels::augment::augment_out<vlkernels::augment::fused_augment_cuda_impl>);
}
