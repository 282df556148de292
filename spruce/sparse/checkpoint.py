"""Read the Linear/Conv2d weights of a Spruce checkpoint (docs/CONTRACTS.md) as matrices, without the model.

A checkpoint is loaded with ``torch.load(..., weights_only=True)``; layers come from ``ckpt["spruce"]["layers"]``
(``{fqn: {kind, shape, pruned}}``) and weights from ``ckpt["state_dict"]["model.<fqn>.weight"]`` plus the optional
bool ``"model.<fqn>.weight_mask"``. Without ``spruce`` metadata (a foreign Lightning checkpoint) the layers are
inferred: 4-D weights are convs, 2-D weights whose name does not mention an embedding are Linears.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

KINDS = ("linear", "conv2d")
#: ``ckpt["spruce"]["version"]`` this reader understands (= spruce.models.checkpoint.CHECKPOINT_VERSION; sparse
#: imports models only for layer shapes, so the number is repeated here and a test keeps the two equal)
SPRUCE_VERSION = 1


@dataclass
class RealLayer:
    """One prunable layer: ``weight`` in its original shape, ``mask`` (bool, same shape) or None."""

    name: str
    kind: str
    weight: torch.Tensor
    mask: torch.Tensor | None
    pruned: bool

    @property
    def matrix(self) -> torch.Tensor:
        """The GEMM view ``[out, in]`` (Linear) or im2col ``[C_out, C_in*kh*kw]`` (Conv2d)."""
        return self.weight.reshape(self.weight.shape[0], -1)

    @property
    def matrix_mask(self) -> torch.Tensor | None:
        return None if self.mask is None else self.mask.reshape(self.mask.shape[0], -1)


def load_checkpoint_file(path: str | Path) -> dict:
    """``torch.load`` a checkpoint safely; ValueError with one line for missing/corrupt/foreign files."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a directory; give the path of a .ckpt file")
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors, weights_only refusals: all mean "not a usable checkpoint"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"checkpoint {str(path)!r} cannot be loaded: {first[:200]}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"checkpoint {str(path)!r} has no 'state_dict' dict (not a Lightning/Spruce checkpoint)")
    meta = ckpt.get("spruce")
    if meta is not None and (not isinstance(meta, dict) or meta.get("version") != SPRUCE_VERSION):
        version = meta.get("version") if isinstance(meta, dict) else None
        raise ValueError(f"checkpoint {str(path)!r} has Spruce format version {version!r}; this Spruce reads "
                         f"version {SPRUCE_VERSION}")
    for key, t in ckpt["state_dict"].items():  # the same refusal as spruce.models.checkpoint.check_finite
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"checkpoint {str(path)!r}: {key} holds {int((~torch.isfinite(t)).sum())} NaN/Inf "
                             f"value(s) of {t.numel()}; refusing a diverged or corrupt model")
    return ckpt


def _infer_layers(state: dict) -> dict[str, dict]:
    layers = {}
    for key, t in state.items():
        if not key.startswith("model.") or not key.endswith(".weight") or not isinstance(t, torch.Tensor):
            continue
        fqn = key[len("model."):-len(".weight")]
        if t.dim() == 4:
            layers[fqn] = {"kind": "conv2d", "shape": list(t.shape), "pruned": f"model.{fqn}.weight_mask" in state}
        elif t.dim() == 2 and "embed" not in fqn.lower():
            layers[fqn] = {"kind": "linear", "shape": list(t.shape), "pruned": f"model.{fqn}.weight_mask" in state}
    return layers


def checkpoint_layers(ckpt: dict, source: str = "checkpoint") -> list[RealLayer]:
    """Every Linear/Conv2d of a loaded checkpoint as ``RealLayer`` (in the metadata's order).

    ValueError when the checkpoint lists no Linear/Conv2d layer, or a listed weight is missing or has the
    wrong shape/dtype.
    """
    state = ckpt["state_dict"]
    meta = ckpt.get("spruce")
    layers = meta.get("layers") if isinstance(meta, dict) else None
    if not isinstance(layers, dict):
        layers = _infer_layers(state)
    out = []
    for fqn, info in layers.items():
        kind = info.get("kind") if isinstance(info, dict) else None
        if kind not in KINDS:
            continue
        w = state.get(f"model.{fqn}.weight")
        if not isinstance(w, torch.Tensor):
            raise ValueError(f"{source}: layer {fqn!r} is listed but 'model.{fqn}.weight' is missing")
        if w.dim() != (2 if kind == "linear" else 4):
            raise ValueError(f"{source}: layer {fqn!r} ({kind}) has a weight of shape {tuple(w.shape)}")
        if not w.is_floating_point():
            raise ValueError(f"{source}: layer {fqn!r} weight has dtype {w.dtype}, expected a float type")
        mask = state.get(f"model.{fqn}.weight_mask")
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != w.shape):
            raise ValueError(f"{source}: layer {fqn!r} weight_mask does not match the weight shape {tuple(w.shape)}")
        pruned = bool(info.get("pruned", mask is not None)) or mask is not None
        out.append(RealLayer(fqn, kind, w.detach().clone(), None if mask is None else mask.to(torch.bool), pruned))
    if not out:
        raise ValueError(f"{source}: no prunable layers (no Linear/Conv2d weights found)")
    return out
