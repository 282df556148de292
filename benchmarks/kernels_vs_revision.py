"""Today's spruce_cpu kernels against the single-file extension of an earlier git revision, side by side in one
process (the 'no regression' check of a kernel rewrite): nn.Linear layout on the BERT shapes, SpMV on VGG fc6/fc7,
direct convolution on VGG-16's convolutions, 90% magnitude pruning, threads as given, calls interleaved. Both
sides call their C++ binding directly (the Python wrappers' validation is the same for both and left out).

    python benchmarks/kernels_vs_revision.py --rev b34e829 --threads 2 --out docs/measured/kernels-2026-12-04
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_goals import pruned, timed, vgg_convs  # noqa: E402
from spruce import io  # noqa: E402
from spruce.kernels import get  # noqa: E402
from spruce.kernels.cpu import build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def old_extension(rev: str, workdir: Path):
    src = subprocess.run(["git", "show", f"{rev}:spruce/kernels/cpu/spruce_cpu.cpp"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    (workdir / "spruce_cpu_old.cpp").write_text(src)
    from torch.utils.cpp_extension import load
    return load(name="spruce_cpu_old", sources=[str(workdir / "spruce_cpu_old.cpp")],
                extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"], extra_ldflags=["-fopenmp"],
                build_directory=str(workdir))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", required=True, help="git revision holding spruce/kernels/cpu/spruce_cpu.cpp")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--budget", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=Path("results/kernels_vs_revision"))
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    T = torch.get_num_threads()
    old = old_extension(a.rev, Path(tempfile.mkdtemp(prefix="spruce_old_")))
    isas = build.cpu_isas()
    csr, direct = get("spruce_csr"), get("spruce_csr_direct")
    gen = torch.Generator().manual_seed(0)
    rows = []
    cases = [("bert_attn", 768, 768, n) for n in (1, 128)] + [("bert_ffn_in", 3072, 768, n) for n in (1, 128)] + \
        [("bert_ffn_out", 768, 3072, n) for n in (1, 128)] + [("vgg_fc6", 4096, 25088, 1), ("vgg_fc7", 4096, 4096, 1),
                                                                ("vgg_fc7", 4096, 4096, 32)]
    for case, m, k, n in cases:
        w = pruned(m, k, 0.9, gen)
        b = torch.randn(m, generator=gen)
        x = torch.randn(n, k, generator=gen)
        p = csr.prepare(w)

        def old_linear():  # the old binding's nn.Linear path: x transposed once, y written transposed
            xt = x.reshape(k, 1) if n == 1 else x.t().contiguous()
            y = old.csr_spmm(p.rowptr, p.cols, p.vals, m, k, xt, b, 0, n > 1, T, 0)
            return y.reshape(1, m) if n == 1 else y
        ref = F.linear(x, w, b)
        assert torch.allclose(old_linear(), ref, rtol=1e-3, atol=1e-3)
        new = build.load()

        def new_linear(i):  # the binding itself, like old_linear (no Python-side validation in either)
            if n == 1:
                return new.csr_spmm(p.rowptr, p.cols, p.vals, m, k, x.reshape(k, 1), b, 0, T, 0, i).reshape(1, m)
            return new.csr_linear(p.rowptr, p.cols, p.vals, m, k, x, b, 0, T, i)
        assert torch.allclose(new_linear(isas[0]), ref, rtol=1e-3, atol=1e-3)
        fns = {"old": old_linear}
        for i in isas:
            fns[i] = (lambda i=i: new_linear(i))
        ms = timed(fns, a.repeats, a.budget)
        rows.append((case, "linear", f"{m}x{k}", n, ms))
        print(rows[-1], flush=True)
    for name, conv, shape in vgg_convs():
        if name == "conv1_1":
            continue
        co = conv.out_channels
        w4 = pruned(co, conv.weight[0].numel(), 0.9, gen).reshape(conv.weight.shape)
        b = torch.randn(co, generator=gen)
        x = torch.randn(*shape, generator=gen)
        p = direct.prepare(w4.reshape(co, -1))
        xp = F.pad(x, (1, 1, 1, 1)).contiguous()
        ho, wo = shape[2], shape[3]

        def old_conv():
            return old.conv_direct(p.rowptr, p.cols, p.vals, co, F.pad(x, (1, 1, 1, 1)).contiguous(), 3, 3, 1, 1,
                                   1, 1, ho, wo, b, 0, T)
        del xp
        assert torch.allclose(old_conv(), F.conv2d(x, w4, b, padding=1), rtol=1e-3, atol=1e-3)
        new = build.load()
        fns = {"old": old_conv}
        for i in isas:
            fns[i] = (lambda i=i: new.conv_direct(p.rowptr, p.cols, p.vals, co, F.pad(x, (1, 1, 1, 1)).contiguous(),
                                                  3, 3, 1, 1, 1, 1, ho, wo, b, 0, T, i))
        ms = timed(fns, a.repeats, a.budget)
        rows.append((name, "conv2d", f"{co}x{w4[0].numel()}", ho * wo, ms))
        print(rows[-1], flush=True)
    table_rows = [dict(case=case, layout=lay, mk=mk, N=n, old=ms["old"], **{f"{i}_ms": ms[i] for i in isas},
                       **{f"{i}_ratio": ms["old"] / ms[i] for i in isas}) for case, lay, mk, n, ms in rows]
    cols = [("case", "case", ""), ("layout", "layout", ""), ("M x K", "mk", ""), ("N", "N", ""),
            (f"old ({a.rev}) ms", "old", ".3f")] + [(f"{i} ms", f"{i}_ms", ".3f") for i in isas] + \
        [(f"old / {i}", f"{i}_ratio", ".2f") for i in isas]
    text = (f"# spruce_cpu today vs revision {a.rev} (90%, fp32, threads={T}; > 1 = today faster)\n\nCommand: "
            f"`python benchmarks/kernels_vs_revision.py {' '.join(sys.argv[1:])}`\n\n"
            + io.markdown_table(table_rows, cols) + "\n")
    io.atomic_write(a.out / "vs_revision.md", text)
    print(text)


if __name__ == "__main__":
    main()
