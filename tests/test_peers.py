"""Peer engines (spruce.deploy.peers, spruce.peer_worker) and the ONNX export they time.

The engines really run, each in its own process: ONNX Runtime is in the main .venv too (requirements.txt), so the
worker is started with this interpreter; DeepSparse and OpenVINO only exist in .venv-peers
(scripts/install_peers.sh), and the test that needs them is skipped where that venv is absent.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spruce.deploy import peers
from spruce.deploy.peers import ENGINES, PeerJob, check_engines, prepare, run_peer, run_peers
from spruce.models import build_model, example_input
from spruce.models.onnx_export import export_onnx, reference_outputs

ROOT = Path(__file__).resolve().parents[1]
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 32}
HERE = sys.executable  # the main venv's python: it has onnxruntime (not deepsparse, not openvino)


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(8 * 4 * 4, 10)).eval()
    with torch.no_grad():  # pruned: zeros where |w| is small, as the ONNX of a pruned model holds them
        for mod in m:
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                w = mod.weight
                w[w.abs() <= w.abs().flatten().kthvalue(int(0.7 * w.numel())).values] = 0
    return m


def tiny_bert(seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    m = build_model("bert_base", num_classes=3, pretrained=None, config=TINY_BERT).eval()
    torch.manual_seed(1)
    return m, example_input(m, 1, seq_len=16)


@pytest.fixture(scope="module")
def cnn_job(tmp_path_factory) -> PeerJob:
    return prepare(tiny_cnn(), torch.randn(1, 3, 8, 8), tmp_path_factory.mktemp("cnn"))


# ---- options -------------------------------------------------------------------------------------------------
def test_unknown_engine_is_a_one_line_value_error_naming_it_and_the_allowed_names():
    with pytest.raises(ValueError) as e:
        check_engines(["onnxruntime", "tensorrt"])
    msg = str(e.value)
    assert "\n" not in msg and "'tensorrt'" in msg and all(n in msg for n in ENGINES)
    with pytest.raises(ValueError, match="tvm"):
        run_peers("tvm", PeerJob(Path("x.onnx"), Path("x.npz"), []))


def test_engine_lists_accept_a_list_or_a_comma_string_and_drop_duplicates():
    assert check_engines(None) == [] and check_engines([]) == []
    assert check_engines("openvino, onnxruntime,openvino") == ["openvino", "onnxruntime"]
    assert check_engines(["deepsparse"]) == ["deepsparse"]


def test_venv_resolver_uses_the_env_var_relative_to_the_repo_root(monkeypatch):
    monkeypatch.delenv(peers.VENV_ENV, raising=False)
    assert peers.peers_venv() == ROOT / ".venv-peers"
    monkeypatch.setenv(peers.VENV_ENV, "elsewhere/venv")
    assert peers.peers_venv() == ROOT / "elsewhere" / "venv"
    monkeypatch.setenv(peers.VENV_ENV, sys.prefix)
    assert peers.peers_python() == Path(sys.prefix) / "bin" / "python"


def test_worker_imports_neither_torch_nor_the_rest_of_spruce():
    """The worker runs in .venv-peers, where there is no torch: importing it must not pull torch in."""
    code = ("import sys, spruce.peer_worker as w; mods = [m for m in sys.modules if m == 'torch' or "
            "(m.startswith('spruce') and m not in ('spruce', 'spruce.peer_worker'))]; print(mods, w.ENGINES)")
    out = subprocess.run([HERE, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == f"[] {ENGINES}"


def test_install_script_rejects_an_unknown_engine_before_making_anything(tmp_path):
    env = dict(os.environ, SPRUCE_PEERS_VENV=str(tmp_path / "v"))
    p = subprocess.run(["bash", str(ROOT / "scripts" / "install_peers.sh"), "onnxruntime", "tvm"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "unknown engine 'tvm'" in p.stderr and not (tmp_path / "v").exists()


# ---- missing / failing / differing engines -------------------------------------------------------------------
def test_peers_missing_give_a_clear_not_installed_row_never_an_error(cnn_job, tmp_path, monkeypatch):
    monkeypatch.setenv(peers.VENV_ENV, str(tmp_path / "no-such-venv"))
    rows = run_peers(list(ENGINES), cnn_job, threads=1, repeats=2, warmup=0)
    assert [r["engine"] for r in rows] == list(ENGINES)
    for r in rows:
        assert r["status"] == "not installed" and r["median_ms"] is None
        assert "no peers venv" in r["why"] and "install_peers.sh" in r["why"]


def test_an_engine_missing_from_an_existing_venv_is_not_installed(cnn_job):
    try:
        import deepsparse  # noqa: F401
        pytest.skip("deepsparse is importable here")
    except ImportError:
        pass
    r = run_peer("deepsparse", cnn_job, threads=1, repeats=1, warmup=0, python=HERE)
    assert r["status"] == "not installed" and "deepsparse is not installed" in r["why"]
    assert r["median_ms"] is None


def test_an_engine_that_fails_is_a_failed_row_without_numbers(tmp_path, cnn_job):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not an ONNX file")
    r = run_peer("onnxruntime", PeerJob(bad, cnn_job.inputs, cnn_job.reference), threads=1, repeats=1, python=HERE)
    assert r["status"] == "failed" and r["why"] and r["median_ms"] is None and r["max_abs_err"] is None


def test_onnxruntime_in_its_own_process_matches_pytorch(cnn_job):
    import onnxruntime
    r = run_peer("onnxruntime", cnn_job, threads=1, repeats=3, warmup=1, python=HERE)
    assert r["status"] == "ok", r["why"]
    assert r["version"] == onnxruntime.__version__ and r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"]
    assert r["max_abs_err"] < 1e-4 and r["threads"] == 1 and r["repeats"] == 3


def test_a_peer_whose_output_differs_is_flagged(cnn_job):
    """The same engine and file, checked against another model's PyTorch output: flagged, timings kept."""
    other = reference_outputs(tiny_cnn(seed=1), _cnn_input(cnn_job))
    job = PeerJob(cnn_job.onnx, cnn_job.inputs, [t.numpy() for t in other])
    r = run_peer("onnxruntime", job, threads=1, repeats=2, warmup=0, python=HERE)
    assert r["status"] == "output differs" and r["median_ms"] > 0
    assert r["why"].startswith("output vs PyTorch: max abs error") and r["max_abs_err"] > 1e-3


