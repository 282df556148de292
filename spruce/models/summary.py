"""The one-screen end-of-run summary: a rich table on the terminal, plus ``summary.json`` and ``summary.md``."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def grouped_sparsity(sparsity: dict[str, float], max_rows: int = 16) -> list[tuple[str, str]]:
    """Rows ``(layer, sparsity)``; beyond ``max_rows`` layers, layers that differ only in block numbers are
    grouped (``encoder.layer.*.intermediate.dense``) and shown as a min-max range."""
    layers = [(k, v) for k, v in sparsity.items() if k != "overall"]
    if len(layers) <= max_rows:
        return [(k, _pct(v)) for k, v in layers]
    groups: dict[str, list[float]] = {}
    for k, v in layers:
        groups.setdefault(re.sub(r"\.\d+\.", ".*.", k), []).append(v)
    rows = []
    for k, vs in groups.items():
        lo, hi = min(vs), max(vs)
        rows.append((f"{k} (x{len(vs)})", _pct(lo) if lo == hi else f"{_pct(lo)} - {_pct(hi)}"))
    return rows


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """``(label, value)`` rows of the headline numbers."""
    dense_epoch = summary.get("dense_epoch")
    return [
        ("run", str(summary["run_name"])),
        ("model", f"{summary['model']} ({summary['init']}), {summary['params']:,} params"),
        ("data", f"{summary['data']} ({summary['num_classes']} classes)"),
        ("pruning", summary["prune"]),
        ("accuracy before training", _pct(summary.get("val_acc_initial"))),
        ("accuracy before pruning (dense" + (f", epoch {dense_epoch})" if dense_epoch is not None else ")"),
         _pct(summary.get("val_acc_dense"))),
        ("accuracy final", _pct(summary.get("val_acc"))),
        ("sparsity overall (prunable layers)", _pct(summary["sparsity"].get("overall"))),
        ("steps / epochs", f"{summary['global_step']} / {summary['epochs']}"),
        ("checkpoint", str(summary["checkpoint"])),
        ("W&B run dir", str(summary.get("wandb_dir") or "-")),
    ]


def print_summary(summary: dict[str, Any]) -> None:
    """Print the summary as two rich tables (headline numbers, per-layer sparsity)."""
    from rich.console import Console
    from rich.table import Table

    head = Table(title="Spruce training summary", show_header=False)
    head.add_column("what", style="bold")
    head.add_column("value")
    for label, value in summary_rows(summary):
        head.add_row(label, value)
    layers = Table(title="sparsity per prunable layer")
    layers.add_column("layer")
    layers.add_column("sparsity", justify="right")
    for name, value in grouped_sparsity(summary["sparsity"]):
        layers.add_row(name, value)
    console = Console()
    console.print(head)
    console.print(layers)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_summary(summary: dict[str, Any], run_dir: Path) -> None:
    """Write ``summary.json`` and ``summary.md`` (markdown tables) into ``run_dir``."""
    _atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    lines = ["| what | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in summary_rows(summary)]
    lines += ["", "| layer | sparsity |", "|---|---:|"]
    lines += [f"| {a} | {b} |" for a, b in grouped_sparsity(summary["sparsity"], max_rows=10_000)]
    _atomic_write(run_dir / "summary.md", "\n".join(lines) + "\n")
