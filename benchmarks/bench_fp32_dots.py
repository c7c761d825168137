"""fp32 inputs: IEEE dots on CUDA cores against split-precision tensor-core dots, error and time.

Under torch's default float32 matmul precision ("highest") the kernels run fp32 dots in IEEE fp32 on CUDA
cores. ``VLKERNELS_FP32_DOTS=tf32x3`` (three TF32 products of the operands' high and low parts) or
``bf16x6`` (six bf16 products of three parts) moves them onto tensor cores (experimental). The rule for
adopting one: the loss and every gradient within 2x torch's own fp32 error against a float64 reference.

    python -m benchmarks.bench_fp32_dots --device cuda --out OUT/fp32_dots.json   # measured (GPU)
    python -m benchmarks.bench_fp32_dots --emulate                                # modelled on CPU

``--device cuda``: the Triton loss (forward + backward) in each mode and torch's naive fp32 loss, each
against the naive loss in float64 on the same inputs (max error over the loss, dI, dT and the scale's
gradient, relative to each output's largest magnitude), and their times (``triton.testing.do_bench``,
median), beside the cost model's (MODELLED) time for each mode.

``--emulate``: no GPU. The same loss and gradients in float64 from S and from the two backward products
computed with split operands (each part's products exact in fp32, as on tensor cores; fp32 accumulation
in the order of torch's CPU matmul, a model of the tensor cores' accumulation, which rounds differently),
against torch's fp32. What it cannot show is the GPU's own accumulation: only the ``--device cuda`` run
decides. Writes benchmarks/results/model/fp32_dots_emulated.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from vlkernels.reference import contrastive_loss_naive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("ieee", "tf32x3", "bf16x6")
# (B, D, logit scale, correlation of the paired features): a temperature at open_clip's clamp (100), a
# CLIP-like one (14.3), a D that is not a power of two, a prime B
EMULATED_CASES = [
    (1024, 1024, 100.0, 0.0),
    (1024, 1024, 100.0, 0.1),
    (1024, 100, 100.0, 0.3),
    (2048, 256, 14.3, 1.0),
    (997, 768, 50.0, 0.2),
    (1024, 512, 30.0, 0.5),
]
GPU_CASES = [(4099, 1024, 100.0, 0.1), (8192, 100, 14.3, 0.5)]
TIME_CASE = (16384, 1024)


def _features(batch, dim, corr, device="cpu", seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(batch, dim, generator=gen, device=device), dim=1)
    noise = torch.nn.functional.normalize(torch.randn(batch, dim, generator=gen, device=device), dim=1)
    txt = torch.nn.functional.normalize(corr * img + noise, dim=1)
    return img, txt


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


def _errors(names, err, base) -> dict:
    """The errors by output name, and each over torch fp32's ("x_torch")."""
    ratios = [e / max(b, 1e-30) for e, b in zip(err, base, strict=True)]
    return dict(err=dict(zip(names, err, strict=True)), x_torch=dict(zip(names, ratios, strict=True)))


# ---------------------------------------------------------------------------------------------------
# CPU emulation


def _round_mantissa(x: torch.Tensor, bits: int) -> torch.Tensor:
    """fp32 x rounded to ``bits`` explicit mantissa bits, to nearest with ties away (cvt.rna.tf32)."""
    drop = 23 - bits
    b = x.view(torch.int32)
    b = (b + (1 << (drop - 1))) & ~((1 << drop) - 1)
    return b.view(torch.float32)


