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
    return manifest


def read_entry_csr(export_dir: str | Path, entry: dict, fmt: str | None = None) -> CSR:
    """The CSR of one manifest entry (layer or synthetic), from ``fmt`` or the best file present
    (npz, then mtx, then smtx with values 1.0). Checks shape and nnz against the manifest."""
    root = Path(export_dir)
    files = entry.get("files", {})
    order = [fmt] if fmt else [f for f in ("npz", "mtx", "smtx") if f in files]
    if not order or order[0] not in files:
        raise ValueError(f"{entry.get('name')!r}: no {fmt or 'readable'} file in the export (has {sorted(files)})")
    f = order[0]
    dtype = torch_dtype(entry.get("dtype", "float32"))
    if f == "npz":
        csr, _ = read_npz(root / files[f])
    elif f == "mtx":
        csr = read_mtx(root / files[f], dtype=dtype)
    else:
        csr = read_smtx(root / files[f], dtype=dtype)
    if list(csr.shape) != list(entry["shape"]) or csr.nnz != entry["nnz"]:
        raise ValueError(f"{entry['name']!r}: file {files[f]} holds {list(csr.shape)} nnz={csr.nnz}, manifest says "
                         f"{entry['shape']} nnz={entry['nnz']}")
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
        if fmt is None and not {"npz", "mtx"} & set(entry.get("files", {})):
            raise ValueError(f"{entry['name']!r}: the export has no values (only {sorted(entry.get('files', {}))}); "
                             "export with formats including npz or mtx")
        csr = read_entry_csr(export_dir, entry, fmt)
        out[entry["name"]] = csr_to_dense(csr).reshape(entry["original_shape"])
    return out
