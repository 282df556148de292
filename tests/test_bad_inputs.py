"""A catalogue of bad inputs (issue 18): every one is refused with the documented exception and one clear line.

Most entries run in-process through the functions the entry scripts wrap (``export.run``, ``bench(cfg)`` and its
``from_dict``, ``check_config``/``prepare`` of ``train``), the file readers and the kernel API; a handful run the real
CLIs as subprocesses (exit status, one ``error:`` line naming the key or file, no traceback, no files left).
Each entry: ``(id, call(env), exception type, regex the message must match)``.
"""
from __future__ import annotations

import io as _io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SECRET = "TOP-SECRET-LINE-OUTSIDE-THE-EXPORT"
MTX = b"%%MatrixMarket matrix coordinate real general\n"
TINY_TRAIN = ["model.width_div=16", "data.limit=200", "trainer=smoke", "logger=csv", "prune.start=0", "prune.end=1",
              "prune.every=0.25"]
TINY_BENCH = ["model=vgg16", "model.width_div=32", "image_size=32", "prune.final=0.8", "repeats=1", "plan_repeats=1",
              "warmup=0", "progress=false", "kernels=[torch_csr]", "logger.wandb=false", "compile=off"]


# ---- fixtures: one set of files for the whole catalogue ----------------------------------------------------
def _compose(name: str, overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name=name, overrides=overrides), resolve=True)


def _sparse_ckpt(path: Path, **meta) -> None:
    """A contract-shaped checkpoint of a tiny conv + linear model (for export)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(32, 10))
    sd, layers = {}, {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            mask = torch.rand_like(mod.weight) > 0.7
            sd[f"model.{name}.weight"] = mod.weight.detach() * mask
            sd[f"model.{name}.weight_mask"] = mask
            sd[f"model.{name}.bias"] = mod.bias.detach().clone()
            layers[name] = {"kind": "conv2d" if mod.weight.dim() == 4 else "linear",
                            "shape": list(mod.weight.shape), "pruned": True}
    torch.save({"state_dict": sd, "spruce": {"model": {"name": "tiny"}, "layers": layers, "sparsity": {},
                                             "metrics": {}, "run": {"name": "tiny"}, "version": 1, **meta}}, path)


def _vgg_ckpt(path: Path, nan: bool = False, version: int = 1) -> None:
    """A tiny VGG-16 Spruce checkpoint (train resume / bench)."""
    from spruce.models import build_model
    from spruce.prune import default_prunable, magnitude_prune_
    m = build_model("vgg16", width_div=16, input_size=32, num_classes=10)
    names = default_prunable(m, "vgg")
    sp = magnitude_prune_(m, 0.8, layers=names)
    sd = {f"model.{k}": v.clone() for k, v in m.state_dict().items()}
    if nan:
        sd[f"model.{names[-1]}.weight"].view(-1)[3] = float("nan")
    layers = {n: {"kind": "conv2d" if isinstance(mm, nn.Conv2d) else "linear", "shape": list(mm.weight.shape),
                  "pruned": n in names} for n, mm in m.named_modules() if isinstance(mm, (nn.Conv2d, nn.Linear))}
    torch.save({"state_dict": sd, "spruce": {"model": m.spruce_config, "layers": layers, "sparsity": sp,
                                             "metrics": {}, "data": {"name": "digits", "num_classes": 10,
                                                                     "input_size": 32, "limit": 50},
                                             "version": version}}, path)


class _Evil:
    """A pickle that would create a file when unpickled without ``weights_only``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> SimpleNamespace:
    from spruce.sparse.export import export_checkpoint
    root = tmp_path_factory.mktemp("bad")
    e = SimpleNamespace(root=root)
    e.ckpt = root / "tiny.ckpt"
    _sparse_ckpt(e.ckpt)
    sd = torch.load(e.ckpt, weights_only=True)
    sd["state_dict"]["model.2.weight"][0, 0] = float("inf")
    torch.save(sd, root / "inf.ckpt")
    e.inf_ckpt = root / "inf.ckpt"
    e.v2_ckpt = root / "v2.ckpt"
    _sparse_ckpt(e.v2_ckpt, version=2)
    e.vgg = root / "vgg.ckpt"
    _vgg_ckpt(e.vgg)
    e.vgg_nan = root / "vgg_nan.ckpt"
    _vgg_ckpt(e.vgg_nan, nan=True)
    e.vgg_v2 = root / "vgg_v2.ckpt"
    _vgg_ckpt(e.vgg_v2, version=2)
    e.evil = root / "evil.ckpt"
    e.evil_marker = root / "pwned"
    e.evil.write_bytes(pickle.dumps({"state_dict": _Evil(e.evil_marker)}))
    e.export = export_checkpoint(e.ckpt, root / "export", formats=["smtx", "mtx", "npz"], kinds=[], report=False,
                                 progress=False)
    (root / "secret.mtx").write_text(SECRET + "\n")
    e.user_dir = root / "user_folder"
    e.user_dir.mkdir()
    (e.user_dir / "thesis.tex").write_text("precious")
    return e


