"""The measurement loop: every case x kernel x N -> one CSV row (verified against dense before it is timed).

For each case the weight is built once and the dense baseline (``torch_dense``) timed on it; then each kernel:
``prepare`` (timed once, the conversion cost), a verification call against the dense result (also its warm-up),
and timed rounds that alternate a dense call and a kernel call (``time_pair``). Columns: ``time_ms`` /
``dense_ms`` are the medians of those rounds and ``speedup_median`` the median per-round ratio; ``time_min_ms`` /
``dense_min_ms`` the fastest calls and ``speedup`` their ratio. The study's curves use ``speedup`` (fastest vs
fastest): on a machine shared by many processes a call either runs undisturbed or loses its core for a time
slice, and the fastest call of each is the undisturbed one. A kernel that raises or
gives a wrong answer is recorded with ``status`` ``failed`` / ``wrong`` and its error, never as a time.
"""
from __future__ import annotations

import gc
import math
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from spruce import io
from spruce.perf.allocator import steady_allocator
from spruce.perf import model as perf_model
from spruce.perf.matrices import nonempty_blocks, row_cov
from spruce.perf.profile import MachineProfile
from spruce.study.sources import Case
from spruce.perf.timing import time_call, time_pair

COLUMNS = ["source", "model", "layer", "m", "k", "n", "batch", "kind", "group", "sparsity_target", "sparsity",
           "nnz", "row_cov", "kernel", "format", "status", "error", "time_ms", "dense_ms", "speedup_median",
           "time_min_ms", "dense_min_ms", "speedup",
           "weight_bytes", "dense_weight_bytes", "convert_ms", "calls", "predicted_ms", "predicted_dense_ms",
           "nblocks"]


def _verify(y: torch.Tensor, ref: torch.Tensor) -> str:
    """Empty string when ``y`` matches ``ref`` (max error <= 1e-3 * max |ref| + 1e-5), else the reason."""
    if tuple(y.shape) != tuple(ref.shape):
        return f"shape {tuple(y.shape)} != {tuple(ref.shape)}"
    if ref.numel() == 0:
        return ""
    err = float((y.to(torch.float64) - ref.to(torch.float64)).abs().max())
    tol = 1e-3 * float(ref.abs().max()) + 1e-5
    return "" if err <= tol else f"max abs error {err:.3g} > tolerance {tol:.3g}"


#: a kernel this many times slower than dense at some sparsity is not timed at lower sparsities of the same
#: layer and N: its time only grows with the number of nonzeros, so it cannot cross there (rows: ``skipped``).
HOPELESS = 5.0


def _skip_row(row: dict[str, Any], sparsity: float) -> dict[str, Any]:
    """``row`` marked ``skipped``: the kernel was ``HOPELESS`` times slower than dense at ``sparsity``."""
    return dict(row, status="skipped", error=f"{HOPELESS:g}x slower than dense at sparsity {sparsity:g} already",
                time_ms="", speedup="", calls=0)


def _dense_baseline(case: Case, w: torch.Tensor, xs: dict, dense_kernel, repeats: int, budget_s: float):
    """The dense kernel's packed weight, reference outputs and median / fastest times (ms) per N."""
    pd = dense_kernel.prepare(w)
    refs, dense_ms, dense_min = {}, {}, {}
    for n in case.ns:
        refs[n] = dense_kernel.matmul(pd, xs[n])
        t, _ = time_call(lambda: dense_kernel.matmul(pd, xs[n]), repeats, budget_s, warmup=0)
        t_min, _ = time_call(lambda: dense_kernel.matmul(pd, xs[n]), 1, budget_s, warmup=0, stat="min")
        dense_ms[n], dense_min[n] = t * 1e3, min(t, t_min) * 1e3
    return pd, refs, dense_ms, dense_min


def _timing_fields(tp: dict[str, float]) -> dict[str, float]:
    """A row's timing columns (ms and speedups) from one ``time_pair`` result."""
    return dict(time_ms=tp["fn_median"] * 1e3, dense_ms=tp["ref_median"] * 1e3, speedup_median=tp["ratio_median"],
                time_min_ms=tp["fn_min"] * 1e3, dense_min_ms=tp["ref_min"] * 1e3, speedup=tp["ratio_min"])


