"""Peer engines in the same run: the pruned model as ONNX, timed by ONNX Runtime / DeepSparse / OpenVINO.

Each engine runs in its own process (``python -m spruce.peer_worker`` with the peers venv's python: numpy<2 and
the engines, no torch), on the same input, threads, repeats and warm-up as Spruce's own timing; its output is
checked against PyTorch's with :func:`spruce.deploy.compare.mismatch` (the bench's ``rtol``/``atol``): the main
output (logits) and, for BERT-family models, the last hidden state too (a random-init BERT pruned to 90% gives
nearly input-independent logits, so they alone would check little).

One row per engine::

    {engine, status: "ok" | "not installed" | "failed" | "output differs", version, median_ms, p90_ms,
     max_abs_err, load_ms, threads, repeats, detail, why}

An engine that is not installed (no peers venv, or the package missing there) is a row saying so, never an error;
a failed engine is a row with ``why`` and no numbers; a differing output keeps its timings but is flagged by its
status (and ``why`` holds the mismatch). The peers venv is ``$SPRUCE_PEERS_VENV`` (a relative path counts from the
repository root) or ``<repo>/.venv-peers``: ``bash scripts/install_peers.sh`` makes it.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spruce.deploy.compare import DEFAULT_ATOL, DEFAULT_RTOL, mismatch
from spruce.models.onnx_export import export_onnx, input_arrays, reference_outputs

#: the engines ``peers=[...]`` accepts (the same tuple as ``spruce.peer_worker.ENGINES``; a test ties them)
ENGINES = ("onnxruntime", "deepsparse", "openvino")
STATUSES = ("ok", "not installed", "failed", "output differs")
ROW_KEYS = ("engine", "status", "version", "median_ms", "p90_ms", "max_abs_err", "load_ms", "threads", "repeats",
            "detail", "why")
VENV_ENV = "SPRUCE_PEERS_VENV"
EXIT_NOT_INSTALLED = 3  # spruce.peer_worker's exit status when the engine cannot be imported
DEFAULT_TIMEOUT_S = 1800.0


def check_engines(names: Any) -> list[str]:
    """``peers`` as a list of engine names (a list, or a comma-separated string; duplicates dropped, order kept).

    ValueError (one line) naming an unknown engine and the allowed names.
    """
    if names is None or names == "" or names == []:
        return []
    items = [s.strip() for s in names.split(",")] if isinstance(names, str) else [str(s).strip() for s in names]
    out: list[str] = []
    for n in items:
        if n not in ENGINES:
            raise ValueError(f"unknown peer engine {n!r} in peers; allowed: {', '.join(ENGINES)}")
        if n not in out:
            out.append(n)
    return out


def repo_root() -> Path:
    """The repository root (the folder holding the ``spruce`` package)."""
    return Path(__file__).resolve().parents[2]


def peers_venv() -> Path:
    """The peers venv: ``$SPRUCE_PEERS_VENV`` (relative to the repository root when relative), else ``.venv-peers``."""
    v = Path(os.environ.get(VENV_ENV) or ".venv-peers")
    return v if v.is_absolute() else repo_root() / v


def peers_python(venv: Path | None = None) -> Path | None:
    """The peers venv's python, or None when there is none."""
    py = (venv or peers_venv()) / "bin" / "python"
    return py if py.is_file() and os.access(py, os.X_OK) else None


@dataclass
class PeerJob:
    """What every engine is given: the ONNX file, the inputs (.npz, ONNX input order) and PyTorch's outputs (in
    the ONNX file's output order: ``output``, then ``hidden`` for BERT-family models)."""

    onnx: Path
    inputs: Path
    reference: list[np.ndarray]


