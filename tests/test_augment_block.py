"""The CUDA kernel's two launches run on the host against the CPU op (no GPU needed).

csrc/augment_block.h holds what a block of the kernel does, written for host and device: setup_block (the
validity guard, the image, the op plan, the rows, the tap tables), plain_block (the plain launch: the
resampling, the colour ops with the gray mean, the blur through its workspace, solarize, the normalised
or uint8 store) and cluster_block (the sm_90 cluster launch of outputs with contrast or blur: eight
blocks an output, each keeping its band in shared memory, the mean and the blur's columns across the
cluster). This compiles it with the C++ compiler and runs the launches' grids on the host: a block's
threads as host threads with a barrier and a block sum, a cluster's eight blocks side by side with a
barrier of all their threads and their shared memories mapped to each other (distributed shared
memory), a list of separate images read through the kernel's image table (address and bytes per image)
as the CUDA op reads a list, with the very arguments the CUDA op gets (captured from the op's Python
entry) and the launch
plans of an H100 (the band split of small batches, the tables' taps, the row buffers, the cluster's
shared-memory layout). Both "plain" (before sm_90: the plain launch takes every output) and "plain +
cluster" (sm_90) must equal the CPU op within the GPU tests' tolerance (ATOL01 on the [0, 1] scale;
uint8 within 1). What this cannot see is the hardware's side: __ldg, the warp-shuffle block sum, the
launch itself (tests/test_gpu_augment.py).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import augment_cost_model as acm
from tests._cxx import run_cxx
from tests.test_augment import ATOL01, STD, images_of, params_with

HARNESS = r"""
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>
#include "augment_block.h"
#include "host_block.h"
using namespace vlkernels::augment;
static std::vector<char> blob;
static size_t at = 0;
template <typename T>
std::vector<T> next() {
  long long bytes;
  std::memcpy(&bytes, blob.data() + at, 8);
  at += 8;
  std::vector<T> v(bytes / sizeof(T));
  if (bytes) std::memcpy(v.data(), blob.data() + at, bytes);
  at += bytes;
  return v;
}
// The plain launch: grid outputs x bands, one block at a time (its threads side by side).
template <typename out_t>
void plain_launch(const KernelArgs<out_t>& a, long long m, int threads, size_t smem_bytes) {
  const long long bands = (a.oh + a.band_rows - 1) / a.band_rows;
  for (long long n = 0; n < m; ++n)
    for (long long band = 0; band < bands; ++band) {
      Shared sh;
      sh.bar.n = threads;
      sh.smem.assign(smem_bytes + 64, 0);
      std::vector<std::thread> th;
      for (int k = 0; k < threads; ++k)
        th.emplace_back([&, k] {
          const HostBlock blk{k, threads, &sh};
          BlockJob<out_t> job;
          OpPlan plan;
          if (!setup_block(blk, a, false, n, band, sh.smem.data(), job, plan)) return;
          plain_block(blk, Plain{}, a, n, job, plan, nullptr, sh.total);
        });
      for (auto& x : th) x.join();
    }
}
// The cluster launch: grid outputs x 8, a cluster an output (its 8 blocks side by side).
template <typename out_t>
void cluster_launch(const KernelArgs<out_t>& a, long long m, int threads, size_t smem_bytes) {
  const int blocks = 8;
  for (long long n = 0; n < m; ++n) {
    std::vector<Shared> sh(blocks);
    Barrier cbar;
    cbar.n = blocks * threads;
    for (auto& b : sh) {
      b.bar.n = threads;
      b.smem.assign(smem_bytes + 64, 0);
    }
    std::vector<std::thread> th;
    for (int r = 0; r < blocks; ++r)
      for (int k = 0; k < threads; ++k)
        th.emplace_back([&, r, k] {
          const HostBlock blk{k, threads, &sh[r]};
          const HostCluster clu{r, &cbar, &sh};
          BlockJob<out_t> job;
          OpPlan plan;
          if (!setup_block(blk, a, true, n, r, sh[r].smem.data(), job, plan)) return;
          cluster_block(blk, clu, Plain{}, a, job, plan, nullptr, sh[r].total, &sh[r].partial);
        });
    for (auto& x : th) x.join();
  }
}
template <typename out_t>
void run(KernelArgs<float> f, const std::vector<int64_t>& sc, const char* path) {
  // f holds every field but the output's type; sc: see main.
  KernelArgs<out_t> a{};
  std::memcpy(static_cast<void*>(&a), &f, sizeof f - sizeof f.out);
  const long long m = sc[9], npix = a.oh * a.ow;
  const int threads = static_cast<int>(sc[11]);
  std::vector<out_t> out(3 * npix * m);
  std::vector<float> ws(a.blur_sigma ? m * a.ws_stride : 0);
  a.out = out.data();
  a.workspace = ws.empty() ? nullptr : ws.data();
  a.cluster_mode = static_cast<int>(sc[13]);
  plain_launch(a, m, threads, static_cast<size_t>(sc[12]));
  if (a.cluster_mode) {
    KernelArgs<out_t> c = a;
    c.band_rows = sc[14];
    c.buf_rows = static_cast<int>(sc[15]);
    c.region_rows = static_cast<int>(sc[16]);
    cluster_launch(c, m, threads, static_cast<size_t>(sc[17]));
  }
  FILE* fo = std::fopen(path, "wb");
  std::fwrite(out.data(), sizeof(out_t), out.size(), fo);
  std::fclose(fo);
}
int main() {
  FILE* f = std::fopen("%(inp)s", "rb");
  std::fseek(f, 0, SEEK_END);
  blob.resize(std::ftell(f));
  std::fseek(f, 0, SEEK_SET);
  if (std::fread(blob.data(), 1, blob.size(), f) != blob.size()) return 1;
  std::fclose(f);
  static const auto data = next<uint8_t>();
  static const auto offsets = next<int64_t>(), sizes = next<int64_t>(), boxes = next<int64_t>();
  static const auto flip = next<uint8_t>();
  static const auto factors = next<float>();
  static const auto order = next<int64_t>();
  static const auto gray = next<uint8_t>(), solar = next<uint8_t>();
  static const auto sigma = next<float>();
  static const auto source = next<int64_t>();
  const auto sc = next<int64_t>();
  const auto fl = next<float>();
  static const auto where = next<int64_t>();  // separate images: where each lies in data (else empty)
  // sc: hwc, n_images, interp, oh, ow, table_taps, channels_last, band_rows, buf_rows, m, uint8 out,
  // threads, smem bytes; the cluster launch's mode (0: none), band rows, buffer rows, region rows, smem
  KernelArgs<float> a{};
  a.data = data.data();
  a.numel = static_cast<int64_t>(data.size());
  a.offsets = offsets.data();
  a.sizes = sizes.data();
  a.hwc = sc[0] != 0;
  a.boxes = boxes.data();
  a.flip = flip.data();
  a.factors = factors.data();
  a.order = order.data();
  a.gray = gray.data();
  a.solar = solar.data();
  a.blur_sigma = sigma.empty() ? nullptr : sigma.data();
  a.source = source.empty() ? nullptr : source.data();
  // Separate images (a list read in place): the op's device table of (address, bytes) per image, the
  // kernel's offsets then within each image (0).
  static std::vector<int64_t> table;
  for (size_t i = 0; i < where.size(); ++i) {
    table.push_back(static_cast<int64_t>(reinterpret_cast<uintptr_t>(data.data() + where[i])));
    table.push_back(3 * sizes[2 * i] * sizes[2 * i + 1]);
  }
  a.image_table = table.empty() ? nullptr : table.data();
  a.n_images = sc[1];
  a.interp = static_cast<int>(sc[2]);
  a.oh = sc[3];
  a.ow = sc[4];
  a.ws_stride = 6 * a.oh * a.ow + 2 * (a.oh + a.ow);
  a.m0 = fl[0], a.m1 = fl[1], a.m2 = fl[2], a.s0 = fl[3], a.s1 = fl[4], a.s2 = fl[5];
  a.table_taps = static_cast<int>(sc[5]);
  a.channels_last = sc[6] != 0;
  a.band_rows = sc[7];
  a.buf_rows = static_cast<int>(sc[8]);
  a.region_rows = a.buf_rows;
  if (sc[10]) {
    run<uint8_t>(a, sc, "%(out)s");
  } else {
    run<float>(a, sc, "%(out)s");
  }
  return 0;
}
"""


def _capture(monkeypatch):
    """The arguments fused_augment hands the op (the same on CPU and CUDA), and the CPU op's result."""
    from vlkernels.augment import _op

    seen = {}
    real = _op.run

    def spy(*args, **kw):
        names = list(real.__code__.co_varnames[: real.__code__.co_argcount])
        seen.update(dict(zip(names, args, strict=False)), **kw)
        return real(*args, **kw)

    monkeypatch.setattr(_op, "run", spy)
    return seen


