"""Log the study's tables, figures and summary to a W&B run (offline by default: ``<report>/wandb/``)."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

TABLES = ("crossovers", "winners", "amortisation", "memory", "real_vs_synthetic", "h100", "rows")
FIGURES = ("speedup_curves", "winners", "amortisation", "real_vs_synthetic", "model_vs_measured", "h100")


def log_report(report_dir: Path, cfg: dict[str, Any], summary: dict[str, Any], mode: str = "offline") -> Path | None:
    """Create one W&B run holding every CSV table, PNG figure and the summary scalars; returns its directory."""
    return log_files(report_dir, cfg, list(TABLES), list(FIGURES), summary, mode=mode)


def log_files(report_dir: Path, cfg: dict[str, Any], tables: list[str], figures: list[str], summary: dict[str, Any],
              mode: str = "offline", job_type: str = "study") -> Path | None:
    """One W&B run holding ``<report_dir>/<table>.csv`` as tables, ``<figure>.png`` as images and the numeric
    summary scalars (the study's other analyses: activation sparsity, the sparse x sparse map)."""
    if mode == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    run = wandb.init(project="spruce-study", job_type=job_type, mode=mode, dir=str(report_dir),
                     config={k: v for k, v in cfg.items() if isinstance(v, (str, int, float, bool, list, type(None)))})
    try:
        for name in tables:
            with (Path(report_dir) / f"{name}.csv").open() as fh:
                data = list(csv.reader(fh))
            if len(data) > 1:
                run.log({f"table/{name}": wandb.Table(columns=data[0], data=data[1:])})
        for name in figures:
            run.log({f"figure/{name}": wandb.Image(str(Path(report_dir) / f"{name}.png"))})
        for k, v in summary.items():
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                run.summary[k] = v
        run_dir = Path(run.dir).parent
    finally:
        run.finish()
    return run_dir
