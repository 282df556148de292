"""Sensitivity analysis (as in Distiller / SparseML): prune one layer at a time, no fine-tuning, evaluate.

For each layer and each sparsity of a ladder, the layer's weights are magnitude-pruned (with the same block / N:M
structure as training would use) while every other layer stays as it is, the model is evaluated, and the weights
are restored. The result is a per-layer table of the metric and its drop from the unpruned baseline, a figure
(drop vs sparsity, one line per layer) and a per-layer target file: each layer's highest ladder sparsity whose
drop is at most ``tolerance`` (0: left dense), readable by ``prune.targets=<file>``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spruce.io import markdown_table, write_csv, write_figure, write_json
from spruce.prune.pruner import check_sparsity, resolve_layers
from spruce.prune.scores import magnitude_score
from spruce.prune.structure import Structure, structured_lowest

DEFAULT_LADDER = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
COLUMNS = ("layer", "params", "sparsity", "achieved", "metric", "drop")


def sensitivity(model: nn.Module, evaluate: Callable[[nn.Module], float], layers: Sequence[str],
                sparsities: Sequence[float] = DEFAULT_LADDER, structure: Structure | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Prune each layer alone to each sparsity, evaluate, restore. ``model`` is unchanged afterwards.

    Args:
        model: the trained model (masks, if any, are left alone; the weights are restored bit for bit).
        evaluate: ``model -> metric`` (higher is better, e.g. accuracy in [0, 1]).
        layers: fqn of the layers to analyse; sparsities: the ladder, each in ``[0, 1)``.
        structure: block / N:M structure of the pruning (default unstructured).

    Returns:
        ``{"baseline": metric, "rows": [{layer, params, sparsity, achieved, metric, drop}, ...]}``.
    """
    structure = structure or Structure()
    ladder = sorted({float(s) for s in sparsities})
    if not ladder:
        raise ValueError("sensitivity needs at least one sparsity in the ladder")
    for s in ladder:
        check_sparsity(s)
        structure.check_sparsity(s, "sensitivity")
    modules = resolve_layers(model, layers)
    baseline = float(evaluate(model))
    rows = []
    for name, mod in modules.items():
        w = mod.weight
        saved = w.detach().clone()
        try:
            for s in ladder:
                with torch.no_grad():
                    w.copy_(saved.masked_fill(structured_lowest(magnitude_score(saved).float(), s, structure), 0))
                achieved = float((w == 0).sum()) / w.numel()
                metric = float(evaluate(model))
                rows.append({"layer": name, "params": w.numel(), "sparsity": s, "achieved": achieved,
                             "metric": metric, "drop": baseline - metric})
                if progress:
                    progress(f"{name} @ {s:g}: {metric:.4f} (drop {baseline - metric:+.4f})")
        finally:
            with torch.no_grad():
                w.copy_(saved)
    return {"baseline": baseline, "rows": rows}


def targets_from(result: dict[str, Any], tolerance: float) -> dict[str, float]:
    """``{layer: highest ladder sparsity with drop <= tolerance, or 0.0}`` (in layer order)."""
    out: dict[str, float] = {}
    for r in result["rows"]:
        out.setdefault(r["layer"], 0.0)
        if r["drop"] <= tolerance:
            out[r["layer"]] = max(out[r["layer"]], r["sparsity"])
    return out


def write_sensitivity(result: dict[str, Any], out_dir: str | Path, tolerance: float = 0.01,
                      title: str = "") -> dict[str, Path]:
    """Write ``sensitivity.csv``, ``sensitivity.md`` (table), ``sensitivity.png`` and ``targets.json``
    (``{"targets": {layer: sparsity}, "tolerance", "baseline", "source"}``) under ``out_dir``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    targets = targets_from(result, tolerance)
    paths = {"csv": write_csv(out / "sensitivity.csv", rows, COLUMNS)}
    table = markdown_table(rows, [("layer", "layer", "s"), ("params", "params", "d"), ("sparsity", "sparsity", ".2f"),
                                  ("achieved", "achieved", ".4f"), ("metric", "metric", ".4f"),
                                  ("drop", "drop", "+.4f")])
    head = (f"# Sensitivity{': ' + title if title else ''}\n\nOne layer pruned at a time (magnitude, no "
            f"fine-tuning); baseline metric {result['baseline']:.4f}. Targets: the highest sparsity whose drop is "
            f"<= {tolerance} (`targets.json`, for `prune.targets=`).\n\n")
    tgt = markdown_table([{"layer": k, "target": v} for k, v in targets.items()],
                         [("layer", "layer", "s"), ("target", "target", ".2f")])
    from spruce.io import atomic_write
    paths["md"] = atomic_write(out / "sensitivity.md", head + table + "\n\n## Targets\n\n" + tgt + "\n")
    fig, ax = plt.subplots(figsize=(8, 5))
    for layer in targets:
        pts = [(r["sparsity"], r["drop"]) for r in rows if r["layer"] == layer]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=layer)
    ax.axhline(tolerance, color="grey", linestyle="--", linewidth=1, label=f"tolerance {tolerance}")
    ax.set_xlabel("sparsity of the one pruned layer")
    ax.set_ylabel("metric drop vs baseline")
    ax.set_title(title or "sensitivity (one layer at a time, no fine-tuning)")
    if len(targets) <= 20:
        ax.legend(fontsize=7, ncol=2)
    paths["png"] = write_figure(out / "sensitivity.png", fig, dpi=120, bbox_inches="tight")
    plt.close(fig)
    paths["targets"] = write_json(out / "targets.json", {"targets": targets, "tolerance": tolerance,
                                                         "baseline": result["baseline"], "source": title})
    return paths
