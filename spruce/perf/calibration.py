"""Calibrate a ``MachineProfile`` on this machine with micro-benchmarks, cached per machine as JSON.

Measurements (FP32, ``torch.get_num_threads()`` threads):

* peak dense GFLOP/s: ``torch.mm`` of two 768 x 768 matrices (``2 n^3`` FLOPs over the fastest of 10 calls);
* bandwidth: STREAM-like ``x.sum()`` over a 96 MB tensor (3x the LLC; read bandwidth, what SpMM mostly does),
  with a copy (read + write) recorded beside it; the same sum over a quarter of the LLC (larger than the L2s,
  resident in the LLC) gives the LLC read bandwidth (``llc_bw_gbs``), and sysfs the per-core L2 (``l2_bytes``);

Every measurement keeps the fastest call: on a shared machine a short call that ran undisturbed is the machine's
speed, a long one is an average over other people's time slices.
* per kernel, on a throw-away uniformly random matrix:
  - overhead: a 16 x 16 call at 50% with N = 1;
  - efficiency tables over N in ``EFF_NS`` at each sparsity of ``EFF_SPARSITIES`` and each reduction length K
    of ``EFF_KS`` (M = 1024): the dense kernel's ``2 M K N / t / peak``; a sparse kernel's from paired
    dense/sparse rounds (``calibrate_kernel``). K is a table axis because it sets the slice of X a row tile
    walks (K x tile x 4 bytes): at K = 256 it sits in L1/L2, at K = 4096 it does not, and both the sparse
    kernels and the dense GEMM lose efficiency in ways a single in-cache point cannot show. The whole table
    is swept ``CALIBRATION_PASSES`` times and each point keeps its median, so minutes-long drift of a shared
    machine does not bend the table's shape;
  - gather penalty: ``GATHER_SHAPE`` (weight bigger than the cache, N = 1, memory-bound): the dense GEMV's
    ``t / (bytes / bw)``; a sparse kernel's at its byte-parity sparsity (``gather_sparsity``: packed bytes = dense
    bytes, where its batch-1 crossover lies) from paired dense/sparse rounds, the median of
    ``CALIBRATION_PASSES`` (``calibrate_kernel``); the v7 point (50%) is kept in ``meta["gather_penalty_half"]``;
  - conversion: ``prepare`` of 1024 x 2048 at 50% and 95%, solved for ``a M K + b nnz``.

The cache key is the CPU model, the thread count, the torch version and ``CALIBRATION_VERSION``; kernels
missing from a cached profile are calibrated and added, so a kernel that lands later costs only its own calibration.
"""
from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Iterable

import torch

from spruce.perf.allocator import steady_allocator
from spruce import io
from spruce.perf import model as perf_model
from spruce.perf.machine import cache_dir, cpu_model, l2_bytes, llc_bytes
from spruce.perf.matrices import synthetic_weight
from spruce.perf.profile import MachineProfile, read_efficiency
from spruce.perf.timing import time_call, time_pair


#: bumped when what calibration measures changes, so an older cached profile is not silently reused
#: (2: efficiency tables gained the K axis; 3: a density point at 0.3, where most crossovers lie; 4: tables
#: are the median of interleaved passes; 5: a fixed glibc mmap threshold, ``steady_allocator``;
#: 6: the sparse gather penalty measured at 50%, in DRAM; 7: the CPU kernels rewritten: AVX-512 path, native
#: nn.Linear kernel, register-blocked direct convolution; 8: LLC bandwidth and L2 size for the model's residual
#: terms, the gather penalty at each kernel's byte-parity sparsity, median of passes).
CALIBRATION_VERSION = 8


def profile_path(threads: int | None = None) -> Path:
    """``<cache>/machine-<hash>.json`` keyed by CPU model, threads, torch version, ``CALIBRATION_VERSION`` and
    the instruction set the spruce_cpu kernels run with (``$SPRUCE_ISA`` changes their speed)."""
    threads = threads or torch.get_num_threads()
    from spruce.kernels.cpu import build
    try:
        isa = build.isa()
    except RuntimeError:
        isa = "none"
    key = f"{cpu_model()}|{threads}|{torch.__version__}|v{CALIBRATION_VERSION}|{isa}"
    return cache_dir() / f"machine-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"