# ---- helpers -----------------------------------------------------------------------------------------------
def _file(env, name: str, data: bytes) -> Path:
    p = env.root / "files" / name
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(data)
    return p


def _npz(env, name: str, **over) -> Path:
    arrs = dict(indptr=np.array([0, 1, 2], np.int32), indices=np.array([0, 1], np.int32),
                values_bits=np.array([1.0, 2.0], np.float32).view(np.int32), dtype=np.array("float32"),
                shape=np.array([2, 3], np.int64), original_shape=np.array([2, 3], np.int64))
    arrs.update(over)
    buf = _io.BytesIO()
    np.savez(buf, **arrs)
    return _file(env, name, buf.getvalue())


def _npz_lying_header(env) -> Path:
    """A zip whose ``indices.npy`` header declares 10**12 int32 values but holds 8 bytes."""
    good = _npz(env, "lying_src.npz")
    hdr = _io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": "<i4", "fortran_order": False, "shape": (10 ** 12,)})
    p = env.root / "files" / "lying.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(p, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "indices.npy":
                data = b"\x93NUMPY\x01\x00" + hdr.getvalue()[8:] + b"\x00" * 8
            dst.writestr(info.filename, data)
    return p


def _manifest_copy(env, name: str, edit) -> Path:
    d = env.root / "manifests" / name
    shutil.copytree(env.export, d)
    m = json.loads((d / "manifest.json").read_text())
    edit(m, d)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def _set_file(fmt: str, rel: str):
    def edit(m, d):
        m["layers"][0]["files"] = {fmt: rel}
    return edit


def _symlinked(m, d):
    link = d / "layers" / "evil.mtx"
    link.symlink_to(d.parent.parent / "secret.mtx")
    m["layers"][0]["files"] = {"mtx": "layers/evil.mtx"}


def _read_entry(d: Path):
    from spruce.sparse.manifest import read_entry_csr, read_manifest
    return read_entry_csr(d, read_manifest(d)["layers"][0])


def _read_export(d: Path, fmt=None):
    from spruce.sparse.manifest import read_export
    return read_export(d, fmt)


def _report(d: Path):
    from spruce.sparse.compare import write_report
    return write_report(d, progress=False)


def _export(env, out: str | Path | None = None, **cfg):
    import export as export_script
    base = {"ckpt": str(env.ckpt), "out": str(out or env.root / "never_written"), "formats": ["npz"],
            "report": False, "dlmc": None, "progress": False, "synthetic": {"kinds": []}, "overwrite": False}
    base.update(cfg)
    return export_script.run(base)


def _bench_cfg(env, *overrides: str, choices: dict | None = None) -> dict:
    d = _compose("bench", [*TINY_BENCH, *overrides, f"out_dir={env.root / 'bench_never'}"])
    d["model_explicit"] = any(o.startswith("model=") for o in overrides)
    d["group_choices"] = choices or {"model": "vgg16", "prune": "magnitude", "study": "default"}
    return d


def _bench_check(env, *overrides: str, choices: dict | None = None):
    from spruce.deploy.config import from_dict
    return from_dict(_bench_cfg(env, *overrides, choices=choices))


def _bench(env, *overrides: str):
    from spruce.deploy.pipeline import bench
    return bench(_bench_cfg(env, *overrides))


def _plan_file(env, name: str, layers: dict) -> Path:
    p = env.root / "plans" / name
    p.parent.mkdir(exist_ok=True)
    p.write_text(json.dumps({"version": 1, "layers": layers, "meta": {}}))
    return p


def _train_check(*overrides: str):
    from spruce.models.train_config import check_config
    return check_config(_compose("train", [*TINY_TRAIN, *overrides]))


