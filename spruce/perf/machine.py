"""Facts about this machine that calibration and the entry points need: CPU model, cache size, usable cores."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU model string (``/proc/cpuinfo``), or the platform's processor name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"


def llc_bytes() -> float:
    """Last-level cache size in bytes from sysfs (32 MiB, a typical server LLC, when sysfs does not say)."""
    best = 0
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in sorted(base.glob("index*")) if base.exists() else []:
        try:
            txt = (idx / "size").read_text().strip()
        except OSError:
            continue
        mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(txt[-1:], 1)
        num = txt[:-1] if txt[-1:] in "KMG" else txt
        if num.isdigit():
            best = max(best, int(num) * mult)
    return float(best or 32 * 1024 ** 2)


def l2_bytes() -> float:
    """Per-core level-2 cache size in bytes from sysfs (``index*/level`` = 2, unified or data), 0 when sysfs does not
    say (the model's L2 term is then off)."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in sorted(base.glob("index*")) if base.exists() else []:
        try:
            level = (idx / "level").read_text().strip()
            kind = (idx / "type").read_text().strip()
            txt = (idx / "size").read_text().strip()
        except OSError:
            continue
        if level != "2" or kind == "Instruction":
            continue
        mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(txt[-1:], 1)
        num = txt[:-1] if txt[-1:] in "KMG" else txt
        if num.isdigit():
            return float(int(num) * mult)
    return 0.0


def cache_dir() -> Path:
    """``$SPRUCE_CACHE`` or ``~/.cache/spruce``."""
    return Path(os.environ.get("SPRUCE_CACHE", Path.home() / ".cache" / "spruce"))


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def resolve_threads(threads: int | None) -> int:
    """``threads``, or every core this process may run on when None (the configs' ``threads: null``)."""
    return int(threads) if threads else available_cores()
