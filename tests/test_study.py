"""The study: crossover detection on synthetic curves, config validation, the profile cache, and a tiny quick run
that must write every file of the report."""
import json
import math

import pytest
import torch

from spruce.study import config as study_config
from spruce.study.crossover import find_crossover, within
from spruce.perf.matrices import nonempty_blocks, row_cov, smtx_weight, synthetic_weight
from spruce.perf.profile import MachineProfile


# ---- crossover detection --------------------------------------------------------------------------------------
def test_crossover_power_law_is_exact():
    # speedup = 0.2 / (1 - s) is linear in log-log, so the interpolation finds s = 0.8 exactly
    s = [0.5, 0.7, 0.9, 0.95]
    r = [0.2 / (1 - x) for x in s]
    c = find_crossover(s, r)
    assert c.status == "cross"
    assert c.sparsity == pytest.approx(0.8, abs=1e-12)
    assert c.label() == "0.80"


def test_crossover_unsorted_and_hand_computed():
    # between (0.7, 0.8) and (0.9, 2.0): x = ln .3 + (0 - ln .8) (ln .1 - ln .3) / (ln 2 - ln .8)
    x = math.log(0.3) - math.log(0.8) * (math.log(0.1) - math.log(0.3)) / (math.log(2.0) - math.log(0.8))
    c = find_crossover([0.9, 0.5, 0.7], [2.0, 0.5, 0.8])
    assert c.sparsity == pytest.approx(1 - math.exp(x))


def test_crossover_always_and_never():
    a = find_crossover([0.5, 0.9], [1.2, 3.0])
    assert (a.status, a.sparsity, a.interval()) == ("always", 0.5, (0.0, 0.5))
    n = find_crossover([0.5, 0.9, 0.98], [0.1, 0.5, 0.9])
    assert (n.status, n.sparsity, n.interval()) == ("never", None, (0.98, 1.0))
    assert n.label() == ">0.98"


def test_crossover_non_monotonic_takes_last_crossing():
    # wins at 0.6, loses at 0.7 (noise or a format switch), wins again from 0.9: the crossover is in (0.7, 0.9)
    c = find_crossover([0.5, 0.6, 0.7, 0.9], [0.9, 1.1, 0.95, 1.5])
    assert c.status == "cross" and 0.7 < c.sparsity < 0.9
    # wins in the middle but loses at the largest sparsity: never (above the range)
    assert find_crossover([0.5, 0.7, 0.9], [0.5, 1.5, 0.9]).status == "never"


def test_crossover_bad_input():
    with pytest.raises(ValueError, match="no valid"):
        find_crossover([0.5], [float("nan")])
    with pytest.raises(ValueError, match="outside"):
        find_crossover([1.0], [2.0])
    with pytest.raises(ValueError, match="must be > 0"):
        find_crossover([0.5], [0.0])


def test_within_five_points():
    c = find_crossover([0.5, 0.7, 0.9, 0.95], [0.2 / (1 - x) for x in (0.5, 0.7, 0.9, 0.95)])  # 0.8
    assert within(c, "cross", 0.84) and not within(c, "cross", 0.86)
    never = find_crossover([0.5, 0.9], [0.1, 0.5])
    assert within(never, "never", None) and within(never, "cross", 0.86) and not within(never, "cross", 0.8)
    always = find_crossover([0.5, 0.9], [1.5, 5.0])
    assert within(always, "always", 0.0) and within(always, "cross", 0.55) and not within(always, "never", None)


# ---- matrices ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["uniform", "magnitude", "balanced"])
def test_synthetic_exact_nnz(kind):
    w = synthetic_weight(kind, 37, 53, 0.9, seed=3)
    assert w.shape == (37, 53) and int((w != 0).sum()) == round(0.1 * 37 * 53)
    assert torch.equal(w, synthetic_weight(kind, 37, 53, 0.9, seed=3))


