"""The study's configuration: defaults from ``conf/study/default.yaml`` (and ``quick.yaml``), validated up front.

The YAML files are package data (``spruce/conf/study``, read through ``importlib.resources``), so an installed
package finds them too.

``resolve(cfg)`` merges a plain dict over the defaults. With ``quick=True`` every key still at its default value
is replaced by ``quick.yaml``'s, so ``bench.py mode=study quick=true`` (which passes the whole default group) and
``python -m spruce.study quick=true`` give the same run, and an explicit override still wins.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

CONF_PACKAGE = "spruce.conf"
SOURCES = ("shapes", "ckpt", "dlmc")
MODELS = ("vgg16", "bert_base")
WANDB = ("offline", "disabled")
FORMATS = ("csr", "coo", "bsr")
ANALYSES = ("sweep", "activation", "spsp_map")


def _load(name: str) -> dict[str, Any]:
    path = resources.files(CONF_PACKAGE).joinpath("study", name)
    if not path.is_file():
        raise ValueError(f"study config {path} is missing (package data spruce/conf/study/)")
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("defaults", None)
    return data


def defaults(quick: bool = False) -> dict[str, Any]:
    """The default study config (``quick.yaml`` over ``default.yaml`` when ``quick``)."""
    d = _load("default.yaml")
    if quick:
        d.update(_load("quick.yaml"))
    return d


#: keys of bench.py's config that mode=study reads besides its ``study:`` group.
BENCH_KEYS = ("model", "ckpt", "threads", "seed", "kernels", "quick", "source", "dlmc_dir", "out")


def from_bench(cfg: dict[str, Any]) -> dict[str, Any]:
    """The study keys of a whole ``bench.py`` config: its ``study:`` group, with the top-level ``model`` (a group
    dict or a name), ``ckpt``, ``threads``, ``seed`` and ``kernels`` (and any study key set at top level) over it
    where they are not null."""
    out = dict(cfg.get("study") or {})
    for k in BENCH_KEYS:
        v = cfg.get(k)
        if v is not None:
            out[k] = v
    return out


def from_bench_mode(cfg: dict[str, Any]) -> dict[str, Any]:
    """The study config of ``bench.py mode=study ...``: its ``study:`` group, with the model when ``model=`` was
    given explicitly (``model_explicit``), ``ckpt`` (implies ``source=ckpt``) and the top-level ``source``
    shorthand over it; the top-level ``threads`` where ``study.threads`` is null."""
    scfg = dict(cfg.get("study") or {})
    if scfg.get("model") is None and cfg.get("model_explicit"):
        scfg["model"] = (cfg.get("model") or {}).get("name")
    if scfg.get("ckpt") is None and cfg.get("ckpt"):
        scfg["ckpt"] = cfg["ckpt"]
        scfg["source"] = "ckpt"
    if cfg.get("source"):  # `bench.py mode=study source=dlmc` (top-level shorthand for study.source)
        scfg["source"] = cfg["source"]
    if scfg.get("threads") is None and cfg.get("threads") is not None:  # `bench.py mode=study threads=1`
        scfg["threads"] = cfg["threads"]
    return scfg


def resolve(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """Merge ``cfg`` over the defaults and validate; ValueError with one line naming a bad key or value.

    ``cfg`` is a study config (keys of ``conf/study/default.yaml``) or a whole ``bench.py`` config (recognised
    by its ``mode`` or ``study`` key; see ``from_bench``).
    """
    cfg = dict(cfg or {})
    if "mode" in cfg or isinstance(cfg.get("study"), dict):
        cfg = from_bench(cfg)
    base = defaults(False)
    unknown = sorted(set(cfg) - set(base))
    if unknown:
        raise ValueError(f"unknown study key(s) {unknown}; allowed: {', '.join(sorted(base))}")
    if isinstance(cfg.get("model"), dict):  # a Hydra model group passed whole
        cfg["model"] = cfg["model"].get("name")
    quick = bool(cfg.get("quick", base["quick"]))
    out = defaults(quick)
    for k, v in cfg.items():
        if quick and k != "quick" and v == base.get(k):
            continue  # left at the default: quick's value stands
        out[k] = v
    out["quick"] = quick
    _validate(out)
    return out


def _validate(c: dict[str, Any]) -> None:
    if c["model"] is not None and c["model"] not in MODELS:
        raise ValueError(f"model={c['model']!r} is not allowed; allowed: {', '.join(MODELS)} or null")
    src = c["source"]
    if src not in SOURCES and not Path(str(src)).is_dir():
        raise ValueError(f"source={src!r} is neither one of {', '.join(SOURCES)} nor an existing folder of .smtx")
    if src == "ckpt" and not c["ckpt"]:
        raise ValueError("source=ckpt needs ckpt=<path to a pruned .ckpt>")
    if c["ckpt"] and not Path(str(c["ckpt"])).is_file():
        raise ValueError(f"ckpt={c['ckpt']!r} does not exist")
    sps = c["sparsities"]
    if not isinstance(sps, (list, tuple)) or not sps or not all(0 <= float(s) < 1 for s in sps):
        raise ValueError(f"sparsities={sps!r} must be a non-empty list of numbers in [0, 1)")
    ds = c["dlmc_sparsities"]
    if ds is not None and (not isinstance(ds, (list, tuple)) or not all(0 <= float(s) < 1 for s in ds)):
        raise ValueError(f"dlmc_sparsities={ds!r} must be null or a list of numbers in [0, 1)")
    for key in ("batches", "dlmc_ns"):
        v = c[key]
        if not isinstance(v, (list, tuple)) or not v or not all(int(b) >= 1 for b in v):
            raise ValueError(f"{key}={v!r} must be a non-empty list of integers >= 1")
    bad = [f for f in c["formats"] if f not in FORMATS]
    if bad:
        raise ValueError(f"formats {bad} not allowed; allowed: {', '.join(FORMATS)}")
    for key, lo in (("repeats", 1), ("threads", 1), ("max_n", 1)):
        if c[key] is None and key == "threads":
            continue  # null: every core this process may run on
        if int(c[key]) < lo:
            raise ValueError(f"{key}={c[key]!r} must be >= {lo}")
    if c["n_cap"] is not None and int(c["n_cap"]) < 1:
        raise ValueError(f"n_cap={c['n_cap']!r} must be null or >= 1")
    if not float(c["budget_s"]) > 0:
        raise ValueError(f"budget_s={c['budget_s']!r} must be > 0")
    if c["wandb"] not in WANDB:
        raise ValueError(f"wandb={c['wandb']!r} is not allowed; allowed: {', '.join(WANDB)}")
    if not c["kinds"]:
        raise ValueError("kinds must name at least one generator kind (uniform, magnitude, balanced, ...)")
    _validate_spsp(c)


def _validate_spsp(c: dict[str, Any]) -> None:
    """``analysis`` and the ``spsp`` group (merged key by key over the defaults, so ``spsp.batch=2`` alone works)."""
    if c["analysis"] not in ANALYSES:
        raise ValueError(f"analysis={c['analysis']!r} is not allowed; allowed: {', '.join(ANALYSES)}")
    base = _load("default.yaml")["spsp"]
    given = c.get("spsp") or {}
    if not isinstance(given, dict):
        raise ValueError(f"spsp={given!r} must be a mapping of keys {', '.join(sorted(base))}")
    unknown = sorted(set(given) - set(base))
    if unknown:
        raise ValueError(f"unknown spsp key(s) {unknown}; allowed: {', '.join(sorted(base))}")
    sp = c["spsp"] = {**base, **given}
    if c["analysis"] == "activation" and not c["ckpt"]:
        raise ValueError("analysis=activation needs ckpt=<a trained .ckpt>")
    if sp["max_images"] is not None and int(sp["max_images"]) < 1:
        raise ValueError(f"spsp.max_images={sp['max_images']!r} must be null or >= 1")
    for key in ("batch_size", "batch", "input_size"):
        if int(sp[key]) < 1:
            raise ValueError(f"spsp.{key}={sp[key]!r} must be >= 1")
    for key in ("weight_sparsities", "act_sparsities"):
        v = sp[key]
        if not isinstance(v, (list, tuple)) or len(v) < 2 or not all(0 <= float(s) < 1 for s in v):
            raise ValueError(f"spsp.{key}={v!r} must be a list of at least two numbers in [0, 1)")
    if not isinstance(sp["shapes"], (list, tuple)) or not sp["shapes"]:
        raise ValueError(f"spsp.shapes={sp['shapes']!r} must name at least one VGG-16 conv (e.g. conv3_3)")
    if not isinstance(sp["kernels"], (list, tuple)) or not sp["kernels"]:
        raise ValueError(f"spsp.kernels={sp['kernels']!r} must name at least one dense x sparse kernel")
