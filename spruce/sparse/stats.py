"""Structure statistics of a sparse matrix, and the KS distance between two matrices' row-length distributions.

All statistics describe the *stored positions* (the sparsity pattern), not the values. Definitions:

* ``density`` = nnz / (M*K).
* Row lengths ``r_i`` (stored entries of row i): ``row_mean``, ``row_cov`` = std/mean (population std; 0 when
  the matrix is empty), ``row_max_over_mean`` = max/mean (load imbalance of a one-row-per-thread kernel),
  ``empty_rows`` (count) and ``empty_row_frac``.
* ``col_cov``: the same CoV for the per-column counts.
* Blocks ``bh x bw`` tile the matrix from the top-left corner; edge blocks are zero-padded. For each block
  shape ``BxC`` in ``1x4, 4x1, 16x16, 32x32``: ``blk_BxC_nonempty`` = fraction of blocks holding at least
  one stored entry (what a BSR kernel must touch), ``blk_BxC_fill`` = mean fraction of stored entries inside
  the non-empty blocks (how much of a fetched block is useful; 1.0 = perfectly block-sparse).
* ``conform_2of4`` ("2:4 conformity"): the fraction of aligned groups of 4 consecutive entries along K (the
  1x4 blocks, padded at the row end) that hold **at most 2** stored entries. 1.0 means the pattern fits the
  2:4 semi-structured format (NVIDIA sparse tensor cores) without dropping anything.
* ``ks_distance(a, b)``: the two-sample Kolmogorov-Smirnov statistic ``max_x |F_a(x) - F_b(x)|`` of two
  samples; ``row_length_ks(A, B)`` applies it to the row *densities* ``r_i / K`` so matrices of different
  widths compare (for equal shapes it is the KS distance of the row lengths).
"""
from __future__ import annotations

import numpy as np
import torch

from spruce.sparse.formats import CSR, dense_to_csr

BLOCKS: tuple[tuple[int, int], ...] = ((1, 4), (4, 1), (16, 16), (32, 32))
STAT_KEYS = ("m", "k", "nnz", "density", "row_mean", "row_cov", "row_max_over_mean", "empty_rows",
             "empty_row_frac", "col_cov", "conform_2of4",
             *[f"blk_{bh}x{bw}_{what}" for bh, bw in BLOCKS for what in ("nonempty", "fill")])


def _as_csr(a: CSR | torch.Tensor) -> CSR:
    if isinstance(a, CSR):
        return a
    if isinstance(a, torch.Tensor):
        return dense_to_csr(a)
    raise ValueError(f"expected a CSR or a dense 2-D tensor, got {type(a).__name__}")


def _cov(x: np.ndarray) -> float:
    mean = float(x.mean()) if x.size else 0.0
    return float(x.std() / mean) if mean > 0 else 0.0


def block_counts(csr: CSR, bh: int, bw: int) -> np.ndarray:
    """Stored entries per *non-empty* ``bh x bw`` block (int64, one entry per non-empty block)."""
    if csr.nnz == 0:
        return np.zeros(0, dtype=np.int64)
    k = csr.shape[1]
    nbc = -(-k // bw)
    rows = np.repeat(np.arange(csr.shape[0], dtype=np.int64), csr.row_lengths().numpy())
    ids = (rows // bh) * nbc + csr.indices.numpy().astype(np.int64) // bw
    if bh == 1 and (np.diff(ids) >= 0).all():  # row-major CSR: ids already sorted, count the runs
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        return np.diff(np.r_[starts, ids.size])
    return np.unique(ids, return_counts=True)[1]


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic of samples ``a`` and ``b`` (in [0, 1]; 0 = same ECDF)."""
    a = np.sort(np.asarray(a, dtype=np.float64).ravel())
    b = np.sort(np.asarray(b, dtype=np.float64).ravel())
    if a.size == 0 or b.size == 0:
        raise ValueError(f"ks_distance needs two non-empty samples, got sizes {a.size} and {b.size}")
    xs = np.concatenate([a, b])
    fa = np.searchsorted(a, xs, side="right") / a.size
    fb = np.searchsorted(b, xs, side="right") / b.size
    return float(np.abs(fa - fb).max())


def row_densities(a: CSR | torch.Tensor) -> np.ndarray:
    """Row lengths divided by K, float64 ``[M]``."""
    csr = _as_csr(a)
    return csr.row_lengths().numpy().astype(np.float64) / max(csr.shape[1], 1)


def row_length_ks(a: CSR | torch.Tensor, b: CSR | torch.Tensor) -> float:
    """KS distance between the row-density distributions of two matrices."""
    return ks_distance(row_densities(a), row_densities(b))


def matrix_stats(a: CSR | torch.Tensor) -> dict[str, float]:
    """All statistics of the module docstring for a CSR matrix (or a dense tensor: its nonzeros)."""
    csr = _as_csr(a)
    m, k = csr.shape
    rl = csr.row_lengths().numpy()
    cols = np.bincount(csr.indices.numpy().astype(np.int64), minlength=k) if k else np.zeros(0)
    row_mean = float(rl.mean()) if m else 0.0
    out: dict[str, float] = {
        "m": m, "k": k, "nnz": csr.nnz, "density": csr.density,
        "row_mean": row_mean,
        "row_cov": _cov(rl),
        "row_max_over_mean": float(rl.max() / row_mean) if row_mean > 0 else 0.0,
        "empty_rows": int((rl == 0).sum()),
        "empty_row_frac": float((rl == 0).mean()) if m else 0.0,
        "col_cov": _cov(cols),
    }
    for bh, bw in BLOCKS:
        counts = block_counts(csr, bh, bw)
        total = (-(-m // bh)) * (-(-k // bw))
        out[f"blk_{bh}x{bw}_nonempty"] = counts.size / total if total else 0.0
        out[f"blk_{bh}x{bw}_fill"] = float(counts.mean() / (bh * bw)) if counts.size else 0.0
        if (bh, bw) == (1, 4):
            groups = m * (-(-k // 4))
            out["conform_2of4"] = 1.0 - float((counts > 2).sum()) / groups if groups else 1.0
    return {key: out[key] for key in STAT_KEYS}
