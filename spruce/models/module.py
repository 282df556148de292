"""``SpruceModule``: the LightningModule that trains (and, with ``PruningCallback``, prunes) a classifier.

Cross-entropy loss, accuracy, SGD or AdamW with warm-up + cosine. It records accuracy at three moments in
``self.metrics`` (saved in ``ckpt["spruce"]["metrics"]``):

* ``val_acc_initial``: the full validation pass before training (Lightning's sanity check, all batches);
* ``val_acc_dense``: the last validation while every prunable weight was still present (before pruning starts);
* ``val_acc``: the latest validation (the final accuracy once training ends).
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from spruce.models.checkpoint import CHECKPOINT_VERSION
from spruce.models.optim import build_optimizer, warmup_cosine
from spruce.prune.schedule import optimizer_steps_per_epoch

MASK = "weight_mask"


def layer_table(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{fqn: {"kind": "linear"|"conv2d", "shape": [...], "pruned": bool}}`` for every Linear/Conv2d."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            out[name] = {"kind": "linear" if isinstance(m, nn.Linear) else "conv2d",
                         "shape": [int(s) for s in m.weight.shape], "pruned": hasattr(m, MASK)}
    return out


def model_sparsity(model: nn.Module, layers: list[str] | None = None) -> dict[str, float]:
    """Fraction of exact zeros per layer and ``"overall"`` (weighted by size) over ``layers`` (default: the
    masked layers, or, on a model without masks, its family's default prunable layers)."""
    modules = dict(model.named_modules())
    if layers is None:
        layers = [n for n, m in modules.items() if hasattr(m, MASK)]
    if not layers:
        try:
            from spruce.prune import default_prunable
            layers = default_prunable(model, getattr(model, "family", "vgg"))
        except (ImportError, ValueError):
            layers = [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
    out: dict[str, float] = {}
    zeros = total = 0
    for name in layers:
        w = modules[name].weight.detach()
        z = int((w == 0).sum())
        out[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    out["overall"] = zeros / total if total else 0.0
    return out


def is_dense(model: nn.Module) -> bool:
    """True while no mask has pruned anything (no masks, or all-True masks)."""
    return all(bool(getattr(m, MASK).all()) for m in model.modules() if hasattr(m, MASK))


class SpruceModule(L.LightningModule):
    """Train ``model`` (built by ``spruce.models.build_model``) on image ``(x, y)`` or text dict batches.

    Args:
        model: the classifier; its ``spruce_config`` goes into ``ckpt["spruce"]["model"]``.
        optim: optimizer config (``name`` sgd|adamw, ``lr``, ``weight_decay``, ``momentum``, ``nesterov``,
            ``warmup`` (fraction of all steps), ``min_lr_ratio``).
        data_meta: the data module's ``meta()`` (plain dict), stored in checkpoints.
        run: extra plain run info stored in ``ckpt["spruce"]["run"]`` (run name, prune settings).
    """

    def __init__(self, model: nn.Module, optim: dict[str, Any], data_meta: dict[str, Any],
                 run: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.optim_cfg = dict(optim)
        self.data_meta = dict(data_meta)
        self.run_info = dict(run or {})
        self.metrics: dict[str, Any] = {"val_acc_initial": None, "val_acc_dense": None, "dense_epoch": None,
                                        "val_acc": None, "val_loss": None, "val_epoch": None}
        self._val = {"loss": 0.0, "correct": 0, "count": 0}
        # the LR schedule in epochs across a resume on another number of steps per epoch (e.g. more ranks): the
        # saved epoch position and global step, and the offset of this run's step count to the schedule's step
        self._resumed_lr: tuple[float, int] | None = None
        self._lr_offset = 0

    # ---- forward and metrics ---------------------------------------------------------------------------
    def forward(self, inputs: Any) -> torch.Tensor:
        """Logits ``[B, num_classes]`` for images ``[B, 3, H, W]`` or a dict of token tensors ``[B, L]``."""
        if isinstance(inputs, dict):
            return self.model(**inputs).logits
        return self.model(inputs)

    @staticmethod
    def split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
        """``(inputs, labels)`` from an image tuple or a text dict holding ``labels``."""
        if isinstance(batch, dict):
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            return inputs, batch["labels"]
        return batch[0], batch[1]

    def _step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
        inputs, y = self.split_batch(batch)
        logits = self(inputs)
        loss = nn.functional.cross_entropy(logits, y)
        correct = (logits.argmax(-1) == y).sum()
        return loss, correct, int(y.numel())

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, correct, n = self._step(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/acc", correct.float() / n, on_step=True, on_epoch=True, batch_size=n)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = {"loss": 0.0, "correct": 0, "count": 0}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, correct, n = self._step(batch)
        self._val["loss"] += float(loss) * n
        self._val["correct"] += int(correct)
        self._val["count"] += n

    def on_validation_epoch_end(self) -> None:
        if self.trainer.world_size > 1:  # DDP: each rank saw its shard of the validation set; sum over ranks
            t = torch.tensor([self._val["loss"], self._val["correct"], self._val["count"]], dtype=torch.float64,
                             device=self.device)
            t = self.trainer.strategy.reduce(t, reduce_op="sum").cpu()
            self._val = {"loss": float(t[0]), "correct": int(t[1]), "count": int(t[2])}
        n = max(1, self._val["count"])
        acc, loss = self._val["correct"] / n, self._val["loss"] / n
        if self.trainer.sanity_checking:
            if self.trainer.global_step == 0 and self.metrics["val_acc_initial"] is None:
                self.metrics["val_acc_initial"] = acc
            return
        self.metrics.update(val_acc=acc, val_loss=loss, val_epoch=int(self.current_epoch))
        if is_dense(self.model):
            self.metrics.update(val_acc_dense=acc, dense_epoch=int(self.current_epoch))
        self.log("val/acc", acc, prog_bar=True, batch_size=n)
        self.log("val/loss", loss, batch_size=n)
        if self.metrics["val_acc_dense"] is not None:
            self.log("val/acc_dense", float(self.metrics["val_acc_dense"]), batch_size=n)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, correct, n = self._step(batch)
        self.log("test/acc", correct.float() / n, on_epoch=True, batch_size=n)
        self.log("test/loss", loss, on_epoch=True, batch_size=n)

    def on_train_epoch_start(self) -> None:
        # Hugging Face's from_pretrained returns the model in eval mode and Lightning 2.6 keeps a module's mode
        # as it finds it: switch to train mode so dropout is active while fine-tuning.
        self.model.train()

    @torch.no_grad()
    def evaluate(self, loader: Any) -> dict[str, float]:
        """Accuracy and mean loss of the current weights over ``loader`` (eval mode, no Lightning loop)."""
        was_training = self.training
        self.eval()
        total = correct = 0
        loss_sum = 0.0
        for batch in loader:
            loss, c, n = self._step(batch)
            total, correct, loss_sum = total + n, correct + int(c), loss_sum + float(loss) * n
        self.train(was_training)
        return {"acc": correct / max(1, total), "loss": loss_sum / max(1, total), "count": total}

    # ---- optimisation -----------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        opt = build_optimizer(self.model, self.optim_cfg)
        total = int(self.trainer.estimated_stepping_batches)
        factor = warmup_cosine(total, float(self.optim_cfg.get("warmup", 0.0)),
                               float(self.optim_cfg.get("min_lr_ratio", 0.0)))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: factor(step + self._lr_offset))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- checkpoints ------------------------------------------------------------------------------------
    def spruce_meta(self) -> dict[str, Any]:
        """The contract's ``ckpt["spruce"]`` dict (plain types only)."""
        return {
            "model": dict(getattr(self.model, "spruce_config", {"name": type(self.model).__name__})),
            "data": dict(self.data_meta),
            "layers": layer_table(self.model),
            "sparsity": model_sparsity(self.model),
            "metrics": dict(self.metrics),
            "run": dict(self.run_info),
            "version": CHECKPOINT_VERSION,
        }

    def steps_per_epoch(self) -> int | None:
        """Optimizer steps per epoch of this run (None without a trainer)."""
        return None if self._trainer is None else optimizer_steps_per_epoch(self._trainer)

    def lr_epoch_position(self) -> float | None:
        """Epochs of the LR schedule done: ``(global_step + offset) / steps_per_epoch`` (saved in checkpoints)."""
        spe = self.steps_per_epoch()
        return None if spe is None else (int(self.trainer.global_step) + self._lr_offset) / spe

    def on_train_start(self) -> None:
        # a resume with another number of steps per epoch continues the LR schedule at the saved epoch position
        # (the scheduler's own step count is in the old run's steps): offset = position in this run's steps - count
        spe = self.steps_per_epoch()
        if self._resumed_lr is not None and spe is not None:
            pos, step = self._resumed_lr
            self._lr_offset = round(pos * spe) - step

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["spruce"] = self.spruce_meta()
        pos = self.lr_epoch_position()
        if pos is not None:
            checkpoint["spruce"]["lr_epoch_position"] = pos
        checkpoint.pop("hyper_parameters", None)
        checkpoint.pop("datamodule_hyper_parameters", None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        spruce = checkpoint.get("spruce") or {}
        if spruce.get("lr_epoch_position") is not None:  # checkpoints from before had no position: offset 0
            self._resumed_lr = (float(spruce["lr_epoch_position"]), int(checkpoint.get("global_step", 0)))
        saved = spruce.get("metrics") or {}
        self.metrics.update({k: v for k, v in saved.items() if k in self.metrics})
