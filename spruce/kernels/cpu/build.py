"""Build (once) and load the ``spruce_cpu`` C++ extension, and choose its instruction set at run time.

The extension is compiled on first use with ``torch.utils.cpp_extension.load`` (ninja, ``-O3 -fopenmp``) from
``src/``: the kernels are compiled twice from the same headers, once for AVX2 + FMA and once for AVX-512
(``#pragma GCC target`` per translation unit), and the bindings for baseline x86-64, so loading the module
never executes an instruction the CPU lacks. It is cached in ``$TORCH_EXTENSIONS_DIR/spruce_cpu`` or
``~/.cache/spruce/torch_extensions/spruce_cpu`` (torch rebuilds it only when a source changes). An ``flock``
serialises builds of parallel processes; the lock dies with its process, so a killed build never blocks the next.

Instruction set: ``isa()`` returns the preferred one the CPU has, or the one forced by ``$SPRUCE_ISA`` (``avx512``, ``avx2``, or ``none`` to disable the extension, leaving PyTorch's kernels); forcing
a set the CPU lacks makes the kernels unavailable with that reason, never an illegal instruction. Preferred:
``avx512`` > ``avx2``, except on AMD family 19h (Zen 3/4), whose 512-bit operations run as two 256-bit halves:
there the SpMM/SpMV kernels prefer ``avx2`` (as fast or faster on 40 of 51 kernel-goal rows measured side by side,
by 1.3-1.8x at N <= 8 and on the SpMV of fc6; ``docs/measured/kernels-2026-12-04/``), while the direct convolution
keeps ``avx512`` (8-10% faster over VGG-16's convolutions, interleaved in one run). ``SPRUCE_ISA`` forces both.
"""
from __future__ import annotations

import fcntl
import functools
import logging
import os
import shutil
from pathlib import Path
from types import ModuleType

import torch

SRC = Path(__file__).with_name("src")
SOURCES = [SRC / name for name in ("bindings.cpp", "pack.cpp", "isa_avx2.cpp", "isa_avx512.cpp")]
NAME = "spruce_cpu"
def _source_digest() -> str:
    """A digest of every file in ``src/``: torch versions a build by its listed sources and flags only, so the
    headers enter through a ``-D`` flag."""
    import hashlib
    h = hashlib.sha256()
    for p in sorted(SRC.iterdir()):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


CFLAGS = ["-O3", "-fopenmp", f"-I{SRC}", f"-DSPRUCE_SRC_DIGEST={_source_digest()}"]
ISAS = ("avx512", "avx2")  # best first
ENV = "SPRUCE_ISA"

_module: ModuleType | None = None
_error: str | None = None


