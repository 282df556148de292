"""SIGKILL at targeted moments (issue 18): every file left is complete and loadable, and a re-run or resume works.

Each child process patches one call so that it kills itself (``SIGKILL``, no clean-up possible) at the worst
moment: ``train`` while the second ``last.ckpt`` is being put in place with ``$TMPDIR`` on another filesystem
(``/dev/shm``; the cross-filesystem move Lightning's own writer did is reproduced as a half copy then the kill),
``export`` after its first layer file, ``bench`` after plan/layers/rows but before the summary.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from test_bad_inputs import TINY_BENCH, TINY_TRAIN, _compose, _sparse_ckpt

ROOT = Path(__file__).resolve().parents[1]

TRAIN_CHILD = r"""
import json, os, shutil, signal, sys
cfg, run_dir = json.load(open(sys.argv[1])), sys.argv[2]
from spruce.models.train_job import train
seen = {"n": 0}
def second_save(dst):
    if str(dst).endswith("last.ckpt"):
        seen["n"] += 1
        return seen["n"] == 2
    return False
real_replace, real_move = os.replace, shutil.move
def replace(src, dst, *a, **k):  # the rename of an atomic write: killed just before it
    if second_save(dst):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *a, **k)
def move(src, dst, *a, **k):  # a cross-filesystem move is a copy into the target: killed half way
    if second_save(dst):
        data = open(src, "rb").read()
        with open(dst, "wb") as f:
            f.write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real_move(src, dst, *a, **k)
os.replace, shutil.move = replace, move
train(cfg, run_dir)
"""

EXPORT_CHILD = r"""
import os, signal, sys
from spruce.sparse import export as ex
real, seen = ex.write_matrix, {"n": 0}
def write_matrix(*a, **k):
    seen["n"] += 1
    if seen["n"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
ex.write_matrix = write_matrix
ex.export_checkpoint(sys.argv[1], sys.argv[2], formats=["npz", "mtx"], kinds=[], report=False, progress=False)
"""

BENCH_CHILD = r"""
import json, os, signal, sys
from spruce.deploy import pipeline
real = pipeline.atomic_write
def atomic_write(path, data):
    if os.path.basename(str(path)) == "summary.md":
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, data)
pipeline.atomic_write = atomic_write
pipeline.bench(json.load(open(sys.argv[1])))
"""


def _child(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="offline", **(env or {}))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env=environ, cwd=ROOT)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm (a filesystem other than the run dir's)")
def test_train_killed_while_replacing_last_ckpt_keeps_the_previous_one(tmp_path) -> None:
    from spruce.models.checkpoint import load_checkpoint
    from spruce.models.checkpoint_io import stale_temporaries
    from spruce.models.train_job import train
    cfg = _compose("train", [*TINY_TRAIN, "trainer.max_epochs=2"])
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    run_dir = tmp_path / "run"
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="spruce-kill-") as shm:
        r = _child(TRAIN_CHILD, str(tmp_path / "cfg.json"), str(run_dir), env={"TMPDIR": shm})
        assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
        assert not any(Path(shm).rglob("*")), f"checkpoint bytes left in $TMPDIR: {list(Path(shm).rglob('*'))}"
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(last)  # the first epoch's checkpoint, whole
    assert ckpt["epoch"] == 0
    # resume from it in the same run dir: finishes, and the killed save's temporary file is gone
    summary = train(dict(cfg, ckpt_path=str(last)), run_dir)
    assert summary["epochs"] == 2
    assert load_checkpoint(last)["epoch"] >= 1
    assert stale_temporaries(last) == []


def test_export_killed_mid_way_leaves_no_export_and_the_rerun_cleans_up(tmp_path) -> None:
    from spruce.sparse.export import export_checkpoint
    from spruce.sparse.manifest import read_export
    ckpt = tmp_path / "tiny.ckpt"
    _sparse_ckpt(ckpt)
    out = tmp_path / "exports" / "tiny"
    r = _child(EXPORT_CHILD, str(ckpt), str(out))
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not out.exists()
    assert list(out.parent.glob(".tiny.*.partial"))  # what the kill left: staging only
    export_checkpoint(ckpt, out, formats=["npz", "mtx"], kinds=[], report=False, progress=False)
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]
    assert set(read_export(out)) == {"0", "2"}


def test_bench_killed_before_the_summary_has_no_result_json_and_reruns(tmp_path) -> None:
    from spruce.deploy.pipeline import bench
    from spruce.deploy.plan import Plan
    from spruce.deploy.report import read_rows
    out = tmp_path / "bench"
    cfg = _compose("bench", [*TINY_BENCH, f"out_dir={out}"])
    cfg.update(model_explicit=True, group_choices={"model": "vgg16", "prune": "magnitude", "study": "default"})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    r = _child(BENCH_CHILD, str(tmp_path / "cfg.json"))
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    present = {p.name for p in out.iterdir()}
    assert "result.json" not in present, present  # the completion mark is absent: readers can tell
    assert {"plan.json", "rows.csv"} <= present
    assert Plan.load(out / "plan.json").layers and read_rows(out / "rows.csv")  # what is there is whole
    assert not [p for p in present if p.endswith(".tmp")]
    res = bench(cfg)
    assert Path(res["paths"]["result"]).is_file() and (out / "summary.md").is_file()