def test_balanced_rows_and_stats():
    w = synthetic_weight("balanced", 10, 20, 0.5)
    assert row_cov(w) == 0.0
    w2 = torch.zeros(4, 4)
    w2[0, 0] = w2[3, 3] = 1.0
    assert nonempty_blocks(w2, 2) == 2
    assert row_cov(w2) == pytest.approx(1.0)  # lengths 1,0,0,1: std 0.5 / mean 0.5


def test_smtx_weight(tmp_path):
    p = tmp_path / "a.smtx"
    p.write_text("3, 4, 3\n0 1 1 3\n2 0 3\n")
    w = smtx_weight(p)
    assert (w != 0).nonzero().tolist() == [[0, 2], [2, 0], [2, 3]]
    bad = tmp_path / "b.smtx"
    bad.write_text("3, 4, 3\n0 1 1\n2 0 3\n")
    with pytest.raises(ValueError, match="malformed"):
        smtx_weight(bad)


# ---- config -----------------------------------------------------------------------------------------------------
def test_config_quick_and_errors():
    q = study_config.resolve({"quick": True})
    assert q["sparsities"] == study_config.defaults(True)["sparsities"]
    assert study_config.resolve({"quick": True, "sparsities": [0.9]})["sparsities"] == [0.9]
    with pytest.raises(ValueError, match="unknown study key"):
        study_config.resolve({"sparsity": [0.5]})
    with pytest.raises(ValueError, match="sparsities"):
        study_config.resolve({"sparsities": [1.5]})
    with pytest.raises(ValueError, match="model="):
        study_config.resolve({"model": "resnet"})
    assert study_config.resolve({"model": {"name": "vgg16", "input_size": 32}})["model"] == "vgg16"


def test_config_from_a_whole_bench_config():
    # bench.py mode=study passes its whole config: the study group plus top-level model/ckpt/threads/kernels
    bench_cfg = {"mode": "study", "model": {"name": "bert_base"}, "ckpt": None, "threads": 1, "kernels": None,
                 "plan": None, "prune": {"final": 0.9}, "study": {**study_config.defaults(), "quick": True}}
    c = study_config.resolve(bench_cfg)
    assert (c["model"], c["threads"], c["quick"]) == ("bert_base", 1, True)
    assert c["sparsities"] == study_config.defaults(True)["sparsities"]


def test_bench_mode_study_takes_top_level_threads():
    # `bench.py mode=study threads=1` reaches the study; an explicit `study.threads=` wins over it
    bench_cfg = {"mode": "study", "model": {"name": "vgg16"}, "threads": 1, "study": study_config.defaults()}
    assert study_config.from_bench_mode(bench_cfg)["threads"] == 1
    bench_cfg["study"] = {**study_config.defaults(), "threads": 2}
    assert study_config.from_bench_mode(bench_cfg)["threads"] == 2
    bench_cfg.update(threads=None, study=study_config.defaults())
    assert study_config.from_bench_mode(bench_cfg)["threads"] is None


# ---- the quick study end to end ---------------------------------------------------------------------------------
def _seed_profile(monkeypatch, tmp_path, names):
    """A profile for every kernel in the cache, so the test measures nothing but the sweep."""
    from spruce.perf import calibration as machine

    monkeypatch.setenv("SPRUCE_CACHE", str(tmp_path / "cache"))
    prof = MachineProfile(name="test", peak_gflops=50.0, bw_gbs=10.0, cache_bytes=32e6, threads=2,
                          overhead_us={n: 10.0 for n in names}, sparse_eff={n: 0.1 for n in names},
                          gather_penalty={n: 2.0 for n in names}, convert_ns={n: [1.0, 10.0] for n in names},
                          dense_eff={"1": 0.5, "1024": 1.0})
    path = machine.profile_path(1)  # the study runs below pass threads=1 (the default, null, is every core)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(prof.to_dict()))

    def no_calibration(*a, **k):
        raise AssertionError("the cached profile should have been used")
    monkeypatch.setattr(machine, "calibrate_kernel", no_calibration)
    return path


