"""Speed-guided per-layer targets (Park et al. 2017, "guided pruning"): the performance model's predicted
crossover of each layer decides how far it is pruned (``spruce.prune.targets.speed_guided_targets``).

Here, not in ``spruce.prune``, because it consults ``spruce.perf`` (``prune`` imports nothing of ours). Used by
``train.py prune.targets=speed``: the entry script calls :func:`speed_targets_file`, which writes
``speed_targets.json`` into the run directory and returns its path for ``prune.targets``.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from spruce import perf
from spruce.io import write_json
from spruce.perf.model import predicted_crossover
from spruce.prune.targets import overall_sparsity, speed_guided_targets


def layer_crossovers(shapes: Iterable[Any], profile: perf.MachineProfile, kernels: Sequence[Any],
                     block_pruned: bool = False) -> dict[str, dict[str, Any]]:
    """``{layer: {"crossover": sparsity or None, "kernel": name or None}}``: the lowest predicted crossover over
    ``kernels`` (sparse formats the profile has numbers for) on each ``LayerShape`` at its ``n_per_sample``."""
    out: dict[str, dict[str, Any]] = {}
    usable = [k for k in kernels if k.format != "dense" and perf.has_kernel(profile, k.name)]
    if not usable:
        raise ValueError("the machine profile has no calibrated sparse kernel; run python -m spruce.perf first")
    for s in shapes:
        best: tuple[float, str] | None = None
        for k in usable:
            status, x = predicted_crossover(k.name, k.format, s.m, s.k, s.n(), profile, block_pruned=block_pruned)
            c = 0.0 if status == "always" else x
            if c is not None and (best is None or c < best[0]):
                best = (c, k.name)
        out[s.name] = {"crossover": None if best is None else best[0], "kernel": None if best is None else best[1]}
    return out


def speed_targets(model: nn.Module, example: Any, layers: Sequence[str], target: float,
                  profile: perf.MachineProfile, kernels: Sequence[Any], margin: float = 0.05,
                  max_sparsity: float = 0.98, block_pruned: bool = False) -> dict[str, Any]:
    """Trace ``model`` on ``example`` (one sample), predict each layer's crossover and choose per-layer targets at
    the overall sparsity ``target``. Returns ``{"targets", "reasons", "crossovers", "overall", ...}``."""
    from spruce.models.shapes import traced_shapes

    shapes = traced_shapes(model, example, list(layers))
    cross = layer_crossovers(shapes, profile, kernels, block_pruned)
    sizes = {s.name: s.m * s.k for s in shapes}
    targets, reasons = speed_guided_targets(sizes, {n: c["crossover"] for n, c in cross.items()}, target, margin,
                                            max_sparsity)
    return {"targets": targets, "reasons": reasons, "crossovers": cross, "target": target,
            "overall": overall_sparsity(targets, sizes), "margin": margin, "max_sparsity": max_sparsity,
            "profile": profile.name}


def speed_targets_file(cfg: dict[str, Any], run_dir: str | Path, margin: float = 0.05,
                       max_sparsity: float = 0.98) -> Path:
    """For ``train.py prune.targets=speed``: per-layer targets for ``cfg``'s model at ``prune.final`` overall, from
    this machine's cached performance model (never calibrates: ``python -m spruce.perf threads=<n>`` first), written
    to ``<run_dir>/speed_targets.json``. Returns that path."""
    import torch

    from spruce import kernels as registry
    from spruce.models import example_input
    from spruce.models.train_job import prepare
    from spruce.prune import default_prunable, prunable_layers

    threads = cfg.get("threads")
    profile = perf.cached_profile(threads)
    if profile is None:
        raise ValueError(f"prune.targets=speed needs this machine's performance model for threads={threads}; "
                         f"calibrate it once with: python -m spruce.perf threads={threads or torch.get_num_threads()}")
    plain = copy.deepcopy(cfg)
    plain["prune"]["targets"] = None
    model, dm, _ = prepare(plain)
    prune = plain["prune"]
    layers = (prunable_layers(model, include=prune["layers"]) if prune.get("layers") else
              default_prunable(model, model.family, prune_classifier=bool(prune.get("prune_classifier", True))))
    kw = ({"input_size": int(dm.input_size)} if model.family == "vgg"
          else {"seq_len": int(plain["data"].get("max_length", 128))})
    x = example_input(model, 1, **kw)
    model.eval()
    result = speed_targets(model, x, layers, float(prune["final"]), profile, registry.kernels(device="cpu"),
                           margin, max_sparsity, block_pruned=bool(prune.get("block")))
    path = Path(run_dir) / "speed_targets.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result, indent=1)
    return path
