"""One-shot magnitude pruning in place, without masks (for deploy/bench on models without a checkpoint)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from spruce.prune.layers import default_prunable, infer_family, prunable_layers
from spruce.prune.pruner import check_sparsity, resolve_layers
from spruce.prune.scores import magnitude_score
from spruce.prune.select import lowest_k, lowest_k_global

SCOPES = ("layerwise", "global")


def magnitude_prune_(model: nn.Module, sparsity: float, scope: str = "layerwise",
                     layers: Sequence[str] | None = None, family: str | None = None) -> dict[str, float]:
    """Zero the smallest-magnitude weights of ``model`` in place; no masks are left behind.

    Args:
        model: the model; weights are modified in place.
        sparsity: target fraction of zeros in ``[0, 1)``. ``"layerwise"``: exactly ``round(sparsity * numel)``
            zeros per layer; ``"global"``: exactly ``round(sparsity * total)`` over all layers (one threshold).
            Weights that are already zero count towards the target (they have the lowest magnitude).
        scope: ``"layerwise"`` or ``"global"``.
        layers: fqn or patterns (see :func:`prunable_layers`) of the layers to prune. ``None``: the family's
            :func:`default_prunable` layers, with ``family`` given or inferred (BERT-style encoder, torchvision
            VGG); ``ValueError`` when it cannot be inferred (pass ``layers`` or ``family``).
        family: ``"vgg"`` or ``"bert"``, used only when ``layers`` is ``None``.

    Returns:
        ``{fqn: achieved fraction of zeros, ..., "overall": fraction over the pruned layers}``.
    """
    check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r} is not allowed; allowed: {', '.join(SCOPES)}")
    if layers is None:
        family = family or infer_family(model)
        if family is None:
            raise ValueError(f"cannot infer the model family of {type(model).__name__}; "
                             f"pass layers=[...] or family='vgg'|'bert'")
        names = default_prunable(model, family)
    else:
        names = prunable_layers(model, include=layers)
    modules = resolve_layers(model, names)
    with torch.no_grad():
        weights = {n: m.weight for n, m in modules.items()}
        for n, w in weights.items():
            if torch.isnan(w).any():
                raise ValueError(f"layer {n!r} has NaN weights; cannot rank them for pruning")
        if scope == "layerwise":
            for w in weights.values():
                w.masked_fill_(lowest_k(magnitude_score(w).float(), round(sparsity * w.numel())), 0)
        else:
            total = sum(w.numel() for w in weights.values())
            pruned = lowest_k_global([magnitude_score(w) for w in weights.values()], round(sparsity * total))
            for w, p in zip(weights.values(), pruned):
                w.masked_fill_(p.to(w.device), 0)
    out: dict[str, float] = {}
    zeros = total = 0
    for n, w in weights.items():
        z = int((w == 0).sum())
        out[n] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    out["overall"] = zeros / total
    return out
