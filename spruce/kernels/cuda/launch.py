"""A kernel launch as plain data, and the argument kinds both backends understand.

Launchers (``spmm.py``, ``csr.py``) build ``Launch`` objects; a backend runs them: ``CupyBackend`` on a GPU
(CuPy ``RawModule``), ``EmuBackend`` on the CPU (the fiber emulator). The launch parameters are therefore computed
by the same Python code on both, and CI tests that code without a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

INT32_MAX = 2**31 - 1
ACT_CODES = {"none": 0, "relu": 1, "gelu": 2}  # must match SPRUCE_ACT_* in src/common.cuh


@dataclass(frozen=True)
class Arg:
    """One kernel argument: ``kind`` is ``"ptr"`` (a tensor or None for nullptr), ``"i32"`` or ``"f32"``."""
    kind: str
    value: object


def ptr(t: torch.Tensor | None) -> Arg:
    """A pointer argument (the tensor's data; None is nullptr)."""
    return Arg("ptr", t)


def i32(v: int) -> Arg:
    """An int32 argument; ValueError outside the int32 range."""
    if not -2**31 <= int(v) <= INT32_MAX:
        raise ValueError(f"kernel argument {v} does not fit in int32")
    return Arg("i32", int(v))


@dataclass(frozen=True)
class Launch:
    """One kernel launch: source file, kernel name expression, grid/block (x, y, z), dynamic shared memory bytes."""
    source: str
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    smem: int
    args: tuple[Arg, ...]

    def __post_init__(self) -> None:
        gx, gy, gz = self.grid
        if min(self.grid) < 1 or gx > INT32_MAX or gy > 65535 or gz > 65535:
            raise ValueError(f"{self.kernel}: grid {self.grid} outside CUDA limits (x <= 2^31-1, y, z <= 65535, "
                             f"all >= 1)")
        threads = self.block[0] * self.block[1] * self.block[2]
        if min(self.block) < 1 or threads > 1024:
            raise ValueError(f"{self.kernel}: block {self.block} outside CUDA limits (1..1024 threads)")
        if not 0 <= self.smem <= 48 * 1024:
            raise ValueError(f"{self.kernel}: dynamic shared memory {self.smem} B outside 0..48 KiB")


class Backend(Protocol):
    """Runs launches on tensors of ``device_type``."""
    device_type: str

    def run(self, launch: Launch) -> None: ...
