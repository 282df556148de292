"""``run_study(cfg) -> Path``: calibrate (cached), build the cases, sweep, write the report and the W&B run."""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from spruce import io
from spruce.study import config as study_config
from spruce.perf.calibration import load_or_calibrate
from spruce.perf.profile import h100_profile
from spruce.study.report import build_report
from spruce.study.shapes import model_shapes, shapes_from_config
from spruce.perf.machine import resolve_threads
from spruce.sparse.dlmc import require_dlmc
from spruce.study.sources import ckpt_cases, dlmc_cases, shape_cases
from spruce.study.sweep import run_sweep, write_rows


def select_kernels(names: list[str] | None, formats: list[str], device: str = "cpu") -> tuple[list, Any]:
    """``(sparse kernels, dense kernel)`` from the registry: available, of ``formats``, named in ``names`` if given."""
    from spruce import kernels as registry

    avail = registry.kernels(device=device)
    dense = registry.get("torch_dense")
    if names:
        known = {k.name: k for k in avail}
        every = registry.names()
        bad = [n for n in names if n not in known]
        if bad:
            status = registry.availability()
            why = "; ".join(f"{n}: " + (status[n][1] or "not a CPU kernel") if n in every else f"{n}: not registered"
                            for n in bad)
            raise ValueError(f"kernels {bad} cannot run here ({why}); available: {', '.join(sorted(known))}")
        chosen = [known[n] for n in names]
    else:
        chosen = [k for k in avail if k.format in formats]
    chosen = [k for k in chosen if k.format != "dense"]
    if not chosen:
        raise ValueError(f"no sparse kernel selected (formats={formats}, kernels={names})")
    return chosen, dense


def build_cases(c: dict[str, Any]) -> tuple[list, list[str], str]:
    """The cases for the resolved config, notes on what was skipped, and a label for the report dir."""
    src = c["source"]
    if c["ckpt"]:
        cases, notes = ckpt_cases(Path(c["ckpt"]), c["batches"], int(c["max_n"]), c["twin_kinds"], int(c["seed"]))
        return cases, notes, f"ckpt-{Path(c['ckpt']).stem}"
    if src == "shapes":
        if c["shapes"]:
            shapes = shapes_from_config(c["shapes"])
            if c["model"]:
                shapes = [s for s in shapes if s.model in (c["model"], "custom")] or shapes
        else:
            models = [c["model"]] if c["model"] else list(study_config.MODELS)
            shapes = [s for m in models for s in model_shapes(m, seq=int(c["seq"]))]
        cases, notes = shape_cases(shapes, c["sparsities"], c["kinds"], c["batches"], int(c["max_n"]), int(c["seed"]),
                                   None if c["n_cap"] is None else int(c["n_cap"]))
        return cases, notes, f"shapes-{c['model'] or ('custom' if c['shapes'] else 'all')}"
    folder = require_dlmc(c["dlmc_dir"]) if src == "dlmc" else Path(src)
    sps = c["dlmc_sparsities"] or (c["sparsities"] if c["quick"] else None)
    cases = dlmc_cases(folder, c["dlmc_ns"], sps, c["dlmc_max_files"], c["twin_kinds"], int(c["seed"]))
    if not cases:
        raise ValueError(f"no DLMC matrix under {folder} matches sparsities {c['sparsities']}")
    return cases, [], f"dlmc-{folder.name}"


