"""Which kernel each prunable layer runs on: autotuned on the layer's real input shape, saved as JSON.

``plan`` captures every selected ``nn.Linear`` / ``nn.Conv2d`` input with forward hooks on one pass of the example
input, then for each layer and candidate kernel: ``prepare`` once (timed: the conversion cost), check the output
against the dense layer (a kernel that fails is recorded as ``"failed: <reason>"`` and never timed), warm up and
take the median of the timed runs. The choice per layer depends on ``mode`` (dense / sparse / auto) and
``objective`` (latency / memory).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spruce.deploy.compare import DEFAULT_ATOL, DEFAULT_RTOL, exact_fp32, mismatch, run_hooked
from spruce.deploy.fusion import find_fusions
from spruce.deploy.modules import SparseConv2d
from spruce.perf.allocator import steady_allocator
from spruce.perf.timing import median, time_ms
from spruce.kernels.registry import Kernel, apply_activation

MODES = ("sparse", "dense", "auto")
#: deploy=auto keeps the original module unless a sparse kernel is at least this much faster (0.1 = 10%): single
#: layer timings vary by that much on a shared machine, and a layer planned sparse at its crossover loses end to end
AUTO_MARGIN = 0.10
#: objective=latency: sparse candidates within this fraction of the fastest one count as tied; the fewest bytes wins
TIE_MARGIN = 0.05
OBJECTIVES = ("latency", "memory")
DENSE = "dense"  # the plan's name for "keep the original nn.Module"
PLAN_VERSION = 1

Predictor = Callable[[str, dict], "float | None"]


@dataclass
class Plan:
    """``layers``: ``{fqn: {kernel, format, weight_bytes, dense_bytes, predicted_ms, measured_ms, dense_ms,
    convert_ms, amortise_inferences, candidates: {name: ms | "failed: reason"}, ...}}``; ``meta``: how it was made.

    ``kernel == "dense"`` means the layer keeps its ``nn.Module``. Times are milliseconds per call on the captured
    input; bytes are the weight only (bias excluded).
    """

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (temp file + rename); non-finite floats are stored as strings ``"inf"``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": PLAN_VERSION, "meta": self.meta, "layers": self.layers}
        text = json.dumps(_encode(data), indent=1, sort_keys=False)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        """Read a plan written by :meth:`save`; ValueError with one line on a missing or malformed file."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"plan file {str(path)!r} does not exist")
        try:
            data = _decode(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"plan file {str(path)!r} is not valid JSON: {e}") from None
        if not isinstance(data, dict) or data.get("version") != PLAN_VERSION or not isinstance(
                data.get("layers"), dict):
            raise ValueError(f"plan file {str(path)!r} is not a Spruce plan (version {PLAN_VERSION} with 'layers')")
        for name, e in data["layers"].items():
            if not isinstance(e, dict) or "kernel" not in e:
                raise ValueError(f"plan file {str(path)!r}: layer {name!r} has no 'kernel'")
        return cls(layers=data["layers"], meta=data.get("meta", {}))

    def kernels_used(self) -> dict[str, int]:
        """``{kernel name: number of layers}``."""
        out: dict[str, int] = {}
        for e in self.layers.values():
            out[e["kernel"]] = out.get(e["kernel"], 0) + 1
        return out