def measure_peak_gflops(n: int = 768, repeats: int = 10) -> float:
    """Dense FP32 GEMM GFLOP/s of ``torch.mm`` on ``n x n`` operands."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    t, _ = time_call(lambda: torch.mm(a, b), repeats=repeats, budget_s=2.0, warmup=2, stat="min")
    return 2.0 * n ** 3 / t / 1e9


def measure_bandwidth_gbs(mbytes: int = 96, repeats: int = 10) -> tuple[float, float]:
    """``(read GB/s, copy GB/s)``: ``x.sum()`` and ``y.copy_(x)`` over ``mbytes`` MB of FP32."""
    n = mbytes * 1024 * 1024 // 4
    x = torch.rand(n)
    y = torch.empty_like(x)
    t_sum, _ = time_call(lambda: x.sum(), repeats=repeats, budget_s=2.0, warmup=1, stat="min")
    t_copy, _ = time_call(lambda: y.copy_(x), repeats=repeats, budget_s=2.0, warmup=1, stat="min")
    return 4.0 * n / t_sum / 1e9, 8.0 * n / t_copy / 1e9


def measure_llc_bandwidth_gbs(nbytes: float, repeats: int = 50) -> float:
    """Read GB/s of ``x.sum()`` over ``nbytes`` of FP32 that stay in the LLC between calls (fastest call)."""
    n = max(int(nbytes) // 4, 1024)
    x = torch.rand(n)
    t, _ = time_call(lambda: x.sum(), repeats=repeats, budget_s=0.5, warmup=3, stat="min")
    return 4.0 * n / t / 1e9


def _packed_bytes(kernel, packed, fmt: str, m: int, k: int, nnz: int) -> float:
    try:
        return float(kernel.weight_bytes(packed))
    except (NotImplementedError, AttributeError):
        return perf_model.weight_bytes(fmt, m, k, nnz, perf_model.index_bytes_for(kernel.name, fmt),
                                       perf_model.block_for(kernel.name, fmt))


def _net(t: float, overhead_us: float) -> float:
    """``t`` less the per-call overhead, unless the overhead is not small against it (a disturbed tiny call on a
    loaded machine can take longer than a real one; subtracting it would give nonsense)."""
    o = overhead_us * 1e-6
    return t - o if o < 0.5 * t else t


#: columns, sparsities and reduction lengths at which the efficiency tables are measured (M = EFF_M rows).
EFF_NS = (1, 16, 128, 1024)
EFF_SPARSITIES = (0.5, 0.7, 0.9, 0.98)
EFF_KS = (256, 1024, 4096)
EFF_M = 1024
#: the efficiency tables are swept this many times (median per point), each point with this time budget
CALIBRATION_PASSES = 3
PASS_BUDGET_S = 0.35
#: the memory-bound calibration matrix (N = 1): 128 MB dense, 2.5x the LLC
GATHER_SHAPE = (4096, 8192)
#: the sparsity of the v7 sparse gather measurement (50%), kept beside the v8 one in ``meta["gather_penalty_half"]``
#: so the model before issue 17 can be rebuilt from a v8 profile; at 90% the packed weight partly stays in the
#: last-level cache between calls and the measured ratio drifts from one calibration to the next (numbers:
#: docs/measured/perf-notes.md).
GATHER_SPARSITY = 0.5
#: bounds of the byte-parity sparsity ``gather_sparsity`` measures at
GATHER_SPARSITY_RANGE = (0.2, 0.9)
#: time budget of one paired dense/sparse gather measurement (``CALIBRATION_PASSES`` of them per sparsity)
GATHER_BUDGET_S = 0.8


def gather_sparsity(kernel_name: str, fmt: str, m: int, k: int) -> float:
    """Where a kernel's gather penalty is measured: the sparsity at which its packed weight has the dense weight's
    bytes (``model.memory_crossover``; spruce_csr with 2-byte indices: 1/3, torch_csr: 1/2), clamped to
    ``GATHER_SPARSITY_RANGE``. A batch-1 call is memory-bound, so its crossover lies where ``g_s bytes_s = g_d
    bytes_d``, next to that parity point: measuring there calibrates the ratio the crossover depends on at the
    density it is decided at (v7 measured every kernel at 50%)."""
    st, s = perf_model.memory_crossover(fmt, m, k, perf_model.index_bytes_for(kernel_name, fmt),
                                        perf_model.block_for(kernel_name, fmt))
    lo, hi = GATHER_SPARSITY_RANGE
    if st == "never" or s is None:
        return hi
    return min(max(s, lo), hi)


def _passes(points: list, measure, passes: int) -> list[float]:
    """``measure(point)`` for every point, ``passes`` times over the whole list, and the median per point.

    A shared machine drifts over minutes (other tenants, clocks): measuring a table point by point would bake
    that drift into the table's shape (a crossover is a ratio of two table entries). Sweeping the whole table
    once per pass spreads every point over the calibration's duration, and the median drops a disturbed pass.
    """
    vals: list[list[float]] = [[] for _ in points]
    for _ in range(passes):
        for i, pt in enumerate(points):
            vals[i].append(measure(pt))
    return [statistics.median(v) for v in vals]


def _dense_tables(kernel, peak_gflops: float, overhead_us: float) -> dict[str, dict[str, float]]:
    """``{K: {N: 2 M K N / t / peak}}`` of the dense kernel (fastest call of each pass, median over passes)."""
    m = EFF_M
    mats = {k: kernel.prepare(torch.randn(m, k)) for k in EFF_KS}
    xs = {(k, n): torch.randn(k, n) for k in EFF_KS for n in EFF_NS}
    points = [(k, n) for k in EFF_KS for n in EFF_NS]

    def measure(pt):
        k, n = pt
        p, x = mats[k], xs[pt]
        t, _ = time_call(lambda: kernel.matmul(p, x), repeats=7, budget_s=PASS_BUDGET_S, warmup=1, stat="min")
        return 2.0 * m * k * n / _net(t, overhead_us) / (peak_gflops * 1e9)

    vals = _passes(points, measure, CALIBRATION_PASSES)
    out: dict[str, dict[str, float]] = {}
    for (k, n), v in zip(points, vals):
        out.setdefault(str(k), {})[str(n)] = v
    return out


def _sparse_tables(kernel, dense_kernel, dense_eff) -> dict[str, dict]:
    """``{K: {"by_density": {d: {N: e_s}}}}`` from paired dense/sparse rounds on the same matrix:
    ``e_s = e_d(N, K) * (useful / (M K)) * t_d / t_s`` (fastest call of each in a pass, median over passes)."""
    m, name, fmt = EFF_M, kernel.name, kernel.format
    mats = {}
    for k in EFF_KS:
        for s in EFF_SPARSITIES:
            w = synthetic_weight("uniform", m, k, s, seed=2)
            nnz = int((w != 0).sum())
            if fmt == "bsr":
                bh, bw = perf_model.block_for(name, fmt)
                useful = perf_model.expected_blocks(m, k, nnz, (bh, bw)) * bh * bw
            else:
                useful = float(nnz)
            mats[(k, s)] = (kernel.prepare(w), dense_kernel.prepare(w), useful)
    xs = {(k, n): torch.randn(k, n) for k in EFF_KS for n in EFF_NS}
    points = [(k, s, n) for k in EFF_KS for s in EFF_SPARSITIES for n in EFF_NS]

    def measure(pt):
        k, s, n = pt
        p, pd, useful = mats[(k, s)]
        x = xs[(k, n)]
        kernel.matmul(p, x)
        dense_kernel.matmul(pd, x)
        tp = time_pair(lambda: dense_kernel.matmul(pd, x), lambda: kernel.matmul(p, x), repeats=7,
                       budget_s=PASS_BUDGET_S)
        return read_efficiency(dense_eff, n, None, k) * useful / (m * k) * tp["ratio_min"]

    vals = _passes(points, measure, CALIBRATION_PASSES)
    out: dict[str, dict] = {}
    for (k, s, n), v in zip(points, vals):
        out.setdefault(str(k), {"by_density": {}})["by_density"].setdefault(f"{1.0 - s:g}", {})[str(n)] = v
    return out


def calibrate_kernel(kernel, peak_gflops: float, bw_gbs: float, cache_bytes: float, dense_kernel=None,
                     dense_eff: dict[str, float] | None = None, dense_gather: float | None = None) -> dict:
    """Overhead (us), efficiency table, gather penalty and conversion ``(a, b)`` ns of one kernel.

    The dense kernel (``kernel.format == "dense"``) gets its GEMM efficiency tables ``{K: {N: 2 M K N / t /
    peak}}``. A sparse kernel's efficiency is measured *against* dense: at each K, N and sparsity, rounds
    alternate a dense and a sparse call on the same matrix (``time_pair``) and ``e_s = e_d(N, K) * (useful /
    (M K)) * t_d / t_s`` with the fastest call of each, so the sparse/dense ratio the crossover depends on
    survives a loaded machine; every table point is the median of ``CALIBRATION_PASSES`` sweeps (``_passes``).
    """
    name, fmt = kernel.name, kernel.format
    out: dict = {}
    # overhead: a tiny call
    w = synthetic_weight("uniform", 16, 16, 0.5, seed=1)
    p = kernel.prepare(w)
    x = torch.randn(16, 1)
    t, _ = time_call(lambda: kernel.matmul(p, x), repeats=50, budget_s=0.2, warmup=3, stat="min")
    out["overhead_us"] = t * 1e6
    if fmt == "dense":
        out["eff"] = {"by_k": _dense_tables(kernel, peak_gflops, out["overhead_us"])}
        # the dense GEMV streams the weight: its time over bytes / bandwidth is its own gather penalty
        mg, kg = GATHER_SHAPE
        w = torch.randn(mg, kg)
        x = torch.randn(kg, 1)
        t, _ = time_call(lambda: kernel.matmul(w, x), repeats=9, budget_s=1.5, warmup=1, stat="min")
        out["gather_penalty"] = t / (perf_model.dense_bytes(mg, kg, 1) / (bw_gbs * 1e9))
        return out
    if dense_kernel is None or not dense_eff:
        raise ValueError(f"calibrating {name} needs the dense kernel and its efficiency table")
    out["eff"] = {"by_k": _sparse_tables(kernel, dense_kernel, dense_eff)}
    # gather penalty: memory-bound (N = 1), weight bigger than the cache, paired with the dense GEMV on the same
    # matrix: g_s = g_d * (t_s / t_d) * (bytes_d / bytes_s), the median over passes; at the byte-parity sparsity
    # (the v8 value) and at 50% (v7's, kept for the model before issue 17)
    m, k = GATHER_SHAPE
    g_dense = dense_gather if dense_gather else 1.0
    for key, sp in (("gather_penalty", gather_sparsity(name, fmt, m, k)), ("gather_penalty_half", GATHER_SPARSITY)):
        w = synthetic_weight("uniform", m, k, sp, seed=3)
        nnz = int((w != 0).sum())
        p = kernel.prepare(w)
        x = torch.randn(k, 1)
        kernel.matmul(p, x)
        byts = _packed_bytes(kernel, p, fmt, m, k, nnz) + 4.0 * (k + m)
        ratios = [time_pair(lambda: dense_kernel.matmul(w, x), lambda: kernel.matmul(p, x), repeats=9,
                            budget_s=GATHER_BUDGET_S)["ratio_min"] for _ in range(CALIBRATION_PASSES)]
        out[key] = g_dense * perf_model.dense_bytes(m, k, 1) / byts / statistics.median(ratios)
        out[key + "_sparsity"] = sp
        del p, w
    # conversion: two sparsities, solve t = a*MK + b*nnz
    m, k = 1024, 2048
    pts = []
    for s in (0.5, 0.95):
        w = synthetic_weight("uniform", m, k, s, seed=4)
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            kernel.prepare(w)
            ts.append(time.perf_counter() - t0)
        pts.append((int((w != 0).sum()), min(ts)))
    (n1, t1), (n2, t2) = pts
    b_ns = max((t1 - t2) / (n1 - n2), 0.0) * 1e9
    a_ns = max((t2 * 1e9 - b_ns * n2) / (m * k), 0.0)
    out["convert_a_ns"], out["convert_b_ns"] = a_ns, b_ns
    return out


def calibrate(kernels: Iterable, base: MachineProfile | None = None, progress: bool = True) -> MachineProfile:
    """Measure the machine (unless ``base`` is given) and every kernel of ``kernels`` missing from it."""
    steady_allocator()  # else one kernel's large temporaries change the next one's allocation costs
    if base is None:
        peak = measure_peak_gflops()
        bw_read, bw_copy = measure_bandwidth_gbs()
        llc = llc_bytes()
        base = MachineProfile(
            name=f"cpu:{cpu_model()}/{torch.get_num_threads()}t", peak_gflops=peak, bw_gbs=bw_read,
            cache_bytes=llc, threads=torch.get_num_threads(), overhead_us={}, sparse_eff={},
            gather_penalty={}, convert_ns={}, l2_bytes=l2_bytes(), llc_bw_gbs=measure_llc_bandwidth_gbs(llc / 4),
            meta={"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "bw_copy_gbs": bw_copy, "calibrated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    kernels = list(kernels)
    dense = next((kn for kn in kernels if kn.format == "dense"), None)
    if dense is None:
        from spruce.kernels import get
        dense = get("torch_dense")
    todo = [kn for kn in kernels if kn.name not in base.sparse_eff and kn.name not in base.overhead_us]
    if not base.dense_eff and dense not in todo and any(kn.format != "dense" for kn in todo):
        todo.insert(0, dense)
    todo.sort(key=lambda kn: kn.format != "dense")  # the dense table first: sparse efficiencies build on it
    try:
        from tqdm import tqdm
        it = tqdm(todo, desc="calibrate kernels", disable=not progress or not todo)
    except ImportError:
        it = todo
    for kn in it:
        r = calibrate_kernel(kn, base.peak_gflops, base.bw_gbs, base.cache_bytes, dense, base.dense_eff,
                             base.gather_penalty.get(dense.name))
        base.overhead_us[kn.name] = r["overhead_us"]
        if getattr(kn, "x_panel_bytes", None):
            base.x_panel_bytes[kn.name] = float(kn.x_panel_bytes)
        if kn.format == "dense":
            base.dense_eff = r["eff"]
            base.gather_penalty[kn.name] = r["gather_penalty"]
            continue
        base.sparse_eff[kn.name] = r["eff"]
        base.gather_penalty[kn.name] = r["gather_penalty"]
        base.meta.setdefault("gather_penalty_half", {})[kn.name] = r["gather_penalty_half"]
        base.meta.setdefault("gather_sparsity", {})[kn.name] = r["gather_penalty_sparsity"]
        base.convert_ns[kn.name] = [r["convert_a_ns"], r["convert_b_ns"]]
    return base


#: bounds outside which a calibrated number is not this machine's speed but a disturbed measurement
#: (``check_profile``): a tiny call's overhead, the dense GEMM's efficiency over the measured peak, a gather penalty
MAX_OVERHEAD_US = 1000.0
MAX_DENSE_EFF = 1.25
GATHER_PENALTY_RANGE = (0.05, 20.0)


def _leaves(table) -> list[float]:
    """Every number of an efficiency table (a number, ``{"N": eff}``, or nested ``by_k`` / ``by_density``)."""
    if isinstance(table, dict):
        return [x for v in table.values() for x in _leaves(v)]
    return [float(table)] if isinstance(table, (int, float)) else []


def check_profile(prof: MachineProfile) -> list[str]:
    """One line per calibrated number that cannot be this machine's speed (a run disturbed by other processes):
    the LLC read slower than memory, a dense GEMM faster than the measured peak, a tiny call over
    ``MAX_OVERHEAD_US``, a gather penalty outside ``GATHER_PENALTY_RANGE``. Empty when the profile is plausible."""
    out = []
    if prof.llc_bw_gbs and prof.bw_gbs and prof.llc_bw_gbs < prof.bw_gbs:
        out.append(f"LLC read bandwidth {prof.llc_bw_gbs:.3g} GB/s is below the memory bandwidth {prof.bw_gbs:.3g} "
                   "GB/s")
    eff = max(_leaves(prof.dense_eff), default=0.0)
    if eff > MAX_DENSE_EFF:
        out.append(f"the dense GEMM ran at {eff:.2f}x the measured peak {prof.peak_gflops:.3g} GFLOP/s (the peak "
                   "measurement was disturbed)")
    slow = sorted(n for n, us in prof.overhead_us.items() if us > MAX_OVERHEAD_US)
    if slow:
        out.append(f"per-call overhead over {MAX_OVERHEAD_US:g} us for {', '.join(slow)} "
                   f"(max {max(prof.overhead_us[n] for n in slow):.0f} us for a 16x16 call)")
    lo, hi = GATHER_PENALTY_RANGE
    odd = sorted(n for n, g in prof.gather_penalty.items() if not lo <= g <= hi)
    if odd:
        out.append(f"gather penalty outside [{lo:g}, {hi:g}] for " +
                   ", ".join(f"{n} ({prof.gather_penalty[n]:.3g})" for n in odd))
    return out


def _warn_implausible(prof: MachineProfile, path: Path) -> None:
    """Record ``check_profile``'s findings in ``meta["warnings"]`` and say them on stderr, with the way out."""
    found = check_profile(prof)
    prof.meta["warnings"] = found
    if found:
        print(f"spruce: the machine profile {path} looks disturbed (another process had the CPU?): "
              + "; ".join(found) + ". Recalibrate on a quiet machine: "
              f"python -m spruce.perf threads={prof.threads} recalibrate=true",
              file=sys.stderr)


def load_or_calibrate(kernels: Iterable, recalibrate: bool = False, path: Path | None = None,
                      progress: bool = True) -> MachineProfile:
    """The cached profile for this machine, calibrating (and caching) whatever is missing."""
    path = path or profile_path()
    kernels = list(kernels)
    base = None
    if path.exists() and not recalibrate:
        try:
            base = MachineProfile.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"corrupt machine profile {path} ({e}); delete it or pass --recalibrate") from None
    before = None if base is None else json.dumps(base.to_dict(), sort_keys=True)
    prof = calibrate(kernels, base, progress)
    if json.dumps(prof.to_dict(), sort_keys=True) != before:
        _warn_implausible(prof, path)  # said once, when something was measured; kept in the cached file
        io.write_json(path, prof.to_dict(), sort_keys=True)
    return prof
