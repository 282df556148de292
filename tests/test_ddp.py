"""Data-parallel training with pruning (issue 15): ``train.py trainer.strategy=ddp trainer.devices=2
trainer.accelerator=cpu`` (gloo), as a user runs it.

Every rank appends ``{step, target, digest}`` per pruning step to ``prune.mask_log/rank<k>.jsonl`` (a SHA-256 of
its masks); the tests compare those files across ranks, check the checkpoint's masks against them, and resume the
DDP checkpoint on 1 and on 2 ranks (other steps per epoch) with the schedule continuing in epochs.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spruce.prune.schedule import agp_sparsity

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.width_div=16", "data.limit=200", "logger=csv", "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0"]
DDP2 = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


def train(run: Path, *overrides: str, timeout: int = 240) -> subprocess.CompletedProcess:
    tiny = [o for o in TINY if not any(x.split("=")[0] == o.split("=")[0] for x in overrides)]
    cmd = [sys.executable, str(ROOT / "train.py"), *tiny, f"hydra.run.dir={run / 'run'}",
           f"prune.mask_log={run / 'masks'}", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def mask_log(run: Path) -> dict[int, list[dict]]:
    """``{rank: [entries]}`` of a run's mask log."""
    out = {}
    for f in sorted((run / "masks").glob("rank*.jsonl")):
        out[int(f.stem[4:])] = [json.loads(line) for line in f.read_text().splitlines()]
    return out


def checkpoint_digest(path: Path, layers: list[str]) -> str:
    """The callback's digest (``PruningCallback.mask_digest``) recomputed from a checkpoint's masks."""
    state = torch.load(path, weights_only=True, map_location="cpu")["state_dict"]
    h = hashlib.sha256()
    for name in layers:
        mask = state[f"model.{name}.weight_mask"]
        h.update(name.encode())
        h.update(str(tuple(mask.shape)).encode())
        h.update(mask.contiguous().numpy().tobytes())
    return h.hexdigest()


def pruner_state(path: Path) -> dict:
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    return next(v for k, v in ckpt["callbacks"].items() if "PruningCallback" in k)


@pytest.mark.parametrize("scope,score,logger", [("layerwise", "magnitude", "wandb"), ("global", "movement", "csv")])
def test_two_ranks_prune_identically_and_write_once(tmp_path, scope, score, logger):
    proc = train(tmp_path, *DDP2, "trainer=smoke", "prune.unit=step", "prune.start=0", "prune.end=4", "prune.every=1",
                 f"prune.scope={scope}", f"prune.score={score}", f"logger={logger}")
    logs = mask_log(tmp_path)
    assert sorted(logs) == [0, 1], "one mask log per rank"
    assert all(e["world_size"] == 2 for e in logs[0])
    steps = [e["step"] for e in logs[0]]
    assert len(steps) >= 3, f"expected several pruning steps, got {steps}"
    # bit-identical masks on both ranks at every pruning step (movement: from the all-reduced gradients)
    assert [(e["step"], e["target"], e["digest"]) for e in logs[0]] == \
           [(e["step"], e["target"], e["digest"]) for e in logs[1]]
    assert len({e["digest"] for e in logs[0]}) == len(steps), "every pruning step changed the masks"
    # the checkpoint is written once (rank 0), atomically, and holds the masks both ranks ended with
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt"], ckpts
    layers = pruner_state(tmp_path / "run" / "checkpoints" / "last.ckpt")["pruner"]["layers"]
    assert checkpoint_digest(tmp_path / "run" / "checkpoints" / "last.ckpt", layers) == logs[0][-1]["digest"]
    # one summary, printed once (rank 0 only)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["sparsity"]["overall"] == pytest.approx(0.9, abs=0.01)
    assert proc.stdout.count("Spruce training summary") == 1
    if logger == "wandb":  # one W&B run, from rank 0
        runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and summary["wandb_dir"] == str(runs[0]), runs


