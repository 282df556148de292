"""The sparsity study: when does a pruned layer pay off on a sparse kernel, in which format, after how many
inferences; measured on this machine and predicted by the performance model (``spruce.perf``, also for an H100).

Entry points: ``run_study(cfg) -> Path`` (``bench.py mode=study`` calls it) and ``python -m spruce.study``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["run_study"]


def run_study(cfg: dict[str, Any] | None = None) -> Path:
    """Run the study (see ``spruce.study.study.run_study``); returns the report directory."""
    from spruce.study.study import run_study as _run

    return _run(cfg)
