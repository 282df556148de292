"""benchmarks/pruning_accuracy.py: seeds of one method are grouped, summarised and unfinished jobs left out."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

import bench_scripts


@pytest.fixture(scope="module")
def agg():
    return bench_scripts.load("pruning_accuracy")


def _job(folder: Path, name: str, score: str, final: float, seed: int, acc: float | None,
         block=None, method: str = "agp") -> None:
    job = folder / name
    (job / ".hydra").mkdir(parents=True)
    cfg = {"model": {"name": "minilm"}, "data": {"name": "fortunes"}, "seed": seed, "trainer": {"max_epochs": 6},
           "prune": {"method": method, "final": final, "scope": "layerwise", "score": score, "block": block,
                     "n_m": None, "targets": None}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    if acc is not None:
        (job / "summary.json").write_text(json.dumps({"val_acc": acc, "val_acc_dense": 0.8,
                                                      "sparsity": {"overall": final}}))


def test_groups_by_method_and_summarises_seeds(agg, tmp_path):
    for i, (score, final, seed, acc) in enumerate([("magnitude", 0.8, 0, 0.70), ("magnitude", 0.8, 1, 0.74),
                                                    ("magnitude", 0.8, 2, 0.75), ("movement", 0.8, 0, 0.77),
                                                    ("movement", 0.8, 1, 0.79), ("magnitude", 0.9, 0, 0.60)]):
        _job(tmp_path, f"{i}_job", score, final, seed, acc)
    _job(tmp_path, "6_job", "movement", 0.8, 2, None)  # still running: left out, listed
    _job(tmp_path, "7_job", "magnitude", 0.8, 0, 0.72, block=[4, 1])  # another structure: its own group
    rows, pending = agg.collect([tmp_path])
    assert pending == [f"{tmp_path.name}/6_job"]
    summary = {(r["method"], r["structure"], r["final"]): r for r in agg.summarise(rows)}
    assert set(summary) == {("magnitude", "unstructured", 0.8), ("movement", "unstructured", 0.8),
                            ("magnitude", "unstructured", 0.9), ("magnitude", "block 4x1", 0.8)}
    mag = summary[("magnitude", "unstructured", 0.8)]
    assert mag["seeds"] == 3 and mag["seed_list"] == "0,1,2"
    assert mag["acc_mean"] == pytest.approx(statistics.fmean([70, 74, 75]))
    assert mag["acc_std"] == pytest.approx(statistics.stdev([70, 74, 75]))
    assert (mag["acc_min"], mag["acc_max"]) == pytest.approx((70, 75))
    assert summary[("movement", "unstructured", 0.8)]["seeds"] == 2
    assert math.isnan(summary[("magnitude", "unstructured", 0.9)]["acc_std"])  # one seed: no spread claimed


def test_main_writes_table_csv_and_plot(agg, tmp_path):
    runs = tmp_path / "runs"
    _job(runs, "0_a", "magnitude", 0.8, 0, 0.7)
    _job(runs, "1_b", "magnitude", 0.8, 1, 0.8)
    _job(runs, "2_c", "magnitude", 0.0, 0, 0.9, method="none")
    out = tmp_path / "out" / "acc"
    assert agg.main([str(runs), "--out", str(out)]) == 0
    md = out.with_suffix(".md").read_text()
    assert "| minilm | magnitude | unstructured | 0.80 |" in md and "| minilm | dense |" in md
    assert "75.00" in md  # the mean of 70 and 80
    assert out.with_suffix(".png").stat().st_size > 0 and len(out.with_suffix(".csv").read_text().splitlines()) == 4


def test_bad_folder_is_one_line_error(agg, tmp_path, capsys):
    assert agg.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: sweep folder") and "missing" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("o*"))


def test_accuracy_after_each_epoch_from_the_csv_logs(agg, tmp_path):
    runs = tmp_path / "runs"
    curves = {("movement", 0): [0.70, 0.17, 0.50], ("movement", 1): [0.72, 0.19, 0.60], ("magnitude", 0): [0.7, 0.6]}
    for i, ((score, seed), accs) in enumerate(curves.items()):
        _job(runs, f"{i}_j", score, 0.8, seed, accs[-1])
        log = runs / f"{i}_j" / "csv" / "version_0"
        log.mkdir(parents=True)
        lines = ["epoch,step,train/loss,val/acc"]
        for e, a in enumerate(accs):  # a training row without val/acc between the validation rows
            lines += [f"{e},{10 * e + 5},1.5,", f"{e},{10 * e + 9},,{a}"]
        (log / "metrics.csv").write_text("\n".join(lines) + "\n")
    _job(runs, "9_nolog", "magnitude", 0.8, 1, 0.65)  # no CSV log: in the summary, not in the curves
    rows, _ = agg.collect([runs])
    cs = {c["method"]: c for c in agg.curves(rows)}
    assert cs["movement"]["epochs"] == [0, 1, 2] and cs["movement"]["seeds"] == 2
    assert cs["movement"]["mean"] == pytest.approx([71.0, 18.0, 55.0])
    assert (cs["movement"]["min"][1], cs["movement"]["max"][1]) == pytest.approx((17.0, 19.0))
    assert cs["magnitude"]["seeds"] == 1 and cs["magnitude"]["mean"] == pytest.approx([70.0, 60.0])
    out = tmp_path / "out" / "acc"
    assert agg.main([str(runs), "--out", str(out)]) == 0
    md = (tmp_path / "out" / "acc_curves.md").read_text()
    assert "| movement | unstructured | 0.80 | 2 | 71.0 | 18.0 | 55.0 |" in md
    assert "| magnitude | unstructured | 0.80 | 1 | 70.0 | 60.0 |  |" in md
    assert (tmp_path / "out" / "acc_curves.png").stat().st_size > 0

