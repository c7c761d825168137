"""Benchmark of the fused augmentation: images per second.

CPU: the C++ op (impl="cpu") vs the PyTorch reference chain (impl="torch") vs a PIL chain (open_clip's
CPU path: PIL crop + resize + flip + ColorJitter (ImageEnhance, HSV hue) + grayscale, then to-tensor
and normalise, one image at a time), at 1 thread (per core) and at all threads.
GPU: the CUDA op vs the PyTorch reference on the GPU and torchvision v2 applied per sample (when
torchvision is importable); the fraction of the memory-bandwidth floor (read the uint8 input once,
write the output once) at the measured device-to-device copy bandwidth.
Inputs: a batch of --batch 256x256 images (NHWC uint8 tensor) and a list of --batch images of mixed
sizes (128..384 per side), all to 224x224 float32. Slow baselines run on the first --ref-batch images
and are reported per image. The same sampled parameters are used by every implementation.

python -m benchmarks.bench_augment --device cpu --batch 256 --out benchmarks/results/cpu/augment.json
python -m benchmarks.bench_augment --scaling --reps 9     # CPU thread scaling, 1 vs 2 threads
python -m benchmarks.bench_augment --vs-torchvision --batch 64 --reps 5 \
    --out benchmarks/results/cpu/augment_v2.json                 # per core vs torchvision's real chains

--vs-torchvision: real photographs (scikit-image's bundled astronaut, coffee, chelsea, rocket; random
windows, mixed sizes) to 224, per core (1 thread each), the same strong-view recipe everywhere
(RandomResizedCrop(scale=(0.08, 1), BICUBIC) + ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8 +
RandomGrayscale(0.2) + GaussianBlur p=0.5 + flip + normalise): ours (the C++ op, parameters sampled in
the call) vs torchvision v2 per sample on uint8 tensors, the same on float tensors, and a PIL chain
(torchvision's v1 transforms on PIL images, plain Pillow: pillow-simd is not installed); plus open_clip's
default training transform, which is only RandomResizedCrop(scale=(0.9, 1.0), BICUBIC) + normalise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from benchmarks.harness import environment, print_table, timing, write_json
from vlkernels.augment import CLIP_MEAN, CLIP_STD, AugmentParams, _op, fused_augment, sample_augment_params
from vlkernels.augment.api import as_batch

# Per input kind: sampling keywords and interpolation ("open_clip": its training transform,
# RandomResizedCrop(scale=(0.9, 1.0), BICUBIC), on 500 x 375 images: the downscales the CUDA kernel's
# separable passes are for; the others: the default sampling, bilinear).
RECIPES = {"open_clip": (dict(scale=(0.9, 1.0), hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0), "bicubic")}
INTERP_IDS = {"bilinear": 0, "bicubic": 1}


def make_inputs(kind: str, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if kind == "256x256":
        return torch.randint(0, 256, (n, 256, 256, 3), dtype=torch.uint8, generator=g)
    if kind == "open_clip":
        return torch.randint(0, 256, (n, 375, 500, 3), dtype=torch.uint8, generator=g)
    sizes = torch.randint(128, 385, (n, 2), generator=g).tolist()
    return [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g) for h, w in sizes]


def subset(images, params: AugmentParams, k: int):
    return images[:k], AugmentParams(**{f: v[:k] for f, v in vars(params).items()})


def pil_chain(images, params: AugmentParams, size: int):
    """open_clip's CPU path, written with PIL the way torchvision's PIL backend does each op."""
    from PIL import Image, ImageEnhance

    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    boxes, flips, jit = params.boxes.tolist(), params.flip.tolist(), params.jitter.tolist()
    fac = torch.stack([params.brightness, params.contrast, params.saturation, params.hue], 1).tolist()
    orders, grays = params.order.tolist(), params.grayscale.tolist()
    out = []
    for i, img in enumerate(images):
        im = Image.fromarray(img.numpy())
        t, l, h, w = boxes[i]
        im = im.crop((l, t, l + w, t + h)).resize((size, size), Image.BILINEAR)
        if flips[i]:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        if jit[i]:
            for op in orders[i]:
                f = fac[i][op]
                if op == 0:
                    im = ImageEnhance.Brightness(im).enhance(f)
                elif op == 1:
                    im = ImageEnhance.Contrast(im).enhance(f)
                elif op == 2:
                    im = ImageEnhance.Color(im).enhance(f)
                else:
                    hh, ss, vv = im.convert("HSV").split()
                    np_h = np.array(hh, dtype=np.uint8)
                    np_h += np.uint8(int(f * 255) % 256)
                    im = Image.merge("HSV", (Image.fromarray(np_h, "L"), ss, vv)).convert("RGB")
        if grays[i]:
            im = im.convert("L").convert("RGB")
        x = torch.from_numpy(np.asarray(im)).permute(2, 0, 1).float().div(255.0)
        out.append((x - mean) / std)
    return torch.stack(out)


def torchvision_v2_chain(images, params: AugmentParams, size: int, interpolation: str = "bilinear"):
    """torchvision.transforms.v2 functional ops applied per sample on the images' device."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    mode = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR

    boxes, flips, jit = params.boxes.tolist(), params.flip.tolist(), params.jitter.tolist()
    fac = torch.stack([params.brightness, params.contrast, params.saturation, params.hue], 1).tolist()
    orders, grays = params.order.tolist(), params.grayscale.tolist()
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    out = []
    for i, img in enumerate(images):
        x = img.permute(2, 0, 1) if img.shape[-1] == 3 else img
        t, l, h, w = boxes[i]
        x = TF.resized_crop(x, t, l, h, w, [size, size], interpolation=mode, antialias=True)
        x = TF.to_dtype(x, torch.float32, scale=True)
        if flips[i]:
            x = TF.horizontal_flip(x)
        if jit[i]:
            for op in orders[i]:
                x = ops[op](x, fac[i][op])
        if grays[i]:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        out.append(TF.normalize(x, list(CLIP_MEAN), list(CLIP_STD)))
    return torch.stack(out)