def _kernel_call(name: str, packed_of):
    from spruce.kernels import get
    k = get(name)
    ok, why = k.is_available()
    if not ok:
        pytest.skip(f"{name} unavailable here: {why}")
    w = torch.randn(8, 16) * (torch.rand(8, 16) > 0.5)
    packed = packed_of(w)
    return k.matmul(packed, torch.randn(16, 4))


def _other(name: str):
    from spruce.kernels import get
    return lambda w: get(name).prepare(w)


def _smtx_weight(env, data: bytes):
    from spruce.perf.matrices import smtx_weight
    return smtx_weight(_file(env, "w.smtx", data))


def _dlmc(env, name: str, data: bytes):
    from spruce.study.sources import dlmc_cases
    d = env.root / "dlmc" / name / "m" / "magnitude_pruning" / "0.5"
    d.mkdir(parents=True)
    (d / "layer.smtx").write_bytes(data)
    return dlmc_cases(env.root / "dlmc" / name, [1])


def _reader(kind: str, data: bytes):
    from spruce.sparse.files import read_mtx, read_smtx
    fn = {"smtx": read_smtx, "mtx": read_mtx}[kind]
    return lambda env: fn(_file(env, f"bad.{kind}", data))


def _npz_case(**over):
    from spruce.sparse.files import read_npz
    return lambda env: read_npz(_npz(env, "bad.npz", **over))


