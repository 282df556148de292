"""Sparse matrix containers (CSR, COO, BSR) and exact conversions to and from dense ``[M, K]`` tensors.

All containers hold torch tensors on the CPU (or any device the caller moves them to) with **int32**
structure arrays: int32 indices are what the fast CPU/GPU kernels take (torch CSR with int64 indices is 4-5x
slower on this machine, see FACTS.md). Values keep the dtype of the dense tensor they came from, so
``csr_to_dense(dense_to_csr(w))`` is bit-identical to ``w`` (including ``-0.0`` where it is stored).

Which entries are stored: by default the nonzeros of the dense tensor; pass ``mask`` (bool ``[M, K]``) to store
exactly the entries where the mask is True (explicit zeros included), which is what a pruned layer's
``weight_mask`` describes.

``nbytes`` of every container counts values + indices + offsets, the memory a kernel's packed weight occupies.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

INDEX_DTYPE = torch.int32


def _as_2d(dense: torch.Tensor, what: str = "dense") -> torch.Tensor:
    if not isinstance(dense, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(dense).__name__}")
    if dense.dim() != 2:
        raise ValueError(f"{what} must be 2-D [M, K], got shape {tuple(dense.shape)}")
    return dense


def _structure_mask(dense: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return dense != 0
    if mask.shape != dense.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from dense shape {tuple(dense.shape)}")
    return mask.to(torch.bool)


def _check_index_range(m: int, k: int, nnz: int) -> None:
    limit = torch.iinfo(INDEX_DTYPE).max
    if max(m, k, nnz) > limit:
        raise ValueError(f"matrix {m}x{k} with nnz={nnz} exceeds int32 indexing (max {limit})")


@dataclass
class CSR:
    """Compressed sparse rows.

    ``indptr`` int32 ``[M + 1]`` (row offsets, ``indptr[0] == 0``, non-decreasing, ``indptr[M] == nnz``),
    ``indices`` int32 ``[nnz]`` (column of each stored entry, sorted within a row), ``values`` ``[nnz]``
    (any float dtype), ``shape`` ``(M, K)``.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(self.indices.numel())

    @property
    def density(self) -> float:
        m, k = self.shape
        return self.nnz / (m * k) if m * k else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of values + column indices + row offsets."""
        return _tensor_bytes(self.values) + _tensor_bytes(self.indices) + _tensor_bytes(self.indptr)

    def row_lengths(self) -> torch.Tensor:
        """Stored entries per row, int64 ``[M]``."""
        return (self.indptr[1:] - self.indptr[:-1]).to(torch.int64)

    def validate(self) -> None:
        """Raise ValueError unless the arrays describe a well-formed ``M x K`` CSR matrix."""
        m, k = self.shape
        if self.indptr.dim() != 1 or self.indptr.numel() != m + 1:
            raise ValueError(f"CSR indptr must have M+1={m + 1} entries, got {tuple(self.indptr.shape)}")
        if self.indices.dim() != 1 or self.values.shape[:1] != self.indices.shape:
            raise ValueError(f"CSR indices {tuple(self.indices.shape)} and values {tuple(self.values.shape)} "
                             "must both be [nnz]")
        if int(self.indptr[0]) != 0 or int(self.indptr[-1]) != self.nnz:
            raise ValueError(f"CSR indptr must run from 0 to nnz={self.nnz}, got {int(self.indptr[0])}.."
                             f"{int(self.indptr[-1])}")
        if m and bool((self.indptr[1:] < self.indptr[:-1]).any()):
            raise ValueError("CSR indptr is not non-decreasing")
        if self.nnz and (int(self.indices.min()) < 0 or int(self.indices.max()) >= k):
            raise ValueError(f"CSR column index out of range [0, {k}): min {int(self.indices.min())}, "
                             f"max {int(self.indices.max())}")

    def to_dense(self) -> torch.Tensor:
        return csr_to_dense(self)

    def to_torch(self) -> torch.Tensor:
        """A ``torch.sparse_csr_tensor`` sharing these int32 arrays."""
        with warnings.catch_warnings():  # "sparse CSR support is in beta" on every call
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.indptr, self.indices, self.values, self.shape,
                                           check_invariants=False)

    def to(self, device: torch.device | str) -> "CSR":
        return CSR(self.indptr.to(device), self.indices.to(device), self.values.to(device), self.shape)


@dataclass
class COO:
    """Coordinate list: ``rows``, ``cols`` int32 ``[nnz]`` (row-major order), ``values`` ``[nnz]``,
    ``shape`` ``(M, K)``."""

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(self.rows.numel())

    @property
    def nbytes(self) -> int:
        """Bytes of values + row indices + column indices."""
        return _tensor_bytes(self.values) + _tensor_bytes(self.rows) + _tensor_bytes(self.cols)

    def to_dense(self) -> torch.Tensor:
        return coo_to_dense(self)


@dataclass
class BSR:
    """Block compressed rows with ``block = (bh, bw)``.

    The matrix ``M x K`` is tiled by ``ceil(M/bh) x ceil(K/bw)`` blocks (the last block row/column is
    zero-padded; ``shape`` stays the unpadded ``(M, K)``). ``indptr`` int32 ``[ceil(M/bh) + 1]``, ``indices``
    int32 ``[nblocks]`` (block column), ``values`` ``[nblocks, bh, bw]``. A block is stored when any of its
    entries is stored in the source structure.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]
    block: tuple[int, int]

    @property
    def nblocks(self) -> int:
        return int(self.indices.numel())

    @property
    def padded_shape(self) -> tuple[int, int]:
        (m, k), (bh, bw) = self.shape, self.block
        return (-(-m // bh) * bh, -(-k // bw) * bw)

    @property
    def nbytes(self) -> int:
        """Bytes of block values + block column indices + block row offsets."""
        return _tensor_bytes(self.values) + _tensor_bytes(self.indices) + _tensor_bytes(self.indptr)

    def to_dense(self) -> torch.Tensor:
        return bsr_to_dense(self)

    def to_torch(self) -> torch.Tensor:
        """A ``torch.sparse_bsr_tensor`` of the *padded* shape (torch needs whole blocks)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_bsr_tensor(self.indptr, self.indices, self.values, self.padded_shape,
                                           check_invariants=False)


def _tensor_bytes(t: torch.Tensor) -> int:
    return int(t.numel() * t.element_size())


def dense_bytes(shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> int:
    """Bytes of a dense ``M x K`` matrix of ``dtype`` (the baseline of memory comparisons)."""
    return int(shape[0] * shape[1] * torch.empty((), dtype=dtype).element_size())


# ---- CSR ------------------------------------------------------------------------------------------------
def dense_to_csr(dense: torch.Tensor, mask: torch.Tensor | None = None) -> CSR:
    """Pack a dense ``[M, K]`` tensor as CSR (int32 structure, values in ``dense.dtype``).

    Stores the nonzeros, or exactly the entries where ``mask`` (bool ``[M, K]``) is True. Columns are sorted
    within each row.
    """
    dense = _as_2d(dense)
    m, k = dense.shape
    keep = _structure_mask(dense, mask)
    rows, cols = keep.nonzero(as_tuple=True)  # row-major order: sorted by row, then column
    _check_index_range(m, k, rows.numel())
    counts = torch.bincount(rows, minlength=m) if m else torch.zeros(0, dtype=torch.int64)
    indptr = torch.zeros(m + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(counts, 0)
    return CSR(indptr.to(INDEX_DTYPE), cols.to(INDEX_DTYPE), dense[rows, cols].clone(), (int(m), int(k)))


def csr_to_dense(csr: CSR) -> torch.Tensor:
    """The dense ``[M, K]`` tensor of a CSR matrix (entries not stored are 0)."""
    m, k = csr.shape
    out = torch.zeros((m, k), dtype=csr.values.dtype, device=csr.values.device)
    rows = torch.repeat_interleave(torch.arange(m, device=csr.values.device), csr.row_lengths())
    out[rows, csr.indices.to(torch.int64)] = csr.values
    return out


def csr_structure(csr: CSR) -> torch.Tensor:
    """Bool ``[M, K]`` mask of the stored positions."""
    ones = CSR(csr.indptr, csr.indices, torch.ones(csr.nnz, dtype=torch.bool), csr.shape)
    return csr_to_dense(ones)


# ---- COO ------------------------------------------------------------------------------------------------
def dense_to_coo(dense: torch.Tensor, mask: torch.Tensor | None = None) -> COO:
    """Pack a dense ``[M, K]`` tensor as row-major COO (int32 rows/cols)."""
    dense = _as_2d(dense)
    keep = _structure_mask(dense, mask)
    rows, cols = keep.nonzero(as_tuple=True)
    _check_index_range(dense.shape[0], dense.shape[1], rows.numel())
    return COO(rows.to(INDEX_DTYPE), cols.to(INDEX_DTYPE), dense[rows, cols].clone(),
               (int(dense.shape[0]), int(dense.shape[1])))


def coo_to_dense(coo: COO) -> torch.Tensor:
    out = torch.zeros(coo.shape, dtype=coo.values.dtype, device=coo.values.device)
    out[coo.rows.to(torch.int64), coo.cols.to(torch.int64)] = coo.values
    return out


def csr_to_coo(csr: CSR) -> COO:
    rows = torch.repeat_interleave(torch.arange(csr.shape[0], dtype=torch.int64), csr.row_lengths())
    return COO(rows.to(INDEX_DTYPE), csr.indices.clone(), csr.values.clone(), csr.shape)


def coo_to_csr(coo: COO) -> CSR:
    """COO (any order, no duplicates) -> CSR with columns sorted within rows."""
    m, k = coo.shape
    key = coo.rows.to(torch.int64) * max(k, 1) + coo.cols.to(torch.int64)
    order = torch.argsort(key)
    rows = coo.rows.to(torch.int64)[order]
    indptr = torch.zeros(m + 1, dtype=torch.int64)
    if m:
        indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=m), 0)
    return CSR(indptr.to(INDEX_DTYPE), coo.cols[order].to(INDEX_DTYPE), coo.values[order].clone(), coo.shape)


# ---- BSR ------------------------------------------------------------------------------------------------
def dense_to_bsr(dense: torch.Tensor, block: tuple[int, int], mask: torch.Tensor | None = None) -> BSR:
    """Pack a dense ``[M, K]`` tensor as BSR with ``block = (bh, bw)`` (edges zero-padded).

    A block is kept when it holds any stored entry (nonzero, or True in ``mask``); kept blocks carry their
    full dense contents (zeros inside a block are stored explicitly, as BSR always does).
    """
    dense = _as_2d(dense)
    bh, bw = int(block[0]), int(block[1])
    if bh < 1 or bw < 1:
        raise ValueError(f"block must be two positive ints, got {block!r}")
    m, k = dense.shape
    keep = _structure_mask(dense, mask)
    mp, kp = -(-m // bh) * bh, -(-k // bw) * bw
    padded = torch.zeros((mp, kp), dtype=dense.dtype)
    padded[:m, :k] = dense
    pkeep = torch.zeros((mp, kp), dtype=torch.bool)
    pkeep[:m, :k] = keep
    nbr, nbc = mp // bh, kp // bw
    tiles = padded.reshape(nbr, bh, nbc, bw).permute(0, 2, 1, 3)           # [nbr, nbc, bh, bw]
    occupied = pkeep.reshape(nbr, bh, nbc, bw).any(dim=3).any(dim=1)       # [nbr, nbc]
    brow, bcol = occupied.nonzero(as_tuple=True)
    indptr = torch.zeros(nbr + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(occupied.sum(dim=1), 0)
    _check_index_range(nbr, nbc, brow.numel())
    return BSR(indptr.to(INDEX_DTYPE), bcol.to(INDEX_DTYPE), tiles[brow, bcol].contiguous(),
               (int(m), int(k)), (bh, bw))


def bsr_to_dense(bsr: BSR) -> torch.Tensor:
    (m, k), (bh, bw) = bsr.shape, bsr.block
    mp, kp = bsr.padded_shape
    nbr, nbc = mp // bh, kp // bw
    tiles = torch.zeros((nbr, nbc, bh, bw), dtype=bsr.values.dtype)
    brow = torch.repeat_interleave(torch.arange(nbr), (bsr.indptr[1:] - bsr.indptr[:-1]).to(torch.int64))
    tiles[brow, bsr.indices.to(torch.int64)] = bsr.values
    return tiles.permute(0, 2, 1, 3).reshape(mp, kp)[:m, :k].contiguous()


def csr_to_bsr(csr: CSR, block: tuple[int, int]) -> BSR:
    """CSR -> BSR; blocks holding any stored CSR entry are kept."""
    return dense_to_bsr(csr_to_dense(csr), block, mask=csr_structure(csr))


def bsr_to_csr(bsr: BSR, keep_block_zeros: bool = False) -> CSR:
    """BSR -> CSR: the nonzeros, or every entry of every stored block (``keep_block_zeros``, padding cropped)."""
    dense = bsr_to_dense(bsr)
    if not keep_block_zeros:
        return dense_to_csr(dense)
    (m, k), (bh, bw) = bsr.shape, bsr.block
    occ = torch.zeros(bsr.padded_shape[0] // bh, bsr.padded_shape[1] // bw, dtype=torch.bool)
    brow = torch.repeat_interleave(torch.arange(occ.shape[0]), (bsr.indptr[1:] - bsr.indptr[:-1]).to(torch.int64))
    occ[brow, bsr.indices.to(torch.int64)] = True
    mask = occ.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:m, :k]
    return dense_to_csr(dense, mask)


def format_bytes(dense: torch.Tensor, mask: torch.Tensor | None = None,
                 block: tuple[int, int] = (16, 16)) -> dict[str, int]:
    """Bytes each format needs for ``dense`` ``[M, K]``: ``{"dense", "csr", "coo", "bsr"}`` (int32 indices)."""
    dense = _as_2d(dense)
    return {
        "dense": dense_bytes(tuple(dense.shape), dense.dtype),
        "csr": dense_to_csr(dense, mask).nbytes,
        "coo": dense_to_coo(dense, mask).nbytes,
        "bsr": dense_to_bsr(dense, block, mask).nbytes,
    }
