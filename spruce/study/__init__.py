"""The sparsity study: when does a pruned layer pay off on a sparse kernel, in which format, after how many
inferences; measured on this machine and predicted by a roofline model (also for an H100).

Entry points: ``run_study(cfg) -> Path`` (``bench.py mode=study`` calls it), ``python -m spruce.study``,
and ``predict_ms(kernel_name, fmt, m, k, n, nnz, row_cov, profile)`` for deploy's planner
(with ``load_profile()`` for this machine's cached constants).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from spruce.study.perf_model import predict_ms
from spruce.study.profile import MachineProfile, h100_profile

__all__ = ["MachineProfile", "h100_profile", "load_profile", "predict_ms", "run_study"]


def run_study(cfg: dict[str, Any] | None = None) -> Path:
    """Run the study (see ``spruce.study.study.run_study``); returns the report directory."""
    from spruce.study.study import run_study as _run

    return _run(cfg)


def load_profile(recalibrate: bool = False, progress: bool = True) -> MachineProfile:
    """This machine's profile for every available CPU kernel (cached; calibrates what is missing: about 4 minutes for
    the nine CPU kernels on 2 cores, 2-60 s each, with a progress bar unless ``progress=False``)."""
    from spruce import kernels as registry
    from spruce.study.machine import load_or_calibrate

    return load_or_calibrate(registry.kernels(device="cpu"), recalibrate=recalibrate, progress=progress)
