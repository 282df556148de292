"""Results a person reads: CSV/JSON rows, PNG plots, a short markdown summary; sweeps aggregate their rows.

Files are written through ``spruce.io`` (a temp name, then a rename), so a crashed run never leaves a half-written report.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spruce.io import write_figure

#: bench peers=[...]: each engine's end-to-end median (ms) when its output matched PyTorch's
PEER_KEYS = ("peer_onnxruntime_ms", "peer_deepsparse_ms", "peer_openvino_ms")
ROW_KEYS = ("model", "init", "deploy", "objective", "sparsity", "device", "threads", "batch_size", "input",
            "latency_ms_median", "latency_ms_p90", "dense_latency_ms_median", "dense_latency_ms_p90", "speedup",
            "peak_memory_bytes", "dense_peak_memory_bytes", "weight_bytes", "dense_weight_bytes",
            "pruned_layers_bytes", "pruned_layers_dense_bytes", "pruned_memory_ratio", "accuracy",
            "dense_accuracy", "layers_sparse", "layers_planned", "kernels_used", "plan_s", "convert_ms",
            "fusions", "compile", "compiled", "compile_s", "run_dir") + PEER_KEYS
LAYER_KEYS = ("layer", "kind", "shape", "sparsity", "kernel", "format", "dense_ms", "measured_ms", "speedup",
              "predicted_ms", "convert_ms", "amortise_inferences", "weight_bytes", "dense_bytes", "skipped",
              "candidates")


def _cell(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else "nan"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True)
    return "" if v is None else v


def rows_csv(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    """CSV text of ``rows`` with columns ``keys`` (dicts/lists JSON-encoded, inf as ``"inf"``)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(keys), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(r.get(k)) for k in keys})
    return buf.getvalue()


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``rows.csv`` with numbers parsed back (empty cells -> None)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in r.items():
                if v == "":
                    row[k] = None
                    continue
                try:
                    row[k] = float(v) if any(c in v for c in ".eEn") or v == "inf" else int(v)
                except ValueError:
                    row[k] = v
            out.append(row)
    return out


