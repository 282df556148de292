"""Accuracy of pruning methods over seeds: one table (mean, spread) from ``train.py -m`` sweep folders.

Each job folder of a Hydra multirun holds ``.hydra/config.yaml`` and ``summary.json`` (written last by
``train.py``); jobs are grouped by everything that defines the method (model, data, scope, score, final sparsity,
block, N:M, per-layer targets) and the seeds of a group are summarised: mean, sample standard deviation, min-max,
and the dense accuracy each run measured before pruning began (``val_acc_dense``); from the jobs' CSV logs
(``logger=csv``), the accuracy after each epoch (``<out>_curves.md/.png``). Jobs without a ``summary.json`` (still
running, or failed) are counted and listed, never silently averaged in. A folder may also hold single runs
(``train.py ... hydra.run.dir=<folder>/<name>``).

    python train.py -m experiment=minilm_fortunes prune.final=0.8,0.9 prune.score=magnitude,movement,soft_movement \\
        seed=0,1,2 threads=2 logger=csv hydra.sweep.dir=runs/minilm
    python benchmarks/pruning_accuracy.py runs/minilm --out docs/measured/pruning-2026-12-04/minilm
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spruce import io  # noqa: E402

GROUP_KEYS = ("model", "data", "scope", "score", "final", "block", "n_m", "targets")


def _structure(p: dict) -> str:
    if p.get("n_m"):
        return f"{p['n_m'][0]}:{p['n_m'][1]}"
    if p.get("block"):
        return f"block {p['block'][0]}x{p['block'][1]}"
    return "unstructured"


def job_row(job: Path) -> dict | None:
    """One finished job as a flat row, or None when it has no ``summary.json`` yet."""
    cfg_file, summary_file = job / ".hydra" / "config.yaml", job / "summary.json"
    if not cfg_file.is_file():
        return None
    cfg = yaml.safe_load(cfg_file.read_text())
    p = cfg.get("prune", {})
    row = {"job": job.name, "path": str(job), "model": cfg["model"]["name"], "data": cfg["data"]["name"],
           "method": p.get("method"), "scope": p.get("scope"), "score": p.get("score"),
           "final": 0.0 if p.get("method") == "none" else p.get("final"),
           "structure": _structure(p), "block": str(p.get("block")), "n_m": str(p.get("n_m")),
           "targets": str(p.get("targets")), "seed": cfg.get("seed"), "epochs": cfg["trainer"]["max_epochs"]}
    if not summary_file.is_file():
        return {**row, "done": False}
    s = json.loads(summary_file.read_text())
    return {**row, "done": True, "val_acc": s["val_acc"], "val_acc_dense": s.get("val_acc_dense"),
            "overall": s["sparsity"].get("overall")}


def collect(folders: list[Path]) -> tuple[list[dict], list[str]]:
    rows, pending = [], []
    for folder in folders:
        if not folder.is_dir():
            raise ValueError(f"sweep folder {str(folder)!r} does not exist; pass folders made by train.py -m")
        for job in sorted(p for p in folder.iterdir() if p.is_dir()):
            r = job_row(job)
            if r is None:
                continue
            (rows if r["done"] else pending).append(r if r["done"] else f"{folder.name}/{job.name}")
    return rows, pending


def _stats(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else math.nan,
            "min": min(xs), "max": max(xs)}


def summarise(rows: list[dict]) -> list[dict]:
    """One row per method group: n seeds, accuracy mean/std/min/max (percent), dense-before-pruning mean."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in GROUP_KEYS), []).append(r)
    out = []
    for key, rs in groups.items():
        acc = _stats([100 * r["val_acc"] for r in rs])
        dense = [100 * r["val_acc_dense"] for r in rs if r.get("val_acc_dense") is not None]
        first = rs[0]
        method = first["score"] if first["method"] != "none" else "dense"
        if first["targets"] not in ("None", "null"):
            method += " (speed-guided)" if "speed" in first["targets"] else " (per-layer targets)"
        out.append({"model": first["model"], "data": first["data"], "method": method, "scope": first["scope"],
                    "structure": first["structure"], "final": first["final"],
                    "overall": statistics.fmean(r["overall"] for r in rs if r["overall"] is not None)
                    if any(r["overall"] is not None for r in rs) else None,
                    "seeds": len(rs), "seed_list": ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"])),
                    "acc_mean": acc["mean"], "acc_std": acc["std"], "acc_min": acc["min"], "acc_max": acc["max"],
                    "dense_mean": statistics.fmean(dense) if dense else None, "epochs": first["epochs"]})
    return sorted(out, key=lambda r: (r["model"], r["final"], r["structure"], r["method"]))


def val_curve(job: Path) -> dict[int, float]:
    """``{epoch: validation accuracy}`` from the job's Lightning CSV log (its last version); ``{}`` without one."""
    files = sorted(job.glob("csv/version_*/metrics.csv"), key=lambda f: int(f.parent.name.split("_")[-1]))
    out: dict[int, float] = {}
    if files:
        with files[-1].open(newline="") as f:
            for r in csv.DictReader(f):
                if r.get("val/acc") and r.get("epoch"):
                    out[int(float(r["epoch"]))] = float(r["val/acc"])
    return out