def test_resume_a_ddp_checkpoint_on_one_and_two_ranks(tmp_path):
    """2 ranks for 1 epoch (2 steps/epoch), then resume to epoch 2 on 1 rank (3 steps/epoch) and on 2 ranks: the
    AGP schedule (start 0, end 2 epochs, every 0.3) continues at epoch 1.0 in both, masks continue from the
    checkpoint's, and soft-movement scores (own Adam, from all-reduced gradients) stay identical across ranks."""
    sched = ["prune.start=0", "prune.end=2", "prune.every=0.3", "prune.score=soft_movement"]
    first = tmp_path / "first"
    train(first, *DDP2, *sched, "trainer.max_epochs=1")
    logs = mask_log(first)
    assert [(e["step"], e["digest"]) for e in logs[0]] == [(e["step"], e["digest"]) for e in logs[1]]
    ckpt = first / "run" / "checkpoints" / "last.ckpt"
    state = pruner_state(ckpt)
    assert state["epoch_position"] == pytest.approx(1.0) and state["steps"] == {"start": 0, "end": 4, "every": 1}
    assert sorted(state["pruner"]["movement"]["shadow"]) == sorted(state["pruner"]["layers"])  # pruned values
    saved_digest = checkpoint_digest(ckpt, state["pruner"]["layers"])
    assert saved_digest == logs[0][-1]["digest"]
    assert logs[0][-1]["target"] == pytest.approx(agp_sparsity(2, 0.0, 0.9, 0, 4, 1))  # 0.7875 at epoch 1

    for ranks, spe in ((1, 3), (2, 2)):
        run = tmp_path / f"resume{ranks}"
        extra = DDP2 if ranks == 2 else ["trainer.accelerator=cpu"]
        train(run, *extra, *sched, "trainer.max_epochs=2", f"ckpt_path={ckpt}")
        logs = mask_log(run)
        assert sorted(logs) == list(range(ranks))
        entries = logs[0]
        assert entries and all(e["steps_per_epoch"] == spe and e["world_size"] == ranks for e in entries)
        # global steps continue from the checkpoint's 2; the schedule continues in epochs from 1.0
        for e in entries:
            assert e["epoch"] == pytest.approx(1.0 + (e["step"] - 2) / spe)
            assert e["target"] == pytest.approx(agp_sparsity(round(e["epoch"] * spe), 0.0, 0.9, 0, 2 * spe, 1))
        assert entries[-1]["epoch"] == pytest.approx(2.0) and entries[-1]["target"] == pytest.approx(0.9)
        if ranks == 2:
            assert [(e["step"], e["digest"]) for e in logs[0]] == [(e["step"], e["digest"]) for e in logs[1]]
        # movement masks are not monotone (straight-through): a weight pruned before the checkpoint may come back
        # after the resume, and then with the value it had when pruned, kept in the checkpoint's pruner state (a
        # resume that lost it would revive it at 0); the final checkpoint has the masks both ranks ended with
        final = run / "run" / "checkpoints" / "last.ckpt"
        before = torch.load(ckpt, weights_only=True)["state_dict"]
        after = torch.load(final, weights_only=True)["state_dict"]
        for k, m in before.items():
            if k.endswith("weight_mask"):
                revived = after[k] & ~m
                w = after[k[:-len("_mask")]]
                assert (w[revived] != 0).all(), f"{k}: a weight revived after the resume came back at 0"
        assert checkpoint_digest(final, state["pruner"]["layers"]) == entries[-1]["digest"]


def _callback_on_a_small_model(world_digests):
    """A pruned callback whose fake 2-rank trainer all-gathers ``world_digests(mine)``."""
    from types import SimpleNamespace

    from torch import nn

    from spruce.prune.callback import PruningCallback
    cb = PruningCallback(final=0.5, layers=["0", "2"], unit="step", start=0, end=1)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    cb.pruner.prepare(model, ["0", "2"])
    cb.pruner.step(0.5)
    strategy = SimpleNamespace(root_device=torch.device("cpu"), all_gather=lambda t: torch.stack(world_digests(t)))
    cb._trainer = SimpleNamespace(world_size=2, global_rank=0, strategy=strategy)
    return cb


