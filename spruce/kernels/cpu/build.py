"""Build (once) and load the ``spruce_cpu`` C++ extension.

The extension is compiled on first use with ``torch.utils.cpp_extension.load`` (ninja, ``-O3 -mavx2 -mfma
-fopenmp``) into ``$TORCH_EXTENSIONS_DIR/spruce_cpu`` or ``~/.cache/spruce/torch_extensions/spruce_cpu`` and
reused afterwards (torch rebuilds it only when the source changes). An ``flock`` serialises builds of
parallel processes (pytest-xdist workers, several engineers); the lock dies with its process, so a killed
build never blocks the next one.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("spruce_cpu.cpp")
NAME = "spruce_cpu"
CFLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp"]

_module: ModuleType | None = None
_error: str | None = None


def build_dir() -> Path:
    """Where the compiled extension is cached."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "spruce" / "torch_extensions")
    return Path(root) / NAME


def cpu_has_avx2_fma() -> tuple[bool, str]:
    """Whether this CPU has AVX2 and FMA (the extension's instruction set)."""
    cap = torch.backends.cpu.get_cpu_capability()
    if cap not in ("AVX2", "AVX512", "ZVECTOR") and not cap.startswith("AVX512"):
        return False, f"CPU capability is {cap!r}; the spruce_cpu kernels need AVX2 + FMA"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True, ""
    if " fma" not in flags or " avx2" not in flags:
        return False, "this CPU lacks AVX2 or FMA (see /proc/cpuinfo); the spruce_cpu kernels need both"
    return True, ""


def compiler() -> str | None:
    """The C++ compiler torch would use, if present."""
    cxx = os.environ.get("CXX", "c++")
    return shutil.which(cxx) or shutil.which("g++")


def availability() -> tuple[bool, str]:
    """``(ok, reason)`` without building: CPU features, a compiler (or a cached build), no earlier failure."""
    ok, why = cpu_has_avx2_fma()
    if not ok:
        return ok, why
    if _error is not None:
        return False, _error
    if _module is None and compiler() is None and not any(build_dir().glob(f"{NAME}*.so")):
        return False, "no C++ compiler found (install g++ or set CXX) to build the spruce_cpu extension"
    return True, ""


def load(verbose: bool = False) -> ModuleType:
    """The compiled extension, building it on first use (about a minute). RuntimeError with the cause if it
    cannot be built."""
    global _module, _error
    if _module is not None:
        return _module
    if _error is not None:
        raise RuntimeError(_error)
    ok, why = cpu_has_avx2_fma()
    if not ok:
        raise RuntimeError(why)
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
            mod = cpp_load(name=NAME, sources=[str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
                           build_directory=str(d), verbose=verbose)
        except Exception as e:  # noqa: BLE001 - recorded and re-raised with the cause
            msg = str(e).strip().splitlines()
            _error = (f"building the spruce_cpu extension failed ({type(e).__name__}: "
                      f"{msg[-1] if msg else ''}); compiler: {compiler() or 'none found'}; build dir: {d}")
            raise RuntimeError(_error) from e
        finally:
            fcntl.flock(lockf, fcntl.LOCK_UN)
    if not mod.cpu_supported():
        _error = "the CPU lacks AVX2/FMA at run time; spruce_cpu kernels unavailable"
        raise RuntimeError(_error)
    _module = mod
    return mod
