"""Export a checkpoint's Linear/Conv2d weights as per-layer sparse files + ``manifest.json``, with synthetic twins.

Export directory (written under a temporary name next to ``out``, renamed into place when complete)::

    out/manifest.json
    out/layers/<fqn>.smtx|.mtx|.npz                     real layers ([M, K]; convs im2col [C_out, C_in*kh*kw])
    out/synthetic/<kind>/<fqn>.<fmt>                     twins of the real layers (same shape and nnz)
    out/synthetic/<model>/<kind>/<sparsity>/<name>.<fmt>  synthetic-only matrices of named shapes (DLMC layout)
    out/report.md, out/plots/*.png                       the comparison report (spruce.sparse.compare)
    out/model.onnx                                       formats=[..., onnx]: the whole pruned model (checkpoints only)

``manifest.json``: schema in ``spruce.sparse.manifest`` (which also reads an export back).

Stored positions of a layer: a pruned layer stores its ``weight_mask`` positions (plus any nonzero outside the
mask, counted in ``unmasked_nonzeros`` so nothing is lost); a pruned layer without a mask stores its nonzeros;
an unpruned layer is stored dense (every entry, sparsity 0, ``"pruned": false``). ``.smtx`` holds the structure
only; values come from ``.npz`` (bit-exact) or ``.mtx`` (exact decimal), so ``read_export`` needs one of them.
"""
from __future__ import annotations

import glob
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm import tqdm

from spruce.sparse.checkpoint import RealLayer, checkpoint_layers, load_checkpoint_file
from spruce.sparse.compare import write_report
from spruce.sparse.files import FORMATS, dtype_name, write_mtx, write_npz, write_smtx
from spruce.sparse.formats import CSR, dense_to_csr
from spruce.sparse.manifest import MANIFEST_VERSION, read_entry_csr, write_manifest
from spruce.sparse.shapes import LayerShape, named_shapes
from spruce.sparse.stats import matrix_stats, row_length_ks
from spruce.sparse.synthetic import KINDS, check_kind, check_sparsity, derive_seed, generate



#: formats of the whole model rather than of each layer's matrix (export_checkpoint only)
MODEL_FORMATS = ("onnx",)


# ---- validation -----------------------------------------------------------------------------------------
def check_formats(formats: Sequence[str]) -> list[str]:
    formats = list(formats)
    allowed = ", ".join(FORMATS + MODEL_FORMATS)
    if not formats:
        raise ValueError(f"formats is empty; allowed: {allowed}")
    for f in formats:
        if f not in FORMATS + MODEL_FORMATS:
            raise ValueError(f"unknown format {f!r}; allowed: {allowed}")
    return list(dict.fromkeys(formats))


def check_kinds(kinds: Sequence[str]) -> list[str]:
    for k in kinds:
        check_kind(k)
    return list(dict.fromkeys(kinds))


def safe_name(name: str) -> str:
    """A file stem for a layer name (``/`` and other path characters replaced)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "_"


# ---- staging --------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_staging(out: str | Path) -> list[Path]:
    """Remove what killed exports to ``out`` left beside it: ``.<name>.<pid>.*.partial`` folders whose process is
    gone, and ``.<name>.old`` (the previous export, kept only while being replaced). Returns what was removed."""
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.glob(f".{glob.escape(out.name)}.*.partial"):
        pid = p.name[len(out.name) + 2:].split(".", 1)[0]
        if p.is_dir() and not (pid.isdigit() and _pid_alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    old = out.with_name(f".{out.name}.old")
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    return removed


def check_replaceable(out: Path) -> None:
    """``overwrite=true`` replaces only a previous export: a real folder (not a link) holding a Spruce
    ``manifest.json``. Anything else is refused, so a mistyped ``out=`` cannot delete a user's folder."""
    from spruce.sparse.manifest import read_manifest
    if out.is_symlink() or not out.is_dir():
        raise ValueError(f"output {str(out)!r} exists and is not an export folder; overwrite=true only replaces a "
                         f"previous export (choose another out)")
    try:
        read_manifest(out)
    except ValueError:
        raise ValueError(f"output {str(out)!r} holds no Spruce manifest.json; overwrite=true only replaces a "
                         f"previous export, never another folder (choose another out)") from None