def _blob(arrays) -> bytes:
    out = b""
    for a in arrays:
        raw = a.contiguous().numpy().tobytes() if a is not None else b""
        out += len(raw).to_bytes(8, "little") + raw
    return out


RECIPES = {
    "all": dict(jitter_p=1.0, grayscale_p=0.3, solarize_p=0.3, blur_p=0.5),
    "contrast only": dict(jitter=(0.0, 0.4, 0.0, 0.0), jitter_p=1.0, grayscale_p=0.0, hflip_p=0.5),
    "crop and flip": dict(jitter_p=0.0, grayscale_p=0.0),
}


@pytest.mark.parametrize("launches", ["plain", "plain + cluster"])
@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize(
    "kind, size, interpolation, channels_last",
    [
        ("list", (48, 40), "bicubic", False),  # 6 outputs < 132 slots: bands
        ("nchw", (37, 51), "bilinear", True),
        ("nhwc", (24, 24), "bicubic", False),
    ],
)
def test_launches_on_host_equal_cpu_op(
    launches, recipe, out_dtype, kind, size, interpolation, channels_last, monkeypatch, tmp_path
):
    sizes = [(130, 170), (90, 60), (200, 150)] if kind == "list" else [(96, 128)] * 3
    imgs = images_of(kind, sizes, seed=3)
    p = params_with(imgs, seed=4, scale=(0.08, 1.0), **RECIPES[recipe])
    p = type(p).cat([p, params_with(imgs, seed=5, scale=(0.5, 1.0), **RECIPES[recipe])])
    p.source = torch.arange(3).repeat(2)  # two views of each image
    got, want, _ = _run_on_host(
        imgs, p, size, interpolation, out_dtype, channels_last, launches, monkeypatch, tmp_path
    )
    _assert_close(got, want)


