"""Optimizers and the warm-up + cosine learning-rate schedule used by the LightningModule."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw")


def check_optim(cfg: dict[str, Any]) -> None:
    """Raise ``ValueError`` (one line) on a bad optimizer config."""
    name = cfg.get("name")
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is not allowed; allowed: {', '.join(OPTIMIZERS)}")
    lr = cfg.get("lr")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"model.optim.lr={lr!r} is not allowed; it must be a number > 0")
    warmup = cfg.get("warmup", 0.0)
    if not 0.0 <= float(warmup) < 1.0:
        raise ValueError(f"model.optim.warmup={warmup!r} is not allowed; it is a fraction of all steps in [0, 1)")


def build_optimizer(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW; no weight decay on biases and normalisation weights (1-D)."""
    check_optim(cfg)
    wd = float(cfg.get("weight_decay", 0.0))
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    lr = float(cfg["lr"])
    if cfg["name"] == "sgd":
        momentum = float(cfg.get("momentum", 0.9))
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=bool(cfg.get("nesterov", False))
                               and momentum > 0)
    betas = tuple(cfg.get("betas", (0.9, 0.999)))
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=float(cfg.get("eps", 1e-8)))


def warmup_cosine(total_steps: int, warmup: float, min_lr_ratio: float = 0.0) -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warm-up over ``warmup * total_steps`` steps (from 1/warm-up
    steps to 1), then cosine decay to ``min_lr_ratio`` at ``total_steps``; held there afterwards."""
    total = max(1, int(total_steps))
    warm = int(round(warmup * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