def _time_kernel_at(row: dict[str, Any], kn, packed, x: torch.Tensor, ref: torch.Tensor, dense_call,
                    repeats: int, budget_s: float) -> float | None:
    """Verify then time one kernel at one N, updating ``row``; returns the fastest-round speedup when timed."""
    try:
        err = _verify(kn.matmul(packed, x), ref)
        if err:
            row.update(status="wrong", error=err, time_ms="", speedup="", calls=0)
            return None
        tp = time_pair(dense_call, lambda: kn.matmul(packed, x), repeats, budget_s)
        row.update(status="ok", error="", **_timing_fields(tp), calls=tp["rounds"])
        return tp["ratio_min"]
    except Exception as e:  # recorded as failed
        row.update(status="failed", error=io.first_line(e, 300, with_type=True), time_ms="", speedup="", calls=0)
        return None


#: rounds of the second, confirming measurement before a kernel is called hopeless (one disturbed call at a high
#: sparsity must not skip every lower one).
CONFIRM_ROUNDS = 3


def _confirm_hopeless(row: dict[str, Any], kn, packed, x: torch.Tensor, dense_call, ratio: float) -> float:
    """Re-time a kernel that looked ``HOPELESS`` times slower than dense: ``CONFIRM_ROUNDS`` more interleaved
    rounds (no budget cut). The row keeps the better of the two measurements; returns its fastest-round ratio."""
    tp = time_pair(dense_call, lambda: kn.matmul(packed, x), CONFIRM_ROUNDS, float("inf"))
    if tp["ratio_min"] <= ratio:
        return ratio
    row.update(**_timing_fields(tp), calls=row.get("calls", 0) + tp["rounds"])
    return tp["ratio_min"]


def _kernel_rows(case: Case, kn, w: torch.Tensor, base: dict, ctx: dict, hopeless: dict) -> list[dict[str, Any]]:
    """Rows of one sparse kernel for every N of ``case`` (``ctx``: shared inputs, references and timings)."""
    batches, dense_ms, profile = ctx["batches"], ctx["dense_ms"], ctx["profile"]
    m, k = w.shape
    nb = None
    if kn.format == "bsr":
        blk = perf_model.block_for(kn.name, kn.format)
        nb = ctx["blocks"].setdefault(blk, nonempty_blocks(w, blk))
    keys = {n: (case.model, case.layer, case.kind, n, kn.name) for n in case.ns}
    if all(keys[n] in hopeless and case.sparsity < hopeless[keys[n]] for n in case.ns):
        return [_skip_row(dict(base, n=n, batch=b, kernel=kn.name, format=kn.format, dense_ms=dense_ms[n],
                               weight_bytes="", convert_ms="", nblocks=""), hopeless[keys[n]])
                for n, b in zip(case.ns, batches)]
    try:
        t0 = time.perf_counter()
        packed = kn.prepare(w)
        conv_ms = (time.perf_counter() - t0) * 1e3
        wbytes = int(kn.weight_bytes(packed))
    except Exception as e:  # a failing kernel is a result: recorded, not raised
        return [dict(base, n=n, batch=b, kernel=kn.name, format=kn.format, status="failed",
                     error="prepare: " + io.first_line(e, 300, with_type=True), time_ms="", dense_ms=dense_ms[n],
                     speedup="", weight_bytes="", convert_ms="", calls=0, predicted_ms="", predicted_dense_ms="",
                     nblocks=nb if nb is not None else "")
                for n, b in zip(case.ns, batches)]
    rows = []
    for n, b in zip(case.ns, batches):
        row = dict(base, n=n, batch=b, kernel=kn.name, format=kn.format, dense_ms=dense_ms[n],
                   weight_bytes=wbytes, convert_ms=conv_ms, nblocks=nb if nb is not None else "")
        if keys[n] in hopeless and case.sparsity < hopeless[keys[n]]:
            rows.append(_skip_row(row, hopeless[keys[n]]))
            continue
        if profile is not None:
            row["predicted_ms"] = perf_model.sparse_time_s(kn.name, kn.format, m, k, n, base["nnz"],
                                                           base["row_cov"], profile, nblocks=nb) * 1e3
            row["predicted_dense_ms"] = ctx["predicted_dense"][n]
        pd, dk = ctx["pd"], ctx["dense_kernel"]
        dense_call = lambda: dk.matmul(pd, ctx["xs"][n])  # noqa: E731
        ratio = _time_kernel_at(row, kn, packed, ctx["xs"][n], ctx["refs"][n], dense_call, ctx["repeats"],
                                ctx["budget_s"])
        if ratio is not None and ratio < 1.0 / HOPELESS:
            ratio = _confirm_hopeless(row, kn, packed, ctx["xs"][n], dense_call, ratio)
        if ratio is not None and ratio < 1.0 / HOPELESS:
            hopeless[keys[n]] = min(hopeless.get(keys[n], 1.0), case.sparsity)
        rows.append(row)
    del packed
    gc.collect()
    return rows


