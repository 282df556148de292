"""``run_sensitivity(cfg, run_dir)``: the job behind ``train.py mode=sensitivity ckpt_path=<trained .ckpt>``.

Loads the checkpoint's model, the validation set of ``data=``, and runs ``spruce.prune.sensitivity`` on the
layers ``prune.layers`` selects (default: the family's prunable layers), with ``prune.block`` / ``prune.n_m``.
Writes ``sensitivity.csv/.md/.png`` and ``targets.json`` (for ``prune.targets=``) into ``run_dir``.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from spruce.models.train_config import ConfigError


def check_sensitivity(cfg: dict[str, Any]) -> dict[str, Any]:
    """``ckpt_path`` given; ``sensitivity.sparsities`` a non-empty list in [0, 1); ``tolerance`` >= 0."""
    sens = cfg.get("sensitivity") or {}
    if cfg.get("ckpt_path") is None:
        raise ConfigError("mode=sensitivity needs ckpt_path=<a trained .ckpt> (e.g. from train.py prune=none)")
    ladder = sens.get("sparsities")
    if not isinstance(ladder, list) or not ladder or any(
            isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s < 1 for s in ladder):
        raise ConfigError(f"sensitivity.sparsities={ladder!r} is not allowed; give a list of numbers in [0, 1)")
    tol = sens.get("tolerance")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ConfigError(f"sensitivity.tolerance={tol!r} is not allowed; it must be a number >= 0 "
                          f"(metric drop, e.g. 0.01 = one accuracy point)")
    return sens


def run_sensitivity(cfg: dict[str, Any], run_dir: str | os.PathLike) -> dict[str, Any]:
    """Run the analysis; returns ``{"baseline", "targets", "files": {kind: path}}``. ``ValueError`` on bad config."""
    sens = check_sensitivity(cfg)
    from spruce.models.train_job import prepare
    _, dm, _ = prepare(cfg)  # validates the rest and loads the data (and checks the checkpoint's classes)
    if cfg.get("threads") is not None:
        import torch
        torch.set_num_threads(int(cfg["threads"]))
    from spruce.models.checkpoint import model_from_checkpoint
    from spruce.models.module import SpruceModule
    from spruce.prune import default_prunable, prunable_layers
    from spruce.prune.sensitivity import sensitivity, targets_from, write_sensitivity
    from spruce.prune.structure import Structure

    model, meta = model_from_checkpoint(cfg["ckpt_path"])
    prune = cfg.get("prune") or {}
    if prune.get("layers"):
        layers = prunable_layers(model, include=prune["layers"])
    else:
        layers = default_prunable(model, model.family, prune_classifier=bool(prune.get("prune_classifier", True)))
    block, n_m = prune.get("block"), prune.get("n_m")
    structure = Structure(block=tuple(block) if block else None, n_m=tuple(n_m) if n_m else None)
    module = SpruceModule(model, cfg["model"]["optim"], {})
    loader = dm.val_dataloader()
    limit = sens.get("limit_batches")

    def evaluate(_model: Any) -> float:
        if limit:
            import itertools
            return module.evaluate(itertools.islice(loader, int(limit)))["acc"]
        return module.evaluate(loader)["acc"]

    title = f"{meta.get('model', {}).get('name')} on {cfg['data']['name']} ({structure.describe()})"
    result = sensitivity(model, evaluate, layers, sens["sparsities"], structure,
                         progress=(lambda line: print(line, flush=True)) if sens.get("verbose", True) else None)
    files = write_sensitivity(result, Path(run_dir), float(sens["tolerance"]), title)
    print(f"sensitivity: baseline {result['baseline']:.4f}; wrote {', '.join(str(p) for p in files.values())}")
    return {"baseline": result["baseline"], "targets": targets_from(result, float(sens["tolerance"])),
            "files": {k: str(v) for k, v in files.items()}}
