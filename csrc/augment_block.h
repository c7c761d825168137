// Fused augmentation: one block of the CUDA kernel (csrc/cuda/augment_cuda.cu), both launches, written for
// host and device like augment_resample.h, so that tests/test_augment_block.py runs the launches on the
// host (host threads and a barrier for a block, a cluster's blocks side by side) against the CPU op.
//
// Block: tid(), size(), sync() (a barrier) and sum(v, scratch) (v summed over the block, every thread
// gets the total; scratch: kThreads / 32 doubles of shared memory on the GPU).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "augment.h"
#include "augment_resample.h"

namespace vlkernels {
namespace augment {

// The kernel's arguments (one launch).
template <typename out_t>
struct KernelArgs {
  const uint8_t* data;
  int64_t numel;
  const int64_t* offsets;
  const int64_t* sizes;
  bool hwc;
  const int64_t* boxes;
  const uint8_t* flip;
  const float* factors;
  const int64_t* order;
  const uint8_t* gray;
  const uint8_t* solar;
  const float* blur_sigma;
  const int64_t* source;
  const int64_t* image_table;
  int64_t n_images;
  int interp;
  float* workspace;
  int64_t ws_stride;
  float m0, m1, m2, s0, s1, s2;
  int64_t oh, ow;
  int table_taps;
  bool channels_last;
  int64_t band_rows;
  int buf_rows;
  int region_rows;
  int cluster_mode;
  out_t* out;
};

// The colour ops of a plan from op k0 on (contrast around gmean), then grayscale. (The plan stays in
// local memory, L1-cached: unrolling it into registers doubles the register count.)
VLK_HD void colour_ops(const OpPlan& plan, int k0, float gmean, bool to_gray, float& r, float& g, float& b) {
  for (int k = k0; k < plan.count; ++k) color_op(plan.ops[k], plan.factors[k], gmean, r, g, b);
  if (to_gray) {
    const float l = gray_of(r, g, b);
    r = l;
    g = l;
    b = l;
  }
}

// The colour ops of a plan before contrast (those the gray mean is taken after).
VLK_HD void ops_before_mean(const OpPlan& plan, float& r, float& g, float& b) {
  for (int k = 0; k < plan.split; ++k) color_op(plan.ops[k], plan.factors[k], 0.0f, r, g, b);
}

// The blur's normalised taps into w: the 2 rx + 1 horizontal ones, then the 2 ry + 1 vertical ones (raw
// Gaussian weights, each kernel's total summed in order by one thread, as the CPU kernel does; total >=
// the centre tap, 1), then divided. total: 2 floats of shared memory. Barriers inside: every thread of
// the block calls it.
template <typename Block>
VLK_HD void blur_taps(const Block& blk, float* w, int64_t rx, int64_t ry, float sigma, float* total) {
  const int64_t kx = 2 * rx + 1, ky = 2 * ry + 1;
  for (int64_t q = blk.tid(); q < kx + ky; q += blk.size()) {
    w[q] = q < kx ? blur_raw(q, rx, sigma) : blur_raw(q - kx, ry, sigma);
  }
  blk.sync();
  if (blk.tid() == 0) {
    float tx = 0.0f, ty = 0.0f;
    for (int64_t k = 0; k < kx; ++k) tx += w[k];
    for (int64_t k = 0; k < ky; ++k) ty += w[kx + k];
    total[0] = tx;
    total[1] = ty;
  }
  blk.sync();
  for (int64_t q = blk.tid(); q < kx + ky; q += blk.size()) w[q] /= total[q < kx ? 0 : 1];
  blk.sync();
}

// Solarize, normalise (or quantise), convert and write output pixel p of an image.
template <typename out_t>
VLK_HD void store(out_t* o, int p, int64_t npix, bool to_solar, bool channels_last, float m0, float m1, float m2,
                  float s0, float s1, float s2, float r, float g, float b) {
  if (to_solar) {
    r = solarize(r);
    g = solarize(g);
    b = solarize(b);
  }
  // NCHW: plane c at c * npix; channels-last (NHWC memory): pixel p at 3 * p + c.
  const int64_t cs = channels_last ? 1 : npix;
  const int64_t q = channels_last ? 3 * static_cast<int64_t>(p) : p;
  if constexpr (std::is_same_v<out_t, uint8_t>) {
    o[q] = static_cast<uint8_t>(quantise_u8(r));
    o[cs + q] = static_cast<uint8_t>(quantise_u8(g));
    o[2 * cs + q] = static_cast<uint8_t>(quantise_u8(b));
  } else {
    o[q] = static_cast<out_t>((r - m0) / s0);
    o[cs + q] = static_cast<out_t>((g - m1) / s1);
    o[2 * cs + q] = static_cast<out_t>((b - m2) / s2);
  }
}

// What one block of output n, band `band`, does (setup_block).
// (The op plan is kept apart, in setup_block's caller: its arrays are indexed at run time, so it lives in
// local memory; inside this struct it took the whole struct there with it.)
template <typename out_t>
struct BlockJob {
  Image im;
  float sigma;
  bool blur, to_gray, to_solar, tables;
  int row0, row1, buf_rows;
  Tables tab;
  float* buf;   // the separable passes' row buffer (shared memory, after the tables)
  float* keep;  // the cluster launch's band of pixels (after the buffer region)
  out_t* o;     // output n
};

// The block's set-up, common to both launches: the guard against invalid values (check_output: an invalid
// output is written as NaN, 0 for uint8, once, by the plain launch's band 0), the image and the op plan,
// which launch and which rows take the output, and the tap tables in shared memory (smem). Returns false
// when the block has nothing (more) to do; every such return happens before any barrier (the conditions
// are block-uniform).
template <typename out_t, typename Block>
VLK_HD bool setup_block(const Block& blk, const KernelArgs<out_t>& a, bool cluster_launch, int64_t n, int64_t band,
                        unsigned char* smem, BlockJob<out_t>& job, OpPlan& plan) {
  const int64_t npix = a.oh * a.ow;
  job.o = a.out + n * 3 * npix;
  // The host checks the values (check_augment_values) unless the caller vouched for them (check=False,
  // to avoid a host sync per batch); this guard evaluates the same predicate (check_output: the source
  // index first, then the image and the parameters), so that an invalid output never reads out of
  // bounds: it becomes NaN instead.
  job.sigma = a.blur_sigma != nullptr ? a.blur_sigma[n] : 0.0f;
  // With an image table (the images argument: separate tensors read in place), image s lives at
  // image_table[2 s] (its bytes, image_table[2 s + 1] of them) instead of in data.
  const int64_t s_in = source_of(a.source, n, a.n_images);
  const int64_t bytes = a.image_table != nullptr && s_in >= 0 ? a.image_table[2 * s_in + 1] : a.numel;
  if (check_output(bytes, a.n_images, a.source, n, a.offsets, a.sizes, a.boxes + 4 * n, a.order + 4 * n,
                   a.factors + 4 * n, job.sigma) != kSampleOk) {
    if (cluster_launch || band != 0) return false;  // written once, by the plain launch
    // (uint8 output has no NaN: an invalid image comes out 0 there.)
    for (int64_t p = blk.tid(); p < 3 * npix; p += blk.size()) {
      if constexpr (std::is_same_v<out_t, uint8_t>) {
        job.o[p] = 0;
      } else {
        job.o[p] = static_cast<out_t>(NAN);
      }
    }
    return false;
  }
  const int64_t s = a.source != nullptr ? a.source[n] : n;
  const int64_t H = a.sizes[2 * s], W = a.sizes[2 * s + 1];
  Image& im = job.im;
  im.src = (a.image_table != nullptr ? reinterpret_cast<const uint8_t*>(a.image_table[2 * s]) : a.data) + a.offsets[s];
  im.set_layout(a.hwc, H, W);
  im.top = a.boxes[4 * n];
  im.left = a.boxes[4 * n + 1];
  im.ch = a.boxes[4 * n + 2];
  im.cw = a.boxes[4 * n + 3];
  im.flip = a.flip[n] != 0;
  im.interp = a.interp;
  job.to_gray = a.gray[n] != 0;
  job.to_solar = a.solar[n] != 0;
  plan = plan_ops(a.factors + 4 * n, a.order + 4 * n);
  job.blur = job.sigma > 0.0f;
  // The cluster launch, when there is one (cluster_mode 1: outputs with contrast and no blur; 2: also
  // every blurred output), does those outputs and the plain launch skips them.
  const bool in_cluster =
      (a.cluster_mode >= 1 && plan.needs_mean && !job.blur) || (a.cluster_mode == 2 && job.blur);
  if (in_cluster != cluster_launch) return false;
  // Block-uniform (one output per block; a cluster's blocks share one), so every return below happens
  // before any barrier.
  const bool whole = !cluster_launch && (plan.needs_mean || job.blur);
  if (whole && band != 0) return false;
  // This block's rows [row0, row1): its band's, or all of them.
  const int64_t band_end = (band + 1) * a.band_rows;
  job.row0 = whole ? 0 : static_cast<int>(band * a.band_rows);
  job.row1 = whole ? static_cast<int>(a.oh) : static_cast<int>(band_end < a.oh ? band_end : a.oh);
  if (!cluster_launch && job.row0 >= job.row1) return false;  // (a cluster's empty band still takes part)
  // Block-uniform choice (every thread sees the same box), so the barrier below is safe.
  job.tables = max_taps(im.cw, a.ow, a.interp) <= a.table_taps && max_taps(im.ch, a.oh, a.interp) <= a.table_taps;
  job.tab = carve_tables(smem, a.oh, a.ow, a.table_taps);
  // The separable passes' row buffer: after the tables (16-byte aligned), buf_rows x 3 x ow floats; used
  // for this image when its taps make the passes worth it (block-uniform).
  job.buf = reinterpret_cast<float*>(smem + table_bytes_aligned(a.oh, a.ow, a.table_taps));
  // The cluster launch's band of pixels (keep, [3][band_rows x ow] floats) follows the buffer region
  // (region_rows x 3 x ow floats), then the blur's taps.
  job.keep = job.buf + static_cast<int64_t>(a.region_rows) * 3 * a.ow;
  job.buf_rows = taps_product(im.ch, a.oh, im.cw, a.ow, a.interp) < kSeparableMinTaps ? 0 : a.buf_rows;
  if (job.tables) fill_tables(blk, im, a.oh, a.ow, job.tab);
  return true;
}

// The plain launch's work for a block set up by setup_block: outputs with contrast or blur whole (contrast:
// a first pass that recomputes the pixels up to contrast and reduces the gray mean; blur: through the
// global workspace: the colour-processed image, its rows blurred into a second image, then the columns
// while writing the output), the others their band of rows. scratch: the block sum's; total: blur_taps'.
template <typename out_t, typename Block, typename Load>
VLK_HD void plain_block(const Block& blk, const Load& ld, const KernelArgs<out_t>& a, int64_t n,
                        const BlockJob<out_t>& job, const OpPlan& plan, double* scratch, float* total) {
  const int64_t oh = a.oh, ow = a.ow, npix = oh * ow;
  // 32-bit pixel indices (the host checks oh * ow < 2^31): 64-bit division is slow on the GPU.
  const int npix32 = static_cast<int>(npix), ow32 = static_cast<int>(ow), oh32 = static_cast<int>(oh);
  const Image& im = job.im;
  float gmean = 0.0f;
  if (plan.needs_mean) {
    float part = 0.0f;
    for_each_pixel(blk, ld, im, job.tables, job.tab, job.buf, job.buf_rows, oh32, ow32, 0, oh32,
                   [&](int, float r, float g, float b) {
                     ops_before_mean(plan, r, g, b);
                     part += gray_of(r, g, b);
                   });
    gmean = static_cast<float>(blk.sum(part, scratch) / static_cast<double>(npix));
  }
  // Blur (block-uniform: one sigma per image): the colour-processed image goes to the workspace.
  float* ws = job.blur ? a.workspace + n * a.ws_stride : nullptr;
  for_each_pixel(blk, ld, im, job.tables, job.tab, job.buf, job.buf_rows, oh32, ow32, job.row0, job.row1,
                 [&](int p, float r, float g, float b) {
                   colour_ops(plan, 0, gmean, job.to_gray, r, g, b);
                   if (job.blur) {
                     ws[p] = r;
                     ws[npix + p] = g;
                     ws[2 * npix + p] = b;
                   } else {
                     store(job.o, p, npix, job.to_solar, a.channels_last, a.m0, a.m1, a.m2, a.s0, a.s1, a.s2, r,
                           g, b);
                   }
                 });
  if (!job.blur) return;
  // Workspace of a blurred image: [3, oh, ow] colour-processed, [3, oh, ow] rows blurred, then the
  // horizontal and vertical Gaussian taps (2 rx + 1 and 2 ry + 1 floats).
  float* hb = ws + 3 * npix;
  float* wx = ws + 6 * npix;
  const int64_t rx = blur_radius(job.sigma, ow), ry = blur_radius(job.sigma, oh);
  float* wy = wx + 2 * rx + 1;
  const int64_t kx = 2 * rx + 1, ky = 2 * ry + 1;
  blur_taps(blk, wx, rx, ry, job.sigma, total);
  // Rows: hb[c][i][j] = sum_t wx[t] * ws[c][i][reflect(j - rx + t)].
  GridWalk at(blk.tid(), blk.size(), ow32);
  for (int p = blk.tid(); p < npix32; p += blk.size(), at.step()) {
    const int i = at.row, j = at.col;
    for (int c = 0; c < 3; ++c) {
      const float* row = ws + c * npix + static_cast<int64_t>(i) * ow;
      float acc = 0.0f;
      for (int64_t t = 0; t < kx; ++t) acc += wx[t] * row[reflect_index(j - rx + t, ow)];
      hb[c * npix + p] = acc;
    }
  }
  blk.sync();
  // Columns, then solarize, normalise, write.
  GridWalk out(blk.tid(), blk.size(), ow32);
  for (int p = blk.tid(); p < npix32; p += blk.size(), out.step()) {
    const int i = out.row, j = out.col;
    float v[3];
    for (int c = 0; c < 3; ++c) {
      const float* col = hb + c * npix + j;
      float acc = 0.0f;
      for (int64_t t = 0; t < ky; ++t) acc += wy[t] * col[reflect_index(i - ry + t, oh) * ow];
      v[c] = acc;
    }
    store(job.o, p, npix, job.to_solar, a.channels_last, a.m0, a.m1, a.m2, a.s0, a.s1, a.s2, v[0], v[1], v[2]);
  }
}

// The cluster launch's work for a block set up by setup_block (sm_90+: one cluster of kClusterBlocks
// blocks an output, each a band of rows): one resampling pass, each block keeping its band's pixels in
// its shared memory (keep, channel stride cs = band_rows x ow). Contrast: the ops before it, then the
// cluster sums the gray mean (a partial a block, read across the cluster in rank order), then the rest
// of the chain from the kept pixels. Blur: the colour-processed band stays in keep, its rows are blurred
// into the buffer region (hb, free once the resampling is done), then the columns read the rows they
// need from whichever block of the cluster holds them (distributed shared memory).
// Cluster: sync() (a barrier of the whole cluster), num_blocks(), map(p, rank) (p, an address in this
// block's shared memory, in block `rank`'s). scratch: the block sum's; total: blur_taps'; partial: one
// double of shared memory (this block's part of the mean).
template <typename out_t, typename Block, typename Cluster, typename Load>
VLK_HD void cluster_block(const Block& blk, const Cluster& clu, const Load& ld, const KernelArgs<out_t>& a,
                          const BlockJob<out_t>& job, const OpPlan& plan, double* scratch, float* total,
                          double* partial) {
  const Image& im = job.im;
  const int row0 = job.row0, row1 = job.row1;
  const int64_t oh = a.oh, ow = a.ow, npix = oh * ow, band_rows = a.band_rows;
  const int oh32 = static_cast<int>(oh), ow32 = static_cast<int>(ow);
  const bool channels_last = a.channels_last;
  const float m0 = a.m0, m1 = a.m1, m2 = a.m2, s0 = a.s0, s1 = a.s1, s2 = a.s2;
  float* const buf = job.buf;
  float* const keep = job.keep;
  out_t* const o = job.o;
  const float sigma = job.sigma;
  const bool blur = job.blur, to_gray = job.to_gray, to_solar = job.to_solar;
  const int p0 = row0 * ow32;
  const int band_px = row1 > row0 ? (row1 - row0) * ow32 : 0;
  const int brows = static_cast<int>(band_rows);
  const int cs = brows * ow32;
  float part = 0.0f;
  for_each_pixel(blk, ld, im, job.tables, job.tab, buf, job.buf_rows, oh32, ow32, row0, row1,
                 [&](int p, float r, float g, float b) {
                   ops_before_mean(plan, r, g, b);
                   float* kp = keep + (p - p0);
                   kp[0] = r;
                   kp[cs] = g;
                   kp[2 * cs] = b;
                   part += gray_of(r, g, b);
                 });
  float gmean = 0.0f;
  if (plan.needs_mean) {
    const double mine = blk.sum(part, scratch);
    if (blk.tid() == 0) *partial = mine;
    clu.sync();  // every partial written
    double sum = 0.0;
    for (unsigned int r = 0; r < clu.num_blocks(); ++r) sum += *clu.map(partial, r);
    clu.sync();  // every partial read before any block of the cluster exits
    gmean = static_cast<float>(sum / static_cast<double>(npix));
  } else {
    blk.sync();  // keep written: the loop below reads it in another order
  }
  for (int q = blk.tid(); q < band_px; q += blk.size()) {
    float r = keep[q], g = keep[cs + q], b = keep[2 * cs + q];
    colour_ops(plan, plan.split, gmean, to_gray, r, g, b);
    if (blur) {
      keep[q] = r;
      keep[cs + q] = g;
      keep[2 * cs + q] = b;
    } else {
      store(o, p0 + q, npix, to_solar, channels_last, m0, m1, m2, s0, s1, s2, r, g, b);
    }
  }
  if (!blur) return;
  // The blur's taps.
  float* hb = buf;
  float* wxb = keep + 3 * static_cast<int64_t>(cs);
  const int rx = static_cast<int>(blur_radius(sigma, ow)), ry = static_cast<int>(blur_radius(sigma, oh));
  const int kx = 2 * rx + 1, ky = 2 * ry + 1;
  float* wyb = wxb + kx;
  blur_taps(blk, wxb, rx, ry, sigma, total);
  // Rows, within the band: hb[c][i][j] = sum_t wx[t] * keep[c][i][reflect(j - rx + t)].
  GridWalk at(blk.tid(), blk.size(), ow32);
  for (int q = blk.tid(); q < band_px; q += blk.size(), at.step()) {
    const int i = at.row, j = at.col;
    for (int c = 0; c < 3; ++c) {
      const float* row = keep + c * cs + i * ow32;
      float acc = 0.0f;
      for (int t = 0; t < kx; ++t) acc += wxb[t] * row[reflect_index(j - rx + t, ow)];
      hb[c * cs + q] = acc;
    }
  }
  clu.sync();  // every block's rows blurred
  // Columns: image row y lives in block y / band_rows of the cluster, at its row y % band_rows.
  GridWalk out(blk.tid(), blk.size(), ow32);
  for (int q = blk.tid(); q < band_px; q += blk.size(), out.step()) {
    const int i = row0 + out.row, j = out.col;
    float v[3] = {0.0f, 0.0f, 0.0f};
    for (int t = 0; t < ky; ++t) {
      const int y = static_cast<int>(reflect_index(i - ry + t, oh));
      const float* h = clu.map(hb, static_cast<unsigned int>(y / brows)) + (y % brows) * ow32 + j;
      for (int c = 0; c < 3; ++c) v[c] += wyb[t] * h[c * cs];
    }
    store(o, p0 + q, npix, to_solar, channels_last, m0, m1, m2, s0, s1, s2, v[0], v[1], v[2]);
  }
  clu.sync();  // every block's rows read before any block of the cluster exits
}

}  // namespace augment
}  // namespace vlkernels