def _parts(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The operand's parts, largest first: two TF32 parts for "tf32x3", three bf16 parts for "bf16x6"."""
    out, rest = [], x
    for _ in range(2 if mode == "tf32x3" else 3):
        part = _round_mantissa(rest, 10) if mode == "tf32x3" else rest.to(torch.bfloat16).float()
        out.append(part)
        rest = rest - part
    return out


def emulated_mm(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    """a @ b of fp32 operands as ``mode`` computes it: the parts' products (exact in fp32) summed smallest
    first, the largest product last (Triton's order), each in fp32."""
    if mode == "ieee":
        return a @ b
    if mode == "tf32":  # one TF32 product: what torch's "high" precision allows, for comparison
        return _round_mantissa(a, 10) @ _round_mantissa(b, 10)
    pa, pb = _parts(a, mode), _parts(b, mode)
    if mode == "tf32x3":
        pairs = [(1, 0), (0, 1), (0, 0)]
    else:
        pairs = [(2, 0), (0, 2), (1, 1), (1, 0), (0, 1), (0, 0)]
    out = torch.zeros(a.shape[0], b.shape[1])
    for i, j in pairs:
        out = out + pa[i] @ pb[j]
    return out


def _emulated_loss(img, txt, scale, mode):
    """Loss, dI, dT of the symmetric CLIP loss with S and the backward's two products by ``mode`` (fp32) or,
    for float64 operands, exact; the elementwise algebra in the operands' dtype."""
    dtype = img.dtype
    mm = (lambda a, b: a @ b) if dtype == torch.float64 else (lambda a, b: emulated_mm(a, b, mode))
    batch = img.shape[0]
    s = scale * mm(img, txt.T.contiguous())
    r, c = torch.logsumexp(s, 1), torch.logsumexp(s, 0)
    loss = 0.5 * (r.mean() + c.mean()) - s.diagonal().mean()
    g = (torch.exp(s - r[:, None]) + torch.exp(s - c[None, :])) * (0.5 / batch)
    g = (g - torch.eye(batch, dtype=dtype) / batch) * scale
    return loss, mm(g, txt), mm(g.T.contiguous(), img)


def emulate(cases=EMULATED_CASES) -> list[dict]:
    rows = []
    for batch, dim, scale, corr in cases:
        img, txt = _features(batch, dim, corr, seed=batch + dim)
        ref = _emulated_loss(img.double(), txt.double(), scale, None)
        errs = {}
        for mode in ("torch fp32", "tf32") + MODES[1:]:
            got = _emulated_loss(img, txt, scale, "ieee" if mode == "torch fp32" else mode)
            errs[mode] = [_rel_err(g, r) for g, r in zip(got, ref, strict=True)]
        base = errs["torch fp32"]
        for mode, e in errs.items():
            rows.append(
                dict(
                    B=batch,
                    D=dim,
                    scale=scale,
                    corr=corr,
                    loss=ref[0].item(),
                    mode=mode,
                    **_errors(("loss", "dI", "dT"), e, base),
                )
            )
    return rows


def emulated_report(rows: list[dict]) -> str:
    lines = [
        "# fp32 inputs: split-precision tensor-core dots, EMULATED on CPU (modelled, not measured)",
        "",
        "Generated by `python -m benchmarks.bench_fp32_dots --emulate` (benchmarks/bench_fp32_dots.py). The "
        "symmetric CLIP loss and its feature gradients from S = s I T^T and the backward's products G T and "
        "G^T I, each computed with the operands split into parts (tf32x3: two TF32 parts, three products; "
        "bf16x6: three bf16 parts, six products; tf32, for comparison: one TF32 product) whose products "
        "are exact in fp32, accumulated in fp32 in "
        "the order of torch's CPU matmul (a model: tensor cores accumulate and round in their own way), "
        "against torch's fp32 (IEEE) computation; both judged against float64. Error: max |x - x64| / "
        "max |x64| per output; x torch: that error over torch fp32's (the adoption rule: at most 2x in "
        "every output). Normalised features, the pairs correlated by `corr`. The loss's errors are a few "
        "fp32 ulps of its value, so their ratios swing; the gradients' errors are the dots'.",
        "",
        "| B | D | scale | corr | loss | mode | loss err | dI err | dT err | loss x torch | dI x torch | "
        "dT x torch |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        e, x = r["err"], r["x_torch"]
        lines.append(
            f"| {r['B']} | {r['D']} | {r['scale']:g} | {r['corr']:g} | {r['loss']:.3f} | {r['mode']} | "
            f"{e['loss']:.1e} | {e['dI']:.1e} | {e['dT']:.1e} | {x['loss']:.2f} | {x['dI']:.2f} | "
            f"{x['dT']:.2f} |"
        )
    worst = {}
    for r in rows:
        if r["mode"] != "torch fp32":
            w = worst.setdefault(r["mode"], [0.0, 0.0])
            w[0] = max(w[0], r["x_torch"]["dI"], r["x_torch"]["dT"])
            w[1] = max(w[1], r["x_torch"]["loss"])
    lines += [
        "",
        "Worst ratio to torch fp32's error: "
        + "; ".join(f"{m}: gradients {w[0]:.2f}x, loss {w[1]:.2f}x" for m, w in worst.items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# GPU measurement


def _loss_and_grads(fn, img, txt, scale):
    leaves = [x.detach().clone().requires_grad_() for x in (img, txt, scale)]
    loss = fn(*leaves)
    loss.backward(torch.tensor(1.3, device=loss.device, dtype=loss.dtype))
    return [loss.detach()] + [x.grad for x in leaves]


def measure(device: str = "cuda") -> list[dict]:
    """The GPU measurement (module docstring); VLKERNELS_FP32_DOTS is restored afterwards."""
    saved = os.environ.get("VLKERNELS_FP32_DOTS")
    try:
        return _measure(device)
    finally:
        if saved is None:
            os.environ.pop("VLKERNELS_FP32_DOTS", None)
        else:
            os.environ["VLKERNELS_FP32_DOTS"] = saved


def _measure(device: str) -> list[dict]:
    import triton.testing

    from benchmarks import cost_model
    from vlkernels import contrastive_loss

    assert torch.get_float32_matmul_precision() == "highest", "run under torch's default precision"
    rows = []
    for batch, dim, scale, corr in GPU_CASES:
        img, txt = _features(batch, dim, corr, device=device, seed=batch + dim)
        s = torch.tensor(scale, device=device)
        ref = _loss_and_grads(contrastive_loss_naive, img.double(), txt.double(), s.double())
        base = _loss_and_grads(contrastive_loss_naive, img, txt, s)
        base_err = [_rel_err(g, r) for g, r in zip(base, ref, strict=True)]
        for mode in ("torch fp32",) + MODES:
            if mode == "torch fp32":
                err = base_err
            else:
                os.environ["VLKERNELS_FP32_DOTS"] = mode
                got = _loss_and_grads(lambda i, t, c: contrastive_loss(i, t, c, impl="triton"), img, txt, s)
                err = [_rel_err(g, r) for g, r in zip(got, ref, strict=True)]
            rows.append(
                dict(
                    kind="error",
                    B=batch,
                    D=dim,
                    scale=scale,
                    corr=corr,
                    mode=mode,
                    **_errors(("loss", "dI", "dT", "dscale"), err, base_err),
                )
            )
    batch, dim = TIME_CASE
    img, txt = _features(batch, dim, 0.1, device=device)
    scale = torch.tensor(14.3, device=device, requires_grad=True)
    leaves = [img.requires_grad_(), txt.requires_grad_(), scale]
    for mode in ("torch fp32",) + MODES:
        impl = "naive" if mode == "torch fp32" else "triton"
        if mode != "torch fp32":
            os.environ["VLKERNELS_FP32_DOTS"] = mode

        def step(impl=impl):
            for x in leaves:
                x.grad = None
            contrastive_loss(*leaves, impl=impl).backward()

        ms = triton.testing.do_bench(step, warmup=3, rep=50)
        label = {"ieee": "fp32", "torch fp32": None}.get(mode, mode)
        model = cost_model.predict("contrastive", batch, dim, label)["time_s"] if label else None
        rows.append(
            dict(
                kind="time",
                B=batch,
                D=dim,
                mode=mode,
                median_ms=ms,
                modelled_h100_ms=None if model is None else [t * 1e3 for t in model],
            )
        )
    return rows


def measured_report(rows: list[dict], env: dict | None = None) -> str:
    env = env or {}
    lines = [
        f"fp32 features on {env.get('device', '?')} (torch {env.get('torch', '?')}, triton "
        f"{env.get('triton', '?')}): the Triton loss per VLKERNELS_FP32_DOTS mode and torch's fp32, errors "
        "against float64 (max |x - x64| / max |x64|; worst x torch fp32 / x ieee: the largest ratio over "
        "loss, dI, dT, dscale to torch's fp32 error / to the Triton IEEE mode's. The adoption rule is at "
        "most 2x torch's plus the floor tests/_ref.py allows every mode, 8 fp32 ulps of each quantity's "
        "scale: where the ieee row exceeds 2x, that floor is what it uses, and a split mode near the ieee "
        "row meets the rule as well), then forward + backward times (do_bench median) beside the cost "
        "model's (MODELLED).",
        "",
        "| case | mode | loss err | dI err | dT err | dscale err | worst x torch fp32 | worst x ieee |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    ieee = {(r["B"], r["D"]): r["err"] for r in rows if r["kind"] == "error" and r["mode"] == "ieee"}
    for r in rows:
        if r["kind"] == "error":
            e, base = r["err"], ieee.get((r["B"], r["D"]))
            x_ieee = "-" if base is None else f"{max(e[k] / max(base[k], 1e-300) for k in e):.2f}"
            lines.append(
                f"| B={r['B']} D={r['D']} s={r['scale']:g} | {r['mode']} | {e['loss']:.1e} | {e['dI']:.1e} | "
                f"{e['dT']:.1e} | {e['dscale']:.1e} | {max(r['x_torch'].values()):.2f} | {x_ieee} |"
            )
    lines += ["", "| B x D, fwd+bwd | mode | measured ms | modelled H100 ms |", "|---|---|---:|---:|"]
    for r in rows:
        if r["kind"] == "time":
            m = r["modelled_h100_ms"]
            model = "-" if m is None else f"{m[0]:.1f}-{m[1]:.1f}"
            lines.append(f"| {r['B']} x {r['D']} | {r['mode']} | {r['median_ms']:.2f} | {model} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--emulate", action="store_true", help="the CPU emulation (modelled), no GPU")
    p.add_argument("--out", default=None, help="JSON rows (and a .md beside them)")
    args = p.parse_args(argv)
    if args.emulate:
        rows = emulate()
        text = emulated_report(rows)
        out = args.out or os.path.join(ROOT, "benchmarks", "results", "model", "fp32_dots_emulated.md")
        if out.endswith(".json"):
            with open(out, "w") as f:
                json.dump(rows, f, indent=1)
            out = out[: -len(".json")] + ".md"
    else:
        if not (args.device.startswith("cuda") and torch.cuda.is_available()):
            print("bench_fp32_dots: the measurement needs a CUDA GPU (use --emulate on CPU)", file=sys.stderr)
            return 2
        from benchmarks import harness

        rows = measure(args.device)
        env = harness.environment(args.device)
        rows.append(dict(kind="environment", **env))
        text = measured_report(rows, env)
        out = args.out
        if out:
            with open(out, "w") as f:
                json.dump(rows, f, indent=1)
            out = out[: -len(".json")] + ".md" if out.endswith(".json") else out + ".md"
    print(text)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
