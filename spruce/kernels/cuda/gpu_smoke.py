"""GPU smoke run: check every CUDA kernel against dense, then time it next to the dense baselines.

Usage (on a machine with a CUDA GPU): ``python -m spruce.kernels.cuda.gpu_smoke [--out DIR] [--sparsity 0.9]``.
Writes ``gpu_smoke.csv`` and ``gpu_smoke.md`` (median ms over CUDA-event-timed repetitions, after warm-up).
Exits non-zero with ``error: ...`` when no GPU is present or a kernel disagrees with dense.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from spruce.io import atomic_write, write_csv
from spruce.kernels import kernels
from spruce.study.shapes import gemm

#: (model, study layer) pairs; (M, K, N) at batch 1 are read off the real models (spruce.study.shapes)
CASES = (("bert_base", "ffn_in", "bert_ffn1"), ("bert_base", "ffn_out", "bert_ffn2"), ("vgg16", "fc6", "vgg_fc6"),
         ("vgg16", "fc7", "vgg_fc7"))


def shapes() -> dict[str, tuple[int, int, int]]:
    """``{label: (M, K, N)}``, the label carrying the shape (``bert_ffn1_3072x768_n128``)."""
    out = {}
    for model, layer, stem in CASES:
        m, k, n = gemm(model, layer)
        out[f"{stem}_{m}x{k}_n{n}"] = (m, k, n)
    return out


def median_ms(fn, warmup: int = 5, reps: int = 30) -> float:
    """Median milliseconds of ``fn()`` timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run(sparsity: float) -> list[dict]:
    """One row per (shape, kernel): name, shape, median ms, speed-up over dense fp32, max abs error."""
    rows = []
    for label, (m, k, n) in tqdm(shapes().items(), desc="shapes"):
        g = torch.Generator(device="cuda").manual_seed(0)
        w = torch.randn(m, k, device="cuda", generator=g)
        w[torch.rand(m, k, device="cuda", generator=g) < sparsity] = 0
        x = torch.randn(k, n, device="cuda", generator=g)
        ref = (w.double() @ x.double()).float()
        dense_ms = median_ms(lambda: w @ x)
        wb, xb = w.bfloat16(), x.bfloat16()
        rows.append(dict(shape=label, kernel="torch_dense_fp32", ms=dense_ms, speedup=1.0, max_err=0.0))
        rows.append(dict(shape=label, kernel="torch_dense_bf16", ms=median_ms(lambda: wb @ xb),
                         speedup=None, max_err=None))
        for kern in kernels(device="cuda"):
            packed = kern.prepare(w)
            y = kern.matmul(packed, x)
            err = (y - ref).abs().max().item()
            if err > 1e-3 * (1 + ref.abs().max().item()):
                raise RuntimeError(f"{kern.name} on {label}: max abs error {err:.3g} vs dense")
            ms = median_ms(lambda: kern.matmul(packed, x))
            rows.append(dict(shape=label, kernel=kern.name, ms=ms, speedup=dense_ms / ms, max_err=err))
    for r in rows:
        if r["speedup"] is None:
            dense = next(d for d in rows if d["shape"] == r["shape"] and d["kernel"] == "torch_dense_fp32")
            r["speedup"] = dense["ms"] / r["ms"]
    return rows


def write(rows: list[dict], out: Path, sparsity: float) -> None:
    """CSV and a markdown table, each written atomically (``spruce.io``)."""
    write_csv(out / "gpu_smoke.csv", rows, ["shape", "kernel", "ms", "speedup", "max_err"])
    lines = [f"GPU: {torch.cuda.get_device_name()} | sparsity {sparsity} | median ms (CUDA events)", "",
             "| shape | kernel | ms | x dense fp32 |", "|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['kernel']} | {r['ms']:.4f} | {r['speedup']:.2f} |" for r in rows]
    atomic_write(out / "gpu_smoke.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/gpu_smoke"))
    ap.add_argument("--sparsity", type=float, default=0.9)
    args = ap.parse_args(argv)
    if not 0.0 <= args.sparsity < 1.0:
        print(f"error: --sparsity {args.sparsity} must be in [0, 1)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: no CUDA GPU visible to PyTorch; run this on a GPU machine", file=sys.stderr)
        return 2
    rows = run(args.sparsity)
    write(rows, args.out, args.sparsity)
    print((args.out / "gpu_smoke.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
