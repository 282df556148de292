"""``bench(cfg)``: build or load a pruned model, plan, convert, verify, measure, report. ``bench.py`` wraps it.

Order matters: every option is checked and the model, inputs and plan are made before any file is written, the
converted model is verified against the dense one before anything is timed, and the report is written last.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spruce import perf
from spruce.io import atomic_write
from spruce.perf.machine import resolve_threads
from spruce.deploy.accuracy import accuracy, eval_loader
from spruce.deploy.artifact import save as save_artifact
from spruce.deploy.candidates import resolve_candidates
from spruce.deploy.compare import first_tensor
from spruce.deploy.compiled import compile_model
from spruce.deploy.config import BenchConfig, from_dict
from spruce.deploy.peers import peer_columns, peers_csv, peers_markdown, plot_peers, run_peers
from spruce.deploy.peers import prepare as prepare_peers
from spruce.deploy.plan import DENSE, Plan, plan
from spruce.deploy.plan_check import check_plan
from spruce.deploy.report import (LAYER_KEYS, ROW_KEYS, layer_rows, markdown_table, plot_layers, plot_sweep,
                                  read_rows, rows_csv, run_summary)
from spruce.deploy.runtime import (convert_, faster_than_dense, layer_weight_bytes, measure, reference_outputs,
                                   swap_modules, verify_against, weight_bytes_by_format)


def _note(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr)


# ---- model ---------------------------------------------------------------------------------------------------
def load_model(c: BenchConfig) -> tuple[nn.Module, dict[str, Any], list[str], float | None, str]:
    """``(model in eval mode, checkpoint meta or {}, layers to plan, sparsity label, init label)``."""
    from spruce.models import build_model, model_family
    from spruce.prune import default_prunable, magnitude_prune_, prunable_layers
    if c.ckpt:
        from spruce.models.checkpoint import model_from_checkpoint
        model, meta = model_from_checkpoint(c.ckpt)
        have = (meta.get("model") or {}).get("name")
        if c.model_explicit and have != c.model["name"]:
            raise ValueError(f"ckpt={c.ckpt!r} holds model {have!r} but model={c.model['name']} was given; "
                             f"drop model= or pick the checkpoint's model")
        layers = [n for n, e in (meta.get("layers") or {}).items() if e.get("pruned")]
        if not layers:
            layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
                      and bool((m.weight == 0).any())]
        sparsity = (meta.get("sparsity") or {}).get("overall")
        return model.eval(), meta, layers, sparsity, "trained checkpoint"
    name = c.model["name"]
    family = model_family(name)
    kwargs = {k: v for k, v in c.model.items() if k not in ("name", "optim")}
    if family == "vgg":
        kwargs["input_size"] = c.image_size
        if c.random_init:  # torchvision's VGG-16 (no BN, ImageNet head), random weights
            kwargs.update(weights=None, batch_norm=False, num_classes=1000, head="auto")
    elif c.random_init and name == "bert_base":
        kwargs["pretrained"] = None
    kwargs.update(c.extra.get("model_overrides") or {})
    model = build_model(name, **kwargs)
    init = str(getattr(model, "spruce_config", {}).get("init", "random-init"))
    init = "random-init weights" if init in ("scratch", "random-init") else init
    layers = prunable_layers(model, include=c.prune_layers) if c.prune_layers else default_prunable(model, family)
    sparsity = c.prune_final
    if sparsity:
        magnitude_prune_(model, float(sparsity), scope=c.prune_scope, layers=layers)
    return model.eval(), {}, layers, sparsity, init


def _inputs(model: nn.Module, c: BenchConfig) -> Any:
    from spruce.models import example_input
    kw: dict[str, Any] = {"seq_len": c.seq_len}
    if not c.ckpt:
        kw["input_size"] = c.image_size
    x = example_input(model, c.batch_size, **kw)
    to = (lambda t: t.to(c.device))
    return {k: to(v) for k, v in x.items()} if isinstance(x, dict) else to(x)


def _input_label(x: Any) -> str:
    if isinstance(x, dict):
        return "x".join(str(s) for s in next(iter(x.values())).shape) + " tokens"
    return "x".join(str(s) for s in x.shape)


def find_predictor(device: str, predict: str = "auto", threads: int | None = None, progress: bool = True) -> Any:
    """The performance model (``spruce.perf``) as ``(kernel, layer_info) -> ms``, or None.

    ``predict``: ``"auto"`` uses it only when this machine's profile is already cached (calibrating every CPU kernel
    takes minutes: docs/measured/perf-notes.md), ``"true"`` calibrates when needed, ``"false"`` never predicts.
    With ``"auto"`` and a cached profile that lacks some kernels (calibrated before they existed), those kernels are
    simply not predicted (the planner times them); nothing is calibrated.
    CPU only (calibration measures CPU kernels); ``predicted_ms`` stays null otherwise.
    """
    if predict in (False, "false", "False") or device != "cpu":
        return None
    if predict == "auto":
        prof = perf.cached_profile(threads)
        if prof is None:
            return None
    else:
        prof = perf.load_profile(progress=progress)
    cache_only = predict == "auto"

    def predictor(kernel: str, info: dict[str, Any]) -> float:
        if cache_only and info.get("format", "dense") != "dense" and not perf.has_kernel(prof, kernel):
            raise ValueError(f"kernel {kernel} is not in the cached profile (predict=true calibrates it)")
        return float(perf.predict_ms(kernel, info.get("format", "dense"), info["m"], info["k"], info["n"],
                                     info["nnz"], None, prof))
    return predictor


# ---- modes other than deploy ---------------------------------------------------------------------------------
def _fallback_unavailable(the_plan: Plan, device: str, deploy: str, notes: list[str]) -> None:
    """A reused plan naming a kernel that cannot run here: error, or (deploy=auto only) keep that layer dense."""
    from spruce.kernels import get as get_kernel
    for fqn, e in the_plan.layers.items():
        if e["kernel"] == DENSE:
            continue
        k = get_kernel(e["kernel"])
        ok, why = k.is_available()
        problem = (f"runs on {k.device}, not on device={device}" if k.device != device
                   else (None if ok else f"is unavailable: {why}"))
        if problem is None:
            continue
        if deploy != "auto":
            raise ValueError(f"plan layer {fqn!r}: kernel {e['kernel']!r} {problem} (deploy=auto would fall back "
                             f"to dense)")
        notes.append(f"plan layer {fqn}: kernel {e['kernel']} {problem}; kept dense (deploy=auto fallback)")
        e.update(kernel=DENSE, format="dense", weight_bytes=e.get("dense_bytes"), measured_ms=e.get("dense_ms"))


def aggregate(sweep_dir: str | Path) -> dict[str, Any]:
    """Re-render the sweep plots and summary from ``<sweep_dir>/rows.csv``."""
    sweep_dir = Path(sweep_dir)
    rows_path = sweep_dir / "rows.csv"
    if not rows_path.is_file():
        raise ValueError(f"dir={str(sweep_dir)!r} holds no rows.csv (run a sweep with `bench.py -m ...` first)")
    rows = read_rows(rows_path)
    plots = plot_sweep(rows, sweep_dir)
    md = "# bench sweep\n\n" + markdown_table(rows) + "\n" + "".join(
        f"![{k}]({p.name})\n" for k, p in plots.items())
    atomic_write(sweep_dir / "summary.md", md)
    return {"mode": "aggregate", "rows": len(rows), "plots": {k: str(p) for k, p in plots.items()},
            "summary": str(sweep_dir / "summary.md")}


# ---- deploy --------------------------------------------------------------------------------------------------
def _make_plan(c: BenchConfig, model: nn.Module, inputs: Any, candidates: list, layers: list[str] | None,
               notes: list[str]) -> Plan:
    """The plan: reused from ``c.plan`` (checked against the model) or made here by timing candidates."""
    if c.plan:
        the_plan = Plan.load(c.plan)
        check_plan(the_plan, model, c.plan)
        notes.append(f"plan reused from {c.plan}")
        _fallback_unavailable(the_plan, c.device, c.deploy, notes)
        return the_plan
    predictor = find_predictor(c.device, "true" if (c.shortlist and c.predict == "auto") else c.predict,
                               c.threads, c.progress)
    if c.shortlist and predictor is None:
        raise ValueError(f"shortlist={c.shortlist} needs the performance model, which exists for device=cpu "
                         f"only (device={c.device})")
    return plan(model, inputs, candidates, objective=c.objective, mode=c.deploy, repeats=c.plan_repeats,
                layers=layers, warmup=1, device=c.device, rtol=c.rtol, atol=c.atol, predictor=predictor,
                progress=c.progress, budget_s=c.plan_budget_s, shortlist=c.shortlist, fuse=c.fuse)


def _reverted_if_slower(model: nn.Module, originals: dict[str, nn.Module], inputs: Any, the_plan: Plan,
                        device: str, notes: list[str]) -> bool:
    """deploy=auto is never slower than dense end to end (per-layer wins can add up to a loss): when the
    converted model is, put the original modules back, mark the plan and return True."""
    ok, conv_best, dense_best = faster_than_dense(model, originals, inputs, device=device)
    if ok:
        return False
    swap_modules(model, originals)
    for e in the_plan.layers.values():
        if e["kernel"] != DENSE:
            e.update(kernel=DENSE, format="dense", weight_bytes=e.get("dense_bytes"),
                     measured_ms=e.get("dense_ms"), reverted="converted model slower end to end")
            e.pop("fusion", None)
    notes.append(f"deploy=auto: the converted model ({conv_best:.1f} ms, fastest run) was slower than dense "
                 f"({dense_best:.1f} ms) end to end: kept dense")
    return True


def _result_row(c: BenchConfig, meta: dict, init: str, sparsity: float | None, inputs: Any, dense: dict,
                sparse: dict, dense_weight: int, model: nn.Module, planned: list[str], dense_layer_bytes: int,
                acc: float | None, dense_acc: float | None, the_plan: Plan, plan_s: float, conv_ms: dict,
                cinfo: dict, peer_rows: list[dict[str, Any]], notes: list[str]) -> dict[str, Any]:
    """The result row of one bench (``result.json``, ``rows.csv``, W&B); appends explanatory notes."""
    row: dict[str, Any] = {
        "model": c.model["name"] if not meta else (meta.get("model") or {}).get("name"), "init": init,
        "deploy": c.deploy, "objective": c.objective, "sparsity": None if sparsity is None else float(sparsity),
        "device": c.device, "threads": torch.get_num_threads(), "batch_size": c.batch_size,
        "input": _input_label(inputs),
        "latency_ms_median": sparse["latency_ms_median"], "latency_ms_p90": sparse["latency_ms_p90"],
        "dense_latency_ms_median": dense["latency_ms_median"], "dense_latency_ms_p90": dense["latency_ms_p90"],
        "speedup": dense["latency_ms_median"] / sparse["latency_ms_median"],
        "peak_memory_bytes": sparse["peak_memory_bytes"], "dense_peak_memory_bytes": dense["peak_memory_bytes"],
        "weight_bytes": sum(sparse["weight_bytes"].values()), "weight_bytes_by_format": sparse["weight_bytes"],
        "dense_weight_bytes": dense_weight,
        "pruned_layers_bytes": layer_weight_bytes(model, planned), "pruned_layers_dense_bytes": dense_layer_bytes,
        "accuracy": acc, "dense_accuracy": dense_acc,
        "layers_sparse": sum(1 for e in the_plan.layers.values() if e["kernel"] != DENSE and e["format"] != "dense"),
        "layers_planned": len(planned),
        "kernels_used": ", ".join(f"{k} x{v}" for k, v in sorted(the_plan.kernels_used().items())),
        "plan_s": plan_s, "convert_ms": sum(conv_ms.values()),
        "fusions": sum(1 for e in the_plan.layers.values() if e.get("fusion")),
        "compile": cinfo["compile"], "compiled": cinfo["compiled"], "compile_s": cinfo["compile_s"],
    }
    if cinfo.get("compile_error"):
        notes.append(f"torch.compile failed, ran eager: {cinfo['compile_error']}")
    if "compiled_ms" in cinfo:
        notes.append(f"compile=auto: eager {cinfo['eager_ms']:.1f} ms, compiled {cinfo['compiled_ms']:.1f} ms -> "
                     f"{'compiled' if cinfo['compiled'] else 'eager'}")
    row["pruned_memory_ratio"] = (row["pruned_layers_bytes"] / dense_layer_bytes) if dense_layer_bytes else None
    if peer_rows:
        row.update(peer_columns(peer_rows), peers=peer_rows)
        notes += [f"peer {r['engine']}: {r['status']} ({r['why']})" for r in peer_rows if r["status"] != "ok"]
    if not sparse.get("peak_memory_reset", True):
        notes.append("peak memory could not be reset between phases: it counts from process start")
    if init.startswith("random"):
        notes.append("random-init weights: latency and memory are real, accuracy is meaningless and not reported")
    return row


def bench(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one bench (see ``conf/bench.yaml``); returns the result row plus the paths written.

    ValueError (one line) on bad options, before anything is written; ``VerificationError`` naming the first
    mismatching layer when the converted model differs from dense (nothing is timed or written then).
    """
    c = from_dict(cfg)
    if c.mode == "study":
        raise ValueError("mode=study is the study's (spruce.study.run_study); bench.py dispatches it there")
    if c.mode == "aggregate":
        return aggregate(c.extra.get("dir") or c.sweep_dir or c.out_dir)
    c.threads = resolve_threads(c.threads)
    torch.set_num_threads(c.threads)
    torch.manual_seed(c.seed)
    candidates, notes = resolve_candidates(c.kernels, c.device, c.deploy)
    for n in notes:
        _note(n)
    model, meta, layers, sparsity, init = load_model(c)
    model.to(c.device)
    inputs = _inputs(model, c)
    loader = None
    if (meta.get("data") or {}).get("name"):
        loader = eval_loader(meta, c.accuracy_batch_size)
    elif c.ckpt:
        notes.append("the checkpoint names no evaluation data set: accuracy not measured")

    t0 = time.perf_counter()
    the_plan = _make_plan(c, model, inputs, candidates, layers, notes)
    plan_s = time.perf_counter() - t0
    planned = list(the_plan.layers)

    # dense side: reference outputs, timing, memory, accuracy; then convert in place (frees the dense weights)
    ref = reference_outputs(model, inputs)
    dense = measure(model, inputs, repeats=c.repeats, warmup=c.warmup, device=c.device)
    dense_layer_bytes = layer_weight_bytes(model, planned)
    dense_weight = sum(weight_bytes_by_format(model).values())
    dense_acc = accuracy(model, loader, c.accuracy_batches) if loader is not None else None
    # peers get the pruned model as ONNX (plain dense layers holding the zeros), exported before conversion
    peer_tmp = tempfile.TemporaryDirectory(prefix="spruce-peers-") if c.peers else None
    peer_job = prepare_peers(model, inputs, peer_tmp.name) if peer_tmp is not None else None
    originals: dict[str, nn.Module] = {}
    conv_ms = convert_(model, the_plan, c.device, originals=originals if c.deploy == "auto" else None)
    if conv_ms:
        verify_against(ref, model, inputs, c.rtol, c.atol)
    # a plan made here with deploy=auto is never slower than dense end to end (per-layer wins can add up to a loss);
    # a reused plan (plan=...) is deployed as given
    if conv_ms and c.deploy == "auto" and not c.plan and _reverted_if_slower(model, originals, inputs, the_plan,
                                                                             c.device, notes):
        conv_ms = {}
    originals.clear()  # the dense weights of converted layers are freed here
    # compiled (inductor) when it works and, with compile=auto, beats eager; its first call reported apart
    # (deploy=dense is the PyTorch eager baseline: never compiled)
    runner, cinfo = compile_model(model, inputs, c.compile if c.device == "cpu" and c.deploy != "dense" else "off",
                                  rtol=c.rtol, atol=c.atol, device=c.device)
    if conv_ms or cinfo["compiled"]:
        sparse = measure(runner, inputs, repeats=c.repeats, warmup=c.warmup, device=c.device)
        acc = accuracy(model, loader, c.accuracy_batches) if loader is not None else None  # eager: any batch size
    else:
        sparse, acc = dense, dense_acc
    if c.save:
        save_artifact(model, the_plan, c.save, model_spec=(meta.get("model") or None),
                      reference=(inputs, first_tensor(ref[0])))
        notes.append(f"deployable artefact written to {c.save} (spruce.deploy.load)")
    peer_rows: list[dict[str, Any]] = []
    if peer_job is not None:  # after Spruce's timing; each engine in its own process, same input/threads/repeats
        peer_rows = run_peers(c.peers, peer_job, torch.get_num_threads(), c.repeats, c.warmup, c.rtol, c.atol)
        peer_tmp.cleanup()
    del ref

    sp_label = "none" if sparsity is None else f"{float(sparsity):g}"
    row = _result_row(c, meta, init, sparsity, inputs, dense, sparse, dense_weight, model, planned,
                      dense_layer_bytes, acc, dense_acc, the_plan, plan_s, conv_ms, cinfo, peer_rows, notes)
    return write_report(c, cfg, row, the_plan, notes, sp_label)


