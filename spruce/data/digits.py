"""scikit-learn's bundled handwritten digits (1797 8x8 images, 10 classes) as an offline image data set.

Images are upscaled to ``input_size`` (bilinear), repeated to 3 channels and normalised with the training
split's mean/std, so VGG-16 trains on real data with no download.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from spruce.data.loaders import SplitDataModule
from torch.utils.data import TensorDataset

from spruce.data.splits import limit_per_class, stratified_split


class DigitsDataModule(SplitDataModule):
    """Digits, fixed-seed stratified 80/20 split; batches ``(x [B, 3, S, S] float32, y [B] int64)``.

    The validation split doubles as the test split (the set has no separate one).
    """

    name = "digits"
    kind = "image"

    def __init__(self, batch_size: int = 64, input_size: int = 32, val_fraction: float = 0.2, seed: int = 0,
                 limit: int | None = None, num_workers: int = 0, **_: Any) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if input_size < 8:
            raise ValueError(f"data.input_size must be >= 8 pixels, got {input_size}")
        self.batch_size, self.input_size, self.val_fraction = batch_size, input_size, val_fraction
        self.seed, self.limit, self.num_workers = seed, limit, num_workers
        self.num_classes = 10
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits
        digits = load_digits()
        images = digits.images.astype(np.float32) / 16.0  # [N, 8, 8] in [0, 1]
        labels = digits.target.astype(np.int64)
        keep = limit_per_class(labels, self.limit, self.seed)
        images, labels = images[keep], labels[keep]
        train_idx, val_idx = stratified_split(labels, self.val_fraction, self.seed)
        x = torch.from_numpy(images)[:, None]
        x = torch.nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                            align_corners=False).repeat(1, 3, 1, 1)
        mean, std = x[train_idx].mean(), x[train_idx].std()
        x = (x - mean) / std
        y = torch.from_numpy(labels)
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx])

    def meta(self) -> dict[str, Any]:
        """Plain description stored in checkpoints."""
        return {"name": self.name, "kind": self.kind, "num_classes": self.num_classes, "input_size": self.input_size,
                "train_size": len(self.train_set) if self.train_set else None,
                "val_size": len(self.val_set) if self.val_set else None, "seed": self.seed,
                "val_fraction": self.val_fraction, "limit": self.limit}
