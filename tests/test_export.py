"""Checkpoint -> export -> read back (every format), manifest, twins, report, and export.py's bad inputs."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from torch import nn

import export as export_script
from spruce.sparse import export as ex
from spruce.sparse import manifest as mf
from spruce.sparse.files import read_smtx
from spruce.sparse.formats import csr_structure

ROOT = Path(__file__).resolve().parent.parent
from shared_data import DLMC  # noqa: E402


def make_checkpoint(path: Path, unmasked_nonzero: bool = False, layers_meta: bool = True) -> dict:
    """A contract-shaped checkpoint: convs + linears, the first conv unpruned, the others masked ~80%."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3, bias=False), nn.Flatten(),
                          nn.Linear(64, 32), nn.Linear(32, 10))
    sd, layers, weights = {}, {}, {}
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        w = mod.weight.detach().clone()
        pruned = name != "0"
        if pruned:
            mask = torch.rand_like(w) > 0.8
            w = torch.where(mask, w, torch.zeros(()))
            if name == "4":
                mask.view(-1)[0] = True
                w.view(-1)[0] = -0.0            # an explicit (negative) zero under the mask
            sd[f"model.{name}.weight_mask"] = mask
        sd[f"model.{name}.weight"] = w
        if mod.bias is not None:
            sd[f"model.{name}.bias"] = mod.bias.detach().clone()
        layers[name] = {"kind": "conv2d" if isinstance(mod, nn.Conv2d) else "linear", "shape": list(w.shape),
                        "pruned": pruned}
        weights[name] = w
    if unmasked_nonzero:
        sd["model.5.weight"][0, 0] = 0.5
        sd["model.5.weight_mask"][0, 0] = False
        weights["5"] = sd["model.5.weight"]
    ckpt = {"state_dict": sd, "epoch": 1}
    if layers_meta:
        ckpt["spruce"] = {"model": {"name": "tiny"}, "data": {"name": "fake"}, "layers": layers,
                          "sparsity": {"overall": 0.8}, "metrics": {"val_acc": None}, "run": {"name": "tiny-run"},
                          "version": 1}
    torch.save(ckpt, path)
    return weights


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("exp")
    weights = make_checkpoint(d / "run.ckpt")
    out = ex.export_checkpoint(d / "run.ckpt", d / "out", formats=["smtx", "mtx", "npz"],
                               kinds=["uniform", "balanced", "row_matched", "magnitude"], seed=1, report=True,
                               dlmc=None, progress=False)
    return out, weights


def _bits(t):
    return t.contiguous().view(torch.uint8)


@pytest.mark.parametrize("fmt", [None, "npz", "mtx"])
def test_round_trip_values_exact(exported, fmt):
    out, weights = exported
    back = mf.read_export(out, fmt)
    assert set(back) == set(weights)
    for name, w in weights.items():
        assert back[name].shape == w.shape
        assert torch.equal(_bits(back[name]), _bits(w)), name


def test_round_trip_smtx_structure(exported):
    out, weights = exported
    manifest = mf.read_manifest(out)
    for entry in manifest["layers"]:
        csr = read_smtx(out / entry["files"]["smtx"])
        w = weights[entry["name"]].reshape(entry["shape"])
        expect = (w != 0) if entry["pruned"] else torch.ones_like(w, dtype=torch.bool)
        if entry["name"] == "4":
            expect.view(-1)[0] = True
        assert torch.equal(csr_structure(csr), expect), entry["name"]
    with pytest.raises(ValueError, match="structure"):
        mf.read_export(out, "smtx")


def test_mtx_files_load_with_scipy(exported):
    out, weights = exported
    for entry in mf.read_manifest(out)["layers"]:
        m = scipy.io.mmread(out / entry["files"]["mtx"])
        dense = torch.from_numpy(np.asarray(m.toarray(), dtype=np.float32))
        assert torch.equal(dense, weights[entry["name"]].reshape(entry["shape"]))