def _cnn_input(job: PeerJob) -> torch.Tensor:
    with np.load(job.inputs) as z:
        return torch.from_numpy(z["input"])


def test_bert_dict_inputs_and_the_hidden_state_check_in_onnxruntime(tmp_path):
    m, x = tiny_bert()
    job = prepare(m, x, tmp_path)
    assert [a.shape for a in job.reference] == [(1, 3), (1, 16, 32)]
    with np.load(job.inputs) as z:
        assert z.files == ["input_ids", "attention_mask"]
    r = run_peer("onnxruntime", job, threads=1, repeats=2, warmup=1, python=HERE)
    assert r["status"] == "ok", r["why"]
    # the logits alone can agree while the hidden state does not: that is still a difference
    shifted = PeerJob(job.onnx, job.inputs, [job.reference[0], job.reference[1] + 0.5])
    r = run_peer("onnxruntime", shifted, threads=1, repeats=1, warmup=0, python=HERE)
    assert r["status"] == "output differs" and "last hidden state" in r["why"]


@pytest.mark.skipif(peers.peers_python() is None, reason="no peers venv (bash scripts/install_peers.sh makes it)")
def test_every_installed_peer_engine_runs_tiny_bert_and_matches(tmp_path):
    m, x = tiny_bert()
    rows = peers.bench_peers(m, x, list(ENGINES), threads=1, repeats=2, warmup=1, workdir=tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    have = json.loads(subprocess.run([str(peers.peers_python()), "-m", "spruce.peer_worker", "--versions"], env=env,
                                     capture_output=True, text=True, check=True).stdout)
    for r in rows:
        installed = not have[r["engine"]].startswith("not installed")
        assert r["status"] == ("ok" if installed else "not installed"), (r["engine"], r["why"])
        assert not installed or r["version"] == have[r["engine"]]


# ---- ONNX export ---------------------------------------------------------------------------------------------
def test_export_is_atomic_and_runs_with_a_free_batch_dimension(tmp_path):
    import onnx
    import onnxruntime as ort
    m = tiny_cnn()
    path = export_onnx(m, torch.randn(1, 3, 8, 8), tmp_path / "sub" / "m.onnx", dynamic=True)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx"]  # no temporary left behind
    onnx.checker.check_model(str(path))
    x = torch.randn(3, 3, 8, 8)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(y), m(x).detach(), rtol=1e-4, atol=1e-5)


