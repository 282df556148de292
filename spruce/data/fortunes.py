"""Debian's ``fortunes`` package as an offline text-classification set: the category file is the label.

Default: six categories (computers, men-women, politics, science, songs-poems, work), texts of at most 200
characters, 300 per class (fixed seed), fixed-seed stratified 80/20 split, tokenised with the model's tokenizer.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from spruce.data.loaders import SplitDataModule


from spruce.data.splits import stratified_split
from spruce.data.text import TokenizedTexts, pad_collate

DEFAULT_ROOT = "/usr/share/games/fortunes"
DEFAULT_CATEGORIES = ("computers", "men-women", "politics", "science", "songs-poems", "work")
_CONTROL = re.compile(r".\x08|[\x00-\x08\x0b-\x1f\x7f]")  # overstrike pairs ("_\bx") and control characters


def read_fortunes(path: Path, max_chars: int) -> list[str]:
    """The texts of one fortune file (entries separated by ``%`` lines), whitespace-collapsed, <= max_chars."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    texts = []
    for entry in re.split(r"\n%\n", raw):
        text = " ".join(_CONTROL.sub("", entry).split())
        if text and text != "%" and len(text) <= max_chars:
            texts.append(text)
    return list(dict.fromkeys(texts))  # drop duplicates, keep order


class FortunesDataModule(SplitDataModule):
    """Batches ``{"input_ids" [B, L], "attention_mask" [B, L], "labels" [B]}``; val doubles as test."""

    name = "fortunes"
    kind = "text"

    def __init__(self, tokenizer: Any = None, root: str = DEFAULT_ROOT,
                 categories: Sequence[str] = DEFAULT_CATEGORIES, per_class: int = 300, max_chars: int = 200,
                 max_length: int = 64, batch_size: int = 32, val_fraction: float = 0.2, seed: int = 0,
                 limit: int | None = None, num_workers: int = 0, **_: Any) -> None:
        super().__init__()
        root_path = Path(root)
        if not root_path.is_dir():
            raise ValueError(f"fortunes directory {root!r} not found; install Debian's fortunes package "
                             f"(sudo apt-get install fortunes) or set data.root=<dir of fortune files>")
        categories = list(categories)
        if len(categories) < 2:
            raise ValueError(f"data.categories needs at least 2 categories, got {categories}")
        missing = [c for c in categories if not (root_path / c).is_file()]
        if missing:
            have = sorted(p.name for p in root_path.iterdir() if p.is_file() and not p.suffix)
            raise ValueError(f"fortune categories {missing} not found in {root}; allowed: {', '.join(have)} "
                             f"(fortunes-min has only 3: apt-get install fortunes for all)")
        if per_class < 2 or batch_size < 1 or max_length < 8:
            raise ValueError(f"need per_class >= 2, batch_size >= 1, max_length >= 8; got {per_class}, "
                             f"{batch_size}, {max_length}")
        self.tokenizer, self.root, self.categories = tokenizer, root_path, categories
        self.per_class = per_class if limit is None else min(per_class, max(2, -(-limit // len(categories))))
        self.max_chars, self.max_length, self.batch_size = max_chars, max_length, batch_size
        self.val_fraction, self.seed, self.num_workers = val_fraction, seed, num_workers
        self.num_classes = len(categories)
        self.train_set = self.val_set = None

    def load_texts(self) -> tuple[list[str], np.ndarray]:
        """``per_class`` texts per category (fixed seed) and their labels (category index)."""
        rng = np.random.default_rng(self.seed)
        texts, labels = [], []
        for label, cat in enumerate(self.categories):
            pool = read_fortunes(self.root / cat, self.max_chars)
            if len(pool) < self.per_class:
                raise ValueError(f"fortune category {cat!r} has only {len(pool)} texts <= {self.max_chars} chars; "
                                 f"lower data.per_class (now {self.per_class}) or raise data.max_chars")
            for i in sorted(rng.choice(len(pool), self.per_class, replace=False)):
                texts.append(pool[i])
                labels.append(label)
        return texts, np.asarray(labels, dtype=np.int64)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.tokenizer is None:
            raise ValueError("data=fortunes needs the model's tokenizer (pass tokenizer=...)")
        texts, labels = self.load_texts()
        train_idx, val_idx = stratified_split(labels, self.val_fraction, self.seed)
        pick = lambda idx: ([texts[i] for i in idx], labels[idx].tolist())  # noqa: E731
        self.train_set = TokenizedTexts(*pick(train_idx), self.tokenizer, self.max_length)
        self.val_set = TokenizedTexts(*pick(val_idx), self.tokenizer, self.max_length)

    def collate_fn(self):
        return pad_collate(int(getattr(self.tokenizer, "pad_token_id", 0) or 0))

    def meta(self) -> dict[str, Any]:
        """Plain description stored in checkpoints."""
        return {"name": self.name, "kind": self.kind, "num_classes": self.num_classes,
                "categories": list(self.categories), "per_class": self.per_class, "max_chars": self.max_chars,
                "max_length": self.max_length, "seed": self.seed, "val_fraction": self.val_fraction,
                "root": str(self.root)}
