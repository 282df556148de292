"""Start-up validation of a ``train.py`` config (a plain dict): one clear line per problem, nothing written.

Kept free of Lightning imports so a bad command line fails in about a second.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from spruce.data import KINDS
from spruce.models import MODELS, model_family

PRUNE_METHODS = ("agp", "oneshot", "iterative", "none")
PRUNE_UNITS = ("step", "epoch")
PRUNE_SCOPES = ("layerwise", "global")
LOGGERS = ("wandb", "csv", "none")
#: Lightning strategies train.py runs with pruning: one process, or DDP with one process per rank launched as a
#: script (every rank keeps its own pruner; checkpoints and reports come from rank 0)
STRATEGIES = ("auto", "single_device", "ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false")
_REFUSED = {"fsdp": "it shards the weights the masks refer to", "deepspeed": "it shards the weights the masks refer to",
            "spawn": "the pruning state of the spawned workers does not come back to the process that writes "
                     "last.ckpt", "fork": "the pruning state of the forked workers does not come back to the process "
                     "that writes last.ckpt", "notebook": "the pruning state of the forked workers does not come back "
                     "to the process that writes last.ckpt", "xla": "masks are not kept in sync on XLA devices",
            "dp": "DataParallel is not supported by Lightning 2"}
FAMILY_KIND = {"vgg": "image", "bert": "text"}


class ConfigError(ValueError):
    """A configuration problem found before anything runs or is written."""


def _num(cfg: dict[str, Any], key: str) -> float:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"prune.{key}={value!r} is not allowed; it must be a number")
    return float(value)


def check_prune(prune: dict[str, Any]) -> None:
    """``prune.method`` known, ``final`` in [0, 1), ``initial`` in [0, final], ``0 <= start <= end``, unit, scope."""
    method = prune.get("method")
    if method not in PRUNE_METHODS:
        raise ConfigError(f"prune.method={method!r} is not allowed; allowed: {', '.join(PRUNE_METHODS)}")
    final, initial = _num(prune, "final"), _num(prune, "initial")
    if not 0.0 <= final < 1.0:
        raise ConfigError(f"prune.final={prune['final']!r} is not allowed; it must be in [0, 1)")
    if not 0.0 <= initial <= final:
        raise ConfigError(f"prune.initial={prune['initial']!r} is not allowed; it must be in [0, prune.final={final}]")
    start, end, every = _num(prune, "start"), _num(prune, "end"), _num(prune, "every")
    if start < 0:
        raise ConfigError(f"prune.start={prune['start']!r} is not allowed; it must be >= 0")
    if start > end:
        raise ConfigError(f"prune.start={prune['start']!r} > prune.end={prune['end']!r} is not allowed; "
                          f"pruning must start at or before it ends")
    if every <= 0:
        raise ConfigError(f"prune.every={prune['every']!r} is not allowed; it must be > 0")
    if prune.get("unit") not in PRUNE_UNITS:
        raise ConfigError(f"prune.unit={prune.get('unit')!r} is not allowed; allowed: {', '.join(PRUNE_UNITS)}")
    if prune.get("unit") == "step" and any(float(v) != int(v) for v in (start, end, every)):
        raise ConfigError(f"prune.unit=step needs whole numbers for start/end/every; got {start}, {end}, {every}")
    if prune.get("scope") not in PRUNE_SCOPES:
        raise ConfigError(f"prune.scope={prune.get('scope')!r} is not allowed; allowed: {', '.join(PRUNE_SCOPES)}")
    check_prune_extras(prune)
    if method == "none" and final != 0.0:
        raise ConfigError(f"prune=none is the dense baseline, so prune.final={prune['final']!r} is not allowed "
                          f"(use prune=agp or prune=magnitude to prune)")


def check_prune_extras(prune: dict[str, Any]) -> None:
    """``score``, ``block`` / ``n_m`` (and ``final`` within what N:M allows), ``targets`` (readable, values in
    [0, 1), layer-wise scope), ``score_lr`` / ``score_reg``."""
    from spruce.prune.scores import SCORES, SoftMovementScores
    from spruce.prune.structure import Structure
    from spruce.prune.targets import load_targets
    score = prune.get("score", "magnitude")
    if score not in SCORES:
        raise ConfigError(f"prune.score={score!r} is not allowed; allowed: {', '.join(SCORES)}")
    try:
        block, n_m = prune.get("block"), prune.get("n_m")
        structure = Structure(block=tuple(block) if isinstance(block, list) else block,
                              n_m=tuple(n_m) if isinstance(n_m, list) else n_m)
        structure.check_sparsity(float(prune.get("final", 0.0)), "prune.final")
        if not structure.unstructured and prune.get("scope") == "global":
            raise ValueError(f"prune.scope=global with prune.{'block' if structure.block else 'n_m'} is not "
                             f"supported; use prune.scope=layerwise")
        SoftMovementScores(prune.get("score_lr", 0.01), prune.get("score_reg", 0.0))
        targets = prune.get("targets")
        if targets == "speed":
            raise ValueError("prune.targets=speed is resolved by train.py from the performance model "
                             "(spruce.study.guided.speed_targets_file); library callers pass a file or mapping")
        loaded = load_targets(targets)
        if loaded is not None:
            if prune.get("scope") != "layerwise":
                raise ValueError("prune.targets (per-layer sparsities) needs prune.scope=layerwise")
            for key, v in loaded.items():
                structure.check_sparsity(v, f"prune.targets[{key!r}]")
    except ValueError as e:
        raise ConfigError(str(e).splitlines()[0]) from None


def check_checkpoint(path: str, model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The resume checkpoint exists, loads safely, and was written for the same model. Returns its meta."""
    from spruce.models.checkpoint import load_checkpoint
    try:
        meta = load_checkpoint(path)["spruce"]
    except ValueError as e:
        raise ConfigError(f"ckpt_path: {e}") from None
    saved = meta.get("model") or {}
    if saved.get("name") != model_cfg.get("name"):
        raise ConfigError(f"ckpt_path {path!r} holds model {saved.get('name')!r}, not model={model_cfg.get('name')!r};"
                          f" resume with model={saved.get('name')} or start without ckpt_path")
    keys = ("batch_norm", "width_div", "head") if model_cfg["name"] == "vgg16" else ()
    for key in keys:
        if key in saved and key in model_cfg and saved[key] != model_cfg[key]:
            raise ConfigError(f"ckpt_path {path!r} was trained with model.{key}={saved[key]!r}, this run has "
                              f"model.{key}={model_cfg[key]!r}; use the same model settings to resume")
    return meta


