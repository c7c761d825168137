// Fused augmentation: the resampling of the CUDA kernel (csrc/cuda/augment_cuda.cu), written for host and
// device so that the host tests run it: the tap tables' axes, the row sums (one column, or two
// neighbouring columns: row_sum_pair), a pixel's direct sums and for_each_pixel, the separable passes
// through the row buffer. Two parameters make it run on either side: Load reads a source byte (__ldg on
// the GPU, a plain read in the tests) and Block is the thread block (thread index, size, barrier:
// threadIdx.x / blockDim.x / __syncthreads() on the GPU; host threads and a barrier in
// tests/test_augment_bands.py, which checks the separable passes bitwise against the direct sums).
#pragma once

#include <cstddef>
#include <cstdint>

#include "augment.h"

namespace vlkernels {
namespace augment {

// The antialiased taps of one output pixel along one axis (aa_weights, with the weights evaluated
// on demand instead of stored).
struct Axis {
  int64_t lo;
  int n;
  int interp;
  float center;
  float invscale;
  float total;

  VLK_HD Axis(int64_t in, int64_t out, int64_t i, int interp_) {
    interp = interp_;
    const float scale = div_rn(static_cast<float>(in), static_cast<float>(out));
    const float support = aa_support(scale, interp);
    invscale = scale >= 1.0f ? div_rn(1.0f, scale) : 1.0f;
    center = static_cast<float>(scale * (i + 0.5));
    int64_t a = static_cast<int64_t>(center - support + 0.5f);
    a = a < 0 ? 0 : a;
    int64_t b = static_cast<int64_t>(center + support + 0.5f);
    b = b > in ? in : b;
    lo = a;
    n = static_cast<int>(b - a);
    total = 0.0f;
    for (int j = 0; j < n; ++j) total += raw(j);
    if (total == 0.0f) total = 1.0f;
  }
  // In float: this path evaluates the filter for every tap of every pixel, where FP64 (1/64 of the FP32
  // rate on most GPUs) dominated. The argument differs from aa_weights' double one by a few float ulps
  // of a value below the support (~1e-7 of a weight), far inside the CPU parity tolerance.
  VLK_HD float raw(int j) const {
    return aa_filter((static_cast<float>(j + lo) - center + 0.5f) * invscale, interp);
  }
  VLK_HD float weight(int j) const { return div_rn(raw(j), total); }
  VLK_HD float operator()(int j) const { return weight(j); }
};

struct Image {
  const uint8_t* src;
  int64_t sy, sx, sc;
  int64_t top, left, ch, cw;
  bool flip;
  int interp;  // kBilinear or kBicubic
  // The strides of an H x W image: channels-last (HWC) or planar (CHW).
  VLK_HD void set_layout(bool hwc, int64_t H, int64_t W) {
    sy = hwc ? W * 3 : W;
    sx = hwc ? 3 : 1;
    sc = hwc ? 1 : H * W;
  }
};

// The taps of one output pixel read from the per-block tables in shared memory. The tables are
// tap-major (tap k of pixel j at w[k * stride + j]): the threads of a warp read consecutive pixels'
// weights of one tap from consecutive banks (a pixel-major [pixel][8] layout put them 8 words apart:
// an 8-way bank conflict on every tap).
struct TableAxis {
  int64_t lo;
  int n;
  const float* w;
  int stride;
  VLK_HD float weight(int j) const { return w[j * stride]; }
  VLK_HD float operator()(int j) const { return weight(j); }
};

// One source row (crop row y) resampled along x at one output column: its column taps ax summed in
// order, three channels (sum_taps, augment.h: one loop per layout, the launch's). Both ways of resampling
// (resample, the separable x pass) sum through this or row_sum_pair; a tap costs its three byte loads,
// the weight's shared-memory load, and per channel a u8_to_float (integer add + FADD) and an FFMA, with
// the address arithmetic paid once per unrolled step (SASS: tests/test_cuda_compile.py).
VLK_HD const uint8_t* row_start(const Image& im, int64_t y, int64_t lo) {
  return im.src + (im.top + y) * im.sy + (im.left + lo) * im.sx;
}

template <typename Load, typename AX>
VLK_HD void row_sum(const Load& ld, const Image& im, int64_t y, const AX& ax, float& rr, float& rg, float& rb) {
  const uint8_t* p = row_start(im, y, ax.lo);
  float acc[3] = {0.0f, 0.0f, 0.0f};
  if (im.sx == 3) {
    sum_taps(ByteSource<true, Load>(p, im.sc, ld), ax.n, ax, 0, acc);
  } else {
    sum_taps(ByteSource<false, Load>(p, im.sc, ld), ax.n, ax, 0, acc);
  }
  rr = acc[0];
  rg = acc[1];
  rb = acc[2];
}

// row_sum of two neighbouring output columns (a, b) of one source row: where their taps overlap, each
// source value is loaded and converted once for both (sum_taps_pair); bitwise the two row_sums. The
// columns are taken in the order of their first taps (a flipped crop mirrors them); pairs whose ranges
// do not nest that way (none from aa_weights' geometry) are summed one at a time.
template <typename Load>
VLK_HD void row_sum_pair(const Load& ld, const Image& im, int64_t y, const TableAxis& a, const TableAxis& b,
                         float* va, float* vb) {
  // (Values, not references or pointers chosen at run time: those would put the sums in local memory.)
  const bool swap = b.lo < a.lo;
  const TableAxis first = swap ? b : a;
  const TableAxis second = swap ? a : b;
  const int d = static_cast<int>(second.lo - first.lo);
  if (!taps_nest(d, first.n, second.n)) {
    row_sum(ld, im, y, a, va[0], va[1], va[2]);
    row_sum(ld, im, y, b, vb[0], vb[1], vb[2]);
    return;
  }
  const uint8_t* p = row_start(im, y, first.lo);
  float s1[3] = {0.0f, 0.0f, 0.0f}, s2[3] = {0.0f, 0.0f, 0.0f};
  if (im.sx == 3) {
    const ByteSource<true, Load> src(p, im.sc, ld);
    sum_taps_pair(src, first.n, first.w, d, second.n, second.w, first.stride, s1, s2);
  } else {
    const ByteSource<false, Load> src(p, im.sc, ld);
    sum_taps_pair(src, first.n, first.w, d, second.n, second.w, first.stride, s1, s2);
  }
  for (int c = 0; c < 3; ++c) {
    va[c] = swap ? s2[c] : s1[c];
    vb[c] = swap ? s1[c] : s2[c];
  }
}

// The row sums of one output pixel's taps, then scaled to [0, 1] (bicubic values clamped to it: negative
// lobes; see clamp_rows in augment_cpu.cpp). Both ways of resampling finish through this.
VLK_HD void finish_pixel(const Image& im, float ar, float ag, float ab, float& r, float& g, float& b) {
  r = ar / 255.0f;
  g = ag / 255.0f;
  b = ab / 255.0f;
  if (im.interp == kBicubic) {
    r = clamp01(r);
    g = clamp01(g);
    b = clamp01(b);
  }
}

// Resampled pixel of the crop, in [0, 1], from its row taps ay and column taps ax (rows outer,
// columns inner: the association of the CPU kernel's separable passes).
template <typename Load, typename AY, typename AX>
VLK_HD void resample(const Load& ld, const Image& im, const AY& ay, const AX& ax, float& r, float& g, float& b) {
  float ar = 0.0f, ag = 0.0f, ab = 0.0f;
  for (int ky = 0; ky < ay.n; ++ky) {
    const float wy = ay.weight(ky);
    float rr, rg, rb;
    row_sum(ld, im, ay.lo + ky, ax, rr, rg, rb);
    ar += wy * rr;
    ag += wy * rg;
    ab += wy * rb;
  }
  finish_pixel(im, ar, ag, ab, r, g, b);
}

// Shared-memory tap tables of one image: weights [taps, out] (tap-major), first index and count per
// pixel.
struct Tables {
  float* wx;
  float* wy;
  int* lox;
  int* loy;
  int* nx;
  int* ny;
};

// The tables' bytes rounded up to 16: where the separable passes' row buffer starts.
VLK_HD size_t table_bytes_aligned(int64_t oh, int64_t ow, int taps) {
  return (static_cast<size_t>(oh + ow) * (taps * sizeof(float) + 2 * sizeof(int)) + 15) / 16 * 16;
}

VLK_HD Tables carve_tables(unsigned char* smem, int64_t oh, int64_t ow, int taps) {
  Tables t;
  t.wx = reinterpret_cast<float*>(smem);
  t.wy = t.wx + ow * taps;
  t.lox = reinterpret_cast<int*>(t.wy + oh * taps);
  t.loy = t.lox + ow;
  t.nx = t.loy + oh;
  t.ny = t.nx + ow;
  return t;
}

// The tap tables of an image's crop (aa_weights for every output column, mirrored when flipped, and row),
// filled by the block's threads; a barrier at the end.
template <typename Block>
VLK_HD void fill_tables(const Block& blk, const Image& im, int64_t oh, int64_t ow, const Tables& t) {
  int64_t lo;
  for (int64_t q = blk.tid(); q < ow + oh; q += blk.size()) {
    if (q < ow) {
      aa_weights(im.cw, ow, im.flip ? ow - 1 - q : q, im.interp, t.wx + q, &lo, t.nx + q, ow);
      t.lox[q] = static_cast<int>(lo);
    } else {
      const int64_t i = q - ow;
      aa_weights(im.ch, oh, i, im.interp, t.wy + i, &lo, t.ny + i, oh);
      t.loy[i] = static_cast<int>(lo);
    }
  }
  blk.sync();
}

// Output pixel (i, j) of the image, resampled: from the tables or with on-the-fly taps.
template <typename Load>
VLK_HD void pixel(const Load& ld, const Image& im, bool tables, const Tables& t, int64_t oh, int64_t ow, int i, int j,
                  float& r, float& g, float& b) {
  if (tables) {
    const TableAxis ay{t.loy[i], t.ny[i], t.wy + i, static_cast<int>(oh)};
    const TableAxis ax{t.lox[j], t.nx[j], t.wx + j, static_cast<int>(ow)};
    resample(ld, im, ay, ax, r, g, b);
  } else {
    const Axis ay(im.ch, oh, i, im.interp);
    const Axis ax(im.cw, ow, im.flip ? ow - 1 - j : j, im.interp);
    resample(ld, im, ay, ax, r, g, b);
  }
}

// Visits the output pixels of rows [row0, row1) of an image, resampled, as emit(p, r, g, b) with p the
// pixel's row-major index. Two ways, chosen per block (block-uniform, so the barriers are safe):
// - separable, when the tap tables are in shared memory and the row buffer holds buf_rows >= the
//   taps of a row: output rows in chunks whose source rows fit the buffer; a horizontal pass resamples
//   each source row of the chunk into the buffer (float [row][channel][ow], the column taps of every
//   output column, two neighbouring columns a thread: row_sum_pair), then a vertical pass sums the
//   buffered rows with the row taps (two neighbouring output rows a thread). Per output pixel
//   (source rows / output rows) x nx + ny taps instead of nx x ny; the same products and the same order
//   of summation as the direct way (each source row's column sum first, then the rows), so the same
//   values.
// - direct otherwise: every pixel sums its ny x nx taps from the source (on-the-fly taps without tables).
template <typename Block, typename Load, typename Emit>
VLK_HD void for_each_pixel(const Block& blk, const Load& ld, const Image& im, bool tables, const Tables& t, float* buf,
                           int buf_rows, int oh, int ow, int row0, int row1, Emit&& emit) {
  if (!tables || buf_rows <= 0) {
    // (Counted from 0, not from row0 * ow: ptxas gives the loop 17 more registers otherwise.)
    const int p0 = row0 * ow;
    GridWalk at(blk.tid(), blk.size(), ow);
    for (int q = blk.tid(); q < (row1 - row0) * ow; q += blk.size(), at.step()) {
      float r, g, b;
      pixel(ld, im, tables, t, oh, ow, row0 + at.row, at.col, r, g, b);
      emit(p0 + q, r, g, b);
    }
    return;
  }
  for (int i0 = row0; i0 < row1;) {
    // The chunk [i0, i1): the most rows whose source rows [y0, y1) fit the buffer (the rows' first and
    // last taps grow with i, so the last row bounds them; one row always fits: ny <= taps <= buf_rows).
    const int y0 = t.loy[i0];
    int i1 = i0 + 1;
    while (i1 < row1 && t.loy[i1] + t.ny[i1] - y0 <= buf_rows) ++i1;
    const int nrows = t.loy[i1 - 1] + t.ny[i1 - 1] - y0;
    // The x pass in pairs of neighbouring output columns (row_sum_pair; the last column alone when ow
    // is odd).
    const int pairs = (ow + 1) / 2;
    GridWalk at(blk.tid(), blk.size(), pairs);
    for (int q = blk.tid(); q < nrows * pairs; q += blk.size(), at.step()) {
      const int y = at.row, j = 2 * at.col;
      float va[3], vb[3];
      const TableAxis a{t.lox[j], t.nx[j], t.wx + j, ow};
      float* o = buf + 3 * y * ow + j;
      if (j + 1 < ow) {
        row_sum_pair(ld, im, y0 + y, a, TableAxis{t.lox[j + 1], t.nx[j + 1], t.wx + j + 1, ow}, va, vb);
        o[1] = vb[0];
        o[ow + 1] = vb[1];
        o[2 * ow + 1] = vb[2];
      } else {
        row_sum(ld, im, y0 + y, a, va[0], va[1], va[2]);
      }
      o[0] = va[0];
      o[ow] = va[1];
      o[2 * ow] = va[2];
    }
    blk.sync();
    // The y pass in pairs of neighbouring output rows (sum_taps_pair over the buffered rows; the last
    // row of a chunk alone when it has an odd number).
    const int row_pairs = (i1 - i0 + 1) / 2;
    GridWalk out(blk.tid(), blk.size(), ow);
    for (int q = blk.tid(); q < row_pairs * ow; q += blk.size(), out.step()) {
      const int i = i0 + 2 * out.row, j = out.col;
      const RowSource src{buf + 3 * (t.loy[i] - y0) * ow + j, ow, 3 * ow};
      float va[3] = {0.0f, 0.0f, 0.0f}, vb[3] = {0.0f, 0.0f, 0.0f};
      const bool two = i + 1 < i1;
      const int d = two ? t.loy[i + 1] - t.loy[i] : 0;
      if (two && taps_nest(d, t.ny[i], t.ny[i + 1])) {  // (always, from aa_weights' geometry)
        sum_taps_pair(src, t.ny[i], t.wy + i, d, t.ny[i + 1], t.wy + i + 1, oh, va, vb);
      } else {
        sum_taps(src, t.ny[i], StridedWeights{t.wy + i, oh}, 0, va);
        if (two) sum_taps(src.at(d), t.ny[i + 1], StridedWeights{t.wy + i + 1, oh}, 0, vb);
      }
      float r, g, b;
      finish_pixel(im, va[0], va[1], va[2], r, g, b);
      emit(i * ow + j, r, g, b);
      if (two) {
        finish_pixel(im, vb[0], vb[1], vb[2], r, g, b);
        emit((i + 1) * ow + j, r, g, b);
      }
    }
    blk.sync();  // the next chunk overwrites the buffer
    i0 = i1;
  }
}

}  // namespace augment
}  // namespace vlkernels
