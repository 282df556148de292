"""The study report: ``report.md`` (tables + findings generated from the numbers), PNG figures and CSV tables.

Files (all always written, even when a section has no data):
``report.md``, ``rows.csv`` (written by the sweep), ``crossovers.csv``, ``winners.csv``, ``amortisation.csv``,
``memory.csv``, ``real_vs_synthetic.csv``, ``h100.csv``, ``summary.json``, ``machine.json``,
``speedup_curves.png``, ``winners.png``, ``amortisation.png``, ``real_vs_synthetic.png``,
``model_vs_measured.png``, ``h100.png``.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from spruce import io
from spruce.study import analysis, plots
from spruce.perf.profile import MachineProfile

REPORT_FILES = ("report.md", "rows.csv", "crossovers.csv", "winners.csv", "amortisation.csv", "memory.csv",
                "real_vs_synthetic.csv", "h100.csv", "summary.json", "machine.json", "speedup_curves.png",
                "winners.png", "amortisation.png", "real_vs_synthetic.png", "model_vs_measured.png", "h100.png")


def write_csv(table: list[dict[str, Any]], path: Path, columns: list[str] | None = None) -> Path:
    """A list of dicts as CSV (header from ``columns`` or the first row), written atomically."""
    return io.write_csv(path, table, columns or (list(table[0]) if table else ["empty"]))


def md_table(table: list[dict[str, Any]], cols: list[tuple[str, str]]) -> str:
    """A markdown table of ``cols`` = ``[(key, header), ...]`` (``spruce.io.markdown_table``: floats to 3
    significant digits, missing values as ``-``)."""
    if not table:
        return "_no data in this run_\n"
    return io.markdown_table(table, [(h, k, "") for k, h in cols]) + "\n"


def _pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100.0 * a / b:.0f}%)" if b else "0/0"


def findings_crossover(xt: list[dict]) -> list[str]:
    best = [r for r in xt if r["kernel"] == analysis.BEST] or xt
    if not best:
        return ["No crossover could be computed (no sparse kernel produced a timed curve)."]
    out = []
    cross = [r for r in best if r["measured_status"] == "cross"]
    never = [r for r in best if r["measured_status"] == "never"]
    always = [r for r in best if r["measured_status"] == "always"]
    out.append(f"Over {len(best)} layer shapes, the fastest sparse kernel crosses dense inside the measured range "
               f"on {len(cross)}, already wins at the lowest sparsity on {len(always)}, and never wins on "
               f"{len(never)}.")
    if cross:
        lo = min(cross, key=lambda r: r["measured"])
        hi = max(cross, key=lambda r: r["measured"])
        out.append(f"Measured crossovers range from {lo['measured']:.2f} ({lo['shape']}) to {hi['measured']:.2f} "
                   f"({hi['shape']}); median {statistics.median(r['measured'] for r in cross):.2f}.")
    if never:
        out.append("Never faster than dense up to the largest sparsity: " + ", ".join(r["shape"] for r in never)
                   + ".")
    per_kernel = Counter(r["kernel"] for r in xt if r["kernel"] != analysis.BEST and r["measured_status"] != "never")
    if per_kernel:
        out.append("Kernels that beat dense somewhere, by number of shapes: "
                   + ", ".join(f"{k} {v}" for k, v in per_kernel.most_common()) + ".")
    return out


def findings_winners(win: list[dict]) -> list[str]:
    if not win:
        return ["No winner table (no timed rows)."]
    c = Counter(w["kernel"] for w in win)
    out = [f"Across {len(win)} (shape, sparsity) cells the fastest is: "
           + ", ".join(f"{k} in {v}" for k, v in c.most_common()) + "."]
    by_s: dict[float, Counter] = {}
    for w in win:
        by_s.setdefault(w["sparsity"], Counter())[w["format"] != "dense"] += 1
    parts = [f"{s:g}: {cnt[True]}/{cnt[True] + cnt[False]}" for s, cnt in sorted(by_s.items())]
    out.append("Cells won by a sparse format, per sparsity: " + "; ".join(parts) + ".")
    return out


def findings_amortisation(at90: list[dict]) -> list[str]:
    if not at90:
        return ["No amortisation data."]
    fin = [a for a in at90 if math.isfinite(a["inferences"])]
    out = [f"At ~90% sparsity {len(fin)} of {len(at90)} shapes have a kernel faster than dense, so conversion can "
           f"pay off."]
    if fin:
        fast = min(fin, key=lambda a: a["inferences"])
        slow = max(fin, key=lambda a: a["inferences"])
        out.append(f"Conversion pays for itself after {fast['inferences']:.1f} inferences at best ({fast['shape']}, "
                   f"{fast['kernel']}) and {slow['inferences']:.1f} at worst ({slow['shape']}, {slow['kernel']}); "
                   f"median {statistics.median(a['inferences'] for a in fin):.1f}.")
    return out


def findings_memory(mem: list[dict]) -> list[str]:
    if not mem:
        return ["No memory data."]
    out = []
    for kernel in sorted({m["kernel"] for m in mem}):
        vals = [m["predicted"] for m in mem if m["kernel"] == kernel and m["predicted"] is not None]
        hits = sum(bool(m["within_5"]) for m in mem if m["kernel"] == kernel)
        n = sum(1 for m in mem if m["kernel"] == kernel)
        if vals:
            out.append(f"{kernel}: packed weight smaller than dense above sparsity ~{statistics.median(vals):.2f} "
                       f"(model); measured sizes agree within 5 points on {_pct(hits, n)} shapes.")
    return out


def findings_rvs(rvs: list[dict]) -> list[str]:
    if not rvs:
        return ["No real-vs-synthetic pairs in this run (use source=ckpt or source=dlmc, or several kinds)."]
    out = []
    for kind in sorted({r["kind"] for r in rvs}):
        vals = [r["ratio_median"] for r in rvs if r["kind"] == kind]
        worst = max((r for r in rvs if r["kind"] == kind), key=lambda r: abs(math.log(r["ratio_median"])))
        out.append(f"{kind} vs uniform twin: median time ratio {statistics.median(vals):.2f} over {len(vals)} "
                   f"(layer, N, kernel) pairs (range {min(vals):.2f}-{max(vals):.2f}); largest gap "
                   f"{worst['ratio_median']:.2f} on {worst['model']}:{worst['layer']}@{worst['n']} with "
                   f"{worst['kernel']}.")
    real = [r["ratio_median"] for r in rvs if r["real"]]
    if real:
        inside = sum(1 for v in real if 0.9 <= v <= 1.1)
        out.append(f"Uniform synthetic twins predict real pruned layers within 10% on {_pct(inside, len(real))} pairs.")
    return out


def findings_model(xt: list[dict], terr: dict[str, float]) -> list[str]:
    hb, nb = analysis.fraction_within(xt, None)
    ha = sum(bool(r["within_5"]) for r in xt if r["kernel"] != analysis.BEST)
    na = sum(1 for r in xt if r["kernel"] != analysis.BEST)
    out = [f"Predicted crossover within 5 points of the measured one: {_pct(hb, nb)} layer shapes for the best "
           f"sparse kernel (goal >= 80%), {_pct(ha, na)} (shape, kernel) pairs."]
    for kernel in sorted({r["kernel"] for r in xt if r["kernel"] != analysis.BEST}):
        h, n = analysis.fraction_within(xt, kernel)
        out.append(f"{kernel}: {_pct(h, n)}.")
    if terr.get("points"):
        out.append(f"Per-call time: the model is off by a factor {terr['median_ratio']:.2f} at the median and "
                   f"{terr['p90_ratio']:.2f} at the 90th percentile over {terr['points']} timed calls.")
    return out


def findings_h100(h: list[dict]) -> list[str]:
    if not h:
        return ["No H100 predictions."]
    out = []
    for kernel in sorted({r["kernel"] for r in h}):
        for path in list(dict.fromkeys(r["dense_path"] for r in h)):
            sel = [r for r in h if r["kernel"] == kernel and r["dense_path"] == path]
            win = [r for r in sel if r["can_win"]]
            txt = f"{kernel} vs dense {path}: can win on {len(win)}/{len(sel)} shapes"
            if win:
                txt += f" (crossover {min(r['crossover'] for r in win):.2f}-{max(r['crossover'] for r in win):.2f})"
            out.append(txt + ".")
    return out


def _tables(rows: list[dict[str, Any]], profile: MachineProfile, h100: MachineProfile,
            kinds_order: list[str]) -> dict[str, Any]:
    """Every table of the report, computed from the rows (no files written)."""
    sources = sorted({r["source"] for r in rows})
    kinds = {s: analysis.primary_kind(rows, s, kinds_order) for s in sources}
    formats = {r["kernel"]: r["format"] for r in rows}
    xt = analysis.crossover_table(rows, kinds, profile, formats)
    amort = analysis.amortisation_table(rows, kinds, profile)
    shapes = sorted({(analysis.shape_key(r), int(r["m"]), int(r["k"]), int(r["n"])) for r in rows})
    return dict(kinds=kinds, cv=analysis.curves(rows, kinds), xt=xt, win=analysis.winners(rows, kinds),
                amort=amort, at90=analysis.amortisation_at(amort, 0.9), mem=analysis.memory_table(rows, kinds),
                rvs=analysis.real_vs_synthetic(rows), shapes=shapes, h=analysis.h100_table(shapes, h100),
                terr=analysis.time_error(rows), failed=[r for r in rows if r["status"] in ("failed", "wrong")])


def _write_data(t: dict[str, Any], rows: list[dict[str, Any]], out: Path, profile: MachineProfile,
                h100: MachineProfile) -> None:
    """The CSV tables, machine.json and the PNG figures."""
    for key, name in (("xt", "crossovers"), ("win", "winners"), ("amort", "amortisation"), ("mem", "memory"),
                      ("rvs", "real_vs_synthetic"), ("h", "h100")):
        write_csv(t[key], out / f"{name}.csv")
    io.write_json(out / "machine.json", {"measured": profile.to_dict(), "h100": h100.to_dict()})
    plots.speedup_curves(t["cv"], t["xt"], out / "speedup_curves.png")
    plots.winner_heatmap(t["win"], out / "winners.png")
    plots.amortisation_curves(t["amort"], out / "amortisation.png")
    plots.real_vs_synthetic(t["rvs"], out / "real_vs_synthetic.png")
    plots.model_vs_measured(t["xt"], rows, out / "model_vs_measured.png")
    plots.h100(t["h"], out / "h100.png")


def _summary(t: dict[str, Any], rows: list[dict[str, Any]], profile: MachineProfile, command: str) -> dict:
    xt = t["xt"]
    hb, nb = analysis.fraction_within(xt, None)
    return {"rows": len(rows), "failed_or_wrong": len(t["failed"]), "shapes": len(t["shapes"]),
            "within_5_best": hb, "shapes_best": nb, "fraction_within_5_best": hb / nb if nb else None,
            "within_5_pairs": sum(bool(r["within_5"]) for r in xt if r["kernel"] != analysis.BEST),
            "pairs": sum(1 for r in xt if r["kernel"] != analysis.BEST), "time_error": t["terr"],
            "primary_kinds": t["kinds"], "machine": profile.name, "command": command}


def _section(title: str, finds: list[str], body: str) -> str:
    return f"## {title}\n\n" + "".join(f"- {f}\n" for f in finds) + "\n" + body + "\n"


def _markdown_head(t: dict[str, Any], rows: list[dict[str, Any]], profile: MachineProfile, notes: list[str],
                   command: str) -> list[str]:
    """Title, machine, notes and the failed runs."""
    failed = t["failed"]
    md = [f"# Sparsity study\n\nCommand: `{command}`\n\nMachine: {profile.name}: dense peak "
          f"{profile.peak_gflops:.0f} GFLOP/s, bandwidth {profile.bw_gbs:.1f} GB/s, LLC "
          f"{profile.cache_bytes / 2 ** 20:.0f} MiB, {profile.threads} threads. {len(rows)} rows "
          f"({len(failed)} failed/wrong), {len(t['shapes'])} shapes; main tables use kinds "
          + ", ".join(f"{s}: {k}" for s, k in t["kinds"].items()) + ". All data: `rows.csv`.\n"]
    if notes:
        md.append("Notes:\n" + "".join(f"- {n}\n" for n in notes) + "\n")
    if failed:
        md.append("Failed or wrong kernel runs (recorded, not timed):\n\n" + md_table(
            failed[:30], [("model", "model"), ("layer", "layer"), ("n", "N"), ("sparsity_target", "s"),
                          ("kernel", "kernel"), ("status", "status"), ("error", "error")]) + "\n")
    return md


def _markdown_sections(t: dict[str, Any]) -> list[str]:
    """One section per question of the study."""
    xt, at90, mem, rvs, h = t["xt"], t["at90"], t["mem"], t["rvs"], t["h"]
    return [
        _section("Crossover: speedup vs sparsity", findings_crossover(xt),
                 "![speedup curves](speedup_curves.png)\n\n" + md_table(
                     xt, [("shape", "shape"), ("kernel", "kernel"), ("measured_label", "measured"),
                          ("predicted_label", "predicted"), ("within_5", "within 5 pts"), ("points", "points")])),
        _section("Winning kernel per shape and sparsity", findings_winners(t["win"]), "![winners](winners.png)\n"),
        _section("Amortisation", findings_amortisation(at90),
                 "![amortisation](amortisation.png)\n\nAt the sparsity nearest 90%, the kernel that pays off "
                 "soonest (inf: never faster than dense):\n\n" + md_table(
                     at90, [("shape", "shape"), ("sparsity", "s"), ("kernel", "kernel"), ("convert_ms", "convert ms"),
                            ("dense_ms", "dense ms"), ("sparse_ms", "sparse ms"), ("inferences", "inferences"),
                            ("predicted_inferences", "predicted")])),
        _section("Memory crossover", findings_memory(mem), md_table(
            mem, [("shape", "layer"), ("kernel", "kernel"), ("measured_label", "measured"), ("predicted", "model"),
                  ("within_5", "within 5 pts")])),
        _section("Real vs synthetic", findings_rvs(rvs), "![real vs synthetic](real_vs_synthetic.png)\n\n"
                 + md_table(rvs, [("model", "model"), ("layer", "layer"), ("n", "N"), ("kernel", "kernel"),
                                  ("kind", "kind"), ("ratio_median", "time / uniform"), ("ratio_min", "min"),
                                  ("ratio_max", "max"), ("points", "points")])),
        _section("Model vs measurement", findings_model(xt, t["terr"]),
                 "![model vs measured](model_vs_measured.png)\n\nModel: roofline (Park et al. ICLR 2017; Gale "
                 "et al. SC20), formulas in `spruce/perf/model.py`; constants in `machine.json`.\n"),
        _section("H100 predictions (data sheet, not measured)", findings_h100(h),
                 "`cuda_csr`: an FP32 CSR SpMM on a uniformly random mask; `cuda_bsr16`: an FP32 16x16 BSR "
                 "SpMM on a block-pruned mask. Crossovers are searched below 99% sparsity; sparse-kernel "
                 "constants are assumptions (see `machine.json`).\n\n![h100](h100.png)\n\n" + md_table(
                     h, [("shape", "shape"), ("kernel", "kernel"), ("dense_path", "vs dense"),
                         ("label", "crossover"), ("speedup_at_90", "speedup at 90%")])),
    ]


def build_report(rows: list[dict[str, Any]], out: Path, profile: MachineProfile, h100: MachineProfile,
                 kinds_order: list[str], notes: list[str], command: str) -> dict[str, Any]:
    """Compute every table, write every file of ``REPORT_FILES`` under ``out``; returns the summary dict."""
    out = Path(out)
    t = _tables(rows, profile, h100, kinds_order)
    _write_data(t, rows, out, profile, h100)
    summary = _summary(t, rows, profile, command)
    io.write_json(out / "summary.json", summary)
    md = _markdown_head(t, rows, profile, notes, command) + _markdown_sections(t)
    io.atomic_write(out / "report.md", "\n".join(md))
    return summary


# ---- the model against the band of several runs (python -m spruce.study action=band) ----------------------------
BAND_FILES = ("band.md", "band.csv", "band.png")


def _band_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (kernel, shape): the runs' measured crossovers, the band, and each variant's prediction/hit."""
    out = []
    for kernel, res in result["kernels"].items():
        before = {r["shape"]: r for r in res["before"]["rows"]}
        for r in res["after"]["rows"]:
            b = before.get(r["shape"], {})
            out.append(dict(kernel=kernel, shape=r["shape"], runs=r["runs"], measured=r["measured"],
                            band_lo=r["band_lo"], band_hi=r["band_hi"], predicted_before=b.get("predicted_label"),
                            hit_before=b.get("hit"), predicted_after=r["predicted_label"], hit_after=r["hit"]))
    return out