def check_threads(value: Any, key: str = "threads") -> int | None:
    """The one rule for ``threads`` in train.py and bench.py: null (every core) or an integer >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{key}={value!r} is not allowed; it must be an integer >= 1 (or null for every core)")
    return value


def check_strategy(value: Any) -> None:
    """``trainer.strategy`` one of :data:`STRATEGIES`; sharded (FSDP, DeepSpeed) and spawned/forked DDP refused."""
    if value in STRATEGIES:
        return
    why = next((w for key, w in _REFUSED.items() if isinstance(value, str) and key in value), None)
    raise ConfigError(f"trainer.strategy={value!r} is not allowed{' with pruning: ' + why if why else ''}; "
                      f"allowed: {', '.join(STRATEGIES)}")


def launcher_threads(launcher: dict[str, Any], env: dict[str, str], cores: int) -> int | None:
    """Torch threads for one job of a Hydra sweep when ``threads`` is null, so parallel jobs share the cores:

    * joblib launcher: ``cores // n_jobs`` (``n_jobs`` -1 = one job per core, -2 = all but one, as joblib counts);
    * submitit launchers: ``$SLURM_CPUS_PER_TASK`` or ``hydra.launcher.cpus_per_task``;
    * any other launcher (the basic one runs jobs one after another): ``None``, torch's default.
    """
    target = str(launcher.get("_target_") or "")
    if "joblib" in target.lower():
        n = launcher.get("n_jobs")
        n = -1 if n is None else int(n)
        parallel = n if n > 0 else max(1, cores + 1 + n)
        return max(1, cores // min(parallel, cores))
    if "submitit" in target.lower():
        cpt = env.get("SLURM_CPUS_PER_TASK") or launcher.get("cpus_per_task")
        return max(1, int(cpt)) if cpt else None
    return None


def check_trainer(trainer: dict[str, Any]) -> None:
    """``trainer.max_epochs`` an integer >= 1 (or null when ``max_steps`` >= 1 bounds the run); ``max_steps``
    -1 (no limit) or >= 1; the other integer knobs Lightning would reject with a traceback are checked too."""
    if not isinstance(trainer, dict):
        raise ConfigError(f"trainer={trainer!r} is not allowed; choose a trainer group, e.g. trainer=default")

    def _int(key: str, lo: int, extra: tuple = ()) -> Any:
        v = trainer.get(key)
        if v is None or v in extra:
            return v
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            allowed = f"an integer >= {lo}" + "".join(f" or {e}" for e in extra)
            raise ConfigError(f"trainer.{key}={v!r} is not allowed; it must be {allowed}")
        return v
    epochs, steps = _int("max_epochs", 1), _int("max_steps", 1, (-1,))
    if epochs is None and steps in (None, -1):
        raise ConfigError("trainer.max_epochs=null needs trainer.max_steps >= 1; otherwise training never ends")
    _int("log_every_n_steps", 1)
    _int("accumulate_grad_batches", 1)
    _int("num_sanity_val_steps", 0, (-1,))
    _int("num_nodes", 1)
    check_strategy(trainer.get("strategy", "auto"))


def check_config(cfg: dict[str, Any]) -> None:
    """Validate a composed train config; raises ``ConfigError`` with one line naming the value and the fix."""
    model, data = cfg.get("model") or {}, cfg.get("data") or {}
    name = model.get("name")
    if name not in MODELS:
        raise ConfigError(f"model={name!r} is not allowed; allowed: {', '.join(MODELS)}")
    if data.get("name") not in KINDS:
        raise ConfigError(f"data={data.get('name')!r} is not allowed; allowed: {', '.join(KINDS)}")
    family, kind = model_family(name), KINDS[data["name"]]
    if FAMILY_KIND[family] != kind:
        allowed = [d for d, k in KINDS.items() if k == FAMILY_KIND[family]]
        raise ConfigError(f"model={name} ({FAMILY_KIND[family]} model) cannot train on data={data['name']} "
                          f"({kind} data); allowed data for it: {', '.join(allowed)}")
    check_prune(cfg.get("prune") or {})
    from spruce.models.optim import check_optim
    try:
        check_optim(model.get("optim") or {})
    except ValueError as e:
        raise ConfigError(str(e)) from None
    logger = (cfg.get("logger") or {}).get("name")
    if logger not in LOGGERS:
        raise ConfigError(f"logger={logger!r} is not allowed; allowed: {', '.join(LOGGERS)}")
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r} is not allowed; it must be an integer")
    check_threads(cfg.get("threads"))
    check_trainer(cfg.get("trainer") or {})
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None:
        if Path(str(ckpt)).is_dir():
            raise ConfigError(f"ckpt_path={ckpt!r} is a directory; give the path of a .ckpt file written by train.py "
                              f"(e.g. <run>/checkpoints/last.ckpt)")
        if not Path(str(ckpt)).is_file():
            raise ConfigError(f"ckpt_path={ckpt!r} does not exist; give the path of a .ckpt written by train.py")
        check_checkpoint(str(ckpt), model)
