"""ImageNet (or any image-folder set) from a local directory: ``<root>/train/<class>/*`` and ``<root>/val/<class>/*``.

Standard transforms: RandomResizedCrop + flip for training; resize to ``input_size * 256 / 224`` and centre crop
for validation; ImageNet mean/std. The number of classes is the number of class folders in ``train``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from spruce.data.loaders import SplitDataModule


MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class ImageFolderDataModule(SplitDataModule):
    """Batches ``(x [B, 3, S, S] float32, y [B] int64)``; ``val`` is also the test split."""

    name = "imagenet"
    kind = "image"

    def __init__(self, root: str = "data/imagenet", batch_size: int = 64, input_size: int = 224,
                 num_workers: int = 4, seed: int = 0, limit: int | None = None, **_: Any) -> None:
        super().__init__()
        self.root = Path(root)
        for split in ("train", "val"):
            if not (self.root / split).is_dir():
                raise ValueError(f"image folder {str(self.root / split)!r} not found; set data.root=<dir with "
                                 f"train/<class>/*.JPEG and val/<class>/*.JPEG>")
        self.classes = sorted(p.name for p in (self.root / "train").iterdir() if p.is_dir())
        if len(self.classes) < 2:
            raise ValueError(f"{str(self.root / 'train')!r} has {len(self.classes)} class folders; need at least 2")
        self.num_classes = len(self.classes)
        self.batch_size, self.input_size, self.num_workers = batch_size, input_size, num_workers
        self.seed, self.limit = seed, limit
        self.train_set = self.val_set = None

    def _folder(self, split: str, train: bool):
        from torchvision import datasets
        from torchvision.transforms import v2
        if train:
            steps = [v2.RandomResizedCrop(self.input_size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            steps = [v2.Resize(self.input_size * 256 // 224, antialias=True), v2.CenterCrop(self.input_size)]
        tf = v2.Compose([v2.PILToTensor(), *steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
        ds = datasets.ImageFolder(str(self.root / split), transform=tf)
        if ds.classes != self.classes:
            raise ValueError(f"{str(self.root / split)!r} has classes that differ from train's")
        if self.limit is not None:
            ds = torch.utils.data.Subset(ds, list(range(min(self.limit, len(ds)))))
        return ds

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._folder("train", True)
            self.val_set = self._folder("val", False)

    def meta(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "num_classes": self.num_classes, "input_size": self.input_size,
                "root": str(self.root)}
