"""Per-layer final sparsities: reading ``prune.targets`` (a file or a mapping) and the speed-guided choice.

A targets spec maps layer names or patterns (``fnmatch``, ``"re:<regex>"``, as in ``layers.py``) to a final
sparsity in ``[0, 1)``. Files are JSON or YAML holding either that mapping or ``{"targets": mapping, ...}`` (the
form ``sensitivity`` and the speed-guided mode write, with their reasons beside it). An exact name wins over a
pattern; otherwise the first matching pattern in the file's order; layers no entry matches get the global
``prune.final``. Every entry must match at least one pruned layer (a typo fails at start-up).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spruce.prune.layers import _matches


def _check_value(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v < 1.0:
        raise ValueError(f"prune.targets[{key!r}]={v!r} is not allowed; a target sparsity must be in [0, 1)")
    return float(v)


def load_targets(spec: str | Path | Mapping[str, Any] | None) -> dict[str, float] | None:
    """``{name or pattern: final sparsity}`` from a file path or a mapping; ``None`` stays ``None``.

    Raises ``ValueError`` (one line) on a missing/unreadable file, a bad value or an empty mapping.
    """
    if spec is None:
        return None
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"prune.targets={str(spec)!r} is not a file; give a JSON/YAML file of "
                             f"{{layer: sparsity}} (e.g. the targets.json that mode=sensitivity writes)")
        text = path.read_text()
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml
                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as e:  # noqa: BLE001 - any parse error becomes one line
            raise ValueError(f"prune.targets file {str(spec)!r} cannot be parsed: {str(e).splitlines()[0]}") from None
    else:
        data = spec
    if isinstance(data, Mapping) and isinstance(data.get("targets"), Mapping):
        data = data["targets"]
    if not isinstance(data, Mapping) or not data:
        raise ValueError("prune.targets must be a non-empty mapping {layer or pattern: sparsity} "
                         "(or a file holding one, optionally under a 'targets' key)")
    return {str(k): _check_value(str(k), v) for k, v in data.items()}


def resolve_targets(targets: Mapping[str, float], layers: Sequence[str], default: float) -> dict[str, float]:
    """``{fqn: final sparsity}`` for every layer in ``layers`` (exact names first, then patterns in order, then
    ``default``). ``ValueError`` when an entry matches none of ``layers``."""
    out: dict[str, float] = {}
    for key in targets:
        if key not in layers and not any(_matches(n, key) for n in layers):
            shown = ", ".join(list(layers)[:5]) + (", ..." if len(layers) > 5 else "")
            raise ValueError(f"prune.targets entry {key!r} matches none of the pruned layers ({shown}); "
                             f"check the name or prune.layers")
    for n in layers:
        if n in targets:
            out[n] = float(targets[n])
        else:
            out[n] = next((float(v) for k, v in targets.items() if _matches(n, k)), float(default))
    return out


def overall_sparsity(targets: Mapping[str, float], sizes: Mapping[str, int]) -> float:
    """Parameter-weighted sparsity of per-layer ``targets`` (``sizes``: weights per layer)."""
    total = sum(sizes[n] for n in targets)
    return sum(targets[n] * sizes[n] for n in targets) / total if total else 0.0


def speed_guided_targets(sizes: Mapping[str, int], crossovers: Mapping[str, float | None], target: float,
                         margin: float = 0.05, max_sparsity: float = 0.98, tol: float = 1e-9
                         ) -> tuple[dict[str, float], dict[str, str]]:
    """Per-layer targets so that no pruned layer is slower than dense, at the overall sparsity ``target``.

    Park et al. (2017) prune each layer towards the sparsity where its sparse kernel pays. Rule, per layer with
    ``c`` = its predicted crossover (the sparsity above which the best sparse kernel beats dense; ``None``: never):

    * ``c + margin > max_sparsity`` (or ``None``): left dense (0): pruning it cannot make it faster in range;
    * otherwise pruned to ``s = min(max_sparsity, max(u, c + margin))`` with one level ``u`` shared by all pruned
      layers, found by bisection so that the parameter-weighted sparsity equals ``target`` (the same parameter
      budget as uniform pruning): layers whose crossover is above ``target`` are pushed past it, the rest meet at
      ``u``. When even ``u = max_sparsity`` cannot reach ``target`` the result is the most that can be pruned; when
      the pushed layers alone exceed it, ``u = 0`` (both are said in the reasons).

    Args:
        sizes: ``{fqn: weights}``; crossovers: ``{fqn: sparsity or None}`` (same keys).
        target: overall sparsity in ``[0, 1)``; margin: how far past its crossover a layer must be;
        max_sparsity: no layer above this.

    Returns:
        ``({fqn: target sparsity}, {fqn: reason})``.
    """
    _check_value("target", target)
    if set(sizes) != set(crossovers):
        raise ValueError("sizes and crossovers must name the same layers")
    pruned = {n for n, c in crossovers.items() if c is not None and c + margin <= max_sparsity}

    def assign(u: float) -> dict[str, float]:
        return {n: (min(max_sparsity, max(u, crossovers[n] + margin)) if n in pruned else 0.0) for n in sizes}

    lo, hi = 0.0, max_sparsity
    if overall_sparsity(assign(hi), sizes) < target - tol:
        u, note = hi, f"budget not reachable: every pruned layer at {max_sparsity}"
    elif overall_sparsity(assign(lo), sizes) > target + tol:
        u, note = lo, "the pushed layers alone exceed the budget"
    else:
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if overall_sparsity(assign(mid), sizes) < target:
                lo = mid
            else:
                hi = mid
        u, note = hi, ""
    out = assign(u)
    reasons = {}
    for n in sizes:
        c = crossovers[n]
        if n not in pruned:
            reasons[n] = "dense: " + ("no sparse kernel ever beats dense" if c is None
                                      else f"crossover {c:.3f} + margin above {max_sparsity}")
        elif c + margin > u:
            reasons[n] = f"pushed past crossover {c:.3f} (+{margin})"
        else:
            reasons[n] = f"shared level (crossover {c:.3f})"
        if note:
            reasons[n] += f"; {note}"
    return out, reasons