def band_figure(rows: list[dict[str, Any]], path: Path, kernel: str = analysis.BEST) -> Path:
    """Per shape: the band (measured min-max widened), the model before and after."""
    sel = [r for r in rows if r["kernel"] == kernel]
    if not sel:
        return plots._empty(path, "band")
    fig, ax = plots.plt.subplots(figsize=(7.5, 0.8 + 0.32 * len(sel)))
    for i, r in enumerate(sel):
        ax.plot([r["band_lo"], r["band_hi"]], [i, i], color="0.6", lw=7, solid_capstyle="butt")
        for key, hit, marker, dy in (("predicted_before", "hit_before", "x", -0.15), ("predicted_after", "hit_after",
                                                                                      "o", 0.15)):
            v = r[key]
            if v in (None, "-"):
                continue
            ax.plot(1.0 if v == "never" else float(v), i + dy, marker, ms=6,
                    color="tab:green" if r[hit] else "tab:red")
    ax.set_yticks(range(len(sel)), [r["shape"] for r in sel], fontsize=7)
    ax.set_xlim(0, 1.02)
    ax.invert_yaxis()
    ax.set_xlabel("crossover sparsity (grey: min-max of the runs' measured crossovers +- 2 points; 1 = never)")
    ax.set_title(f"{kernel}: model before (x) and after (o); green inside the band", fontsize=9)
    return plots._save(fig, path)


