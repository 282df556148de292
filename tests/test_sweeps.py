"""Hydra launchers for sweeps (issue 15): ``train.py -m hydra/launcher=joblib`` runs jobs in parallel processes
with cores // n_jobs torch threads each and one W&B group per sweep; ``submitit_local`` runs the same sweep through
submitit; the shipped ``hydra/launcher=slurm`` maps the trainer's ranks onto SLURM tasks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from spruce.models.train_config import launcher_threads

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.width_div=16", "data.limit=200", "trainer=smoke", "trainer.max_epochs=1", "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false", "logger=wandb", "prune.unit=step", "prune.start=0", "prune.end=2",
        "prune.every=1"]
CORES = len(os.sched_getaffinity(0))


def sweep(tmp_path: Path, *launcher: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *launcher, "prune.final=0.5,0.75", *TINY,
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_RUN_GROUP", "SLURM_CPUS_PER_TASK")}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/summary.json"))]
    return proc, summaries


def check_sweep(summaries: list[dict], threads: int | None, tmp_path: Path) -> None:
    assert [s["run_name"] for s in summaries] == ["vgg16-digits-agp0.5", "vgg16-digits-agp0.75"]
    for s, final in zip(summaries, (0.5, 0.75)):
        assert s["sparsity"]["overall"] == pytest.approx(final, abs=0.01)
        assert Path(s["checkpoint"]).is_file() and Path(s["wandb_dir"]).is_dir()
        if threads is not None:
            assert s["threads"] == threads
    groups = {s["wandb_group"] for s in summaries}
    assert groups == {"sweep-" + "-".join((tmp_path / "sweep").parts[-2:])}, groups  # one W&B group per sweep


def test_joblib_launcher_runs_two_jobs_in_parallel_sharing_the_cores(tmp_path):
    proc, summaries = sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    target = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    check_sweep(summaries, launcher_threads({"_target_": target, "n_jobs": 2}, {}, CORES), tmp_path)
    assert CORES < 2 or summaries[0]["threads"] == CORES // 2


def test_submitit_local_launcher_runs_the_sweep(tmp_path):
    proc, summaries = sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1",
                            "hydra.launcher.timeout_min=10")
    assert "Submitit 'local' sweep output dir" in proc.stdout + proc.stderr
    check_sweep(summaries, 1, tmp_path)
    assert list((tmp_path / "sweep" / ".submitit").iterdir()), "submitit's job folders"


def test_slurm_launcher_config_maps_ranks_to_tasks():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm", "trainer.devices=4",
                                                      "trainer.num_nodes=2", "trainer.strategy=ddp"],
                      return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    resolved = {k: OmegaConf.select(cfg, f"hydra.launcher.{k}") for k in ("tasks_per_node", "gpus_per_node", "nodes")}
    assert resolved == {"tasks_per_node": 4, "gpus_per_node": 4, "nodes": 2}
    assert launcher_threads(launcher, {"SLURM_CPUS_PER_TASK": "8"}, 64) == 8


def test_several_local_ranks_under_a_sweep_are_refused(tmp_path):
    """Lightning's ddp re-runs the command line per rank: under -m that would start the sweep again in each."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "trainer.devices=2", "trainer.accelerator=cpu",
                           "prune.final=0.5", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 1
    assert "error: trainer.devices=2 under train.py -m is not allowed here; sweep on a cluster with " \
           "hydra/launcher=slurm" in proc.stderr
    assert not list((tmp_path / "sweep").glob("0*")), "no job directory left behind"
