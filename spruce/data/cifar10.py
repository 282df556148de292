"""CIFAR-10 from the python-pickle batches (``<root>/cifar-10-batches-py``); download through torchvision.

The batches are read with a restricted unpickler that only rebuilds numpy arrays (a data file cannot run code).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from spruce.data.loaders import SplitDataModule
from torch.utils.data import Dataset

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file -> ``(images [N, 3, 32, 32] uint8, labels [N] int64)``."""
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="latin1").load()
        data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(d["labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
        raise ValueError(f"CIFAR-10 batch {str(path)!r} is unreadable ({type(e).__name__}: {e})") from None
    if len(data) != len(labels):
        raise ValueError(f"CIFAR-10 batch {str(path)!r}: {len(data)} images but {len(labels)} labels")
    return data, labels


class CifarImages(Dataset):
    """uint8 images -> normalised float ``[3, S, S]``, with random crop + flip when ``train``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, train: bool, input_size: int) -> None:
        from torchvision.transforms import v2
        self.images, self.labels = torch.from_numpy(images), torch.from_numpy(labels)
        steps: list[Any] = []
        if input_size != 32:
            steps.append(v2.Resize(input_size, antialias=True))
        if train:
            steps += [v2.RandomCrop(input_size, padding=input_size // 8), v2.RandomHorizontalFlip()]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.labels[i]


class Cifar10DataModule(SplitDataModule):
    """CIFAR-10: 50k train / 10k test (the test batch is also the validation set); ``(x [B,3,S,S], y [B])``."""

    name = "cifar10"
    kind = "image"

    def __init__(self, root: str = "data/cifar10", download: bool = False, batch_size: int = 128,
                 input_size: int = 32, limit: int | None = None, num_workers: int = 2, seed: int = 0,
                 **_: Any) -> None:
        super().__init__()
        self.root, self.download = Path(root), download
        self.batch_size, self.input_size, self.limit = batch_size, input_size, limit
        self.num_workers, self.seed, self.num_classes = num_workers, seed, 10
        self.train_set = self.val_set = None

    def folder(self) -> Path:
        return self.root / FOLDER

    def prepare_data(self) -> None:
        missing = [f for f in (*TRAIN_FILES, TEST_FILE) if not (self.folder() / f).is_file()]
        if not missing:
            return
        if not self.download:
            raise ValueError(f"CIFAR-10 not found under {str(self.folder())!r} (missing {missing[0]}); set "
                             f"data.download=true (needs a network) or data.root=<dir holding {FOLDER}>")
        import torchvision
        torchvision.datasets.CIFAR10(str(self.root), train=True, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()
        parts = [read_batch(self.folder() / f) for f in TRAIN_FILES]
        x_train = np.concatenate([p[0] for p in parts])
        y_train = np.concatenate([p[1] for p in parts])
        x_test, y_test = read_batch(self.folder() / TEST_FILE)
        if self.limit is not None:
            x_train, y_train, x_test, y_test = (x_train[:self.limit], y_train[:self.limit],
                                                x_test[:self.limit], y_test[:self.limit])
        self.train_set = CifarImages(x_train, y_train, True, self.input_size)
        self.val_set = CifarImages(x_test, y_test, False, self.input_size)

    def meta(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "num_classes": self.num_classes, "input_size": self.input_size,
                "root": str(self.root)}
