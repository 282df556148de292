"""A roofline performance model of dense and sparse ``Y = W @ X`` (``W`` ``[M, K]``, ``X`` ``[K, N]``, FP32).

After Park et al., "Faster CNNs with direct sparse convolutions and guided pruning" (ICLR 2017), which bounds a
sparse layer's time by its FLOPs and the bytes it moves, and the bounds Gale et al. use for Sputnik ("Sparse GPU
Kernels for Deep Learning", SC20). Every function is pure: machine constants come in a ``MachineProfile``.

Formulas (times in seconds, ``P`` = peak GFLOP/s * 1e9, ``B`` = bandwidth GB/s * 1e9, ``d = nnz / (M K)``):

* dense:   ``t_d = max(2 M K N / (P e_d(N, K)), g_d 4 (M K + K N + M N) / B) + o_dense`` (``g_d``: the dense
  GEMV's own streaming penalty, 1 unless calibrated)
* sparse:  ``t_s = (max(F / (P e(N, d, K)), g * bytes_s / B) + t_llc) * imbalance(cov, T, rows) + o_kernel`` with
  ``F = 2 nnz N`` (BSR: ``2 n_blocks bh bw N``, padded blocks are computed), ``e(N, d, K)`` the kernel's
  efficiency and ``e_d(N, K)`` the dense GEMM's (calibrated tables over N, density and K, interpolated in
  log N, log d and log K; 1 / a constant when absent). K enters through the cache: a row tile of a CSR kernel
  reads ``K x tile`` of X, so once that leaves L1/L2 the kernel narrows its tile or waits on L3, and the dense
  GEMM's blocking changes too; calibrating at a few K captures both without kernel-specific terms) and
  ``g`` its gather penalty;
  ``bytes_s = weight_bytes + 4 K N R + 4 M N`` (values+indices+row pointers, activations with re-read factor
  ``R``, output).
* weight bytes: CSR ``nnz (4 + i) + 4 (M + 1)``; COO ``nnz (4 + 2 i)``; BSR with ``bh x bw`` blocks
  ``n_b (4 bh bw + i) + 4 (ceil(M/bh)+1)``;
  dense ``4 M K`` (``i`` = index bytes: 4 for int32, 2 for int16, 8 for torch's int64 COO).
* expected BSR blocks of a uniformly random mask: ``n_b = ceil(M/bh) ceil(K/bw) (1 - (1 - d)^(bh bw))``.
* re-read factor: ``R = 1`` when ``4 K N`` fits in cache ``C``, or when the kernel cuts N into cache-resident
  panels of X (``profile.x_panel_bytes``: each panel is read once and every row reuses it); else each nonzero of
  a column streams a row of X again: ``R = 1 + (max(nnz / K, 1) - 1) (1 - C / (4 K N))``.
* imbalance of a row partition over ``T`` threads, each taking ``M/T`` rows whose lengths have coefficient of
  variation ``cov``: the slowest thread is ~``sqrt(2 ln T)`` standard deviations above the mean, so
  ``imbalance = 1 + cov sqrt(2 ln T) / sqrt(M / T)`` (1 for ``T = 1``).
* residual terms (issue 17; on per profile, ``MachineProfile.terms``; ``without_residual_terms`` turns them off):
  - ``weight_residency``: the efficiency tables were measured with weights that stay in the LLC between calls
    (M = 1024, K <= 4096: at most 16 MB); the memory term counts the weight (dense ``4 M K`` or packed) only when
    it does not fit in the LLC ``C`` (``streamed_fraction``: 0 or 1), so a resident layer is priced by its
    in-cache rate (fc8 of VGG-16, 16 MB) and a streamed one by bandwidth (fc6, 411 MB);
  - ``x_panel_l2``: a panelled kernel cuts X into panels of ``min(N, max(32, budget / 4K))`` columns; a panel
    larger than the per-core L2 (K > 8192 at 32 columns with a 1 MiB L2: fc6, K = 25088) leaves the share
    ``1 - L2 / panel`` of its X reads (``4 N`` bytes per stored column) to the LLC, ``t_llc = bytes / B_llc``,
    added to ``max(compute, memory)`` (the row kernel issues those reads in line with its FMAs: they wait,
    they do not overlap). ``B_llc`` and the L2 size come from calibration (``llc_bw_gbs``, ``l2_bytes``).
* conversion: ``t_c = a M K + b nnz`` (a scan of the dense matrix plus a write per kept entry).
* amortisation: ``n = t_c / (t_d - t_s)`` inferences (infinite when the sparse call is not faster).
"""
from __future__ import annotations

