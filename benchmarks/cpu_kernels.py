"""CPU kernel sweep: every registered CPU kernel vs dense on the VGG/BERT shapes over sparsity.

For each shape ``(M, K, N)`` and sparsity, a random normal weight is magnitude-pruned, every kernel is
prepared (conversion timed once), verified against the dense result (relative Frobenius error), warmed up,
and timed (median of ``--repeats``). Writes ``results.csv``, ``speedup.png`` (speedup vs sparsity per shape,
crossover marked) and ``summary.md`` (speedup vs dense and vs the best torch sparse layout, crossover per
shape, conversion times) into ``--out``.

    python benchmarks/cpu_kernels.py --quick
    python benchmarks/cpu_kernels.py --shapes bert_ffn1,fc6_n1 --sparsities 0.7,0.9 --repeats 20
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spruce.kernels import kernels as registered_kernels  # noqa: E402
from spruce.study.shapes import gemm  # noqa: E402

# name: (model, study layer, batch, what); (M, K, N) are read off the real models (spruce.study.shapes)
CASES = {
    "fc6_n1": ("vgg16", "fc6", 1, "VGG fc6, batch 1"),
    "fc7_n1": ("vgg16", "fc7", 1, "VGG fc7, batch 1"),
    "fc7_n32": ("vgg16", "fc7", 32, "VGG fc7, batch 32"),
    "conv4_2": ("vgg16", "conv4_2", 1, "VGG conv4_2 im2col, 28x28"),
    "conv1_2": ("vgg16", "conv1_2", 1, "VGG conv1_2 im2col, 224x224"),
    "bert_ffn1": ("bert_base", "ffn_in", 1, "BERT FFN in, seq 128"),
    "bert_ffn2": ("bert_base", "ffn_out", 1, "BERT FFN out, seq 128"),
    "bert_attn": ("bert_base", "attn_q", 1, "BERT attention proj, seq 128"),
}
# name: (M, K, N, what)
SHAPES: dict[str, tuple[int, int, int, str]] = {name: (*gemm(model, layer, batch), what)
                                                for name, (model, layer, batch, what) in CASES.items()}
SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
TORCH_SPARSE = ("torch_csr", "torch_bsr4", "torch_bsr16")
TIME_BUDGET_S = 1.0  # per (kernel, case): slow baselines get fewer repeats (never fewer than 3)
FIELDS = ["shape", "M", "K", "N", "sparsity", "achieved", "kernel", "ms", "prepare_ms", "speedup", "rel_err", "weight_mb",
          "repeats", "threads", "clock", "status"]


def magnitude_pruned(m: int, k: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    """A ``[m, k]`` standard normal weight with the smallest-|w| ``sparsity`` fraction set to zero.

    The threshold is the ``sparsity`` quantile of |w| on a 2M-element sample (exact below that size): for
    fc6 this is seconds faster than a full selection and the achieved sparsity is within ~0.1%.
    """
    w = torch.randn(m, k, generator=gen)
    if sparsity <= 0:
        return w
    a = w.abs().flatten()
    if a.numel() > 2_000_000:
        a = a[torch.randint(0, a.numel(), (2_000_000,), generator=gen)]
    n_zero = max(1, int(round(sparsity * a.numel())))
    thresh = a.kthvalue(n_zero).values
    w[w.abs() <= thresh] = 0.0
    return w


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}
CLOCK = "wall"  # "thread": CPU time of the calling thread; with --threads 1 it ignores time spent descheduled


def time_call(fn, repeats: int) -> tuple[float, int]:
    """Median time of ``fn()`` in ms (``CLOCK``) after two warm-up calls; fewer repeats for slow calls."""
    clock = CLOCKS[CLOCK]
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    fn()
    reps = max(3, min(repeats, int(TIME_BUDGET_S / max(first, 1e-6))))
    times = []
    for _ in range(reps):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1e3)
    return statistics.median(times), reps


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def run_case(name: str, sparsity: float, kerns, repeats: int, gen: torch.Generator) -> list[dict]:
    """Time every kernel on one (shape, sparsity); the dense kernel is the reference and the baseline."""
    m, k, n, _ = SHAPES[name]
    w = magnitude_pruned(m, k, sparsity, gen)
    x = torch.randn(k, n, generator=gen)
    achieved = float((w == 0).sum()) / w.numel()
    ref = None  # the dense kernel runs first; its float32 result is the reference (tests check it vs float64)
    rows = []
    dense_ms = None
    for kern in kerns:
        row = {"shape": name, "M": m, "K": k, "N": n, "sparsity": sparsity, "achieved": achieved,
               "kernel": kern.name, "threads": torch.get_num_threads(), "clock": CLOCK}
        try:
            t0 = time.perf_counter()
            packed = kern.prepare(w)
            row["prepare_ms"] = (time.perf_counter() - t0) * 1e3
            row["weight_mb"] = kern.weight_bytes(packed) / 2**20
            y = kern.matmul(packed, x)
            if ref is None:
                ref = y.double()
            err = rel_err(y, ref)
            row["rel_err"] = err
            if not err < 1e-4:
                row["status"] = f"wrong result (relative error {err:.2e})"
                rows.append(row)
                continue
            row["ms"], row["repeats"] = time_call(lambda: kern.matmul(packed, x), repeats)
            row["status"] = "ok"
            del packed
        except Exception as e:  # noqa: BLE001 - a failing kernel is reported as failed, never as a number
            row["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        if kern.name == "torch_dense" and row.get("status") == "ok":
            dense_ms = row["ms"]
        rows.append(row)
    for row in rows:
        if dense_ms and row.get("ms"):
            row["speedup"] = dense_ms / row["ms"]
    return rows


def crossover(points: list[tuple[float, float]]) -> float | None:
    """Lowest sparsity from which the speedup stays >= 1, linearly interpolated; None if never."""
    points = sorted(points)
    idx = None
    for i in range(len(points) - 1, -1, -1):
        if points[i][1] >= 1.0:
            idx = i
        else:
            break
    if idx is None:
        return None
    if idx == 0:
        return points[0][0]
    (s0, v0), (s1, v1) = points[idx - 1], points[idx]
    return s0 + (1.0 - v0) * (s1 - s0) / (v1 - v0) if v1 != v0 else s1


def write_csv(rows: list[dict], path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=FIELDS)
        wr.writeheader()
        for r in rows:
            wr.writerow({k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k, "")) for k in FIELDS})
    os.replace(tmp, path)


def ours(rows: list[dict]) -> list[str]:
    return sorted({r["kernel"] for r in rows if r["kernel"].startswith("spruce_")})


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    cols = min(4, len(shapes))
    nrow = math.ceil(len(shapes) / cols)
    fig, axes = plt.subplots(nrow, cols, figsize=(4.2 * cols, 3.4 * nrow), squeeze=False)
    names = [k for k in dict.fromkeys(r["kernel"] for r in rows) if k != "torch_dense"]
    for ax, shape in zip(axes.flat, shapes):
        for kname in names:
            pts = sorted((r["sparsity"], r["speedup"]) for r in rows
                         if r["shape"] == shape and r["kernel"] == kname and r.get("speedup"))
            if not pts:
                continue
            style = "-o" if kname.startswith("spruce_") else "--."
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=kname, ms=3)
            if kname == "spruce_csr":
                c = crossover(pts)
                if c is not None:
                    ax.axvline(c, color="k", ls=":", lw=1)
                    ax.annotate(f"crossover {c:.2f}", (c, 1), fontsize=7, xytext=(3, 8), textcoords="offset points")
        m, k, n, _ = SHAPES[shape]
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{shape} {m}x{k} N={n}", fontsize=9)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("speedup vs dense")
    for ax in list(axes.flat)[len(shapes):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def summary(rows: list[dict], command: str) -> str:
    """Markdown: per shape/sparsity the dense time, best torch sparse, our kernels and their speedups."""
    ok = [r for r in rows if r.get("status") == "ok"]
    mine = ours(rows)
    threads = rows[0].get("threads", torch.get_num_threads()) if rows else torch.get_num_threads()
    clock = rows[0].get("clock", "wall") if rows else "wall"
    lines = [f"Command: `{command}`  ", f"threads={threads}, clock={clock}, times are medians in ms", ""]
    head = ["shape", "sparsity", "dense ms", "best torch sparse (ms)"]
    for kname in mine:
        head += [f"{kname} ms", "x dense", "x torch sp"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    for shape in shapes:
        for s in sorted({r["sparsity"] for r in rows if r["shape"] == shape}):
            case = {r["kernel"]: r for r in ok if r["shape"] == shape and r["sparsity"] == s}
            dense = case.get("torch_dense")
            tsp = [case[t] for t in TORCH_SPARSE if t in case]
            best = min(tsp, key=lambda r: r["ms"]) if tsp else None
            cells = [shape, f"{s:.2f}", f"{dense['ms']:.3f}" if dense else "-",
                     f"{best['kernel']} {best['ms']:.3f}" if best else "-"]
            for kname in mine:
                r = case.get(kname)
                if r is None:
                    cells += ["failed", "-", "-"]
                    continue
                cells += [f"{r['ms']:.3f}", f"{r['speedup']:.2f}" if r.get("speedup") else "-",
                          f"{best['ms'] / r['ms']:.2f}" if best else "-"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Crossover (lowest sparsity from which the kernel stays faster than dense; interpolated):", ""]
    kn = mine + [t for t in TORCH_SPARSE if any(r["kernel"] == t for r in ok)]
    lines += ["| shape | " + " | ".join(kn) + " |", "|---|" + "---|" * len(kn)]
    for shape in shapes:
        cells = [shape]
        for kname in kn:
            pts = [(r["sparsity"], r["speedup"]) for r in ok
                   if r["shape"] == shape and r["kernel"] == kname and r.get("speedup")]
            c = crossover(pts) if pts else None
            cells.append("never" if c is None else f"{c:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Conversion (prepare) time in ms, and in dense inferences of the same shape:", ""]
    conv_k = [k for k in mine + ["torch_csr", "torch_bsr16", "scipy_csr"] if any(r["kernel"] == k for r in ok)]
    lines += ["| shape | sparsity | " + " | ".join(conv_k) + " |", "|---|---|" + "---|" * len(conv_k)]
    for shape in shapes:
        for s in sorted({r["sparsity"] for r in rows if r["shape"] == shape}):
            if s != 0.9 and len({r["sparsity"] for r in rows if r["shape"] == shape}) > 1:
                continue
            case = {r["kernel"]: r for r in ok if r["shape"] == shape and r["sparsity"] == s}
            dense = case.get("torch_dense")
            cells = [shape, f"{s:.2f}"]
            for kname in conv_k:
                r = case.get(kname)
                cells.append(f"{r['prepare_ms']:.1f} ({r['prepare_ms'] / dense['ms']:.1f}x)" if r and dense else "-")
            lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        lines += ["", "Failures:", ""] + [f"- {r['shape']} {r['sparsity']} {r['kernel']}: {r['status']}"
                                           for r in failed]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of: {', '.join(SHAPES)}")
    ap.add_argument("--sparsities", default=None, help="comma list in [0, 1), default 0.5..0.98")
    ap.add_argument("--kernels", default=None, help="comma list of kernel names (default: all CPU kernels)")
    ap.add_argument("--repeats", type=int, default=15, help="timed calls per case (median reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every kernel")
    ap.add_argument("--quick", action="store_true", help="sparsities 0.5,0.7,0.9,0.98 and 5 repeats")
    ap.add_argument("--out", default="benchmarks/results/cpu_kernels", help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall (default) or thread: CPU time of the calling thread, only with --threads 1; "
                         "robust on a busy shared machine, but it ignores memory stalls of other processes")
    ap.add_argument("--from-csv", default=None, help="only redraw summary.md/speedup.png from an earlier "
                    "results.csv (e.g. of an interrupted run)")
    return ap.parse_args(argv)


def read_csv(path: Path) -> list[dict]:
    """Rows of an earlier results.csv with numbers parsed back."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict = {}
            for key, val in r.items():
                if val == "":
                    continue
                if key in ("M", "K", "N", "repeats", "threads"):
                    row[key] = int(val)
                elif key in ("sparsity", "achieved", "ms", "prepare_ms", "speedup", "rel_err", "weight_mb"):
                    row[key] = float(val)
                else:
                    row[key] = val
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_csv:
        src = Path(args.from_csv)
        if not src.is_file():
            print(f"error: --from-csv {src} is not a file", file=sys.stderr)
            return 2
        rows = read_csv(src)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        plot(rows, out / "speedup.png")
        text = summary(rows, f"(redrawn from {src})")
        (out / "summary.md.tmp").write_text(text)
        os.replace(out / "summary.md.tmp", out / "summary.md")
        print(text)
        return 0
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        print(f"error: unknown shape(s) {', '.join(bad)}; allowed: {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    try:
        sps = ([float(s) for s in args.sparsities.split(",")] if args.sparsities
               else ([0.5, 0.7, 0.9, 0.98] if args.quick else list(SPARSITIES)))
    except ValueError:
        print(f"error: --sparsities must be numbers in [0, 1), got {args.sparsities!r}", file=sys.stderr)
        return 2
    if any(not 0 <= s < 1 for s in sps):
        print(f"error: sparsities must lie in [0, 1), got {sps}", file=sys.stderr)
        return 2
    if args.repeats < 1 or args.threads < 1:
        print("error: --repeats and --threads must be >= 1", file=sys.stderr)
        return 2
    if args.clock == "thread" and args.threads != 1:
        print("error: --clock thread measures one thread's CPU time; use it with --threads 1", file=sys.stderr)
        return 2
    global CLOCK
    CLOCK = args.clock
    repeats = 5 if args.quick and args.repeats == 15 else args.repeats
    torch.set_num_threads(args.threads)
    kerns = registered_kernels(device="cpu", dtype=torch.float32)
    if args.kernels:
        want = [k.strip() for k in args.kernels.split(",")]
        missing = [k for k in want if k not in {kk.name for kk in kerns}]
        if missing:
            print(f"error: kernel(s) {', '.join(missing)} not available; available: "
                  f"{', '.join(k.name for k in kerns)}", file=sys.stderr)
            return 2
        kerns = [k for k in kerns if k.name in want or k.name == "torch_dense"]
    kerns.sort(key=lambda k: k.name != "torch_dense")  # dense first: it is the baseline
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/cpu_kernels.py " + " ".join(sys.argv[1:] if argv is None else argv)
    gen = torch.Generator().manual_seed(args.seed)
    from tqdm import tqdm
    rows: list[dict] = []
    cases = [(s, p) for s in shapes for p in sps]
    for shape, sp in tqdm(cases, desc="cpu kernels", unit="case"):
        rows += run_case(shape, sp, kerns, repeats, gen)
        write_csv(rows, out / "results.csv")
    plot(rows, out / "speedup.png")
    text = summary(rows, command)
    tmp = out / "summary.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / "summary.md")
    print(text)
    print(f"wrote {out / 'results.csv'}, {out / 'speedup.png'}, {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
