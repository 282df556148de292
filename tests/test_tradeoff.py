"""``sweep.py``: the trade-off command (issue 15) on tiny settings writes every file; bad input fails in one line
with nothing written; the report pieces (Pareto front, table, figure) from known rows."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from spruce.study.tradeoff import TradeoffConfig, from_dict, pareto, write_report

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.width_div=16", "data.limit=200",
        'train=["trainer=smoke","trainer.max_epochs=1","trainer.limit_val_batches=1","prune.unit=step",'
        '"prune.start=0","prune.end=2","prune.every=1"]',
        'bench=["compile=off","repeats=2","warmup=1","plan_repeats=1","plan_budget_s=0.02","progress=false",'
        '"kernels=[torch_csr]","accuracy.max_batches=1"]']


def sweep(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_tradeoff_command_on_tiny_settings_writes_every_file(tmp_path):
    out = tmp_path / "tradeoff"
    proc = sweep(*TINY, "sparsities=[0,0.8]", "n_jobs=2", "deploy=sparse", f"out_dir={out}", "progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("tradeoff.csv", "tradeoff.md", "tradeoff.png", "jobs.log"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "tradeoff.csv").open()))
    assert [float(r["sparsity"]) for r in rows] == [0.0, 0.8]
    assert float(rows[0]["achieved_sparsity"]) == 0.0
    assert float(rows[1]["achieved_sparsity"]) == pytest.approx(0.8, abs=0.01)
    assert [r["deploy"] for r in rows] == ["dense", "sparse"]
    assert "torch_csr" in rows[1]["kernels_used"]
    for r in rows:
        assert float(r["latency_ms_median"]) > 0 and float(r["weight_mb"]) > 0 and 0 <= float(r["accuracy"]) <= 1
    assert float(rows[1]["weight_mb"]) < float(rows[0]["weight_mb"])  # sparse formats hold fewer bytes at 80%
    md = (out / "tradeoff.md").read_text()
    assert "| 0.80 |" in md and "![trade-off](tradeoff.png)" in md and "Pareto front" in md
    # the training sweep went through Hydra's joblib launcher; each bench run wrote its result
    assert "Joblib.Parallel(n_jobs=2" in (out / "jobs.log").read_text()
    summaries = [json.loads((out / "train" / str(i) / "summary.json").read_text()) for i in (0, 1)]
    for i in (0, 1):
        assert (out / "bench" / f"{i}-s{(0, 0.8)[i]:g}" / "result.json").is_file()
    # one W&B group: both training runs, both bench runs (via WANDB_RUN_GROUP) and the trade-off run
    group = f"tradeoff-vgg16-digits-{out.name}"
    assert {s["wandb_group"] for s in summaries} == {group}
    assert f"W&B group: `{group}`" in md
    assert list((out / "wandb").glob("offline-run-*")), "the trade-off run"
    assert all(list((out / "bench" / d / "wandb").glob("offline-run-*")) for d in ("0-s0", "1-s0.8"))


@pytest.mark.parametrize("args,message", [
    (["sparsities=[0,1.5]"], "error: sparsities=[0, 1.5] is not allowed; give a non-empty list of numbers in [0, 1)"),
    (["deploy=dense"], "error: deploy='dense' is not allowed; allowed: auto, sparse"),
    (['train=["prune.final=0.3"]'], "error: train=[prune.final=0.3] is not allowed: the sweep sets prune.final"),
    (["model.width_div=3"], "error: vgg16: width_div must divide 64"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    proc = sweep(*args, f"out_dir={out}", timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert not out.exists()


def _rows():
    def row(s, acc, ms, mb):
        return {"sparsity": s, "achieved_sparsity": s, "accuracy": acc, "dense_accuracy": 0.9, "latency_ms_median": ms,
                "latency_ms_p90": ms * 1.1, "dense_latency_ms_median": 10.0, "speedup": 10.0 / ms,
                "peak_memory_mb": 800.0, "weight_mb": mb, "dense_weight_mb": 50.0, "pruned_memory_ratio": mb / 50,
                "deploy": "auto", "kernels_used": "dense x1", "threads": 2, "checkpoint": "c", "bench_dir": "b"}
    return [row(0.0, 0.95, 10.0, 50.0), row(0.5, 0.96, 11.0, 40.0), row(0.8, 0.93, 6.0, 12.0),
            row(0.9, 0.90, 7.0, 7.0), row(0.95, 0.80, 4.0, 4.0)]


def test_pareto_front_keeps_only_points_nothing_beats():
    front = [r["sparsity"] for r in pareto(_rows())]
    # 0.9 (7 ms, 0.90) is beaten by 0.8 (6 ms, 0.93); 0.5 is slower than 0.0 but more accurate: on the front
    assert front == [0.95, 0.8, 0.0, 0.5]


def test_report_from_rows(tmp_path):
    c = from_dict({"model": "vgg16", "data": "digits", "sparsities": [0, 0.5, 0.8, 0.9, 0.95], "train": [],
                   "bench": [], "n_jobs": 2, "deploy": "auto", "group": None, "out_dir": str(tmp_path),
                   "wandb": False, "progress": False})
    assert isinstance(c, TradeoffConfig) and c.sparsities == [0.0, 0.5, 0.8, 0.9, 0.95]
    res = write_report(c, _rows(), tmp_path, "g", train_s=60.0, total_s=120.0)
    assert Path(res["png"]).stat().st_size > 10_000
    md = Path(res["md"]).read_text()
    assert "| 0.80 | 0.800 | 0.9300 | 6.00 / 6.60 | 1.67 | 800 | 12.00 | dense x1 |" in md
    assert "sparsities 0, 0.5, 0.8, 0.95" in md and "Wall time: 2.0 min (training 1.0 min)" in md
    assert len(list(csv.DictReader(Path(res["csv"]).open()))) == 5