import math
import re

from spruce.perf.profile import MachineProfile

FP32 = 4
#: index bytes of kernels that do not use int32 (torch COO stores int64 indices; spruce_csr and spruce_bsr4x1
#: pack 16-bit column indices when K <= 65536). ``test_weight_bytes_model_matches_every_cpu_kernel`` checks this
#: table against each kernel's packed size.
INDEX_BYTES = {"torch_coo": 8, "spruce_csr": 2, "spruce_bsr4x1": 2}

Block = "int | tuple[int, int]"


def _hw(block) -> tuple[int, int]:
    """``(rows, cols)`` of a block given as a side or a pair."""
    if isinstance(block, (tuple, list)):
        return int(block[0]), int(block[1])
    return int(block), int(block)


def index_bytes_for(kernel: str, fmt: str) -> int:
    """Bytes per stored index of ``kernel`` (4 unless listed in ``INDEX_BYTES`` or named ``*_i16``)."""
    if kernel in INDEX_BYTES:
        return INDEX_BYTES[kernel]
    if kernel.endswith("_i16") or "int16" in kernel:
        return 2
    return 4


def block_for(kernel: str, fmt: str, default: int = 16) -> tuple[int, int]:
    """Block ``(rows, cols)`` of a BSR kernel from its name (``torch_bsr4`` -> (4, 4), ``spruce_bsr4x1`` ->
    (4, 1)); (1, 1) for other formats."""
    if fmt != "bsr":
        return 1, 1
    m = re.search(r"(\d+)x(\d+)$", kernel)
    if m:
        return int(m.group(1)), int(m.group(2))
    m = re.search(r"(\d+)$", kernel)
    return (int(m.group(1)),) * 2 if m else (default, default)


def _check_shape(m: int, k: int, n: int, nnz: float | None = None) -> None:
    if m < 1 or k < 1 or n < 1:
        raise ValueError(f"shape must be positive, got m={m}, k={k}, n={n}")
    if nnz is not None and not 0 <= nnz <= m * k:
        raise ValueError(f"nnz must be in [0, m*k={m * k}], got {nnz}")


def expected_blocks(m: int, k: int, nnz: float, block) -> float:
    """Expected non-empty ``bh x bw`` tiles of a uniformly random ``[m, k]`` mask with ``nnz`` entries
    (``block`` is a side or ``(bh, bw)``): ``ceil(M/bh) ceil(K/bw) (1 - (1 - d)^(bh bw))``."""
    _check_shape(m, k, 1, nnz)
    bh, bw = _hw(block)
    tiles = math.ceil(m / bh) * math.ceil(k / bw)
    d = nnz / (m * k)
    nb = tiles * (1.0 - (1.0 - d) ** (bh * bw))
    return max(nb, nnz / (bh * bw))


def weight_bytes(fmt: str, m: int, k: int, nnz: float, index_bytes: int = 4, block=16,
                 nblocks: float | None = None) -> float:
    """Bytes of the packed ``[m, k]`` weight with ``nnz`` stored entries (formulas in the module docstring)."""
    _check_shape(m, k, 1, nnz)
    if fmt == "dense":
        return FP32 * m * k
    if fmt == "csr":
        return nnz * (FP32 + index_bytes) + 4 * (m + 1)
    if fmt == "coo":
        return nnz * (FP32 + 2 * index_bytes)
    if fmt == "bsr":
        bh, bw = _hw(block)
        nb = expected_blocks(m, k, nnz, block) if nblocks is None else nblocks
        return nb * (FP32 * bh * bw + index_bytes) + 4 * (math.ceil(m / bh) + 1)
    raise ValueError(f"unknown format {fmt!r}; allowed: dense, csr, coo, bsr")