@contextmanager
def staged_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; on success rename it to ``out``, on failure delete it.

    ``out`` must not exist unless ``overwrite`` and it is a previous export (``check_replaceable``); the old
    directory is replaced only after the new one is complete. Staging folders of killed earlier exports to the
    same ``out`` are removed first (``remove_stale_staging``).
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise ValueError(f"output {str(out)!r} already exists; pass overwrite=true or choose another out")
        check_replaceable(out)
    created = []  # parents this call creates, removed again if the export fails
    parent = out.parent.absolute()
    while not parent.exists() and parent != parent.parent:
        created.append(parent)
        parent = parent.parent
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=out.parent))
    except OSError as e:
        _remove_empty(created)
        raise ValueError(f"cannot write to output directory {str(out.parent)!r}: {e.strerror or e}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise


def _remove_empty(dirs: Sequence[Path]) -> None:
    for d in dirs:  # deepest first
        try:
            d.rmdir()
        except OSError:
            return


def write_matrix(csr: CSR, stem: Path, formats: Sequence[str], original_shape: Sequence[int], root: Path,
                 comment: str | None = None) -> dict[str, str]:
    """Write ``csr`` as ``stem.<fmt>`` for each format; returns ``{fmt: path relative to root}``."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    files = {}
    for fmt in formats:
        path = stem.with_name(stem.name + "." + fmt)
        if fmt == "smtx":
            write_smtx(path, csr)
        elif fmt == "mtx":
            write_mtx(path, csr, comment)
        else:
            write_npz(path, csr, tuple(original_shape))
        files[fmt] = path.relative_to(root).as_posix()
    return files


def _json_ready(x):
    """Checkpoint metadata -> JSON (tensors to lists, unknown objects to strings)."""
    if isinstance(x, dict):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


# ---- real layers ----------------------------------------------------------------------------------------
def layer_csr(layer: RealLayer) -> tuple[CSR, int]:
    """``(csr, unmasked_nonzeros)`` of a layer's GEMM matrix following the stored-positions rule above."""
    w = layer.matrix
    if not layer.pruned:
        return dense_to_csr(w, torch.ones_like(w, dtype=torch.bool)), 0
    mask = layer.matrix_mask
    if mask is None:
        return dense_to_csr(w), 0
    outside = (w != 0) & ~mask
    n_out = int(outside.sum())
    return dense_to_csr(w, mask | outside), n_out


def twin_seed(seed: int, layer: str, kind: str) -> int:
    """The seed of ``kind``'s twin of ``layer`` (what ``export_checkpoint`` uses, so twins can be regenerated)."""
    return derive_seed(seed, layer, kind)


def twins_for_manifest(manifest: dict, kinds: Sequence[str] = KINDS, seed: int | None = None,
                       export_dir: str | Path | None = None) -> dict[tuple[str, str], CSR]:
    """Synthetic twins of every pruned layer of an export manifest, in memory: ``{(layer, kind): CSR}``.

    Same shape and nnz as the real layer; ``seed`` defaults to the manifest's, which reproduces the twins the
    export wrote. ``row_matched`` reads the real layer's structure and so needs ``export_dir``.
    """
    kinds = check_kinds(kinds)
    seed = int(manifest.get("seed", 0) if seed is None else seed)
    if "row_matched" in kinds and export_dir is None:
        raise ValueError("kind 'row_matched' needs export_dir (the real layers' files)")
    out = {}
    for entry in manifest["layers"]:
        if not entry.get("pruned"):
            continue
        ref = read_entry_csr(export_dir, entry) if "row_matched" in kinds else None
        m, k = entry["shape"]
        for kind in kinds:
            out[(entry["name"], kind)] = generate(kind, m, k, None, twin_seed(seed, entry["name"], kind), reference=ref,
                                                  nnz=entry["nnz"])
    return out


def _twin_entries(name: str, csr: CSR, original_shape: Sequence[int], kinds: Sequence[str], seed: int,
                  out: Path, formats: Sequence[str], n_per_sample: int | None) -> list[dict]:
    entries = []
    m, k = csr.shape
    for kind in kinds:
        s = twin_seed(seed, name, kind)
        twin = generate(kind, m, k, None, s, reference=csr, nnz=csr.nnz)
        files = write_matrix(twin, out / "synthetic" / kind / safe_name(name), formats, original_shape, out,
                             comment=f"spruce synthetic {kind} twin of {name}, seed {s}")
        entries.append({"name": f"{kind}:{name}", "twin_of": name, "model": None, "generator": kind, "seed": s,
                        "sparsity": 1.0 - csr.nnz / (m * k), "shape": [m, k], "original_shape": list(original_shape),
                        "n_per_sample": n_per_sample, "count": 1, "nnz": twin.nnz, "dtype": "float32",
                        "files": files, "stats": matrix_stats(twin), "ks_rows_vs_real": row_length_ks(twin, csr)})
    return entries


def default_out(ckpt: str | Path, meta: dict | None = None) -> Path:
    """``exports/<run name>``: ``ckpt["spruce"]["run"]["name"]`` when the checkpoint has one, else the file's
    stem, or its run directory for Lightning's generic names (``last``, ``epoch=...``)."""
    run = (meta or {}).get("run")
    if isinstance(run, dict) and isinstance(run.get("name"), str) and run["name"]:
        return Path("exports") / safe_name(run["name"])
    p = Path(ckpt)
    name = p.stem
    if name == "last" or name.startswith("epoch=") or name.startswith("step="):
        parent = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        name = parent.name or name
    return Path("exports") / safe_name(name)


def export_checkpoint(ckpt: str | Path, out: str | Path | None = None, formats: Sequence[str] = FORMATS,
                      kinds: Sequence[str] = KINDS, seed: int = 0, report: bool = True,
                      dlmc: str | Path | None = None, overwrite: bool = False, progress: bool = True) -> Path:
    """Export every Linear/Conv2d of checkpoint ``ckpt`` to ``out`` (see the module docstring); returns ``out``.

    ``kinds``: synthetic twins to generate for every pruned layer (empty for none). ``report`` writes
    ``report.md`` + ``plots/`` (with the DLMC sample at ``dlmc`` as a third reference when given). ``onnx`` in
    ``formats`` adds ``model.onnx`` (``spruce.models.onnx_export``); ``formats=[onnx]`` alone writes it and the
    manifest only (no per-layer files, so no twins and no report).
    """
    formats, kinds = check_formats(formats), check_kinds(kinds)
    onnx = "onnx" in formats
    formats = [f for f in formats if f not in MODEL_FORMATS]
    if not formats:
        kinds, report = [], False
    ckpt_data = load_checkpoint_file(ckpt)
    layers = checkpoint_layers(ckpt_data, source=str(ckpt))
    meta = ckpt_data.get("spruce") if isinstance(ckpt_data.get("spruce"), dict) else {}
    out = Path(out) if out is not None else default_out(ckpt, meta)
    with staged_dir(out, overwrite) as tmp:
        entries, twins = [], []
        for layer in tqdm(layers, desc="export layers", disable=not progress):
            csr, n_out = layer_csr(layer)
            m, k = csr.shape
            files = write_matrix(csr, tmp / "layers" / safe_name(layer.name), formats, layer.weight.shape, tmp,
                                 comment=f"spruce layer {layer.name} ({layer.kind}) from {Path(ckpt).name}"
                                 ) if formats else {}
            entries.append({"name": layer.name, "kind": layer.kind, "original_shape": list(layer.weight.shape),
                            "shape": [m, k], "nnz": csr.nnz, "sparsity": 1.0 - csr.nnz / (m * k),
                            "dtype": dtype_name(csr.values.dtype), "pruned": layer.pruned,
                            "unmasked_nonzeros": n_out, "files": files, "stats": matrix_stats(csr)})
            if layer.pruned and kinds:
                twins += _twin_entries(layer.name, csr, layer.weight.shape, kinds, seed, tmp, formats, None)
        manifest = {"version": MANIFEST_VERSION,
                    "source": {"type": "checkpoint", "ckpt": str(Path(ckpt).resolve()),
                               **{key: _json_ready(meta.get(key)) for key in ("model", "data", "sparsity",
                                                                              "metrics", "run")}},
                    "formats": formats, "seed": int(seed), "layers": entries, "synthetic": twins}
        if onnx:
            from spruce.models.onnx_export import export_checkpoint_onnx
            manifest["model_onnx"] = export_checkpoint_onnx(ckpt, tmp / "model.onnx").name
        write_manifest(tmp, manifest)
        if report:
            write_report(tmp, dlmc=dlmc, progress=progress)
    return out


# ---- synthetic only -------------------------------------------------------------------------------------
def unique_shapes(shapes: Sequence[LayerShape]) -> list[tuple[LayerShape, int]]:
    """One representative per distinct ``(kind, m, k, n_per_sample, original_shape)`` and how many share it."""
    seen: dict[tuple, list] = {}
    for s in shapes:
        key = (s.kind, s.m, s.k, s.n_per_sample, s.original_shape)
        if key in seen:
            seen[key][1] += 1
        else:
            seen[key] = [s, 1]
    return [(s, c) for s, c in seen.values()]


def export_synthetic(out: str | Path, shapes: Sequence[str], sparsities: Sequence[float],
                     kinds: Sequence[str] = ("uniform", "balanced", "magnitude"),
                     formats: Sequence[str] = FORMATS, seed: int = 0, dedupe: bool = True, report: bool = True,
                     dlmc: str | Path | None = None, overwrite: bool = False, progress: bool = True) -> Path:
    """Synthetic matrices for named model shapes (``spruce.sparse.shapes``) at each sparsity and kind.

    ``row_matched`` needs a real layer and is refused here. ``dedupe`` keeps one matrix per distinct layer shape
    (``count`` in the manifest says how many layers share it). With no shapes but a ``dlmc`` directory, only the
    DLMC comparison report is written.
    """
    formats, kinds = check_formats(formats), check_kinds(kinds)
    if any(f in MODEL_FORMATS for f in formats):
        raise ValueError("formats=[onnx] exports a checkpoint's model; synthetic.only has no model (drop onnx)")
    if "row_matched" in kinds:
        raise ValueError("kind 'row_matched' needs a real layer; with synthetic.only use uniform, balanced, magnitude")
    for s in sparsities:
        check_sparsity(s)
    models = {name: named_shapes(name) for name in shapes}
    if not models and dlmc is None:
        raise ValueError("nothing to export: give synthetic.shapes (e.g. [bert_base]) and/or a dlmc directory")
    if models and (not sparsities or not kinds):
        raise ValueError("synthetic export needs at least one sparsity and one kind")
    jobs = []
    for model, layer_shapes in models.items():
        groups = unique_shapes(layer_shapes) if dedupe else [(s, 1) for s in layer_shapes]
        jobs += [(model, s, c, sp, kind) for s, c in groups for sp in sparsities for kind in kinds]
    with staged_dir(out, overwrite) as tmp:
        entries = []
        for model, shape, count, sp, kind in tqdm(jobs, desc="synthetic", disable=not progress):
            s = derive_seed(seed, model, shape.name, kind, float(sp))
            csr = generate(kind, shape.m, shape.k, float(sp), s)
            stem = tmp / "synthetic" / model / kind / f"{float(sp):g}" / safe_name(shape.name)
            files = write_matrix(csr, stem, formats, shape.original_shape, tmp,
                                 comment=f"spruce synthetic {kind} {model} {shape.name} sparsity {sp}, seed {s}")
            entries.append({"name": f"{model}/{kind}/{float(sp):g}/{shape.name}", "twin_of": None, "model": model,
                            "generator": kind, "seed": s, "sparsity": 1.0 - csr.nnz / (shape.m * shape.k),
                            "target_sparsity": float(sp), "layer": shape.name, "layer_kind": shape.kind,
                            "shape": [shape.m, shape.k], "original_shape": list(shape.original_shape),
                            "n_per_sample": shape.n_per_sample, "count": count, "nnz": csr.nnz, "dtype": "float32",
                            "files": files, "stats": matrix_stats(csr), "ks_rows_vs_real": None})
        manifest = {"version": MANIFEST_VERSION,
                    "source": {"type": "synthetic", "shapes": list(shapes),
                               "sparsities": [float(s) for s in sparsities],
                               "dedupe": bool(dedupe), "dlmc": None if dlmc is None else str(dlmc)},
                    "formats": formats, "seed": int(seed), "layers": [], "synthetic": entries}
        write_manifest(tmp, manifest)
        if report:
            write_report(tmp, dlmc=dlmc, progress=progress)
    return Path(out)
