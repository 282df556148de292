"""Issue 12's goal table: Spruce's CPU kernels against dense PyTorch, per layer, both instruction sets side by side.

Cases (90% unstructured magnitude pruning of a random normal weight unless ``--sparsity``):
* BERT-base Linears through ``kernel.linear`` (x ``[N, K]`` -> y ``[N, M]``, the layout BERT runs) and through
  ``kernel.matmul`` (``[K, N]`` -> ``[M, N]``) at N = 1 ... 4096, against ``F.linear``;
* VGG-16 fc6/fc7 at N = 1 and fc7 at N = 32 through ``linear``;
* every VGG-16 convolution but the first at batch 1, 224x224, through ``spruce_csr_direct.conv2d`` against
  ``F.conv2d`` (shapes taken from torchvision's VGG-16 by forward hooks, not typed in).
Each case is verified against dense before timing; the calls of one case are interleaved round-robin (dense,
then each ISA) so machine drift hits all alike, and medians are reported. Writes ``goals.csv`` and
``goals.md`` into ``--out``.

    python benchmarks/kernel_goals.py --threads 2 --out docs/measured/kernels-2026-12-04
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spruce import io  # noqa: E402
from spruce.kernels import get  # noqa: E402
from spruce.kernels.cpu import build  # noqa: E402

BERT = {"attn": (768, 768), "ffn_in": (3072, 768), "ffn_out": (768, 3072)}
BERT_N = (1, 8, 32, 128, 512, 4096)


def pruned(m: int, k: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    w = torch.randn(m, k, generator=gen)
    thresh = w.abs().flatten().kthvalue(max(1, int(sparsity * w.numel()))).values
    w[w.abs() <= thresh] = 0.0
    return w


def vgg_convs() -> list[tuple[str, torch.nn.Conv2d, tuple[int, ...]]]:
    """(name, conv, input shape) of torchvision VGG-16's convolutions at batch 1, 224x224."""
    import torchvision
    model = torchvision.models.vgg16().eval()
    found = []
    names = {m: n for n, m in model.features.named_modules()}
    hooks = [m.register_forward_pre_hook(lambda mod, a: found.append((mod, tuple(a[0].shape))))
             for m in model.features if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model.features(torch.zeros(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    block, idx, out = 1, 0, []
    for mod, shape in found:
        if out and shape[2] != out[-1][2][2]:
            block, idx = block + 1, 0
        idx += 1
        out.append((f"conv{block}_{idx}", mod, shape))
    del names
    return out


def timed(fns: dict[str, callable], repeats: int, budget_s: float) -> dict[str, float]:
    """Median ms per function, calls interleaved round-robin after two warm-ups each."""
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    t_end = time.perf_counter() + budget_s
    for r in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
        if r >= 4 and time.perf_counter() > t_end:
            break
    return {k: statistics.median(v) for k, v in times.items()}


def with_isa(isa: str, fn):
    def call():
        os.environ[build.ENV] = isa
        return fn()
    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (default: all cores)")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timing per case, at most")
    ap.add_argument("--only", default="", help="comma list of case groups: bert, fc, conv (default all)")
    ap.add_argument("--out", type=Path, default=Path("results/kernel_goals"))
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    isas = build.cpu_isas()
    if not isas:
        raise SystemExit("error: this CPU has neither AVX2 nor AVX-512: nothing of ours to time")
    groups = set(a.only.split(",")) if a.only else {"bert", "fc", "conv"}
    gen = torch.Generator().manual_seed(0)
    rows = []
    csr, direct = get("spruce_csr"), get("spruce_csr_direct")

    def record(case, layout, m, k, n, fns, check):
        ms = timed(fns, a.repeats, a.budget)
        row = {"case": case, "layout": layout, "M": m, "K": k, "N": n, "dense_ms": round(ms["dense"], 4),
               "max_rel_err": f"{check:.1e}", "threads": torch.get_num_threads()}
        for isa in isas:
            row[f"{isa}_ms"] = round(ms[isa], 4)
            row[f"{isa}_x"] = round(ms["dense"] / ms[isa], 2)
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    def rel_err(y, ref):
        return float((y.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))

    lin_cases = []
    if "bert" in groups:
        lin_cases += [(f"bert_{n_}", m, k, n) for n_, (m, k) in BERT.items() for n in BERT_N]
    if "fc" in groups:
        lin_cases += [("vgg_fc6", 4096, 25088, 1), ("vgg_fc7", 4096, 4096, 1), ("vgg_fc7", 4096, 4096, 32)]
    for case, m, k, n in lin_cases:
        w = pruned(m, k, a.sparsity, gen)
        b = torch.randn(m, generator=gen)
        packed = csr.prepare(w)
        x = torch.randn(n, k, generator=gen)
        ref = F.linear(x, w, b)
        err = max(rel_err(with_isa(i, lambda: csr.linear(packed, x, b))(), ref) for i in isas)
        fns = {"dense": lambda: F.linear(x, w, b)}
        fns.update({i: with_isa(i, lambda: csr.linear(packed, x, b)) for i in isas})
        record(case, "linear", m, k, n, fns, err)
        if case.startswith("bert"):
            xt = x.t().contiguous()
            fns = {"dense": lambda: torch.addmm(b[:, None], w, xt)}
            fns.update({i: with_isa(i, lambda: csr.matmul(packed, xt, b)) for i in isas})
            record(case, "matmul", m, k, n, fns, err)
    if "conv" in groups:
        for name, conv, shape in vgg_convs():
            if name == "conv1_1":
                continue
            co = conv.out_channels
            w4 = pruned(co, conv.weight[0].numel(), a.sparsity, gen).reshape(conv.weight.shape)
            b = torch.randn(co, generator=gen)
            x = torch.randn(*shape, generator=gen)
            packed = direct.prepare(w4.reshape(co, -1))
            args = (conv.kernel_size, conv.stride, conv.padding, conv.dilation)
            ref = F.conv2d(x, w4, b, conv.stride, conv.padding, conv.dilation)
            err = max(rel_err(with_isa(i, lambda: direct.conv2d(packed, x, *args, b))(), ref) for i in isas)
            fns = {"dense": lambda: F.conv2d(x, w4, b, conv.stride, conv.padding, conv.dilation)}
            fns.update({i: with_isa(i, lambda: direct.conv2d(packed, x, *args, b)) for i in isas})
            record(name, "conv2d", co, w4[0].numel(), shape[2] * shape[3], fns, err)
    io.write_csv(a.out / "goals.csv", rows, list(rows[0]))
    cols = [("case", "case", ""), ("layout", "layout", ""), ("M x K", "mk", ""), ("N", "N", "")]
    cols += [(f"{i} x dense", f"{i}_x", ".2f") for i in isas] + [("dense ms", "dense_ms", ".3f")]
    cols += [(f"{i} ms", f"{i}_ms", ".3f") for i in isas]
    table = io.markdown_table([dict(r, mk=f"{r['M']}x{r['K']}") for r in rows], cols)
    cmd = "python benchmarks/kernel_goals.py " + " ".join(sys.argv[1:])
    text = (f"# CPU kernel goals ({a.sparsity:.0%} unstructured, fp32, threads={torch.get_num_threads()})\n\n"
            f"Command: `{cmd}`  \nDate: {time.strftime('%Y-%m-%d %H:%M')}  \nx dense = dense median / ours "
            f"(same run, calls interleaved). Conv N = output pixels.\n\n" + table + "\n")
    io.atomic_write(a.out / "goals.md", text)
    print(text)


if __name__ == "__main__":
    main()