OUTSIDE = "outside the export folder"
CATALOGUE = [
    # -- .smtx (DLMC) ---------------------------------------------------------------------------------------
    ("smtx_negative_column", _reader("smtx", b"2, 3, 2\n0 1 2 \n-1 0 \n"), ValueError, "out of range"),
    ("smtx_duplicate_column", _reader("smtx", b"2, 3, 3\n0 2 3 \n1 1 0 \n"), ValueError, "duplicate entry at row 0"),
    ("smtx_column_ge_k", _reader("smtx", b"2, 3, 2\n0 1 2 \n3 0 \n"), ValueError, "column index 3 out of range"),
    ("smtx_decreasing_offsets", _reader("smtx", b"3, 3, 2\n0 2 1 2 \n0 1 \n"), ValueError, "decrease"),
    ("smtx_m0_with_entries", _reader("smtx", b"0, 3, 1\n0 \n1 \n"), ValueError, "holds at most 0"),
    ("smtx_k_10e12", _reader("smtx", b"2, 1000000000000, 1\n0 1 1 \n5 \n"), ValueError, "at most 67108864"),
    ("smtx_m_10e12", _reader("smtx", b"1000000000000, 2, 0\n0 \n\n"), ValueError, "at most 67108864"),
    ("smtx_float_header", _reader("smtx", b"2.5, 3, 1\n0 1 1 \n0 \n"), ValueError, "header must be"),
    ("smtx_binary", _reader("smtx", b"\x00\xff\xfe\x00"), ValueError, "bad.smtx"),
    ("smtx_unicode_digits", _reader("smtx", "２, 3, 0\n0 0 0 \n\n".encode()), ValueError, "header must be"),
    ("smtx_nnz_gt_mk", _reader("smtx", b"1, 1, 5\n0 5 \n0 0 0 0 0 \n"), ValueError, "holds at most 1"),
    # -- .mtx (Matrix Market) -------------------------------------------------------------------------------
    ("mtx_rows_10e12", _reader("mtx", MTX + b"1000000000000 3 0\n"), ValueError, "at most 67108864"),
    ("mtx_rows_3e9", _reader("mtx", MTX + b"3000000000 3 0\n"), ValueError, "at most 67108864"),
    ("mtx_nan_value", _reader("mtx", MTX + b"2 2 1\n1 1 nan\n"), ValueError, "non-finite"),
    ("mtx_inf_value", _reader("mtx", MTX + b"2 2 1\n1 1 -inf\n"), ValueError, "non-finite"),
    ("mtx_negative_size", _reader("mtx", MTX + b"-2 2 0\n"), ValueError, "size line"),
    ("mtx_array_layout", _reader("mtx", b"%%MatrixMarket matrix array real general\n2 1\n1\n2\n"), ValueError,
     "coordinate"),
    ("mtx_fractional_index", _reader("mtx", MTX + b"2 2 1\n1.5 1 1\n"), ValueError, "non-integer"),
    ("mtx_nnz_gt_mk", _reader("mtx", MTX + b"1 1 2\n1 1 1\n1 1 2\n"), ValueError, "holds at most 1"),
    # -- .npz -----------------------------------------------------------------------------------------------
    ("npz_unknown_dtype", _npz_case(dtype=np.array("int8")), ValueError, r"bad\.npz: unknown dtype name"),
    ("npz_lying_header", lambda env: __import__("spruce.sparse.files", fromlist=["x"]).read_npz(
        _npz_lying_header(env)), ValueError, "declares shape"),
    ("npz_object_array", _npz_case(indices=np.array([0, "x"], dtype=object)), ValueError, "bad.npz"),
    ("npz_float_indptr", _npz_case(indptr=np.array([0.0, 1.0, 2.0])), ValueError, "integer array"),
    ("npz_nan_values", _npz_case(values_bits=np.array([1.0, np.nan], np.float32).view(np.int32)), ValueError,
     "non-finite"),
    ("npz_duplicate", _npz_case(indptr=np.array([0, 2, 2], np.int32), indices=np.array([1, 1], np.int32)),
     ValueError, "duplicate"),
    ("npz_negative_original_shape", _npz_case(original_shape=np.array([-2, -3], np.int64)), ValueError,
     "original_shape"),
    ("npz_not_a_zip", lambda env: __import__("spruce.sparse.files", fromlist=["x"]).read_npz(
        _file(env, "text.npz", b"hello")), ValueError, r"text\.npz: cannot read"),
    # -- manifests (one path guard, typed fields) -----------------------------------------------------------
    ("manifest_absolute_path", lambda env: _read_entry(_manifest_copy(env, "abs", _set_file(
        "mtx", str(env.root / "secret.mtx")))), ValueError, OUTSIDE),
    ("manifest_dotdot", lambda env: _read_entry(_manifest_copy(env, "dotdot", _set_file(
        "mtx", "../../secret.mtx"))), ValueError, OUTSIDE),
    ("manifest_symlink_out", lambda env: _read_entry(_manifest_copy(env, "link", _symlinked)), ValueError,
     OUTSIDE),
    ("manifest_read_export_escape", lambda env: _read_export(_manifest_copy(env, "rx", _set_file(
        "npz", "../../tiny.ckpt"))), ValueError, OUTSIDE),
    ("manifest_report_escape", lambda env: _report(_manifest_copy(env, "rep", _set_file(
        "mtx", "../../secret.mtx"))), ValueError, OUTSIDE),
    ("manifest_missing_shape", lambda env: _read_entry(_manifest_copy(
        env, "noshape", lambda m, d: m["layers"][0].pop("shape"))), ValueError, "'shape' must be"),
    ("manifest_nnz_string", lambda env: _read_entry(_manifest_copy(
        env, "nnzstr", lambda m, d: m["layers"][0].update(nnz="5"))), ValueError, "'nnz' must be"),
    ("manifest_layers_not_list", lambda env: _read_export(_manifest_copy(
        env, "layersdict", lambda m, d: m.update(layers={}))), ValueError, "must be a list"),
    ("manifest_files_not_object", lambda env: _read_entry(_manifest_copy(
        env, "fileslist", lambda m, d: m["layers"][0].update(files=["a.npz"]))), ValueError, "'files' must be"),
    ("manifest_version_2", lambda env: _read_export(_manifest_copy(
        env, "v2", lambda m, d: m.update(version=2))), ValueError, "not a version-1"),
    ("manifest_bad_original_shape", lambda env: _read_export(_manifest_copy(
        env, "orig", lambda m, d: m["layers"][0].update(original_shape=[7]))), ValueError, "original_shape"),
    # -- export.py through export.run(cfg) ------------------------------------------------------------------
    ("export_overwrite_user_folder", lambda env: _export(env, env.user_dir, overwrite=True), ValueError,
     "holds no Spruce manifest"),
    ("export_overwrite_a_file", lambda env: _export(env, env.user_dir / "thesis.tex", overwrite=True), ValueError,
     "not an export folder"),
    ("export_inf_checkpoint", lambda env: _export(env, ckpt=str(env.inf_ckpt)), ValueError, "NaN/Inf"),
    ("export_checkpoint_version_2", lambda env: _export(env, ckpt=str(env.v2_ckpt)), ValueError, "version 2"),
    ("export_ckpt_is_directory", lambda env: _export(env, ckpt=str(env.root)), ValueError, "is a directory"),
    ("export_unknown_format", lambda env: _export(env, formats=["xyz"]), ValueError, "unknown format 'xyz'"),
    ("export_seed_string", lambda env: _export(env, synthetic={"kinds": [], "seed": "abc"}), ValueError,
     "synthetic.seed"),
    ("export_malicious_pickle", lambda env: _export(env, ckpt=str(env.evil)), ValueError, "cannot be loaded"),
    # -- bench.py through from_dict / bench(cfg) ------------------------------------------------------------
    ("bench_model_nosuch", lambda env: _bench_check(env, choices={"model": "nosuch"}), ValueError,
     "model=nosuch is not allowed; allowed: bert_base, minilm, vgg16"),
    ("bench_prune_nosuch", lambda env: _bench_check(env, choices={"prune": "nosuch"}), ValueError,
     "prune=nosuch is not allowed; allowed: agp, magnitude, none"),
    ("bench_study_nosuch", lambda env: _bench_check(env, choices={"study": "nosuch"}), ValueError,
     "study=nosuch is not allowed"),
    ("bench_plan_budget_abc", lambda env: _bench_check(env, "plan_budget_s=abc"), ValueError,
     "plan_budget_s='abc' is not allowed"),
    ("bench_rtol_abc", lambda env: _bench_check(env, "rtol=abc"), ValueError, "rtol='abc' is not allowed"),
    ("bench_seed_abc", lambda env: _bench_check(env, "seed=abc"), ValueError, "seed='abc' is not allowed"),
    ("bench_atol_negative", lambda env: _bench_check(env, "atol=-1"), ValueError, "tolerances must be >= 0"),
    ("bench_threads_0", lambda env: _bench_check(env, "threads=0"), ValueError, "threads=0 is not allowed"),
    ("bench_threads_negative", lambda env: _bench_check(env, "threads=-1"), ValueError, "threads=-1 is not allowed"),
    ("bench_ckpt_is_directory", lambda env: _bench_check(env, f"ckpt={env.root}"), ValueError, "is a directory"),
    ("bench_nan_checkpoint", lambda env: _bench(env, f"ckpt={env.vgg_nan}", "model=vgg16"), ValueError, "NaN/Inf"),
    ("bench_checkpoint_version_2", lambda env: _bench(env, f"ckpt={env.vgg_v2}"), ValueError, "version 2"),
    ("bench_plan_layer_is_relu", lambda env: _bench(env, f"plan={_plan_file(env, 'relu.json', {'features.1': {'kernel': 'torch_csr', 'format': 'csr'}})}"),  # noqa: E501
     ValueError, "is a ReLU in this model, not a Linear or Conv2d"),
    ("bench_plan_other_width", lambda env: _bench(env, f"plan={_plan_file(env, 'wide.json', {'features.0': {'kernel': 'torch_csr', 'format': 'csr', 'shape': [64, 27]}})}"),  # noqa: E501
     ValueError, "has shape"),
    ("bench_plan_unknown_kernel", lambda env: _bench(env, f"plan={_plan_file(env, 'k.json', {'features.0': {'kernel': 'warp_drive', 'format': 'csr'}})}"),  # noqa: E501
     ValueError, "unknown kernel 'warp_drive'"),
    # -- train.py through check_config ----------------------------------------------------------------------
    ("train_threads_negative", lambda env: _train_check("threads=-1"), ValueError, "threads=-1 is not allowed"),
    ("train_threads_0", lambda env: _train_check("threads=0"), ValueError, "threads=0 is not allowed"),
    ("train_max_epochs_negative", lambda env: _train_check("trainer.max_epochs=-5"), ValueError,
     "trainer.max_epochs=-5 is not allowed"),
    ("train_max_steps_0", lambda env: _train_check("trainer.max_steps=0"), ValueError, "trainer.max_steps=0"),
    ("train_no_end", lambda env: _train_check("trainer.max_epochs=null"), ValueError, "never ends"),
    ("train_log_every_0", lambda env: _train_check("trainer.log_every_n_steps=0"), ValueError, "log_every_n_steps"),
    ("train_ckpt_is_directory", lambda env: _train_check(f"ckpt_path={env.root}"), ValueError, "is a directory"),
    ("train_nan_checkpoint", lambda env: _train_check(f"ckpt_path={env.vgg_nan}"), ValueError, "NaN/Inf"),
    ("train_checkpoint_version_2", lambda env: _train_check(f"ckpt_path={env.vgg_v2}"), ValueError, "version 2"),
    # -- kernels: a packed weight from another kernel, or None ----------------------------------------------
    ("kernel_torch_csr_none", lambda env: _kernel_call("torch_csr", lambda w: None), ValueError, "packed must be"),
    ("kernel_dense_from_bsr", lambda env: _kernel_call("torch_dense", _other("torch_bsr4")), ValueError,
     "packed must be"),
    ("kernel_scipy_from_torch_csr", lambda env: _kernel_call("scipy_csr", _other("torch_csr")), ValueError,
     "packed must be"),
    ("kernel_bsr_from_csr", lambda env: _kernel_call("torch_bsr4", _other("torch_csr")), ValueError,
     "packed must be"),
    ("kernel_coo_from_dense", lambda env: _kernel_call("torch_coo", _other("torch_dense")), ValueError,
     "packed must be"),
    ("kernel_spruce_csr_from_torch_csr", lambda env: _kernel_call("spruce_csr", _other("torch_csr")), ValueError,
     "spruce_csr"),
    # -- perf / study: the one validated .smtx reader ---------------------------------------------------------
    ("perf_dense_too_large", lambda env: _smtx_weight(env, b"8, 67108864, 0\n0 0 0 0 0 0 0 0 0 \n\n"), ValueError,
     "too large"),
    ("perf_duplicate_columns", lambda env: _smtx_weight(env, b"1, 4, 2\n0 2 \n3 3 \n"), ValueError, "duplicate"),
    ("study_empty_matrix", lambda env: _dlmc(env, "empty", b"0, 4, 0\n0 \n\n"), ValueError, r"layer\.smtx: an empty"),
    ("study_bad_header", lambda env: _dlmc(env, "hdr", b"x, y\n0 \n\n"), ValueError, r"layer\.smtx: header"),
    ("study_k_10e12", lambda env: _dlmc(env, "huge", b"2, 1000000000000, 1\n0 1 1 \n5 \n"), ValueError,
     "at most 67108864"),
]


