"""Pruning masks as a ``weight_mask`` bool buffer on ``nn.Linear`` / ``nn.Conv2d`` (see docs/CONTRACTS.md).

A masked layer keeps its plain ``weight`` Parameter (so optimizers, state dicts and export see ordinary
weights) plus a buffer ``weight_mask`` (same shape, ``torch.bool``; ``False`` = pruned). Two mechanisms keep the
pruned weights at exactly zero:

* a gradient hook on ``weight`` zeroes the gradient where the mask is ``False`` (so plain SGD cannot move them);
  movement pruning defers this to its own step (``DEFER_GRAD_MASK``): it reads the pruned entries' gradient first;
* :func:`mask_after_step` re-applies the masks after every ``optimizer.step()``, because momentum buffers,
  Adam moments from before the pruning step and weight decay can still move a weight whose gradient is zero.

The buffer is in the module's state dict, so a checkpoint holds ``<fqn>.weight`` (exact zeros) and
``<fqn>.weight_mask``; attach the masks *before* a strict ``load_state_dict`` so the buffers are restored.
"""
from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

MASK_NAME = "weight_mask"
MASKABLE = (nn.Linear, nn.Conv2d)
_HOOK_ATTR = "_spruce_mask_grad_hook"  # on the weight Parameter: the handle of its gradient hook
#: a module attribute: when True the gradient hook passes the whole gradient through, and whoever set it masks the
#: gradient itself before the optimizer step (movement scores read the gradient of the pruned entries first;
#: ``MagnitudePruner.accumulate``); the post-step re-masking keeps the pruned weights at zero either way
DEFER_GRAD_MASK = "_spruce_defer_grad_mask"


class _MaskGrad:
    """Gradient hook ``grad -> grad * mask`` that reads the module's *current* mask (it may be replaced by
    ``module.to(...)`` or a pruning step) and holds the module only weakly."""

    def __init__(self, module: nn.Module) -> None:
        self._module = weakref.ref(module)

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        module = self._module()
        mask = None if module is None else getattr(module, MASK_NAME, None)
        if mask is None or getattr(module, DEFER_GRAD_MASK, False):
            return grad
        return grad.masked_fill(~mask, 0)


def _check_maskable(module: nn.Module) -> None:
    if not isinstance(module, MASKABLE):
        raise ValueError(f"cannot mask a {type(module).__name__}; allowed: nn.Linear, nn.Conv2d")


def has_mask(module: nn.Module) -> bool:
    """Whether ``module`` carries a ``weight_mask`` buffer."""
    return isinstance(getattr(module, MASK_NAME, None), torch.Tensor)


def attach_mask(module: nn.Module) -> torch.Tensor:
    """Give ``module`` an all-``True`` ``weight_mask`` buffer and a gradient-masking hook; idempotent.

    An existing mask is kept (returned unchanged); the gradient hook is (re)installed when the weight Parameter
    lacks it (e.g. after ``copy.deepcopy``, which copies buffers but not tensor hooks).

    Returns:
        The bool mask, same shape as ``module.weight``.
    """
    _check_maskable(module)
    if not has_mask(module):
        module.register_buffer(MASK_NAME, torch.ones_like(module.weight, dtype=torch.bool))
    weight = module.weight
    if getattr(weight, _HOOK_ATTR, None) is None and weight.requires_grad:
        setattr(weight, _HOOK_ATTR, weight.register_hook(_MaskGrad(module)))
    return getattr(module, MASK_NAME)


def apply_mask_(module: nn.Module) -> None:
    """Zero ``module.weight`` where the mask is ``False`` (in place, no autograd).

    Multiplies by the mask (4x faster than ``masked_fill_`` on CPU with a random mask): pruned entries become
    ``+0.0`` or ``-0.0``, both ``== 0``; a pruned entry that somehow became inf/NaN would stay NaN (the pruner
    refuses NaN weights at its next step).
    """
    mask = getattr(module, MASK_NAME, None)
    if mask is None:
        raise ValueError(f"{type(module).__name__} has no {MASK_NAME!r} buffer; call attach_mask(module) first")
    if mask.shape != module.weight.shape:
        raise ValueError(f"{MASK_NAME} shape {tuple(mask.shape)} != weight shape {tuple(module.weight.shape)}")
    with torch.no_grad():
        module.weight.mul_(mask)


def remove_mask(module: nn.Module) -> nn.Module:
    """Squash: zero the pruned weights, drop the ``weight_mask`` buffer and the gradient hook.

    The weights keep their exact zeros; the layer is a plain ``nn.Linear``/``nn.Conv2d`` again. No-op without a
    mask. Returns ``module``.
    """
    if has_mask(module):
        apply_mask_(module)
        delattr(module, MASK_NAME)
    handle = getattr(module.weight, _HOOK_ATTR, None)
    if handle is not None:
        handle.remove()
        delattr(module.weight, _HOOK_ATTR)
    return module


def masked_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{fqn: module}`` of every submodule of ``model`` (itself included, as ``""``) that carries a mask."""
    return {name: m for name, m in model.named_modules() if has_mask(m)}


def apply_masks_(modules: Iterable[nn.Module]) -> None:
    """:func:`apply_mask_` on every module (those without a mask are skipped)."""
    for m in modules:
        if has_mask(m):
            apply_mask_(m)


def remove_masks(model: nn.Module) -> nn.Module:
    """Squash every masked layer of ``model`` (see :func:`remove_mask`). Returns ``model``."""
    for m in masked_modules(model).values():
        remove_mask(m)
    return model


def mask_after_step(optimizer: torch.optim.Optimizer, model: nn.Module) -> RemovableHandle:
    """Re-apply every mask of ``model`` after each ``optimizer.step()``; returns the hook's handle.

    This is what makes pruned weights stay exactly zero under momentum SGD, Adam(W) and weight decay. Masks
    attached later are picked up too (the model is scanned at each step; a few microseconds per layer).
    """
    model_ref = weakref.ref(model)

    def _post_step(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        m = model_ref()
        if m is not None:
            apply_masks_(masked_modules(m).values())

    return optimizer.register_step_post_hook(_post_step)
