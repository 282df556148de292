"""Where sparse x sparse pays: a map over (weight sparsity, activation sparsity) per VGG-16 conv shape.

At every grid point one run times, interleaved round by round (``spruce.perf.timing.time_ms``), on the same
weight and input: dense ``F.conv2d``; the dense x sparse kernels (``spruce_csr_direct``, ``spruce_csr``: they do
not look at the input's zeros); ``spruce_spsp`` on an input already in its sparse form (a layer fed by the
sparse-output variant of the layer before: a chain converts once) and ``spruce_spsp`` on the dense input (its
input2CSR conversion inside the call); and the conversion alone. Every method is checked against dense before
it is timed. Outputs (``spsp_map.csv``, ``spsp_crossovers.csv``, one ``spsp_map_<shape>.png`` per shape,
``report.md``):

* per cell, the fastest method with the input already sparse (``winner_chained``) and with a dense input
  (``winner_dense_input``: ``spsp`` then pays its conversion);
* crossover lines: per weight sparsity, the activation sparsity above which ``spsp`` beats the best other method
  (chained, and paying the conversion); per activation sparsity, the weight sparsity above which the best dense x
  sparse kernel beats dense;
* with ``ckpt=``, the checkpoint's conv layers (measured activation sparsity, ``spruce.study.activations``, and
  weight sparsity) placed on the map of the shape of the same name.

Inputs are ReLU-like (non-negative) with exactly the requested share of zeros at uniformly random positions;
weights uniformly random with exactly the requested share of zeros. Real activations cluster their zeros
(whole channels, image borders), which this map does not model.
"""
from __future__ import annotations

import datetime as _dt
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from spruce import io
from spruce.perf.timing import median, time_ms

DENSE, SPSP, SPSP_CONV, CONVERT = "dense", "spsp", "spsp+convert", "convert"
MAP_COLUMNS = ("shape", "c_in", "c_out", "h", "w", "batch", "weight_sparsity", "act_sparsity", "method", "median_ms",
               "min_ms", "calls", "status")
CROSS_COLUMNS = ("shape", "axis", "at", "line", "crossover", "note")
CELL_COLUMNS = ("shape", "weight_sparsity", "act_sparsity", "dense_ms", "best_dxs", "best_dxs_ms", "spsp_ms",
                "spsp_convert_ms", "convert_ms", "winner_chained", "winner_dense_input")


