"""Activation sparsity (spruce.study.activations) and the sparse x sparse map (spruce.study.spsp_map): the measured
fractions on hand-made inputs, crossover detection and winners on synthetic timings, and small end-to-end runs
(no timing is asserted)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from spruce.study import run_study
from spruce.study.activations import measure, summarize, vgg_names
from spruce.study.spsp_map import (CONVERT, DENSE, SPSP, SPSP_CONV, cells, conv_geometry, crossover,
                                   crossover_lines, exact_sparse, measure_shape, render)


# ---- crossover detection --------------------------------------------------------------------------------------
def test_crossover_hand_computed():
    xs = [0.3, 0.5, 0.7, 0.9]
    # ratio new/ref: 4, 2, 0.5, 0.25 -> log crosses 0 halfway between 0.5 (ln 2) and 0.7 (-ln 2)
    assert crossover(xs, [1, 1, 1, 1], [4, 2, 0.5, 0.25]) == (pytest.approx(0.6), "")
    # ratio 1.2 at 0.5, 0.4 at 0.7: f = ln 1.2 / (ln 1.2 - ln 0.4)
    f = math.log(1.2) / (math.log(1.2) - math.log(0.4))
    x, note = crossover(xs, [1, 1, 1, 1], [3, 1.2, 0.4, 0.1])
    assert note == "" and x == pytest.approx(0.5 + 0.2 * f)


def test_crossover_everywhere_never_and_non_monotonic():
    xs = [0.1, 0.2, 0.3]
    assert crossover(xs, [2, 2, 2], [1, 1, 1]) == (0.1, "everywhere")
    assert crossover(xs, [1, 1, 1], [2, 0.5, 2]) == (None, "never")  # loses at the end
    # wins, loses, wins: the line is where it wins for good (between 0.2 and 0.3)
    x, note = crossover(xs, [1, 1, 1], [0.5, 2, 0.5])
    assert note == "" and x == pytest.approx(0.25)
    # a missing candidate time loses, a missing reference time is beaten
    assert crossover(xs, [1, 1, 1], [0.5, None, 0.5])[0] == pytest.approx(0.2 + 0.1 * 1.0)
    assert crossover(xs, [1, 1, None], [2, 2, 1]) == (0.3, "")
    with pytest.raises(ValueError, match="ascending"):
        crossover([0.2, 0.1], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="equally long"):
        crossover([0.1], [1, 1], [1])


def synthetic_rows(wss, ass, convert_ms=1.0):
    """Timings of a made-up machine: dense 10 ms; dense x sparse 19 (1 - ws); spsp 80 (1 - ws)(1 - as)."""
    rows = []
    for ws in wss:
        for a in ass:
            t = {DENSE: 10.0, "spruce_csr_direct": 19 * (1 - ws), "spruce_csr": 25 * (1 - ws),
                 SPSP: 80 * (1 - ws) * (1 - a), CONVERT: convert_ms}
            t[SPSP_CONV] = t[SPSP] + convert_ms
            for k, v in t.items():
                rows.append({"shape": "convX", "c_in": 8, "c_out": 8, "h": 4, "w": 4, "batch": 1,
                             "weight_sparsity": ws, "act_sparsity": a, "method": k, "median_ms": v, "min_ms": v,
                             "calls": 1, "status": "ok"})
    return rows


def test_map_lines_and_winners_on_synthetic_timings():
    wss, ass = [0.5, 0.8, 0.9], [0.5, 0.7, 0.9, 0.95]
    cell = {(c["weight_sparsity"], c["act_sparsity"]): c for c in cells(synthetic_rows(wss, ass))}
    assert len(cell) == 12
    c = cell[(0.9, 0.95)]  # direct 1.9, spsp 0.4, spsp+convert 1.4
    assert (c["best_dxs"], c["winner_chained"], c["winner_dense_input"]) == ("spruce_csr_direct", SPSP, SPSP_CONV)
    c = cell[(0.5, 0.5)]  # dense 10, direct 9.5, spsp 20
    assert (c["winner_chained"], c["winner_dense_input"]) == ("spruce_csr_direct", "spruce_csr_direct")
    lines = {(r["line"], r["at"]): (r["crossover"], r["note"]) for r in crossover_lines(list(cell.values()))}
    # ws = 0.9: best other = 1.9; spsp 8 (1 - as): 4, 2.4, 0.8, 0.4 -> ratios 2.105, 1.263, 0.421
    r0, r1 = 2.4 / 1.9, 0.8 / 1.9
    x, note = lines[("spsp_chained", 0.9)]
    assert note == "" and x == pytest.approx(0.7 + 0.2 * math.log(r0) / (math.log(r0) - math.log(r1)))
    # with the 1 ms conversion: 3.4 / 1.9 at 0.7, 1.8 / 1.9 at 0.9
    r0, r1 = 3.4 / 1.9, 1.8 / 1.9
    x, note = lines[("spsp_with_convert", 0.9)]
    assert note == "" and x == pytest.approx(0.7 + 0.2 * math.log(r0) / (math.log(r0) - math.log(r1)))
    # ws = 0.5: best other 9.5, spsp 40 (1 - as) -> 20, 12, 4, 2: crosses between 0.7 and 0.9
    assert 0.7 < lines[("spsp_chained", 0.5)][0] < 0.9
    # the conversion alone (5 ms) outweighs the win at ws = 0.9 everywhere on this grid
    slow = {(r["line"], r["at"]): r["note"] for r in crossover_lines(cells(synthetic_rows(wss, ass, 5.0)))}
    assert slow[("spsp_with_convert", 0.9)] == "never"
    # dense x sparse (19 (1 - ws)) beats dense (10) from ws = 1 - 10/19 = 0.474 < 0.5: everywhere on this grid
    assert lines[("dxs_vs_dense", 0.5)] == (0.5, "everywhere")


def test_render_writes_every_file(tmp_path):
    rows = synthetic_rows([0.5, 0.9], [0.5, 0.9])
    layers = [{"layer": "features.3", "name": "convX", "kind": "conv2d", "in_shape": "8x4x4", "weight_sparsity": 0.88,
               "act_sparsity_mean": 0.8, "act_sparsity_std": 0.05}]
    from spruce.study.spsp_map import place_layers
    place_layers(layers, cells(rows))
    assert layers[0]["map_winner_chained"] == SPSP  # nearest cell (0.9, 0.9)
    render(rows, tmp_path, layers, "# test")
    for name in ("spsp_map.csv", "spsp_cells.csv", "spsp_crossovers.csv", "spsp_map_convX.png", "report.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    text = (tmp_path / "report.md").read_text()
    assert "spsp + input2CSR" in text and "features.3" in text
    from spruce.study.spsp_map import rerender
    (tmp_path / "spsp_cells.csv").unlink()
    rerender(tmp_path)  # from spsp_map.csv alone, numbers parsed back
    assert (tmp_path / "spsp_cells.csv").read_bytes() == _cells_text(rows).encode()
    with pytest.raises(ValueError, match="not a spsp_map report"):
        rerender(tmp_path / "nothing")


def _cells_text(rows):
    from spruce import io
    from spruce.study.spsp_map import CELL_COLUMNS
    return io.csv_text(cells(rows), CELL_COLUMNS)


# ---- measured on a tiny shape (statuses, not times) -----------------------------------------------------------
def test_measure_shape_verifies_every_method():
    rows = measure_shape({"name": "tiny", "c_in": 4, "c_out": 9, "h": 6, "w": 5}, [0.5, 0.9], [0.0, 0.8], 2,
                         ["spruce_csr_direct", "spruce_csr"], repeats=1, budget_s=0.01)
    assert len(rows) == 2 * 2 * 6
    assert all(r["status"] == "ok" and r["calls"] >= 1 and r["median_ms"] > 0 for r in rows), rows


def test_exact_sparse_and_geometry():
    g = torch.Generator().manual_seed(0)
    x = exact_sparse((2, 3, 5, 7), 0.6, g, nonneg=True)
    assert int((x == 0).sum()) == round(0.6 * 210) and bool((x >= 0).all())
    assert conv_geometry("conv3_3") == {"name": "conv3_3", "c_in": 256, "c_out": 256, "h": 56, "w": 56}
    assert conv_geometry("conv5_3", 32) == {"name": "conv5_3", "c_in": 512, "c_out": 512, "h": 2, "w": 2}
    with pytest.raises(ValueError, match="'conv9_1' is not a VGG-16 conv; allowed: conv1_2, conv2_1"):
        conv_geometry("conv9_1")


# ---- activation sparsity --------------------------------------------------------------------------------------
def test_measure_activation_sparsity_on_hand_made_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1), nn.Flatten(),
                          nn.Linear(3 * 5 * 5, 2))
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].weight[0, 0] = 1.0  # a weight sparsity of 11/12
    x = torch.randn(3, 2, 5, 5).abs() + 0.1
    x[0].view(-1)[:25] = 0  # 50% zeros
    x[1].view(-1)[:10] = 0  # 20%
    relu = torch.relu(model[0](x))
    after = model[2](relu).flatten(1)
    rows = measure(model, [(x[:2], None), (x[2:], None)])
    assert [r["layer"] for r in rows] == ["0", "2", "4"]
    r0 = rows[0]
    assert r0["images"] == 3 and r0["act_sparsity_mean"] == pytest.approx(0.7 / 3)
    assert r0["act_sparsity_min"] == 0 and r0["act_sparsity_max"] == 0.5
    assert r0["act_sparsity_median"] == pytest.approx(0.2)
    assert r0["act_sparsity_std"] == pytest.approx(math.sqrt(((0.5 - 0.7 / 3) ** 2 + (0.2 - 0.7 / 3) ** 2
                                                              + (0.7 / 3) ** 2) / 3))
    want = (relu.flatten(1) == 0).float().mean(1)
    assert rows[1]["act_sparsity_mean"] == pytest.approx(float(want.mean()))
    assert rows[1]["weight_sparsity"] == pytest.approx(11 / 12) and rows[1]["in_shape"] == "4x5x5"
    assert rows[2]["act_sparsity_mean"] == pytest.approx(float((after == 0).float().mean()))
    capped = measure(model, [(x[:2], None), (x[2:], None)], max_images=1)
    assert capped[0]["images"] == 1 and capped[0]["act_sparsity_mean"] == 0.5
    with pytest.raises(ValueError, match="empty"):
        measure(model, [])
    assert summarize([0.0, 1.0])["act_sparsity_p10"] == pytest.approx(0.1)


def test_vgg_names_follow_stages():
    layers = [("features.0", "conv2d", (3, 32, 32)), ("features.3", "conv2d", (64, 32, 32)),
              ("features.7", "conv2d", (64, 16, 16)), ("classifier.0", "linear", (512,)),
              ("classifier.3", "linear", (512,))]
    assert vgg_names(layers) == {"features.0": "conv1_1", "features.3": "conv1_2", "features.7": "conv2_1",
                                 "classifier.0": "fc6", "classifier.3": "fc7"}


def _vgg_ckpt(path: Path) -> None:
    """A tiny VGG-16 Spruce checkpoint on 60 digits images (about 10 in the eval split)."""
    from spruce.models import build_model
    from spruce.prune import default_prunable, magnitude_prune_
    m = build_model("vgg16", width_div=16, input_size=32, num_classes=10)
    names = default_prunable(m, "vgg")
    sp = magnitude_prune_(m, 0.8, layers=names)
    layers = {n: {"kind": "conv2d" if isinstance(mm, nn.Conv2d) else "linear", "shape": list(mm.weight.shape),
                  "pruned": n in names} for n, mm in m.named_modules() if isinstance(mm, (nn.Conv2d, nn.Linear))}
    torch.save({"state_dict": {f"model.{k}": v.clone() for k, v in m.state_dict().items()},
                "spruce": {"model": m.spruce_config, "layers": layers, "sparsity": sp, "metrics": {},
                           "data": {"name": "digits", "num_classes": 10, "input_size": 32, "limit": 60},
                           "version": 1}}, path)


def test_activation_study_end_to_end(tmp_path):
    ckpt = tmp_path / "tiny.ckpt"
    _vgg_ckpt(ckpt)
    out = run_study({"analysis": "activation", "ckpt": str(ckpt), "out": str(tmp_path / "study"),
                     "wandb": "offline", "threads": 1, "spsp": {"max_images": 7, "batch_size": 4}})
    for name in ("activation_sparsity.csv", "activation_sparsity.md", "activation_sparsity.png", "report.md",
                 "config.json"):
        assert (out / name).is_file(), name
    with (out / "activation_sparsity.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 15 and rows[0]["name"] == "conv1_1" and rows[-1]["name"] == "fc7"  # 13 convs, 2 FC (head=auto at 32)
    assert all(int(r["images"]) == 7 for r in rows)
    assert float(rows[0]["act_sparsity_mean"]) < 0.5 < float(rows[1]["act_sparsity_mean"])  # image vs after ReLU
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))


def test_spsp_map_end_to_end_and_bad_config(tmp_path):
    out = run_study({"analysis": "spsp_map", "out": str(tmp_path / "m"), "wandb": "disabled", "threads": 1,
                     "repeats": 1, "budget_s": 0.01, "progress": False,
                     "spsp": {"shapes": [{"name": "tiny", "c_in": 4, "c_out": 8, "h": 5, "w": 5}],
                              "weight_sparsities": [0.5, 0.9], "act_sparsities": [0.5, 0.9]}})
    assert (out / "spsp_map_tiny.png").is_file() and (out / "spsp_crossovers.csv").is_file()
    with pytest.raises(ValueError, match="analysis=activation needs ckpt"):
        run_study({"analysis": "activation", "out": str(tmp_path / "x")})
    with pytest.raises(ValueError, match=r"unknown spsp key\(s\) \['shape'\]"):
        run_study({"analysis": "spsp_map", "out": str(tmp_path / "x"), "spsp": {"shape": ["conv3_3"]}})
    with pytest.raises(ValueError, match="analysis='maps' is not allowed"):
        run_study({"analysis": "maps", "out": str(tmp_path / "x")})
    with pytest.raises(ValueError, match="spsp.kernels: 'torch_dense' is not a CPU dense x sparse kernel"):
        run_study({"analysis": "spsp_map", "out": str(tmp_path / "x"), "spsp": {"kernels": ["torch_dense"]}})
    assert not (tmp_path / "x").exists()  # nothing half-written
