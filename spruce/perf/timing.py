"""Wall-clock timing helpers shared by deploy's planner/runtime and the study.

Two shapes of result, each with its unit in the name of what it returns:

* ``time_ms(fn, repeats, ...)`` -> every timed run in **milliseconds** (deploy: ``median``/``p90`` of them);
* ``time_call(fn, ...)`` -> ``(median or min seconds, calls)`` and ``time_pair(ref, fn, ...)`` -> interleaved
  reference/candidate **seconds** (calibration and the study sweep). Calibration uses the minimum (the least
  disturbed call on a shared machine); the sweep reports medians.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def _sync(device: str) -> None:
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], repeats: int, warmup: int = 1, device: str = "cpu",
            budget_s: float | None = None) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; return each timed run in milliseconds.

    ``budget_s``: stop repeating once the timed runs took this long (at least one run is always timed), so slow
    candidates on big layers do not dominate planning.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        _sync(device)
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            out.append((time.perf_counter() - t0) * 1e3)
            if budget_s is not None and sum(out) > budget_s * 1e3:
                break
    return out


def median(xs: list[float]) -> float:
    """Median of a non-empty list (ms in, ms out)."""
    return float(statistics.median(xs))


def p90(xs: list[float]) -> float:
    """90th percentile (nearest-rank) of a non-empty list."""
    s = sorted(xs)
    idx = max(0, min(len(s) - 1, math.ceil(0.9 * len(s)) - 1))
    return float(s[idx])


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
