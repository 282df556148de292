"""The accuracy / latency / memory trade-off of one model over a ladder of sparsities, in one command
(``python sweep.py``; see ``conf/sweep.yaml``).

1. **Train** every sparsity (0 = the dense baseline: the same training and schedule, nothing pruned) as one Hydra
   multirun of ``train.py`` with the joblib launcher (``n_jobs`` jobs in parallel, ``cores // n_jobs`` torch threads
   each, see ``spruce.models.train_config.launcher_threads``).
2. **Deploy and time** each checkpoint with ``bench.py`` (the bench pipeline: plan, convert, verify, measure),
   one after another so that timings do not compete for the cores; sparsity 0 is timed as ``deploy=dense``.
3. **Report**: ``tradeoff.csv``, ``tradeoff.md`` (table), ``tradeoff.png`` (accuracy, latency and memory vs
   sparsity, and accuracy vs latency with the Pareto front, points labelled by sparsity) and one W&B group
   holding every training run, every bench run and a ``tradeoff`` run with the table and figure.

This module runs the two entry scripts as commands it is given (``Commands``), so the library imports neither
``deploy`` nor an entry script; ``sweep.py`` passes the real ones.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spruce.io import atomic_write, markdown_table, write_csv, write_figure

COLUMNS = ("sparsity", "achieved_sparsity", "accuracy", "dense_accuracy", "latency_ms_median", "latency_ms_p90",
           "dense_latency_ms_median", "speedup", "peak_memory_mb", "weight_mb", "dense_weight_mb",
           "pruned_memory_ratio", "deploy", "kernels_used", "threads", "checkpoint", "bench_dir")
TABLE = (("sparsity", "sparsity", ".2f"), ("achieved", "achieved_sparsity", ".3f"), ("accuracy", "accuracy", ".4f"),
         ("latency ms (median / p90)", "latency", ""), ("speedup vs dense", "speedup", ".2f"),
         ("peak memory MiB", "peak_memory_mb", ".0f"), ("weights MiB", "weight_mb", ".2f"),
         ("kernels", "kernels_used", ""))


@dataclass
class Commands:
    """How to run the entry scripts: argv prefixes, e.g. ``[python, "train.py"]``, and their working directory."""
    train: list[str]
    bench: list[str]
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class TradeoffConfig:
    model: str = "vgg16"
    data: str = "digits"
    sparsities: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.7, 0.8, 0.9, 0.95])
    train: list[str] = field(default_factory=list)
    bench: list[str] = field(default_factory=list)
    n_jobs: int = 2
    deploy: str = "auto"
    group: str | None = None
    out_dir: str = "results/tradeoff"
    wandb: bool = True
    progress: bool = True


DEPLOYS = ("auto", "sparse")


def _override_list(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ValueError(f"{key}={value!r} is not allowed; give a list of key=value overrides, e.g. "
                         f"{key}=[trainer.max_epochs=3]")
    return list(value)


def from_dict(d: dict[str, Any]) -> TradeoffConfig:
    """Validate the plain ``conf/sweep.yaml`` dict; ``ValueError`` (one line) naming the bad value and what is
    allowed."""
    known = set(TradeoffConfig.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{unknown[0]}={d[unknown[0]]!r} is not an option; allowed: {', '.join(sorted(known))}")
    sp = d.get("sparsities")
    if isinstance(sp, (int, float)) and not isinstance(sp, bool):
        sp = [sp]
    if (not isinstance(sp, (list, tuple)) or not sp
            or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0 for s in sp)):
        raise ValueError(f"sparsities={sp!r} is not allowed; give a non-empty list of numbers in [0, 1), "
                         f"e.g. sparsities=[0,0.5,0.9]")
    sp = [float(s) for s in sp]
    if len(set(sp)) != len(sp):
        raise ValueError(f"sparsities={sp!r} is not allowed; each sparsity once")
    n_jobs = d.get("n_jobs", 2)
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"n_jobs={n_jobs!r} is not allowed; it must be an integer >= 1 (parallel training jobs)")
    if d.get("deploy", "auto") not in DEPLOYS:
        raise ValueError(f"deploy={d.get('deploy')!r} is not allowed; allowed: {', '.join(DEPLOYS)} "
                         f"(sparsity 0 is always timed as deploy=dense)")
    for key in ("model", "data"):
        if not isinstance(d.get(key), str) or not d.get(key):
            raise ValueError(f"{key}={d.get(key)!r} is not allowed; name a {key} group option, e.g. {key}=vgg16"
                             if key == "model" else f"{key}={d.get(key)!r} is not allowed; e.g. data=digits")
    train, bench = _override_list(d.get("train"), "train"), _override_list(d.get("bench"), "bench")
    for o in train:
        k = o.split("=", 1)[0].lstrip("+~")
        if k in ("model", "data", "prune.final", "prune", "logger", "hydra/launcher") or k.startswith("hydra."):
            raise ValueError(f"train=[{o}] is not allowed: the sweep sets {k} itself (use model=, data=, "
                             f"sparsities=, n_jobs= of sweep.py)")
    for o in bench:
        k = o.split("=", 1)[0].lstrip("+~")
        if k in ("ckpt", "out_dir", "sweep_dir", "mode", "deploy") or k.startswith("hydra."):
            raise ValueError(f"bench=[{o}] is not allowed: the sweep sets {k} itself")
    group = d.get("group")
    if group is not None and (not isinstance(group, str) or not group.strip()):
        raise ValueError(f"group={group!r} is not allowed; a non-empty name or null")
    return TradeoffConfig(model=d["model"], data=d["data"], sparsities=sp, train=train, bench=bench, n_jobs=n_jobs,
                          deploy=d.get("deploy", "auto"), group=group, out_dir=str(d.get("out_dir")),
                          wandb=bool(d.get("wandb", True)), progress=bool(d.get("progress", True)))


def train_overrides(c: TradeoffConfig, sweep_dir: Path, group: str) -> list[str]:
    """The ``train.py -m`` arguments of the training sweep (one job per sparsity, joblib launcher)."""
    finals = ",".join(f"{s:g}" for s in c.sparsities)
    return ["-m", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={c.n_jobs}", f"model={c.model}",
            f"data={c.data}", "prune=agp", f"prune.final={finals}",
            "logger=wandb" if c.wandb else "logger=csv", *([f"logger.group={group}"] if c.wandb else []),
            "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.job.num}",
            *c.train]


def _run(cmd: list[str], log: Path, commands: Commands, poll: Any = None) -> None:
    """Run ``cmd`` with output to ``log``; ``poll()`` every second while it runs; one-line error on failure."""
    env = {**os.environ, **commands.env}
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=commands.cwd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            if poll is not None:
                poll()
            time.sleep(1.0)
    if poll is not None:
        poll()
    if proc.returncode != 0:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        err = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "")
        raise RuntimeError(f"{Path(cmd[1]).name if len(cmd) > 1 else cmd[0]} failed (exit {proc.returncode}): "
                           f"{err.removeprefix('error: ')} (full log: {log})")


def _summaries(sweep_dir: Path) -> dict[int, dict[str, Any]]:
    out = {}
    for p in sweep_dir.glob("*/summary.json"):
        if p.parent.name.isdigit():
            out[int(p.parent.name)] = json.loads(p.read_text())
    return out


def _progress(enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled)


def run(c: TradeoffConfig, commands: Commands, out: str | os.PathLike) -> dict[str, Any]:
    """Train, deploy and time every sparsity of ``c``; write the report under ``out``. Returns the paths and rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    group = c.group or f"tradeoff-{c.model}-{c.data}-{out.name}"
    commands.env.setdefault("WANDB_RUN_GROUP", group)  # bench.py's runs join the group through W&B's env var
    sweep_dir, bench_root, log = out / "train", out / "bench", out / "jobs.log"
    n = len(c.sparsities)
    t0 = time.perf_counter()
    with _progress(c.progress) as bar:
        task = bar.add_task(f"train {n} sparsities ({c.n_jobs} parallel jobs, joblib)", total=n)
        _run([*commands.train, *train_overrides(c, sweep_dir, group)], log, commands,
             poll=lambda: bar.update(task, completed=len(_summaries(sweep_dir))))
        train_s = time.perf_counter() - t0
        summaries = _summaries(sweep_dir)
        missing = [c.sparsities[i] for i in range(n) if i not in summaries]
        if missing:
            raise RuntimeError(f"training wrote no summary for sparsities {missing} (full log: {log})")
        btask = bar.add_task("deploy + time each checkpoint (bench.py, one at a time)", total=n)
        rows = []
        for i, s in enumerate(c.sparsities):
            summ = summaries[i]
            bdir = bench_root / f"{i}-s{s:g}"
            deploy = "dense" if s == 0.0 else c.deploy
            bar.update(btask, description=f"deploy + time s={s:g} ({deploy})")
            _run([*commands.bench, f"deploy={deploy}", f"ckpt={summ['checkpoint']}", f"out_dir={bdir}",
                  f"sweep_dir={bench_root}", f"logger.wandb={str(c.wandb).lower()}", *c.bench], log, commands)
            result = json.loads((bdir / "result.json").read_text())["row"]
            rows.append(_row(s, summ, result, bdir))
            bar.update(btask, advance=1)
    return write_report(c, rows, out, group, train_s=train_s, total_s=time.perf_counter() - t0)


