"""Model builders: ``build_model(name, **kwargs)`` and ``example_input(model_or_name, batch_size)``.

Every built model carries two plain attributes:

* ``model.family``: ``"vgg"`` or ``"bert"`` (the pruner picks default prunable layers from it);
* ``model.spruce_config``: a JSON-plain dict ``{"name": ..., <build kwargs>, "init": ...}`` that
  ``build_model(**cfg)`` turns back into the same architecture (stored in checkpoints as ``ckpt["spruce"]["model"]``).
  BERT-family models also store ``"arch"`` (the full ``BertConfig`` as a dict) so a checkpoint rebuilds offline.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from spruce.models.bert import bert_example_input, build_bert_base, build_minilm, plain_config
from spruce.models.bert import _random_init as _bert_from_arch
from spruce.models.vgg import build_vgg16, vgg_example_input

MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "vgg16": (build_vgg16, "vgg"),
    "bert_base": (build_bert_base, "bert"),
    "minilm": (build_minilm, "bert"),
}
FAMILIES = ("vgg", "bert")
NOT_BUILD_KEYS = ("name", "optim")  # keys of conf/model/*.yaml that train.py uses, not the builders


def model_family(model_or_name: nn.Module | str) -> str:
    """``"vgg"`` or ``"bert"`` for a model name or a model built by ``build_model``."""
    if isinstance(model_or_name, str):
        if model_or_name not in MODELS:
            raise ValueError(f"unknown model {model_or_name!r}; allowed: {', '.join(MODELS)}")
        return MODELS[model_or_name][1]
    family = getattr(model_or_name, "family", None)
    if family in FAMILIES:
        return family
    if hasattr(model_or_name, "config") and getattr(model_or_name.config, "model_type", "") == "bert":
        return "bert"
    if hasattr(model_or_name, "features") and hasattr(model_or_name, "classifier"):
        return "vgg"
    raise ValueError(f"cannot tell the family of {type(model_or_name).__name__}; allowed families: vgg, bert")


def _init_label(name: str, kwargs: dict[str, Any]) -> str:
    if "arch" in kwargs:
        return str(kwargs.get("init", "from-checkpoint"))
    if name == "vgg16":
        return "imagenet" if kwargs.get("weights") else "scratch"
    if name == "bert_base":
        return "pretrained" if kwargs.get("pretrained") is not None else "random-init"
    return "pretrained" if kwargs.get("pretrained", True) and not kwargs.get("config") else "random-init"


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model ``name`` (``vgg16``, ``bert_base``, ``minilm``) with its builder's keyword arguments.

    Common kwargs: ``num_classes`` (all), ``input_size`` (vgg16, pixels). See ``build_vgg16``,
    ``build_bert_base``, ``build_minilm``. ``arch=<dict>`` (BERT family, as stored in checkpoints) builds that
    exact architecture with random weights, with no download. Returns the model in train mode.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    builder, family = MODELS[name]
    kwargs = {k: v for k, v in kwargs.items() if k not in NOT_BUILD_KEYS}
    if family == "bert" and kwargs.get("arch") is not None:
        model = _bert_from_arch(dict(kwargs["arch"]), None, int(kwargs.get("num_classes", 2)))
    else:
        model = builder(**{k: v for k, v in kwargs.items() if k not in ("arch", "init")})
    model.family = family
    cfg: dict[str, Any] = {"name": name, **{k: v for k, v in kwargs.items() if k != "arch"}}
    cfg["init"] = _init_label(name, kwargs)
    if family == "bert":
        cfg["arch"] = plain_config(model)
        cfg["num_classes"] = int(model.config.num_labels)
    model.spruce_config = cfg
    return model


def example_input(model_or_name: nn.Module | str, batch_size: int = 1, **kwargs: Any
                  ) -> torch.Tensor | dict[str, torch.Tensor]:
    """A random input batch for a model: images ``[B, 3, H, W]`` (``input_size``, default the model's or 32) or,
    for BERT-family models, ``{"input_ids", "attention_mask"}`` of shape ``[B, seq_len]`` (``seq_len`` default 128).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    family = model_family(model_or_name)
    cfg = getattr(model_or_name, "spruce_config", {}) if not isinstance(model_or_name, str) else {}
    if family == "vgg":
        return vgg_example_input(batch_size, int(kwargs.get("input_size", cfg.get("input_size", 32))))
    vocab = 30522
    if not isinstance(model_or_name, str) and hasattr(model_or_name, "config"):
        vocab = int(model_or_name.config.vocab_size)
    return bert_example_input(batch_size, int(kwargs.get("seq_len", 128)), vocab)


__all__ = ["MODELS", "FAMILIES", "build_model", "example_input", "model_family"]
