"""``check_plan(plan, model, source)``: a reused ``plan.json`` fits this model before anything is measured.

A plan made for another model (another VGG variant, another width) names layers that are absent, are not
Linear/Conv2d here (``features.2`` is a ReLU in one VGG and a Conv2d in another), have another shape, or fuse an
activation module that is not there. Each is one ``ValueError`` naming the plan file and the layer, raised before
the dense model is timed (a plan used to fail deep inside with ``AttributeError: 'ReLU' object has no attribute
'weight'``).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from spruce.deploy.fusion import activation_name
from spruce.deploy.plan import DENSE


def _model_shape(layer: nn.Module) -> list[int]:
    """The GEMM view ``[M, K]`` the planner records as ``shape``."""
    if isinstance(layer, nn.Linear):
        return [layer.out_features, layer.in_features]
    return [layer.out_channels, layer.weight[0].numel()]


def check_plan(plan: Any, model: nn.Module, source: str = "plan") -> None:
    """ValueError (one line) unless every layer of ``plan`` is a Linear/Conv2d of ``model`` with the recorded shape,
    names a registered kernel, and fuses (if it does) an activation module of the recorded kind."""
    from spruce.kernels import get as get_kernel
    mods = dict(model.named_modules())
    for fqn, e in plan.layers.items():
        where = f"plan={source!r} layer {fqn!r}"
        if fqn not in mods:
            raise ValueError(f"{where} is not in this model (was the plan made for another model?)")
        layer = mods[fqn]
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise ValueError(f"{where} is a {type(layer).__name__} in this model, not a Linear or Conv2d (a plan "
                             f"for another model?)")
        shape = e.get("shape")
        if shape is not None and (not isinstance(shape, list) or list(shape) != _model_shape(layer)):
            raise ValueError(f"{where} has shape {shape!r}, this model's layer is {_model_shape(layer)} (a plan for "
                             f"another model?)")
        kernel = e.get("kernel")
        if not isinstance(kernel, str):
            raise ValueError(f"{where}: 'kernel' must be a kernel name, got {kernel!r}")
        if kernel != DENSE:
            get_kernel(kernel)  # ValueError naming the registered kernels
        fusion = e.get("fusion")
        if fusion is None:
            continue
        if not isinstance(fusion, dict) or not isinstance(fusion.get("module"), str):
            raise ValueError(f"{where}: 'fusion' must be {{activation, module}}, got {fusion!r}")
        act = mods.get(fusion["module"])
        if act is None or activation_name(act) != fusion.get("activation"):
            raise ValueError(f"{where} fuses {fusion.get('activation')!r} module {fusion['module']!r}, which this "
                             f"model does not have")
