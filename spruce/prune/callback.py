"""``PruningCallback``: a thin Lightning callback that drives a ``MagnitudePruner`` with a sparsity schedule.

Life cycle inside ``Trainer.fit`` (Lightning 2.6 order):

1. ``setup``: resolve the layers and attach the ``weight_mask`` buffers. Lightning calls ``setup`` *before* it
   restores ``ckpt_path``, so the strict state-dict load restores the saved masks.
2. ``load_state_dict`` (resume only): the pruner state (last target, last pruned step, movement scores).
3. ``on_train_start``: convert epochs to optimizer steps, hook every optimizer so the masks are re-applied right
   after each ``optimizer.step()`` (momentum, Adam moments and weight decay cannot revive a pruned weight),
   and prune to the schedule's target at the current ``global_step`` (0, or the resumed step).
4. ``on_before_optimizer_step``: accumulate movement scores (``score="movement"`` only).
5. ``on_train_batch_end``: prune when the target at ``trainer.global_step`` (steps done) changed; log
   ``prune/target``, ``sparsity/overall`` and ``sparsity/<fqn>`` on every step.
6. ``on_fit_end``: re-apply the masks (exact zeros where a mask is ``False``); ``teardown`` removes the hooks.

Data parallel (DDP, any number of ranks): every rank prunes by itself from the same state - identical weights
(DDP broadcasts them at start and all-reduces the gradients in ``backward``, so every rank takes the same optimizer
step), movement scores accumulated from those all-reduced gradients in ``on_before_optimizer_step`` (after the
closure's backward), soft-movement scores updated from them with their own Adam on every rank alike - and
deterministic tie-breaking, so the masks come out bit-identical without being broadcast. ``verify_ranks`` checks it
at every pruning step (one all-gather of a 64-bit mask digest) and stops the run if a rank diverged. With
``unit="epoch"`` the schedule position is kept in epochs across a resume (``epoch_position`` in the state), so a run
resumed on a different number of ranks (other steps per epoch) continues the same schedule in epochs.

Layer names are relative to ``pl_module.<module_attr>`` (default ``model``, i.e. the contract's ``<fqn>``), or to
the LightningModule itself when it has no such attribute.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from spruce.prune.layers import default_prunable, infer_family, prunable_layers
from spruce.prune.masks import MASKABLE
from spruce.prune.pruner import SCOPES, MagnitudePruner
from spruce.prune.schedule import agp_sparsity, check_agp_args, iterative_prune_steps, iterative_sparsity, \
    oneshot_sparsity, optimizer_steps_per_epoch
from spruce.prune.scores import SCORES
from spruce.prune.structure import Structure
from spruce.prune.targets import load_targets, resolve_targets

METHODS = ("agp", "oneshot", "iterative")
UNITS = ("step", "epoch")
STATE_VERSION = 1


def _as_tuple(value: Any) -> Any:
    """A list/ListConfig as a tuple (``Structure`` validates it); anything else unchanged."""
    if value is None or isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        return value
    return tuple(value)


def _number(name: str, value: Any, integer: bool) -> None:
    kind = "an integer" if integer else "a number"
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float)) and value >= 0
    if not ok or (not integer and not math.isfinite(value)):
        raise ValueError(f"prune {name}={value!r} is not allowed; it must be {kind} >= 0")


class PruningCallback(pl.Callback):
    """Prune ``nn.Linear``/``nn.Conv2d`` layers during ``Trainer.fit`` following a schedule.

    Args:
        method: ``"agp"`` (cubic, Zhu & Gupta 2017), ``"oneshot"`` (``final`` at ``start``) or ``"iterative"``
            (``iterations`` equal-ratio rounds from ``start`` to ``end``).
        initial: AGP sparsity at ``start``, in ``[0, final]``.
        final: sparsity reached at ``end`` and held, in ``[0, 1)``.
        start, end: pruning window, ``start <= end``, in ``unit``s.
        every: AGP prunes every ``every`` ``unit``s (>= 1 step after conversion).
        unit: ``"step"`` (optimizer steps, integers) or ``"epoch"`` (numbers, may be fractional; converted with
            ``ceil(trainer.num_training_batches / accumulate_grad_batches)`` optimizer steps per epoch).
        iterations: rounds of ``"iterative"``.
        scope: ``"layerwise"`` or ``"global"``.
        score: ``"magnitude"``, ``"movement"`` (Sanh et al. 2020, hard: accumulated ``-w * grad``) or
            ``"soft_movement"`` (learned scores, straight-through top-k, regulariser ``score_reg``; ``score_lr``).
        block: ``[rows, cols]`` blocks of the (im2col-flattened) weight, e.g. ``[4, 1]`` or ``[16, 16]``; or
        n_m: ``[n, m]``: at most ``m - n`` pruned of every ``m`` consecutive inputs (``final <= 1 - n/m``).
        targets: per-layer final sparsities, a JSON/YAML file or a mapping ``{fqn or pattern: sparsity}``
            (``spruce.prune.targets``); each layer follows the schedule to its own final, others to ``final``.
        layers: fqn or patterns (``fnmatch``, or ``"re:<regex>"``) of the layers to prune; ``None``: the
            ``family``'s default layers (``spruce.prune.default_prunable``).
        family: ``"vgg"`` or ``"bert"``; ``None``: inferred from the model when ``layers`` is ``None``.
        prune_classifier: VGG only: whether the last Linear (the classifier) is pruned by default.
        module_attr: attribute of the LightningModule holding the model the layer names refer to.
        verify_ranks: under data parallelism, all-gather a digest of the masks at every pruning step and raise
            ``RuntimeError`` naming the step and ranks if they differ (one tiny collective per pruning step).
        mask_log: a directory; every rank appends ``{"step", "target", "digest"}`` per pruning step to
            ``rank<k>.jsonl`` there (for tests and audits; ``None``: nothing written).
    """

    def __init__(self, method: str = "agp", initial: float = 0.0, final: float = 0.9, start: float = 0,
                 end: float = 1000, every: float = 1, unit: str = "step", iterations: int = 5,
                 scope: str = "layerwise", score: str = "magnitude", layers: Sequence[str] | None = None,
                 family: str | None = None, prune_classifier: bool = True, module_attr: str | None = "model",
                 block: Sequence[int] | None = None, n_m: Sequence[int] | None = None,
                 targets: str | Mapping[str, float] | None = None, score_lr: float = 0.01,
                 score_reg: float = 0.0, verify_ranks: bool = True, mask_log: str | None = None) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"prune method={method!r} is not allowed; allowed: {', '.join(METHODS)}")
        if unit not in UNITS:
            raise ValueError(f"prune unit={unit!r} is not allowed; allowed: {', '.join(UNITS)}")
        if scope not in SCOPES:
            raise ValueError(f"prune scope={scope!r} is not allowed; allowed: {', '.join(SCOPES)}")
        if score not in SCORES:
            raise ValueError(f"prune score={score!r} is not allowed; allowed: {', '.join(SCORES)}")
        integer = unit == "step"
        for name, value in (("start", start), ("end", end), ("every", every)):
            _number(name, value, integer)
        if every <= 0:
            raise ValueError(f"prune every={every!r} is not allowed; it must be > 0")
        # Validate the schedule now (configuration errors at start-up), with placeholder steps for epochs.
        check_agp_args(initial, final, 0, 1 if end > start else 0, 1)
        if start > end:
            raise ValueError(f"prune start={start} > end={end} is not allowed; pruning must start at or before it ends")
        iterative_prune_steps(0, 1, iterations)
        if layers is not None:
            layers = [layers] if isinstance(layers, str) else [str(x) for x in layers]  # ListConfig -> list
        if family is not None and family not in ("vgg", "bert"):
            raise ValueError(f"prune family={family!r} is not allowed; allowed: vgg, bert (or null)")
        self.method, self.initial, self.final = method, float(initial), float(final)
        self.start, self.end, self.every, self.unit, self.iterations = start, end, every, unit, iterations
        self.layers, self.family, self.prune_classifier, self.module_attr = layers, family, prune_classifier, module_attr
        structure = Structure(block=_as_tuple(block), n_m=_as_tuple(n_m))
        structure.check_sparsity(self.final, "prune.final")
        self.targets = load_targets(targets)
        if self.targets is not None:
            if scope != "layerwise":
                raise ValueError("prune.targets (per-layer sparsities) needs prune.scope=layerwise")
            for key, v in self.targets.items():
                structure.check_sparsity(v, f"prune.targets[{key!r}]")
        self.layer_finals: dict[str, float] | None = None  # resolved in setup
        self.pruner = MagnitudePruner(scope=scope, score=score, structure=structure, score_lr=score_lr,
                                      score_reg=score_reg)
        self.steps: dict[str, int] | None = None  # the schedule in optimizer steps, set in on_train_start
        self.last_step = -1  # global step of the last schedule evaluation that changed the masks
        self.verify_ranks, self.mask_log = bool(verify_ranks), mask_log
        # unit="epoch": schedule position in epochs = epoch0 + (global_step - step0) / steps_per_epoch; the anchor
        # (epoch0, step0) is set in on_train_start (0, 0 fresh; the saved position and the resumed step on resume)
        self._anchor: tuple[float, int] = (0.0, 0)
        self._resumed_epoch: float | None = None
        self._spe: int | None = None
        self._trainer: pl.Trainer | None = None
        self._sparsity: dict[str, float] = {}
        self._hooks: list[Any] = []

    # ---- helpers ----------------------------------------------------------------------------------------
    def target_module(self, pl_module: nn.Module) -> nn.Module:
        """The model whose layer names the callback uses (``pl_module.<module_attr>`` or ``pl_module``)."""
        inner = getattr(pl_module, self.module_attr, None) if self.module_attr else None
        return inner if isinstance(inner, nn.Module) else pl_module

    def resolve_layers(self, model: nn.Module) -> list[str]:
        """The layer fqn this callback prunes in ``model``."""
        if self.layers is not None:
            return prunable_layers(model, include=self.layers)
        family = self.family or infer_family(model)
        if family is None:
            raise ValueError(f"cannot infer the model family of {type(model).__name__}; "
                             f"set prune.layers=[...] or prune.family=vgg|bert")
        return default_prunable(model, family, prune_classifier=self.prune_classifier)

    def steps_per_epoch(self, trainer: pl.Trainer) -> int:
        """Optimizer steps per training epoch."""
        spe = optimizer_steps_per_epoch(trainer)
        if spe is None:
            raise ValueError(f"prune unit='epoch' needs a sized train dataloader (num_training_batches="
                             f"{trainer.num_training_batches}); use prune.unit=step")
        return spe

    def schedule_steps(self, trainer: pl.Trainer) -> dict[str, int]:
        """``start``/``end``/``every`` converted to optimizer steps."""
        if self.unit == "step":
            return {"start": int(self.start), "end": int(self.end), "every": int(self.every)}
        spe = self.steps_per_epoch(trainer)
        return {"start": round(self.start * spe), "end": round(self.end * spe),
                "every": max(1, round(self.every * spe))}

    def epoch_position(self, global_step: int) -> float:
        """``unit="epoch"``: epochs of training done after ``global_step`` optimizer steps of this run."""
        epoch0, step0 = self._anchor
        return epoch0 + (global_step - step0) / (self._spe or 1)

    def schedule_step(self, global_step: int) -> int:
        """The step on this run's schedule (``self.steps``) for the trainer's ``global_step``: the same number
        with ``unit="step"``; with ``unit="epoch"`` the epoch position in this run's steps per epoch (equal to
        ``global_step`` unless the run resumed with another number of steps per epoch, e.g. on more ranks)."""
        if self.unit == "step" or self._resumed_epoch is None:
            return global_step
        return round(self.epoch_position(global_step) * (self._spe or 1))

    def target_at(self, step: int) -> float:
        """The schedule's target sparsity after ``step`` optimizer steps (needs ``self.steps``)."""
        s = self.steps
        if s is None:
            raise ValueError("the schedule is not resolved yet; it is set in on_train_start")
        if self.method == "agp":
            return agp_sparsity(step, self.initial, self.final, s["start"], s["end"], s["every"])
        if self.method == "oneshot":
            return oneshot_sparsity(step, self.final, s["start"])
        return iterative_sparsity(step, self.final, s["start"], s["end"], self.iterations)

    def layer_targets_at(self, step: int) -> float | dict[str, float]:
        """The schedule's target after ``step`` steps: one number, or ``{fqn: sparsity}`` with per-layer targets
        (each layer follows the same schedule to its own final; ``initial`` is capped at that final)."""
        if self.layer_finals is None:
            return self.target_at(step)
        s = self.steps
        if s is None:
            raise ValueError("the schedule is not resolved yet; it is set in on_train_start")
        out = {}
        for name, final in self.layer_finals.items():
            if self.method == "agp":
                out[name] = agp_sparsity(step, min(self.initial, final), final, s["start"], s["end"], s["every"])
            elif self.method == "oneshot":
                out[name] = oneshot_sparsity(step, final, s["start"])
            else:
                out[name] = iterative_sparsity(step, final, s["start"], s["end"], self.iterations)
        return out

    def sparsity(self) -> dict[str, float]:
        """Achieved sparsity ``{fqn: fraction of zeros, ..., "overall": float}`` of the pruned layers."""
        return self.pruner.sparsity()

    def _maybe_prune(self, global_step: int) -> None:
        target = self.layer_targets_at(self.schedule_step(global_step))
        if target != self.pruner.target:
            self._sparsity = self.pruner.step(target)
            self.last_step = global_step
            self._after_pruning(global_step, target)
        elif not self._sparsity:
            self._sparsity = self.pruner.sparsity()

    def mask_digest(self) -> str:
        """SHA-256 (hex) over the layer names and mask bits, in layer order: equal iff the masks are equal."""
        h = hashlib.sha256()
        for name, mask in self.pruner.masks().items():
            h.update(name.encode())
            h.update(str(tuple(mask.shape)).encode())
            h.update(mask.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def _after_pruning(self, global_step: int, target: Any) -> None:
        """Under data parallelism compare the ranks' masks (``verify_ranks``); append to ``mask_log``."""
        trainer = self._trainer
        world = int(getattr(trainer, "world_size", 1)) if trainer is not None else 1
        rank = int(getattr(trainer, "global_rank", 0)) if trainer is not None else 0
        if not (self.verify_ranks or self.mask_log):
            return
        digest = self.mask_digest()
        if self.mask_log:
            log = Path(self.mask_log)
            log.mkdir(parents=True, exist_ok=True)
            with open(log / f"rank{rank}.jsonl", "a") as f:
                entry = {"step": int(global_step), "target": target, "digest": digest, "world_size": world}
                if self.unit == "epoch":
                    entry.update(epoch=self.epoch_position(global_step), steps_per_epoch=self._spe)
                f.write(json.dumps(entry) + "\n")
        if self.verify_ranks and world > 1 and trainer is not None:
            mine = torch.tensor([int(digest[:15], 16)], dtype=torch.int64)  # 60 bits: fits int64 as a positive
            mine = mine.to(trainer.strategy.root_device)
            every = trainer.strategy.all_gather(mine).reshape(-1).cpu().tolist()
            if len(set(every)) != 1:
                raise RuntimeError(f"pruning masks differ across data-parallel ranks at step {global_step} "
                                   f"(digests per rank: {[f'{d:015x}' for d in every]})")

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # ---- Lightning hooks --------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        model = self.target_module(pl_module)
        if not any(isinstance(m, MASKABLE) for m in model.modules()):
            raise ValueError(f"{type(pl_module).__name__} has no nn.Linear/nn.Conv2d when callbacks are set up; "
                             f"build the model in LightningModule.__init__ (callbacks' setup runs before "
                             f"LightningModule.setup/configure_model, and masks must exist before a restore)")
        layers = self.resolve_layers(model)
        if self.targets is not None:
            self.layer_finals = resolve_targets(self.targets, layers, self.final)
        self.pruner.prepare(model, layers)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = trainer
        self.steps = self.schedule_steps(trainer)
        self._spe = self.steps_per_epoch(trainer) if self.unit == "epoch" else None
        epoch0 = self._resumed_epoch if self._resumed_epoch is not None else (
            trainer.global_step / self._spe if self._spe else 0.0)
        self._anchor = (float(epoch0), int(trainer.global_step))
        self._remove_hooks()
        self._hooks = [self.pruner.hook_optimizer(opt) for opt in trainer.optimizers]
        self.pruner.apply_masks()
        self._sparsity = {}
        self._maybe_prune(trainer.global_step)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.pruner.accumulate()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._maybe_prune(trainer.global_step)
        pl_module.log("prune/target", self.target_at(self.schedule_step(trainer.global_step)), on_step=True,
                      on_epoch=False, batch_size=1)
        pl_module.log("sparsity/overall", self._sparsity["overall"], on_step=True, on_epoch=False,
                      prog_bar=True, batch_size=1)
        pl_module.log_dict({f"sparsity/{k}": v for k, v in self._sparsity.items() if k != "overall"},
                           on_step=True, on_epoch=False, batch_size=1)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pruner.modules:
            self.pruner.apply_masks()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    # ---- checkpoint state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {"version": STATE_VERSION, "method": self.method, "pruner": self.pruner.state_dict(),
                 "last_step": int(self.last_step), "steps": dict(self.steps) if self.steps else None}
        if self.unit == "epoch" and self._trainer is not None and self._spe:
            state["epoch_position"] = float(self.epoch_position(int(self._trainer.global_step)))
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("method") != self.method:
            raise ValueError(f"checkpoint prune method={state_dict.get('method')!r} differs from this run's "
                             f"method={self.method!r}; resume with the same prune settings")
        self.pruner.load_state_dict(state_dict["pruner"])
        self.last_step = int(state_dict.get("last_step", -1))
        pos = state_dict.get("epoch_position")
        self._resumed_epoch = None if pos is None else float(pos)