# ---- shapes ---------------------------------------------------------------------------------------------------
def conv_geometry(spec: Any, input_size: int = 224) -> dict[str, Any]:
    """``{name, c_in, c_out, h, w}`` (3 x 3, stride 1, padding 1) of a VGG-16 conv named like ``conv3_3``
    (``spruce.study.shapes`` at ``input_size``), or a dict ``{name, c_in, c_out, h, w}`` given as it is."""
    if isinstance(spec, dict):
        need = {"c_in", "c_out", "h", "w"}
        if not need <= set(spec) or any(int(spec[k]) < 1 for k in need):
            raise ValueError(f"spsp shape {spec!r} needs positive c_in, c_out, h, w (and a name)")
        return {"name": str(spec.get("name", "custom")), **{k: int(spec[k]) for k in need}}
    from spruce.study.shapes import model_shapes
    name = str(spec)
    convs = [s for s in model_shapes("vgg16", input_size=input_size) if s.kind == "conv2d"]
    for s in convs:
        first, *rest = s.name.split("+")
        if name in {s.name, first} | {first.split("_")[0] + "_" + r for r in rest}:
            side = math.isqrt(s.n_per_sample)
            return {"name": name, "c_in": s.k // 9, "c_out": s.m, "h": side, "w": side}
    names = [n for s in convs for n in _expand(s.name)]
    raise ValueError(f"spsp.shapes: {name!r} is not a VGG-16 conv; allowed: {', '.join(names)}")


def _expand(merged: str) -> list[str]:
    first, *rest = merged.split("+")
    return [first] + [first.split("_")[0] + "_" + r for r in rest]


# ---- inputs ---------------------------------------------------------------------------------------------------
def exact_sparse(shape: tuple[int, ...], sparsity: float, gen: torch.Generator, nonneg: bool) -> torch.Tensor:
    """A random float32 tensor with exactly ``round(sparsity * numel)`` zeros at uniformly random positions."""
    x = torch.randn(*shape, generator=gen)
    if nonneg:
        x = x.abs() + 1e-3  # no accidental zeros
    n = x.numel()
    zeros = int(round(sparsity * n))
    if zeros:
        x.view(-1)[torch.randperm(n, generator=gen)[:zeros]] = 0.0
    return x


def _mismatch(y: torch.Tensor, ref: torch.Tensor) -> str | None:
    if tuple(y.shape) != tuple(ref.shape):
        return f"shape {tuple(y.shape)} != dense {tuple(ref.shape)}"
    err = float((y.double() - ref.double()).abs().max()) if ref.numel() else 0.0
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return None if err <= 1e-4 * max(scale, 1e-30) + 1e-6 else f"max abs error {err:.3g} (max |dense| {scale:.3g})"


def _interleaved(fns: dict[str, Callable[[], Any]], repeats: int, budget_s: float) -> dict[str, list[float]]:
    """Rounds of one timed call of every method (``time_ms``) until ``repeats`` rounds or ``budget_s`` spent; a
    method whose one call alone takes over ``budget_s`` is timed once."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    t0 = time.perf_counter()
    for r in range(repeats):
        for k, fn in fns.items():
            if r and out[k] and out[k][0] > budget_s * 1e3:
                continue
            out[k] += time_ms(fn, 1, warmup=0)
        if time.perf_counter() - t0 > budget_s:
            break
    return out


def measure_shape(geom: dict[str, Any], weight_sparsities: list[float], act_sparsities: list[float], batch: int,
                  dxs_names: list[str], repeats: int, budget_s: float, seed: int = 0,
                  progress: bool = False) -> list[dict[str, Any]]:
    """Rows of ``MAP_COLUMNS`` for one conv shape over the grid (see the module docstring)."""
    from spruce.kernels import get
    from spruce.kernels.cpu.spsp import to_sparse_activation

    ci, co, h, w = geom["c_in"], geom["c_out"], geom["h"], geom["w"]
    spsp = get("spruce_spsp")
    dxs = [get(n) for n in dxs_names]
    gen = torch.Generator().manual_seed(seed)
    rows = []
    base = {"shape": geom["name"], "c_in": ci, "c_out": co, "h": h, "w": w, "batch": batch}
    for ws in weight_sparsities:
        weight = exact_sparse((co, ci, 3, 3), float(ws), gen, nonneg=False)
        flat = weight.reshape(co, -1)
        packed = {k.name: k.prepare(flat) for k in dxs}
        p_sp = spsp.prepare(flat)
        for a in act_sparsities:
            x = exact_sparse((batch, ci, h, w), float(a), gen, nonneg=True)
            sx = to_sparse_activation(x)
            fns: dict[str, Callable[[], Any]] = {DENSE: lambda: F.conv2d(x, weight, None, 1, 1)}
            for k in dxs:
                fns[k.name] = (lambda k=k: k.conv2d(packed[k.name], x, (3, 3), (1, 1), (1, 1)))
            fns[SPSP] = lambda: spsp.conv2d(p_sp, sx, (3, 3), (1, 1), (1, 1))
            fns[SPSP_CONV] = lambda: spsp.conv2d(p_sp, x, (3, 3), (1, 1), (1, 1))
            fns[CONVERT] = lambda: to_sparse_activation(x)
            with torch.inference_mode():
                ref = fns[DENSE]()
            status = {}
            for k, fn in fns.items():  # verify before timing (the call is also the warm-up)
                try:
                    with torch.inference_mode():
                        y = fn()
                    why = None if k == CONVERT else _mismatch(y, ref)
                    if k == CONVERT and y.nnz != int((x != 0).sum()):
                        why = f"conversion kept {y.nnz} nonzeros of {int((x != 0).sum())}"
                    status[k] = "ok" if why is None else f"failed: wrong output: {why}"
                except Exception as e:  # noqa: BLE001 - reported as failed, never as a number
                    status[k] = f"failed: {io.first_line(e, with_type=True)}"
            ok = {k: fn for k, fn in fns.items() if status[k] == "ok"}
            times = _interleaved(ok, repeats, budget_s)
            for k in fns:
                t = times.get(k) or []
                rows.append({**base, "weight_sparsity": float(ws), "act_sparsity": float(a), "method": k,
                             "median_ms": median(t) if t else None, "min_ms": min(t) if t else None,
                             "calls": len(t), "status": status[k]})
            if progress:
                cell = {r["method"]: r["median_ms"] for r in rows[-len(fns):]}
                print(f"  {geom['name']} ws={ws:.2f} as={a:.2f}: " + ", ".join(
                    f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in cell.items()), file=sys.stderr)
    return rows


# ---- analysis (pure: tested on synthetic timings) -------------------------------------------------------------
def crossover(xs: list[float], t_ref: list[float | None], t_new: list[float | None]) -> tuple[float | None, str]:
    """The smallest ``x`` from which ``t_new < t_ref`` holds at every larger grid point.

    ``xs`` ascending. Between the last grid point where ``t_new`` loses and the next (where it wins from then on) the
    crossing is interpolated linearly in ``x`` where ``log(t_new / t_ref)`` passes 0. Returns ``(x, "")``;
    ``(xs[0], "everywhere")`` when it wins at every point; ``(None, "never")`` when it loses at the last point;
    points with a missing time (None) count as losing for ``t_new`` and winning for ``t_new`` when ``t_ref`` is
    missing."""
    if len(xs) != len(t_ref) or len(xs) != len(t_new) or not xs:
        raise ValueError("crossover needs equally long, non-empty xs, t_ref and t_new")
    if any(b <= a for a, b in zip(xs, xs[1:])):
        raise ValueError(f"crossover needs ascending xs, got {xs}")

    def ratio(i: int) -> float:
        a, b = t_ref[i], t_new[i]
        if b is None:
            return math.inf
        if a is None:
            return 0.0
        return b / a if a > 0 else math.inf

    wins = [ratio(i) < 1.0 for i in range(len(xs))]
    if not wins[-1]:
        return None, "never"
    j = len(xs) - 1
    while j > 0 and wins[j - 1]:
        j -= 1
    if j == 0:
        return float(xs[0]), "everywhere"
    r0, r1 = ratio(j - 1), ratio(j)
    if not (math.isfinite(r0) and r0 > 0 and r1 > 0):
        return float(xs[j]), ""
    l0, l1 = math.log(r0), math.log(r1)
    f = l0 / (l0 - l1) if l0 != l1 else 1.0
    return float(xs[j - 1] + f * (xs[j] - xs[j - 1])), ""


#: which time of a method a cell compares: the fastest of its interleaved calls (as calibration does: on a shared
#: machine the least disturbed call is the machine's speed; medians of a few calls swung 3-5x under load)
STAT = "min_ms"


def cells(rows: list[dict[str, Any]], stat: str = STAT) -> list[dict[str, Any]]:
    """One row of ``CELL_COLUMNS`` per (shape, weight sparsity, activation sparsity): the times (``stat``:
    ``min_ms`` or ``median_ms``) by method and the winners (chained: ``spsp`` reads an input already sparse; dense
    input: ``spsp`` pays its conversion)."""
    by: dict[tuple, dict[str, float | None]] = {}
    for r in rows:
        key = (r["shape"], float(r["weight_sparsity"]), float(r["act_sparsity"]))
        ms = r[stat]
        by.setdefault(key, {})[r["method"]] = None if ms in (None, "") else float(ms)
    out = []
    for (shape, ws, a), t in by.items():
        dxs = {k: v for k, v in t.items() if k not in (DENSE, SPSP, SPSP_CONV, CONVERT) and v is not None}
        best_dxs = min(dxs, key=dxs.get) if dxs else None
        chained = {k: v for k, v in ((DENSE, t.get(DENSE)), (best_dxs, dxs.get(best_dxs) if best_dxs else None),
                                     (SPSP, t.get(SPSP))) if k is not None and v is not None}
        dense_in = {k: v for k, v in ((DENSE, t.get(DENSE)), (best_dxs, dxs.get(best_dxs) if best_dxs else None),
                                      (SPSP_CONV, t.get(SPSP_CONV))) if k is not None and v is not None}
        out.append({"shape": shape, "weight_sparsity": ws, "act_sparsity": a, "dense_ms": t.get(DENSE),
                    "best_dxs": best_dxs, "best_dxs_ms": dxs.get(best_dxs) if best_dxs else None,
                    "spsp_ms": t.get(SPSP), "spsp_convert_ms": t.get(SPSP_CONV), "convert_ms": t.get(CONVERT),
                    "winner_chained": min(chained, key=chained.get) if chained else None,
                    "winner_dense_input": min(dense_in, key=dense_in.get) if dense_in else None})
    return sorted(out, key=lambda c: (c["shape"], c["weight_sparsity"], c["act_sparsity"]))


def crossover_lines(cell_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of ``CROSS_COLUMNS``: per shape and weight sparsity, the activation sparsity above which ``spsp`` beats
    the best of dense and dense x sparse (``line`` = ``spsp_chained`` / ``spsp_with_convert``); per activation
    sparsity, the weight sparsity above which the best dense x sparse kernel beats dense (``dxs_vs_dense``)."""
    out = []
    for shape in sorted({c["shape"] for c in cell_rows}):
        mine = [c for c in cell_rows if c["shape"] == shape]
        wss = sorted({c["weight_sparsity"] for c in mine})
        ass = sorted({c["act_sparsity"] for c in mine})
        at = {(c["weight_sparsity"], c["act_sparsity"]): c for c in mine}

        def best_other(c: dict[str, Any]) -> float | None:
            ts = [v for v in (c["dense_ms"], c["best_dxs_ms"]) if v is not None]
            return min(ts) if ts else None

        for ws in wss:
            col = [at.get((ws, a)) for a in ass]
            xs = [a for a, c in zip(ass, col) if c is not None]
            col = [c for c in col if c is not None]
            for line, key in (("spsp_chained", "spsp_ms"), ("spsp_with_convert", "spsp_convert_ms")):
                x, note = crossover(xs, [best_other(c) for c in col], [c[key] for c in col])
                out.append({"shape": shape, "axis": "act_sparsity", "at": ws, "line": line, "crossover": x,
                            "note": note})
        for a in ass:
            row = [at.get((ws, a)) for ws in wss]
            xs = [ws for ws, c in zip(wss, row) if c is not None]
            row = [c for c in row if c is not None]
            x, note = crossover(xs, [c["dense_ms"] for c in row], [c["best_dxs_ms"] for c in row])
            out.append({"shape": shape, "axis": "weight_sparsity", "at": a, "line": "dxs_vs_dense", "crossover": x,
                        "note": note})
    return out


# ---- figure ---------------------------------------------------------------------------------------------------
COLORS = {DENSE: "#c7c7c7", "spruce_csr_direct": "#9ecae1", "spruce_csr": "#6baed6", "spruce_bsr4x1": "#4292c6",
          SPSP: "#fdae6b", SPSP_CONV: "#e6550d"}


def _family(method: str | None) -> str | None:
    return SPSP if method in (SPSP, SPSP_CONV) else method


def plot_shape(shape: str, cell_rows: list[dict[str, Any]], lines: list[dict[str, Any]],
               layers: list[dict[str, Any]], title: str) -> Any:
    """The map of one shape: cells coloured by the chained winner (hatched where it changes when the input arrives
    dense), the crossover lines, and the real layers as points (the one of this shape's name starred)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    mine = [c for c in cell_rows if c["shape"] == shape]
    wss = sorted({c["weight_sparsity"] for c in mine})
    ass = sorted({c["act_sparsity"] for c in mine})

    def edges(v: list[float]) -> list[float]:
        mids = [(a + b) / 2 for a, b in zip(v, v[1:])]
        return [max(0.0, v[0] - (mids[0] - v[0]))] + mids + [min(1.0, v[-1] + (v[-1] - mids[-1]))]

    ew, ea = edges(wss), edges(ass)
    fig, ax = plt.subplots(figsize=(10.5, 5.6))
    seen = set()
    for c in mine:
        i, j = wss.index(c["weight_sparsity"]), ass.index(c["act_sparsity"])
        win = c["winner_chained"] or "none"
        seen.add(win)
        hatch = "//" if _family(c["winner_dense_input"]) != _family(c["winner_chained"]) else None
        ax.add_patch(plt.Rectangle((ew[i], ea[j]), ew[i + 1] - ew[i], ea[j + 1] - ea[j],
                                   facecolor=COLORS.get(win, "#dddddd"), edgecolor="white", hatch=hatch, lw=0.5))
        sp, best = c["spsp_ms"], min(v for v in (c["dense_ms"], c["best_dxs_ms"]) if v is not None) \
            if (c["dense_ms"] is not None or c["best_dxs_ms"] is not None) else None
        if sp and best:
            ax.text((ew[i] + ew[i + 1]) / 2, (ea[j] + ea[j + 1]) / 2, f"{best / sp:.2g}", ha="center", va="center",
                    fontsize=6.5)
    style = {"spsp_chained": ("k", "-", "spsp (input already sparse) wins above"),
             "spsp_with_convert": ("k", "--", "spsp + input2CSR wins above"),
             "dxs_vs_dense": ("tab:blue", ":", "dense x sparse beats dense right of")}
    for line, (color, ls, label) in style.items():
        pts = [(r["at"], r["crossover"]) for r in lines if r["shape"] == shape and r["line"] == line
               and r["crossover"] is not None]
        if not pts:
            continue
        if line == "dxs_vs_dense":
            ax.plot([p[1] for p in pts], [p[0] for p in pts], color=color, ls=ls, lw=2, label=label)
        else:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, ls=ls, lw=2, marker="o", ms=3, label=label)
    others = [lay for lay in layers if lay["name"] != shape]
    if others:
        ax.scatter([lay["weight_sparsity"] for lay in others], [lay["act_sparsity_mean"] for lay in others],
                   marker=".", s=30, color="dimgray", zorder=5, label="the checkpoint's other convs")
    for lay in layers:
        if lay["name"] == shape:
            ax.errorbar([lay["weight_sparsity"]], [lay["act_sparsity_mean"]],
                        yerr=[[lay["act_sparsity_mean"] - lay.get("act_sparsity_min", lay["act_sparsity_mean"])],
                              [lay.get("act_sparsity_max", lay["act_sparsity_mean"]) - lay["act_sparsity_mean"]]],
                        fmt="*", ms=14, color="crimson", mec="k", zorder=6,
                        label=f"checkpoint's {shape} ({lay['layer']}, input {lay['in_shape']}; min-max)")
    ax.set_xlim(ew[0], ew[-1])
    ax.set_ylim(ea[0], ea[-1])
    ax.set_xlabel("weight sparsity")
    ax.set_ylabel("activation sparsity (share of zero inputs)")
    ax.set_title(title, fontsize=9)
    handles = [Patch(facecolor=COLORS.get(k, "#dddddd"), label=f"fastest: {k}") for k in sorted(seen)]
    handles.append(Patch(facecolor="white", hatch="//", edgecolor="k", label="another wins if the input arrives dense"))
    h2, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + h2, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    fig.tight_layout()
    return fig


# ---- the analysis entry ---------------------------------------------------------------------------------------
def _fmt_cross(r: dict[str, Any]) -> str:
    if r["note"] == "never":
        return "never"
    if r["note"] == "everywhere":
        return f"<= {r['crossover']:.2f}"
    return f"{r['crossover']:.2f}"


def render(rows: list[dict[str, Any]], out: Path, layers: list[dict[str, Any]], header: str) -> dict[str, Any]:
    """Write ``spsp_map.csv``, ``spsp_cells.csv``, ``spsp_crossovers.csv``, the PNGs and ``report.md`` from the
    timing rows; returns the summary scalars."""
    import matplotlib.pyplot as plt
    io.write_csv(out / "spsp_map.csv", rows, MAP_COLUMNS)
    cell_rows = cells(rows)
    io.write_csv(out / "spsp_cells.csv", cell_rows, CELL_COLUMNS)
    lines = crossover_lines(cell_rows)
    io.write_csv(out / "spsp_crossovers.csv", lines, CROSS_COLUMNS)
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    md = [header]
    summary: dict[str, Any] = {}
    for shape in shapes:
        g = next(r for r in rows if r["shape"] == shape)
        title = (f"{shape}: {g['c_in']}->{g['c_out']} ch, {g['h']}x{g['w']}, 3x3, batch {g['batch']} "
                 "(cells: best of dense/dense x sparse over spsp time)")
        fig = plot_shape(shape, cell_rows, lines, layers, title)
        io.write_figure(out / f"spsp_map_{shape}.png", fig, dpi=120)
        plt.close(fig)
        wss = sorted({c["weight_sparsity"] for c in cell_rows if c["shape"] == shape})
        table = []
        for ws in wss:
            row = {"ws": ws}
            for r in lines:
                if r["shape"] == shape and r["axis"] == "act_sparsity" and r["at"] == ws:
                    row[r["line"]] = _fmt_cross(r)
            table.append(row)
        dxs = [_fmt_cross(r) for r in lines if r["shape"] == shape and r["line"] == "dxs_vs_dense"]
        md.append(f"## {title}\n\nActivation sparsity above which sparse x sparse is the fastest, per weight "
                  "sparsity (`never`: not on this grid; `<= x`: already at the grid's lowest):\n\n"
                  + io.markdown_table(table, [("weight sparsity", "ws", ".2f"),
                                              ("spsp, input already sparse", "spsp_chained", ""),
                                              ("spsp + input2CSR", "spsp_with_convert", "")])
                  + f"\n\nDense x sparse beats dense above weight sparsity (per activation sparsity row): "
                  f"{', '.join(dxs)}\n\n![{shape}](spsp_map_{shape}.png)\n")
        for r in lines:
            if r["shape"] == shape and r["line"] == "spsp_chained" and r["crossover"] is not None:
                summary[f"{shape}/spsp_chained@ws{r['at']:.2f}"] = r["crossover"]
    conv = [c for c in cell_rows if c["convert_ms"] and c["spsp_ms"]]
    if conv:
        share = sorted(c["convert_ms"] / c["spsp_convert_ms"] for c in conv if c["spsp_convert_ms"])
        q = lambda f: share[min(len(share) - 1, int(f * len(share)))]  # noqa: E731
        md.append(f"The input2CSR conversion, timed as its own call, was {q(0.5):.0%} (median; p10 {q(0.1):.0%}, "
                  f"p90 {q(0.9):.0%}) of the converting spsp call's time over the grid (two calls timed apart: on a "
                  "loaded machine a ratio may exceed 100%).\n")
    if layers:
        md.append("## The checkpoint's layers on the map\n\n" + io.markdown_table(layers, [
            ("layer", "layer", ""), ("name", "name", ""), ("input", "in_shape", ""),
            ("weight sparsity", "weight_sparsity", ".1%"), ("act. sparsity mean", "act_sparsity_mean", ".1%"),
            ("std", "act_sparsity_std", ".1%"), ("map cell winner (chained)", "map_winner_chained", ""),
            ("(dense input)", "map_winner_dense_input", "")]) + "\n\nThe winner is read at the map cell nearest "
                  "to the layer's (weight, activation) sparsity on the map of the shape of the same name (the "
                  "map's spatial size, not the checkpoint's: see the input column).\n")
    io.atomic_write(out / "report.md", "\n\n".join(md) + "\n")
    return summary


def _numbers(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if v in ("", None):
            out[k] = None
            continue
        try:
            out[k] = int(v) if k in ("c_in", "c_out", "h", "w", "batch", "calls", "images") else float(v)
        except ValueError:
            out[k] = v
    return out


def rerender(report_dir: str | Path) -> Path:
    """Rebuild a map report's tables, figures and ``report.md`` from its ``spsp_map.csv`` (and
    ``activation_sparsity.csv`` when present); the measurements are not repeated."""
    import csv
    out = Path(report_dir)
    if not (out / "spsp_map.csv").is_file():
        raise ValueError(f"{out} is not a spsp_map report (no spsp_map.csv)")
    with (out / "spsp_map.csv").open() as fh:
        rows = [_numbers(r) for r in csv.DictReader(fh)]
    layers: list[dict[str, Any]] = []
    if (out / "activation_sparsity.csv").is_file():
        with (out / "activation_sparsity.csv").open() as fh:
            layers = [_numbers(r) for r in csv.DictReader(fh)]
        layers = [lay for lay in layers if lay["kind"] == "conv2d"]
        place_layers(layers, cells(rows))
    old = (out / "report.md").read_text() if (out / "report.md").is_file() else "# Where sparse x sparse pays"
    header = old.split("\n## conv")[0].split("\n## ")[0].rstrip() if "\n## " in old else old.rstrip()
    if layers and (out / "activation_sparsity.md").is_file():
        header += "\n\n## " + (out / "activation_sparsity.md").read_text().lstrip("# ").rstrip()
    render(rows, out, layers, header)
    return out


def place_layers(layers: list[dict[str, Any]], cell_rows: list[dict[str, Any]]) -> None:
    """Add ``map_winner_chained`` / ``map_winner_dense_input``: the winners of the nearest cell of the shape of the
    layer's name (None when no shape of that name was mapped)."""
    for lay in layers:
        mine = [c for c in cell_rows if c["shape"] == lay["name"]]
        if not mine:
            lay["map_winner_chained"] = lay["map_winner_dense_input"] = None
            continue
        c = min(mine, key=lambda c: (c["weight_sparsity"] - lay["weight_sparsity"]) ** 2
                + (c["act_sparsity"] - lay["act_sparsity_mean"]) ** 2)
        lay["map_winner_chained"], lay["map_winner_dense_input"] = c["winner_chained"], c["winner_dense_input"]


