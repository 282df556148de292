"""``MachineProfile``: the machine constants the performance model needs, and the H100 data-sheet profile.

A profile is plain data (JSON round trip with ``to_dict``/``from_dict``). Per-kernel constants are looked up by
kernel name, then by format, then under ``"default"``, so a profile calibrated before a kernel existed still
gives a (rough) prediction for it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


def _interp_log(pts: list[tuple[float, float]], x: float | None) -> float:
    """Piecewise linear in log x through sorted ``(x, value)`` points, clamped at both ends (``None``: the last)."""
    if not pts:
        raise ValueError("empty efficiency table")
    if x is None or x >= pts[-1][0]:
        return pts[-1][1]
    if x <= pts[0][0]:
        return pts[0][1]
    lx = math.log(x)
    for (x0, v0), (x1, v1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            t = (lx - math.log(x0)) / (math.log(x1) - math.log(x0))
            return v0 + t * (v1 - v0)
    return pts[-1][1]


def interp_log_n(value: Any, n: int | None) -> float:
    """A number, or a table ``{"N": v}`` read at ``n``: linear in log N between points, clamped outside
    (``n=None`` reads the largest N)."""
    if not isinstance(value, dict):
        return float(value)
    return _interp_log(sorted((float(k), float(v)) for k, v in value.items()), n)


def interp_density(tables: dict[str, Any], n: int | None, density: float | None) -> float:
    """Efficiency from per-density tables ``{"0.1": {"N": eff}, ...}``: each table read at ``n``
    (``interp_log_n``), then linear in log density between the two nearest densities, clamped outside."""
    pts = sorted((float(d), interp_log_n(t, n)) for d, t in tables.items())
    if not pts:
        raise ValueError("empty efficiency table")
    return _interp_log(pts, density if density is not None and density > 0 else pts[0][0])


def read_efficiency(value: Any, n: int | None, density: float | None = None, k: int | None = None) -> float:
    """Read an efficiency entry at ``n`` columns, ``density`` and reduction length ``k``.

    ``value`` is a number, ``{"N": eff}``, ``{"by_density": {"<d>": {"N": eff}}}``, or ``{"by_k": {"<K>": <any
    of those>}}``: the tables measured at each K are read first, then interpolated linearly in log K (clamped
    outside; ``k=None`` reads the largest K). K is what decides whether a kernel's slice of X (K rows by its
    column tile) stays in L1/L2: the same kernel at the same N and density runs slower per FLOP at large K.
    """
    if isinstance(value, dict) and "by_k" in value:
        pts = sorted((float(kk), read_efficiency(t, n, density)) for kk, t in value["by_k"].items())
        return _interp_log(pts, k)
    if isinstance(value, dict) and "by_density" in value:
        return interp_density(value["by_density"], n, density)
    return interp_log_n(value, n)


#: the model's residual terms (issue 17), each switched on per profile (``MachineProfile.terms``)
RESIDUAL_TERMS = ("weight_residency", "x_panel_l2")


@dataclass
class MachineProfile:
    """Machine constants of the roofline model.

    Attributes:
        name: a label (``"cpu:AMD EPYC/2t"``, ``"h100-sxm (data sheet)"``).
        peak_gflops: dense FP32 GEMM throughput, GFLOP/s (1e9 FLOP per second).
        bw_gbs: sustained memory bandwidth, GB/s (1e9 bytes per second).
        cache_bytes: last-level cache size in bytes (activations that fit are read once).
        threads: worker threads (CPU) or parallel units (GPU SMs) the row partition is split over.
        overhead_us: per-call overhead in microseconds per kernel (time of a tiny call).
        sparse_eff: achieved sparse GFLOP/s / ``peak_gflops`` per kernel (counting ``2*nnz*N`` useful FLOPs,
            or ``2*blocks*bh*bw*N`` for BSR): a number, or a table ``{"N": eff}`` over the number of columns N,
            interpolated linearly in log N and clamped at its ends (small N runs far below a large N's rate),
            or ``{"by_density": {"<density>": {"N": eff}}}`` (long rows amortise per-row work: a 50%-dense
            matrix runs faster per nonzero than a 2% one), interpolated in log density, or
            ``{"by_k": {"<K>": <table>}}``, interpolated in log K (the reduction length sets the working set
            of X a row tile touches, so efficiency falls once K x tile no longer fits in L1/L2; see
            ``read_efficiency``).
        dense_eff: the same table for the dense GEMM (fraction of ``peak_gflops`` reached at N columns, or
            ``{"by_k": {"<K>": {"N": eff}}}``); empty means 1.
        gather_penalty: multiplier (>0) on the sparse kernel's memory stream: measured time of a memory-bound
            call over ``bytes / bw``; 1 means it streams at full bandwidth.
        convert_ns: one-off conversion (``prepare``) cost per kernel as ``[ns per dense element, ns per nnz]``.
        x_panel_bytes: per kernel that cuts N into cache-resident panels of X (``Kernel.x_panel_bytes``), the
            panel size; such a kernel reads X from memory once (re-read factor 1) however large X is.
        l2_bytes: per-core level-2 cache in bytes (0: unknown, the ``x_panel_l2`` term is off).
        llc_bw_gbs: read bandwidth from the last-level cache, GB/s (a STREAM-like sum over a buffer larger than
            the L2s and smaller than the LLC; 0: unknown, the ``x_panel_l2`` term is off).
        terms: the residual terms of the model in use (``RESIDUAL_TERMS``; issue 17): ``"weight_residency"`` (a
            weight that fits in the LLC is not streamed from memory on every call) and ``"x_panel_l2"`` (a
            panelled kernel whose X panel does not fit in L2 reads X from the LLC); ``[]`` is the model before.
        dense_paths: alternative dense paths ``{name: [GFLOP/s, bytes per element]}`` (GPU: FP32 SIMT, TF32 and
            BF16 tensor cores). ``"fp32"`` is the path ``peak_gflops`` describes.
        meta: where the numbers came from (CPU model, torch version, raw measurements, citations).
    """

    name: str
    peak_gflops: float
    bw_gbs: float
    cache_bytes: float
    threads: int
    overhead_us: dict[str, float] = field(default_factory=lambda: {"default": 10.0})
    sparse_eff: dict[str, Any] = field(default_factory=lambda: {"default": 0.1})
    dense_eff: dict[str, float] = field(default_factory=dict)
    gather_penalty: dict[str, float] = field(default_factory=lambda: {"default": 1.0})
    convert_ns: dict[str, list[float]] = field(default_factory=lambda: {"default": [1.0, 10.0]})
    dense_paths: dict[str, list[float]] = field(default_factory=dict)
    x_panel_bytes: dict[str, float] = field(default_factory=dict)
    l2_bytes: float = 0.0
    llc_bw_gbs: float = 0.0
    terms: list[str] = field(default_factory=lambda: list(RESIDUAL_TERMS))
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for what, v in (("peak_gflops", self.peak_gflops), ("bw_gbs", self.bw_gbs),
                        ("cache_bytes", self.cache_bytes), ("threads", self.threads)):
            if not v > 0:
                raise ValueError(f"MachineProfile.{what} must be > 0, got {v!r}")
        for what, v in (("l2_bytes", self.l2_bytes), ("llc_bw_gbs", self.llc_bw_gbs)):
            if not v >= 0:
                raise ValueError(f"MachineProfile.{what} must be >= 0 (0: unknown), got {v!r}")
        bad = [t for t in self.terms if t not in RESIDUAL_TERMS]
        if bad:
            raise ValueError(f"MachineProfile.terms {bad} unknown; allowed: {', '.join(RESIDUAL_TERMS)}")

    def has_term(self, term: str) -> bool:
        """Whether the residual ``term`` (``RESIDUAL_TERMS``) is on for predictions with this profile."""
        return term in self.terms

    @staticmethod
    def _lookup(table: dict[str, Any], kernel: str, fmt: str, default: Any) -> Any:
        for key in (kernel, fmt, "default"):
            if key in table:
                return table[key]
        return default

    def overhead_s(self, kernel: str, fmt: str) -> float:
        """Per-call overhead of ``kernel`` in seconds."""
        return float(self._lookup(self.overhead_us, kernel, fmt, 0.0)) * 1e-6

    def eff(self, kernel: str, fmt: str, n: int | None = None, density: float | None = None,
            k: int | None = None) -> float:
        """Sparse efficiency of ``kernel`` (fraction of ``peak_gflops``) at ``n`` columns, ``density`` and
        reduction length ``k``."""
        return read_efficiency(self._lookup(self.sparse_eff, kernel, fmt, 0.1), n, density, k)

    def dense_efficiency(self, n: int | None = None, k: int | None = None) -> float:
        """Fraction of ``peak_gflops`` the dense GEMM reaches at ``n`` columns and reduction length ``k`` (1
        without a table)."""
        return read_efficiency(self.dense_eff, n, None, k) if self.dense_eff else 1.0

    def gather(self, kernel: str, fmt: str) -> float:
        """Gather penalty of ``kernel`` (multiplier on its bytes / bandwidth time)."""
        return float(self._lookup(self.gather_penalty, kernel, fmt, 1.0))

    def convert(self, kernel: str, fmt: str) -> tuple[float, float]:
        """``(ns per dense element, ns per nnz)`` of ``kernel``'s ``prepare``."""
        a, b = self._lookup(self.convert_ns, kernel, fmt, [0.0, 0.0])
        return float(a), float(b)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MachineProfile":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"MachineProfile: unknown field(s) {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**d)


def h100_profile() -> MachineProfile:
    """An NVIDIA H100 SXM5 80 GB from the data sheet, for predictions only (nothing here was measured).

    Data sheet: NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100, 2023), SXM column:
    3.35 TB/s HBM3; FP32 67 TFLOP/s (SIMT, no tensor cores); TF32 tensor core 989 TFLOP/s *with sparsity*,
    i.e. ~495 dense; BF16 tensor core 1,979 with sparsity, i.e. ~989 dense. L2 cache 50 MB, 132 SMs.

    Sparse-kernel constants are assumptions, not data-sheet numbers: a CSR SpMM in FP32 on CUDA cores reaches
    about a quarter of the FP32 peak on useful FLOPs (Gale et al., SC20, report Sputnik at roughly 25-30% of
    the V100's FP32 peak on DLMC at 90% sparsity), streams at full bandwidth, and a launch costs ~5 us.
    """
    return MachineProfile(
        name="h100-sxm (data sheet)",
        peak_gflops=67_000.0,
        bw_gbs=3_350.0,
        cache_bytes=50e6,
        threads=132,
        overhead_us={"default": 5.0},
        sparse_eff={"default": 0.25, "bsr": 0.5},
        gather_penalty={"default": 1.0},
        convert_ns={"default": [0.01, 0.05]},
        dense_paths={"fp32": [67_000.0, 4.0], "tf32_tc": [495_000.0, 4.0], "bf16_tc": [989_000.0, 2.0]},
        # the residual terms are CPU cache effects measured on a calibrated machine; the data-sheet model stays
        # the plain roofline (every weight streamed from HBM)
        terms=[],
        meta={"source": "NVIDIA H100 datasheet (SXM5); sparse constants assumed (Gale et al. SC20)"},
    )
