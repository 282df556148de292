"""GLUE SST-2 (binary sentiment) from local TSV files in GLUE layout, or through ``datasets`` where installed.

Local layout: ``<root>/train.tsv`` and ``<root>/dev.tsv`` with a header ``sentence<TAB>label``. The GLUE test split
has no labels, so ``dev`` is the validation and test split.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from spruce.data.loaders import SplitDataModule


from spruce.data.text import TokenizedTexts, pad_collate


def read_glue_tsv(path: Path, limit: int | None = None) -> tuple[list[str], list[int]]:
    """``(sentences, labels)`` of a GLUE SST-2 TSV file (columns ``sentence`` and ``label``)."""
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if reader.fieldnames is None or not {"sentence", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{str(path)!r} is not a GLUE SST-2 TSV (need header columns sentence, label; "
                             f"got {reader.fieldnames})")
        for row in reader:
            if row["label"] not in ("0", "1"):
                raise ValueError(f"{str(path)!r}: label {row['label']!r} is not allowed; allowed: 0, 1")
            texts.append(row["sentence"])
            labels.append(int(row["label"]))
            if limit is not None and len(texts) >= limit:
                break
    if not texts:
        raise ValueError(f"{str(path)!r} holds no sentences")
    return texts, labels


def _download(limit: int | None) -> dict[str, tuple[list[str], list[int]]]:
    try:
        import datasets
    except ImportError:
        raise ValueError("SST-2 TSV files not found and the `datasets` package is not installed; pip install "
                         "datasets (needs a network), or set data.root=<dir with GLUE train.tsv/dev.tsv>") from None
    ds = datasets.load_dataset("glue", "sst2")
    out = {}
    for split, name in (("train", "train"), ("dev", "validation")):
        part = ds[name] if limit is None else ds[name].select(range(min(limit, len(ds[name]))))
        out[split] = (list(part["sentence"]), [int(v) for v in part["label"]])
    return out


class Sst2DataModule(SplitDataModule):
    """Batches ``{"input_ids" [B, L], "attention_mask" [B, L], "labels" [B]}``."""

    name = "sst2"
    kind = "text"

    def __init__(self, tokenizer: Any = None, root: str | None = "data/glue/SST-2", max_length: int = 64,
                 batch_size: int = 32, limit: int | None = None, num_workers: int = 0, seed: int = 0,
                 **_: Any) -> None:
        super().__init__()
        self.tokenizer, self.root = tokenizer, Path(root) if root else None
        self.max_length, self.batch_size, self.limit = max_length, batch_size, limit
        self.num_workers, self.seed, self.num_classes = num_workers, seed, 2
        self.train_set = self.val_set = None

    def load_splits(self) -> dict[str, tuple[list[str], list[int]]]:
        """``{"train": (texts, labels), "dev": (texts, labels)}`` from TSV files, else via ``datasets``."""
        if self.root is not None and (self.root / "train.tsv").is_file() and (self.root / "dev.tsv").is_file():
            return {s: read_glue_tsv(self.root / f"{s}.tsv", self.limit) for s in ("train", "dev")}
        return _download(self.limit)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.tokenizer is None:
            raise ValueError("data=sst2 needs the model's tokenizer (pass tokenizer=...)")
        splits = self.load_splits()
        self.train_set = TokenizedTexts(*splits["train"], self.tokenizer, self.max_length)
        self.val_set = TokenizedTexts(*splits["dev"], self.tokenizer, self.max_length)

    def collate_fn(self):
        return pad_collate(int(getattr(self.tokenizer, "pad_token_id", 0) or 0))

    def meta(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "num_classes": self.num_classes, "max_length": self.max_length,
                "root": str(self.root) if self.root else None}
