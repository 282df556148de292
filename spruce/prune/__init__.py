"""Pruning: schedules, masks, layer selection, magnitude/movement pruners, one-shot pruning, Lightning callback.

``import spruce.prune`` does not import Lightning (6-14 s); ``spruce.prune.PruningCallback`` imports it on
first access.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spruce.prune.layers import default_prunable, infer_family, prunable_layers
from spruce.prune.masks import (MASK_NAME, apply_mask_, apply_masks_, attach_mask, has_mask, mask_after_step,
                                masked_modules, remove_mask, remove_masks)
from spruce.prune.oneshot import magnitude_prune_
from spruce.prune.pruner import MagnitudePruner
from spruce.prune.schedule import agp_sparsity, iterative_sparsity, oneshot_sparsity

if TYPE_CHECKING:
    from spruce.prune.callback import PruningCallback

__all__ = [
    "agp_sparsity", "oneshot_sparsity", "iterative_sparsity",
    "MASK_NAME", "attach_mask", "apply_mask_", "apply_masks_", "remove_mask", "remove_masks", "has_mask",
    "masked_modules", "mask_after_step",
    "prunable_layers", "default_prunable", "infer_family",
    "MagnitudePruner", "magnitude_prune_", "PruningCallback",
]


def __getattr__(name: str) -> Any:
    if name == "PruningCallback":
        from spruce.prune.callback import PruningCallback
        return PruningCallback
    raise AttributeError(f"module 'spruce.prune' has no attribute {name!r}")
