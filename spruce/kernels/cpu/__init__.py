"""Spruce's own CPU kernels: a PyTorch C++ extension (AVX2 + FMA, OpenMP) built on first use.

Registers ``spruce_csr``, ``spruce_csr_direct`` and ``spruce_bsr4x1`` (see ``kernels.py``).
"""
from spruce.kernels.cpu.kernels import SpruceBsr4x1, SpruceCsr, SpruceCsrDirect
from spruce.kernels.cpu.packed import CpuPacked

__all__ = ["CpuPacked", "SpruceBsr4x1", "SpruceCsr", "SpruceCsrDirect"]