def _encode(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return "inf" if o > 0 else ("-inf" if o < 0 else "nan")
    if isinstance(o, dict):
        return {k: _encode(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_encode(v) for v in o]
    return o


_NONFINITE_KEYS = ("amortise_inferences", "speedup")


def _decode(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: (float(v) if k in _NONFINITE_KEYS and v in ("inf", "-inf", "nan") else _decode(v))
                for k, v in o.items()}
    if isinstance(o, list):
        return [_decode(v) for v in o]
    return o


# ---- layer selection and shape capture ---------------------------------------------------------------------
def weight_sparsity(layer: nn.Module) -> float:
    """Fraction of exact zeros in ``layer.weight``."""
    w = layer.weight.detach()
    return float((w == 0).sum()) / max(1, w.numel())


def prunable_layers(model: nn.Module, layers: Sequence[str] | None = None) -> list[str]:
    """Names of the ``nn.Linear`` / ``nn.Conv2d`` to plan: ``layers`` (validated) or every one with exact zeros."""
    mods = dict(model.named_modules())
    if layers is None:
        return [n for n, m in mods.items() if isinstance(m, (nn.Linear, nn.Conv2d)) and weight_sparsity(m) > 0]
    out = []
    for n in layers:
        if n not in mods:
            raise ValueError(f"layer {n!r} is not in the model")
        if not isinstance(mods[n], (nn.Linear, nn.Conv2d)):
            raise ValueError(f"layer {n!r} is a {type(mods[n]).__name__}; only Linear and Conv2d can be planned")
        out.append(n)
    return out


def capture_inputs(model: nn.Module, example_input: object, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The first input tensor each named module sees on one forward pass of ``example_input`` (detached clones)."""
    mods = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for n in names:
        def hook(_m: nn.Module, args: tuple, n: str = n) -> None:
            if n not in seen and args and isinstance(args[0], torch.Tensor):
                seen[n] = args[0].detach().clone()
        handles.append(mods[n].register_forward_pre_hook(hook))
    run_hooked(model, example_input, handles)
    missing = [n for n in names if n not in seen]
    if missing:
        raise ValueError(f"layer {missing[0]!r} did not run on the example input ({len(missing)} such layers)")
    return seen


# ---- one layer -------------------------------------------------------------------------------------------
def _layer_info(name: str, layer: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Shape facts of a layer call: ``m`` x ``k`` weight, ``n`` columns of the input matrix, density."""
    if isinstance(layer, nn.Conv2d):
        m, k = layer.out_channels, layer.weight[0].numel()
        with torch.no_grad():
            h_out, w_out = layer(x[:1]).shape[-2:]
        n = int(x.shape[0] * h_out * w_out)
        kind = "conv2d"
    else:
        m, k = layer.out_features, layer.in_features
        n = int(x.numel() // x.shape[-1])
        kind = "linear"
    nnz = int((layer.weight != 0).sum())
    return {"layer": name, "kind": kind, "m": m, "k": k, "n": n, "nnz": nnz, "density": nnz / max(1, m * k),
            "input_shape": list(x.shape)}


def _call(kernel: Kernel, packed: Any, layer: nn.Module, x: torch.Tensor, activation: str = "none"
          ) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.detach()
    if isinstance(layer, nn.Conv2d):
        return kernel.conv2d(packed, x, tuple(layer.kernel_size), tuple(layer.stride), tuple(layer.padding),
                             tuple(layer.dilation), bias, activation)
    return kernel.linear(packed, x, bias, activation)


def _flat_weight(layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        return SparseConv2d.flat_weight(layer)
    return layer.weight.detach()


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:300]


def _time_candidate(fn: Callable[[], object], first_ms: float, repeats: int, warmup: int, device: str,
                    best_so_far: float, budget_s: float) -> tuple[float, int, float]:
    """``(median ms, timed runs)`` of ``fn``. ``first_ms`` is the (cold) verification call: a candidate that took
    more than 5x the best time so far there cannot win and is not timed again (its cold time is reported, with
    0 timed runs), so slow kernels on big convolutions do not dominate planning."""
    if first_ms > 5 * best_so_far:
        return first_ms, 0, first_ms
    runs = time_ms(fn, repeats=repeats, warmup=max(0, warmup - 1), device=device, budget_s=budget_s)
    return median(runs), len(runs), min(runs)


def _shortlist(candidates: Sequence[Kernel], info: dict[str, Any], predictor: Predictor | None,
               shortlist: int | None) -> tuple[list[Kernel], list[Kernel], dict[str, float], dict[str, str]]:
    """``(candidates to time, reserve, predicted ms per candidate, results of those not timed)``.

    Without a shortlist every candidate is timed (predictions, when a predictor exists, are still recorded).
    With one, ``reserve`` holds the ranked candidates outside it, fastest predicted first: a shortlisted kernel
    that fails is replaced by the next of them, so a shortlist of N means the N predicted fastest that work.
    Dense-format kernels are reference timings that are never chosen: they are not ranked and always timed."""
    predicted: dict[str, float] = {}
    if predictor is not None:
        for kern in candidates:
            if kern.format == "dense":
                continue
            try:
                predicted[kern.name] = float(predictor(kern.name, {**info, "format": kern.format}))
            except Exception:  # unpredictable candidates are timed, never dropped
                continue
    if shortlist is None or predictor is None:
        return list(candidates), [], predicted, {}
    ranked = sorted((k for k in candidates if k.name in predicted), key=lambda k: predicted[k.name])
    keep = {k.name for k in ranked[:shortlist]} | {k.name for k in candidates if k.name not in predicted}
    left = {k.name: f"not timed: predicted {predicted[k.name]:.3g} ms, outside the model's shortlist of {shortlist}"
            for k in candidates if k.name not in keep}
    return [k for k in candidates if k.name in keep], ranked[shortlist:], predicted, left


def _dense_side(layer: nn.Module, x: torch.Tensor, activation: str, repeats: int, warmup: int, device: str,
                budget_s: float) -> tuple[torch.Tensor, float, int, float]:
    """``(reference output, median ms, timed runs, fastest run ms)`` of the original layer, followed by its activation when the
    layer is a fusion candidate (so the sparse epilogue is compared with what it replaces)."""
    def run() -> torch.Tensor:
        return apply_activation(layer(x), activation)
    with torch.inference_mode(), exact_fp32():
        ref = run()
    runs = time_ms(run, repeats=repeats, warmup=warmup, device=device, budget_s=budget_s)
    return ref, median(runs), len(runs), min(runs)


def _try_candidate(kern: Kernel, w: torch.Tensor, layer: nn.Module, x: torch.Tensor, ref: torch.Tensor,
                   activation: str, best: float, t: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Prepare (timed), verify against ``ref``, then time one candidate: ``(stats, None)`` or ``(None, why)``.

    ``t``: the timing options of :func:`plan_layer` (``repeats``, ``warmup``, ``device``, ``budget_s``, ``rtol``,
    ``atol``). Exceptions other than a wrong output propagate (the caller records them as failures)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        packed = kern.prepare(w)
    convert_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    with torch.inference_mode():
        y = _call(kern, packed, layer, x, activation)
    first_ms = (time.perf_counter() - t0) * 1e3
    why = mismatch(y, ref, t["rtol"], t["atol"])
    del y
    if why:
        return None, f"wrong output: {why}"
    ms, n_runs, fastest = _time_candidate(lambda: _call(kern, packed, layer, x, activation), first_ms, t["repeats"],
                                 t["warmup"], t["device"], best, t["budget_s"])
    return {"ms": ms, "best": fastest, "bytes": int(kern.weight_bytes(packed)), "format": kern.format,
            "convert_ms": convert_ms, "runs": n_runs}, None


def _time_candidates(candidates: Sequence[Kernel], reserve: list[Kernel], predicted: dict[str, float],
                     w: torch.Tensor, layer: nn.Module, x: torch.Tensor, ref: torch.Tensor, activation: str,
                     dense_ms: float, results: dict[str, Any], stats: dict[str, dict[str, Any]],
                     t: dict[str, Any]) -> None:
    """Try every candidate in turn, filling ``results`` (ms or ``"failed: ..."``) and ``stats`` (working ones).

    A failed shortlisted kernel makes room for the next-ranked one of ``reserve``."""
    best = dense_ms
    queue = list(candidates)
    while queue:
        kern = queue.pop(0)
        try:
            s, why = _try_candidate(kern, w, layer, x, ref, activation, best, t)
        except Exception as e:  # a failing kernel is reported, never timed; the plan goes on
            s, why = None, _one_line(e)
        if s is None:
            results[kern.name] = f"failed: {why}"
            if kern.name in predicted and reserve:
                nxt = reserve.pop(0)
                results.pop(nxt.name, None)
                queue.append(nxt)
            continue
        best = min(best, s["best"])
        results[kern.name] = s["ms"]
        stats[kern.name] = s


def _choose(name: str, stats: dict[str, dict[str, Any]], results: dict[str, Any], mode: str, objective: str,
            keep_dense: bool) -> str:
    """The chosen candidate: registered dense-format kernels are timed for reference but never chosen ("dense",
    the original module, is the dense option, so a converted layer is always a sparse one).

    Latency compares each candidate's fastest timed run (``best``), not its median: on a shared machine a run is
    slowed by whole scheduler time slices (a 1 ms layer measured at 8, 16, 24 ms when another process holds a
    core), and when half the runs of one candidate are hit the median lies while the fastest run does not."""
    choices = [n for n, s in stats.items() if s["format"] != "dense" or (mode == "auto" and n == DENSE)]
    if mode == "dense" or keep_dense:
        choices = [DENSE]
    if not choices:
        fails = "; ".join(f"{k}: {v}" for k, v in results.items() if k != DENSE) or "no sparse candidates"
        raise ValueError(f"deploy=sparse: no sparse kernel works for layer {name!r} ({fails})")
    key = (lambda n: (stats[n]["best"], stats[n]["bytes"])) if objective == "latency" else (
        lambda n: (stats[n]["bytes"], stats[n]["best"]))
    pick = min(choices, key=key)
    if objective == "latency" and pick != DENSE:
        # sparse kernels within the timing noise of the fastest are a tie: the one with fewest weight bytes wins
        # (a 4x1-block kernel on an unstructured mask is often a hair faster at twice the bytes of CSR)
        near = [n for n in choices if n != DENSE and stats[n]["best"] <= stats[pick]["best"] * (1.0 + TIE_MARGIN)]
        pick = min(near, key=lambda n: (stats[n]["bytes"], stats[n]["best"]))
    if (mode == "auto" and objective == "latency" and pick != DENSE and DENSE in stats
            and stats[pick]["best"] * (1.0 + AUTO_MARGIN) > stats[DENSE]["best"]):
        pick = DENSE  # a per-layer win inside the timing noise is not worth a conversion (and often isn't real)
    return pick


def _predict_pick(entry: dict[str, Any], pick: str, fmt: str, info: dict[str, Any],
                  predictor: Predictor | None) -> None:
    if predictor is None:
        return
    try:
        entry["predicted_ms"] = predictor(pick, {**info, "format": fmt})
    except Exception as e:  # the model is optional; its failure is reported, not hidden
        entry["predicted_ms"] = None
        entry["predictor_error"] = _one_line(e)


def plan_layer(name: str, layer: nn.Module, x: torch.Tensor, candidates: Sequence[Kernel], mode: str,
               objective: str, repeats: int = 5, warmup: int = 2, device: str = "cpu",
               rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
               predictor: Predictor | None = None, budget_s: float = 1.0,
               shortlist: int | None = None, fusion: dict[str, str] | None = None) -> dict[str, Any]:
    """Time every candidate kernel for one layer on its captured input ``x``; return the plan entry.

    ``budget_s``: per candidate, stop repeating once the timed runs took this long (at least one run).
    ``shortlist``: with a ``predictor``, only the ``shortlist`` candidates the model predicts fastest are prepared,
    verified and timed (a candidate the model cannot predict is always timed; one that fails is replaced by the
    next-ranked); the others are recorded as not timed, with their predicted ms under ``predicted``.
    ``fusion``: ``{"activation", "module"}`` (:func:`spruce.deploy.fusion.find_fusions`) when the layer's output
    goes only to that activation: candidates run with it as their epilogue and are checked and timed against the
    dense layer + activation; the entry records ``fusion`` when a sparse kernel is chosen."""
    info = _layer_info(name, layer, x)
    candidates, reserve, predicted, not_timed = _shortlist(candidates, info, predictor, shortlist)
    activation = fusion["activation"] if fusion else "none"
    w = _flat_weight(layer)
    dense_bytes = w.numel() * w.element_size()
    ref, dense_ms, dense_runs, dense_best = _dense_side(layer, x, activation, repeats, warmup, device, budget_s)
    entry: dict[str, Any] = {"kind": info["kind"], "shape": [info["m"], info["k"]], "n": info["n"],
                             "input_shape": info["input_shape"], "sparsity": 1.0 - info["density"],
                             "dense_ms": dense_ms, "dense_bytes": dense_bytes}
    if fusion:  # dense_ms (and every candidate's ms) then includes the activation
        entry["fusable"] = activation
    results: dict[str, Any] = {DENSE: dense_ms, **not_timed}
    stats: dict[str, dict[str, Any]] = {DENSE: {"ms": dense_ms, "best": dense_best, "bytes": dense_bytes,
                                                "format": "dense", "convert_ms": 0.0, "runs": dense_runs}}
    skip = SparseConv2d.unsupported_reason(layer) if isinstance(layer, nn.Conv2d) else None
    if skip:
        entry["skipped"] = skip
    elif mode != "dense":
        t = {"repeats": repeats, "warmup": warmup, "device": device, "budget_s": budget_s, "rtol": rtol, "atol": atol}
        _time_candidates(candidates, reserve, predicted, w, layer, x, ref, activation, dense_ms, results, stats, t)
    pick = _choose(name, stats, results, mode, objective, keep_dense=bool(skip))
    s = stats[pick]
    saving = dense_ms - s["ms"]
    entry.update({"kernel": pick, "format": s["format"], "weight_bytes": s["bytes"], "measured_ms": s["ms"],
                  "convert_ms": s["convert_ms"], "speedup": dense_ms / s["ms"] if s["ms"] > 0 else float("inf"),
                  "amortise_inferences": (s["convert_ms"] / saving) if saving > 0 else float("inf"),
                  "predicted_ms": None, "candidates": results,
                  "timed_runs": {n: st["runs"] for n, st in stats.items()},
                  "best_ms": {n: st["best"] for n, st in stats.items()}})
    if predicted:
        entry["predicted"] = predicted
    if pick == DENSE:
        entry["amortise_inferences"] = 0.0  # nothing to convert
    elif fusion:
        entry["fusion"] = {"activation": fusion["activation"], "module": fusion["module"]}
    _predict_pick(entry, pick, s["format"], info, predictor)
    return entry


def plan(model: nn.Module, example_input: object, candidates: Sequence[Kernel], objective: str = "latency",
         mode: str = "auto", repeats: int = 5, layers: Sequence[str] | None = None, warmup: int = 2,
         device: str = "cpu", rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
         predictor: Predictor | None = None, progress: bool = True, budget_s: float = 1.0,
         shortlist: int | None = None, fuse: bool = True) -> Plan:
    """Plan every selected layer of ``model`` (eval mode) on the shapes ``example_input`` produces.

    Args:
        model: the (pruned) dense model; not modified.
        example_input: a tensor ``[B, 3, H, W]`` or a dict of tensors (BERT ``input_ids``/``attention_mask``).
        candidates: kernel instances to try (e.g. ``spruce.kernels.kernels(device="cpu")``).
        objective: ``"latency"`` (lowest median ms) or ``"memory"`` (fewest weight bytes, then ms).
        mode: ``"sparse"`` (every layer on its best sparse kernel), ``"dense"`` (keep every layer),
            ``"auto"`` (best of dense and sparse per layer).
        repeats: timed runs per candidate (median reported); ``warmup`` untimed runs before.
        layers: names to plan; default every Linear/Conv2d whose weight holds exact zeros.
        predictor: optional performance model ``(kernel_name, layer_info) -> ms`` filling ``predicted_ms``.
        budget_s: per layer and candidate, stop repeating once the timed runs took this long (>= 1 run);
            a candidate more than 5x slower than the best so far on its (cold) verification call is not timed
            again (``timed_runs`` 0 in the entry).
        shortlist: time only the ``shortlist`` candidates ``predictor`` ranks fastest per layer (needs a
            predictor): the performance model saves planning time; the entry keeps every prediction.
        fuse: find Linear/Conv2d -> ReLU/GELU pairs (:func:`spruce.deploy.fusion.find_fusions`, confirmed on
            ``example_input``) and plan them as one kernel call with the activation as epilogue; a layer deployed
            sparse records ``fusion: {activation, module}``, and ``meta.fusions`` counts the deployed ones.
    """
    if mode not in MODES:
        raise ValueError(f"unknown deploy mode {mode!r}; allowed: {', '.join(MODES)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; allowed: {', '.join(OBJECTIVES)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if shortlist is not None and (isinstance(shortlist, bool) or not isinstance(shortlist, int) or shortlist < 1):
        raise ValueError(f"shortlist={shortlist!r} is not allowed; it must be null or an integer >= 1")
    if shortlist is not None and predictor is None:
        raise ValueError("shortlist needs the performance model (a predictor); calibrate this machine with "
                         "`python -m spruce.study --calibrate` or pass predict=true")
    steady_allocator()  # the allocator policy calibration measured under, whatever ran before in this process
    names = prunable_layers(model, layers)
    mods = dict(model.named_modules())
    inputs = capture_inputs(model, example_input, names)
    fusions = find_fusions(model, names, example_input) if fuse else {}
    out = Plan(meta={"mode": mode, "objective": objective, "device": device, "repeats": repeats,
                     "warmup": warmup, "budget_s": budget_s, "threads": torch.get_num_threads(),
                     "torch": torch.__version__, "shortlist": shortlist,
                     "candidates": [k.name for k in candidates], "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    it: Any = names
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(names, desc=f"plan ({mode})", unit="layer", leave=False)
    for n in it:
        if progress:
            it.set_postfix_str(n)
        out.layers[n] = plan_layer(n, mods[n], inputs.pop(n), candidates, mode, objective, repeats, warmup,
                                   device, rtol, atol, predictor, budget_s, shortlist, fusions.get(n))
    out.meta["fuse"] = fuse
    out.meta["fusions"] = sum(1 for e in out.layers.values() if "fusion" in e)
    return out