def test_quick_study_writes_every_report_file(tmp_path, monkeypatch):
    from spruce.study import run_study
    from spruce.study.report import REPORT_FILES

    _seed_profile(monkeypatch, tmp_path, ["torch_dense", "torch_csr", "torch_coo"])
    out = run_study({"quick": True, "kernels": ["torch_csr", "torch_coo"], "sparsities": [0.5, 0.95],
                     "shapes": [{"model": "tiny", "name": "a", "m": 64, "k": 96, "n": 8},
                                {"model": "tiny", "name": "b", "m": 48, "k": 128, "n": 1}],
                     "repeats": 1, "budget_s": 0.01, "out": str(tmp_path / "study"), "progress": False,
                     "wandb": "offline", "threads": 1})
    for name in REPORT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    summary = json.loads((out / "summary.json").read_text())
    # 2 shapes x 2 sparsities x 2 kinds x (dense + 2 kernels)
    assert summary["rows"] == 24 and summary["failed_or_wrong"] == 0
    md = (out / "report.md").read_text()
    for section in ("## Crossover", "## Amortisation", "## Real vs synthetic", "## Model vs measurement",
                    "## H100 predictions"):
        assert section in md
    assert "magnitude vs uniform twin" in md  # findings are generated from the rows
    # a report re-renders from its rows with the current profile (no new measurement)
    from spruce.study.study import rerender
    (out / "report.md").unlink()
    measured_by = summary["command"]
    assert rerender(out) == out
    md = (out / "report.md").read_text()
    assert f"Command: `{measured_by}  (re-rendered by: python " in md  # the measuring command is kept
    rerender(out)  # twice: still one measuring command, one re-render note
    assert (out / "report.md").read_text().count("re-rendered by") == 1


def test_failing_kernel_is_recorded_not_timed(tmp_path, monkeypatch):
    from spruce.kernels import registry
    from spruce.kernels.torch_sparse import TorchCsr
    from spruce.study.sources import Case
    from spruce.study.sweep import run_case

    class Broken(TorchCsr):
        name = "test_broken_csr"

        def matmul(self, packed, x, bias=None, activation="none"):
            return super().matmul(packed, x, bias, activation) * 1.5

    case = Case("shapes", "tiny", "a", 16, 24, [4], "uniform", 0.5, "g",
                lambda: synthetic_weight("uniform", 16, 24, 0.5))
    rows = run_case(case, [Broken(), TorchCsr()], registry.get("torch_dense"), 1, 0.01, None)
    by = {r["kernel"]: r for r in rows}
    assert by["test_broken_csr"]["status"] == "wrong" and by["test_broken_csr"]["time_ms"] == ""
    assert by["torch_csr"]["status"] == "ok" and by["torch_csr"]["time_ms"] > 0



@pytest.mark.parametrize("confirmed", [False, True])
def test_hopeless_needs_a_confirming_measurement(monkeypatch, confirmed):
    # one disturbed measurement (5x+ slower than dense) must not skip the lower sparsities; a confirmed one does
    from spruce.kernels import registry
    from spruce.kernels.torch_sparse import TorchCsr
    from spruce.study import sweep
    from spruce.study.sources import Case

    script = [0.1, 0.1 if confirmed else 0.8]  # fastest-round speedups: the first timing, then its confirmation
    calls = []

    def fake_time_pair(ref, fn, repeats, budget_s):
        ref(), fn()
        r = script[len(calls)] if len(calls) < len(script) else 0.9
        calls.append((repeats, budget_s))
        return {"ref_median": r, "fn_median": 1.0, "ratio_median": r, "ref_min": r, "fn_min": 1.0,
                "ratio_min": r, "rounds": repeats}
    monkeypatch.setattr(sweep, "time_pair", fake_time_pair)
    hopeless: dict = {}
    rows = {}
    for s in (0.9, 0.5):
        case = Case("shapes", "tiny", "a", 16, 24, [4], "uniform", s, "g",
                    lambda s=s: synthetic_weight("uniform", 16, 24, s))
        rows[s] = {r["kernel"]: r for r in sweep.run_case(case, [TorchCsr()], registry.get("torch_dense"), 1,
                                                          0.01, None, hopeless)}["torch_csr"]
    assert calls[1] == (sweep.CONFIRM_ROUNDS, float("inf"))  # the confirmation is not cut by the budget
    assert rows[0.9]["speedup"] == pytest.approx(0.1 if confirmed else 0.8)  # the better of the two is kept
    if confirmed:
        assert hopeless and rows[0.5]["status"] == "skipped" and len(calls) == 2
    else:
        assert not hopeless and rows[0.5]["status"] == "ok" and len(calls) == 3


