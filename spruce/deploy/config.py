"""``bench`` options as a checked dataclass: every bad value is caught here, before anything is built or written."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spruce.deploy.peers import check_engines
from spruce.deploy.plan import MODES, OBJECTIVES

RUN_MODES = ("deploy", "study", "aggregate")
DEVICES = ("cpu", "cuda")


@dataclass
class BenchConfig:
    """Plain options of one ``bench`` run (see ``conf/bench.yaml`` for each key's meaning)."""

    mode: str = "deploy"
    deploy: str = "auto"
    model: dict[str, Any] = field(default_factory=lambda: {"name": "vgg16"})
    model_explicit: bool = False
    prune_final: float | None = 0.9
    prune_scope: str = "layerwise"
    prune_layers: list[str] | None = None
    ckpt: str | None = None
    plan: str | None = None
    device: str = "cpu"
    batch_size: int = 1
    image_size: int = 224
    seq_len: int = 128
    threads: int | None = None
    objective: str = "latency"
    repeats: int = 10
    warmup: int = 2
    plan_repeats: int = 5
    plan_budget_s: float = 1.0
    kernels: list[str] | None = None
    random_init: bool = True
    seed: int = 0
    rtol: float = 1e-3
    atol: float = 1e-4
    accuracy_batches: int | None = None
    accuracy_batch_size: int = 64
    out_dir: str = "outputs/bench"
    sweep_dir: str | None = None
    wandb: bool = True
    wandb_offline: bool = True
    wandb_project: str = "spruce"
    progress: bool = True
    predict: str = "auto"
    shortlist: int | None = None
    peers: list[str] = field(default_factory=list)
    fuse: bool = True
    compile: str = "auto"
    save: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _names(v: Any) -> list[str] | None:
    if v is None or v == "" or v == []:
        return None
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return [str(s) for s in v]


def _get(d: dict, path: str, default: Any = None) -> Any:
    cur: Any = d
    for p in path.split("."):
        if not isinstance(cur, dict) or p not in cur:
            return default
        cur = cur[p]
    return cur


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; ValueError for cuda without GPU."""
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is not allowed; allowed: cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA GPU is visible here; use device=cpu")
    return device


def from_dict(cfg: dict[str, Any]) -> BenchConfig:
    """Build and check a :class:`BenchConfig` from the plain dict of ``conf/bench.yaml`` (+ overrides).

    ValueError with one line naming the bad value and what is allowed.
    """
    check_groups(cfg.get("group_choices"))
    deploy = _get(cfg, "deploy.mode", cfg.get("deploy") if isinstance(cfg.get("deploy"), str) else "auto")
    model = dict(cfg.get("model") or {"name": "vgg16"})
    logger = cfg.get("logger") or {}
    acc = cfg.get("accuracy") or {}
    out = BenchConfig(
        mode=str(cfg.get("mode", "deploy")), deploy=str(deploy), model=model,
        model_explicit=bool(cfg.get("model_explicit", False)),
        prune_final=_get(cfg, "prune.final", 0.9), prune_scope=str(_get(cfg, "prune.scope", "layerwise")),
        prune_layers=_names(_get(cfg, "prune.layers", None)),
        ckpt=cfg.get("ckpt"), plan=cfg.get("plan"), device=str(cfg.get("device") or ""),
        batch_size=cfg.get("batch_size", 1), image_size=cfg.get("image_size", 224),
        seq_len=cfg.get("seq_len", 128), threads=cfg.get("threads"),
        objective=str(_get(cfg, "deploy.objective", None) or cfg.get("objective", "latency")),
        repeats=cfg.get("repeats", 10), warmup=cfg.get("warmup", 2), plan_repeats=cfg.get("plan_repeats", 5),
        plan_budget_s=_float("plan_budget_s", cfg.get("plan_budget_s", 1.0)),
        kernels=_names(cfg.get("kernels")), random_init=bool(cfg.get("random_init", True)),
        seed=_int("seed", cfg.get("seed", 0), 0),
        rtol=_float("rtol", _get(cfg, "deploy.rtol", None) or cfg.get("rtol", 1e-3)),
        atol=_float("atol", _get(cfg, "deploy.atol", None) or cfg.get("atol", 1e-4)),
        accuracy_batches=acc.get("max_batches"), accuracy_batch_size=int(acc.get("batch_size", 64)),
        out_dir=str(cfg.get("out_dir") or "outputs/bench"), sweep_dir=cfg.get("sweep_dir"),
        wandb=bool(logger.get("wandb", True)), wandb_offline=bool(logger.get("offline", True)),
        wandb_project=str(logger.get("project", "spruce")), progress=bool(cfg.get("progress", True)),
        predict=str(cfg.get("predict", "auto")).lower(), shortlist=cfg.get("shortlist"),
        peers=cfg.get("peers") or [],
        fuse=bool(cfg.get("fuse", True)), compile=str(cfg.get("compile", "auto")).lower(), save=cfg.get("save"),
        extra={k: cfg[k] for k in ("study", "dir", "model_overrides") if k in cfg},
    )
    check(out)
    return out


def check_groups(choices: dict[str, Any] | None) -> None:
    """Each config group chosen on the command line (``model=``, ``prune=``, ``study=``: optional in
    ``conf/bench.yaml``, so Hydra silently skips an unknown name) names a file of ``spruce/conf/<group>/``."""
    from importlib import resources
    for group, choice in (choices or {}).items():
        if choice is None:
            continue
        folder = resources.files("spruce.conf").joinpath(group)
        allowed = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")) if folder.is_dir() else []
        if str(choice) not in allowed:
            raise ValueError(f"{group}={choice} is not allowed; allowed: {', '.join(allowed)}")


def _float(name: str, v: Any) -> float:
    """``float(v)`` with a one-line error naming the key (``plan_budget_s=abc``)."""
    try:
        if isinstance(v, bool):
            raise TypeError
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={v!r} is not allowed; it must be a number") from None


def _int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name}={v!r} is not allowed; it must be an integer >= {lo}")
    return v


def check(c: BenchConfig) -> None:
    """Raise ValueError (one line) on the first bad option; resolves ``device``."""
    if c.predict not in ("auto", "true", "false"):
        raise ValueError(f"predict={c.predict!r} is not allowed; allowed: auto, true, false")
    if c.mode == "kernels":
        raise ValueError("mode=kernels is gone (the library does not run benchmarks/ scripts): run "
                         "`python benchmarks/cpu_kernels.py --quick` instead")
    if c.mode not in RUN_MODES:
        raise ValueError(f"unknown mode {c.mode!r}; allowed: {', '.join(RUN_MODES)}")
    if c.deploy not in MODES:
        raise ValueError(f"unknown deploy mode {c.deploy!r}; allowed: {', '.join(MODES)}")
    if c.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {c.objective!r}; allowed: {', '.join(OBJECTIVES)}")
    c.batch_size = _int("batch_size", c.batch_size, 1)
    c.image_size = _int("image_size", c.image_size, 1)
    c.seq_len = _int("seq_len", c.seq_len, 1)
    c.repeats = _int("repeats", c.repeats, 1)
    c.plan_repeats = _int("plan_repeats", c.plan_repeats, 1)
    c.warmup = _int("warmup", c.warmup, 0)
    if c.compile not in ("off", "on", "auto"):
        raise ValueError(f"compile={c.compile!r} is not allowed; allowed: off, on, auto")
    if c.shortlist is not None:
        c.shortlist = _int("shortlist", c.shortlist, 1)
        if c.predict == "false":
            raise ValueError("shortlist needs the performance model; set predict=auto (profile cached) or predict=true")
    if not (c.rtol >= 0 and c.atol >= 0):
        raise ValueError(f"rtol={c.rtol!r}, atol={c.atol!r} are not allowed; tolerances must be >= 0")
    if not c.plan_budget_s > 0:
        raise ValueError(f"plan_budget_s={c.plan_budget_s!r} is not allowed; it must be > 0 (seconds)")
    if c.threads is not None:
        c.threads = _int("threads", c.threads, 1)
    if c.accuracy_batches is not None:
        c.accuracy_batches = _int("accuracy.max_batches", c.accuracy_batches, 1)
    if c.prune_final is not None and not (isinstance(c.prune_final, (int, float)) and 0 <= c.prune_final < 1):
        raise ValueError(f"prune.final={c.prune_final!r} is not allowed; it must be in [0, 1)")
    if not c.model.get("name"):
        raise ValueError("model.name is missing; choose a model, e.g. model=vgg16 or model=bert_base")
    if c.ckpt is not None and Path(c.ckpt).is_dir():
        raise ValueError(f"ckpt={c.ckpt!r} is a directory; give the path of a .ckpt file (e.g. <run>/checkpoints/"
                         f"last.ckpt)")
    if c.ckpt is not None and not Path(c.ckpt).is_file():
        raise ValueError(f"ckpt={c.ckpt!r} does not exist")
    if c.plan is not None and not Path(c.plan).is_file():
        raise ValueError(f"plan={c.plan!r} does not exist")
    c.device = resolve_device(c.device or None)
    c.peers = check_engines(c.peers)
    if c.peers and c.device != "cpu":
        raise ValueError(f"peers={c.peers} are CPU engines; run them with device=cpu (device={c.device})")
    if c.wandb and not c.wandb_offline and not _wandb_key_present():
        raise ValueError("logger.offline=false needs a W&B API key (WANDB_API_KEY or `wandb login`); "
                         "keep logger.offline=true to log offline")


def _wandb_key_present() -> bool:
    """Whether a W&B API key is configured (environment or ~/.netrc), without touching the network."""
    import os
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False
