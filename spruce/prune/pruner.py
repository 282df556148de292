"""``MagnitudePruner``: the sparsifier life cycle ``prepare -> step(sparsity)* -> squash``.

* ``prepare(model, layer_names)`` attaches a ``weight_mask`` to each named ``nn.Linear``/``nn.Conv2d``.
* ``step(sparsity)`` recomputes the masks under ``no_grad`` and zeroes the pruned weights:

  - ``scope="layerwise"``: every layer gets exactly ``round(sparsity * numel)`` pruned weights;
  - ``scope="global"``: one threshold over all layers, exactly ``round(sparsity * total)`` pruned weights.

  Ties are broken by position (see ``select.py``), so the masks are deterministic. Magnitude masks are monotone:
  already pruned weights get score ``-inf`` and are always among the pruned; a target below the current sparsity
  leaves the masks unchanged (a pruned weight never comes back). Movement masks are not (Sanh et al. 2020): every
  step takes the top-k of all scores, and a revived weight gets back the value it had when pruned
  (``scores.RevivableScores``).
* ``squash()`` drops the masks, leaving plain weights with exact zeros.

``round`` is Python's (half to even); ``sparsity()`` counts the zeros of the masked weights.

Structure (``structure.py``): with ``Structure(block=...)`` or ``Structure(n_m=...)`` every layer's mask keeps
that structure (layer-wise scope only). Per-layer targets: ``step({fqn: sparsity, ...})`` gives each layer its
own target (layer-wise scope only; a layer left out keeps its mask).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from spruce.prune.masks import DEFER_GRAD_MASK, MASK_NAME, MASKABLE, apply_mask_, attach_mask, remove_mask
from spruce.prune.scores import SCORES, MovementScores, SoftMovementScores, magnitude_score
from spruce.prune.select import lowest_k_global
from spruce.prune.structure import Structure, structured_lowest

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
    """Pruning by magnitude (``|w|``), hard movement or soft movement scores, layer-wise or global.

    Args:
        scope: ``"layerwise"`` (every layer reaches the target) or ``"global"`` (one threshold for all layers).
        score: ``"magnitude"``, ``"movement"`` (hard: ``-sum w * grad``) or ``"soft_movement"`` (learned scores,
            straight-through top-k + regulariser); call :meth:`accumulate` after every backward for the movement
            scores.
        structure: mask granularity (``None``: unstructured); block / N:M need ``scope="layerwise"``.
        score_lr, score_reg: Adam step size and regulariser ``lambda`` of ``"soft_movement"``.
    """

    def __init__(self, scope: str = "layerwise", score: str = "magnitude", structure: Structure | None = None,
                 score_lr: float = 0.01, score_reg: float = 0.0) -> None:
        if scope not in SCOPES:
            raise ValueError(f"scope={scope!r} is not allowed; allowed: {', '.join(SCOPES)}")
        if score not in SCORES:
            raise ValueError(f"score={score!r} is not allowed; allowed: {', '.join(SCORES)}")
        self.structure = structure or Structure()
        if scope == "global" and not self.structure.unstructured:
            raise ValueError(f"prune.scope=global with a {self.structure.describe()} structure is not supported; "
                             f"use prune.scope=layerwise")
        self.scope = scope
        self.score = score
        self.layers: list[str] = []
        self.modules: dict[str, nn.Module] = {}
        self.target: float | dict[str, float] = 0.0
        self.movement: MovementScores | SoftMovementScores = (
            SoftMovementScores(score_lr, score_reg) if score == "soft_movement" else MovementScores())

    # ---- life cycle -----------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, layer_names: Sequence[str]) -> None:
        """Attach a mask to each layer (``fqn`` relative to ``model``); existing masks are kept."""
        self.modules = resolve_layers(model, layer_names)
        self.layers = list(self.modules)
        for m in self.modules.values():
            attach_mask(m)
            if self.revivable:  # accumulate() reads the pruned entries' gradient, then masks it itself
                setattr(m, DEFER_GRAD_MASK, True)

    def _require_prepared(self) -> None:
        if not self.modules:
            raise ValueError("the pruner has no layers; call prepare(model, layer_names) first")

    def _scores(self, name: str, m: nn.Module) -> torch.Tensor:
        w = m.weight.detach()
        s = magnitude_score(w).float() if self.score == "magnitude" else self.movement.score(name, w)
        if torch.isnan(s).any():
            raise ValueError(f"layer {name!r} has NaN weights or scores; cannot rank them for pruning")
        if self.revivable:
            return s  # every weight competes, pruned ones included
        return s.masked_fill(~getattr(m, MASK_NAME), float("-inf"))

    @property
    def revivable(self) -> bool:
        """Whether a pruned weight can come back (movement scores: straight-through, non-monotone masks)."""
        return self.score in ("movement", "soft_movement")

    def _set_mask(self, name: str, m: nn.Module, mask: torch.Tensor, pruned: torch.Tensor) -> None:
        """Prune ``pruned`` (bool): movement masks become exactly ``~pruned`` (reviving weights), magnitude masks
        only lose entries."""
        if self.revivable:
            self.movement.set_mask(name, m, ~pruned.to(mask.device))
        else:
            mask.logical_and_(~pruned.to(mask.device))

    def _layer_targets(self, sparsity: float | Mapping[str, float]) -> dict[str, float]:
        if isinstance(sparsity, Mapping):
            if self.scope != "layerwise":
                raise ValueError("per-layer targets need scope='layerwise'")
            unknown = [n for n in sparsity if n not in self.modules]
            if unknown:
                raise ValueError(f"per-layer target for {unknown[0]!r}, which this pruner does not prune")
            out = {n: float(v) for n, v in sparsity.items()}
        else:
            out = {n: float(sparsity) for n in self.modules}
        for n, v in out.items():
            check_sparsity(v)
            self.structure.check_sparsity(v, f"layer {n!r}")
        return out

    @torch.no_grad()
    def step(self, sparsity: float | Mapping[str, float]) -> dict[str, float]:
        """Update the masks to reach ``sparsity`` (in ``[0, 1)``; or ``{fqn: sparsity}`` per layer) and zero the
        pruned weights.

        Returns:
            ``sparsity()`` after the update: ``{fqn: fraction of zeros, ..., "overall": float}``.
        """
        if not isinstance(sparsity, Mapping):
            check_sparsity(sparsity)
        self._require_prepared()
        targets = self._layer_targets(sparsity)
        masks = {n: getattr(m, MASK_NAME) for n, m in self.modules.items()}
        if self.scope == "layerwise":
            for name, target in targets.items():
                m, mask = self.modules[name], masks[name]
                if (not self.revivable and self.structure.unstructured
                        and round(target * mask.numel()) <= int((~mask).sum())):
                    continue  # monotone: nothing new to prune (skips the ranking)
                self._set_mask(name, m, mask, structured_lowest(self._scores(name, m), target, self.structure))
        else:
            total = sum(mask.numel() for mask in masks.values())
            k = round(float(sparsity) * total)
            if self.revivable or k > sum(int((~mask).sum()) for mask in masks.values()):
                pruned = lowest_k_global([self._scores(n, m) for n, m in self.modules.items()], k)
                for (name, m), mask, p in zip(self.modules.items(), masks.values(), pruned):
                    self._set_mask(name, m, mask, p)  # monotone: p holds every already-pruned weight (-inf)
        self.apply_masks()
        self.target = dict(sparsity) if isinstance(sparsity, Mapping) else float(sparsity)
        return self.sparsity()

    def apply_masks(self) -> None:
        """Zero every pruned weight (after an optimizer step, after loading weights)."""
        for m in self.modules.values():
            apply_mask_(m)

    def accumulate(self) -> None:
        """Movement scores: update them from the whole gradient, then zero the pruned entries' gradient (call after
        backward, before the optimizer step and any gradient clipping); no-op for magnitude."""
        if self.score in ("movement", "soft_movement"):
            self.movement.accumulate(self.modules)

    def hook_optimizer(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Re-apply the masks after every ``optimizer.step()`` (momentum/Adam/weight decay cannot revive zeros)."""
        return optimizer.register_step_post_hook(lambda opt, args, kwargs: self.apply_masks())

    def squash(self) -> list[str]:
        """Drop the masks (weights keep their exact zeros); returns the squashed layer names. Ends the cycle."""
        for m in self.modules.values():
            remove_mask(m)
            if hasattr(m, DEFER_GRAD_MASK):
                delattr(m, DEFER_GRAD_MASK)
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
        target = dict(self.target) if isinstance(self.target, Mapping) else float(self.target)
        state: dict[str, Any] = {"version": STATE_VERSION, "layers": list(self.layers), "scope": self.scope,
                                 "score": self.score, "target": target, "structure": self.structure.describe()}
        if self.score in ("movement", "soft_movement"):
            state["movement"] = self.movement.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`; the scope/score/layers must match this pruner's."""
        for key in ("scope", "score"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"checkpoint pruner {key}={state.get(key)!r} differs from this run's "
                                 f"{key}={getattr(self, key)!r}; resume with the same prune settings")
        saved = state.get("structure", "unstructured")  # checkpoints from before structures were unstructured
        if saved != self.structure.describe():
            raise ValueError(f"checkpoint masks are {saved}, this run asks for {self.structure.describe()}; "
                             f"resume with the same prune.block / prune.n_m")
        layers = list(state.get("layers", []))
        if self.layers and layers != self.layers:
            missing = sorted(set(layers) ^ set(self.layers))[:3]
            raise ValueError(f"checkpoint prunes different layers than this run (e.g. {missing}); "
                             f"resume with the same prune.layers")
        if not self.layers:
            self.layers = layers
        target = state.get("target", 0.0)
        self.target = {k: float(v) for k, v in target.items()} if isinstance(target, Mapping) else float(target)
        if "movement" in state:
            self.movement.load_state_dict(state["movement"])
