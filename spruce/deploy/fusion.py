"""Which Linear/Conv2d layers can take the activation that follows them into the kernel's epilogue.

Every kernel computes ``act(W @ X + b)`` in one call (``activation`` ``"relu"`` or ``"gelu"``, exact erf GELU), so
a pruned layer followed by its activation needs no second pass over the output. A pair is fused only where the
module tree proves that the activation is the sole consumer of the layer's output:

* inside an ``nn.Sequential``, a Linear/Conv2d immediately followed by an activation module (VGG's
  ``features`` Conv2d -> ReLU and ``classifier`` Linear -> ReLU);
* the BERT-family intermediate block (``BertIntermediate`` and its copies in RoBERTa, MiniLM, ...): a module
  with a Linear ``dense`` and an activation ``intermediate_act_fn`` whose forward is ``act(dense(x))``.

With an example input, each structural candidate is also confirmed on a forward pass (the activation must
receive exactly the tensor the layer returned, as the next hooked call), so a subclass that rewires ``forward``
is never fused. Deploying a fusion (``apply_fusion``) gives the sparse module the activation and replaces the
activation module by ``nn.Identity``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spruce.deploy.compare import run_hooked

#: parent attribute pairs ``(layer, activation)`` of blocks whose forward is ``activation(layer(x))``
BLOCK_PATTERNS = (("dense", "intermediate_act_fn"),)


def activation_name(module: object) -> str | None:
    """The kernel epilogue (``"relu"``/``"gelu"``) equal to ``module``, or None when it is no such activation.

    ``nn.ReLU``; ``nn.GELU(approximate="none")``; transformers' ``GELUActivation`` (exact erf GELU, both its
    C and its Python form). Tanh-approximated GELUs are not the kernels' GELU and are left alone."""
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.GELU):
        return "gelu" if module.approximate == "none" else None
    if type(module).__name__ == "GELUActivation" and isinstance(module, nn.Module):
        act = getattr(module, "act", None)
        if act is F.gelu or getattr(act, "__name__", "") == "_gelu_python":
            return "gelu"
    return None


def _structural(model: nn.Module) -> dict[str, dict[str, str]]:
    """``{layer fqn: {"activation", "module"}}`` from the module tree alone."""
    out: dict[str, dict[str, str]] = {}
    for pname, parent in model.named_modules():
        prefix = f"{pname}." if pname else ""
        if isinstance(parent, nn.Sequential):
            kids = [(k, v) for k, v in parent._modules.items() if v is not None]  # shared modules kept
            for (lname, layer), (aname, act) in zip(kids, kids[1:]):
                a = activation_name(act)
                if a and isinstance(layer, (nn.Linear, nn.Conv2d)):
                    out[prefix + lname] = {"activation": a, "module": prefix + aname}
            continue
        for lattr, aattr in BLOCK_PATTERNS:
            layer, act = getattr(parent, lattr, None), getattr(parent, aattr, None)
            a = activation_name(act)
            if a and isinstance(layer, nn.Linear) and isinstance(act, nn.Module):
                out[prefix + lattr] = {"activation": a, "module": prefix + aattr}
    return out


def _confirmed(model: nn.Module, example_input: object, found: dict[str, dict[str, str]]) -> set[str]:
    """Layers of ``found`` whose activation received exactly the layer's output as the next hooked call."""
    mods = {n: model.get_submodule(n) for n in list(found) + [v["module"] for v in found.values()]}
    last: list[tuple[str, int] | None] = [None]  # (layer fqn, id of its output) of the last hooked layer call
    ok: set[str] = set()
    bad: set[str] = set()
    act_of = {v["module"]: k for k, v in found.items()}
    handles = []
    for lname in found:
        def after(_m: nn.Module, _a: tuple, out: object, n: str = lname) -> None:
            last[0] = (n, id(out))
        handles.append(mods[lname].register_forward_hook(after))
    for aname, lname in act_of.items():
        def before(_m: nn.Module, args: tuple, n: str = lname) -> None:
            prev = last[0]
            if prev is not None and prev[0] == n and args and id(args[0]) == prev[1]:
                ok.add(n)
            else:
                bad.add(n)
            last[0] = None
        handles.append(mods[aname].register_forward_pre_hook(before))
    run_hooked(model, example_input, handles)
    return ok - bad


def find_fusions(model: nn.Module, layers: Sequence[str] | None = None,
                 example_input: object = None) -> dict[str, dict[str, str]]:
    """``{layer fqn: {"activation": "relu"|"gelu", "module": activation fqn}}`` for the Linear/Conv2d -> activation
    pairs that can run as one kernel call (restricted to ``layers`` when given).

    An activation module shared by two layers is never fused (replacing it would change both). With
    ``example_input`` every pair is confirmed on one forward pass (see the module docstring)."""
    found = _structural(model)
    if layers is not None:
        keep = set(layers)
        found = {k: v for k, v in found.items() if k in keep}
    acts = [v["module"] for v in found.values()]
    found = {k: v for k, v in found.items() if acts.count(v["module"]) == 1}
    ids = [id(model.get_submodule(v["module"])) for v in found.values()]
    found = {k: v for k, v in found.items() if ids.count(id(model.get_submodule(v["module"]))) == 1}
    if example_input is not None and found:
        ok = _confirmed(model, example_input, found)
        found = {k: v for k, v in found.items() if k in ok}
    return found


def apply_fusion(model: nn.Module, layer: str, fusion: dict[str, Any]) -> None:
    """Replace the activation module of a fused ``layer`` by ``nn.Identity`` (the layer's kernel applies it).

    ValueError when the module is missing or not the activation the plan recorded (a plan for another model)."""
    name = fusion.get("module")
    mods = dict(model.named_modules())
    if name not in mods:
        raise ValueError(f"plan layer {layer!r}: fused activation module {name!r} is not in the model")
    got = activation_name(mods[name])
    if got != fusion.get("activation"):
        raise ValueError(f"plan layer {layer!r}: module {name!r} is a {type(mods[name]).__name__}, not the "
                         f"{fusion.get('activation')!r} activation the plan fuses")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())
