"""Spruce's own CUDA kernels (``src/*.cu``, loaded with CuPy ``RawModule``), registered under device ``cuda``.

Importing this module needs neither a GPU nor CuPy: CuPy is imported inside the methods that launch, and
``is_available()`` says why not when either is missing. Kernels take and return torch CUDA tensors.

* ``cuda_csr_spmm``: CSR SpMM with fused bias + ReLU/GELU; subwarp kernel for N <= 16, row-tile kernel above;
  native nn.Linear kernel for batches <= 16. ``prepare`` converts dense -> CSR on the GPU.
* ``cuda_csr_spmm_subwarp`` / ``cuda_csr_spmm_rowtile``: the same with the variant forced (benchmarks, plans).

Pass ``backend=EmuBackend()`` (``spruce.kernels.cuda.emu``) to run the same launchers on CPU tensors with the
fiber emulator, as the tests do.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from spruce.kernels.cuda import spmm
from spruce.kernels.cuda.backend_cupy import CupyBackend, cuda_available
from spruce.kernels.cuda.csr import CudaCsr, dense_to_csr
from spruce.kernels.cuda.launch import Backend
from spruce.kernels.registry import Kernel, register

__all__ = ["CudaCsr", "CudaCsrSpmm", "CudaCsrSpmmRowtile", "CudaCsrSpmmSubwarp", "cuda_available", "dense_to_csr"]


class _CudaCsrKernel(Kernel):
    format = "csr"
    device = "cuda"
    dtypes = (torch.float32,)
    variant: ClassVar[str] = "auto"

    def __init__(self, backend: Backend | None = None):
        self.backend: Backend = backend if backend is not None else CupyBackend()

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return cuda_available()

    def prepare(self, weight: torch.Tensor) -> CudaCsr:
        """Dense float32 ``[M, K]`` CUDA tensor -> ``CudaCsr`` (GPU count/scan/scatter + row swizzle)."""
        if isinstance(weight, torch.Tensor):
            weight = weight.detach()
        return dense_to_csr(weight, self.backend, owner=self.name)

    def matmul(self, packed: Any, x: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """``act(W @ x + bias[:, None])``: ``x`` ``[K, N]`` contiguous float32 -> ``[M, N]``."""
        return spmm.matmul(packed, x, self.backend, bias, activation, self.variant, owner=self.name)

    def linear(self, packed: Any, x: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """``act(x @ W^T + bias)``: ``x`` ``[..., K]`` contiguous float32 -> ``[..., M]``."""
        return spmm.linear(packed, x, self.backend, bias, activation, self.variant, owner=self.name)

    def weight_bytes(self, packed: CudaCsr) -> int:
        if not isinstance(packed, CudaCsr):
            raise ValueError(f"{self.name}: packed weight must be a CudaCsr, got {type(packed).__name__}")
        return packed.nbytes()


@register
class CudaCsrSpmm(_CudaCsrKernel):
    """Own CUDA CSR SpMM, variant chosen per call from N (subwarp for N <= 16, row tile above)."""
    name = "cuda_csr_spmm"
    variant = "auto"
    description = "own CUDA CSR SpMM (CuPy RawModule): subwarp per row for N<=16, row tile for larger N; fused epilogue"


@register
class CudaCsrSpmmSubwarp(_CudaCsrKernel):
    """Own CUDA CSR SpMM, always the subwarp kernel (several lanes per row, shuffle reduction)."""
    name = "cuda_csr_spmm_subwarp"
    variant = "subwarp"
    description = "own CUDA CSR SpMM, subwarp (4-32 lanes) per row, float4 X loads when N%4==0"


@register
class CudaCsrSpmmRowtile(_CudaCsrKernel):
    """Own CUDA CSR SpMM, always the row-tile kernel (threads along N, non-zeros staged in shared memory)."""
    name = "cuda_csr_spmm_rowtile"
    variant = "rowtile"
    description = "own CUDA CSR SpMM, block per row tile, threads along N, weights staged in shared memory"
