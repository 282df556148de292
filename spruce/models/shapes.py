"""Layer shapes read off the real model builders: one forward pass on the ``meta`` device with hooks.

Each prunable layer is the ``Y = W @ X`` a kernel sees: ``W`` is ``[m, k]`` (a Linear's ``[out, in]``, a conv's
im2col ``[C_out, C_in*kh*kw]``) and ``X`` is ``[k, n]`` with ``n = n_per_sample * batch`` (1 per sample for an
FC layer on images, the output pixels ``H_out*W_out`` of a conv, the sequence length for a transformer Linear).
Nothing is allocated (meta tensors carry shapes only) and nothing is downloaded (BERT-family models are built
from their architecture with random init), so this is the one source of layer shapes for export's synthetic
twins, the study, the benchmarks and the GPU smoke script.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class LayerShape:
    """One layer's GEMM: ``W`` ``[m, k]``, ``X`` ``[k, n_per_sample * batch]``; ``original_shape`` of the weight.

    ``name`` is the module's name in the model (``features.2``, ``bert.encoder.layer.0.output.dense``), ``kind``
    ``"linear"`` or ``"conv2d"``, ``model`` the builder's name."""

    name: str
    kind: str
    m: int
    k: int
    n_per_sample: int
    original_shape: tuple[int, ...]
    model: str = ""

    def n(self, batch: int = 1) -> int:
        return self.n_per_sample * batch

    def to_dict(self) -> dict:
        d = asdict(self)
        d["original_shape"] = list(self.original_shape)
        return d


def traced_shapes(model: nn.Module, example: Any, layers: list[str] | None = None, model_name: str = ""
                  ) -> list[LayerShape]:
    """Shapes of ``model``'s Linear/Conv2d layers (``layers``: only these names) from one forward of ``example``
    (a tensor or a dict of keyword tensors, on the model's device), in the order the forward pass calls them."""
    want = None if layers is None else set(layers)
    seen: list[LayerShape] = []

    def hook(mod: nn.Module, inp: Any, out: torch.Tensor, name: str) -> None:
        w = mod.weight
        if isinstance(mod, nn.Conv2d):
            n, kind = int(out.shape[-1] * out.shape[-2]), "conv2d"
        else:
            n, kind = (int(out[0].numel() // out.shape[-1]) if out.dim() > 2 else 1), "linear"
        if all(s.name != name for s in seen):
            seen.append(LayerShape(name, kind, int(w.shape[0]), int(w[0].numel()), n, tuple(int(d) for d in w.shape),
                                   model_name))

    handles = [mod.register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name))
               for name, mod in model.named_modules()
               if isinstance(mod, (nn.Linear, nn.Conv2d)) and (want is None or name in want)]
    try:
        with torch.no_grad():
            model(**example) if isinstance(example, dict) else model(example)
    finally:
        for h in handles:
            h.remove()
    return seen


def model_shapes(name: str, batch_size: int = 1, input_kwargs: dict[str, Any] | None = None,
                 layers: list[str] | None = None, **build_kwargs: Any) -> list[LayerShape]:
    """Layer shapes of ``spruce.models.build_model(name, **build_kwargs)`` for one sample
    (``input_kwargs``: ``input_size`` / ``seq_len`` of ``example_input``), built and run on the ``meta`` device."""
    from spruce.models import build_model, example_input

    with torch.device("meta"):
        model = build_model(name, **build_kwargs)
    model.eval()
    x = example_input(model, batch_size, **(input_kwargs or {}))
    # token inputs without the attention mask: an all-ones mask changes no shape, and checking it reads a value
    # (``.item()``), which a meta tensor does not have
    x = {"input_ids": x["input_ids"].to("meta")} if isinstance(x, dict) else x.to("meta")
    return traced_shapes(model, x, layers, name)
