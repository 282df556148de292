"""One W&B run per bench run (offline by default): scalars, a per-layer table, the PNGs.

Offline runs land in ``<dir>/wandb/offline-run-*``; read them back with
``wandb leet inspect --summary --json <that dir>`` (scalars live only in the binary ``.wandb`` log).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCALARS = ("latency_ms_median", "latency_ms_p90", "dense_latency_ms_median", "speedup", "peak_memory_bytes",
           "dense_peak_memory_bytes", "weight_bytes", "dense_weight_bytes", "pruned_layers_bytes",
           "pruned_memory_ratio", "accuracy", "dense_accuracy", "sparsity", "layers_sparse", "convert_ms")
TABLE_COLUMNS = ("layer", "kind", "sparsity", "kernel", "format", "dense_ms", "measured_ms", "speedup", "convert_ms",
                 "amortise_inferences", "weight_bytes", "dense_bytes")


def _num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def log_run(out_dir: Path, name: str, config: dict[str, Any], row: dict[str, Any],
            layers: Sequence[dict[str, Any]], images: dict[str, Path], offline: bool = True,
            project: str = "spruce") -> Path:
    """Log one run; returns the W&B run directory (``.../wandb/offline-run-*`` when offline)."""
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb
    run = wandb.init(project=project, name=name, dir=str(out_dir), mode="offline" if offline else "online",
                     config=config, reinit="finish_previous")
    try:
        scalars = {k: _num(row[k]) for k in SCALARS if row.get(k) is not None}
        scalars.update({k: _num(v) for k, v in row.items() if k.startswith("peer_") and isinstance(v, (int, float))})
        scalars["memory_bytes"] = row["peak_memory_bytes"]
        run.log(scalars)
        table = wandb.Table(columns=list(TABLE_COLUMNS),
                            data=[[_num(r.get(c)) if c != "amortise_inferences" or math.isfinite(r.get(c, 0.0))
                                   else None for c in TABLE_COLUMNS] for r in layers])
        media: dict[str, Any] = {"layers": table}
        if row.get("peers"):  # bench peers=[...]: one row per engine
            cols = ["engine", "status", "median_ms", "p90_ms", "max_abs_err", "version", "why"]
            media["peers"] = wandb.Table(columns=cols, data=[[_num(r.get(k)) for k in cols] for r in row["peers"]])
        for key, path in images.items():
            media[f"plots/{key}"] = wandb.Image(str(path))
        run.log(media)
        run.summary.update({**scalars, "model": row["model"], "init": row["init"], "deploy": row["deploy"],
                            "kernels_used": row["kernels_used"]})
        run_dir = Path(run.dir).parent
    finally:
        run.finish()
    return run_dir
