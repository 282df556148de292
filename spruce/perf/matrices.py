"""The matrices the study times: synthetic masks with exact nnz, DLMC ``.smtx`` topologies, row statistics.

The sparse package (``spruce.sparse.synthetic``) owns the generator; this module calls it when it is importable
(and knows the kind) and otherwise falls back to the small private versions below, so the study runs without it. Every function returns a dense FP32 ``[M, K]`` tensor with exact zeros.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

#: generator kinds this module can make without ``spruce.sparse.synthetic``.
FALLBACK_KINDS = ("uniform", "magnitude", "balanced")


def _nnz_for(m: int, k: int, sparsity: float) -> int:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return int(round((1.0 - sparsity) * m * k))


def _sparse_generate(kind: str, m: int, k: int, sparsity: float | None, seed: int, nnz: int | None = None,
                     reference: torch.Tensor | None = None) -> torch.Tensor | None:
    """``spruce.sparse.synthetic.generate`` as a dense tensor; None when the package (or the kind) is missing."""
    try:
        from spruce.sparse import synthetic
        from spruce.sparse.formats import dense_to_csr
    except ImportError:
        return None
    if kind not in getattr(synthetic, "KINDS", ()):
        return None
    ref = dense_to_csr(reference) if reference is not None else None
    return synthetic.generate(kind, m, k, sparsity, seed=seed, reference=ref, nnz=nnz).to_dense().to(torch.float32)


def synthetic_weight(kind: str, m: int, k: int, sparsity: float, seed: int = 0) -> torch.Tensor:
    """A ``[m, k]`` FP32 weight with exactly ``round((1 - sparsity) m k)`` nonzeros.

    Kinds: ``uniform`` (positions uniformly at random, like DLMC's random pruning), ``magnitude`` (keep the largest
    ``|w|`` of a Gaussian with log-normal per-row and per-column scales, which mimics magnitude pruning's uneven
    rows and columns), ``balanced`` (equal row lengths), or any kind ``spruce.sparse.synthetic`` knows.
    """
    w = _sparse_generate(kind, m, k, sparsity, seed)
    if w is not None:
        return w
    nnz = _nnz_for(m, k, sparsity)
    g = torch.Generator().manual_seed(seed)
    vals = torch.randn(m, k, generator=g)
    if kind == "uniform":
        keep = torch.zeros(m * k, dtype=torch.bool)
        keep[torch.randperm(m * k, generator=g)[:nnz]] = True
        return vals * keep.view(m, k)
    if kind == "magnitude":
        rs = torch.exp(0.5 * torch.randn(m, 1, generator=g))
        cs = torch.exp(0.5 * torch.randn(1, k, generator=g))
        vals = vals * rs * cs
        if nnz == 0:
            return torch.zeros(m, k)
        flat = vals.abs().flatten()
        idx = torch.topk(flat, nnz, sorted=False).indices
        keep = torch.zeros(m * k, dtype=torch.bool)
        keep[idx] = True
        return vals * keep.view(m, k)
    if kind == "balanced":
        per = nnz // m
        extra = nnz - per * m
        scores = torch.rand(m, k, generator=g)
        order = scores.argsort(dim=1)
        lengths = torch.full((m,), per, dtype=torch.long)
        lengths[torch.randperm(m, generator=g)[:extra]] += 1
        keep = torch.arange(k)[None, :] < lengths[:, None]
        mask = torch.zeros(m, k, dtype=torch.bool).scatter_(1, order, keep)
        return vals * mask
    raise ValueError(f"unknown generator kind {kind!r}; allowed here: {', '.join(FALLBACK_KINDS)}")


def read_smtx(path: str | Path) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """Read a DLMC ``.smtx`` topology: ``(M, K, row_offsets[M+1] int64, col_indices[nnz] int64)``.

    The project's one validated reader (``spruce.sparse.files.read_smtx``) does the parsing and checking."""
    from spruce.sparse.files import read_smtx as read_csr
    csr = read_csr(path)
    m, k = csr.shape
    return m, k, csr.indptr.to(torch.int64), csr.indices.to(torch.int64)


#: the most elements a dense weight made from a file may have (2**28 float32 = 1 GiB; VGG-16's fc6 has 1.0e8)
MAX_DENSE_ELEMENTS = 1 << 28


def smtx_weight(path: str | Path, seed: int = 0) -> torch.Tensor:
    """A dense ``[M, K]`` weight with the ``.smtx`` topology and values uniform in [-1, 1] (DLMC has none)."""
    m, k, offs, cols = read_smtx(path)
    if m * k > MAX_DENSE_ELEMENTS:
        raise ValueError(f"{path}: {m}x{k} is too large to time as a dense weight (more than {MAX_DENSE_ELEMENTS} "
                         f"elements)")
    rows = torch.repeat_interleave(torch.arange(m), offs[1:] - offs[:-1])
    g = torch.Generator().manual_seed(seed)
    vals = torch.rand(cols.numel(), generator=g) * 2 - 1
    vals[vals == 0] = 0.5  # keep nnz exact
    w = torch.zeros(m, k)
    w[rows, cols] = vals
    return w


def twin(w: torch.Tensor, kind: str = "uniform", seed: int = 0) -> torch.Tensor:
    """A generator matrix of ``kind`` with the shape and nnz of ``w`` (values redrawn); ``row_matched`` draws its
    row lengths from ``w``'s (needs ``spruce.sparse.synthetic``)."""
    m, k = w.shape
    nnz = int((w != 0).sum())
    out = _sparse_generate(kind, m, k, None, seed, nnz=nnz, reference=w if kind == "row_matched" else None)
    if out is not None:
        return out
    if kind == "row_matched":
        raise ValueError("kind 'row_matched' needs spruce.sparse.synthetic, which is not importable")
    return synthetic_weight(kind, m, k, 1.0 - nnz / (m * k), seed) if nnz < m * k else torch.randn(m, k)


def row_cov(w: torch.Tensor) -> float:
    """Coefficient of variation (std / mean) of the row lengths (nonzeros per row) of ``w``; 0 when empty."""
    lengths = (w != 0).sum(dim=1).to(torch.float64)
    mean = float(lengths.mean()) if lengths.numel() else 0.0
    if mean == 0:
        return 0.0
    return float(lengths.std(unbiased=False)) / mean


def nonempty_blocks(w: torch.Tensor, block) -> int:
    """Non-empty ``bh x bw`` tiles of ``w`` (``block`` a side or ``(bh, bw)``; zero-padded to whole tiles)."""
    bh, bw = (block, block) if isinstance(block, int) else (int(block[0]), int(block[1]))
    m, k = w.shape
    mp, kp = math.ceil(m / bh) * bh, math.ceil(k / bw) * bw
    nz = torch.nn.functional.pad((w != 0).to(torch.float32), (0, kp - k, 0, mp - m))
    tiles = nz.view(mp // bh, bh, kp // bw, bw).sum(dim=(1, 3))
    return int((tiles > 0).sum())
