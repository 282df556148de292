"""A fixed glibc mmap threshold, so timings in one process do not depend on what ran before them."""
from __future__ import annotations

import ctypes

#: glibc ``mallopt`` parameter and the fixed threshold ``steady_allocator`` sets (32 MiB: glibc's own ceiling)
M_MMAP_THRESHOLD = -3
STEADY_MMAP_THRESHOLD = 32 * 1024 * 1024
_steady: bool | None = None


def steady_allocator() -> bool:
    """Fix glibc's mmap threshold for this process, so timings do not depend on what ran before them.

    glibc raises its mmap threshold each time a large mmapped block is freed, which changes whether the next
    large allocations are fresh (page-faulting) mappings or reused heap: one kernel's large temporaries then
    change the next kernel's allocation costs (what was measured: docs/measured/perf-notes.md).
    Calibration, the study sweep and deploy planning call this first. Returns whether the
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