def test_manifest_describes_every_layer(exported):
    out, weights = exported
    manifest = json.loads((out / "manifest.json").read_text())
    layers = {e["name"]: e for e in manifest["layers"]}
    assert list(layers) == ["0", "2", "4", "5"]
    conv = layers["2"]
    assert conv["kind"] == "conv2d" and conv["original_shape"] == [16, 8, 3, 3] and conv["shape"] == [16, 72]
    assert conv["pruned"] and conv["nnz"] == int((weights["2"] != 0).sum())
    assert conv["sparsity"] == pytest.approx(1 - conv["nnz"] / (16 * 72))
    assert conv["dtype"] == "float32" and conv["stats"]["nnz"] == conv["nnz"]
    dense = layers["0"]
    assert dense["pruned"] is False and dense["sparsity"] == 0.0 and dense["nnz"] == 8 * 27
    assert manifest["source"]["model"] == {"name": "tiny"} and manifest["formats"] == ["smtx", "mtx", "npz"]
    for e in manifest["layers"] + manifest["synthetic"]:
        for rel in e["files"].values():
            assert (out / rel).is_file()


def test_twins_match_shape_and_nnz(exported):
    out, _ = exported
    manifest = mf.read_manifest(out)
    real = {e["name"]: e for e in manifest["layers"]}
    twins = manifest["synthetic"]
    assert len(twins) == 3 * 4  # 3 pruned layers x 4 kinds; the dense layer gets none
    for t in twins:
        r = real[t["twin_of"]]
        assert t["shape"] == r["shape"] and t["nnz"] == r["nnz"] and 0 <= t["ks_rows_vs_real"] <= 1
        csr = mf.read_entry_csr(out, t)
        assert csr.nnz == r["nnz"]
    balanced = [t for t in twins if t["generator"] == "balanced"]
    assert all(t["stats"]["row_max_over_mean"] <= 1 + 1 / t["stats"]["row_mean"] + 1e-9 for t in balanced)