def run_analysis(c: dict[str, Any]) -> Path:
    """``analysis=activation`` or ``spsp_map`` of a resolved study config; returns the report dir."""
    from spruce.study.activations import checkpoint_activation_sparsity, run_activation_study, write_activation_files
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    label = f"ckpt-{Path(c['ckpt']).stem}" if c["ckpt"] else "vgg16"
    command = " ".join(["python"] + sys.argv)
    sp = c["spsp"]
    if c["analysis"] == "activation":
        out = Path(c["out"]) / f"activation-{label}-{stamp}"
        out.mkdir(parents=True, exist_ok=False)
        io.write_json(out / "config.json", c, default=str)
        run_activation_study(c, out, command)
        return out
    geoms = [conv_geometry(s, int(sp["input_size"])) for s in sp["shapes"]]  # bad names fail before any work
    from spruce.kernels import get
    for n in sp["kernels"]:
        k = get(n)  # ValueError naming the registered kernels
        if k.device != "cpu" or k.format == "dense" or k.name == "spruce_spsp":
            raise ValueError(f"spsp.kernels: {n!r} is not a CPU dense x sparse kernel")
        ok, why = k.is_available()
        if not ok:
            raise ValueError(f"spsp.kernels: {n!r} is unavailable here: {why}")
    ok, why = get("spruce_spsp").is_available()
    if not ok:
        raise ValueError(f"spruce_spsp is unavailable here: {why}")
    layers: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    if c["ckpt"]:
        layers, meta = checkpoint_activation_sparsity(c["ckpt"], sp["max_images"], int(sp["batch_size"]))
    out = Path(c["out"]) / f"spsp_map-{label}-{stamp}"
    out.mkdir(parents=True, exist_ok=False)
    io.write_json(out / "config.json", c, default=str)
    t0 = time.time()
    rows = []
    for g in geoms:
        rows += measure_shape(g, [float(v) for v in sp["weight_sparsities"]], [float(v) for v in sp["act_sparsities"]],
                              int(sp["batch"]), list(sp["kernels"]), int(c["repeats"]), float(c["budget_s"]),
                              int(c["seed"]), bool(c["progress"]))
        io.write_csv(out / "spsp_map.csv", rows, MAP_COLUMNS)  # partial results survive an interruption
    cell_rows = cells(rows)
    convs = [lay for lay in layers if lay["kind"] == "conv2d"]
    place_layers(convs, cell_rows)
    tables = ["spsp_map", "spsp_cells", "spsp_crossovers"]
    figures = [f"spsp_map_{g['name']}" for g in geoms]
    header = (f"# Where sparse x sparse pays\n\n`{command}`\n\n{len(geoms)} VGG-16 conv shape(s) at input "
              f"{sp['input_size']}, batch {sp['batch']}, {c['threads']} thread(s), {time.time() - t0:.0f} s; the fastest "
              f"of up to {c['repeats']} interleaved rounds (`spruce.perf.timing.time_ms`; medians in spsp_map.csv), "
              "each method verified "
              "against dense first. `spsp`: `spruce_spsp` on an input already in its sparse form (fed by the "
              "sparse-output variant of the layer before); `spsp+convert`: the same on the dense input, its "
              "input2CSR conversion inside the call. Inputs: non-negative, exactly the stated share of zeros at "
              "random positions; weights: exactly the stated share of zeros at random positions. Timings on a "
              "shared machine: compare within this run.")
    if layers:
        title = f"Activation sparsity of {(meta.get('model') or {}).get('name')} on {(meta.get('data') or {}).get('name')}"
        table = write_activation_files(layers, out, title)
        header += f"\n\n## {title} (`{c['ckpt']}`)\n\n{table}"
        tables.append("activation_sparsity")
        figures.append("activation_sparsity")
    summary = render(rows, out, convs, header)
    from spruce.study.wandb_run import log_files
    log_files(out, c, tables, figures, summary, c["wandb"], "spsp-map")
    return out