def curves(rows: list[dict]) -> list[dict]:
    """Per method group (as ``summarise``): the mean, min and max over seeds of the validation accuracy (percent)
    after each epoch, from the jobs' CSV logs; groups without logs are left out."""
    groups: dict[tuple, list[dict[int, float]]] = {}
    firsts: dict[tuple, dict] = {}
    for r in rows:
        c = val_curve(Path(r["path"]))
        if c:
            key = tuple(r[k] for k in GROUP_KEYS)
            groups.setdefault(key, []).append(c)
            firsts.setdefault(key, r)
    out = []
    for key, cs in groups.items():
        first = firsts[key]
        epochs = sorted(set().union(*cs))
        per = {e: [100 * c[e] for c in cs if e in c] for e in epochs}
        out.append({"method": first["score"] if first["method"] != "none" else "dense", "final": first["final"],
                    "structure": first["structure"], "seeds": len(cs), "epochs": epochs,
                    "mean": [statistics.fmean(per[e]) for e in epochs], "min": [min(per[e]) for e in epochs],
                    "max": [max(per[e]) for e in epochs]})
    return sorted(out, key=lambda r: (r["final"], r["structure"], r["method"]))


def curves_table(cs: list[dict]) -> str:
    """Markdown: one row per group, the mean accuracy after each epoch."""
    epochs = sorted(set().union(*(c["epochs"] for c in cs)))
    head = "| method | structure | target | seeds | " + " | ".join(f"epoch {e + 1}" for e in epochs) + " |"
    lines = [head, "|" + "---|" * (4 + len(epochs))]
    for c in cs:
        by = dict(zip(c["epochs"], c["mean"]))
        cells = [f"{by[e]:.1f}" if e in by else "" for e in epochs]
        lines.append(f"| {c['method']} | {c['structure']} | {c['final']:.2f} | {c['seeds']} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def plot_curves(cs: list[dict], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    for c in cs:
        x = [e + 1 for e in c["epochs"]]
        line, = ax.plot(x, c["mean"], marker="o", label=f"{c['method']} {c['structure']} {c['final']:.2f} "
                                                         f"({c['seeds']} seeds)")
        ax.fill_between(x, c["min"], c["max"], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy %")
    ax.set_title("line: mean over seeds; band: min-max", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return io.write_figure(path, fig)


COLUMNS = [("model", "model", ""), ("score / method", "method", ""), ("structure", "structure", ""),
           ("target", "final", ".2f"), ("measured sparsity", "overall", ".4f"), ("seeds", "seeds", "d"),
           ("accuracy % (mean)", "acc_mean", ".2f"), ("std", "acc_std", ".2f"), ("min", "acc_min", ".2f"),
           ("max", "acc_max", ".2f"), ("dense before pruning %", "dense_mean", ".2f"), ("epochs", "epochs", "d")]


def plot(summary: list[dict], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(summary)), 4.0))
    labels = [f"{r['method']}\n{r['structure']}\n{r['final']:.2f}" for r in summary]
    means = [r["acc_mean"] for r in summary]
    lo = [r["acc_mean"] - r["acc_min"] for r in summary]
    hi = [r["acc_max"] - r["acc_mean"] for r in summary]
    ax.bar(range(len(summary)), means, yerr=[lo, hi], capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(summary)), labels, fontsize=7)
    ax.set_ylabel("validation accuracy % (bar: mean; whiskers: min-max over seeds)")
    floor = min(r["acc_min"] for r in summary)
    ax.set_ylim(max(0.0, floor - 5), 100)
    models = sorted({f"{r['model']} on {r['data']}" for r in summary})
    ax.set_title(", ".join(models))
    fig.tight_layout()
    return io.write_figure(path, fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="train.py -m sweep folders (hydra.sweep.dir)")
    ap.add_argument("--out", type=Path, required=True, help="output prefix: <out>.md, <out>.csv, <out>.png")
    a = ap.parse_args(argv)
    try:
        rows, pending = collect(a.folders)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: no finished job (summary.json) under {', '.join(map(str, a.folders))}", file=sys.stderr)
        return 2
    summary = summarise(rows)
    table = io.markdown_table(summary, COLUMNS)
    note = f"\n\nNot finished (left out): {', '.join(pending)}\n" if pending else "\n"
    cmd = "python benchmarks/pruning_accuracy.py " + " ".join(map(str, a.folders)) + f" --out {a.out}"
    io.atomic_write(a.out.with_suffix(".md"), f"{table}{note}\n`{cmd}`\n")
    io.write_csv(a.out.with_suffix(".csv"), rows, [k for k in rows[0] if k != "done"])
    plot(summary, a.out.with_suffix(".png"))
    cs = curves(rows)
    if cs:  # accuracy after each epoch, from the jobs' CSV logs (logger=csv)
        ctab = curves_table(cs)
        io.atomic_write(a.out.with_name(a.out.name + "_curves.md"), f"Validation accuracy % after each epoch (mean "
                        f"over seeds)\n\n{ctab}\n\n`{cmd}`\n")
        plot_curves(cs, a.out.with_name(a.out.name + "_curves.png"))
        note += f"\n{ctab}\n"
    print(table + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