@pytest.mark.parametrize("case", [c[0] for c in CATALOGUE])
def test_bad_input_is_refused(env, case: str) -> None:
    _, call, exc, match = next(c for c in CATALOGUE if c[0] == case)
    before = {p for p in env.root.rglob("*") if "files" not in p.parts and "manifests" not in p.parts
              and "plans" not in p.parts and "dlmc" not in p.parts}
    with pytest.raises(exc, match=match) as info:
        call(env)
    msg = str(info.value)
    assert type(info.value) is exc or isinstance(info.value, exc)
    assert "\n" not in msg.strip(), f"more than one line: {msg!r}"
    assert SECRET not in msg  # a foreign file is never echoed
    after = {p for p in env.root.rglob("*") if "files" not in p.parts and "manifests" not in p.parts
             and "plans" not in p.parts and "dlmc" not in p.parts}
    assert after == before, f"files left behind: {sorted(map(str, after - before))}"
    assert (env.user_dir / "thesis.tex").read_text() == "precious"
    assert not env.evil_marker.exists()


def test_catalogue_size() -> None:
    assert len(CATALOGUE) >= 60 and len({c[0] for c in CATALOGUE}) == len(CATALOGUE)


# ---- defects whose check is not a refusal -----------------------------------------------------------------
def test_predict_auto_never_calibrates_with_a_partial_cache(monkeypatch) -> None:
    """Issue 18 #11: predict=auto reads the cache only; a kernel the cached profile lacks is not predicted."""
    from spruce import perf
    from spruce.deploy.pipeline import find_predictor

    def calibrates(*a, **k):
        raise AssertionError("predict=auto calibrated")
    monkeypatch.setattr(perf, "load_profile", calibrates)
    monkeypatch.setattr(perf, "profile_cached", lambda threads=None: True)
    prof = perf.h100_profile()
    monkeypatch.setattr(perf, "cached_profile", lambda threads=None: prof, raising=False)
    pred = find_predictor("cpu", "auto", 2)
    info = {"m": 64, "k": 64, "n": 1, "nnz": 400, "format": "csr"}
    with pytest.raises(ValueError, match="not in the cached profile"):
        pred("no_such_kernel_in_profile", info)
    assert pred("torch_dense", {**info, "format": "dense"}) > 0


