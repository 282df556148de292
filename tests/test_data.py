"""Data modules on real offline data (digits, fortunes) and on tiny local files (CIFAR-10, image folder, SST-2)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from spruce.data import DATASETS, KINDS, build_datamodule
from spruce.data.fortunes import DEFAULT_ROOT as FORTUNES_ROOT
from spruce.models.bert import build_tokenizer

FORTUNES = Path(FORTUNES_ROOT)  # where Debian's fortunes package installs its files


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("minilm")


def test_digits_split_shapes_and_determinism():
    dm = build_datamodule("digits", batch_size=16, input_size=32)
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 1797
    assert abs(len(dm.val_set) - 0.2 * 1797) < 10
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 1])  # grey images repeated over 3 channels
    train_x = dm.train_set.tensors[0]
    assert abs(train_x.mean().item()) < 1e-4 and abs(train_x.std().item() - 1) < 1e-3
    again = build_datamodule("digits", batch_size=16, input_size=32)
    again.setup()
    assert torch.equal(again.val_set.tensors[1], dm.val_set.tensors[1])
    assert set(dm.val_set.tensors[1].tolist()) == set(range(10))
    assert dm.meta()["num_classes"] == 10 and dm.meta()["train_size"] == len(dm.train_set)


def test_digits_limit():
    dm = build_datamodule("digits", limit=100)
    dm.setup()
    assert 95 <= len(dm.train_set) + len(dm.val_set) <= 110


@pytest.mark.skipif(not FORTUNES.is_dir(), reason="Debian's fortunes package is not installed")
def test_fortunes_real_categories(tokenizer):
    dm = build_datamodule("fortunes", tokenizer=tokenizer, batch_size=8)
    texts, labels = dm.load_texts()
    assert len(texts) == 1800 and np.bincount(labels).tolist() == [300] * 6
    assert all(0 < len(t) <= 200 and "\x08" not in t for t in texts)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["labels"].shape == (8,)
    assert (batch["input_ids"][:, 0] == tokenizer.cls_token_id).all()
    assert dm.num_classes == 6 and len(dm.val_set) == 360


def test_fortunes_from_local_files(tmp_path, tokenizer):
    for cat, word in (("cats", "meow"), ("dogs", "woof")):
        entries = [f"the {word} number {i}" for i in range(10)] + ["x" * 300]
        (tmp_path / cat).write_text("\n%\n".join(entries) + "\n%\n")
    dm = build_datamodule("fortunes", tokenizer=tokenizer, root=str(tmp_path), categories=["cats", "dogs"],
                          per_class=5, batch_size=4)
    texts, labels = dm.load_texts()
    assert len(texts) == 10 and all("x" * 300 not in t for t in texts)
    assert all(("meow" in t) == (lab == 0) for t, lab in zip(texts, labels))
    dm.setup()
    assert len(dm.train_set) == 8 and len(dm.val_set) == 2


def test_fortunes_missing_dir_says_apt_get(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="apt-get install fortunes"):
        build_datamodule("fortunes", tokenizer=tokenizer, root=str(tmp_path / "nope"))
    (tmp_path / "a").write_text("x\n%\n")
    with pytest.raises(ValueError, match="not found"):
        build_datamodule("fortunes", tokenizer=tokenizer, root=str(tmp_path), categories=["a", "b"])


def _write_cifar(root: Path, n: int = 6) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(range(n)),
             "batch_label": name}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)


def test_cifar10_from_local_pickles(tmp_path):
    _write_cifar(tmp_path)
    dm = build_datamodule("cifar10", root=str(tmp_path), batch_size=4, num_workers=0)
    dm.setup()
    assert len(dm.train_set) == 30 and len(dm.val_set) == 6
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    xv, yv = next(iter(dm.val_dataloader()))
    assert yv.tolist() == [0, 1, 2, 3]


def test_cifar10_missing_and_malicious(tmp_path):
    with pytest.raises(ValueError, match="data.download=true"):
        build_datamodule("cifar10", root=str(tmp_path), num_workers=0).setup()
    _write_cifar(tmp_path / "evil")
    with open(tmp_path / "evil/cifar-10-batches-py/test_batch", "wb") as f:
        pickle.dump({"data": print, "labels": []}, f)  # a pickle that references a callable
    with pytest.raises(ValueError, match="refusing"):
        build_datamodule("cifar10", root=str(tmp_path / "evil"), num_workers=0).setup()


def test_image_folder(tmp_path):
    from PIL import Image
    for split in ("train", "val"):
        for cls in ("ant", "bee", "cat"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((40, 50, 3), 40 * i, dtype=np.uint8)).save(d / f"{i}.png")
    dm = build_datamodule("imagenet", root=str(tmp_path), batch_size=3, input_size=32, num_workers=0)
    assert dm.num_classes == 3
    dm.setup()
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [0, 0, 1]
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="data.root"):
        build_datamodule("imagenet", root=str(tmp_path / "nope"))


def test_sst2_from_glue_tsv(tmp_path, tokenizer):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na great film \t1\nboring and long \t0\nfun \t1\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nawful \t0\nlovely \t1\n")
    dm = build_datamodule("sst2", tokenizer=tokenizer, root=str(tmp_path), batch_size=2)
    dm.setup()
    assert len(dm.train_set) == 3 and len(dm.val_set) == 2 and dm.num_classes == 2
    batch = next(iter(dm.val_dataloader()))
    assert batch["labels"].tolist() == [0, 1] and batch["attention_mask"].sum() > 0
    (tmp_path / "dev.tsv").write_text("text\tlabel\nx\t0\n")
    with pytest.raises(ValueError, match="GLUE SST-2 TSV"):
        build_datamodule("sst2", tokenizer=tokenizer, root=str(tmp_path)).setup()


def test_sst2_without_files_or_datasets(tmp_path, tokenizer, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_datasets(name, *a, **k):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ValueError, match="pip install datasets"):
        build_datamodule("sst2", tokenizer=tokenizer, root=str(tmp_path)).setup()


def test_registry():
    assert set(DATASETS) == {"digits", "fortunes", "cifar10", "imagenet", "sst2"}
    assert KINDS["digits"] == "image" and KINDS["sst2"] == "text"
    with pytest.raises(ValueError, match="allowed: digits"):
        build_datamodule("mnist")
