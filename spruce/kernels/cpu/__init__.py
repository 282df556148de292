"""Spruce's own CPU kernels: a PyTorch C++ extension (AVX2 + FMA, OpenMP) built on first use.

Registers ``spruce_csr``, ``spruce_csr_direct`` and ``spruce_bsr4x1`` (see ``kernels.py``) and the opt-in
sparse x sparse ``spruce_spsp`` (``spsp.py``).
"""
from spruce.kernels.cpu.kernels import SpruceBsr4x1, SpruceCsr, SpruceCsrDirect
from spruce.kernels.cpu.packed import CpuPacked
from spruce.kernels.cpu.spsp import SparseActivation, SpruceSpsp, SpspPacked, to_sparse_activation

__all__ = ["CpuPacked", "SparseActivation", "SpruceBsr4x1", "SpruceCsr", "SpruceCsrDirect", "SpruceSpsp",
           "SpspPacked", "to_sparse_activation"]
