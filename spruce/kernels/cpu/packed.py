"""The packed weight of the spruce_cpu kernels (CSR, or BSR with R x 1 blocks)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CpuPacked:
    """A weight ``[m, k]`` packed for the C++ kernels.

    ``rowptr`` int32 ``[ceil(m / block_rows) + 1]``; ``cols`` int32, or int16 holding uint16 column indices
    when ``k <= 65536``, ``[nblocks]``; ``vals`` float32 ``[nblocks * block_rows]`` (block_rows = 1: plain CSR;
    otherwise each block stores ``block_rows`` consecutive rows of one column, zero-filled).
    """

    rowptr: torch.Tensor
    cols: torch.Tensor
    vals: torch.Tensor
    m: int
    k: int
    block_rows: int = 1

    @property
    def nblocks(self) -> int:
        """Stored blocks (the number of nonzeros for CSR)."""
        return int(self.cols.numel())

    @property
    def nbytes(self) -> int:
        """Bytes of values + indices + offsets."""
        return sum(t.numel() * t.element_size() for t in (self.rowptr, self.cols, self.vals))
