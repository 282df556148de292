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

__all__ = ["MachineProfile", "cached_profile", "h100_profile", "has_kernel", "load_profile", "predict_ms",
           "profile_cached"]


def load_profile(recalibrate: bool = False, progress: bool = True) -> MachineProfile:
    """This machine's profile for every available CPU kernel (cached; calibrates what is missing, with a progress
    bar unless ``progress=False``; docs/measured/perf-notes.md says how long that took)."""
    from spruce import kernels as registry
    from spruce.perf.calibration import load_or_calibrate

    return load_or_calibrate(registry.kernels(device="cpu"), recalibrate=recalibrate, progress=progress)


def cached_profile(threads: int | None = None) -> MachineProfile | None:
    """This machine's cached profile for ``threads`` as it is (never calibrates, so it may lack kernels calibrated
    after it was written; ``has_kernel`` says which it has), or None when nothing is cached. ValueError on a
    corrupt cache file."""
    import json

    from spruce.perf.calibration import profile_path
    path = profile_path(threads)
    if not path.is_file():
        return None
    try:
        return MachineProfile.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"corrupt machine profile {path} ({e}); delete it or run python -m spruce.perf") from None


def has_kernel(profile: MachineProfile, kernel: str) -> bool:
    """Whether ``profile`` holds calibrated numbers for ``kernel`` (the test ``calibrate`` uses for "missing")."""
    return kernel in profile.sparse_eff or kernel in profile.overhead_us


def profile_cached(threads: int | None = None) -> bool:
    """Whether this machine's profile for ``threads`` (default: torch's current count) is already cached."""
    from spruce.perf.calibration import profile_path

    return profile_path(threads).is_file()
