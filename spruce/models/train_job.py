"""``train(cfg, run_dir)``: the job behind ``train.py`` - build model and data, train with Lightning, prune with
``PruningCallback``, save ``checkpoints/last.ckpt`` and print/write the summary.

``cfg`` is the plain-dict form of ``conf/train.yaml`` (``OmegaConf.to_container(cfg, resolve=True)``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from spruce.models.train_config import ConfigError, check_config


def run_name(cfg: dict[str, Any], init: str) -> str:
    """``<model>[-random-init]-<data>-<method><final>``, e.g. ``vgg16-digits-agp0.9``."""
    model = cfg["model"]["name"] + ("-random-init" if init == "random-init" else "")
    prune = cfg["prune"]
    tag = "dense" if prune["method"] == "none" else f"{prune['method']}{prune['final']}"
    if prune["method"] != "none":
        if prune.get("score", "magnitude") != "magnitude":
            tag += f"-{prune['score']}"
        if prune.get("block"):
            tag += f"-block{prune['block'][0]}x{prune['block'][1]}"
        if prune.get("n_m"):
            tag += f"-{prune['n_m'][0]}of{prune['n_m'][1]}"
        if prune.get("targets") is not None:
            tag += "-targets"
    return f"{model}-{cfg['data']['name']}-{tag}"


def build_pruning_callback(prune: dict[str, Any], family: str) -> Any:
    """The ``PruningCallback`` for ``prune`` (``None`` for ``method: none``)."""
    if prune["method"] == "none":
        return None
    from spruce.prune.callback import PruningCallback
    step = prune["unit"] == "step"
    conv = int if step else float
    return PruningCallback(method=prune["method"], initial=float(prune["initial"]), final=float(prune["final"]),
                           start=conv(prune["start"]), end=conv(prune["end"]), every=conv(prune["every"]),
                           unit=prune["unit"], iterations=int(prune.get("iterations", 5)), scope=prune["scope"],
                           score=prune.get("score", "magnitude"), layers=prune.get("layers"), family=family,
                           prune_classifier=bool(prune.get("prune_classifier", True)), block=prune.get("block"),
                           n_m=prune.get("n_m"), targets=prune.get("targets"),
                           score_lr=float(prune.get("score_lr", 0.01)), score_reg=float(prune.get("score_reg", 0.0)),
                           verify_ranks=bool(prune.get("verify_ranks", True)), mask_log=prune.get("mask_log"))


def build_logger(cfg: dict[str, Any], run_dir: Path, name: str) -> Any:
    """Lightning logger for ``cfg["logger"]``: W&B (offline unless ``offline: false``), CSV, or ``False``."""
    kind = cfg["logger"]["name"]
    if kind == "none":
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger
        return CSVLogger(save_dir=str(run_dir), name="csv")
    from lightning.pytorch.loggers import WandbLogger
    lg = cfg["logger"]
    # group: logger.group, else $WANDB_RUN_GROUP (wandb.init reads it; the trade-off driver sets it), else none;
    # train.py sets logger.group to the sweep's name under -m so that one sweep is one W&B group
    return WandbLogger(name=name, save_dir=str(run_dir), offline=bool(lg.get("offline", True)),
                       project=lg.get("project", "spruce"), entity=lg.get("entity"), tags=list(lg.get("tags") or []),
                       group=lg.get("group") or None)


def check_trainer_strategy(trainer: Any) -> None:
    """Refuse a built Trainer whose strategy the pruning cannot honour (``train_config.check_strategy`` checked the
    name; this catches what ``strategy=auto`` resolved to, e.g. ``ddp_fork`` in a notebook)."""
    from spruce.models.train_config import check_strategy
    kind = type(trainer.strategy).__name__
    launcher = type(getattr(trainer.strategy, "launcher", None)).__name__
    if kind == "SingleDeviceStrategy":
        return
    if kind == "DDPStrategy":
        if launcher == "_MultiProcessingLauncher":  # spawned/forked workers (e.g. auto in a notebook)
            check_strategy(f"ddp_{getattr(trainer.strategy.launcher, '_start_method', 'spawn')}")
        return
    check_strategy(getattr(trainer.strategy, "strategy_name", kind))


def _save_atomic(trainer: Any, path: Path) -> None:
    trainer.save_checkpoint(str(path), weights_only=False)  # atomic: the trainer's AtomicCheckpointIO


def prepare(cfg: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Validate ``cfg`` and build ``(model, datamodule, tokenizer)``; writes nothing. Raises ``ValueError``."""
    check_config(cfg)
    import random

    import numpy as np
    seed = int(cfg["seed"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # the model's initial weights depend on the seed only
    from spruce.data import KINDS, build_datamodule
    from spruce.models import build_model
    from spruce.models.bert import build_tokenizer

    model_cfg = {k: v for k, v in cfg["model"].items() if k != "optim"}
    data_cfg = dict(cfg["data"])
    tokenizer = None
    if KINDS[data_cfg["name"]] == "text":
        tokenizer = build_tokenizer(model_cfg["name"], model_cfg.get("pretrained"))
    dm = build_datamodule(data_cfg.pop("name"), tokenizer=tokenizer, **data_cfg)
    dm.prepare_data()
    dm.setup("fit")  # load now: a missing/bad data set fails here, before anything is written
    build_kwargs = dict(model_cfg, num_classes=int(dm.num_classes))
    if model_cfg["name"] == "vgg16":
        build_kwargs["input_size"] = int(dm.input_size)
    model = build_model(build_kwargs.pop("name"), **build_kwargs)
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None:
        from spruce.models.checkpoint import load_checkpoint
        saved = load_checkpoint(ckpt)["spruce"]["model"]
        if int(saved.get("num_classes", -1)) != int(dm.num_classes):
            raise ConfigError(f"ckpt_path {ckpt!r} has {saved.get('num_classes')} classes but data="
                              f"{cfg['data']['name']} has {dm.num_classes}; resume on the same data")
    return model, dm, tokenizer


def train(cfg: dict[str, Any], run_dir: str | os.PathLike) -> dict[str, Any]:
    """Train (and prune) as ``cfg`` says; outputs go under ``run_dir``. Returns the summary dict.

    Raises ``ValueError`` (``ConfigError`` for configuration problems, found before anything is written).
    """
    run_dir = Path(run_dir)
    model, dm, _ = prepare(cfg)  # validates everything first (threads included)
    if cfg.get("threads") is not None:
        torch.set_num_threads(int(cfg["threads"]))

    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from spruce.models.module import SpruceModule, model_sparsity
    from spruce.models.summary import print_summary, write_summary

    L.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
    init = model.spruce_config["init"]
    name = run_name(cfg, init)
    prune_cb = build_pruning_callback(cfg["prune"], model.family)
    module = SpruceModule(model, cfg["model"]["optim"], dm.meta() if hasattr(dm, "meta") else {},
                          run={"name": name, "prune": dict(cfg["prune"]), "seed": int(cfg["seed"])})
    ckpt_dir = run_dir / "checkpoints"
    # "last.ckpt" rewritten after every epoch (resume after an interruption) and once more at the end
    callbacks: list[Any] = [ModelCheckpoint(dirpath=str(ckpt_dir), filename="last", monitor=None, save_top_k=1,
                                            enable_version_counter=False)]
    if prune_cb is not None:
        callbacks.append(prune_cb)
    logger = build_logger(cfg, run_dir, name)
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer_kwargs = {k: v for k, v in cfg["trainer"].items() if v is not None or k.startswith("limit_")}
    trainer_kwargs = {k: (1.0 if v is None else v) for k, v in trainer_kwargs.items()}
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from spruce.models.checkpoint_io import AtomicCheckpointIO
    try:
        trainer = L.Trainer(default_root_dir=str(run_dir), logger=logger, callbacks=callbacks,
                            plugins=[AtomicCheckpointIO()], **trainer_kwargs)
    except (TypeError, ValueError, MisconfigurationException) as e:  # unknown/invalid trainer.* keys
        raise ConfigError(f"trainer: {str(e).splitlines()[0]}") from None
    check_trainer_strategy(trainer)
    if cfg.get("threads") is None and trainer.num_devices > 1 and trainer.strategy.root_device.type == "cpu":
        # several ranks on this machine's CPUs: share the cores instead of every rank using all of them
        torch.set_num_threads(max(1, torch.get_num_threads() // trainer.num_devices))
    rank0 = trainer.is_global_zero
    wandb_dir = None
    try:
        if logger:
            logger.log_hyperparams({k: v for k, v in cfg.items() if k != "hydra"})
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
        final = module.evaluate(dm.val_dataloader())
        module.metrics.update(val_acc=final["acc"], val_loss=final["loss"], val_epoch=int(trainer.current_epoch))
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        last = ckpt_dir / "last.ckpt"
        _save_atomic(trainer, last)
        sparsity = model_sparsity(model)
        summary = {
            "run_name": name, "model": cfg["model"]["name"], "init": init,
            "params": sum(p.numel() for p in model.parameters()), "data": cfg["data"]["name"],
            "num_classes": int(dm.num_classes),
            "prune": ("none (dense baseline)" if cfg["prune"]["method"] == "none" else
                      f"{cfg['prune']['method']} -> {cfg['prune']['final']} ({cfg['prune']['scope']}, "
                      f"{cfg['prune']['unit']}s {cfg['prune']['start']}..{cfg['prune']['end']})"),
            **{k: module.metrics.get(k) for k in ("val_acc_initial", "val_acc_dense", "dense_epoch", "val_acc")},
            "sparsity": sparsity, "global_step": int(trainer.global_step), "epochs": int(trainer.current_epoch),
            "checkpoint": str(last), "run_dir": str(run_dir),
            "threads": torch.get_num_threads(), "world_size": int(trainer.world_size), "wandb_group": None,
        }
        if not rank0:  # one summary, one W&B run: rank 0 reports (the checkpoint above is written by rank 0 only)
            return summary
        if logger and cfg["logger"]["name"] == "wandb":
            exp = logger.experiment
            wandb_dir = str(Path(exp.dir).parent)
            summary["wandb_group"] = exp.group or None
            exp.summary.update({"final/val_acc": summary["val_acc"], "final/val_acc_dense": summary["val_acc_dense"],
                                "final/sparsity_overall": sparsity["overall"], "run_name": name, "init": init})
        elif logger:
            logger.log_metrics({"final/val_acc": summary["val_acc"], "final/sparsity_overall": sparsity["overall"]},
                               step=int(trainer.global_step))
            logger.save()
        summary["wandb_dir"] = wandb_dir
        write_summary(summary, run_dir)
        print_summary(summary)
        return summary
    finally:
        if logger and cfg["logger"]["name"] == "wandb":
            import wandb
            if wandb.run is not None:
                wandb.finish()