def test_synthetic_values_are_never_zero() -> None:
    """Issue 18 #12: a drawn 0.0 / -0.0 is drawn again (it would be an explicit zero in the .mtx)."""
    from spruce.sparse import synthetic

    class Rng:
        calls = 0

        def standard_normal(self, n, dtype):
            Rng.calls += 1
            out = np.ones(n, dtype=dtype)
            if Rng.calls == 1:
                out[:2] = [0.0, -0.0]
            return out
    vals = synthetic._kaiming_values(Rng(), 5, 8)
    assert (vals != 0).all() and Rng.calls >= 2


def test_study_failure_leaves_no_config_only_folder(tmp_path, monkeypatch) -> None:
    """Issue 18 #10: a study that fails before measuring anything removes its report folder."""
    from spruce.study import study
    monkeypatch.setattr(study, "select_kernels", lambda *a, **k: ([], None))
    monkeypatch.setattr(study, "build_cases", lambda c: ([], [], "crash"))
    monkeypatch.setattr(study, "load_or_calibrate", lambda *a, **k: None)

    def boom(*a, **k):
        raise RuntimeError("kernel crashed")
    monkeypatch.setattr(study, "run_sweep", boom)
    with pytest.raises(RuntimeError):
        study.run_study({"out": str(tmp_path / "results"), "threads": 1})
    assert not any((tmp_path / "results").glob("*")) if (tmp_path / "results").exists() else True


