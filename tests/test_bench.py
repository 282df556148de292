"""bench(cfg) end to end on tiny models (Hydra compose API), the offline W&B run read back, sweeps, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from spruce.deploy.pipeline import bench
from spruce.deploy.report import read_rows

ROOT = Path(__file__).resolve().parents[1]
FEW_KERNELS = "kernels=[torch_csr,torch_bsr4]"  # every registered kernel is covered in test_deploy.py
TINY_VGG = ["model=vgg16", "model.width_div=32", "image_size=32", "prune.final=0.8", "repeats=2", "plan_repeats=1",
            "warmup=0", "progress=false", FEW_KERNELS]
TINY_BERT = ["model=bert_base", "model.pretrained=null", "seq_len=16", "prune.final=0.8", "repeats=2",
             "plan_repeats=1", "warmup=0", "progress=false", FEW_KERNELS,
             "++model.config={hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 48}"]
EXPECTED_SUMMARY = ("latency_ms_median", "latency_ms_p90", "memory_bytes", "peak_memory_bytes", "weight_bytes",
                    "speedup", "pruned_memory_ratio", "sparsity", "layers")


def cfg_of(overrides: list[str], tmp_path: Path, name: str = "run") -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        # compile=off unless a test asks: compiling every tiny model would double this file's time
        extra = [] if any(o.startswith("compile=") for o in overrides) else ["compile=off"]
        cfg = compose(config_name="bench", overrides=overrides + extra + [f"out_dir={tmp_path / name}"])
    d = OmegaConf.to_container(cfg, resolve=True)
    d["model_explicit"] = any(o.startswith("model=") for o in overrides)
    return d


def wandb_summary(run_dir: str) -> dict:
    exe = Path(sys.executable).parent / "wandb"
    out = subprocess.run([str(exe), "leet", "inspect", "--summary", "--json", run_dir], capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def test_bench_vgg_end_to_end_with_wandb(tmp_path) -> None:
    out = bench(cfg_of(TINY_VGG + ["deploy=sparse"], tmp_path))
    run = tmp_path / "run"
    for f in ("plan.json", "layers.csv", "rows.csv", "result.json", "summary.md", "layers.png"):
        assert (run / f).is_file(), f
    assert not list(run.glob(".*.tmp"))
    assert out["init"] == "random-init weights"
    assert out["layers_sparse"] == out["layers_planned"] == 14  # 12 convs (not the first) + 2 linears
    assert out["pruned_memory_ratio"] < 1
    assert "random-init weights" in (run / "summary.md").read_text()
    s = wandb_summary(out["paths"]["wandb_run"])
    assert s["state"] == "finished" and s["name"] == "vgg16-sparse-s0.8-random-init"
    for key in EXPECTED_SUMMARY:
        assert key in s["summary"], key
    assert s["summary"]["latency_ms_median"] == pytest.approx(out["latency_ms_median"])
    assert s["summary"]["layers"]["nrows"] == 14
    assert list((Path(out["paths"]["wandb_run"]) / "files" / "media" / "images").rglob("layers*.png"))
    assert s["summary"]["plots/layers"]["_type"] == "image-file"


def test_bench_bert_auto_and_plan_reuse(tmp_path) -> None:
    out = bench(cfg_of(TINY_BERT + ["deploy=auto", "logger.wandb=false"], tmp_path, "a"))
    assert out["layers_planned"] == 12 and out["model"] == "bert_base"
    assert out["input"] == "1x16 tokens"
    plan_path = out["paths"]["plan"]
    again = bench(cfg_of(TINY_BERT + ["deploy=auto", "logger.wandb=false", f"plan={plan_path}"], tmp_path, "b"))
    assert any("plan reused" in n for n in again["notes"])
    assert json.loads(Path(again["paths"]["plan"]).read_text())["layers"] == json.loads(
        Path(plan_path).read_text())["layers"]


def test_bench_dense_converts_nothing(tmp_path) -> None:
    out = bench(cfg_of(TINY_VGG + ["deploy=dense", "logger.wandb=false"], tmp_path))
    assert out["layers_sparse"] == 0 and out["speedup"] == 1.0 and out["pruned_memory_ratio"] == 1.0


def test_sweep_rows_and_aggregate_plots(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    for s in (0.5, 0.9):
        bench(cfg_of(TINY_VGG + [f"prune.final={s}", "logger.wandb=false", f"sweep_dir={sweep}"], tmp_path, f"r{s}"))
    rows = read_rows(sweep / "rows.csv")
    assert [r["sparsity"] for r in rows] == [0.5, 0.9]
    assert (sweep / "latency_vs_sparsity.png").is_file() and (sweep / "memory_vs_sparsity.png").is_file()
    (sweep / "latency_vs_sparsity.png").unlink()
    out = bench(cfg_of(["mode=aggregate", f"dir={sweep}"], tmp_path, "agg"))
    assert out["rows"] == 2 and (sweep / "latency_vs_sparsity.png").is_file()


def _tiny_vgg_checkpoint(path: Path) -> None:
    from spruce.models import build_model
    from spruce.models.checkpoint import CHECKPOINT_VERSION
    from spruce.prune import default_prunable, magnitude_prune_
    m = build_model("vgg16", width_div=32, input_size=32, num_classes=10)
    names = default_prunable(m, "vgg")
    sp = magnitude_prune_(m, 0.8, layers=names)
    layers = {n: {"kind": "conv2d" if isinstance(mm, torch.nn.Conv2d) else "linear", "shape": list(mm.weight.shape),
                  "pruned": n in names} for n, mm in m.named_modules()
              if isinstance(mm, (torch.nn.Conv2d, torch.nn.Linear))}
    torch.save({"state_dict": {f"model.{k}": v for k, v in m.state_dict().items()},
                "spruce": {"model": m.spruce_config, "layers": layers, "sparsity": sp, "metrics": {},
                           "data": {"name": "digits", "num_classes": 10, "input_size": 32, "limit": 50},
                           "version": CHECKPOINT_VERSION}}, path)


def test_bench_checkpoint_accuracy_and_mismatch(tmp_path) -> None:
    ckpt = tmp_path / "tiny.ckpt"
    _tiny_vgg_checkpoint(ckpt)
    out = bench(cfg_of(["deploy=auto", f"ckpt={ckpt}", "repeats=2", "plan_repeats=1", "warmup=0", "progress=false",
                        "logger.wandb=false", FEW_KERNELS, "accuracy.max_batches=1"], tmp_path))
    assert out["init"] == "trained checkpoint" and out["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert out["input"] == "1x3x32x32"
    assert 0 <= out["accuracy"] <= 1 and out["accuracy"] == pytest.approx(out["dense_accuracy"], abs=0.051)
    with pytest.raises(ValueError, match="holds model 'vgg16' but model=bert_base"):
        bench(cfg_of(["model=bert_base", f"ckpt={ckpt}", "logger.wandb=false"], tmp_path, "mm"))
    assert not (tmp_path / "mm").exists()


@pytest.mark.parametrize("override, message", [
    ("batch_size=0", "batch_size=0 is not allowed"),
    ("device=cuda", "device=cuda but no CUDA GPU"),
    ("kernels=[nope]", "unknown kernel 'nope'"),
    ("objective=speed", "unknown objective 'speed'"),
    ("prune.final=1.5", "prune.final=1.5 is not allowed"),
    ("ckpt=/nonexistent.ckpt", "does not exist"),
    ("shortlist=0", "shortlist=0 is not allowed"),
    ("predict=false shortlist=2", "shortlist needs the performance model"),
])
def test_bad_input_is_one_clear_error_and_no_files(tmp_path, override: str, message: str) -> None:
    if override == "device=cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        bench(cfg_of(TINY_VGG[:-1] + override.split(), tmp_path))
    assert not (tmp_path / "run").exists()


def test_unavailable_kernel_falls_back_only_with_auto(tmp_path) -> None:
    from spruce.kernels import kernels
    gpu = [k.name for k in kernels(device="cuda", available_only=False)]
    if not gpu or torch.cuda.is_available():
        pytest.skip("needs a registered CUDA kernel on a machine without a GPU")
    with pytest.raises(ValueError, match=f"kernel '{gpu[0]}' runs on cuda, not on device=cpu"):
        bench(cfg_of(TINY_VGG[:-1] + ["deploy=sparse", f"kernels=[{gpu[0]},torch_csr]"], tmp_path))
    out = bench(cfg_of(TINY_VGG[:-1] + ["deploy=auto", f"kernels=[{gpu[0]},torch_csr]", "logger.wandb=false"],
                       tmp_path))
    assert set(json.loads(Path(out["paths"]["plan"]).read_text())["meta"]["candidates"]) == {"torch_csr"}


def _bench_py(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_entry_script_bad_input_exits_non_zero_without_files(tmp_path) -> None:
    r = _bench_py(TINY_VGG[:-1] + ["kernels=[nope]", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: unknown kernel 'nope'")
    assert not (tmp_path / "run").exists()
    r = _bench_py(["deploy=fast", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert r.returncode != 0 and "deploy/fast" in r.stderr
    assert not (tmp_path / "run").exists()


def test_entry_script_multirun_sweep(tmp_path) -> None:
    r = _bench_py(["-m", *TINY_VGG, "prune.final=0.5,0.9", "logger.wandb=false", f"hydra.sweep.dir={tmp_path}/sw"],
                  tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = read_rows(tmp_path / "sw" / "rows.csv")
    assert [r["sparsity"] for r in rows] == [0.5, 0.9]
    assert (tmp_path / "sw" / "latency_vs_sparsity.png").is_file()
    assert (tmp_path / "sw" / "summary.md").read_text().count("| vgg16 |") == 2


def test_crossover_and_rows_round_trip(tmp_path) -> None:
    from spruce.deploy.report import ROW_KEYS, crossover, rows_csv
    from spruce.io import atomic_write
    assert crossover([0.5, 0.7, 0.9], [0.5, 0.8, 1.2]) == pytest.approx(0.8)
    assert crossover([0.5, 0.9], [0.5, 0.9]) is None
    assert crossover([0.5, 0.9], [1.5, 2.0]) is None  # already faster at the lowest sparsity
    row = {k: None for k in ROW_KEYS} | {"model": "vgg16", "sparsity": 0.9, "speedup": float("inf"),
                                          "input": "1x3x224x224", "layers_sparse": 14, "init": "random-init weights"}
    atomic_write(tmp_path / "rows.csv", rows_csv([row], ROW_KEYS))
    back = read_rows(tmp_path / "rows.csv")[0]
    assert back["model"] == "vgg16" and back["sparsity"] == 0.9 and back["speedup"] == float("inf")
    assert back["input"] == "1x3x224x224" and back["layers_sparse"] == 14 and back["accuracy"] is None


def test_reused_plan_with_unavailable_kernel_falls_back_only_with_auto(tmp_path) -> None:
    from spruce.deploy import Plan
    from spruce.kernels import kernels
    gpu = [k.name for k in kernels(device="cuda", available_only=False)]
    if not gpu or torch.cuda.is_available():
        pytest.skip("needs a registered CUDA kernel on a machine without a GPU")
    first = bench(cfg_of(TINY_VGG + ["deploy=sparse", "logger.wandb=false"], tmp_path, "a"))
    p = Plan.load(first["paths"]["plan"])
    layer = next(iter(p.layers))
    p.layers[layer]["kernel"] = gpu[0]
    p.save(tmp_path / "gpu_plan.json")
    with pytest.raises(ValueError, match=f"kernel '{gpu[0]}' runs on cuda"):
        bench(cfg_of(TINY_VGG + ["deploy=sparse", f"plan={tmp_path / 'gpu_plan.json'}"], tmp_path, "b"))
    out = bench(cfg_of(TINY_VGG + ["deploy=auto", "logger.wandb=false", f"plan={tmp_path / 'gpu_plan.json'}"],
                       tmp_path, "c"))
    assert out["layers_sparse"] == first["layers_sparse"] - 1
    assert any("kept dense" in n for n in out["notes"])
