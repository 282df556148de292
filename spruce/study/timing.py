"""Wall-clock timing of one call: warm-up, then a median over repeats within a time budget.

Calibration uses the minimum instead (the least disturbed call on a shared machine); the sweep reports medians.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def time_call(fn: Callable[[], Any], repeats: int = 5, budget_s: float = 1.0, warmup: int = 1,
              stat: str = "median") -> tuple[float, int]:
    """Median (or ``stat="min"``) seconds of ``fn()`` over up to ``repeats`` timed calls (at least one; stops once ``budget_s`` is spent).

    Returns ``(median_s, calls_timed)``. ``warmup`` untimed calls run first (skipped when a single call already
    takes longer than the budget, so slow kernels cost one warm-up and one timed call).
    """
    if stat not in ("median", "min"):
        raise ValueError(f"stat must be 'median' or 'min', got {stat!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    t_first = 0.0
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        t_first = time.perf_counter() - t0
        if t_first > budget_s:
            break
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats and (not times or spent < budget_s):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
    return (statistics.median(times) if stat == "median" else min(times)), len(times)


def time_pair(fn_ref: Callable[[], Any], fn: Callable[[], Any], repeats: int = 5,
              budget_s: float = 1.0) -> dict[str, float]:
    """Interleaved timing of a reference and a candidate, in seconds.

    Each round times ``fn_ref`` then ``fn`` back to back, so load from other processes on a shared machine hits
    both alike. At least one round; stops after ``repeats`` rounds or once ``budget_s`` is spent. Both functions
    should be warm (called once) before. Returns ``ref_median``, ``fn_median``, ``ratio_median`` (median of the
    per-round ``ref / fn``), ``ref_min``, ``fn_min``, ``ratio_min`` (``ref_min / fn_min``: the undisturbed
    ratio, robust when some calls lose their core to another process) and ``rounds``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    tr, tf, ratios = [], [], []
    spent = 0.0
    while len(tr) < repeats and (not tr or spent < budget_s):
        t0 = time.perf_counter()
        fn_ref()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        tr.append(t1 - t0)
        tf.append(t2 - t1)
        ratios.append((t1 - t0) / max(t2 - t1, 1e-12))
        spent += t2 - t0
    return {"ref_median": statistics.median(tr), "fn_median": statistics.median(tf),
            "ratio_median": statistics.median(ratios), "ref_min": min(tr), "fn_min": min(tf),
            "ratio_min": min(tr) / max(min(tf), 1e-12), "rounds": len(tr)}
