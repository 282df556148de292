"""The study's PNG figures (matplotlib, Agg). Each function writes one file (temp name, then rename) and always
writes it, with a "no data" note when its table is empty, so a report always has every file."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from spruce import io  # noqa: E402
from spruce.study.analysis import BEST, t_ms  # noqa: E402
from spruce.study.sweep import as_float  # noqa: E402


def _save(fig, path: Path) -> Path:
    io.write_figure(path, fig, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _empty(path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{title}: no data in this run", ha="center", va="center")
    return _save(fig, path)


def _grid(n: int, w: float = 4.0, h: float = 3.0):
    cols = min(4, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def speedup_curves(curves: dict[tuple[str, str], list[dict]], xtable: list[dict], path: Path) -> Path:
    """Speedup over dense vs sparsity per shape, one line per kernel, crossovers marked."""
    shapes = sorted({s for s, _ in curves})
    if not shapes:
        return _empty(path, "speedup curves")
    fig, axes = _grid(len(shapes))
    cross = {(r["shape"], r["kernel"]): r for r in xtable}
    for ax, shape in zip(axes, shapes):
        for (s, kernel), rs in sorted(curves.items()):
            if s != shape:
                continue
            xs = [as_float(r["sparsity"]) for r in rs]
            ys = [as_float(r["speedup"]) for r in rs]
            line, = ax.plot(xs, ys, marker="o", ms=3, label=kernel)
            c = cross.get((shape, kernel))
            if c and c["measured_status"] == "cross":
                ax.axvline(c["measured"], color=line.get_color(), ls=":", lw=1)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(shape, fontsize=8)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("speedup vs dense")
        ax.legend(fontsize=6)
    fig.suptitle("speedup vs sparsity (dotted: measured crossover)")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _save(fig, path)


def winner_heatmap(win: list[dict], path: Path) -> Path:
    """Fastest kernel per (shape, sparsity) as a categorical heat map with the speedup written in each cell."""
    if not win:
        return _empty(path, "winners")
    shapes = sorted({w["shape"] for w in win})
    sps = sorted({w["sparsity"] for w in win})
    kernels = sorted({w["kernel"] for w in win})
    idx = {k: i for i, k in enumerate(kernels)}
    grid = [[math.nan] * len(sps) for _ in shapes]
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(sps), 0.8 + 0.35 * len(shapes)))
    cmap = plt.get_cmap("tab10", max(len(kernels), 1))
    for w in win:
        i, j = shapes.index(w["shape"]), sps.index(w["sparsity"])
        grid[i][j] = idx[w["kernel"]]
        ax.text(j, i, f"{w['speedup']:.1f}x", ha="center", va="center", fontsize=6)
    ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(kernels) - 0.5, aspect="auto")
    ax.set_xticks(range(len(sps)), [f"{s:g}" for s in sps])
    ax.set_yticks(range(len(shapes)), shapes, fontsize=7)
    ax.set_xlabel("sparsity")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(idx[k])) for k in kernels]
    ax.legend(handles, kernels, fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.set_title("fastest kernel (cell: its speedup over dense)")
    return _save(fig, path)


def amortisation_curves(amort: list[dict], path: Path) -> Path:
    """Inferences to amortise the conversion vs sparsity, per shape, one line per kernel (only where it pays)."""
    by: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for a in amort:
        if math.isfinite(a["inferences"]):
            by[a["shape"]][a["kernel"]].append((a["sparsity"], a["inferences"]))
    if not by:
        return _empty(path, "amortisation")
    fig, axes = _grid(len(by))
    for ax, shape in zip(axes, sorted(by)):
        for kernel, pts in sorted(by[shape].items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [max(p[1], 1e-3) for p in pts], marker="o", ms=3, label=kernel)
        ax.set_yscale("log")
        ax.set_title(shape, fontsize=8)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("inferences to amortise")
        ax.legend(fontsize=6)
    fig.suptitle("conversion cost / per-inference saving (kernels that are faster than dense)")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _save(fig, path)


def real_vs_synthetic(rvs: list[dict], path: Path) -> Path:
    """Median time ratio (kind / uniform twin) per layer and kernel, one bar group per kind."""
    if not rvs:
        return _empty(path, "real vs synthetic")
    labels = [f"{r['model']}:{r['layer']}@{r['n']} {r['kernel']}" for r in rvs]
    kinds = sorted({r["kind"] for r in rvs})
    uniq = list(dict.fromkeys(labels))
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.22 * len(uniq) * max(1, len(kinds)) / 1.5))
    h = 0.8 / len(kinds)
    for j, kind in enumerate(kinds):
        ys, xs = [], []
        for r, lab in zip(rvs, labels):
            if r["kind"] == kind:
                ys.append(uniq.index(lab) + j * h)
                xs.append(r["ratio_median"])
        ax.barh(ys, xs, height=h, label=kind)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks([i + 0.4 - h / 2 for i in range(len(uniq))], uniq, fontsize=6)
    ax.set_xlabel("time / time of the uniform twin (median over sparsities)")
    ax.legend(fontsize=7)
    ax.set_title("real (and other) topologies vs uniform random twins")
    return _save(fig, path)


def model_vs_measured(xtable: list[dict], rows: list[dict], path: Path) -> Path:
    """Left: predicted vs measured crossover (±5 points band). Right: predicted vs measured time per call."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    pts = [(r["measured"], r["predicted"] if r["predicted_status"] != "never" else 1.0, r["kernel"] == BEST,
            r["within_5"]) for r in xtable if r["measured_status"] == "cross"]
    if pts:
        for best in (False, True):
            sel = [p for p in pts if p[2] == best]
            a1.scatter([p[0] for p in sel], [p[1] for p in sel], s=14 if not best else 30,
                       marker="o" if not best else "*", label="best sparse" if best else "per kernel",
                       c=["tab:green" if p[3] else "tab:red" for p in sel])
        a1.plot([0, 1], [0, 1], "k-", lw=0.8)
        a1.fill_between([0, 1], [-0.05, 0.95], [0.05, 1.05], color="gray", alpha=0.2)
        a1.set_xlim(0.3, 1.0)
        a1.set_ylim(0.3, 1.02)
        a1.legend(fontsize=7)
    else:
        a1.text(0.5, 0.5, "no measured crossing", ha="center")
    a1.set_xlabel("measured crossover sparsity")
    a1.set_ylabel("predicted (1 = never)")
    a1.set_title("crossover: model vs measurement (green: within 5 points)", fontsize=9)
    tp = [(t_ms(r), as_float(r["predicted_ms"])) for r in rows
          if r["status"] == "ok" and as_float(r["predicted_ms"]) > 0 and t_ms(r) > 0]
    if tp:
        a2.loglog([t[0] for t in tp], [t[1] for t in tp], ".", ms=3)
        lo, hi = min(min(t) for t in tp), max(max(t) for t in tp)
        a2.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    a2.set_xlabel("measured ms (fastest call)")
    a2.set_ylabel("predicted ms")
    a2.set_title("time per call", fontsize=9)
    return _save(fig, path)


def h100(h: list[dict[str, Any]], path: Path) -> Path:
    """Predicted H100 crossover per shape for the CSR kernel against each dense path."""
    sel = [r for r in h if r["kernel"] == "cuda_csr"]
    if not sel:
        return _empty(path, "H100 predictions")
    shapes = list(dict.fromkeys(r["shape"] for r in sel))
    paths = list(dict.fromkeys(r["dense_path"] for r in sel))
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.3 * len(shapes)))
    hgt = 0.8 / len(paths)
    for j, p in enumerate(paths):
        vals = [next((r["crossover"] if r["status"] != "never" else 1.0) for r in sel
                     if r["shape"] == s and r["dense_path"] == p) for s in shapes]
        ax.barh([i + j * hgt for i in range(len(shapes))], vals, height=hgt, label=f"vs {p}")
    ax.set_yticks([i + 0.4 - hgt / 2 for i in range(len(shapes))], shapes, fontsize=6)
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("predicted crossover sparsity of an FP32 CSR SpMM (1 = never)")
    ax.legend(fontsize=7)
    ax.set_title("H100 (data sheet) predictions")
    return _save(fig, path)