@pytest.mark.parametrize("launches", ["plain", "plain + cluster"])
def test_large_downscales_and_invalid_values_on_host(launches, monkeypatch, tmp_path):
    # Crops of a 1300 x 900 photo to 48 x 40: a 20x downscale, beyond the tables' taps, so the taps are
    # evaluated on the fly; and an output whose box the caller got wrong (the op's check=False path: the
    # kernel's guard writes NaN there instead of reading out of bounds).
    imgs = images_of("list", [(1300, 900), (700, 60)], seed=8)
    p = params_with(imgs, seed=9, scale=(0.9, 1.0), **RECIPES["all"])
    got, want, m = _run_on_host(
        imgs, p, (48, 40), "bicubic", torch.float32, False, launches, monkeypatch, tmp_path, break_box=1
    )
    assert torch.isnan(got[1]).all()
    _assert_close(got[:1], want[:1])


def test_outputs_too_large_for_tables_on_host(monkeypatch, tmp_path):
    # 613 x 613: out_h + out_w beyond 1225, no tap tables fit 48 KiB (taps on the fly), no cluster launch.
    imgs = images_of("nhwc", [(700, 650)] * 2, seed=10)
    p = params_with(imgs, seed=11, **RECIPES["contrast only"])
    got, want, _ = _run_on_host(
        imgs, p, (613, 613), "bilinear", torch.float32, False, "plain", monkeypatch, tmp_path
    )
    _assert_close(got, want)


