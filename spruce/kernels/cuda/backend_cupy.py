"""The GPU backend: CuPy ``RawModule`` over our ``.cu`` sources, compiled once per (device, source), launched on
PyTorch's current stream with raw device pointers (zero copy; the tensors stay owned by PyTorch)."""
from __future__ import annotations

import threading

import torch

from spruce.kernels.cuda.launch import Launch
from spruce.kernels.cuda.nvrtc import COMPILE_OPTIONS
from spruce.kernels.cuda.sources import KERNELS, expanded_source

_lock = threading.Lock()
_modules: dict[tuple[int, str], object] = {}


def cuda_available() -> tuple[bool, str]:
    """``(True, "")`` when a CUDA GPU and CuPy are usable, else ``(False, reason)``. Imports CuPy only if a GPU exists."""
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False)"
    try:
        import cupy
    except Exception as e:  # noqa: BLE001 - any import failure means unavailable, and we say why
        return False, f"CuPy is not importable ({type(e).__name__}: {e}); install cupy-cuda13x"
    try:
        if not cupy.cuda.is_available():
            return False, "CuPy sees no CUDA device"
    except Exception as e:  # noqa: BLE001
        return False, f"CuPy cannot query the CUDA runtime ({type(e).__name__}: {e})"
    return True, ""


def module_for(device_index: int, source: str):
    """The compiled ``cupy.RawModule`` of ``source`` on a device (cached; compiled with NVRTC on first use)."""
    import cupy

    key = (device_index, source)
    with _lock:
        mod = _modules.get(key)
        if mod is None:
            with cupy.cuda.Device(device_index):
                mod = cupy.RawModule(code=expanded_source(source), options=COMPILE_OPTIONS,
                                     name_expressions=list(KERNELS[source]))
                mod.compile()
            _modules[key] = mod
        return mod


class CupyBackend:
    """Runs launches on CUDA tensors through CuPy."""

    device_type = "cuda"

    def run(self, launch: Launch) -> None:
        import cupy
        import numpy as np

        tensors = [a.value for a in launch.args if a.kind == "ptr" and a.value is not None]
        if not tensors:
            raise ValueError(f"{launch.kernel}: a launch needs at least one tensor argument")
        device = tensors[0].device
        if any(t.device != device for t in tensors):
            raise ValueError(f"{launch.kernel}: tensor arguments on several devices")
        args = []
        for a in launch.args:
            if a.kind == "ptr":
                args.append(np.uint64(0 if a.value is None else a.value.data_ptr()))
            elif a.kind == "i32":
                args.append(np.int32(a.value))
            elif a.kind == "f32":
                args.append(np.float32(a.value))
            else:
                raise ValueError(f"unknown argument kind {a.kind!r}")
        fn = module_for(device.index, launch.source).get_function(launch.kernel)
        stream = torch.cuda.current_stream(device)
        with cupy.cuda.Device(device.index), cupy.cuda.ExternalStream(stream.cuda_stream):
            fn(launch.grid, launch.block, tuple(args), shared_mem=launch.smem)
