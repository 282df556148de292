"""Fixed-seed stratified train/validation splits shared by the in-memory data sets."""
from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)`` with ``val_fraction`` of every class in ``val`` (at least one per class when the
    class has two or more samples); deterministic for a given ``seed``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        n_val = min(max(n_val, 1 if len(idx) > 1 else 0), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def limit_per_class(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices keeping about ``limit`` samples in total, spread evenly over the classes (all if ``limit`` is None)."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    if limit < 1:
        raise ValueError(f"data.limit must be >= 1 or null, got {limit}")
    classes = np.unique(labels)
    per = max(1, -(-limit // len(classes)))
    rng = np.random.default_rng(seed + 1)
    keep = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        keep.append(rng.permutation(idx)[:per])
    return np.sort(np.concatenate(keep))
