"""LightningDataModules: ``build_datamodule(name, tokenizer=None, **kwargs)``.

Every data module has ``name``, ``kind`` (``"image"`` or ``"text"``), ``num_classes`` (known before ``setup``),
and ``meta()`` (a plain dict stored in checkpoints). Image batches are ``(x [B, 3, S, S], y [B])``; text batches
are dicts ``{"input_ids", "attention_mask", "labels"}`` (``[B, L]``, ``[B, L]``, ``[B]``).

Importing this package is cheap: the modules (and Lightning) load on first use.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

# name -> (module, class, kind)
_SOURCES: dict[str, tuple[str, str, str]] = {
    "digits": ("spruce.data.digits", "DigitsDataModule", "image"),
    "fortunes": ("spruce.data.fortunes", "FortunesDataModule", "text"),
    "cifar10": ("spruce.data.cifar10", "Cifar10DataModule", "image"),
    "imagenet": ("spruce.data.imagenet", "ImageFolderDataModule", "image"),
    "sst2": ("spruce.data.sst2", "Sst2DataModule", "text"),
}
KINDS: dict[str, str] = {name: kind for name, (_, _, kind) in _SOURCES.items()}


def datamodule_class(name: str) -> type:
    """The LightningDataModule class of data set ``name`` (imported on first use)."""
    if name not in _SOURCES:
        raise ValueError(f"unknown data set {name!r}; allowed: {', '.join(_SOURCES)}")
    module, cls, _ = _SOURCES[name]
    return getattr(importlib.import_module(module), cls)


class _LazyClasses(Mapping):
    """``{name: DataModule class}``; names and membership are free, a value imports its module."""

    def __getitem__(self, name: str) -> type:
        if name not in _SOURCES:
            raise KeyError(name)
        return datamodule_class(name)

    def __iter__(self) -> Iterator[str]:
        return iter(_SOURCES)

    def __len__(self) -> int:
        return len(_SOURCES)


DATASETS: Mapping[str, type] = _LazyClasses()


def build_datamodule(name: str, tokenizer: Any = None, **kwargs: Any) -> Any:
    """Build data module ``name`` (see ``DATASETS``) with its keyword arguments; text sets need ``tokenizer``."""
    cls = datamodule_class(name)
    kwargs = {k: v for k, v in kwargs.items() if k != "name"}
    if KINDS[name] == "text":
        kwargs["tokenizer"] = tokenizer
    return cls(**kwargs)


__all__ = ["DATASETS", "KINDS", "build_datamodule", "datamodule_class"]
