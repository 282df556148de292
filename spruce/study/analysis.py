"""Turn sweep rows into the study's tables: crossovers (measured and predicted), winners, amortisation, memory
crossover, real-vs-synthetic time ratios and H100 predictions. Plain lists of dicts, no plotting here.

A *curve* is the rows of one (source, model, layer, N, kind, kernel) over sparsity. The *primary* kind of a source
(what the crossover and winner tables show) is the real topology where there is one (``real`` for checkpoints,
``dlmc_magnitude`` for DLMC) and the first generator kind for named shapes.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

import numpy as np

from spruce.perf import model as perf_model
from spruce.study.crossover import Crossover, find_crossover, within
from spruce.perf.profile import MachineProfile
from spruce.study.sources import REAL_KINDS
from spruce.study.sweep import as_float

BEST = "best sparse"


def shape_key(r: dict[str, Any]) -> str:
    """``model:layer@N=n`` of a row."""
    return f"{r['model']}:{r['layer']}@N={r['n']}"


def primary_kind(rows: list[dict[str, Any]], source: str, kinds_order: list[str]) -> str:
    """The kind the main tables use for ``source``."""
    present = {r["kind"] for r in rows if r["source"] == source}
    for k in REAL_KINDS:
        if k in present:
            return k
    for k in kinds_order:
        if k in present:
            return k
    return sorted(present)[0]


def t_ms(r: dict[str, Any]) -> float:
    """A row's fastest call in ms (``time_min_ms``; ``time_ms`` for rows without it)."""
    v = as_float(r.get("time_min_ms"))
    return v if v == v else as_float(r["time_ms"])


def d_ms(r: dict[str, Any]) -> float:
    """The fastest dense call paired with a row, in ms."""
    v = as_float(r.get("dense_min_ms"))
    return v if v == v else as_float(r["dense_ms"])


def ok_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "ok" and r["format"] != "dense"]


