"""``MagnitudePruner``: the sparsifier life cycle ``prepare -> step(sparsity)* -> squash``.

* ``prepare(model, layer_names)`` attaches a ``weight_mask`` to each named ``nn.Linear``/``nn.Conv2d``.
* ``step(sparsity)`` recomputes the masks under ``no_grad`` and zeroes the pruned weights:

  - ``scope="layerwise"``: every layer gets exactly ``round(sparsity * numel)`` pruned weights;
  - ``scope="global"``: one threshold over all layers, exactly ``round(sparsity * total)`` pruned weights.

  Ties are broken by position (see ``select.py``), so the masks are deterministic. Masks are monotone: already
  pruned weights get score ``-inf`` and are always among the pruned; a target below the current sparsity leaves
  the masks unchanged (a pruned weight never comes back).
* ``squash()`` drops the masks, leaving plain weights with exact zeros.

``round`` is Python's (half to even); ``sparsity()`` counts the zeros of the masked weights.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from spruce.prune.masks import MASK_NAME, MASKABLE, apply_mask_, attach_mask, remove_mask
from spruce.prune.scores import SCORES, MovementScores, magnitude_score
from spruce.prune.select import lowest_k, lowest_k_global

SCOPES = ("layerwise", "global")
STATE_VERSION = 1


def check_sparsity(sparsity: float) -> None:
    """``ValueError`` unless ``sparsity`` is a number in ``[0, 1)``."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity!r} is not allowed; it must be in [0, 1)")


def resolve_layers(model: nn.Module, layer_names: Sequence[str]) -> dict[str, nn.Module]:
    """``{fqn: module}`` for exact fqn; ``ValueError`` naming a missing or non-Linear/Conv2d layer."""
    if isinstance(layer_names, str) or not layer_names:
        raise ValueError(f"layer_names={layer_names!r} is not allowed; give a non-empty list of layer fqn")
    modules = dict(model.named_modules())
    out: dict[str, nn.Module] = {}
    for name in layer_names:
        m = modules.get(name)
        if m is None:
            raise ValueError(f"layer {name!r} is not in {type(model).__name__}; "
                             f"use spruce.prune.prunable_layers(model) to list the candidates")
        if not isinstance(m, MASKABLE):
            raise ValueError(f"layer {name!r} is a {type(m).__name__}; allowed: nn.Linear, nn.Conv2d")
        out[name] = m
    return out


