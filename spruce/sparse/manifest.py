"""An export directory's ``manifest.json``: its schema, writing it, and reading an export back.

Both the exporter (``spruce.sparse.export``) and the comparison report (``spruce.sparse.compare``) use it, so
neither imports the other.

``manifest.json`` (version 1)::

    {"version": 1, "source": {...}, "formats": [...], "seed": int,
     "layers":    [{"name", "kind", "original_shape", "shape": [M, K], "nnz", "sparsity", "dtype", "pruned",
                    "unmasked_nonzeros", "files": {fmt: relative path}, "stats": {...}}],
     "synthetic": [{"name", "twin_of" (layer name or null), "model" (named shapes or null), "generator",
                    "seed", "sparsity", "shape", "original_shape", "n_per_sample", "count", "nnz", "dtype",
                    "files", "stats", "ks_rows_vs_real" (null without a real layer)}]}
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from spruce.io import atomic_write
from spruce.sparse.files import read_mtx, read_npz, read_smtx, torch_dtype
from spruce.sparse.formats import CSR, csr_to_dense

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def write_manifest(out: Path, manifest: dict) -> Path:
    """Write ``manifest`` as ``<out>/manifest.json`` (atomically)."""
    return atomic_write(Path(out) / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def read_manifest(export_dir: str | Path) -> dict:
    """The parsed ``manifest.json`` of an export; ValueError when missing, malformed or of another version."""
    path = Path(export_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: not a version-{MANIFEST_VERSION} Spruce export manifest")
    for key in ("layers", "synthetic"):
        manifest.setdefault(key, [])
        if not isinstance(manifest[key], list):
            raise ValueError(f"{path}: {key!r} must be a list of entries")
        for entry in manifest[key]:
            _entry_fields(entry, str(path))
    if not isinstance(manifest.setdefault("source", {}), dict):
        raise ValueError(f"{path}: 'source' must be an object")
    return manifest


def entry_file(export_dir: str | Path, rel: object) -> Path:
    """The path of a file a manifest names, which must lie inside ``export_dir``: a relative path without ``..``
    that resolves (symlinks followed) inside the export folder. ValueError otherwise; the file is never opened."""
    root = Path(export_dir)
    if not isinstance(rel, str) or not rel or "\0" in rel:
        raise ValueError(f"{root / MANIFEST}: file entry {rel!r} is not a relative path")
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or rel.startswith(("/", "\\")) or ":" in p.parts[0]:
        raise ValueError(f"{root / MANIFEST}: file entry {rel!r} points outside the export folder (refused)")
    full = root / p
    try:
        inside = full.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise ValueError(f"{root / MANIFEST}: file entry {rel!r} cannot be resolved ({e})") from None
    if not inside:
        raise ValueError(f"{root / MANIFEST}: file entry {rel!r} points outside the export folder (refused)")
    return full


def _entry_fields(entry: object, where: str) -> tuple[str, dict, list[int], int]:
    """``(name, files, shape, nnz)`` of a manifest entry, type-checked (ValueError naming the entry)."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: manifest entry is not an object: {str(entry)[:60]!r}")
    name, files, shape, nnz = entry.get("name"), entry.get("files", {}), entry.get("shape"), entry.get("nnz")
    if not isinstance(name, str):
        raise ValueError(f"{where}: manifest entry without a string 'name'")
    if not isinstance(files, dict):
        raise ValueError(f"{where}: entry {name!r}: 'files' must be an object of format -> path")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape)):
        raise ValueError(f"{where}: entry {name!r}: 'shape' must be [M, K] of non-negative integers, got {shape!r}")
    if not isinstance(nnz, int) or isinstance(nnz, bool) or nnz < 0:
        raise ValueError(f"{where}: entry {name!r}: 'nnz' must be a non-negative integer, got {nnz!r}")
    return name, files, shape, nnz


def read_entry_csr(export_dir: str | Path, entry: dict, fmt: str | None = None) -> CSR:
    """The CSR of one manifest entry (layer or synthetic), from ``fmt`` or the best file present
    (npz, then mtx, then smtx with values 1.0). Checks shape and nnz against the manifest; the file must lie inside
    ``export_dir`` (``entry_file``). ValueError on anything malformed."""
    root = Path(export_dir)
    name, files, shape, nnz = _entry_fields(entry, str(root / MANIFEST))
    order = [fmt] if fmt else [f for f in ("npz", "mtx", "smtx") if f in files]
    if not order or order[0] not in files:
        raise ValueError(f"{name!r}: no {fmt or 'readable'} file in the export (has {sorted(files)})")
    f = order[0]
    dtype = torch_dtype(str(entry.get("dtype", "float32")))
    path = entry_file(root, files[f])
    if f == "npz":
        csr, _ = read_npz(path)
    elif f == "mtx":
        csr = read_mtx(path, dtype=dtype)
    else:
        csr = read_smtx(path, dtype=dtype)
    if list(csr.shape) != list(shape) or csr.nnz != nnz:
        raise ValueError(f"{name!r}: file {files[f]} holds {list(csr.shape)} nnz={csr.nnz}, manifest says "
                         f"{shape} nnz={nnz}")
    return csr


def read_export(export_dir: str | Path, fmt: str | None = None) -> dict[str, torch.Tensor]:
    """``{layer name: dense weight in its original shape}`` for the real layers of an export.

    ``fmt`` None picks npz, else mtx (both exact). ``fmt="smtx"`` is refused: it holds no values.
    """
    if fmt == "smtx":
        raise ValueError("fmt='smtx' holds only the structure; read values from 'npz' or 'mtx'")
    manifest = read_manifest(export_dir)
    out = {}
    for entry in manifest["layers"]:
        name, files, _, _ = _entry_fields(entry, str(Path(export_dir) / MANIFEST))
        if fmt is None and not {"npz", "mtx"} & set(files):
            raise ValueError(f"{name!r}: the export has no values (only {sorted(files)}); "
                             "export with formats including npz or mtx")
        csr = read_entry_csr(export_dir, entry, fmt)
        original = entry.get("original_shape")
        if (not isinstance(original, list) or not all(isinstance(v, int) and v >= 0 for v in original)
                or math.prod(original) != csr.shape[0] * csr.shape[1]):
            raise ValueError(f"{name!r}: original_shape {original!r} does not hold {list(csr.shape)}")
        out[name] = csr_to_dense(csr).reshape(original)
    return out
