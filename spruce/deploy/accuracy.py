"""Task accuracy of a (converted) model on a checkpoint's evaluation data (the training engineer's data modules)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spruce.deploy.compare import first_tensor


def eval_loader(meta: dict[str, Any], batch_size: int | None = None) -> Any:
    """The validation DataLoader of a checkpoint's data set (``meta = ckpt["spruce"]``); text sets get the model's
    tokenizer. ValueError when the checkpoint names no data set."""
    from spruce.data import build_datamodule
    data = dict(meta.get("data") or {})
    name = data.pop("name", None)
    if not name:
        raise ValueError("checkpoint names no data set (ckpt['spruce']['data']['name']); cannot measure accuracy")
    from spruce.data import KINDS
    tokenizer = None
    if KINDS.get(name) == "text":
        from spruce.models.bert import build_tokenizer
        model_cfg = meta.get("model") or {}
        tokenizer = build_tokenizer(model_cfg.get("name", "minilm"), model_cfg.get("pretrained"))
    import inspect
    from spruce.data import DATASETS
    accepted = set(inspect.signature(DATASETS[name].__init__).parameters) if name in DATASETS else set()
    kwargs = {k: v for k, v in data.items() if k in accepted}
    if batch_size is not None and "batch_size" in accepted:
        kwargs["batch_size"] = batch_size
    dm = build_datamodule(name, tokenizer=tokenizer, **kwargs)
    dm.setup("validate")
    return dm.val_dataloader()


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