def test_verify_ranks_stops_a_run_whose_ranks_diverged():
    _callback_on_a_small_model(lambda t: [t, t.clone()])._after_pruning(3, 0.5)  # same digests: fine
    cb = _callback_on_a_small_model(lambda t: [t, t + 1])
    with pytest.raises(RuntimeError, match="masks differ across data-parallel ranks at step 3"):
        cb._after_pruning(3, 0.5)


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_stage_3", "ddp_spawn", "nonsense"])
def test_strategies_pruning_cannot_honour_are_refused_in_one_line(tmp_path, strategy):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"trainer.strategy={strategy}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: trainer.strategy='{strategy}' is not allowed")
    assert "allowed: auto, single_device, ddp" in lines[0]
    assert not (tmp_path / "run").exists()


def test_threads_per_sweep_job_share_the_cores():
    from spruce.models.train_config import launcher_threads
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher_threads({"_target_": joblib, "n_jobs": 2}, {}, 16) == 8
    assert launcher_threads({"_target_": joblib, "n_jobs": -1}, {}, 16) == 1
    assert launcher_threads({"_target_": joblib, "n_jobs": -2}, {}, 2) == 2
    assert launcher_threads({"_target_": joblib, "n_jobs": 3}, {}, 2) == 1
    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher_threads({"_target_": slurm, "cpus_per_task": 4}, {}, 64) == 4
    assert launcher_threads({"_target_": slurm, "cpus_per_task": 4}, {"SLURM_CPUS_PER_TASK": "6"}, 64) == 6
    assert launcher_threads({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, {}, 8) is None


def test_lr_schedule_continues_in_epochs_on_other_steps_per_epoch(tmp_path, monkeypatch):
    """A resume with other steps per epoch (another number of ranks; here other `limit_train_batches`, in one
    process) continues the warm-up + cosine LR schedule at the saved epoch position, not at the old step count."""
    import csv
    import math

    from test_bad_inputs import _compose
    from spruce.models.module import SpruceModule
    from spruce.models.train_job import train as train_in_process

    common = ["model.width_div=16", "data.limit=200", "logger=csv", "trainer.enable_progress_bar=false",
              "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1", "model.optim.warmup=0",
              "model.optim.lr=0.05", "trainer.max_epochs=2", "prune.final=0.5", "prune.start=0", "prune.end=1"]
    real_end = SpruceModule.on_train_epoch_end

    def stop_after_one_epoch(self):  # an interrupted run: its checkpoint is at epoch 1 of a 2-epoch schedule
        self.trainer.should_stop = True
    monkeypatch.setattr(SpruceModule, "on_train_epoch_end", stop_after_one_epoch, raising=False)
    train_in_process(_compose("train", [*common, "trainer.limit_train_batches=3"]), tmp_path / "first")
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert saved["global_step"] == 3 and saved["spruce"]["lr_epoch_position"] == pytest.approx(1.0)
    monkeypatch.setattr(SpruceModule, "on_train_epoch_end", real_end, raising=False)
    train_in_process(_compose("train", [*common, "trainer.limit_train_batches=2", f"ckpt_path={ckpt}"]),
                     tmp_path / "second")
    rows = list(csv.DictReader((tmp_path / "second" / "csv" / "version_0" / "metrics.csv").open()))
    lrs = [float(r["lr-SGD/pg1"]) for r in rows if r.get("lr-SGD/pg1")]  # one LR per parameter group
    # epoch 1 of 2 at 2 steps per epoch is steps 2 and 3 of 4: cosine at progress 0.5 (the LR the checkpoint holds)
    # and 0.75; the old step count (4 of 4) would have put the second at the schedule's end, 0
    assert lrs == pytest.approx([0.05 * 0.5 * (1 + math.cos(math.pi * p)) for p in (0.5, 0.75)], rel=1e-5)
    final = torch.load(tmp_path / "second" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert final["spruce"]["lr_epoch_position"] == pytest.approx(2.0)
