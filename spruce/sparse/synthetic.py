"""Synthetic sparse weight matrices, reproducible from a seed, and the dense operand of a benchmark case.

Every generator returns a ``CSR`` of exactly ``shape = (M, K)`` and exactly ``nnz = nnz_for(M, K, sparsity)``
stored entries (columns sorted within rows), drawn from ``numpy.random.Generator(PCG64(seed))``. Values are
Kaiming-like ``N(0, 2/K)`` float32 unless the kind defines its own.

Kinds (``KINDS``) and what each is for:

* ``uniform`` -- nnz positions uniformly at random among the M*K (row lengths follow the multivariate
  hypergeometric law). The classic synthetic benchmark matrix: Sputnik's RANDOM_UNIFORM, DLMC's
  ``random_pruning``. A control with no structure at all.
* ``balanced`` -- every row holds ``nnz // M`` entries, the first ``nnz % M`` rows (in a random order) one
  more; columns uniform within a row. The best case for row-parallel kernels (no load imbalance): isolates the
  cost of irregular column access from the cost of imbalance.
* ``row_matched`` -- row lengths drawn (with replacement) from a *reference* matrix's row-density
  distribution (``reference=`` a CSR, e.g. the real pruned layer), rescaled to exactly nnz and capped at K;
  columns uniform within a row. Reproduces a real layer's load imbalance while randomising everything else, so
  the real-vs-twin kernel-time gap measures column/block structure alone.
* ``magnitude`` -- keeps the nnz largest ``|g_ij * r_i * c_j|`` where ``g`` is standard normal and ``r``,
  ``c`` are log-normal per-row / per-column scales (``row_sigma``, ``col_sigma``). Mimics magnitude pruning of
  a trained layer, whose rows and columns have unequal norms: long and short rows, dense input columns. Values
  are ``g * r * c`` scaled to Kaiming variance, so the kept weights look like a magnitude-pruned layer's.
  The default sigmas (0.1) give row-length CoVs close to DLMC's magnitude-pruned Transformer/ResNet-50 layers at
  90% (0.25-0.35); at 98% they overshoot (0.6 vs 0.2-0.6), so compare with the real layer where one exists.

``dense_operand(k, n, seed)`` gives the ``[K, N]`` activations (``N`` = batch, sequence x batch, or the output
pixels of a conv) so ``(W, X)`` is a ready ``Y = W @ X`` benchmark case.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

from spruce.sparse.formats import CSR

KINDS = ("uniform", "balanced", "row_matched", "magnitude")


def nnz_for(m: int, k: int, sparsity: float) -> int:
    """Exact stored entries of an ``m x k`` matrix at ``sparsity``: ``floor(m * k * (1 - sparsity))``.

    Floor is DLMC's convention (e.g. 2048x512 at 0.9 -> 104857); a tiny epsilon absorbs float error.
    """
    check_sparsity(sparsity)
    return int(np.floor(m * k * (1.0 - float(sparsity)) + 1e-6))


def check_sparsity(sparsity: float) -> None:
    if not isinstance(sparsity, (int, float)) or not (0.0 <= float(sparsity) < 1.0):
        raise ValueError(f"sparsity {sparsity!r} is outside [0, 1)")


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}; allowed: {', '.join(KINDS)}")


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 63-bit seed from ``seed`` and names (crc32, not Python's salted ``hash``)."""
    ss = np.random.SeedSequence([int(seed)] + [zlib.crc32(str(p).encode()) for p in parts])
    return int(ss.generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def _kaiming_values(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``n`` Kaiming-normal values, none of them zero: a stored 0.0 (or -0.0, which the product of a tiny draw
    and the scale can give) would be an explicit zero at a pattern position, so zeros are drawn again."""
    scale = np.float32(np.sqrt(2.0 / max(k, 1)))
    values = rng.standard_normal(n, dtype=np.float32) * scale
    zero = values == 0
    while zero.any():
        values[zero] = rng.standard_normal(int(zero.sum()), dtype=np.float32) * scale
        zero = values == 0
    return values


def _csr_from_row_lengths(rng: np.random.Generator, lengths: np.ndarray, k: int) -> CSR:
    """Columns uniform without replacement within each row, sorted; Kaiming values."""
    m = lengths.size
    indptr = np.zeros(m + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(lengths)
    nnz = int(indptr[-1])
    cols = np.empty(nnz, dtype=np.int64)
    for i in range(m):
        r = int(lengths[i])
        if r:
            cols[indptr[i]:indptr[i + 1]] = np.sort(rng.choice(k, size=r, replace=False))
    values = _kaiming_values(rng, nnz, k)
    return CSR(torch.from_numpy(indptr.astype(np.int32)), torch.from_numpy(cols.astype(np.int32)),
               torch.from_numpy(values), (m, k))


def _fit_lengths(rng: np.random.Generator, weights: np.ndarray, nnz: int, k: int) -> np.ndarray:
    """Integer row lengths proportional to ``weights``, each in [0, k], summing exactly to ``nnz``.

    Rows whose share exceeds ``k`` are capped and the rest re-shared among the others; the rounding remainder
    goes to the rows with the largest fractional parts (ties broken at random).
    """
    m = weights.size
    w = np.maximum(weights.astype(np.float64), 0.0)
    if w.sum() <= 0:
        w = np.ones(m)
    w = w + 1e-12 * w.max()  # every row can take entries if needed (nnz close to m*k)
    capped = np.zeros(m, dtype=bool)
    while True:
        target = np.where(capped, float(k), w / w[~capped].sum() * (nnz - k * capped.sum()))
        over = (target > k) & ~capped
        if not over.any():
            break
        capped |= over
    lengths = np.minimum(np.floor(target).astype(np.int64), k)
    remaining = nnz - int(lengths.sum())
    if remaining > 0:
        frac = (target - lengths) + 1e-9 * rng.random(m)
        frac[lengths >= k] = -1.0
        lengths[np.argsort(-frac, kind="stable")[:remaining]] += 1
    return lengths


def generate(kind: str, m: int, k: int, sparsity: float | None, seed: int = 0, reference: CSR | None = None,
             row_sigma: float = 0.1, col_sigma: float = 0.1, nnz: int | None = None) -> CSR:
    """A synthetic ``m x k`` CSR matrix of the given kind with exactly ``nnz_for(m, k, sparsity)`` entries
    (or exactly ``nnz`` when given, e.g. a real layer's count; then ``sparsity`` may be None).

    ``reference`` (a CSR) is required by ``row_matched``; ``row_sigma``/``col_sigma`` (log-normal sigmas of the
    per-row/per-column scales) shape ``magnitude``. Same arguments and seed -> identical matrix.
    """
    check_kind(kind)
    if int(m) < 1 or int(k) < 1:
        raise ValueError(f"shape must be positive, got {m}x{k}")
    m, k = int(m), int(k)
    if nnz is None:
        if sparsity is None:
            raise ValueError("give sparsity or nnz")
        nnz = nnz_for(m, k, sparsity)
    elif not 0 <= int(nnz) <= m * k:
        raise ValueError(f"nnz={nnz} outside [0, {m * k}] for a {m}x{k} matrix")
    nnz = int(nnz)
    rng = np.random.Generator(np.random.PCG64(seed))
    if kind == "uniform":
        lengths = rng.multivariate_hypergeometric(np.full(m, k, dtype=np.int64), nnz)
        return _csr_from_row_lengths(rng, lengths, k)
    if kind == "balanced":
        lengths = np.full(m, nnz // m, dtype=np.int64)
        lengths[rng.permutation(m)[: nnz % m]] += 1
        return _csr_from_row_lengths(rng, lengths, k)
    if kind == "row_matched":
        if reference is None:
            raise ValueError("kind 'row_matched' needs a reference matrix (reference=CSR of the real layer)")
        ref = reference.row_lengths().numpy().astype(np.float64) / max(reference.shape[1], 1)
        lengths = _fit_lengths(rng, rng.choice(ref, size=m, replace=True), nnz, k)
        return _csr_from_row_lengths(rng, lengths, k)
    return _magnitude(rng, m, k, nnz, row_sigma, col_sigma)


def _magnitude(rng: np.random.Generator, m: int, k: int, nnz: int, row_sigma: float, col_sigma: float) -> CSR:
    r = rng.lognormal(0.0, row_sigma, m).astype(np.float32)
    c = rng.lognormal(0.0, col_sigma, k).astype(np.float32)
    g = rng.standard_normal((m, k), dtype=np.float32)
    g *= r[:, None]
    g *= c[None, :]
    score = np.abs(g).ravel()
    if nnz == 0:
        keep = np.zeros(0, dtype=np.int64)
    elif nnz == m * k:
        keep = np.arange(m * k, dtype=np.int64)
    else:
        thr = np.partition(score, m * k - nnz)[m * k - nnz]  # the nnz-th largest score
        above = np.flatnonzero(score > thr)
        ties = np.flatnonzero(score == thr)[: nnz - above.size]  # exact nnz even with tied scores
        keep = np.sort(np.concatenate([above, ties]))
    del score
    rows, cols = keep // k, keep % k
    vals = g.ravel()[keep]
    rms = float(np.sqrt(np.mean(g.astype(np.float64) ** 2))) or 1.0
    vals = (vals * np.float32(np.sqrt(2.0 / k) / rms)).astype(np.float32)
    vals[vals == 0] = np.finfo(np.float32).tiny  # a kept position never stores 0.0 / -0.0 (an explicit zero)
    indptr = np.zeros(m + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(np.bincount(rows, minlength=m))
    return CSR(torch.from_numpy(indptr.astype(np.int32)), torch.from_numpy(cols.astype(np.int32)),
               torch.from_numpy(vals), (m, k))


def dense_operand(k: int, n: int, seed: int = 0, dtype: torch.dtype = torch.float32,
                  nonnegative: bool = False) -> torch.Tensor:
    """Activations ``X`` ``[K, N]``: standard normal (or its ReLU when ``nonnegative``, as after a ReLU layer)."""
    if int(k) < 1 or int(n) < 1:
        raise ValueError(f"operand shape must be positive, got {k}x{n}")
    rng = np.random.Generator(np.random.PCG64(seed))
    x = rng.standard_normal((int(k), int(n)), dtype=np.float32)
    if nonnegative:
        np.maximum(x, 0, out=x)
    return torch.from_numpy(x).to(dtype)


def benchmark_case(kind: str, m: int, k: int, n: int, sparsity: float, seed: int = 0,
                   reference: CSR | None = None) -> tuple[CSR, torch.Tensor]:
    """``(W, X)``: a synthetic weight ``[M, K]`` and activations ``[K, N]`` from independent derived seeds."""
    w = generate(kind, m, k, sparsity, derive_seed(seed, "weight", kind, m, k, sparsity), reference)
    return w, dense_operand(k, n, derive_seed(seed, "operand", k, n))