# ---- the model against the band of several runs ----------------------------------------------------------------
def _xrow(shape, status, value=None, edge=None, kernel="best sparse"):
    label = f"{value:.2f}" if status == "cross" else (f"<={edge:.2f}" if status == "always" else f">{edge:.2f}")
    return {"shape": shape, "kernel": kernel, "measured_status": status, "measured": value, "measured_label": label}


def test_band_hits_on_hand_made_tables():
    from spruce.study.analysis import band_hits

    runs = [[_xrow("a", "cross", 0.60), _xrow("b", "always", edge=0.30), _xrow("c", "cross", 0.70),
             _xrow("d", "never", edge=0.98), _xrow("a", "cross", 0.10, kernel="spruce_csr")],
            [_xrow("a", "cross", 0.66), _xrow("b", "always", edge=0.30), _xrow("c", "cross", 0.72),
             _xrow("d", "cross", 0.97)],
            [_xrow("a", "cross", 0.63), _xrow("b", "cross", 0.32), _xrow("c", "cross", 0.71)]]
    preds = {"a": ("cross", 0.675), "b": ("cross", 0.355), "c": ("cross", 0.69), "d": ("never", None)}
    res = band_hits(runs, preds)
    by = {r["shape"]: r for r in res["rows"]}
    # a: band [0.60, 0.66] +- 0.02 = [0.58, 0.68]; 0.675 inside
    assert (by["a"]["band_lo"], by["a"]["band_hi"]) == pytest.approx((0.58, 0.68)) and by["a"]["hit"]
    # b: [0, 0.30] u {0.32} -> [0, 0.34]: 0.355 is outside
    assert by["b"]["band_hi"] == pytest.approx(0.34) and not by["b"]["hit"]
    # c: [0.70, 0.72] -> [0.68, 0.74]: 0.69 inside
    assert by["c"]["hit"]
    # d is in two runs only: left out by default (needs all three)
    assert "d" not in by and (res["hits"], res["total"]) == (2, 3) and res["rate"] == pytest.approx(2 / 3)
    # with min_runs=2 it counts: [0.97, 1] (never = 1) holds a predicted never
    res2 = band_hits(runs, preds, min_runs=2)
    assert {r["shape"]: r["hit"] for r in res2["rows"]}["d"] and res2["total"] == 4
    # widen=0: a's 0.675 is out of [0.60, 0.66]; 'always' predicted counts as 0, inside b's band
    assert not {r["shape"]: r["hit"] for r in band_hits(runs, preds, widen=0.0)["rows"]}["a"]
    assert {r["shape"]: r["hit"] for r in band_hits(runs, {**preds, "b": ("always", 0.0)})["rows"]}["b"]
    # a shape without a prediction is a miss; another kernel's rows are judged separately
    assert not {r["shape"]: r["hit"] for r in band_hits(runs, {})["rows"]}["c"]
    one = band_hits(runs, {"a": ("cross", 0.12)}, kernel="spruce_csr", min_runs=1)
    assert (one["hits"], one["total"]) == (1, 1)
    with pytest.raises(ValueError, match="widen"):
        band_hits(runs, preds, widen=-0.01)