class MagnitudePruner:
    """Unstructured pruning by magnitude (``|w|``) or movement scores, layer-wise or global.

    Args:
        scope: ``"layerwise"`` (every layer reaches the target) or ``"global"`` (one threshold for all layers).
        score: ``"magnitude"`` or ``"movement"`` (call :meth:`accumulate` after every backward for movement).
    """

    def __init__(self, scope: str = "layerwise", score: str = "magnitude") -> None:
        if scope not in SCOPES:
            raise ValueError(f"scope={scope!r} is not allowed; allowed: {', '.join(SCOPES)}")
        if score not in SCORES:
            raise ValueError(f"score={score!r} is not allowed; allowed: {', '.join(SCORES)}")
        self.scope = scope
        self.score = score
        self.layers: list[str] = []
        self.modules: dict[str, nn.Module] = {}
        self.target = 0.0
        self.movement = MovementScores()

    # ---- life cycle -----------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, layer_names: Sequence[str]) -> None:
        """Attach a mask to each layer (``fqn`` relative to ``model``); existing masks are kept."""
        self.modules = resolve_layers(model, layer_names)
        self.layers = list(self.modules)
        for m in self.modules.values():
            attach_mask(m)

    def _require_prepared(self) -> None:
        if not self.modules:
            raise ValueError("the pruner has no layers; call prepare(model, layer_names) first")

    def _scores(self, name: str, m: nn.Module) -> torch.Tensor:
        w = m.weight.detach()
        s = magnitude_score(w).float() if self.score == "magnitude" else self.movement.score(name, w)
        if torch.isnan(s).any():
            raise ValueError(f"layer {name!r} has NaN weights or scores; cannot rank them for pruning")
        return s.masked_fill(~getattr(m, MASK_NAME), float("-inf"))

    @torch.no_grad()
    def step(self, sparsity: float) -> dict[str, float]:
        """Update the masks to reach ``sparsity`` (in ``[0, 1)``) and zero the pruned weights.

        Returns:
            ``sparsity()`` after the update: ``{fqn: fraction of zeros, ..., "overall": float}``.
        """
        check_sparsity(sparsity)
        self._require_prepared()
        masks = {n: getattr(m, MASK_NAME) for n, m in self.modules.items()}
        if self.scope == "layerwise":
            for name, m in self.modules.items():
                mask = masks[name]
                k = round(sparsity * mask.numel())
                if k > int((~mask).sum()):
                    mask.copy_(~lowest_k(self._scores(name, m), k))
        else:
            total = sum(mask.numel() for mask in masks.values())
            k = round(sparsity * total)
            if k > sum(int((~mask).sum()) for mask in masks.values()):
                pruned = lowest_k_global([self._scores(n, m) for n, m in self.modules.items()], k)
                for mask, p in zip(masks.values(), pruned):
                    mask.copy_(~p.to(mask.device))
        self.apply_masks()
        self.target = float(sparsity)
        return self.sparsity()

    def apply_masks(self) -> None:
        """Zero every pruned weight (after an optimizer step, after loading weights)."""
        for m in self.modules.values():
            apply_mask_(m)

    def accumulate(self) -> None:
        """Movement scores: add ``-w * grad`` (call after backward, before the optimizer step); no-op otherwise."""
        if self.score == "movement":
            self.movement.accumulate(self.modules)

    def hook_optimizer(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Re-apply the masks after every ``optimizer.step()`` (momentum/Adam/weight decay cannot revive zeros)."""
        return optimizer.register_step_post_hook(lambda opt, args, kwargs: self.apply_masks())

    def squash(self) -> list[str]:
        """Drop the masks (weights keep their exact zeros); returns the squashed layer names. Ends the cycle."""
        for m in self.modules.values():
            remove_mask(m)
        squashed, self.modules = list(self.modules), {}
        return squashed

    # ---- inspection -----------------------------------------------------------------------------------
    def masks(self) -> dict[str, torch.Tensor]:
        """``{fqn: copy of the bool mask}`` (``False`` = pruned)."""
        return {n: getattr(m, MASK_NAME).detach().clone() for n, m in self.modules.items()}

    def sparsity(self) -> dict[str, float]:
        """Fraction of exact zeros in each masked weight, and ``"overall"`` over all of them together."""
        self._require_prepared()
        out: dict[str, float] = {}
        zeros = total = 0
        for name, m in self.modules.items():
            z = int((m.weight.detach() == 0).sum())
            out[name] = z / m.weight.numel()
            zeros += z
            total += m.weight.numel()
        out["overall"] = zeros / total
        return out

    # ---- checkpointing --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain state (``torch.load(weights_only=True)``-safe): layers, scope, score, last target, movement
        scores. The masks themselves live in the model's state dict as ``<fqn>.weight_mask``."""
        state: dict[str, Any] = {"version": STATE_VERSION, "layers": list(self.layers), "scope": self.scope,
                                 "score": self.score, "target": float(self.target)}
        if self.score == "movement":
            state["movement"] = self.movement.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`; the scope/score/layers must match this pruner's."""
        for key in ("scope", "score"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"checkpoint pruner {key}={state.get(key)!r} differs from this run's "
                                 f"{key}={getattr(self, key)!r}; resume with the same prune settings")
        layers = list(state.get("layers", []))
        if self.layers and layers != self.layers:
            missing = sorted(set(layers) ^ set(self.layers))[:3]
            raise ValueError(f"checkpoint prunes different layers than this run (e.g. {missing}); "
                             f"resume with the same prune.layers")
        if not self.layers:
            self.layers = layers
        self.target = float(state.get("target", 0.0))
        if "movement" in state:
            self.movement.load_state_dict(state["movement"])
