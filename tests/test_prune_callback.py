"""PruningCallback inside real Lightning fits on a tiny CNN: final sparsity, logging, exact zeros, resume."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")  # imported once for the whole session

from spruce.prune import PruningCallback  # noqa: E402

BATCHES_PER_EPOCH = 5


class TinyVGG(nn.Module):
    """VGG-shaped tiny CNN (``features`` + ``classifier``); input [B, 3, 8, 8] -> logits [B, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 16, 24), nn.ReLU(), nn.Linear(24, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LitTiny(pl.LightningModule):
    def __init__(self, optimizer: str = "adamw") -> None:
        super().__init__()
        self.model = TinyVGG()
        self.optimizer = optimizer

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(8 * BATCHES_PER_EPOCH, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (8 * BATCHES_PER_EPOCH,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def trainer(max_steps: int, callbacks: list, **kw) -> pl.Trainer:
    return pl.Trainer(max_steps=max_steps, enable_progress_bar=False, logger=False, accelerator="cpu",
                      enable_checkpointing=False, enable_model_summary=False, callbacks=callbacks, **kw)


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight_mask.clone() for n, m in model.named_modules() if hasattr(m, "weight_mask")}


class MaskProbe(pl.Callback):
    """Records the masks and the global step when training starts (after any checkpoint restore)."""

    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step
        self.masks = masks_of(pl_module.model)


PRUNED = ["features.2", "classifier.1", "classifier.3"]  # default_prunable(vgg): all but the first conv


def make_callback(**kw) -> PruningCallback:
    args = dict(method="agp", initial=0.0, final=0.8, start=2, end=12, every=2, family="vgg")
    args.update(kw)
    return PruningCallback(**args)


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_fit_reaches_final_sparsity_with_exact_zeros(opt):
    pl.seed_everything(0, verbose=False)
    lit = LitTiny(opt)
    cb = make_callback()
    t = trainer(20, [cb])
    t.fit(lit, loader())
    mods = dict(lit.model.named_modules())
    assert cb.pruner.layers == PRUNED
    for n in PRUNED:
        w, mask = mods[n].weight, mods[n].weight_mask
        assert int((~mask).sum()) == round(0.8 * w.numel()), n  # exact to one weight
        assert (w[~mask] == 0).all()
    assert not hasattr(mods["features.0"], "weight_mask")
    assert cb.sparsity()["overall"] == pytest.approx(0.8, abs=0.01)
    metrics = t.callback_metrics
    assert float(metrics["sparsity/overall"]) == pytest.approx(cb.sparsity()["overall"])
    assert float(metrics["prune/target"]) == pytest.approx(0.8)
    assert "sparsity/classifier.1" in metrics
    assert cb.last_step == 12


def test_epoch_unit_converts_to_steps():
    pl.seed_everything(0, verbose=False)
    lit = LitTiny()
    cb = make_callback(unit="epoch", start=0, end=2, every=1, method="agp", initial=0.2)
    trainer(3 * BATCHES_PER_EPOCH, [cb]).fit(lit, loader())
    assert cb.steps == {"start": 0, "end": 2 * BATCHES_PER_EPOCH, "every": BATCHES_PER_EPOCH}
    assert cb.pruner.target == pytest.approx(0.8)


def test_oneshot_and_iterative_methods():
    pl.seed_everything(0, verbose=False)
    lit = LitTiny()
    cb = make_callback(method="iterative", start=0, end=6, iterations=3, scope="global")
    trainer(8, [cb]).fit(lit, loader())
    total = sum(dict(lit.model.named_modules())[n].weight.numel() for n in PRUNED)
    assert sum(int((~m).sum()) for m in masks_of(lit.model).values()) == round(0.8 * total)
    lit2 = LitTiny()
    cb2 = make_callback(method="oneshot", start=3, final=0.5, layers=["classifier.*"])
    trainer(5, [cb2]).fit(lit2, loader())
    assert cb2.pruner.layers == ["classifier.1", "classifier.3"] and cb2.last_step == 3


def test_movement_score_in_fit():
    pl.seed_everything(0, verbose=False)
    lit = LitTiny()
    cb = make_callback(score="movement", start=2, end=6)
    trainer(8, [cb]).fit(lit, loader())
    scores = cb.pruner.movement.scores
    assert sorted(scores) == sorted(PRUNED) and all(bool(s.abs().sum() > 0) for s in scores.values())
    for n, mask in masks_of(lit.model).items():
        assert int((~mask).sum()) == round(0.8 * mask.numel())
    assert "movement" in cb.state_dict()["pruner"]


def test_resume_restores_masks_and_continues_schedule(tmp_path: Path):
    # One uninterrupted run to step 20 that also checkpoints at step 10 (mid-schedule: masks change at 10, 12).
    pl.seed_everything(7, verbose=False)
    full = LitTiny("sgd")
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=10,
                                           save_top_k=-1)
    t = pl.Trainer(max_steps=20, enable_progress_bar=False, logger=False, accelerator="cpu",
                   enable_model_summary=False, callbacks=[make_callback(), ckpt_cb])
    t.fit(full, loader())
    want = masks_of(full.model)
    ckpt = tmp_path / "step=10.ckpt"
    assert ckpt.is_file(), sorted(p.name for p in tmp_path.iterdir())

    raw = torch.load(ckpt, weights_only=True)  # must be loadable safely
    saved = {k[len("model."):-len(".weight_mask")]: v for k, v in raw["state_dict"].items()
             if k.endswith(".weight_mask")}
    assert sorted(saved) == sorted(PRUNED)
    for n in PRUNED:  # squashed weights: exact zeros where the mask is False
        assert (raw["state_dict"][f"model.{n}.weight"][~saved[n]] == 0).all()
    state = raw["callbacks"]["PruningCallback"]
    assert state["pruner"]["target"] == pytest.approx(0.8 - 0.8 * (1 - 8 / 10) ** 3)  # AGP at step 10
    assert state["last_step"] == 10 and state["pruner"]["layers"] == PRUNED

    pl.seed_everything(99, verbose=False)  # a different init: everything must come from the checkpoint
    resumed = LitTiny("sgd")
    probe, cb2 = MaskProbe(), make_callback()
    trainer(20, [cb2, probe]).fit(resumed, loader(), ckpt_path=str(ckpt), weights_only=True)
    assert probe.step == 10
    assert probe.masks.keys() == saved.keys()
    assert all(torch.equal(probe.masks[n], saved[n]) for n in saved), "masks right after restore differ"
    got = masks_of(resumed.model)
    assert all(torch.equal(got[n], want[n]) for n in want), "resumed masks differ from the uninterrupted run"
    assert not all(torch.equal(got[n], saved[n]) for n in saved)  # the schedule did continue after step 10
    for n, m in full.model.named_parameters():
        torch.testing.assert_close(dict(resumed.model.named_parameters())[n], m, rtol=1e-5, atol=1e-6)


def test_resume_with_other_settings_fails(tmp_path: Path):
    pl.seed_everything(0, verbose=False)
    lit = LitTiny()
    t = trainer(3, [make_callback()])
    t.fit(lit, loader())
    ckpt = tmp_path / "a.ckpt"
    t.save_checkpoint(ckpt)
    with pytest.raises(ValueError, match="scope='layerwise' differs"):
        trainer(6, [make_callback(scope="global")]).fit(LitTiny(), loader(), ckpt_path=str(ckpt))


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="lottery"), "method='lottery'"),
    (dict(final=1.0), "final=1.0"),
    (dict(start=10, end=5), "start=10 > end=5"),
    (dict(unit="batch"), "unit='batch'"),
    (dict(every=0), "every=0"),
    (dict(start=1.5), "start=1.5"),
    (dict(family="resnet"), "family='resnet'"),
    (dict(scope="rows"), "scope='rows'"),
    (dict(initial=0.9, final=0.5), "initial=0.9"),
])
def test_bad_arguments(kwargs, match):
    import re
    with pytest.raises(ValueError, match=re.escape(match)):
        make_callback(**kwargs)


def test_layers_that_match_nothing_fail_at_setup():
    with pytest.raises(ValueError, match="'encoder.*'"):
        trainer(2, [make_callback(layers=["encoder.*"])]).fit(LitTiny(), loader())


class LitLazy(LitTiny):
    """Builds its model too late (in configure_model): the callback must say so clearly."""

    def __init__(self) -> None:
        pl.LightningModule.__init__(self)
        self.optimizer = "adamw"

    def configure_model(self) -> None:
        self.model = TinyVGG()


def test_model_built_too_late_fails_clearly():
    with pytest.raises(ValueError, match="build the model in LightningModule.__init__"):
        trainer(2, [make_callback()]).fit(LitLazy(), loader())
