"""Task accuracy of a (converted) model on a checkpoint's evaluation data (the training engineer's data modules)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spruce.deploy.compare import first_tensor


def eval_loader(meta: dict[str, Any], batch_size: int | None = None) -> Any:
    """The validation DataLoader of a checkpoint's data set (:func:`spruce.models.checkpoint.eval_loader`)."""
    from spruce.models.checkpoint import eval_loader as loader
    return loader(meta, batch_size, purpose="measure accuracy")


def accuracy(model: nn.Module, loader: Any, max_batches: int | None = None) -> float:
    """Top-1 accuracy in ``[0, 1]`` over ``loader`` batches ``(x, y)`` or dicts with ``labels``."""
    correct = total = 0
    model.eval()
    with torch.inference_mode():
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            if isinstance(batch, dict):
                y = batch["labels"]
                out = model(**{k: v for k, v in batch.items() if k != "labels"})
            else:
                x, y = batch[0], batch[1]
                out = model(x)
            pred = first_tensor(out).argmax(-1)
            correct += int((pred == y).sum())
            total += int(y.numel())
    if total == 0:
        raise ValueError("evaluation data is empty; cannot measure accuracy")
    return correct / total
