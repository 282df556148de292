"""Spruce checkpoints: safe loading and rebuilding a model (see docs/CONTRACTS.md, "Checkpoints").

A Spruce checkpoint is a Lightning ``.ckpt`` whose ``ckpt["spruce"]`` holds plain dicts (model config, data
meta, per-layer info, sparsity, metrics, version). It loads with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_VERSION = 1


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a Spruce checkpoint safely (``weights_only=True``, on the CPU).

    Raises ``ValueError`` with one line if the file is missing, unreadable/corrupt, or not a Spruce checkpoint.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"checkpoint {str(p)!r} does not exist; give the path of a .ckpt written by train.py")
    if not p.is_file():
        raise ValueError(f"checkpoint {str(p)!r} is not a file; give the path of a .ckpt written by train.py")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/zip error means "not a readable checkpoint"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"checkpoint {str(p)!r} cannot be read safely ({type(e).__name__}: {msg[:200]})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("spruce"), dict) or "state_dict" not in ckpt:
        raise ValueError(f"checkpoint {str(p)!r} is not a Spruce checkpoint (no 'spruce' metadata or state_dict); "
                         f"give a .ckpt written by train.py")
    version = ckpt["spruce"].get("version")
    if version != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {str(p)!r} has Spruce format version {version!r}; this Spruce reads "
                         f"version {CHECKPOINT_VERSION}")
    check_finite(ckpt["state_dict"], f"checkpoint {str(p)!r}")
    return ckpt


def check_finite(state_dict: Any, where: str) -> None:
    """ValueError naming the first floating-point tensor of ``state_dict`` that holds NaN or Inf: a model trained
    into NaN would export, deploy and resume "successfully" while every number it produces is meaningless."""
    if not isinstance(state_dict, dict):
        raise ValueError(f"{where}: 'state_dict' is not a dict")
    for key, t in state_dict.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{where}: {key} holds {bad} NaN/Inf value(s) of {t.numel()}; refusing a diverged or "
                             f"corrupt model")


def model_state_dict(state_dict: dict[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The model's plain state dict from a LightningModule one: strip ``prefix``, drop ``*.weight_mask`` buffers,
    and fold parametrized weights (``<fqn>.parametrizations.weight.original``) back into ``<fqn>.weight``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        if key.endswith("weight_mask") or key.endswith(".mask") and ".parametrizations." in key:
            continue
        key = key.replace(".parametrizations.weight.original", ".weight")
        out[key] = value
    return out


def model_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a Spruce checkpoint with its squashed weights (masks dropped, zeros kept).

    Returns ``(model, ckpt["spruce"])`` with the model in eval mode on the CPU. Raises ``ValueError`` (one line)
    if the checkpoint is unreadable or its weights do not fit the model it names.
    """
    from spruce.models import build_model

    ckpt = load_checkpoint(path)
    meta = ckpt["spruce"]
    model_cfg = dict(meta.get("model") or {})
    name = model_cfg.pop("name", None)
    if name is None:
        raise ValueError(f"checkpoint {str(path)!r} does not name its model (ckpt['spruce']['model']['name'])")
    # never download at rebuild time: BERT-family configs carry "arch"; VGG weights come from the checkpoint
    model_cfg["weights"] = None if name == "vgg16" else model_cfg.get("weights")
    model = build_model(name, **model_cfg)
    state = model_state_dict(ckpt["state_dict"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {str(path)!r} does not fit model {name!r}: "
                         f"{str(e).strip().splitlines()[0][:200]}") from None
    model.eval()
    return model, meta


def eval_loader(meta: dict[str, Any], batch_size: int | None = None, purpose: str = "evaluate it") -> Any:
    """The validation DataLoader of a checkpoint's data set (``meta = ckpt["spruce"]``); text sets get the model's
    tokenizer. ValueError (one line, ending "cannot <purpose>") when the checkpoint names no data set. Shared by the
    deploy runtime's accuracy and the study's activation sparsity."""
    import inspect

    from spruce.data import DATASETS, KINDS, build_datamodule
    data = dict(meta.get("data") or {})
    name = data.pop("name", None)
    if not name:
        raise ValueError(f"checkpoint names no data set (ckpt['spruce']['data']['name']); cannot {purpose}")
    tokenizer = None
    if KINDS.get(name) == "text":
        from spruce.models.bert import build_tokenizer
        model_cfg = meta.get("model") or {}
        tokenizer = build_tokenizer(model_cfg.get("name", "minilm"), model_cfg.get("pretrained"))
    accepted = set(inspect.signature(DATASETS[name].__init__).parameters) if name in DATASETS else set()
    kwargs = {k: v for k, v in data.items() if k in accepted}
    if batch_size is not None and "batch_size" in accepted:
        kwargs["batch_size"] = batch_size
    dm = build_datamodule(name, tokenizer=tokenizer, **kwargs)
    dm.setup("validate")
    return dm.val_dataloader()
