"""The packed CSR weight of the CUDA kernels and its GPU construction from a dense weight.

``dense_to_csr`` runs three kernels (``src/dense_to_csr.cu``): count non-zeros per row, exclusive scan, scatter;
then orders the rows by descending length (the "row swizzle" the SpMM kernels use for load balance).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from spruce.kernels.cuda.launch import INT32_MAX, Backend, Launch, i32, ptr
from spruce.kernels.cuda.validate import check_finite, check_same_device, check_tensor

SCAN_THREADS = 1024


@dataclass
class CudaCsr:
    """A CSR weight ``W`` ``[m, k]`` for the CUDA kernels (all tensors on one device, contiguous).

    values   float32 [nnz]; col_idx int32 [nnz] (each in [0, k), sorted within a row);
    row_ptr  int32 [m + 1] (row_ptr[0] = 0, non-decreasing, row_ptr[m] = nnz);
    row_perm int32 [m]: the rows by descending length (stable), the order in which kernels process them.
    """
    m: int
    k: int
    nnz: int
    values: torch.Tensor
    col_idx: torch.Tensor
    row_ptr: torch.Tensor
    row_perm: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return (self.m, self.k)

    @property
    def device(self) -> torch.device:
        return self.row_ptr.device

    def nbytes(self) -> int:
        """Bytes of values + indices + offsets + row permutation."""
        return sum(t.numel() * t.element_size() for t in (self.values, self.col_idx, self.row_ptr, self.row_perm))

    def to_dense(self) -> torch.Tensor:
        """The dense ``[m, k]`` float32 matrix (for tests and debugging; uses torch, not our kernels)."""
        counts = (self.row_ptr[1:] - self.row_ptr[:-1]).long()
        rows = torch.repeat_interleave(torch.arange(self.m, device=self.device), counts)
        dense = torch.zeros((self.m, self.k), dtype=self.values.dtype, device=self.device)
        dense[rows, self.col_idx.long()] = self.values
        return dense

    def check(self, owner: str, device_type: str, full: bool = False) -> None:
        """Validate types, shapes and device; with ``full`` also the index ranges (synchronises with the device)."""
        m, k, nnz = self.m, self.k, self.nnz
        if not (0 <= m <= INT32_MAX and 0 <= k <= INT32_MAX and 0 <= nnz <= INT32_MAX):
            raise ValueError(f"{owner}: CSR sizes m={m}, k={k}, nnz={nnz} must be in [0, 2^31-1]")
        check_tensor(owner, "values", self.values, device_type, torch.float32, shape=(nnz,))
        check_tensor(owner, "col_idx", self.col_idx, device_type, torch.int32, shape=(nnz,))
        check_tensor(owner, "row_ptr", self.row_ptr, device_type, torch.int32, shape=(m + 1,))
        check_tensor(owner, "row_perm", self.row_perm, device_type, torch.int32, shape=(m,))
        check_same_device(owner, values=self.values, col_idx=self.col_idx, row_ptr=self.row_ptr,
                          row_perm=self.row_perm)
        if not full:
            return
        rp = self.row_ptr.long()
        if int(rp[0]) != 0 or int(rp[-1]) != nnz or bool((rp[1:] < rp[:-1]).any()):
            raise ValueError(f"{owner}: row_ptr must start at 0, end at nnz={nnz} and never decrease")
        if nnz and (int(self.col_idx.min()) < 0 or int(self.col_idx.max()) >= k):
            raise ValueError(f"{owner}: col_idx values must lie in [0, {k})")
        if m and not torch.equal(torch.sort(self.row_perm.long()).values,
                                 torch.arange(m, device=self.row_perm.device)):
            raise ValueError(f"{owner}: row_perm must be a permutation of 0..{m - 1}")

    @classmethod
    def from_parts(cls, values: torch.Tensor, col_idx: torch.Tensor, row_ptr: torch.Tensor, k: int,
                   owner: str = "CudaCsr") -> "CudaCsr":
        """Build from existing CSR arrays (int32 indices), computing the row swizzle; validates index ranges."""
        if not isinstance(row_ptr, torch.Tensor) or row_ptr.dim() != 1 or row_ptr.numel() < 1:
            raise ValueError(f"{owner}: row_ptr must be a 1-D tensor of length m + 1 >= 1")
        m = row_ptr.numel() - 1
        counts = (row_ptr[1:] - row_ptr[:-1]) if m else row_ptr[:0]
        csr = cls(m, int(k), int(values.numel()), values, col_idx, row_ptr, row_swizzle(counts))
        csr.check(owner, row_ptr.device.type, full=True)
        return csr


def row_swizzle(counts: torch.Tensor) -> torch.Tensor:
    """int32 ``[m]``: row indices ordered by descending non-zero count (stable, so ties keep row order)."""
    return torch.argsort(counts.to(torch.int64), descending=True, stable=True).to(torch.int32)


def dense_to_csr_launches(weight: torch.Tensor, counts: torch.Tensor, row_ptr: torch.Tensor) -> list[Launch]:
    """The count and scan launches for ``weight`` ``[m, k]`` (the scatter needs nnz first)."""
    m, k = weight.shape
    src = "dense_to_csr.cu"
    per_block = 128 // 32  # rows per block: one warp per row
    return [
        Launch(src, "dense_count_rows", (-(-m // per_block), 1, 1), (128, 1, 1), 0,
               (i32(m), i32(k), ptr(weight), ptr(counts))),
        Launch(src, "exclusive_scan_rows", (1, 1, 1), (SCAN_THREADS, 1, 1), SCAN_THREADS // 32 * 4,
               (i32(m), ptr(counts), ptr(row_ptr))),
    ]


def dense_to_csr(weight: torch.Tensor, backend: Backend, owner: str = "cuda_csr") -> CudaCsr:
    """Convert a dense float32 ``[m, k]`` weight (on the backend's device) to ``CudaCsr`` with our GPU kernels.

    Synchronises once (to read nnz). ValueError on a wrong dtype/device/rank, a non-contiguous or non-finite
    weight, or ``m * k >= 2^31`` (nnz must fit in int32).
    """
    check_tensor(owner, "weight", weight, backend.device_type, torch.float32, dim=2)
    m, k = weight.shape
    if m * k > INT32_MAX:
        raise ValueError(f"{owner}: weight [{m}, {k}] has {m * k} elements; at most 2^31-1 supported (int32 CSR)")
    check_finite(owner, "weight", weight)
    dev = weight.device
    counts = torch.empty(m, dtype=torch.int32, device=dev)
    row_ptr = torch.zeros(m + 1, dtype=torch.int32, device=dev)
    if m:
        for launch in dense_to_csr_launches(weight, counts, row_ptr):
            backend.run(launch)
    nnz = int(row_ptr[-1])
    col_idx = torch.empty(nnz, dtype=torch.int32, device=dev)
    values = torch.empty(nnz, dtype=torch.float32, device=dev)
    if m and nnz:
        backend.run(Launch("dense_to_csr.cu", "dense_scatter_rows", (-(-m // 4), 1, 1), (128, 1, 1), 0,
                           (i32(m), i32(k), ptr(weight), ptr(row_ptr), ptr(col_idx), ptr(values))))
    return CudaCsr(m, k, nnz, values, col_idx, row_ptr, row_swizzle(counts))