# ---- the real CLIs, a handful, concurrently -----------------------------------------------------------------
def test_cli_bad_inputs_one_line_no_traceback_no_files(env, tmp_path) -> None:
    out = tmp_path / "cli"
    out.mkdir()
    py = sys.executable
    cases = {
        "train_threads": ([py, str(ROOT / "train.py"), *TINY_TRAIN, "threads=-1", f"hydra.run.dir={out}/t1"], 1,
                          "threads=-1"),
        "train_epochs": ([py, str(ROOT / "train.py"), *TINY_TRAIN, "trainer.max_epochs=-5",
                          f"hydra.run.dir={out}/t2"], 1, "trainer.max_epochs=-5"),
        "bench_model": ([py, str(ROOT / "bench.py"), "model=nosuch", f"hydra.run.dir={out}/b1"], 2, "model=nosuch"),
        "bench_prune": ([py, str(ROOT / "bench.py"), "prune=nosuch", f"hydra.run.dir={out}/b2"], 2, "prune=nosuch"),
        "bench_study": ([py, str(ROOT / "bench.py"), "mode=study", "study=nosuch", f"hydra.run.dir={out}/b3"], 2,
                        "study=nosuch"),
        "export_overwrite": ([py, str(ROOT / "export.py"), f"ckpt={env.ckpt}", f"out={env.user_dir}",
                              "overwrite=true", "progress=false", "dlmc=null"], 1, "user_folder"),
        "export_nan": ([py, str(ROOT / "export.py"), f"ckpt={env.inf_ckpt}", f"out={out}/e2", "progress=false",
                        "dlmc=null"], 1, "inf.ckpt"),
    }
    environ = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    procs = {k: subprocess.Popen(cmd, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=environ) for k, (cmd, _, _) in cases.items()}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        _, code, needle = cases[k]
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        assert p.returncode == code, (k, p.returncode, stderr[-1500:])
        assert "Traceback" not in stderr, (k, stderr[-1500:])
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (k, lines)
    assert sorted(p.name for p in out.iterdir()) == [], "files left behind"
    assert (env.user_dir / "thesis.tex").read_text() == "precious"


def test_labelled_checkpoint_arguments_of_the_benchmarks(tmp_path, capsys):
    # benchmarks/structure_speed.py and checkpoints_e2e.py read `label=<ckpt>` through one parser
    import bench_scripts
    from spruce.io import labelled_files

    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    a.write_bytes(b""), b.write_bytes(b"")
    assert labelled_files([f"u={a}", f"g={b}"]) == [("u", a), ("g", b)]
    for bad, msg in (([str(a)], "write label=<path>"), ([f"u={tmp_path / 'no.ckpt'}"], "does not exist"),
                     ([f"u={a}", f"u={b}"], "labels must differ"), (["=x"], "write label=<path>")):
        with pytest.raises(ValueError, match=msg):
            labelled_files(bad)
    for script in ("structure_speed", "checkpoints_e2e"):
        mod = bench_scripts.load(script)
        assert mod.main([f"u={a}", f"u={b}", "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "labels must differ, got u, u" in err[0]
        assert not list(tmp_path.glob("o*"))