def prepare(model: nn.Module, example: torch.Tensor | dict[str, torch.Tensor], workdir: str | Path) -> PeerJob:
    """Export ``model`` to ``<workdir>/model.onnx``, save the example input to ``inputs.npz`` and PyTorch's output.

    Call it on the pruned PyTorch model before Spruce converts it (the ONNX file holds plain dense layers with
    the pruned zeros). ``example``: batch-1 image tensor or BERT dict (see ``spruce.models.example_input``).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    feeds = {k: v.detach().to(device) for k, v in input_arrays(example).items()}
    x = feeds if isinstance(example, dict) else feeds["input"]
    ref = reference_outputs(model, x, hidden=True)
    onnx_path = export_onnx(model, x, workdir / "model.onnx", hidden=True)
    inputs = workdir / "inputs.npz"
    np.savez(inputs, **{k: v.cpu().numpy() for k, v in feeds.items()})
    return PeerJob(onnx_path, inputs, [r.detach().float().cpu().numpy() for r in ref])


def _row(engine: str, status: str, threads: int, repeats: int, **kw: Any) -> dict[str, Any]:
    row = {k: None for k in ROW_KEYS}
    row.update(engine=engine, status=status, threads=threads, repeats=repeats, **kw)
    return row


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict):
            return d
    return None


def _why(stderr: str, rc: int) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    return (lines[-1][:300] if lines else f"exit status {rc}, no message")


def run_peer(engine: str, job: PeerJob, threads: int = 1, repeats: int = 10, warmup: int = 2,
             rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL, python: str | Path | None = None,
             timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Time one engine on ``job`` in its own process; returns its row (see the module docstring).

    ``python``: the interpreter to run the worker with (default: the peers venv's). Never raises for an engine
    that is missing or fails; ValueError only for an unknown engine name.
    """
    (engine,) = check_engines([engine])
    py = Path(python) if python else peers_python()
    if py is None or not py.is_file():
        where = os.path.relpath(peers_venv(), Path.cwd())
        return _row(engine, "not installed", threads, repeats,
                    why=f"no peers venv at {where} (run: bash scripts/install_peers.sh, or set {VENV_ENV})")
    out = job.onnx.parent / f"output-{engine}.npz"
    out.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo_root())] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(NM_DISABLE_ANALYTICS="1", OMP_NUM_THREADS=str(threads))
    cmd = [str(py), "-m", "spruce.peer_worker", "--engine", engine, "--model", str(job.onnx),
           "--inputs", str(job.inputs), "--out", str(out), "--threads", str(threads), "--repeats", str(repeats),
           "--warmup", str(warmup)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(job.onnx.parent), timeout=timeout_s,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return _row(engine, "failed", threads, repeats, why=f"timed out after {timeout_s:g} s")
    res = _last_json(p.stdout)
    if p.returncode == EXIT_NOT_INSTALLED and res is not None:
        return _row(engine, "not installed", threads, repeats, why=str(res.get("why")))
    if p.returncode != 0 or res is None or not out.is_file():
        return _row(engine, "failed", threads, repeats, why=_why(p.stderr, p.returncode))
    with np.load(out) as z:
        ys = [z[f"arr_{i}"] for i in range(len(z.files))]
    out.unlink(missing_ok=True)
    kw = {k: res.get(k) for k in ("version", "median_ms", "p90_ms", "load_ms", "detail")}
    err, why = compare_outputs(ys, job.reference, rtol, atol)
    return _row(engine, "ok" if why is None else "output differs", threads, repeats, **kw, max_abs_err=err, why=why)


def compare_outputs(ys: list[np.ndarray], refs: list[np.ndarray], rtol: float = DEFAULT_RTOL,
                    atol: float = DEFAULT_ATOL) -> tuple[float | None, str | None]:
    """``(largest absolute error over all outputs, why the first differing output differs or None)``."""
    if len(ys) != len(refs):
        return None, f"{len(ys)} outputs, PyTorch has {len(refs)}"
    err: float | None = 0.0
    why = None
    for i, (y, ref) in enumerate(zip(ys, refs)):
        label = "output" if i == 0 else f"output {i} (last hidden state)"
        if y.shape != ref.shape:
            return None, f"{label} shape {tuple(y.shape)} != PyTorch {tuple(ref.shape)}"
        if ref.size:
            err = max(err, float(np.abs(y.astype(np.float64) - ref.astype(np.float64)).max()))
        bad = mismatch(torch.from_numpy(np.asarray(y)), torch.from_numpy(ref), rtol, atol)
        if bad is not None and why is None:
            why = f"{label} vs PyTorch: {bad}"
    return err, why


def run_peers(engines: Any, job: PeerJob, threads: int = 1, repeats: int = 10, warmup: int = 2,
              rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL, python: str | Path | None = None,
              timeout_s: float = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
    """One row per engine of ``engines``, each timed in its own process one after another."""
    return [run_peer(e, job, threads, repeats, warmup, rtol, atol, python, timeout_s) for e in check_engines(engines)]


def bench_peers(model: nn.Module, example: torch.Tensor | dict[str, torch.Tensor], engines: Any, threads: int = 1,
                repeats: int = 10, warmup: int = 2, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                workdir: str | Path | None = None) -> list[dict[str, Any]]:
    """:func:`prepare` then :func:`run_peers`, in ``workdir`` or a temporary folder removed afterwards."""
    engines = check_engines(engines)
    if not engines:
        return []
    if workdir is not None:
        return run_peers(engines, prepare(model, example, workdir), threads, repeats, warmup, rtol, atol)
    with tempfile.TemporaryDirectory(prefix="spruce-peers-") as tmp:
        return run_peers(engines, prepare(model, example, tmp), threads, repeats, warmup, rtol, atol)


# ---- report: the peers next to Spruce in the bench run's table, plot, CSV and W&B run -------------------------
def peer_columns(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Flat row columns ``peer_<engine>_ms``: the median of an engine whose output matched, else None."""
    return {f"peer_{r['engine']}_ms": r["median_ms"] if r["status"] == "ok" else None for r in rows}


def peers_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text of the peer rows (columns :data:`ROW_KEYS`)."""
    from spruce.deploy.report import rows_csv
    return rows_csv(rows, ROW_KEYS)


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"


def peers_markdown(row: dict[str, Any]) -> str:
    """The bench row's engines side by side (PyTorch dense, Spruce, each peer), same input/threads/repeats."""
    spruce_ms = row.get("latency_ms_median")
    lines = ["", f"## Peers in the same run ({row.get('input')}, {row.get('threads')} threads, "
             f"median of {(row.get('peers') or [{}])[0].get('repeats')} runs)", "",
             "| engine | status | median ms | p90 ms | engine ms / Spruce ms (> 1: Spruce is faster) | max abs err vs "
             "PyTorch | version |",
             "|---|---|---|---|---|---|---|",
             f"| PyTorch eager (dense) | ok | {_ms(row.get('dense_latency_ms_median'))} | "
             f"{_ms(row.get('dense_latency_ms_p90'))} | {row.get('speedup') or 0:.2f}x | 0 | torch {torch.__version__} |",
             f"| Spruce deploy={row.get('deploy')} | ok | {_ms(spruce_ms)} | {_ms(row.get('latency_ms_p90'))} | - | "
             f"verified | - |"]
    for r in row.get("peers") or []:
        ratio = (f"{r['median_ms'] / spruce_ms:.2f}x" if r["median_ms"] and spruce_ms and r["status"] == "ok"
                 else "-")
        err = "-" if r["max_abs_err"] is None else f"{r['max_abs_err']:.2g}"
        status = r["status"] if r["status"] == "ok" else f"**{r['status']}**: {r['why']}"
        lines.append(f"| {r['engine']} | {status} | {_ms(r['median_ms'])} | {_ms(r['p90_ms'])} | {ratio} | {err} | "
                     f"{r['version'] or '-'} |")
    return "\n".join(lines) + "\n"


def plot_peers(row: dict[str, Any], path: Path, title: str) -> Path:
    """Bars of end-to-end median latency: PyTorch dense, Spruce, each peer that ran (a differing output hatched
    and labelled); engines without a number are named under the plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from spruce.io import write_figure
    bars = [("PyTorch dense", row.get("dense_latency_ms_median"), "#999999", ""),
            (f"Spruce {row.get('deploy')}", row.get("latency_ms_median"), "#2a7ab9", "")]
    missing = []
    for r in row.get("peers") or []:
        if r["median_ms"] is None:
            missing.append(f"{r['engine']}: {r['status']}")
        else:
            differs = r["status"] != "ok"
            bars.append((r["engine"] + (" (output differs)" if differs else ""), r["median_ms"],
                         "#d62728" if differs else "#e6a23c", "//" if differs else ""))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(bars) + 1.4))
    for i, (label, ms, color, hatch) in enumerate(bars):
        ax.barh(i, ms or 0.0, color=color, hatch=hatch)
        ax.text(ms or 0.0, i, f" {_ms(ms)}", va="center", fontsize=8)
    ax.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("end-to-end latency, median (ms)" + (f"\nnot timed: {'; '.join(missing)}" if missing else ""))
    ax.set_title(title, fontsize=9)
    try:
        return write_figure(path, fig, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


__all__ = ["ENGINES", "ROW_KEYS", "STATUSES", "PeerJob", "bench_peers", "check_engines", "compare_outputs",
           "peer_columns", "peers_csv", "peers_markdown", "peers_python", "peers_venv", "plot_peers", "prepare",
           "run_peer", "run_peers"]
