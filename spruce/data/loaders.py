"""The loaders every Spruce data module shares: a seeded shuffled train split and an in-order validation split
(which doubles as the test split)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader


class SplitDataModule(L.LightningDataModule):
    """Base for data modules that set ``train_set``/``val_set`` in ``setup`` and have ``batch_size``, ``seed``
    and ``num_workers``. Subclasses with variable-length items override ``collate_fn``."""

    def collate_fn(self) -> Callable[[list[Any]], Any] | None:
        return None

    def _loader(self, dataset: Any, shuffle: bool) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, generator=g,
                          collate_fn=self.collate_fn(), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