def build_dir() -> Path:
    """Where the compiled extension is cached."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "spruce" / "torch_extensions")
    return Path(root) / NAME


def _cpu_flags() -> set[str] | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@functools.cache
def cpu_isas() -> tuple[str, ...]:
    """The instruction sets of ``ISAS`` this CPU has (from ``/proc/cpuinfo``; torch's capability elsewhere).
    Read once per process: every kernel call consults it."""
    flags = _cpu_flags()
    if flags is None:
        cap = torch.backends.cpu.get_cpu_capability()
        return tuple(i for i in ISAS if (i == "avx2" and cap.startswith(("AVX2", "AVX512"))) or
                     (i == "avx512" and cap.startswith("AVX512")))
    have = []
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma"} <= flags:
        have.append("avx512")
    if {"avx2", "fma"} <= flags:
        have.append("avx2")
    return tuple(have)


FAMILIES = ("spmm", "conv")  # kernel families whose preferred instruction set may differ


@functools.cache
def preferred_isas(family: str = "spmm") -> tuple[str, ...]:
    """``cpu_isas()`` in the order ``isa(family)`` picks from (see the module docstring)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown kernel family {family!r}; allowed: {', '.join(FAMILIES)}")
    have = cpu_isas()
    vendor = cpu_family = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
            elif line.startswith("cpu family"):
                cpu_family = line.split(":", 1)[1].strip()
            if vendor and cpu_family:
                break
    except OSError:
        pass
    if vendor == "AuthenticAMD" and cpu_family == "25" and family == "spmm":
        return tuple(sorted(have, key=lambda i: i != "avx2"))
    return have


def isa(family: str = "spmm") -> str:
    """The instruction set a kernel family runs with now: ``$SPRUCE_ISA`` if set (validated), else the one
    preferred on this CPU. Raises ``RuntimeError`` naming the reason when there is none to use."""
    forced = os.environ.get(ENV, "").strip().lower()
    have = list(cpu_isas())
    if forced in ("", "auto"):
        if not have:
            raise RuntimeError("this CPU has neither AVX-512 nor AVX2 + FMA; the spruce_cpu kernels need one "
                               "(PyTorch's kernels remain)")
        return preferred_isas(family)[0]
    if forced == "none":
        raise RuntimeError(f"{ENV}=none: the spruce_cpu kernels are disabled (PyTorch's kernels remain)")
    if forced not in ISAS:
        raise RuntimeError(f"{ENV}={forced!r} is not an instruction set; allowed: auto, {', '.join(ISAS)}, none")
    if forced not in have:
        raise RuntimeError(f"{ENV}={forced} but this CPU lacks it (it has: {', '.join(have) or 'neither'})")
    return forced


def compiler() -> str | None:
    """The C++ compiler torch would use, if present."""
    cxx = os.environ.get("CXX", "c++")
    return shutil.which(cxx) or shutil.which("g++")


def availability() -> tuple[bool, str]:
    """``(ok, reason)`` without building: an instruction set to use, a compiler (or a cached build), no earlier
    failure. When ok, the reason names the paths in use (``"isa: avx2"``, or ``"isa: avx2 (conv: avx512)"``)."""
    try:
        path = isa()
    except RuntimeError as e:
        return False, str(e)
    if _error is not None:
        return False, _error
    if _module is None and compiler() is None and not any(build_dir().glob(f"{NAME}*.so")):
        return False, "no C++ compiler found (install g++ or set CXX) to build the spruce_cpu extension"
    conv = isa("conv")
    return True, f"isa: {path}" + (f" (conv: {conv})" if conv != path else "")


def load(verbose: bool = False) -> ModuleType:
    """The compiled extension, building it on first use (about a minute). RuntimeError with the cause if it
    cannot be built or no instruction set is usable."""
    global _module, _error
    isa()  # raises with the reason when the kernels cannot run here
    if _module is not None:
        return _module
    if _error is not None:
        raise RuntimeError(_error)
    # importing cpp_extension logs "No CUDA runtime is found" on CPU-only machines: irrelevant here
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.cpp_extension import load as cpp_load
    d = build_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "spruce_build.flock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        try:
            stale = d / "lock"  # torch's own FileBaton; stale only if a builder died, and we hold the flock
            if stale.exists():
                stale.unlink()
            mod = cpp_load(name=NAME, sources=[str(s) for s in SOURCES], extra_cflags=CFLAGS,
                           extra_ldflags=["-fopenmp"], build_directory=str(d), verbose=verbose)
        except Exception as e:  # noqa: BLE001 - recorded and re-raised with the cause
            msg = str(e).strip().splitlines()
            _error = (f"building the spruce_cpu extension failed ({type(e).__name__}: "
                      f"{msg[-1] if msg else ''}); compiler: {compiler() or 'none found'}; build dir: {d}")
            raise RuntimeError(_error) from e
        finally:
            fcntl.flock(lockf, fcntl.LOCK_UN)
    _module = mod
    return mod


def l2_panel_bytes() -> int:
    """Bytes of X one thread keeps hot in L2 (the extension's own constant, so Python never copies it)."""
    return int(load().l2_panel_bytes())