def reread_factor(m: int, k: int, n: int, nnz: float, cache_bytes: float) -> float:
    """How many times the activations ``X`` ``[K, N]`` stream from memory (1 when they fit in cache)."""
    x_bytes = FP32 * k * n
    if x_bytes <= cache_bytes:
        return 1.0
    return 1.0 + (max(nnz / k, 1.0) - 1.0) * (1.0 - cache_bytes / x_bytes)


def imbalance(row_cov: float, threads: int, rows: int) -> float:
    """Slowest-thread / mean-thread work of a row partition: ``1 + cov sqrt(2 ln T) / sqrt(rows / T)``."""
    if threads <= 1 or rows <= 0:
        return 1.0
    per = max(rows / threads, 1.0)
    return 1.0 + max(row_cov, 0.0) * math.sqrt(2.0 * math.log(threads)) / math.sqrt(per)


def binomial_row_cov(k: int, density: float) -> float:
    """Row-length CoV of a uniformly random mask: ``sqrt((1 - d) / (K d))`` (0 for ``d`` in {0, 1})."""
    if density <= 0 or density >= 1:
        return 0.0
    return math.sqrt((1.0 - density) / (k * density))


def dense_bytes(m: int, k: int, n: int, elem_bytes: float = FP32) -> float:
    """Bytes a dense GEMM moves at least once: ``W``, ``X`` and ``Y``."""
    return elem_bytes * (m * k + k * n + m * n)


def streamed_fraction(nbytes: float, cache_bytes: float) -> float:
    """Share of ``nbytes`` of data used on every call (a weight) that comes from memory on each call: 0 when it fits
    in the cache, else all of it. A weight read front to back on every call evicts its own oldest lines before it
    comes back to them when it is larger than the cache (fc7's 64 MB dense weight streamed no faster than fc6's
    411 MB in the 2026-12-03 runs, 18 vs 24 GB/s: nothing of it stayed), so there is no partial share."""
    return 0.0 if nbytes <= cache_bytes else 1.0


def weight_traffic(nbytes: float, profile: MachineProfile) -> float:
    """Weight bytes a call streams from memory: all of them, or with the ``weight_residency`` term none when the
    weight fits in the LLC (``streamed_fraction``): a layer called again and again (planner and study timings,
    a batch of calls) finds it there. Each kernel is predicted on its own: the study's paired timing alternates
    the dense and the sparse weight, which then share the LLC."""
    if profile.has_term("weight_residency"):
        return nbytes * streamed_fraction(nbytes, profile.cache_bytes)
    return nbytes


#: the narrowest X panel a panelled kernel cuts: spruce_csr's ``panel_width`` (csr_spmm.h) takes as many columns as
#: fit its panel budget and 32 when fewer would (large K), so at K > budget / 128 the panel outgrows the budget
MIN_PANEL_COLUMNS = 32