def curves(rows: list[dict[str, Any]], kinds: dict[str, str]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """``{(shape_key, kernel): rows sorted by sparsity}`` for the primary kind of each source."""
    out: dict[tuple[str, str], list] = defaultdict(list)
    for r in ok_rows(rows):
        if r["kind"] == kinds[r["source"]]:
            out[(shape_key(r), r["kernel"])].append(r)
    return {key: sorted(v, key=lambda r: as_float(r["sparsity"])) for key, v in out.items()}


def _cov_fn(curve: list[dict[str, Any]]):
    s = np.array([as_float(r["sparsity"]) for r in curve])
    c = np.array([as_float(r["row_cov"]) for r in curve])
    k = int(curve[0]["k"])
    if len(s) < 2:
        return None if len(s) == 0 else float(c[0])
    # measured CoV between measured sparsities; binomial outside (keeps its growth towards s -> 1)
    def f(x: float) -> float:
        if s[0] <= x <= s[-1]:
            return float(np.interp(x, s, c))
        edge = 0 if x < s[0] else -1
        return float(c[edge]) * perf_model.binomial_row_cov(k, 1 - x) / max(
            perf_model.binomial_row_cov(k, 1 - s[edge]), 1e-12)
    return f


def crossover_table(rows: list[dict[str, Any]], kinds: dict[str, str], profile: MachineProfile,
                    formats: dict[str, str]) -> list[dict[str, Any]]:
    """Per (shape, kernel) and per shape for the best sparse kernel: measured vs predicted crossover."""
    table = []
    by_shape: dict[str, dict[str, list]] = defaultdict(dict)
    for (key, kernel), curve in curves(rows, kinds).items():
        by_shape[key][kernel] = curve
    for key in sorted(by_shape):
        best_pts: dict[float, float] = {}
        preds = []
        for kernel, curve in sorted(by_shape[key].items()):
            r0 = curve[0]
            m, k, n = int(r0["m"]), int(r0["k"]), int(r0["n"])
            sp = [as_float(r["sparsity"]) for r in curve]
            su = [as_float(r["speedup"]) for r in curve]
            for r in curve:
                t = round(as_float(r["sparsity_target"]), 4)
                best_pts[t] = max(best_pts.get(t, 0.0), as_float(r["speedup"]))
            meas = find_crossover(sp, su)
            fmt = formats.get(kernel, r0["format"])
            pst, pval = perf_model.predicted_crossover(kernel, fmt, m, k, n, profile, _cov_fn(curve))
            preds.append((pst, pval))
            table.append(_xrow(r0, key, kernel, meas, pst, pval, len(curve)))
        if len(by_shape[key]) > 1:
            any_curve = next(iter(by_shape[key].values()))
            r0 = any_curve[0]
            ts = sorted(best_pts)
            meas = find_crossover(ts, [best_pts[t] for t in ts])
            pvals = [0.0 if st == "always" else (1.0 if st == "never" else v) for st, v in preds]
            pbest = min(pvals)
            pst = "always" if pbest == 0.0 else ("never" if pbest >= 1.0 else "cross")
            table.append(_xrow(r0, key, BEST, meas, pst, None if pst == "never" else pbest, len(ts)))
    return table


def _xrow(r0, key, kernel, meas: Crossover, pst, pval, npts) -> dict[str, Any]:
    return dict(shape=key, model=r0["model"], layer=r0["layer"], m=int(r0["m"]), k=int(r0["k"]), n=int(r0["n"]),
                source=r0["source"], kind=r0["kind"], kernel=kernel, points=npts,
                measured_status=meas.status, measured=meas.sparsity, measured_label=meas.label(),
                measured_lo=meas.interval()[0], measured_hi=meas.interval()[1], predicted_status=pst, predicted=pval,
                predicted_label=("never" if pst == "never" else f"{pval:.2f}"),
                within_5=within(meas, pst, pval, 0.05))


def winners(rows: list[dict[str, Any]], kinds: dict[str, str]) -> list[dict[str, Any]]:
    """Fastest kernel (dense included) per (shape, target sparsity) for the primary kinds."""
    best: dict[tuple[str, float], dict] = {}
    for r in rows:
        if r["status"] != "ok" or r["kind"] != kinds[r["source"]]:
            continue
        key = (shape_key(r), round(as_float(r["sparsity_target"]), 4))
        if key not in best or t_ms(r) < t_ms(best[key]):
            best[key] = r
    return [dict(shape=k[0], sparsity=k[1], kernel=r["kernel"], format=r["format"], time_ms=t_ms(r),
                 speedup=d_ms(r) / t_ms(r)) for k, r in sorted(best.items())]


def amortisation_table(rows: list[dict[str, Any]], kinds: dict[str, str],
                       profile: MachineProfile) -> list[dict[str, Any]]:
    """Inferences to amortise each sparse kernel's conversion, per (shape, kernel, sparsity), measured and predicted."""
    out = []
    for r in ok_rows(rows):
        if r["kind"] != kinds[r["source"]]:
            continue
        m, k, n, nnz = int(r["m"]), int(r["k"]), int(r["n"]), int(r["nnz"])
        meas = perf_model.amortisation(as_float(r["convert_ms"]), d_ms(r), t_ms(r))
        pconv = perf_model.conversion_time_s(r["kernel"], r["format"], m, k, nnz, profile) * 1e3
        pred = perf_model.amortisation(pconv, as_float(r["predicted_dense_ms"]), as_float(r["predicted_ms"]))
        out.append(dict(shape=shape_key(r), kernel=r["kernel"], sparsity=round(as_float(r["sparsity_target"]), 4),
                        convert_ms=as_float(r["convert_ms"]), dense_ms=d_ms(r),
                        sparse_ms=t_ms(r), inferences=meas, predicted_convert_ms=pconv,
                        predicted_inferences=pred))
    return out


def amortisation_at(amort: list[dict[str, Any]], sparsity: float = 0.9) -> list[dict[str, Any]]:
    """Per shape, at the target sparsity nearest ``sparsity``: the kernel that amortises soonest."""
    by: dict[str, list] = defaultdict(list)
    for a in amort:
        by[a["shape"]].append(a)
    out = []
    for shape, items in sorted(by.items()):
        s_near = min({a["sparsity"] for a in items}, key=lambda s: abs(s - sparsity))
        cand = [a for a in items if a["sparsity"] == s_near]
        out.append(min(cand, key=lambda a: (a["inferences"], a["sparse_ms"])))
    return out


def memory_table(rows: list[dict[str, Any]], kinds: dict[str, str]) -> list[dict[str, Any]]:
    """Per (shape, kernel): measured memory crossover (packed bytes = dense bytes) and the model's."""
    grp: dict[tuple[str, str], list] = defaultdict(list)
    for r in ok_rows(rows):
        if r["kind"] == kinds[r["source"]]:
            grp[(f"{r['model']}:{r['layer']}", r["kernel"])].append(r)
    out = []
    for (shape, kernel), rs in sorted(grp.items()):
        seen = {}
        for r in rs:
            seen[as_float(r["sparsity"])] = as_float(r["dense_weight_bytes"]) / as_float(r["weight_bytes"])
        meas = find_crossover(list(seen), list(seen.values()))
        r0 = rs[0]
        pst, pval = perf_model.memory_crossover(r0["format"], int(r0["m"]), int(r0["k"]),
                                                perf_model.index_bytes_for(kernel, r0["format"]),
                                                perf_model.block_for(kernel, r0["format"]))
        out.append(dict(shape=shape, kernel=kernel, measured_label=meas.label(), measured=meas.sparsity,
                        predicted=pval, predicted_status=pst, within_5=within(meas, pst, pval)))
    return out


def real_vs_synthetic(rows: list[dict[str, Any]], reference: str = "uniform") -> list[dict[str, Any]]:
    """Time of every non-reference kind over the ``reference`` twin's time, per (layer, N, kernel).

    Ratios are taken per group (same layer, same target sparsity, same nnz for twins) and summarised by their
    median over sparsities; > 1 means the real (or other) topology is slower than its uniform twin.
    """
    t: dict[tuple, float] = {}
    for r in ok_rows(rows):
        t[(r["group"], int(r["n"]), r["kernel"], r["kind"])] = t_ms(r)
    ratios: dict[tuple, list[float]] = defaultdict(list)
    meta: dict[tuple, dict] = {}
    for (group, n, kernel, kind), v in t.items():
        if kind == reference:
            continue
        ref = t.get((group, n, kernel, reference))
        if ref is None or not ref > 0:
            continue
        model, layer = group.split(":")[0], group.split(":")[1]
        key = (model, layer, n, kernel, kind)
        ratios[key].append(v / ref)
        meta[key] = dict(model=model, layer=layer, n=n, kernel=kernel, kind=kind)
    out = []
    for key in sorted(ratios):
        vals = ratios[key]
        out.append(dict(meta[key], reference=reference, ratio_median=statistics.median(vals), ratio_min=min(vals),
                        ratio_max=max(vals), points=len(vals), real=key[4] in REAL_KINDS))
    return out


def h100_table(shapes: list[tuple[str, int, int, int]], profile: MachineProfile) -> list[dict[str, Any]]:
    """Predicted crossover (below 99% sparsity) on the H100 profile of an FP32 CSR SpMM on a uniform mask and of a
    16x16 BSR SpMM on a block-pruned mask, against every dense path (FP32 SIMT, TF32 and BF16 tensor cores)."""
    out = []
    for key, m, k, n in shapes:
        for kernel, fmt in (("cuda_csr", "csr"), ("cuda_bsr16", "bsr")):
            blocked = fmt == "bsr"
            for path in profile.dense_paths or {"fp32": None}:
                st, v = perf_model.predicted_crossover(kernel, fmt, m, k, n, profile, None, dense_path=path,
                                                       hi=0.99, block_pruned=blocked)
                t_d = perf_model.dense_time_s(m, k, n, profile, path=path)
                t_s90 = perf_model.sparse_time_s(kernel, fmt, m, k, n, 0.1 * m * k, None, profile,
                                                 nblocks=0.1 * m * k / 256 if blocked else None)
                out.append(dict(shape=key, kernel=kernel, dense_path=path, status=st, crossover=v,
                                label="never" if st == "never" else f"{v:.3f}", speedup_at_90=t_d / t_s90,
                                can_win=st != "never"))
    return out


def fraction_within(table: list[dict[str, Any]], kernel: str | None = None) -> tuple[int, int]:
    """``(hits, total)`` of crossover rows within 5 points (``kernel=None``: the best-sparse rows)."""
    sel = [r for r in table if (r["kernel"] == BEST if kernel is None else r["kernel"] == kernel)]
    return sum(bool(r["within_5"]) for r in sel), len(sel)


def time_error(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Median and 90th percentile of ``|log(predicted / fastest measured)|`` over timed sparse rows (as ratios)."""
    errs = [abs(math.log(as_float(r["predicted_ms"]) / t_ms(r))) for r in ok_rows(rows)
            if as_float(r["predicted_ms"]) > 0 and t_ms(r) > 0]
    if not errs:
        return {"median_ratio": math.nan, "p90_ratio": math.nan, "points": 0}
    errs.sort()
    return {"median_ratio": math.exp(statistics.median(errs)),
            "p90_ratio": math.exp(errs[min(len(errs) - 1, int(0.9 * len(errs)))]), "points": len(errs)}


# ---- the model against the measurement's own spread (several back-to-back runs) ----------------------------------
#: points (sparsity units) the min-max band of the measured crossovers is widened by on each side
BAND_WIDEN = 0.02


def _as_point(status: str, value: float | None) -> float:
    """A predicted crossover as one sparsity: ``always`` is 0, ``never`` is 1 (as ``crossover.within``)."""
    if status == "never" or value is None:
        return 1.0
    return 0.0 if status == "always" else float(value)


def measured_interval(row: dict[str, Any]) -> tuple[float, float]:
    """Where a crossover-table row's measured crossover lies: a point for ``cross``, ``[0, s_min]`` for
    ``always`` and ``[s_max, 1]`` for ``never`` (``measured_lo``/``measured_hi`` when the row has them, else the
    value of ``measured`` or the number in ``measured_label``, ``<=0.30`` / ``>0.98``)."""
    st = row["measured_status"]
    lo, hi = as_float(row.get("measured_lo")), as_float(row.get("measured_hi"))
    if lo == lo and hi == hi:
        return lo, hi
    if st == "cross":
        v = as_float(row["measured"])
        return v, v
    edge = float(str(row["measured_label"]).lstrip("<=>"))
    if st == "always":
        return 0.0, edge
    if st == "never":
        return edge, 1.0
    raise ValueError(f"measured_status={st!r} is not allowed; allowed: cross, always, never")


def band_hits(runs: list[list[dict[str, Any]]], predictions: dict[str, tuple[str, float | None]],
              kernel: str = BEST, widen: float = BAND_WIDEN, min_runs: int | None = None) -> dict[str, Any]:
    """The model judged against the spread of several runs' measured crossovers.

    ``runs``: one crossover table per run (rows of ``crossover_table`` / ``crossovers.csv``: ``shape``,
    ``kernel``, ``measured_status``, ``measured`` and ``measured_label`` or ``measured_lo``/``measured_hi``);
    ``predictions``: ``{shape: (status, sparsity)}`` (status ``cross``/``always``/``never``). For every shape of
    ``kernel`` measured in at least ``min_runs`` runs (default: all of them), the band is the min-max of its
    measured crossovers (an ``always``/``never`` run contributes its interval, ``[0, s_min]`` / ``[s_max, 1]``),
    widened by ``widen`` on each side; the shape counts as predicted when the prediction (``always`` = 0,
    ``never`` = 1) lies inside. Returns ``{"rows": [...], "hits", "total", "rate"}``; a shape without a
    prediction is a miss.
    """
    if len(runs) < 1:
        raise ValueError("band_hits needs at least one run's crossover table")
    if not widen >= 0:
        raise ValueError(f"widen={widen!r} must be >= 0")
    need = len(runs) if min_runs is None else int(min_runs)
    per_shape: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for i, table in enumerate(runs):
        for r in table:
            if r["kernel"] == kernel:
                per_shape[r["shape"]].append((i, r))
    out = []
    for shape in sorted(per_shape):
        found = per_shape[shape]
        if len({i for i, _ in found}) < need:
            continue
        ivs = [measured_interval(r) for _, r in found]
        lo, hi = min(a for a, _ in ivs), max(b for _, b in ivs)
        pst, pval = predictions.get(shape, ("missing", None))
        p = None if pst == "missing" else _as_point(pst, pval)
        hit = p is not None and lo - widen - 1e-9 <= p <= hi + widen + 1e-9
        out.append(dict(shape=shape, kernel=kernel, runs=len(found),
                        measured=" / ".join(str(r.get("measured_label") or f"{as_float(r['measured']):.2f}")
                                            for _, r in found),
                        band_lo=max(lo - widen, 0.0), band_hi=min(hi + widen, 1.0), measured_min=lo, measured_max=hi,
                        predicted_status=pst, predicted=p,
                        predicted_label=("-" if p is None else "never" if pst == "never" else f"{p:.2f}"), hit=hit))
    hits = sum(r["hit"] for r in out)
    return {"rows": out, "hits": hits, "total": len(out), "rate": hits / len(out) if out else math.nan}