def _mb(v: Any) -> float | None:
    return None if v is None else float(v) / 2**20


def _row(s: float, summ: dict[str, Any], r: dict[str, Any], bdir: Path) -> dict[str, Any]:
    acc = r.get("accuracy") if r.get("accuracy") is not None else summ.get("val_acc")
    return {"sparsity": s, "achieved_sparsity": (summ.get("sparsity") or {}).get("overall"), "accuracy": acc,
            "dense_accuracy": r.get("dense_accuracy"), "latency_ms_median": r["latency_ms_median"],
            "latency_ms_p90": r["latency_ms_p90"], "dense_latency_ms_median": r["dense_latency_ms_median"],
            "speedup": r["speedup"], "peak_memory_mb": _mb(r.get("peak_memory_bytes")),
            "weight_mb": _mb(r.get("weight_bytes")), "dense_weight_mb": _mb(r.get("dense_weight_bytes")),
            "pruned_memory_ratio": r.get("pruned_memory_ratio"), "deploy": r.get("deploy"),
            "kernels_used": r.get("kernels_used"), "threads": r.get("threads"),
            "checkpoint": summ.get("checkpoint"), "bench_dir": str(bdir)}


def pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows no other row beats on both latency (lower) and accuracy (higher), fastest first."""
    front, best = [], -math.inf
    for r in sorted(rows, key=lambda r: (r["latency_ms_median"], -(r["accuracy"] or 0.0))):
        acc = r["accuracy"] if r["accuracy"] is not None else -math.inf
        if acc > best:
            front.append(r)
            best = acc
    return front


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = sorted(rows, key=lambda r: r["sparsity"])
    sp = [r["sparsity"] for r in rows]
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    a = ax[0][0]
    a.plot(sp, [r["accuracy"] for r in rows], "o-")
    a.set(xlabel="sparsity", ylabel="accuracy", title="accuracy vs sparsity")
    a = ax[0][1]
    a.plot(sp, [r["latency_ms_median"] for r in rows], "o-", label="deployed (median)")
    a.plot(sp, [r["dense_latency_ms_median"] for r in rows], "x--", color="gray", label="dense, same run")
    a.set(xlabel="sparsity", ylabel="latency ms", title="latency vs sparsity")
    a.legend()
    a = ax[1][0]
    a.plot(sp, [r["weight_mb"] for r in rows], "o-", label="weights (as deployed)")
    a.set(xlabel="sparsity", ylabel="weights MiB", title="memory vs sparsity")
    a2 = a.twinx()
    a2.plot(sp, [r["peak_memory_mb"] for r in rows], "s:", color="tab:red", label="peak memory")
    a2.set_ylabel("peak memory MiB", color="tab:red")
    a.legend(loc="upper right")
    a = ax[1][1]
    lat, acc = [r["latency_ms_median"] for r in rows], [r["accuracy"] for r in rows]
    a.scatter(lat, acc)
    for r in rows:
        a.annotate(f"{r['sparsity']:g}", (r["latency_ms_median"], r["accuracy"]), textcoords="offset points",
                   xytext=(4, 4))
    front = pareto(rows)
    a.plot([r["latency_ms_median"] for r in front], [r["accuracy"] for r in front], "--", color="tab:green",
           label="Pareto front")
    a.set(xlabel="latency ms (median)", ylabel="accuracy", title="accuracy vs latency (labels: sparsity)")
    a.legend()
    fig.suptitle(title)
    fig.tight_layout()
    write_figure(path, fig, dpi=110)
    plt.close(fig)
    return path


def write_report(c: TradeoffConfig, rows: list[dict[str, Any]], out: Path, group: str, train_s: float | None = None,
                 total_s: float | None = None) -> dict[str, Any]:
    """``tradeoff.csv``, ``tradeoff.png``, ``tradeoff.md`` and the group's ``tradeoff`` W&B run; the markdown last."""
    for r in rows:
        r["latency"] = f"{r['latency_ms_median']:.2f} / {r['latency_ms_p90']:.2f}"
    for r in rows:  # paths relative to the report, so that the folder can be moved or committed
        for k in ("checkpoint", "bench_dir"):
            if r.get(k) and Path(r[k]).is_absolute() and Path(r[k]).is_relative_to(out.resolve()):
                r[k] = str(Path(r[k]).relative_to(out.resolve()))
    threads = sorted({r["threads"] for r in rows if r.get("threads") is not None})
    title = f"{c.model} on {c.data}: accuracy, latency and memory vs sparsity"
    csv_path = write_csv(out / "tradeoff.csv", rows, COLUMNS)
    png = plot(rows, out / "tradeoff.png", title)
    front = {r["sparsity"] for r in pareto(rows)}
    md = [f"# Trade-off: {c.model} on {c.data}", "",
          f"Trained at each sparsity (0 = dense baseline: same training, nothing pruned) as one joblib sweep of "
          f"train.py ({c.n_jobs} parallel jobs), then each checkpoint deployed (`deploy={c.deploy}`; sparsity 0 as "
          f"`deploy=dense`) and timed by bench.py one at a time (batch 1, {', '.join(map(str, threads))} "
          f"thread(s)). Accuracy on the validation split; latency end to end, median / p90 over the timed runs; "
          f"peak memory is the bench process's; weights as deployed (sparse formats included).", "",
          markdown_table(rows, TABLE), "",
          f"Pareto front (no other point both faster and more accurate): sparsities "
          f"{', '.join(f'{s:g}' for s in sorted(front))}.", "",
          f"![trade-off]({png.name})", ""]
    if c.train or c.bench:
        md.insert(2, f"Overrides: train={c.train} bench={c.bench}\n")
    if total_s is not None:
        md.append(f"Wall time: {total_s / 60:.1f} min (training {train_s / 60:.1f} min). W&B group: `{group}`.")
    wandb_dir = _log_wandb(c, rows, out, group, png) if c.wandb else None
    atomic_write(out / "tradeoff.md", "\n".join(md) + "\n")
    return {"rows": rows, "csv": str(csv_path), "png": str(png), "md": str(out / "tradeoff.md"),
            "wandb_group": group if c.wandb else None, "wandb_dir": wandb_dir, "total_s": total_s}


def _log_wandb(c: TradeoffConfig, rows: list[dict[str, Any]], out: Path, group: str, png: Path) -> str:
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb
    run = wandb.init(project="spruce", group=group, name=f"tradeoff-{c.model}-{c.data}", job_type="tradeoff",
                     dir=str(out), mode="offline", config={k: getattr(c, k) for k in TradeoffConfig.__dataclass_fields__},
                     reinit="finish_previous")
    try:
        cols = [k for k in COLUMNS if k not in ("checkpoint", "bench_dir")]
        run.log({"tradeoff": wandb.Table(columns=cols, data=[[r.get(k) for k in cols] for r in rows]),
                 "plots/tradeoff": wandb.Image(str(png))})
        return str(Path(run.dir).parent)
    finally:
        run.finish()
