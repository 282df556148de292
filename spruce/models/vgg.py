"""VGG-16 from torchvision, adapted to the data's number of classes and input size.

Layer names stay torchvision's (``features.<i>``, ``classifier.<i>``) so ImageNet weights load and the pruner's
defaults (every conv/linear but the first conv) apply unchanged.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models import vgg as tv_vgg

VGG16_CFG: list[int | str] = tv_vgg.cfgs["D"]  # 13 convs, 5 max-pools
WEIGHTS = (None, "IMAGENET1K_V1")
HEADS = ("auto", "small", "torchvision")


def _init_module(m: nn.Module) -> None:
    """torchvision's VGG init: kaiming-normal convs (fan_out, relu), BN 1/0, linear N(0, 0.01)."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0, 0.01)
        nn.init.zeros_(m.bias)


def build_vgg16(num_classes: int = 10, input_size: int = 32, batch_norm: bool = True, weights: str | None = None,
                head: str = "auto", width_div: int = 1, dropout: float = 0.5, **_: Any) -> nn.Module:
    """Build VGG-16 (``vgg16_bn`` unless ``batch_norm=False``) for ``[B, 3, input_size, input_size]`` images.

    Args:
        num_classes: size of the output layer (logits ``[B, num_classes]``).
        input_size: image side in pixels; must be a multiple of 32 (five 2x2 max-pools).
        batch_norm: ``True`` -> torchvision ``vgg16_bn`` (trains from scratch); ``False`` -> plain ``vgg16``
            (known to stall at chance accuracy from scratch on small data).
        weights: ``None`` (random init) or ``"IMAGENET1K_V1"`` (downloads torchvision's weights; needs a network
            or a filled torch hub cache).
        head: ``"small"`` drops the 7x7 average pool and uses ``flat -> 512 -> num_classes`` (the right head for
            32x32 inputs: 98% on digits); ``"torchvision"`` keeps the 25088 -> 4096 -> 4096 head with the last layer
            resized; ``"auto"`` picks ``small`` below 64 px, else ``torchvision``.
        width_div: divide every conv width by this (tests use tiny models; 1 = the real VGG-16).
        dropout: dropout probability in the classifier.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if input_size < 32 or input_size % 32:
        raise ValueError(f"vgg16: input_size must be a multiple of 32 (>= 32), got {input_size}")
    if weights not in WEIGHTS:
        raise ValueError(f"vgg16: weights={weights!r} is not allowed; allowed: null, IMAGENET1K_V1")
    if head not in HEADS:
        raise ValueError(f"vgg16: head={head!r} is not allowed; allowed: {', '.join(HEADS)}")
    if width_div < 1 or 64 % width_div:
        raise ValueError(f"vgg16: width_div must divide 64 (1, 2, 4, ..., 64), got {width_div}")
    if weights is not None and width_div != 1:
        raise ValueError("vgg16: pretrained weights need width_div=1")
    if head == "auto":
        head = "small" if input_size < 64 else "torchvision"

    if weights is not None:
        ctor = tv_vgg.vgg16_bn if batch_norm else tv_vgg.vgg16
        tv_weights = (tv_vgg.VGG16_BN_Weights if batch_norm else tv_vgg.VGG16_Weights)[weights]
        model = ctor(weights=tv_weights, dropout=dropout)
    else:
        cfg = [c if c == "M" else int(c) // width_div for c in VGG16_CFG]
        model = tv_vgg.VGG(tv_vgg.make_layers(cfg, batch_norm=batch_norm), num_classes=1000, init_weights=True,
                           dropout=dropout)
    channels = 512 // width_div
    if head == "small":
        side = input_size // 32
        model.avgpool = nn.Identity()
        model.classifier = nn.Sequential(
            nn.Linear(channels * side * side, 512 // width_div), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(512 // width_div, num_classes),
        )
        model.classifier.apply(_init_module)
    else:
        hidden = 4096 // width_div
        if width_div != 1:
            model.classifier[0] = nn.Linear(channels * 7 * 7, hidden)
            model.classifier[3] = nn.Linear(hidden, hidden)
        model.classifier[6] = nn.Linear(hidden, num_classes)
        for i in (0, 3, 6):
            if weights is None or i == 6:
                _init_module(model.classifier[i])
    return model


def vgg_example_input(batch_size: int, input_size: int = 32) -> torch.Tensor:
    """Random images ``[batch_size, 3, input_size, input_size]`` (float32)."""
    return torch.randn(batch_size, 3, input_size, input_size)
