"""Tokenised in-memory text classification sets and their padding collate, shared by fortunes and SST-2."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import Dataset


class TokenizedTexts(Dataset):
    """Texts tokenised once (no padding); items are ``{"input_ids": [L] int64, "labels": int}``."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int], tokenizer: Any, max_length: int) -> None:
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
        self.input_ids = [torch.tensor(ids, dtype=torch.long) for ids in enc["input_ids"]]
        self.labels = torch.tensor(list(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}


def pad_collate(pad_id: int = 0):
    """A collate function padding ``input_ids`` to the longest in the batch: returns ``{"input_ids" [B, L],
    "attention_mask" [B, L], "labels" [B]}`` (all int64)."""

    def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, it in enumerate(items):
            n = len(it["input_ids"])
            ids[row, :n] = it["input_ids"]
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.stack([torch.as_tensor(it["labels"]) for it in items])}

    return collate