def test_bert_export_with_free_batch_and_sequence_dimensions(tmp_path):
    import onnxruntime as ort
    m, x = tiny_bert()
    path = export_onnx(m, x, tmp_path / "bert.onnx", dynamic=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x2 = example_input(m, 2, seq_len=9)
    y = sess.run(None, {k: v.numpy() for k, v in x2.items()})
    assert [o.name for o in sess.get_outputs()] == ["output"] and y[0].shape == (2, 3)
    torch.testing.assert_close(torch.from_numpy(y[0]), m(**x2).logits.detach(), rtol=1e-4, atol=1e-5)


def test_a_failing_export_raises_one_value_error_and_leaves_no_file(tmp_path):
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")
    with pytest.raises(ValueError, match="ONNX export of Broken failed: .*boom"):
        export_onnx(Broken(), torch.randn(1, 3), tmp_path / "b.onnx")
    assert list(tmp_path.iterdir()) == []


# ---- export.py formats=[onnx] --------------------------------------------------------------------------------
def _vgg_ckpt(tmp_path: Path) -> tuple[Path, nn.Module]:
    m = build_model("vgg16", num_classes=10, width_div=16).eval()
    state = {f"model.{k}": v for k, v in m.state_dict().items()}
    layers = {n: {"kind": "linear" if isinstance(mod, nn.Linear) else "conv2d", "shape": list(mod.weight.shape),
                  "pruned": False} for n, mod in m.named_modules() if isinstance(mod, (nn.Linear, nn.Conv2d))}
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": state, "spruce": {"model": dict(m.spruce_config), "data": {}, "layers": layers,
                                                "sparsity": {}, "metrics": {}, "version": 1}}, path)
    return path, m


def test_export_formats_onnx_writes_the_whole_model_next_to_the_layer_files(tmp_path):
    import onnxruntime as ort
    from spruce.sparse.export import export_checkpoint
    from spruce.sparse.manifest import read_manifest
    ckpt, m = _vgg_ckpt(tmp_path)
    out = export_checkpoint(ckpt, tmp_path / "both", formats=["npz", "onnx"], kinds=[], report=False, progress=False)
    man = read_manifest(out)
    assert man["model_onnx"] == "model.onnx" and man["formats"] == ["npz"]
    assert all(set(e["files"]) == {"npz"} for e in man["layers"])
    x = example_input(m, 2)
    y = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(y[0]), m(x).detach(), rtol=1e-4, atol=1e-5)
    only = export_checkpoint(ckpt, tmp_path / "only", formats=["onnx"], report=True, progress=False)
    assert sorted(p.name for p in only.iterdir()) == ["manifest.json", "model.onnx"]


def test_export_formats_onnx_is_checked_like_the_others(tmp_path):
    from spruce.sparse.export import check_formats, export_synthetic
    with pytest.raises(ValueError, match="unknown format 'onx'; allowed: smtx, mtx, npz, onnx"):
        check_formats(["onx"])
    with pytest.raises(ValueError, match="synthetic.only has no model"):
        export_synthetic(tmp_path / "s", ["vgg16"], [0.9], formats=["npz", "onnx"])
    assert not (tmp_path / "s").exists()


# ---- bench.py peers=[...] ------------------------------------------------------------------------------------
TINY_BENCH = ["model=bert_base", "model.pretrained=null", "seq_len=16", "prune.final=0.8", "repeats=2",
              "plan_repeats=1", "warmup=0", "progress=false", "kernels=[torch_csr]", "threads=1", "++compile=off",
              "++model.config={hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 48}"]


def bench_cfg(overrides: list[str], out: Path) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="bench", overrides=overrides + [f"out_dir={out}"])
    return {**OmegaConf.to_container(cfg, resolve=True), "model_explicit": True}


def test_bench_puts_the_peers_in_the_same_table_plot_csv_and_wandb_run(tmp_path, monkeypatch):
    from spruce.deploy.pipeline import bench
    from spruce.deploy.report import read_rows
    monkeypatch.setenv(peers.VENV_ENV, sys.prefix)  # this venv has onnxruntime, not deepsparse
    out = bench(bench_cfg(TINY_BENCH + ["peers=[onnxruntime,deepsparse]"], tmp_path / "run"))
    assert out["peer_onnxruntime_ms"] > 0 and out["peer_deepsparse_ms"] is None
    assert [(r["engine"], r["status"]) for r in out["peers"]] == [("onnxruntime", "ok"), ("deepsparse", "not installed")]
    run = tmp_path / "run"
    summary = (run / "summary.md").read_text()
    assert "## Peers in the same run" in summary and "**not installed**" in summary and "![peers](peers.png)" in summary
    assert (run / "peers.png").is_file() and len((run / "peers.csv").read_text().splitlines()) == 3
    assert read_rows(run / "rows.csv")[0]["peer_onnxruntime_ms"] > 0
    assert any("peer deepsparse: not installed" in n for n in out["notes"])
    assert Path(out["paths"]["wandb_run"]).is_dir()


def test_bench_rejects_an_unknown_peer_before_building_anything(tmp_path):
    from spruce.deploy.pipeline import bench
    with pytest.raises(ValueError, match="unknown peer engine 'tensorrt' in peers; allowed: onnxruntime, deepsparse"):
        bench(bench_cfg(TINY_BENCH + ["peers=[onnxruntime,tensorrt]"], tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()
