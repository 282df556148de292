"""Train and prune a model: ``python train.py [model=vgg16] [data=digits] [prune=agp] [prune.final=0.9] ...``

``mode=sensitivity ckpt_path=<.ckpt>`` runs the per-layer sensitivity analysis instead
(``spruce.models.sensitivity_job``); ``prune.targets=speed`` first derives per-layer targets from the performance
model (``spruce.study.guided``).

A thin Hydra wrapper over ``spruce.models.train_job.train``. Configuration errors print one ``error: ...`` line,
exit with status 1 and leave no run directory behind.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

HYDRA_ONLY = {".hydra", "train.log"}


def _remove_if_empty_run(run_dir: Path) -> None:
    """Delete a run dir that holds only what Hydra wrote before the job failed, and, inside Hydra's default layout
    (``outputs/`` or ``multirun/``), the dated parents it made that are now empty. A parent outside that layout (a
    ``hydra.run.dir`` the user chose) is never removed, even when empty: it may be theirs, or a folder another run is
    about to write into."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= HYDRA_ONLY:
        shutil.rmtree(run_dir)
        root = next((p for p in run_dir.parents if p.name in ("outputs", "multirun")), None)
        parent = run_dir.parent
        while root is not None and parent != root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def _sweep_settings(plain: dict, hc) -> None:
    """Under ``-m``: threads per job from the launcher (parallel jobs share the cores) when ``threads`` is null,
    and one W&B group per sweep (``logger.group`` null -> the sweep directory's name); several local ranks refused
    (Lightning's ddp re-runs the command line, which would start the sweep again in every rank)."""
    import os

    from hydra.types import RunMode
    if hc.mode != RunMode.MULTIRUN:
        return
    from spruce.models.train_config import ConfigError, launcher_threads
    devices = (plain.get("trainer") or {}).get("devices", 1)
    several = devices in (-1, "-1") or (isinstance(devices, int) and devices > 1) or (
        isinstance(devices, list) and len(devices) > 1)
    if several and "SLURM_NTASKS" not in os.environ:
        # Lightning's ddp would re-run this command line, -m included, once per extra rank: a sweep per rank
        raise ConfigError(f"trainer.devices={devices!r} under train.py -m is not allowed here; sweep on a cluster "
                          f"with hydra/launcher=slurm (one SLURM task per rank), or run each point without -m")
    if plain.get("threads") is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        plain["threads"] = launcher_threads(OmegaConf.to_container(hc.launcher, resolve=True), dict(os.environ),
                                            cores)
    logger = plain.get("logger") or {}
    if logger.get("name") == "wandb" and not logger.get("group") and not os.environ.get("WANDB_RUN_GROUP"):
        logger["group"] = "sweep-" + "-".join(Path(hc.sweep.dir).parts[-2:])


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
        _sweep_settings(plain, HydraConfig.get())
        mode = plain.get("mode", "train")
        if mode == "sensitivity":
            from spruce.models.sensitivity_job import run_sensitivity
            return run_sensitivity(plain, run_dir)
        if mode != "train":
            raise ValueError(f"mode={mode!r} is not allowed; allowed: train, sensitivity")
        if plain["prune"].get("targets") == "speed":  # per-layer targets from the performance model
            from spruce.study.guided import speed_targets_file
            plain["prune"]["targets"] = str(speed_targets_file(plain, run_dir))
        from spruce.models.train_job import train
        return train(plain, run_dir)
    except ValueError as e:  # ConfigError and the library's one-line ValueErrors
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        _remove_if_empty_run(run_dir)
        sys.exit(1)


if __name__ == "__main__":
    main()
