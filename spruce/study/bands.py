"""The model against the measurement's own spread: several study runs' crossovers -> one band report.

``band_report(dirs, out)`` reads the ``rows.csv`` of every study run in ``dirs`` (no new timing), recomputes each
run's measured crossovers and the model's predictions with this machine's cached profile, and judges the
predictions against the min-max band of the runs' measured crossovers widened by ``analysis.BAND_WIDEN``
(``analysis.band_hits``): once with the model as it is ("after") and once with its residual terms switched off
(``spruce.perf.model.without_residual_terms``: the model before issue 17, "before"), both on the same profile.
Command: ``python -m spruce.study action=band dirs=[<run>,...] out=<dir>`` (``min_runs``: how many runs a shape
needs, default 3).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from spruce import io
from spruce.perf import model as perf_model
from spruce.perf.profile import MachineProfile
from spruce.study import analysis

#: the study runs of a band report each need these files
RUN_FILES = ("rows.csv", "config.json")


def read_run(d: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(rows, config)`` of one study run dir; ValueError naming the dir when it is not one."""
    p = Path(d)
    missing = [f for f in RUN_FILES if not (p / f).is_file()]
    if missing:
        raise ValueError(f"dirs: {p} is not a study run (missing {', '.join(missing)}); allowed: folders written by "
                         f"python -m spruce.study")
    with (p / "rows.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"dirs: {p}/rows.csv holds no rows")
    return rows, json.loads((p / "config.json").read_text())


def sweep_note(d: str | Path) -> str:
    """The run's own line about its sweep (cases, seconds, load average) from ``notes.txt``, or ``""``."""
    p = Path(d) / "notes.txt"
    lines = p.read_text().splitlines() if p.is_file() else []
    return next((ln for ln in reversed(lines) if ln.startswith("sweep:")), "")


def run_tables(rows: list[dict[str, Any]], config: dict[str, Any],
               profiles: dict[str, MachineProfile]) -> dict[str, list[dict[str, Any]]]:
    """One run's crossover table per named profile (the measured columns are the same in each)."""
    sources = sorted({r["source"] for r in rows})
    kinds = {s: analysis.primary_kind(rows, s, list(config.get("kinds") or [])) for s in sources}
    formats = {r["kernel"]: r["format"] for r in rows}
    return {name: analysis.crossover_table(rows, kinds, prof, formats) for name, prof in profiles.items()}


def predictions_of(tables: list[list[dict[str, Any]]], kernel: str = analysis.BEST) -> dict[str, tuple]:
    """``{shape: (status, sparsity)}`` of ``kernel`` from the first table holding the shape (a prediction depends
    on the shape and the profile only, up to the measured row CoV, which is the same seeded matrix in every run)."""
    out: dict[str, tuple] = {}
    for table in tables:
        for r in table:
            if r["kernel"] == kernel and r["shape"] not in out:
                out[r["shape"]] = (r["predicted_status"], r["predicted"])
    return out


def band_results(dirs: list[str | Path], profile: MachineProfile, min_runs: int = 3,
                 widen: float = analysis.BAND_WIDEN) -> dict[str, Any]:
    """Band hit rates before/after for the best sparse kernel and for each kernel, from the runs in ``dirs``."""
    if len(dirs) < 1:
        raise ValueError("dirs must name at least one study run")
    if int(min_runs) < 1:
        raise ValueError(f"min_runs={min_runs!r} must be >= 1")
    profiles = {"before": perf_model.without_residual_terms(profile), "after": profile}
    per_variant: dict[str, list[list[dict]]] = {k: [] for k in profiles}
    for d in dirs:
        rows, config = read_run(d)
        for name, table in run_tables(rows, config, profiles).items():
            per_variant[name].append(table)
    kernels = [analysis.BEST] + sorted({r["kernel"] for t in per_variant["after"] for r in t} - {analysis.BEST})
    out: dict[str, Any] = {"dirs": [str(d) for d in dirs], "min_runs": int(min_runs), "widen": widen, "kernels": {},
                           "sweeps": [sweep_note(d) for d in dirs]}
    for kernel in kernels:
        res = {}
        for name, tables in per_variant.items():
            res[name] = analysis.band_hits(tables, predictions_of(tables, kernel), kernel, widen, int(min_runs))
        if res["after"]["total"]:
            out["kernels"][kernel] = res
    return out


def read_profile(path: str | Path) -> MachineProfile:
    """A profile from a JSON file: a cached profile, or a study report's ``machine.json`` (its ``"measured"``)."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
        return MachineProfile.from_dict(d["measured"] if "measured" in d else d)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"profile={str(path)!r} is not a machine profile JSON ({e}); allowed: a cached "
                         f"machine-*.json or a study report's machine.json") from None


def band_command(dirs: list[str | Path], out: str | Path, min_runs: int = 3,
                 profile: str | Path | None = None) -> Path:
    """``python -m spruce.study action=band``: the band report of the runs in ``dirs`` written to ``out``
    (``band.md``, ``band.csv``, ``band.png``, ``machine.json``) with the profile in ``profile`` or else this
    machine's cached profile for the runs' thread count (kernels missing from it are calibrated, as ``rerender``
    does). Returns ``out``."""
    import sys

    import torch

    from spruce import kernels as registry
    from spruce.perf.calibration import load_or_calibrate
    from spruce.perf.machine import resolve_threads
    from spruce.study.report import write_band_report

    runs = [read_run(d) for d in dirs]  # every dir checked before anything is computed or written
    threads = {resolve_threads(c.get("threads")) for _, c in runs}
    if len(threads) != 1:
        raise ValueError(f"dirs: runs measured with different thread counts {sorted(threads)}; allowed: one count")
    torch.set_num_threads(threads.pop())
    if profile is not None:
        prof = read_profile(profile)
    else:
        names = sorted({r["kernel"] for rows, _ in runs for r in rows})
        prof = load_or_calibrate([registry.get(n) for n in names], progress=False)
    result = band_results(dirs, prof, int(min_runs))
    rates = write_band_report(result, Path(out), prof, " ".join(["python"] + sys.argv))
    io.write_json(Path(out) / "machine.json", {"measured": prof.to_dict()})
    for kernel, r in rates.items():
        print(f"{kernel}: before {r['before'][0]}/{r['before'][1]}, after {r['after'][0]}/{r['after'][1]}")
    return Path(out)