def test_band_report_from_run_folders(tmp_path):
    """Three hand-made runs -> band.md/csv/png; a folder that is not a run is refused in one line."""
    import csv as _csv

    from spruce.study.__main__ import run as cli
    from spruce.study.bands import band_results
    from spruce.study.report import BAND_FILES, write_band_report
    from spruce.study.sweep import COLUMNS

    def run_dir(i, speedups):
        d = tmp_path / f"run{i}"
        d.mkdir()
        rows = []
        for s, sp in zip((0.5, 0.7, 0.9), speedups):
            base = dict(source="shapes", model="tiny", layer="a", m=64, k=96, n=8, kind="uniform", status="ok",
                        sparsity=s, sparsity_target=s, row_cov=0.1, nnz=int((1 - s) * 64 * 96))
            rows += [dict(base, kernel="torch_dense", format="dense", speedup=1.0),
                     dict(base, kernel="torch_csr", format="csr", speedup=sp)]
        with (d / "rows.csv").open("w", newline="") as fh:
            w = _csv.DictWriter(fh, COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        (d / "config.json").write_text(json.dumps({"kinds": ["uniform"], "threads": 1}))
        (d / "notes.txt").write_text("sweep: 3 cases in 1 s with 1 thread(s); load 0.5\n")
        return d

    # measured crossovers: run 1 between 0.5 (0.5x) and 0.7 (2x), run 2 exactly 0.7 (1x), run 3 between 0.7 (0.9x)
    # and 0.9 (4x); each interpolated in log ratio over log density (crossover.find_crossover)
    def between(s0, r0, s1, r1):
        x0, x1 = math.log(1 - s0), math.log(1 - s1)
        return 1 - math.exp(x0 - math.log(r0) * (x1 - x0) / (math.log(r1) - math.log(r0)))
    dirs = [run_dir(1, (0.5, 2.0, 4.0)), run_dir(2, (0.5, 1.0, 4.0)), run_dir(3, (0.5, 0.9, 4.0))]
    prof = MachineProfile(name="test", peak_gflops=50.0, bw_gbs=10.0, cache_bytes=32e6, threads=1,
                          overhead_us={"default": 0.0}, sparse_eff={"torch_csr": 0.1}, gather_penalty={"default": 1.0})
    res = band_results(dirs, prof)
    rows = res["kernels"]["torch_csr"]["after"]["rows"]
    assert len(rows) == 1 and rows[0]["runs"] == 3 and "sweep: 3 cases" in res["sweeps"][0]
    lo, hi = rows[0]["band_lo"], rows[0]["band_hi"]
    assert lo == pytest.approx(between(0.5, 0.5, 0.7, 2.0) - 0.02) and hi == pytest.approx(between(0.7, 0.9, 0.9, 4.0)
                                                                                           + 0.02)
    rates = write_band_report(res, tmp_path / "out", prof, "test")
    assert rates["torch_csr"]["after"][1] == 1
    for name in BAND_FILES:
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "| torch_csr |" in (tmp_path / "out" / "band.md").read_text()
    with pytest.raises(ValueError, match="is not a study run"):
        cli({"action": "band", "dirs": [str(tmp_path)], "out": str(tmp_path / "x")})
    assert not (tmp_path / "x").exists()
    (tmp_path / "p.json").write_text("{}")
    with pytest.raises(ValueError, match="profile="):
        cli({"action": "band", "dirs": [str(d) for d in dirs], "out": str(tmp_path / "x"),
             "profile": str(tmp_path / "p.json")})
    assert not (tmp_path / "x").exists()
    (tmp_path / "p.json").write_text(json.dumps({"measured": prof.to_dict()}))
    assert cli({"action": "band", "dirs": [str(d) for d in dirs], "out": str(tmp_path / "x"),
                "profile": str(tmp_path / "p.json"), "min_runs": 3}) == str(tmp_path / "x")
    assert (tmp_path / "x" / "machine.json").is_file() and (tmp_path / "x" / "band.md").is_file()
