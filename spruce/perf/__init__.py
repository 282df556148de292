"""The performance model: machine profile, calibration, roofline predictions, timing helpers.

Consulted by ``spruce.deploy`` (the planner's shortlist, ``predicted_ms``) and ``spruce.study`` (predicted
crossovers) alike, so it belongs to neither; it imports ``spruce.kernels`` and ``spruce.sparse`` only.

* ``model`` -- pure roofline formulas (``predict_ms``, crossovers, amortisation);
* ``profile`` -- ``MachineProfile`` (plain data) and the H100 data-sheet profile;
* ``calibration`` -- measures a profile on this machine, cached per machine (``load_or_calibrate``);
* ``matrices`` -- the synthetic / ``.smtx`` weights calibration and the study time;
* ``timing`` -- wall-clock helpers (``time_ms`` in ms, ``time_call`` / ``time_pair`` in s);
* ``allocator`` -- ``steady_allocator`` (a fixed glibc mmap threshold before timing).
"""
from __future__ import annotations

from spruce.perf.model import predict_ms
from spruce.perf.profile import MachineProfile, h100_profile

__all__ = ["MachineProfile", "h100_profile", "load_profile", "predict_ms", "profile_cached"]


def load_profile(recalibrate: bool = False, progress: bool = True) -> MachineProfile:
    """This machine's profile for every available CPU kernel (cached; calibrates what is missing, with a progress
    bar unless ``progress=False``; docs/measured/perf-notes.md says how long that took)."""
    from spruce import kernels as registry
    from spruce.perf.calibration import load_or_calibrate

    return load_or_calibrate(registry.kernels(device="cpu"), recalibrate=recalibrate, progress=progress)


def profile_cached(threads: int | None = None) -> bool:
    """Whether this machine's profile for ``threads`` (default: torch's current count) is already cached."""
    from spruce.perf.calibration import profile_path

    return profile_path(threads).is_file()
