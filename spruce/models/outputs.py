"""The main tensor of a model's output, for every consumer that needs one (verification, accuracy, ONNX export)."""
from __future__ import annotations

import torch


def first_tensor(out: object, purpose: str = "compare") -> torch.Tensor:
    """``out`` itself, its ``logits``/``last_hidden_state``, or the first tensor of a dict/tuple/list output.

    ValueError (naming ``purpose``) when the output holds no tensor.
    """
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        v = getattr(out, key, None)
        if isinstance(v, torch.Tensor):
            return v
    values = list(out.values()) if isinstance(out, dict) else out
    if isinstance(values, (tuple, list)):
        for v in values:
            if isinstance(v, torch.Tensor):
                return v
    raise ValueError(f"model output of type {type(out).__name__} holds no tensor to {purpose}")