def layer_rows(plan_layers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per planned layer (plan entry + its name)."""
    return [{"layer": n, **e} for n, e in plan_layers.items()]


# ---- plots ---------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save_fig(fig: Any, path: Path) -> Path:
    atomic = write_figure(path, fig, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return atomic


def plot_layers(plan_layers: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    """Horizontal bars per layer: dense ms vs the chosen kernel's ms (log scale), kernel name annotated."""
    plt = _plt()
    names = list(plan_layers)
    dense = [plan_layers[n]["dense_ms"] for n in names]
    chosen = [plan_layers[n]["measured_ms"] for n in names]
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.28 * len(names) + 1.2)))
    y = range(len(names))
    ax.barh([i + 0.2 for i in y], dense, height=0.4, label="dense (nn.Module)", color="#999999")
    ax.barh([i - 0.2 for i in y], chosen, height=0.4, label="chosen kernel", color="#2a7ab9")
    for i, n in enumerate(names):
        ax.text(chosen[i], i - 0.2, f" {plan_layers[n]['kernel']}", va="center", fontsize=7)
    ax.set_yticks(list(y), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("time per call (ms, log scale)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    return _save_fig(fig, path)


def crossover(sparsities: Sequence[float], speedups: Sequence[float]) -> float | None:
    """Lowest sparsity from which the deployed model is faster than dense (speedup 1 crossed upwards, linear
    interpolation); None when it never is, or the first point is already faster (crossover below the range)."""
    pts = sorted((s, v) for s, v in zip(sparsities, speedups) if v is not None and math.isfinite(v))
    for (s0, v0), (s1, v1) in zip(pts, pts[1:]):
        if v0 <= 1 < v1 and all(v > 1 for _, v in pts[pts.index((s1, v1)):]):
            return s0 + (1 - v0) * (s1 - s0) / (v1 - v0)
    return None


def _groups(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    g: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("sparsity") is None:
            continue
        g.setdefault((str(r.get("model")), str(r.get("deploy"))), []).append(r)
    return {k: sorted(v, key=lambda r: r["sparsity"]) for k, v in sorted(g.items())}


def plot_sweep(rows: Sequence[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """Latency, memory and accuracy vs sparsity for every (model, deploy) group of ``rows``; dense dashed; the
    crossover (where the deployed model starts beating dense) marked. Returns ``{name: png path}``."""
    plt = _plt()
    groups = _groups(rows)
    out: dict[str, Path] = {}
    if not groups:
        return out
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (model, deploy), rs in groups.items():
        s = [r["sparsity"] for r in rs]
        ax.plot(s, [r["latency_ms_median"] for r in rs], "o-", label=f"{model} deploy={deploy}")
        ax.plot(s, [r["dense_latency_ms_median"] for r in rs], "--", color="gray", alpha=0.7,
                label=f"{model} dense (same run)")
        for key in PEER_KEYS:
            if any(r.get(key) is not None for r in rs):
                ax.plot(s, [float("nan") if r.get(key) is None else r[key] for r in rs], ":", marker=".",
                        label=f"{model} {key[5:-3]} (same run)")
        x = crossover(s, [r.get("speedup") for r in rs]) if deploy != "dense" else None
        if x is not None:
            ax.axvline(x, color="red", ls=":", alpha=0.8)
            ax.annotate(f"crossover ~{x:.2f}", (x, ax.get_ylim()[1]), fontsize=8, color="red", ha="left", va="top")
    ax.set_xlabel("sparsity (fraction of zeros in pruned layers)")
    ax.set_ylabel("latency, median (ms)")
    ax.set_title("end-to-end latency vs sparsity", fontsize=10)
    ax.legend(fontsize=7)
    out["latency"] = _save_fig(fig, out_dir / "latency_vs_sparsity.png")

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (model, deploy), rs in groups.items():
        s = [r["sparsity"] for r in rs]
        ax.plot(s, [r["pruned_layers_bytes"] / 2**20 for r in rs], "o-",
                label=f"{model} deploy={deploy}: pruned layers")
        ax.plot(s, [r["pruned_layers_dense_bytes"] / 2**20 for r in rs], "--", color="gray", label=f"{model} dense")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("weight memory of pruned layers (MiB)")
    ax.set_title("memory vs sparsity", fontsize=10)
    ax.legend(fontsize=7)
    out["memory"] = _save_fig(fig, out_dir / "memory_vs_sparsity.png")

    if any(r.get("accuracy") is not None for rs in groups.values() for r in rs):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for (model, deploy), rs in groups.items():
            rs = [r for r in rs if r.get("accuracy") is not None]
            ax.plot([r["sparsity"] for r in rs], [r["accuracy"] for r in rs], "o-", label=f"{model} deploy={deploy}")
        ax.set_xlabel("sparsity")
        ax.set_ylabel("accuracy (eval split)")
        ax.set_title("accuracy vs sparsity", fontsize=10)
        ax.legend(fontsize=7)
        out["accuracy"] = _save_fig(fig, out_dir / "accuracy_vs_sparsity.png")
    return out


# ---- markdown ------------------------------------------------------------------------------------------------
def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "never" if v > 0 else "nan"
        return f"{v:.{nd}f}"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The headline numbers of ``rows`` as a markdown table."""
    head = ("| model | init | deploy | sparsity | latency ms (median / p90) | dense ms | speedup | pruned-layer "
            "memory vs dense | peak RSS MiB (dense) | accuracy (dense) |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        acc = "-" if r.get("accuracy") is None else f"{r['accuracy']:.4f} ({_fmt(r.get('dense_accuracy'), 4)})"
        lines.append(
            f"| {r.get('model')} | {r.get('init')} | {r.get('deploy')} | {_fmt(r.get('sparsity'))} | "
            f"{_fmt(r.get('latency_ms_median'), 1)} / {_fmt(r.get('latency_ms_p90'), 1)} | "
            f"{_fmt(r.get('dense_latency_ms_median'), 1)} | {_fmt(r.get('speedup'))}x | "
            f"{_fmt(r.get('pruned_memory_ratio'), 3)}x | {r['peak_memory_bytes'] / 2**20:.0f} "
            f"({r['dense_peak_memory_bytes'] / 2**20:.0f}) | {acc} |")
    return head + "\n".join(lines) + "\n"


def run_summary(row: dict[str, Any], plan_layers: dict[str, dict[str, Any]], notes: Sequence[str]) -> str:
    """Markdown summary of one run: headline table, kernels used, slowest-to-amortise layers, notes."""
    md = [f"# bench: {row['model']} ({row['init']}) deploy={row['deploy']} sparsity={_fmt(row.get('sparsity'))}\n",
          f"device {row['device']}, threads {row['threads']}, batch {row['batch_size']}, input {row['input']}, "
          f"objective {row['objective']}.\n", markdown_table([row])]
    md.append(f"\nKernels used: {row['kernels_used']}; {row['layers_sparse']} of {row['layers_planned']} planned "
              f"layers run sparse; conversion took {row['convert_ms']:.0f} ms in all.\n")
    if row.get("fusions") is not None:
        md.append(f"\n{row['fusions']} layers fused with their activation; compile={row.get('compile')}: "
                  f"{'compiled' if row.get('compiled') else 'eager'}"
                  + (f", compilation {row['compile_s']:.1f} s (first call, amortised like conversion)"
                     if row.get("compile_s") else "") + ".\n")
    conv = [(n, e) for n, e in plan_layers.items() if e["kernel"] != "dense"]
    if conv:
        md.append("\n| layer | kernel | dense ms | kernel ms | speedup | convert ms | amortised after (inferences) |"
                  "\n|---|---|---|---|---|---|---|\n")
        for n, e in conv:
            md.append(f"| {n} | {e['kernel']} | {e['dense_ms']:.3f} | {e['measured_ms']:.3f} | {e['speedup']:.2f}x | "
                      f"{e['convert_ms']:.1f} | {_fmt(e['amortise_inferences'], 1)} |\n")
    if notes:
        md.append("\nNotes:\n" + "".join(f"- {n}\n" for n in notes))
    return "".join(md)
