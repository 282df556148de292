"""The CPU emulator backend: build ``emu/harness.cpp`` + the ``.cu`` sources with g++ and run launches on CPU tensors.

Every CUDA thread is a fiber (see ``emu/cuda_emu.h``); blocks run one after another. Used by the tests to execute
each kernel's logic from the same source NVRTC compiles. The library is built once per (sources, defines, compiler)
into a cache directory (``$SPRUCE_CACHE_DIR`` or ``~/.cache/spruce``), written to a temporary name and renamed.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from spruce.kernels.cuda.launch import Launch
from spruce.kernels.cuda.sources import EMU_DIR, KERNELS, SRC_DIR, TEST_KERNELS

CXX_FLAGS = ("-std=c++17", "-O1", "-fPIC", "-shared", "-fno-strict-aliasing", "-Wno-unknown-pragmas", "-Wall",
             "-Werror", "-fvisibility=hidden", "-fno-gnu-unique")
ORDERS = {"forward": 0, "reverse": 1, "random": 2}
GUARD = 64  # elements of poison before and after every buffer handed to a kernel

_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL] = {}


def _cache_dir() -> Path:
    root = os.environ.get("SPRUCE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "spruce")
    return Path(root) / "cuda_emu"


def _fingerprint(defines: tuple[str, ...], cxx: str) -> str:  # sources, flags, compiler: what the .so depends on
    h = hashlib.sha256()
    for p in sorted(SRC_DIR.iterdir()) + sorted(EMU_DIR.iterdir()):
        if p.is_file():
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    h.update(repr((sorted(KERNELS.items()), sorted(TEST_KERNELS.items()), defines, CXX_FLAGS, cxx)).encode())
    return h.hexdigest()[:20]


def build_emulator(defines: tuple[str, ...] = ()) -> Path:
    """Build (or find in the cache) the emulator library for the given ``-D`` defines; returns its path.

    Raises RuntimeError with the compiler output when g++ fails (the ``.cu`` sources must compile as C++
    against ``cuda_emu.h`` with ``-Wall -Werror``).
    """
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        raise RuntimeError("the CPU emulator needs a C++ compiler: g++ not found (set CXX)")
    key = _fingerprint(tuple(defines), cxx)
    out = _cache_dir() / key / "libspruce_cuda_emu.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmpd = Path(tmp)
        sources = {**KERNELS, **TEST_KERNELS}  # test-only kernels ride along: a few more symbols, one build
        (tmpd / "spruce_emu_sources.inc").write_text("".join(f'#include "{s}"\n' for s in sources))
        (tmpd / "spruce_emu_entries.inc").write_text(
            "".join(f"    SPRUCE_EMU_ENTRY({n}),\n" for names in sources.values() for n in names))
        lib = tmpd / "lib.so"
        cmd = [cxx, *CXX_FLAGS, "-include", str(EMU_DIR / "cuda_emu.h"), "-x", "c++", "-I", str(tmpd),
               "-I", str(SRC_DIR), "-I", str(EMU_DIR), *(f"-D{d}" for d in defines),
               str(EMU_DIR / "harness.cpp"), "-o", str(lib)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"building the CUDA emulator failed:\n{' '.join(cmd)}\n{res.stderr[-8000:]}")
        os.replace(lib, out)
    return out


def load_emulator(defines: tuple[str, ...] = ()) -> ctypes.CDLL:
    """The loaded emulator library for ``defines`` (built on first use)."""
    path = str(build_emulator(tuple(defines)))
    with _lock:
        if path not in _libs:
            lib = ctypes.CDLL(path)
            lib.spruce_emu_launch.restype = ctypes.c_int
            lib.spruce_emu_launch.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint),
                                              ctypes.POINTER(ctypes.c_uint), ctypes.c_ulonglong,
                                              ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_ulonglong,
                                              ctypes.c_char_p, ctypes.c_int]
            lib.spruce_emu_kernel_name.restype = ctypes.c_char_p
            _libs[path] = lib
        return _libs[path]


class EmulatorError(RuntimeError):
    """The emulator rejected a launch or detected a fault (divergent warp op, deadlock, guard overwritten...)."""


def _poison(dtype: torch.dtype) -> float | int:
    return float("nan") if dtype.is_floating_point else 0  # 0 for indices: a poisoned index must not crash


class EmuBackend:
    """Runs launches on CPU tensors with the fiber emulator.

    ``order``: in which order the fibers of a block run between synchronisation points (``forward``, ``reverse``,
    ``random``); running a test under two orders exposes missing barriers. ``guard``: copy every tensor into a
    buffer with poisoned margins (NaN / 0) and fail when a kernel wrote into them.
    """

    device_type = "cpu"

    def __init__(self, order: str = "reverse", seed: int = 0, defines: tuple[str, ...] = (), guard: bool = True):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.order, self.seed, self.guard = order, seed, guard
        self.lib = load_emulator(tuple(defines))
        self.launches: list[Launch] = []  # every launch run, for tests that check the launch plan

    def run(self, launch: Launch) -> None:
        keep: list[object] = []
        ptrs: list[int] = []
        copies: list[tuple[torch.Tensor, torch.Tensor]] = []
        for a in launch.args:
            if a.kind == "ptr":
                t = a.value
                if t is None:
                    val: ctypes._SimpleCData = ctypes.c_void_p(None)
                else:
                    if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or not t.is_contiguous():
                        raise ValueError(f"{launch.kernel}: emulator pointer arguments must be contiguous CPU "
                                         f"tensors")
                    if self.guard:
                        buf = torch.full((t.numel() + 2 * GUARD,), _poison(t.dtype), dtype=t.dtype)
                        buf[GUARD:GUARD + t.numel()] = t.reshape(-1)
                        copies.append((t, buf))
                        t = buf[GUARD:]
                    val = ctypes.c_void_p(t.data_ptr())
            elif a.kind == "i32":
                val = ctypes.c_int32(a.value)
            elif a.kind == "f32":
                val = ctypes.c_float(a.value)
            else:
                raise ValueError(f"unknown argument kind {a.kind!r}")
            keep.append(val)
            ptrs.append(ctypes.addressof(val))
        args = (ctypes.c_void_p * max(1, len(ptrs)))(*ptrs)
        grid = (ctypes.c_uint * 3)(*launch.grid)
        block = (ctypes.c_uint * 3)(*launch.block)
        err = ctypes.create_string_buffer(2048)
        rc = self.lib.spruce_emu_launch(launch.kernel.replace(" ", "").encode(), grid, block, launch.smem, args,
                                        ORDERS[self.order], self.seed, err, len(err))
        if rc != 0:
            raise EmulatorError(err.value.decode())
        for t, buf in copies:
            n = t.numel()
            head, tail = buf[:GUARD], buf[GUARD + n:]
            for part in (head, tail):
                ok = part.isnan().all() if t.dtype.is_floating_point else (part == 0).all()
                if not bool(ok):
                    raise EmulatorError(f"{launch.kernel}: a kernel wrote outside a buffer of {n} elements")
            t.copy_(buf[GUARD:GUARD + n].view_as(t))
        self.launches.append(launch)
