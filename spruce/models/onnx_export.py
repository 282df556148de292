"""A PyTorch model + an example input -> one ONNX file, for peer engines and for users who deploy elsewhere.

Uses PyTorch's TorchScript-based exporter (``dynamo=False``): it needs neither ``onnx`` nor ``onnxscript`` and
exports VGG-16 and the BERT family as they are. Opset 14 by default: LayerNorm is decomposed into primitive ops
(fused again by ONNX Runtime and OpenVINO) and DeepSparse 1.8 (onnx<1.15) reads it; attention is exported as
MatMul/Softmax. The file holds the model's main tensor (``logits`` for BERT classifiers) as ``output``; with ``hidden=True`` a
BERT-family export also holds the last hidden state as ``hidden`` (``[B, S, H]``), which makes a much stronger
output check than a classifier's few logits (a random-init BERT pruned to 90% gives nearly input-independent
logits).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spruce.models.outputs import first_tensor

DEFAULT_OPSET = 14


def main_output(out: Any) -> torch.Tensor:
    """The tensor an ONNX export keeps: the output itself, ``logits``/``last_hidden_state``, or the first tensor."""
    return first_tensor(out, "export")


class _Positional(nn.Module):
    """``model(**dict(zip(names, tensors)))`` -> its main tensor (and the last hidden state when ``hidden``):
    one positional signature for every model."""

    def __init__(self, model: nn.Module, names: list[str] | None, hidden: bool = False) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.hidden = hidden

    def forward(self, *xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.names:
            return main_output(self.model(*xs))
        kw = dict(zip(self.names, xs))
        if not self.hidden:
            return main_output(self.model(**kw))
        out = self.model(**kw, output_hidden_states=True)
        return main_output(out), out.hidden_states[-1]


def reference_outputs(model: nn.Module, example: torch.Tensor | dict[str, torch.Tensor], hidden: bool = False
                      ) -> list[torch.Tensor]:
    """What :func:`export_onnx` with the same ``hidden`` makes the ONNX file output, computed by PyTorch."""
    feeds = input_arrays(example)
    wrapped = _Positional(model, None if isinstance(example, torch.Tensor) else list(feeds), hidden)
    with torch.inference_mode():
        out = wrapped(*feeds.values())
    return list(out) if isinstance(out, tuple) else [out]


def input_arrays(example: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The example input as ``{onnx input name: tensor}`` in graph order: ``{"input": x}`` for an image batch,
    the dict itself (``input_ids``, ``attention_mask``, ...) for BERT-family models."""
    if isinstance(example, torch.Tensor):
        return {"input": example}
    if isinstance(example, dict) and example and all(isinstance(v, torch.Tensor) for v in example.values()):
        return dict(example)
    raise ValueError(f"example input must be a tensor or a dict of tensors, got {type(example).__name__}")


def export_onnx(model: nn.Module, example: torch.Tensor | dict[str, torch.Tensor], path: str | Path,
                opset: int = DEFAULT_OPSET, dynamic: bool = False, hidden: bool = False) -> Path:
    """Write ``model`` (eval mode, CPU copy of its inputs' device) as ONNX to ``path``; returns the path.

    ``example``: an image batch ``[B, 3, H, W]`` (input named ``input``) or a dict of ``[B, S]`` tensors
    (``input_ids``/``attention_mask``, inputs named after the keys). The output is named ``output`` (plus
    ``hidden``, the last hidden state, when ``hidden`` and the inputs are a dict). Shapes are
    fixed to the example's (what the engines optimise best) unless ``dynamic``: then the batch dimension is free,
    and for dict inputs the sequence dimension too (up to the model's ``max_position_embeddings``).
    Atomic: written under a temporary name in the same folder, then renamed, so a reader never sees half a file.
    ValueError when the exporter fails (the message names the model class and the exporter's reason).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    feeds = input_arrays(example)
    names = list(feeds)
    hidden = hidden and not isinstance(example, torch.Tensor)
    wrapped = _Positional(model, None if isinstance(example, torch.Tensor) else names, hidden).eval()
    outputs = ["output", "hidden"] if hidden else ["output"]
    dyn = None
    if dynamic:
        seq = {} if isinstance(example, torch.Tensor) else {1: "sequence"}
        dyn = {**{n: {0: "batch", **seq} for n in names}, "output": {0: "batch"},
               **({"hidden": {0: "batch", 1: "sequence"}} if hidden else {})}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes: shapes are fixed
            torch.onnx.export(wrapped, tuple(feeds.values()), str(tmp), input_names=names, output_names=outputs,
                              opset_version=opset, dynamo=False, do_constant_folding=True, dynamic_axes=dyn)
        os.replace(tmp, path)
    except Exception as e:  # the exporter raises many types; one line says which model and why
        raise ValueError(f"ONNX export of {type(model).__name__} failed: {str(e).splitlines()[0] if str(e) else e!r}"
                         ) from e
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    return path


def export_checkpoint_onnx(ckpt: str | Path, path: str | Path, seq_len: int = 128, opset: int = DEFAULT_OPSET
                           ) -> Path:
    """A training checkpoint's pruned model as ONNX at ``path`` (batch, and for BERT sequence, dimensions free).

    The example input that traces it: the checkpoint's image size, or ``seq_len`` tokens for BERT-family models.
    """
    from spruce.models import example_input
    from spruce.models.checkpoint import model_from_checkpoint
    model, _ = model_from_checkpoint(ckpt)
    return export_onnx(model, example_input(model, 1, seq_len=seq_len), path, opset=opset, dynamic=True)


__all__ = ["DEFAULT_OPSET", "export_checkpoint_onnx", "export_onnx", "input_arrays", "main_output", "reference_outputs"]