def write_report(c: BenchConfig, cfg: dict[str, Any], row: dict[str, Any], the_plan: Plan, notes: list[str],
                 sp_label: str) -> dict[str, Any]:
    """Write plan.json, rows.csv, layers.csv, layers.png, summary.md, the W&B run; append the row to the sweep's
    rows.csv and re-render the sweep plots when part of a sweep; ``result.json`` last, so its presence marks a
    complete result set (a run killed before it leaves none, and readers can tell)."""
    out = Path(c.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    row["run_dir"] = str(out)
    name = f"{row['model']}-{c.deploy}-s{sp_label}" + ("-random-init" if row["init"].startswith("random") else "")
    paths: dict[str, str] = {"plan": str(the_plan.save(out / "plan.json"))}
    lrows = layer_rows(the_plan.layers)
    atomic_write(out / "layers.csv", rows_csv(lrows, LAYER_KEYS))
    atomic_write(out / "rows.csv", rows_csv([row], ROW_KEYS))
    images: dict[str, Path] = {}
    if lrows:
        images["layers"] = plot_layers(the_plan.layers, out / "layers.png", f"{name}: per-layer time, dense vs chosen")
    if row.get("peers"):
        images["peers"] = plot_peers(row, out / "peers.png", f"{name}: end to end, same input, threads and repeats")
        paths["peers_csv"] = str(atomic_write(out / "peers.csv", peers_csv(row["peers"])))
    atomic_write(out / "summary.md", run_summary(row, the_plan.layers, notes)
                 + (peers_markdown(row) if row.get("peers") else "")
                 + "".join(f"\n![{k}]({p.name})\n" for k, p in images.items()))
    paths.update({"layers_csv": str(out / "layers.csv"), "rows_csv": str(out / "rows.csv"),
                  "summary": str(out / "summary.md"), **{f"png_{k}": str(p) for k, p in images.items()}})
    if c.sweep_dir:
        sweep = Path(c.sweep_dir)
        rows_path = sweep / "rows.csv"
        rows = read_rows(rows_path) if rows_path.is_file() else []
        rows.append({k: row.get(k) for k in ROW_KEYS})
        atomic_write(rows_path, rows_csv(rows, ROW_KEYS))
        agg = aggregate(sweep)
        images.update({f"sweep_{k}": Path(p) for k, p in agg["plots"].items()})
        paths["sweep_summary"] = agg["summary"]
    if c.wandb:
        config = {k: v for k, v in cfg.items() if k not in ("hydra",)}
        paths["wandb_run"] = str(_log_wandb(out, name, config, row, lrows, images, c))
    paths["result"] = str(atomic_write(out / "result.json", json.dumps({"row": row, "notes": notes}, indent=1,
                                                                        default=str)))  # last: the completion mark
    return {**row, "paths": paths, "notes": notes}


def _log_wandb(out: Path, name: str, config: dict[str, Any], row: dict[str, Any], lrows: list[dict[str, Any]],
               images: dict[str, Path], c: BenchConfig) -> Path:
    from spruce.deploy.wandb_log import log_run
    return log_run(out, name, config, row, lrows, images, offline=c.wandb_offline, project=c.wandb_project)


def remove_if_empty(path: str | Path) -> None:
    """Remove ``path`` if it is an empty directory (Hydra makes the run dir before bench validates anything)."""
    p = Path(path)
    if p.is_dir() and not any(p.iterdir()):
        shutil.rmtree(p, ignore_errors=True)