def _band_width_line(rows: list[dict[str, Any]]) -> str:
    """How wide the bands of the best sparse kernel are (the measurement's own spread, before widening)."""
    w = sorted(r["band_hi"] - r["band_lo"] for r in rows if r["kernel"] == analysis.BEST)
    if not w:
        return ""
    return (f"Band width (best sparse, widening included): median {statistics.median(w):.2f}, range {w[0]:.2f}-"
            f"{w[-1]:.2f} over {len(w)} shapes.\n")


def write_band_report(result: dict[str, Any], out: Path, profile: MachineProfile, command: str) -> dict[str, Any]:
    """``band.md``, ``band.csv``, ``band.png`` under ``out`` from ``spruce.study.bands.band_results``; returns
    ``{kernel: {"before": (hits, total), "after": (hits, total)}}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = _band_rows(result)
    io.write_csv(out / "band.csv", rows, ["kernel", "shape", "runs", "measured", "band_lo", "band_hi",
                                          "predicted_before", "hit_before", "predicted_after", "hit_after"])
    band_figure(rows, out / "band.png")
    rates = {k: {v: (res[v]["hits"], res[v]["total"]) for v in ("before", "after")}
             for k, res in result["kernels"].items()}
    w = result["widen"]
    md = [f"# The performance model against the spread of {len(result['dirs'])} study runs\n",
          f"Command: `{command}`\n",
          f"Machine: {profile.name}: dense peak {profile.peak_gflops:.0f} GFLOP/s, bandwidth {profile.bw_gbs:.1f} GB/s, "
          f"LLC {profile.cache_bytes / 2 ** 20:.0f} MiB, {profile.threads} threads (calibrated "
          f"{profile.meta.get('calibrated_at', '?')}).\n",
          f"A shape counts as predicted when the model's crossover lies within the min-max band of its measured "
          f"crossovers over the runs (a run that measured `<=s` contributes [0, s], `>s` contributes [s, 1]) widened "
          f"by {w:g} on each side; shapes measured in fewer than {result['min_runs']} runs are left out. "
          f"'before': the model without the residual terms of issue 17 (`spruce.perf.model.without_residual_terms`), "
          f"'after': the model as it is; both on the same profile.\n",
          "Runs:\n" + "".join(f"- `{d}`" + (f": {note}" if note else "") + "\n"
                               for d, note in zip(result["dirs"], result.get("sweeps") or [""] * len(result["dirs"]))),
          _band_width_line(rows),
          "| kernel | before | after |\n|---|---|---|\n" + "".join(
              f"| {k} | {_pct(*r['before'])} | {_pct(*r['after'])} |\n" for k, r in rates.items()),
          "![band](band.png)\n",
          md_table([r for r in rows if r["kernel"] == analysis.BEST],
                   [("shape", "shape"), ("runs", "runs"), ("measured", "measured per run"), ("band_lo", "band lo"),
                    ("band_hi", "band hi"), ("predicted_before", "before"), ("hit_before", "hit"),
                    ("predicted_after", "after"), ("hit_after", "hit")])]
    io.atomic_write(out / "band.md", "\n".join(md))
    return rates
