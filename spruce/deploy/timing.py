"""Wall-clock timing of a callable: warm-up excluded, median and p90 in milliseconds."""
from __future__ import annotations

import ctypes
import math
import statistics
import time
from collections.abc import Callable

import torch


#: glibc ``mallopt`` parameter and the fixed threshold ``steady_allocator`` sets (32 MiB: glibc's own ceiling)
M_MMAP_THRESHOLD = -3
STEADY_MMAP_THRESHOLD = 32 * 1024 * 1024
_steady: bool | None = None


def steady_allocator() -> bool:
    """Fix glibc's mmap threshold for this process, so timings do not depend on what ran before them.

    glibc raises its mmap threshold each time a large mmapped block is freed, which changes whether the next
    large allocations are fresh (page-faulting) mappings or reused heap. Measured on this machine: after
    calibrating ``scipy_csr`` (large numpy temporaries) in the same process, ``spruce_csr``'s memory-bound N = 1
    call ran 1.6-1.9x slower relative to the dense GEMV than in a fresh process, and 1.07-1.11x with the
    threshold fixed. Calibration, the study sweep and deploy planning call this first. Returns whether the
    threshold is fixed (False where libc has no ``mallopt``: not glibc); idempotent.
    """
    global _steady
    if _steady is None:
        try:
            # the process's own symbols include libc's: no library search (find_library runs ldconfig)
            _steady = bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD))
        except (OSError, AttributeError):
            _steady = False
    return _steady


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