def panel_columns(k: int, n: int, panel_bytes: float) -> int:
    """Columns of X in one panel of a panelled kernel: ``min(N, max(32, budget / (4 K)))``."""
    return int(min(n, max(MIN_PANEL_COLUMNS, panel_bytes // (FP32 * k))))


def x_llc_bytes(k: int, n: int, x_row_reads: float, panel_bytes: float, l2_bytes: float) -> float:
    """Bytes of X a panelled kernel reads from the LLC instead of L2 (``x_panel_l2`` term).

    Each of the ``x_row_reads`` stored columns (CSR: nnz; BSR: blocks x block width) reads its row of the panel,
    ``4 N`` bytes over all panels. The efficiency tables were measured with panels that fit in L2 (K <= 4096);
    a panel of ``4 K cols`` bytes larger than the per-core L2 leaves the share ``1 - L2 / panel`` of those reads to
    the LLC (fc6 of VGG-16 at batch 32: K = 25088, a 3.2 MB panel against a 1 MB L2).
    """
    if l2_bytes <= 0 or n <= 1:
        return 0.0
    panel = FP32 * k * panel_columns(k, n, panel_bytes)
    if panel <= l2_bytes:
        return 0.0
    return (1.0 - l2_bytes / panel) * x_row_reads * FP32 * n


def dense_time_s(m: int, k: int, n: int, profile: MachineProfile, kernel: str = "torch_dense",
                 path: str | None = None) -> float:
    """``max(2 M K N / P, bytes / B) + overhead``; ``path`` picks one of ``profile.dense_paths``."""
    _check_shape(m, k, n)
    gflops, elem = profile.peak_gflops, float(FP32)
    if path is not None and path != "fp32":
        if path not in profile.dense_paths:
            raise ValueError(f"unknown dense path {path!r}; profile has: {', '.join(profile.dense_paths) or 'none'}")
        gflops, elem = profile.dense_paths[path]
    eff = profile.dense_efficiency(n, k) if path in (None, "fp32") else 1.0
    compute = 2.0 * m * k * n / (gflops * 1e9 * eff)
    moved = weight_traffic(elem * m * k, profile) + elem * (k * n + m * n)
    memory = profile.gather(kernel, "dense") * moved / (profile.bw_gbs * 1e9)
    return max(compute, memory) + profile.overhead_s(kernel, "dense")


def sparse_bytes(fmt: str, m: int, k: int, n: int, nnz: float, cache_bytes: float, index_bytes: int = 4,
                 block=16, nblocks: float | None = None, panelled: bool = False,
                 weight_resident: bool = False) -> float:
    """Bytes a sparse call moves: packed weight + ``4 K N R`` activations + ``4 M N`` output (``R = 1`` for a
    ``panelled`` kernel, which keeps a panel of X in cache while every row passes over it). With
    ``weight_resident`` the weight counts only when it does not fit in ``cache_bytes`` (``streamed_fraction``)."""
    wb = weight_bytes(fmt, m, k, nnz, index_bytes, block, nblocks)
    if weight_resident:
        wb *= streamed_fraction(wb, cache_bytes)
    r = 1.0 if panelled else reread_factor(m, k, n, nnz, cache_bytes)
    return wb + FP32 * k * n * r + FP32 * m * n


def sparse_time_s(kernel: str, fmt: str, m: int, k: int, n: int, nnz: float, row_cov: float | None,
                  profile: MachineProfile, index_bytes: int | None = None, block=None,
                  nblocks: float | None = None) -> float:
    """Sparse call time in seconds (module docstring). ``row_cov=None`` assumes a uniformly random mask."""
    _check_shape(m, k, n, nnz)
    if fmt == "dense":
        return dense_time_s(m, k, n, profile, kernel)
    ib = index_bytes_for(kernel, fmt) if index_bytes is None else index_bytes
    b = block_for(kernel, fmt) if block is None else block
    if row_cov is None:
        row_cov = binomial_row_cov(k, nnz / (m * k))
    if fmt == "bsr":
        bh, bw = _hw(b)
        nb = expected_blocks(m, k, nnz, b) if nblocks is None else nblocks
        flops, rows, x_reads = 2.0 * nb * bh * bw * n, math.ceil(m / bh), nb * bw
    else:
        nb, flops, rows, x_reads = None, 2.0 * nnz * n, m, nnz
    compute = flops / (profile.peak_gflops * 1e9 * profile.eff(kernel, fmt, n, nnz / (m * k), k))
    panel = float(profile.x_panel_bytes.get(kernel) or 0.0)
    memory = profile.gather(kernel, fmt) * sparse_bytes(
        fmt, m, k, n, nnz, profile.cache_bytes, ib, b, nb, panel > 0,
        profile.has_term("weight_residency")) / (profile.bw_gbs * 1e9)
    llc = 0.0
    if panel > 0 and profile.has_term("x_panel_l2") and profile.llc_bw_gbs > 0:
        llc = x_llc_bytes(k, n, x_reads, panel, profile.l2_bytes) / (profile.llc_bw_gbs * 1e9)
    return (max(compute, memory) + llc) * imbalance(row_cov, profile.threads, rows) + profile.overhead_s(kernel, fmt)


def without_residual_terms(profile: MachineProfile) -> MachineProfile:
    """``profile`` with the residual terms of issue 17 off (``terms=[]``) and, where calibration recorded it
    (``meta["gather_penalty_half"]``), the gather penalty measured at 50% sparsity as calibration v7 did: the model
    as it was before, on the same measurements (``python -m spruce.study action=band`` compares both)."""
    d = profile.to_dict()
    d["terms"] = []
    old = (profile.meta or {}).get("gather_penalty_half")
    if old:
        d["gather_penalty"] = {**d["gather_penalty"], **old}
    return MachineProfile.from_dict(d)


def predict_ms(kernel_name: str, fmt: str, m: int, k: int, n: int, nnz: float, row_cov: float | None,
               profile: MachineProfile) -> float:
    """Predicted milliseconds of one ``kernel_name`` call on ``W`` ``[m, k]`` (``nnz`` entries) times ``X`` ``[k, n]``.

    The entry point deploy's planner calls; ``fmt="dense"`` gives the dense baseline.
    """
    return 1e3 * sparse_time_s(kernel_name, fmt, m, k, n, nnz, row_cov, profile)


def conversion_time_s(kernel: str, fmt: str, m: int, k: int, nnz: float, profile: MachineProfile) -> float:
    """One-off ``prepare`` time: ``a M K + b nnz`` with ``(a, b)`` = ``profile.convert(kernel)`` in ns."""
    _check_shape(m, k, 1, nnz)
    a, b = profile.convert(kernel, fmt)
    return (a * m * k + b * nnz) * 1e-9


def amortisation(conversion_s: float, dense_s: float, sparse_s: float) -> float:
    """Inferences after which a conversion pays for itself: ``t_c / (t_d - t_s)`` (inf when no saving)."""
    saving = dense_s - sparse_s
    if saving <= 0:
        return math.inf
    return conversion_s / saving


def _solve_last_crossing(f, lo: float = 0.0, hi: float = 0.999, steps: int = 1000) -> tuple[str, float | None]:
    """Status and root of the last sign change ``f < 0 -> f >= 0`` of ``f`` on ``[lo, hi]`` (grid + bisection).

    Returns ``("always", lo)`` when ``f >= 0`` everywhere, ``("never", None)`` when ``f(hi) < 0``.
    """
    xs = [lo + (hi - lo) * i / steps for i in range(steps + 1)]
    vals = [f(x) for x in xs]
    if vals[-1] < 0:
        return "never", None
    last_neg = max((i for i, v in enumerate(vals) if v < 0), default=None)
    if last_neg is None:
        return "always", lo
    a, b = xs[last_neg], xs[last_neg + 1]
    for _ in range(40):
        mid = 0.5 * (a + b)
        if f(mid) < 0:
            a = mid
        else:
            b = mid
    return "cross", 0.5 * (a + b)


def predicted_crossover(kernel: str, fmt: str, m: int, k: int, n: int, profile: MachineProfile,
                        row_cov=None, dense_path: str | None = None, hi: float = 0.999,
                        block_pruned: bool = False) -> tuple[str, float | None]:
    """Sparsity above which ``kernel`` beats dense: solve ``t_sparse(s) = t_dense`` on ``[0, hi]``.

    ``row_cov`` is ``None`` (uniform mask), a number, or a function of the sparsity. ``block_pruned`` assumes a
    BSR kernel's mask was pruned in whole blocks (``n_blocks = nnz / (bh bw)``) instead of uniformly. Returns
    ``(status, s)`` with status ``"cross"``, ``"always"`` (faster even at ``s = 0``) or ``"never"``.
    """
    t_d = dense_time_s(m, k, n, profile, path=dense_path)
    bh, bw = block_for(kernel, fmt)

    def f(s: float) -> float:
        nnz = (1.0 - s) * m * k
        cov = row_cov(s) if callable(row_cov) else row_cov
        nb = nnz / (bh * bw) if (block_pruned and fmt == "bsr") else None
        return t_d - sparse_time_s(kernel, fmt, m, k, n, nnz, cov, profile, nblocks=nb)

    return _solve_last_crossing(f, 0.0, hi)


def memory_crossover(fmt: str, m: int, k: int, index_bytes: int = 4, block=16) -> tuple[str, float | None]:
    """Sparsity above which the packed weight is smaller than the dense one (``bytes_sparse(s) = 4 M K``)."""
    dense = weight_bytes("dense", m, k, m * k)
    return _solve_last_crossing(lambda s: dense - weight_bytes(fmt, m, k, (1 - s) * m * k, index_bytes, block),
                                0.0, 0.999)
