"""benchmarks/movement_probe.py: one-shot pruning by each score after dense fine-tuning, weights put back after."""
from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

import bench_scripts


@pytest.fixture(scope="module")
def probe():
    return bench_scripts.load("movement_probe")


def test_pruned_accuracy_prunes_exactly_and_puts_the_weights_back(probe):
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -4.0, 2.0, 0.5], [3.0, -0.1, 0.2, 5.0]]))
    before = lin.weight.detach().clone()
    seen = {}

    class Module:  # what pruned_accuracy needs of a SpruceModule: evaluate() on the pruned weights
        def evaluate(self, loader):
            seen["w"] = lin.weight.detach().clone()
            return {"acc": 0.5}
    acc, pruned = probe.pruned_accuracy(Module(), {"l": lin}, {"l": lin.weight.detach().abs()}, 0.5, None)
    assert acc == 0.5 and int(pruned["l"].sum()) == 4
    assert seen["w"].tolist() == [[0.0, -4.0, 2.0, 0.0], [3.0, 0.0, 0.0, 5.0]]  # the 4 smallest |w| zeroed
    assert torch.equal(lin.weight, before)
    # the 4 pruned by magnitude hold none of the 4 largest; pruning the largest gives a share of 1
    assert probe.largest_share({"l": lin}, pruned) == 0.0
    assert probe.largest_share({"l": lin}, {"l": ~pruned["l"]}) == 1.0


def test_probe_on_the_tiny_vgg_writes_table_csv_and_plot(probe, tmp_path):
    out = tmp_path / "p"
    assert probe.main(["model=vgg16", "model.width_div=16", "data.limit=200", "threads=1", "--epochs", "1",
                       "--sparsities", "0.5,0.9", "--out", str(out), "--no-progress"]) == 0
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    # epoch 0: magnitude and random only (no gradient yet); epoch 1: all four scores; each at both sparsities
    assert sorted({(r["epoch"], r["score"]) for r in rows}) == sorted(
        [("0", "magnitude"), ("0", "random")] + [("1", s) for s in probe.SCORES])
    assert len(rows) == 2 * 2 + 4 * 2
    assert all(0 <= float(r["accuracy"]) <= 1 for r in rows)
    assert len({r["dense_accuracy"] for r in rows if r["epoch"] == "1"}) == 1  # the weights were put back each time
    md = out.with_suffix(".md").read_text()
    assert "| 1 (" in md and "movement @0.5" in md and out.with_suffix(".png").stat().st_size > 0


def test_bad_arguments_are_one_line_errors(probe, tmp_path, capsys):
    for args in (["--sparsities", "0.5,1.2"], ["--sparsities", "x"], ["--epochs", "0"], ["model=resnet"]):
        assert probe.main([*args, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not list(tmp_path.glob("o*"))