def run_study(cfg: dict[str, Any] | None = None) -> Path:
    """Run the sparsity study described by ``cfg`` (keys: ``conf/study/default.yaml``); returns the report dir.

    The report dir holds every file of ``spruce.study.report.REPORT_FILES`` plus ``config.json`` and, unless
    ``wandb=disabled``, an offline W&B run under ``wandb/``.
    """
    c = study_config.resolve(cfg)
    c["threads"] = resolve_threads(c["threads"])
    torch.set_num_threads(c["threads"])
    if c["analysis"] != "sweep":  # activation sparsity / the sparse x sparse map
        from spruce.study.spsp_map import run_analysis
        return run_analysis(c)
    sparse_kernels, dense = select_kernels(c["kernels"], c["formats"])
    cases, notes, label = build_cases(c)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(c["out"]) / f"{label}-{stamp}"
    profile = load_or_calibrate([dense] + sparse_kernels, recalibrate=bool(c["recalibrate"]),
                                progress=bool(c["progress"]))  # before the report dir exists: may take minutes
    out.mkdir(parents=True, exist_ok=False)
    io.write_json(out / "config.json", c, default=str)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t0 = time.time()
    try:
        rows = run_sweep(cases, sparse_kernels, dense, int(c["repeats"]), float(c["budget_s"]), profile,
                         bool(c["progress"]), out / "rows.csv")
    except BaseException:
        if {p.name for p in out.iterdir()} <= {"config.json"}:  # nothing measured: leave no husk behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    write_rows(rows, out / "rows.csv")
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    notes.append(f"sweep: {len(cases)} cases in {time.time() - t0:.0f} s with {c['threads']} thread(s); 1-minute "
                 f"load average {load0:.1f} at the start and {load1:.1f} at the end on {os.cpu_count()} CPUs "
                 f"(other processes share the machine: compare ratios, not absolute times)")
    (out / "notes.txt").write_text("\n".join(notes) + "\n")
    command = " ".join(["python"] + sys.argv)
    summary = build_report(rows, out, profile, h100_profile(), list(c["kinds"]), notes, command)
    from spruce.study.wandb_run import log_report
    log_report(out, c, summary, c["wandb"])
    return out


def rerender(report_dir: str | Path, recalibrate: bool = False) -> Path:
    """Rebuild a report from its ``rows.csv`` with this machine's current profile: the model's predictions are
    recomputed (the measurements are not), so a better-calibrated model needs no new sweep. Returns the dir."""
    import csv

    from spruce import kernels as registry
    from spruce.perf import model as perf_model

    out = Path(report_dir)
    if not (out / "rows.csv").is_file() or not (out / "config.json").is_file():
        raise ValueError(f"{out} is not a study report (needs rows.csv and config.json)")
    c = json.loads((out / "config.json").read_text())
    torch.set_num_threads(resolve_threads(c["threads"]))
    with (out / "rows.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    names = sorted({r["kernel"] for r in rows})
    profile = load_or_calibrate([registry.get(n) for n in names], recalibrate=recalibrate, progress=False)
    for r in rows:
        m, k, n, nnz = int(r["m"]), int(r["k"]), int(r["n"]), int(r["nnz"])
        r["predicted_dense_ms"] = perf_model.predict_ms("torch_dense", "dense", m, k, n, m * k, None, profile)
        if r["format"] == "dense":
            r["predicted_ms"] = r["predicted_dense_ms"]
        elif r["status"] == "ok" or r["predicted_ms"] not in ("", None):
            nb = float(r["nblocks"]) if r.get("nblocks") not in ("", None) else None
            r["predicted_ms"] = 1e3 * perf_model.sparse_time_s(r["kernel"], r["format"], m, k, n, nnz,
                                                               float(r["row_cov"]), profile, nblocks=nb)
    write_rows(rows, out / "rows.csv")
    notes_file = out / "notes.txt"
    notes = notes_file.read_text().splitlines() if notes_file.is_file() else []
    # keep the command that measured the rows; say what re-rendered them
    summary_file = out / "summary.json"
    measured_by = json.loads(summary_file.read_text()).get("command", "") if summary_file.is_file() else ""
    measured_by = measured_by.split("  (re-rendered by: ")[0] or "unknown"
    build_report(rows, out, profile, h100_profile(), list(c["kinds"]), notes,
                 f"{measured_by}  (re-rendered by: {' '.join(['python'] + sys.argv)})")
    return out


def merge_reports(dirs: list[str | Path], out: str | Path) -> Path:
    """One report from the rows of several study runs (e.g. a model's shapes measured in pieces); the
    predictions are recomputed with the current profile. The first run's config is kept. Returns ``out``."""
    import csv
    import shutil

    out = Path(out)
    if out.exists():
        raise ValueError(f"{out} exists; merge into a new directory")
    rows = []
    for d in dirs:
        p = Path(d) / "rows.csv"
        if not p.is_file():
            raise ValueError(f"{d} holds no rows.csv")
        with p.open() as fh:
            rows += list(csv.DictReader(fh))
    out.mkdir(parents=True)
    shutil.copy(Path(dirs[0]) / "config.json", out / "config.json")
    (out / "merged_from.txt").write_text("\n".join(str(Path(d).resolve()) for d in dirs) + "\n")
    write_rows(rows, out / "rows.csv")
    return rerender(out)