def test_report_written(exported):
    out, _ = exported
    text = (out / "report.md").read_text()
    assert "## tiny" in text and "| real |" in text and "row_matched" in text
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == ["blocks_tiny.png", "rows_tiny.png"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_report_extra_columns_hook(exported, tmp_path):
    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    from spruce.sparse.compare import write_report
    write_report(copy, extra_columns={"csr ms": {"2": 1.25, "uniform:2": 2.5}})
    text = (copy / "report.md").read_text()
    assert "csr ms" in text and "| 1.25 |" in text and "| 2.5 |" in text


def test_unmasked_nonzero_is_kept_and_counted(tmp_path):
    weights = make_checkpoint(tmp_path / "a.ckpt", unmasked_nonzero=True)
    out = ex.export_checkpoint(tmp_path / "a.ckpt", tmp_path / "o", formats=["npz"], kinds=[], report=False,
                               progress=False)
    entry = {e["name"]: e for e in mf.read_manifest(out)["layers"]}["5"]
    assert entry["unmasked_nonzeros"] == 1
    assert torch.equal(mf.read_export(out)["5"], weights["5"])


def test_checkpoint_without_metadata_is_inferred(tmp_path):
    weights = make_checkpoint(tmp_path / "a.ckpt", layers_meta=False)
    out = ex.export_checkpoint(tmp_path / "a.ckpt", tmp_path / "o", formats=["npz"], kinds=[], report=False,
                               progress=False)
    back = mf.read_export(out)
    assert set(back) == set(weights) and all(torch.equal(back[n], weights[n]) for n in weights)


def test_failure_leaves_nothing(tmp_path, monkeypatch):
    make_checkpoint(tmp_path / "a.ckpt")

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(ex, "write_mtx", boom)
    with pytest.raises(RuntimeError):
        ex.export_checkpoint(tmp_path / "a.ckpt", tmp_path / "new" / "dirs" / "out", formats=["npz", "mtx"],
                             kinds=[], report=False, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]  # created parents removed too


def test_existing_out_needs_overwrite(tmp_path):
    make_checkpoint(tmp_path / "a.ckpt")
    kw = dict(formats=["npz"], kinds=[], report=False, progress=False)
    out = ex.export_checkpoint(tmp_path / "a.ckpt", tmp_path / "o", **kw)
    with pytest.raises(ValueError, match="already exists"):
        ex.export_checkpoint(tmp_path / "a.ckpt", out, **kw)
    ex.export_checkpoint(tmp_path / "a.ckpt", out, overwrite=True, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "o"]


def test_default_out_names():
    assert ex.default_out("x/checkpoints/last.ckpt") == Path("exports/x")
    assert ex.default_out("a/b/vgg90.ckpt") == Path("exports/vgg90")
    assert ex.default_out("a/last.ckpt", {"run": {"name": "vgg16-digits"}}) == Path("exports/vgg16-digits")


def test_synthetic_only_named_shapes(tmp_path):
    out = ex.export_synthetic(tmp_path / "syn", ["bert_base_layer"], [0.9], kinds=["uniform", "magnitude"],
                              formats=["smtx", "npz"], seed=0, report=True, dlmc=None, progress=False)
    manifest = mf.read_manifest(out)
    entries = manifest["synthetic"]
    assert len(entries) == 3 * 2  # 3 distinct shapes (q/k/v/o merged) x 2 kinds
    counts = sorted(e["count"] for e in entries if e["generator"] == "uniform")
    assert counts == [1, 1, 4]
    e = entries[0]
    assert e["files"]["smtx"] == "synthetic/bert_base_layer/uniform/0.9/encoder.layer.0.attention.self.query.smtx"
    csr = mf.read_entry_csr(out, e)
    assert csr.nnz == e["nnz"] == int(768 * 768 * 0.1)
    assert "bert_base_layer (synthetic)" in (out / "report.md").read_text()
    with pytest.raises(ValueError, match="row_matched"):
        ex.export_synthetic(tmp_path / "s2", ["bert_base_layer"], [0.9], kinds=["row_matched"])


def _tiny_dlmc(tmp_path: Path) -> Path:
    """Two small DLMC files (real ones when present) in DLMC's layout."""
    root = tmp_path / "dlmc"
    name = "bottleneck_1_block_group1_1_1.smtx"
    for method in ("magnitude_pruning", "random_pruning"):
        d = root / "rn50" / method / "0.9"
        d.mkdir(parents=True)
        src = DLMC / "rn50" / method / "0.9" / name
        if src.is_file():
            shutil.copy(src, d / name)
        else:
            from spruce.sparse.files import write_smtx
            from spruce.sparse.synthetic import generate
            write_smtx(d / name, generate("magnitude" if method[0] == "m" else "uniform", 64, 256, 0.9, seed=1))
    return root


def test_dlmc_only_report(tmp_path):
    out = ex.export_synthetic(tmp_path / "d", [], [0.9], kinds=["uniform"], dlmc=_tiny_dlmc(tmp_path),
                              progress=False)
    text = (out / "report.md").read_text()
    assert "## DLMC rn50" in text and "DLMC magnitude" in text and "DLMC random" in text
    assert "row_matched" in text and (out / "plots" / "rows_dlmc_rn50.png").is_file()


# ---- the entry script -----------------------------------------------------------------------------------
def _cfg(**kw):
    cfg = {"ckpt": None, "out": None, "overwrite": False, "formats": ["smtx", "mtx", "npz"], "report": False,
           "dlmc": None, "progress": False,
           "synthetic": {"only": False, "kinds": None, "shapes": [], "sparsities": [0.9], "dedupe": True, "seed": 0}}
    syn = kw.pop("synthetic", {})
    cfg.update(kw)
    cfg["synthetic"].update(syn)
    return cfg


@pytest.fixture
def good_ckpt(tmp_path):
    make_checkpoint(tmp_path / "good.ckpt")
    return tmp_path / "good.ckpt"


def _bad_cases(tmp_path, good):
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint at all")
    torch.save({"state_dict": {"model.norm.weight": torch.ones(4)}}, tmp_path / "noprune.ckpt")
    (tmp_path / "afile").write_text("x")
    return {
        "missing ckpt": (_cfg(ckpt=str(tmp_path / "nope.ckpt")), "does not exist"),
        "corrupt ckpt": (_cfg(ckpt=str(tmp_path / "corrupt.ckpt")), "cannot be loaded"),
        "no prunable layers": (_cfg(ckpt=str(tmp_path / "noprune.ckpt")), "no prunable layers"),
        "unknown format": (_cfg(ckpt=str(good), formats=["smtx", "csv"]), "unknown format 'csv'"),
        "unknown kind": (_cfg(ckpt=str(good), synthetic={"kinds": ["gaussian"]}), "unknown synthetic kind"),
        "bad sparsity": (_cfg(synthetic={"only": True, "shapes": ["bert_base_layer"], "sparsities": [1.0]}),
                         "outside \\[0, 1\\)"),
        "negative sparsity": (_cfg(synthetic={"only": True, "shapes": ["vgg16"], "sparsities": [-0.5]}), "outside"),
        "unknown shapes": (_cfg(synthetic={"only": True, "shapes": ["resnet"]}), "unknown model shapes"),
        "unwritable out": (_cfg(ckpt=str(good), out=str(tmp_path / "afile" / "sub")), "cannot write"),
        "no ckpt": (_cfg(), "no checkpoint"),
        "missing dlmc": (_cfg(ckpt=str(good), report=True, dlmc=str(tmp_path / "nodlmc")), "not a directory"),
    }


def test_entry_bad_inputs_raise_and_write_nothing(tmp_path, good_ckpt, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = _bad_cases(tmp_path, good_ckpt)
    before = sorted(p.name for p in tmp_path.iterdir())
    for name, (cfg, match) in cases.items():
        with pytest.raises(ValueError, match=match):
            export_script.run(cfg)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, name


def test_entry_script_subprocess(tmp_path, good_ckpt):
    """The Hydra script: bad input -> one 'error:' line, exit 1, nothing written; good input prints the path."""
    cmd = [sys.executable, str(ROOT / "export.py")]
    bad = subprocess.run(cmd + [f"ckpt={tmp_path / 'missing.ckpt'}", f"out={tmp_path / 'x'}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error: checkpoint") and not (tmp_path / "x").exists()
    good = subprocess.run(cmd + [f"ckpt={good_ckpt}", "formats=[npz,smtx]", "synthetic.kinds=[uniform]",
                                 "dlmc=null", "progress=false"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert good.returncode == 0, good.stderr
    out = tmp_path / good.stdout.strip().splitlines()[-1]
    assert out == tmp_path / "exports" / "tiny-run" and (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports", "good.ckpt"]  # Hydra wrote nothing else


def test_twins_for_manifest_reproduces_written_twins(exported):
    out, _ = exported
    manifest = mf.read_manifest(out)
    twins = ex.twins_for_manifest(manifest, ["uniform", "row_matched"], export_dir=out)
    assert set(twins) == {(n, k) for n in ("2", "4", "5") for k in ("uniform", "row_matched")}
    written = {t["name"]: t for t in manifest["synthetic"]}
    for (layer, kind), csr in twins.items():
        back = mf.read_entry_csr(out, written[f"{kind}:{layer}"], "npz")
        assert torch.equal(back.indices, csr.indices) and torch.equal(back.values, csr.values)
    with pytest.raises(ValueError, match="export_dir"):
        ex.twins_for_manifest(manifest, ["row_matched"])
