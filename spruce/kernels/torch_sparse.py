"""PyTorch's own sparse layouts as baselines: ``torch_csr`` (int32 indices), ``torch_bsr4``/``torch_bsr16``
(block CSR, int32 indices, weight zero-padded to whole blocks) and ``torch_coo``.

int32 indices matter: torch CSR with the default int64 indices is 4-5x slower on this CPU (see FACTS.md).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from spruce.kernels.dense import check_matmul_call, check_packed, check_prepare, is_tensor_of
from spruce.kernels.registry import Kernel, apply_activation, register


def _epilogue(y: torch.Tensor, bias: torch.Tensor | None, activation: str) -> torch.Tensor:
    if bias is not None:
        y.add_(bias[:, None])
    return apply_activation(y, activation)


def _bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@register
class TorchCsr(Kernel):
    """``torch.sparse_csr`` weight (int32 crow/col indices) times a dense ``[K, N]`` input."""

    name = "torch_csr"
    format = "csr"
    device = "cpu"
    dtypes = (torch.float32, torch.float64)
    description = "torch sparse CSR (int32 indices) @ dense (MKL)"

    def prepare(self, weight: torch.Tensor) -> torch.Tensor:
        """``[M, K]`` dense -> a sparse CSR tensor with int32 indices."""
        check_prepare(self, weight)
        with warnings.catch_warnings():  # "CSR support is in beta" / invariant-check notices
            warnings.simplefilter("ignore", UserWarning)
            csr = weight.detach().contiguous().to_sparse_csr()
            return torch.sparse_csr_tensor(csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32),
                                           csr.values(), size=weight.shape)

    def matmul(self, packed: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """``act(W @ X + bias[:, None])``: ``x`` ``[K, N]`` -> ``[M, N]``."""
        check_packed(self, packed, is_tensor_of(packed, torch.sparse_csr), "a sparse CSR tensor")
        m, k = packed.shape
        check_matmul_call(self, x, m, k, bias, activation, packed.dtype)
        if packed.values().numel() == 0:  # MKL rejects nnz = 0 on some paths
            y = x.new_zeros(m, x.shape[1])
        else:
            y = torch.sparse.mm(packed, x.contiguous())
        return _epilogue(y, bias, activation)

    def weight_bytes(self, packed: torch.Tensor) -> int:
        return _bytes(packed.values(), packed.crow_indices(), packed.col_indices())


@dataclass
class BsrPacked:
    """A BSR weight zero-padded to whole ``block x block`` tiles; ``m, k`` are the original sizes."""

    tensor: torch.Tensor  # sparse BSR [Mp, Kp]
    m: int
    k: int


class _TorchBsr(Kernel):
    """``torch.sparse_bsr`` weight with square blocks; shapes not divisible by the block are zero-padded."""

    format = "bsr"
    device = "cpu"
    dtypes = (torch.float32, torch.float64)
    block: int = 16

    def prepare(self, weight: torch.Tensor) -> BsrPacked:
        """``[M, K]`` dense -> padded BSR with int32 indices."""
        check_prepare(self, weight)
        m, k = weight.shape
        b = self.block
        mp, kp = -(-m // b) * b, -(-k // b) * b
        w = weight.detach()
        if (mp, kp) != (m, k):
            w = torch.nn.functional.pad(w, (0, kp - k, 0, mp - m))
        with warnings.catch_warnings():  # "BSR support is in beta" / invariant-check notices
            warnings.simplefilter("ignore", UserWarning)
            bsr = w.contiguous().to_sparse_bsr((b, b))
            t = torch.sparse_bsr_tensor(bsr.crow_indices().to(torch.int32), bsr.col_indices().to(torch.int32),
                                        bsr.values(), size=(mp, kp))
        return BsrPacked(t, m, k)

    def matmul(self, packed: BsrPacked, x: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """``act(W @ X + bias[:, None])``: ``x`` ``[K, N]`` -> ``[M, N]``."""
        check_packed(self, packed, isinstance(packed, BsrPacked), "a BsrPacked")
        m, k = packed.m, packed.k
        t = packed.tensor
        check_matmul_call(self, x, m, k, bias, activation, t.dtype)
        kp = t.shape[1]
        xx = x.contiguous()
        if kp != k:
            xx = torch.cat([xx, xx.new_zeros(kp - k, x.shape[1])])
        if t.values().numel() == 0 or x.shape[1] == 0:
            y = x.new_zeros(m, x.shape[1])
        else:
            y = (t @ xx)[:m]
            y = y if y.is_contiguous() else y.contiguous()
        return _epilogue(y, bias, activation)

    def weight_bytes(self, packed: BsrPacked) -> int:
        t = packed.tensor
        return _bytes(t.values(), t.crow_indices(), t.col_indices())


@register
class TorchBsr4(_TorchBsr):
    name = "torch_bsr4"
    block = 4
    description = "torch sparse BSR 4x4 blocks (int32 indices) @ dense"


@register
class TorchBsr16(_TorchBsr):
    name = "torch_bsr16"
    block = 16
    description = "torch sparse BSR 16x16 blocks (int32 indices) @ dense"


@register
class TorchCoo(Kernel):
    """``torch.sparse_coo`` (coalesced, int64 indices: COO has no int32 option) times dense."""

    name = "torch_coo"
    format = "coo"
    device = "cpu"
    dtypes = (torch.float32, torch.float64)
    description = "torch sparse COO @ dense"

    def prepare(self, weight: torch.Tensor) -> torch.Tensor:
        """``[M, K]`` dense -> coalesced sparse COO."""
        check_prepare(self, weight)
        return weight.detach().to_sparse().coalesce()

    def matmul(self, packed: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """``act(W @ X + bias[:, None])``: ``x`` ``[K, N]`` -> ``[M, N]``."""
        check_packed(self, packed, is_tensor_of(packed, torch.sparse_coo), "a sparse COO tensor")
        m, k = packed.shape
        check_matmul_call(self, x, m, k, bias, activation, packed.dtype)
        y = torch.sparse.mm(packed, x.contiguous())
        return _epilogue(y, bias, activation)

    def weight_bytes(self, packed: torch.Tensor) -> int:
        return _bytes(packed.values(), packed.indices())