def run_case(case: Case, kernels: list, dense_kernel, repeats: int, budget_s: float,
             profile: MachineProfile | None, hopeless: dict[tuple, float] | None = None) -> list[dict[str, Any]]:
    """Rows for one case: per kernel and per N (the dense kernel included as the baseline row).

    ``hopeless`` maps ``(model, layer, kind, n, kernel)`` to the sparsity at which that kernel was ``HOPELESS``
    times slower than dense; it is read (skip lower sparsities) and updated.
    """
    hopeless = {} if hopeless is None else hopeless
    w = case.make()
    m, k = w.shape
    if (m, k) != (case.m, case.k):
        raise ValueError(f"case {case.group}: made a {tuple(w.shape)} matrix, expected {(case.m, case.k)}")
    nnz = int((w != 0).sum())
    base = dict(source=case.source, model=case.model, layer=case.layer, m=m, k=k, kind=case.kind,
                group=case.group, sparsity_target=case.sparsity, sparsity=1.0 - nnz / (m * k), nnz=nnz,
                row_cov=row_cov(w), dense_weight_bytes=4 * m * k)
    batches = case.batches or [None] * len(case.ns)
    xs = {n: torch.randn(k, n, generator=torch.Generator().manual_seed(n)) for n in case.ns}
    pd, refs, dense_ms, dense_min = _dense_baseline(case, w, xs, dense_kernel, repeats, budget_s)
    predicted_dense = {n: perf_model.predict_ms(dense_kernel.name, "dense", m, k, n, m * k, None, profile)
                       if profile else None for n in case.ns}
    rows: list[dict[str, Any]] = [
        dict(base, n=n, batch=b, kernel=dense_kernel.name, format="dense", status="ok", error="",
             time_ms=dense_ms[n], dense_ms=dense_ms[n], speedup=1.0, speedup_median=1.0, time_min_ms=dense_min[n],
             dense_min_ms=dense_min[n], weight_bytes=4 * m * k, convert_ms=0.0, calls=0,
             predicted_ms=predicted_dense[n], predicted_dense_ms=predicted_dense[n], nblocks="")
        for n, b in zip(case.ns, batches)]
    ctx = dict(batches=batches, xs=xs, refs=refs, dense_ms=dense_ms, pd=pd, dense_kernel=dense_kernel,
               profile=profile, predicted_dense=predicted_dense, repeats=repeats, budget_s=budget_s, blocks={})
    for kn in kernels:
        if kn.name != dense_kernel.name:
            rows.extend(_kernel_rows(case, kn, w, base, ctx, hopeless))
    del pd, ctx
    return rows


def write_rows(rows: Iterable[dict[str, Any]], path: Path) -> Path:
    """Write rows to ``path`` as CSV (``COLUMNS``), atomically."""
    return io.write_csv(path, rows, COLUMNS)


def run_sweep(cases: list[Case], kernels: list, dense_kernel, repeats: int = 3, budget_s: float = 1.0,
              profile: MachineProfile | None = None, progress: bool = True,
              csv_path: Path | None = None) -> list[dict[str, Any]]:
    """Time every case (tqdm progress); rows are re-written to ``csv_path`` after each case when given."""
    from tqdm import tqdm

    steady_allocator()  # the same allocator policy as calibration, whatever ran before in this process

    rows: list[dict[str, Any]] = []
    hopeless: dict[tuple, float] = {}
    # highest sparsity first within a layer, so hopeless kernels are known before the expensive low sparsities
    order = {}
    for c in cases:
        order.setdefault((c.source, c.model, c.layer), len(order))
    cases = sorted(cases, key=lambda c: (order[(c.source, c.model, c.layer)], -c.sparsity))
    bar = tqdm(cases, desc="study", disable=not progress, unit="case")
    for case in bar:
        bar.set_postfix_str(f"{case.model}:{case.layer} {case.kind} s={case.sparsity}")
        rows += run_case(case, kernels, dense_kernel, repeats, budget_s, profile, hopeless)
        if csv_path is not None:
            write_rows(rows, csv_path)
        gc.collect()
    return rows


def as_float(v: Any) -> float:
    """A CSV cell as float (NaN when empty)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