def copy_bandwidth(device: str) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write of 1 GiB)."""
    x = torch.empty(2**30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    t = timing(lambda: y.copy_(x), device, reps=10)
    return 2 * x.numel() / (t["median_ms"] * 1e-3)


def bench_kind(kind: str, args, env: dict, threads: int) -> list[dict]:
    rows = []

    def cpu_time(fn) -> dict:
        """Median process CPU time per call: on a shared machine, the per-core cost (wall time there
        includes the time other processes hold the core)."""
        times = []
        for _ in range(max(2, reps)):
            t0 = time.process_time()
            fn()
            times.append((time.process_time() - t0) * 1e3)
        return dict(cpu_ms=statistics.median(times))

    def row(impl, n, t, threads, **extra):
        ips = n / (t["median_ms"] * 1e-3)
        if "cpu_ms" in extra:
            extra["images_per_cpu_s"] = n / (extra["cpu_ms"] * 1e-3)
        r = dict(op="augment", impl=impl, B=args.batch, D=kind, dtype="float32", mode=f"to {args.size}")
        r.update(images=n, threads=threads, images_per_s=ips, images_per_s_per_thread=ips / threads)
        r.update(t, **extra, **env)
        rows.append(r)
        print(f"{impl:>16} {kind:>8} threads={threads} n={n}: {ips:9.1f} img/s", flush=True)

    images = make_inputs(kind, args.batch)
    recipe, interpolation = RECIPES.get(kind, ({}, "bilinear"))
    params = sample_augment_params(images, generator=torch.Generator().manual_seed(1), **recipe)
    ref_images, ref_params = subset(images, params, min(args.ref_batch, args.batch))
    n_ref, size, reps = len(ref_images), args.size, args.reps
    if args.device == "cpu":
        all_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        op = lambda: fused_augment(images, size, params=params, impl="cpu", interpolation=interpolation)
        extra = cpu_time(op) if threads == 1 else {}
        row("cpu", args.batch, timing(op, "cpu", reps), threads, **extra)
        ref = lambda: fused_augment(
            ref_images, size, params=ref_params, impl="torch", interpolation=interpolation
        )
        extra = cpu_time(ref) if threads == 1 else {}
        row("torch", n_ref, timing(ref, "cpu", max(1, reps // 2), warmup=0), threads, **extra)
        if threads == 1 and interpolation == "bilinear":  # the PIL chain: single-threaded, bilinear
            pil = lambda: pil_chain(ref_images, ref_params, size)
            row("pil", n_ref, timing(pil, "cpu", reps), 1, **cpu_time(pil))
        torch.set_num_threads(all_threads)
        return rows
    dev = args.device
    images = [t.to(dev) for t in images] if isinstance(images, list) else images.to(dev)
    params, ref_params = params.to(dev), ref_params.to(dev)
    ref_images = images[:n_ref]
    in_bytes = sum(t.numel() for t in images) if isinstance(images, list) else images.numel()
    bw = copy_bandwidth(dev)
    gen = torch.Generator(device=dev).manual_seed(2)
    # The op alone on a prepared batch, unchecked (check=False: the public call with explicit params
    # validates them once, one host sync per call, and a direct checked call makes one packed host
    # copy), and the whole public path from sampling on the device to the output.
    b = as_batch(images)
    op_args = (b.data, b.offsets, b.sizes, b.hwc, params.boxes, params.flip, params.factors(), params.order)
    op_args += (params.grayscale, list(CLIP_MEAN), list(CLIP_STD), size, size)
    # (clusters: whether the recipe can have contrast or blur, as fused_augment tells the op.)
    may_cluster = recipe.get("jitter_p", 0.8) > 0 or recipe.get("blur_p", 0.0) > 0
    op_kw = dict(check=False, interpolation=INTERP_IDS[interpolation], clusters=may_cluster)
    # cuda_direct: the same op with the separable passes off (every pixel sums its nx x ny taps);
    # cuda_no_clusters: without the cluster launch (contrast resampled twice, blur through a global
    # workspace): the designs they replaced, timed in the same run.
    variants = [
        ("cuda", torch.float32, lambda: _op.run(*op_args, torch.float32, **op_kw)),
        ("cuda_direct", torch.float32, lambda: _op.run(*op_args, torch.float32, **op_kw)),
        ("cuda_no_clusters", torch.float32, lambda: _op.run(*op_args, torch.float32, **op_kw)),
        ("cuda_bf16", torch.bfloat16, lambda: _op.run(*op_args, torch.bfloat16, **op_kw)),
        (
            "cuda_sampling",
            torch.float32,
            lambda: fused_augment(
                images, size, generator=gen, impl="cuda", interpolation=interpolation, **recipe
            ),
        ),
    ]
    for impl, dtype, fn in variants:
        out_bytes = args.batch * 3 * size * size * torch.empty(0, dtype=dtype).element_size()
        floor_ms = (in_bytes + out_bytes) / bw * 1e3
        switch = {
            "cuda_direct": "VLKERNELS_AUGMENT_SEPARABLE",
            "cuda_no_clusters": "VLKERNELS_AUGMENT_CLUSTERS",
        }
        if impl in switch:
            os.environ[switch[impl]] = "0"
        try:
            t = timing(fn, dev, reps)
        finally:
            for var in switch.values():
                os.environ.pop(var, None)
        row(
            impl,
            args.batch,
            t,
            1,
            bandwidth_floor_ms=floor_ms,
            copy_bw_GBps=bw / 1e9,
            fraction_of_bw_floor=floor_ms / t["median_ms"],
        )
    ref = lambda: fused_augment(
        ref_images, size, params=ref_params, impl="torch", interpolation=interpolation
    )
    row("torch", n_ref, timing(ref, dev, 2), 1)
    try:
        row(
            "torchvision_v2",
            n_ref,
            timing(lambda: torchvision_v2_chain(ref_images, ref_params, size, interpolation), dev, 2),
            1,
        )
    except ImportError as exc:
        rows.append(dict(op="augment", impl="torchvision_v2", B=args.batch, D=kind, error=str(exc), **env))
    return rows


def _thread_cpu_ns() -> dict[int, int]:
    """CPU time (ns) of every thread of this process so far (Linux /proc/self/task/*/schedstat)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except OSError:
            continue
    return out


def thread_scaling(args) -> dict:
    """CPU thread scaling of the C++ op: --scaling-batch mixed-size images (--scaling-min..--scaling-max
    px per side, random crops) to --size, at 1 thread and at --scaling-threads threads, runs interleaved
    (1, T, 1, T, ...) so that a change in the machine's load hits both alike; min (and median) of
    --reps runs each. Three inputs: a PackedImages and a plain list of separate tensors (read in place by
    the op too), each call returning a fresh output, and the list written into one reused ``out`` tensor
    (no page faults of a fresh output per call). Reports the process CPU time per run and the load
    average, to judge how noisy a shared machine was, and the CPU time of each thread: on a machine
    whose cores other processes also use, the wall-clock ratio understates the scaling, while
    (CPU time of the busiest thread at 1 thread) / (that at T threads) is what the ratio would be
    with T idle cores (work inflation and load imbalance included; memory-bandwidth sharing not)."""
    from vlkernels.augment import PackedImages

    g = torch.Generator().manual_seed(0)
    lo, hi = args.scaling_min, args.scaling_max
    sizes = torch.randint(lo, hi + 1, (args.scaling_batch, 2), generator=g).tolist()
    images = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g) for h, w in sizes]
    packed = PackedImages.from_list(images)
    params = sample_augment_params(images, generator=torch.Generator().manual_seed(1))
    buf = fused_augment(images, args.size, params=params, impl="cpu")
    # Each input: (images, the out tensor to write into or None for a fresh output per call).
    inputs = {"packed": (packed, None), "list": (images, None), "list_out": (images, buf)}
    prev = torch.get_num_threads()
    counts = [1, args.scaling_threads]
    runs = {(k, t): [] for k in inputs for t in counts}
    load_before = os.getloadavg()
    try:
        for kind, (imgs, out) in inputs.items():
            for t in counts:  # warm-up (thread pool, per-thread scratch)
                torch.set_num_threads(t)
                fused_augment(imgs, args.size, params=params, impl="cpu", out=out)
            for _ in range(args.reps):
                for t in counts:
                    torch.set_num_threads(t)
                    th0 = _thread_cpu_ns()
                    c0, w0 = time.process_time(), time.perf_counter()
                    fused_augment(imgs, args.size, params=params, impl="cpu", out=out)
                    w1, c1 = time.perf_counter(), time.process_time()
                    th1 = _thread_cpu_ns()
                    busiest = max((th1[k] - th0.get(k, 0) for k in th1), default=0) / 1e9
                    runs[(kind, t)].append((w1 - w0, c1 - c0, busiest))
    finally:
        torch.set_num_threads(prev)
    load_after = os.getloadavg()
    result = dict(batch=args.scaling_batch, px=(lo, hi), size=args.size, reps=args.reps)
    result.update(load_before=load_before, load_after=load_after)
    for kind in inputs:
        for t in counts:
            walls = [w * 1e3 for w, _, _ in runs[(kind, t)]]
            cpus = [c * 1e3 for _, c, _ in runs[(kind, t)]]
            busy = [b * 1e3 for _, _, b in runs[(kind, t)]]
            result[f"{kind}_t{t}"] = dict(
                min_ms=min(walls),
                median_ms=statistics.median(walls),
                max_ms=max(walls),
                cpu_ms_median=statistics.median(cpus),
                busiest_thread_cpu_ms_median=statistics.median(busy),
            )
            print(
                f"{kind:8s} threads={t}: min {min(walls):7.1f} ms  median "
                f"{statistics.median(walls):7.1f} ms  max {max(walls):7.1f} ms  process CPU "
                f"{statistics.median(cpus):7.1f} ms, busiest thread {statistics.median(busy):7.1f} ms "
                "(medians)"
            )
        t1, tn = result[f"{kind}_t1"], result[f"{kind}_t{counts[1]}"]
        result[f"{kind}_speedup_min"] = t1["min_ms"] / tn["min_ms"]
        result[f"{kind}_speedup_median"] = t1["median_ms"] / tn["median_ms"]
        # Busiest thread against busiest thread: the process CPU time at 1 thread also counts the
        # intra-op pool's workers spinning after the previous 2-thread call.
        result[f"{kind}_speedup_cpu"] = (
            t1["busiest_thread_cpu_ms_median"] / tn["busiest_thread_cpu_ms_median"]
        )
        print(
            f"{kind:8s} speedup {counts[1]} vs 1 thread: {result[f'{kind}_speedup_min']:.2f}x (min wall), "
            f"{result[f'{kind}_speedup_median']:.2f}x (median wall), "
            f"{result[f'{kind}_speedup_cpu']:.2f}x (busiest thread's CPU, 1 thread / 2 threads)"
        )
    print(f"load average before {load_before}, after {load_after} ({os.cpu_count()} CPUs)")
    return result


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
# The strong-view recipe (SimCLR / CLIP improved-baselines): every chain below runs it, except open_clip's
# default training transform (crop only), which is labelled as such.
STRONG = dict(scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2)
STRONG.update(blur_p=0.5, blur_sigma=(0.1, 2.0), hflip_p=0.5)
# torchvision's GaussianBlur takes a fixed kernel size; the op's is 2 * ceil(3 sigma) + 1 <= 13 for sigma
# <= 2. 13 is given to torchvision (the op's largest; SimCLR's 23 would only make torchvision slower).
TV_BLUR_KERNEL = 13


def photo_inputs(n: int, seed: int = 0) -> list[torch.Tensor]:
    """n real photographs at mixed sizes: random windows (60-100% of each side) of scikit-image's bundled
    photographs (astronaut 512x512, coffee 400x600, chelsea 300x451, rocket 427x640), uint8 [H, W, 3]."""
    import skimage.data

    g = torch.Generator().manual_seed(seed)
    photos = [torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, name)())) for name in PHOTOS]
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        hh, ww = (int(d * (0.6 + 0.4 * torch.rand(1, generator=g).item())) for d in (h, w))
        top = int(torch.randint(0, h - hh + 1, (1,), generator=g))
        left = int(torch.randint(0, w - ww + 1, (1,), generator=g))
        out.append(img[top : top + hh, left : left + ww].contiguous())
    return out


def torchvision_chains(size: int) -> dict:
    """torchvision's real transforms (random parameters drawn by torchvision itself, per sample)."""
    # The shim first: CPU torch with a CUDA torchvision wheel (test-only helper, never in the package).
    import tests._torchvision_shim  # noqa: F401  isort: skip
    import torchvision.transforms as T1  # isort: skip
    import torchvision.transforms.v2 as T  # isort: skip
    from open_clip.transform import image_transform  # isort: skip

    def strong(module, first=(), last=()):
        ops = [
            module.RandomResizedCrop(
                size, scale=(0.08, 1.0), interpolation=module.InterpolationMode.BICUBIC, antialias=True
            ),
            module.RandomApply([module.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            module.RandomGrayscale(p=0.2),
            module.RandomApply([module.GaussianBlur(TV_BLUR_KERNEL, sigma=(0.1, 2.0))], p=0.5),
            module.RandomHorizontalFlip(),
        ]
        return module.Compose([*first, *ops, *last])

    normalize = T.Normalize(CLIP_MEAN, CLIP_STD)
    return {
        "tv2_uint8": strong(T, last=[T.ToDtype(torch.float32, scale=True), normalize]),
        "tv2_float": strong(T, first=[T.ToDtype(torch.float32, scale=True)], last=[normalize]),
        "pil_strong": strong(T1, last=[T1.ToTensor(), T1.Normalize(CLIP_MEAN, CLIP_STD)]),
        "pil_open_clip_default": image_transform(size, is_train=True),
    }


def pil_build() -> str:
    """Which PIL the PIL chains run on: pillow-simd (a SIMD fork that installs as PIL) or plain Pillow."""
    from importlib import metadata

    import PIL

    try:
        if metadata.version("pillow-simd") == PIL.__version__:
            return f"pillow-simd {PIL.__version__}"
    except metadata.PackageNotFoundError:
        pass
    return f"plain Pillow {PIL.__version__}; pillow-simd not installed"


CHAIN_LABELS = {
    "ours": "ours: C++ op (impl='cpu'), 1 thread, bicubic + jitter + grayscale + blur + flip, float32 out",
    "tv2_uint8": (
        "torchvision v2 per-sample uint8 chain (RandomResizedCrop(scale=(0.08, 1), BICUBIC, antialias) + "
        f"ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8 + RandomGrayscale(0.2) + GaussianBlur({TV_BLUR_KERNEL}, "
        "(0.1, 2)) p=0.5 + RandomHorizontalFlip + ToDtype/Normalize) on uint8 CHW tensors"
    ),
    "tv2_float": "torchvision v2 per-sample float chain (ToDtype first, then the same transforms)",
    "pil_strong": (
        "PIL chain: torchvision.transforms (v1, PIL backend) with the same strong-view recipe, then "
        "ToTensor/Normalize ({pil})"
    ),
    "pil_open_clip_default": (
        "PIL: open_clip's default training transform, image_transform(224, is_train=True): "
        "RandomResizedCrop(scale=(0.9, 1.0), BICUBIC) + ToTensor/Normalize only (no jitter / grayscale / "
        "blur / flip; {pil})"
    ),
}


def vs_torchvision(args) -> list[dict]:
    """Images per second (per core: torch and OpenMP at 1 thread) of our op and of torchvision's real
    chains on --batch real photographs at mixed sizes, to --size. Every chain gets the same decoded
    images (uint8 tensors; PIL images for the PIL chains, converted before timing). The runs are
    interleaved (ours, tv2_uint8, tv2_float, pil_strong, pil_open_clip_default, repeated --reps times)
    so that the load of a shared machine hits all alike; reported: median wall time and median process
    CPU time per run, images/s from each, and ratios of ours to each baseline (CPU-time based: on a
    shared machine wall time also counts the time other processes hold the core)."""
    from PIL import Image

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    images = photo_inputs(args.batch)
    pil_images = [Image.fromarray(t.numpy()) for t in images]
    chw = [t.permute(2, 0, 1) for t in images]
    chains = torchvision_chains(args.size)
    gen = torch.Generator().manual_seed(0)
    strong = dict(STRONG)

    def ours():
        return fused_augment(images, args.size, generator=gen, impl="cpu", interpolation="bicubic", **strong)

    runs = {"ours": ours}
    for name, chain in chains.items():
        src = pil_images if name.startswith("pil") else chw
        runs[name] = lambda chain=chain, src=src: torch.stack([chain(x) for x in src])
    torch.manual_seed(0)
    times = {name: [] for name in runs}
    load_before = os.getloadavg()
    try:
        for name, fn in runs.items():  # warm-up
            out = fn()
            assert out.shape == (args.batch, 3, args.size, args.size) and out.dtype == torch.float32, name
        for _ in range(args.reps):
            for name, fn in runs.items():
                c0, w0 = time.process_time(), time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - w0, time.process_time() - c0))
    finally:
        torch.set_num_threads(prev)
    load_after = os.getloadavg()
    env = environment("cpu")
    sizes = [tuple(t.shape[:2]) for t in images]
    rows = []
    for name in runs:
        wall = statistics.median(w for w, _ in times[name])
        cpu = statistics.median(c for _, c in times[name])
        rows.append(
            dict(
                op="augment_vs_torchvision",
                impl=name,
                label=CHAIN_LABELS[name].format(pil=pil_build()),
                images=args.batch,
                size=args.size,
                threads=1,
                reps=args.reps,
                median_wall_ms=wall * 1e3,
                median_cpu_ms=cpu * 1e3,
                images_per_s=args.batch / wall,
                images_per_cpu_s=args.batch / cpu,
                input_sizes=f"{len(sizes)} windows of {', '.join(PHOTOS)}: H {min(h for h, _ in sizes)}-"
                f"{max(h for h, _ in sizes)}, W {min(w for _, w in sizes)}-{max(w for _, w in sizes)}",
                load_before=load_before,
                load_after=load_after,
                **env,
            )
        )
    base = rows[0]
    for r in rows:
        r["ours_speedup_cpu_time"] = base["images_per_cpu_s"] / r["images_per_cpu_s"]
        r["ours_speedup_wall"] = base["images_per_s"] / r["images_per_s"]
    print_table(
        rows,
        ["impl", "images", "median_wall_ms", "median_cpu_ms", "images_per_s", "images_per_cpu_s"]
        + ["ours_speedup_cpu_time", "ours_speedup_wall"],
    )
    for r in rows:
        print(f"{r['impl']}: {r['label']}")
    print(f"PIL chains on {pil_build()}")
    print(f"load average before {load_before}, after {load_after} ({os.cpu_count()} CPUs)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ref-batch", type=int, default=32, help="images for the slow baselines")
    ap.add_argument(
        "--threads", type=int, nargs="*", default=None, help="CPU thread counts (default: 1, all)"
    )
    ap.add_argument("--inputs", nargs="*", default=["256x256", "mixed"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--scaling", action="store_true", help="only the CPU thread-scaling measurement")
    ap.add_argument("--scaling-batch", type=int, default=64)
    ap.add_argument("--scaling-min", type=int, default=200)
    ap.add_argument("--scaling-max", type=int, default=600)
    ap.add_argument("--scaling-threads", type=int, default=2)
    ap.add_argument(
        "--vs-torchvision",
        action="store_true",
        help="only the per-core comparison with torchvision's real chains on photographs (--batch images)",
    )
    args = ap.parse_args()
    if args.vs_torchvision:
        rows = vs_torchvision(args)
        if args.out:
            write_json(rows, args.out)
            print(f"wrote {os.path.relpath(args.out)} ({time.strftime('%H:%M:%S')})")
        return
    if args.scaling:
        result = thread_scaling(args)
        if args.out:
            write_json([dict(op="augment_thread_scaling", **result, **environment("cpu"))], args.out)
        return
    env = environment(args.device)
    thread_counts = args.threads or sorted({1, torch.get_num_threads()})
    if not args.device.startswith("cpu"):
        thread_counts = [1]
    # All single-thread runs first: idle OpenMP workers of a multi-thread run keep spinning for a while
    # and would be counted in the process CPU time of the next runs.
    rows = [
        r for threads in thread_counts for kind in args.inputs for r in bench_kind(kind, args, env, threads)
    ]
    by = {(r["impl"], r["D"], r.get("threads")): r for r in rows if "error" not in r}
    for r in rows:
        if "error" in r:
            continue
        pil = by.get(("pil", r["D"], 1))
        if pil is not None:
            r["speedup_per_core_vs_pil"] = r["images_per_s_per_thread"] / pil["images_per_s"]
            if "images_per_cpu_s" in r:
                r["speedup_cpu_time_vs_pil"] = r["images_per_cpu_s"] / pil["images_per_cpu_s"]
        base = by.get(("torch", r["D"], r.get("threads")))
        if base is not None:
            r["speedup_vs_torch"] = r["images_per_s"] / base["images_per_s"]
        tv = by.get(("torchvision_v2", r["D"], 1))
        if tv is not None:
            r["speedup_vs_torchvision_v2"] = r["images_per_s"] / tv["images_per_s"]
    columns = ["impl", "D", "threads", "images", "median_ms", "images_per_s", "images_per_cpu_s"]
    columns += ["speedup_per_core_vs_pil", "speedup_cpu_time_vs_pil"]
    print_table(rows, columns + ["speedup_vs_torch", "speedup_vs_torchvision_v2", "fraction_of_bw_floor"])
    if args.out:
        write_json(rows, args.out)
        print(f"wrote {os.path.relpath(args.out)} ({time.strftime('%H:%M:%S')})")


if __name__ == "__main__":
    main()
