"""Deployable artefacts: save a converted model, load it in a fresh process without planning, same outputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spruce.deploy import VerificationError, convert_, plan
from spruce.deploy.artifact import load, save
from spruce.deploy.compare import first_tensor, run_model
from spruce.kernels import kernels

ROOT = Path(__file__).resolve().parents[1]
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 48}


def _converted(name: str) -> tuple[torch.nn.Module, object, object, object]:
    """(converted model, plan, example input, dense output) of a tiny VGG-16 or MiniLM, 80% pruned, every
    available CPU kernel in the running (deploy=sparse, so each artefact holds several packed formats)."""
    from spruce.models import build_model, example_input
    from spruce.prune import default_prunable, magnitude_prune_
    torch.manual_seed(0)
    if name == "vgg16":
        m = build_model("vgg16", width_div=16, input_size=32, batch_norm=False).eval()
        x = example_input(m, 2)
    else:
        m = build_model("minilm", pretrained=False, config=TINY_BERT).eval()
        x = example_input(m, 2, seq_len=9)
    layers = default_prunable(m, "vgg" if name == "vgg16" else "bert")
    magnitude_prune_(m, 0.8, layers=layers)
    p = plan(m, x, kernels(device="cpu"), mode="sparse", layers=layers, progress=False, repeats=1, budget_s=0.01)
    with torch.inference_mode():
        y = run_model(m, x)
    convert_(m, p)
    return m, p, x, y


@pytest.mark.parametrize("name", ["vgg16", "minilm"])
def test_load_in_subprocess_equals_live_model(name: str, tmp_path: Path) -> None:
    m, p, x, y = _converted(name)
    art = save(m, p, tmp_path / "art", reference=(x, y))
    assert sorted(f.name for f in art.iterdir()) == ["manifest.json", "plan.json", "tensors.pt"]
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["fusions"] and len(manifest["sparse"]) == len(p.layers)
    with torch.inference_mode():
        live = first_tensor(run_model(m, x))
    torch.save(live, tmp_path / "live.pt")
    code = (
        "import sys, torch\n"
        "from spruce.deploy import load\n"
        "from spruce.deploy.artifact import reference_input\n"
        "from spruce.deploy.compare import first_tensor, run_model\n"
        f"d = {str(art)!r}\n"

        "import spruce.deploy.plan as P; from spruce.kernels import registry as R\n"
        "def no(*a, **k): raise AssertionError('load must not plan or prepare')\n"
        "P.plan_layer = no; R.names()\n"
        "for c in list(R._REGISTRY.values()): c.prepare = no\n"
        "m = load(d, verify=True)\n"
        "with torch.inference_mode():\n"
        "    y = first_tensor(run_model(m, reference_input(d)))\n"
        f"torch.testing.assert_close(y, torch.load({str(tmp_path / 'live.pt')!r}), rtol=0, atol=0)\n"
        "print('kinds', sorted({type(mm).__name__ for mm in m.modules()}))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SparseLinear" in out.stdout


def test_load_detects_a_wrong_reference_and_rejects_foreign_dirs(tmp_path: Path) -> None:
    m, p, x, y = _converted("vgg16")
    art = save(m, p, tmp_path / "art", reference=(x, first_tensor(y) + 1.0))
    with pytest.raises(VerificationError, match="model output"):
        load(art, verify=True)
    assert isinstance(load(art), torch.nn.Module)  # unverified load still works
    with pytest.raises(ValueError, match="not a Spruce artefact"):
        load(tmp_path)
    torch.nn.Module.spruce_config = None  # a model without a spec cannot be saved
    try:
        with pytest.raises(ValueError, match="spruce_config"):
            save(torch.nn.Sequential(torch.nn.Linear(2, 2)), p, tmp_path / "x")
    finally:
        del torch.nn.Module.spruce_config


def test_bench_save_compile_and_load(tmp_path: Path) -> None:
    """bench.py ... compile=on save=<dir>: fusions and compile time in the row, an artefact equal to the run."""
    from spruce.deploy.pipeline import bench
    from tests.test_bench import TINY_BERT, cfg_of
    art = tmp_path / "served"
    out = bench(cfg_of(TINY_BERT + ["deploy=sparse", "logger.wandb=false", "compile=on", f"save={art}"], tmp_path))
    assert out["fusions"] == 2 and out["compiled"] and out["compile_s"] > 0
    plan_json = json.loads((Path(out["paths"]["plan"])).read_text())
    assert plan_json["meta"]["fusions"] == 2
    m = load(art, verify=True)
    assert sum(type(mm).__name__ == "SparseLinear" for mm in m.modules()) == 12


def test_load_verified_against_the_checkpoint(tmp_path: Path) -> None:
    """load(dir, verify=<ckpt>) checks every layer against the checkpoint's dense model; another checkpoint fails
    at the first layer that differs."""
    from spruce.deploy.runtime import convert_ as convert
    from spruce.kernels import get
    from spruce.models.checkpoint import model_from_checkpoint
    from tests.test_bench import _tiny_vgg_checkpoint
    ckpt = tmp_path / "tiny.ckpt"
    _tiny_vgg_checkpoint(ckpt)
    m, meta = model_from_checkpoint(ckpt)
    x = torch.randn(1, 3, 32, 32)
    layers = [n for n, e in meta["layers"].items() if e["pruned"]]
    p = plan(m, x, [get("spruce_csr")], mode="sparse", layers=layers, progress=False, repeats=1, budget_s=0.01)
    convert(m, p)
    art = save(m, p, tmp_path / "art", model_spec=meta["model"])
    load(art, verify=ckpt)
    blob = torch.load(ckpt, weights_only=True)
    blob["state_dict"]["model.features.3.weight"] *= 1.5  # the second conv (first pruned one)
    torch.save(blob, tmp_path / "other.ckpt")
    with pytest.raises(VerificationError, match="features.3"):
        load(art, verify=tmp_path / "other.ckpt")
