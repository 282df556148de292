"""Peak process memory: the resident-set high-water mark (Linux ``VmHWM``), resettable between phases.

psutil is not a dependency; ``/proc/self/status`` gives ``VmHWM`` and writing ``5`` to ``/proc/self/clear_refs``
resets it (Linux >= 4.0). Elsewhere ``resource.getrusage`` ``ru_maxrss`` (not resettable) is the fallback. On a GPU
the peak is ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import resource
import sys

import torch


def reset_peak(device: str = "cpu") -> bool:
    """Reset the high-water mark; True where the platform allows it (else the peak counts from process start)."""
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes(device: str = "cpu") -> int:
    """Peak memory in bytes since the last :func:`reset_peak` (GPU: allocated tensors; CPU: process RSS)."""
    if device == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)