def _assert_close(got, want):
    if want.dtype == torch.uint8:
        assert (got.int() - want.int()).abs().max().item() <= 1
    else:
        err = (got - want).abs()
        assert (err <= ATOL01 / STD).all(), f"max abs err {err.max().item():.3g}"


def _run_on_host(
    imgs, p, size, interpolation, out_dtype, channels_last, launches, monkeypatch, tmp_path, break_box=None
):
    """(the launches' output on the host, the CPU op's, m): the op's own arguments, captured, handed to
    the harness with an H100's launch plans. break_box: an output whose box is made invalid after the CPU
    op ran (as a caller passing check=False could)."""
    from vlkernels.augment import fused_augment

    seen = _capture(monkeypatch)
    want = fused_augment(
        imgs, size, params=p, interpolation=interpolation, out_dtype=out_dtype, channels_last=channels_last,
        impl="cpu",
    )  # fmt: skip
    where = None
    if seen.get("images") is not None:  # separate images, read in place: the kernel's image table
        parts = [t.contiguous().reshape(-1) for t in seen["images"]]
        data = torch.cat(parts)  # (one host buffer standing in for the separate device tensors)
        where = torch.tensor([0] + [t.numel() for t in parts[:-1]]).cumsum(0)
        offsets = seen["offsets"]
    else:
        data, offsets = seen["data"], seen["offsets"]
    boxes = seen["boxes"].clone()
    if break_box is not None:
        boxes[break_box, 0] = seen["sizes"][break_box, 0]  # top at the image's height: out of range
    oh, ow = size
    m = p.boxes.shape[0]
    taps = acm.table_taps(oh, ow)
    buf_rows = acm.buffer_rows(oh, ow)
    smem = acm.table_bytes(oh, ow, taps) + buf_rows * 12 * ow
    bands = acm.band_rows(m, oh, ow, 132)  # a 132-SM GPU's split of this small batch
    scalars = [int(seen["hwc"]), int(seen["sizes"].shape[0]), int(seen["interpolation"]), oh, ow, taps]
    scalars += [int(channels_last), bands, buf_rows, m, int(out_dtype == torch.uint8), 16, smem]
    # The cluster launch (sm_90: outputs with contrast or blur, 8 blocks an output), or none (before sm_90:
    # the plain launch takes every output).
    cluster = acm.cluster_layout(oh, ow) if launches == "plain + cluster" else None
    assert launches == "plain" or cluster is not None
    keys = ("mode", "band", "buf_rows", "region", "smem")
    scalars += [cluster[k] for k in keys] if cluster else [0] * len(keys)
    floats = list(seen["mean"]) + list(seen["std"])
    arrays = [data.view(torch.uint8), offsets.to(torch.int64), seen["sizes"], boxes]
    arrays += [seen["flip"].to(torch.uint8), seen["factors"].float(), seen["order"]]
    arrays += [seen["gray"].to(torch.uint8)]
    solar, sigma, source = seen["solarize"], seen["blur_sigma"], seen["source"]
    arrays += [solar.to(torch.uint8) if solar is not None else torch.zeros(m, dtype=torch.uint8)]
    arrays += [sigma.float() if sigma is not None else None, source if source is not None else None]
    arrays += [torch.tensor(scalars, dtype=torch.int64), torch.tensor(floats, dtype=torch.float32), where]
    inp, res = tmp_path / "in.bin", tmp_path / "out.bin"
    inp.write_bytes(_blob(arrays))
    run_cxx(HARNESS % dict(inp=inp, out=res), tmp_path)
    got = torch.frombuffer(bytearray(res.read_bytes()), dtype=out_dtype)
    got = got.view((m, oh, ow, 3) if channels_last else (m, 3, oh, ow))
    if channels_last:
        got = got.permute(0, 3, 1, 2)
    return got, want, m
