"""The real-vs-synthetic comparison report of an export: ``report.md`` + ``plots/*.png``.

Three kinds of matrices meet here: the real layers of an export, their synthetic twins (same shape and nnz,
one per generator kind), and the DLMC sample (``<dlmc>/<model>/<method>/<sparsity>/<layer>.smtx``:
``magnitude_pruning`` is the real reference, ``random_pruning`` its published random control; our generator
kinds are also run against every DLMC magnitude-pruned matrix).

Per model, a table lists every matrix's statistics (``spruce.sparse.stats``) and ``KS`` = the KS distance of
its row densities to the real matrix it stands in for; a summary table averages per generator kind.

Hook for kernel times (or any other per-matrix number): ``write_report(..., extra_columns={"csr ms": {id: v}})``
adds a column to every table, where ``id`` is a row's ``id`` (``report_rows`` returns them): a real layer's name,
``"<kind>:<layer>"`` for a twin, the manifest name for synthetic-only matrices, and
``"dlmc:<model>/<method or kind>/<sparsity>/<layer>"`` for DLMC rows. Missing values print as ``-``.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from spruce import io
from spruce.sparse.files import read_smtx
from spruce.sparse.formats import CSR
from spruce.sparse.manifest import read_entry_csr, read_manifest
from spruce.sparse.stats import matrix_stats, row_densities, row_length_ks
from spruce.sparse.synthetic import KINDS, derive_seed, generate

DLMC_SPARSITIES = (0.7, 0.9, 0.98)
# (header, stats key or row key, format)
COLUMNS = (("matrix", "label", "s"), ("source", "source", "s"), ("shape", "shape", "s"),
           ("density", "density", ".3f"), ("row CoV", "row_cov", ".3f"), ("max/mean", "row_max_over_mean", ".2f"),
           ("empty rows", "empty_rows", "d"), ("col CoV", "col_cov", ".3f"), ("2:4 conf", "conform_2of4", ".3f"),
           ("1x4 fill", "blk_1x4_fill", ".3f"), ("4x1 fill", "blk_4x1_fill", ".3f"),
           ("16x16 nonempty", "blk_16x16_nonempty", ".3f"), ("16x16 fill", "blk_16x16_fill", ".3f"),
           ("32x32 nonempty", "blk_32x32_nonempty", ".3f"), ("KS rows vs real", "ks", ".3f"))
BAR_KEYS = ("conform_2of4", "blk_1x4_fill", "blk_4x1_fill", "blk_16x16_nonempty", "blk_16x16_fill",
            "blk_32x32_nonempty")


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """A GitHub markdown table of ``rows`` (dicts with top-level keys or a nested ``stats`` dict)."""
    return io.markdown_table([{**r.get("stats", {}), **r} for r in rows], columns)


# ---- rows -----------------------------------------------------------------------------------------------
def export_rows(export_dir: str | Path) -> dict[str, list[dict]]:
    """Rows per model group of an export: real layers followed by their twins (checkpoint exports), or the
    synthetic-only matrices grouped by named model. Each row: ``id, label, source, shape, stats, ks, group``
    (+ ``rows_density`` for the histograms)."""

    root = Path(export_dir)
    manifest = read_manifest(root)
    try:
        return _export_rows(root, manifest)
    except (KeyError, TypeError, AttributeError) as e:  # a field the report needs is missing or of the wrong type
        raise ValueError(f"{root / 'manifest.json'}: malformed entry ({type(e).__name__}: {e})") from None


def _export_rows(root: Path, manifest: dict) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    model = str((manifest["source"].get("model") or {}).get("name", "checkpoint"))
    twins = defaultdict(list)
    for t in manifest["synthetic"]:
        if t.get("twin_of") is not None:
            twins[t["twin_of"]].append(t)
    for entry in manifest["layers"]:
        if not entry["pruned"] and not twins.get(entry["name"]):
            groups[model].append(_row(entry, entry["name"], "real (dense)", None, None))
            continue
        groups[model].append(_row(entry, entry["name"], "real", root, entry))
        for t in twins.get(entry["name"], []):
            groups[model].append(_row(t, t["name"], t["generator"], root, t))
    for t in manifest["synthetic"]:
        if t.get("twin_of") is None:
            row = _row(t, t["name"], t["generator"], None, None, label=f"{t['layer']} @ {t['target_sparsity']:g}")
            row["bucket"] = f"{t['target_sparsity']:g}"
            groups[f"{t['model']} (synthetic)"].append(row)
    return dict(groups)


def _row(entry: dict, rid: str, source: str, root: Path | None, read: dict | None, label: str | None = None) -> dict:

    row = {"id": rid, "label": label or entry.get("twin_of") or entry["name"], "source": source,
           "shape": "x".join(map(str, entry["shape"])), "stats": entry["stats"],
           "ks": entry.get("ks_rows_vs_real") if source != "real" else 0.0}
    if source == "real (dense)":
        row["ks"] = None
    if root is not None and read is not None:
        csr = read_entry_csr(root, read)  # npz first: the fastest to read
        row["rows_density"] = row_densities(csr)
    return row


def dlmc_rows(dlmc: str | Path, sparsities: Sequence[float] = DLMC_SPARSITIES, kinds: Sequence[str] = KINDS,
              seed: int = 0, progress: bool = False) -> dict[str, list[dict]]:
    """Rows per DLMC model: for each magnitude-pruned matrix, itself (real), the published random-pruning
    control, and our generator's twins of it (same shape and nnz), with KS distances to the real matrix."""
    from tqdm import tqdm

    root = Path(dlmc)
    if not root.is_dir():
        raise ValueError(f"DLMC directory {str(root)!r} does not exist")
    files = sorted(root.glob("*/magnitude_pruning/*/*.smtx"))
    files = [f for f in files if _as_float(f.parent.name) in {float(s) for s in sparsities}]
    if not files:
        raise ValueError(f"{root}: no <model>/magnitude_pruning/<sparsity>/*.smtx files for sparsities "
                         f"{list(sparsities)}")
    groups: dict[str, list[dict]] = defaultdict(list)
    for f in tqdm(files, desc="DLMC", disable=not progress):
        model, sp, layer = f.parts[-4], f.parent.name, f.stem
        real = read_smtx(f)
        label = f"{layer} @ {sp}"
        groups[f"DLMC {model}"].append(_dlmc_row(f"dlmc:{model}/magnitude_pruning/{sp}/{layer}", label,
                                                 "DLMC magnitude", real, real))
        rnd = root / model / "random_pruning" / sp / f.name
        if rnd.is_file():
            groups[f"DLMC {model}"].append(_dlmc_row(f"dlmc:{model}/random_pruning/{sp}/{layer}", label,
                                                     "DLMC random", read_smtx(rnd), real))
        for kind in kinds:
            twin = generate(kind, real.shape[0], real.shape[1], None, derive_seed(seed, "dlmc", model, sp, layer, kind),
                            reference=real, nnz=real.nnz)
            groups[f"DLMC {model}"].append(_dlmc_row(f"dlmc:{model}/{kind}/{sp}/{layer}", label, kind, twin, real))
    return dict(groups)


def _as_float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return float("nan")


def _dlmc_row(rid: str, label: str, source: str, csr: CSR, real: CSR) -> dict:
    return {"id": rid, "label": label, "source": source, "shape": f"{csr.shape[0]}x{csr.shape[1]}",
            "stats": matrix_stats(csr), "ks": row_length_ks(csr, real), "rows_density": row_densities(csr),
            "bucket": label.rsplit(" @ ", 1)[-1]}


def summary_rows(rows: Sequence[dict]) -> list[dict]:
    """Mean statistics and KS per source over a group's rows (dense real layers left out), separately per
    ``bucket`` (the sparsity of DLMC and synthetic-only rows; one bucket for a checkpoint's layers)."""
    by: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r["source"] != "real (dense)":
            by[(r.get("bucket") or "", r["source"])].append(r)
    out = []
    for (bucket, source), rs in sorted(by.items(), key=lambda kv: _bucket_key(kv[0][0])):
        stats = {k: float(np.mean([r["stats"][k] for r in rs])) for k in rs[0]["stats"]}
        ks = [r["ks"] for r in rs if r.get("ks") is not None]
        out.append({"id": f"summary:{bucket}:{source}", "label": f"{len(rs)} @ {bucket}" if bucket else str(len(rs)),
                    "source": source, "shape": "", "stats": stats, "ks": float(np.mean(ks)) if ks else None})
    return out


def _bucket_key(bucket: str) -> float:
    return _as_float(bucket) if bucket else -1.0


# ---- plots ----------------------------------------------------------------------------------------------
def _save_png(fig, path: Path) -> None:
    io.write_figure(path, fig, dpi=110, bbox_inches="tight")


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in s).strip("_").lower()


def plot_row_histograms(rows: Sequence[dict], title: str, path: Path, max_panels: int = 16) -> Path | None:
    """A grid of row-density histograms: per real matrix, the real one and each stand-in as step lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if "rows_density" in r:
            panels[r["label"]].append(r)
    panels = {k: v for k, v in panels.items() if len(v) > 1} or panels
    if not panels:
        return None
    names = list(panels)[:max_panels]
    cols = min(4, len(names))
    nrows = -(-len(names) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False, layout="constrained")
    for ax, name in zip(axes.ravel(), names):
        allv = np.concatenate([r["rows_density"] for r in panels[name]])
        bins = np.linspace(allv.min(), allv.max() + 1e-9, 30)
        for r in panels[name]:
            is_ref = r["source"] in ("real", "DLMC magnitude")  # the reference: black, thick, on top
            ax.hist(r["rows_density"], bins=bins, histtype="step", label=r["source"], linewidth=2.2 if is_ref else 1.0,
                    color="black" if is_ref else None, zorder=3 if is_ref else 2)
        ax.set_title(name if len(name) <= 40 else "..." + name[-37:], fontsize=8)
        ax.set_xlabel("row density (nnz / K)", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle(title)
    _save_png(fig, path)
    plt.close(fig)
    return path


def plot_block_fill(summary: Sequence[dict], title: str, path: Path) -> Path | None:
    """Grouped bars of block statistics (mean over a group) per source."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not summary:
        return None
    buckets = sorted({s["label"].split(" @ ")[-1] for s in summary if " @ " in s["label"]}, key=_as_float)
    if len(buckets) > 1:  # several sparsities: plot the middle one
        mid = buckets[len(buckets) // 2]
        summary = [s for s in summary if s["label"].endswith(f" @ {mid}")]
        title = f"{title}, sparsity {mid}"
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(summary)
    x = np.arange(len(BAR_KEYS))
    for i, s in enumerate(summary):
        ax.bar(x + i * width, [s["stats"][k] for k in BAR_KEYS], width, label=s["source"])
    ax.set_xticks(x + 0.4 - width / 2, [k.replace("blk_", "") for k in BAR_KEYS], fontsize=8)
    ax.set_ylabel("fraction")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title(title)
    _save_png(fig, path)
    plt.close(fig)
    return path


# ---- the report -----------------------------------------------------------------------------------------
def report_rows(export_dir: str | Path | None, dlmc: str | Path | None = None, seed: int = 0,
                progress: bool = False) -> dict[str, list[dict]]:
    """All rows of the report per group (export groups, then DLMC groups)."""
    groups = export_rows(export_dir) if export_dir is not None else {}
    if dlmc is not None:
        groups.update(dlmc_rows(dlmc, seed=seed, progress=progress))
    return groups


def write_report(export_dir: str | Path, dlmc: str | Path | None = None,
                 extra_columns: dict[str, dict[str, object]] | None = None, seed: int = 0,
                 progress: bool = False) -> Path:
    """Write ``report.md`` and ``plots/*.png`` into ``export_dir``; returns the report path.

    ``extra_columns``: ``{header: {row id: value}}`` appended to every table (e.g. kernel times, real vs
    synthetic, from the study).
    """
    root = Path(export_dir)
    groups = report_rows(root, dlmc, seed, progress)
    extra = extra_columns or {}
    for header, values in extra.items():
        for rows in groups.values():
            for r in rows:
                r[header] = values.get(r["id"])
    columns = list(COLUMNS) + [(h, h, ".4g") for h in extra]
    (root / "plots").mkdir(exist_ok=True)
    md = ["# Sparse structure: real layers vs synthetic twins", "",
          "Statistics are of the stored positions (see `spruce/sparse/stats.py` for definitions). "
          "`KS rows vs real` is the Kolmogorov-Smirnov distance between the row-density distributions of a matrix "
          "and the real matrix it stands in for (0 = identical distributions).", ""]
    if not groups:
        md.append("(nothing to compare: no pruned layers and no DLMC directory)")
    for group, rows in groups.items():
        summary = summary_rows(rows)
        slug = _slug(group)
        md += [f"## {group}", "", "### Summary (mean over matrices)", "",
               markdown_table(summary, [("source", "source", "s"), ("matrices", "label", "s")]
                              + [c for c in columns if c[1] not in ("label", "source", "shape")]), ""]
        hist = plot_row_histograms(rows, f"{group}: row-length distributions", root / "plots" / f"rows_{slug}.png")
        bars = plot_block_fill(summary, f"{group}: block structure (mean)", root / "plots" / f"blocks_{slug}.png")
        for p in (hist, bars):
            if p is not None:
                md += [f"![{p.stem}](plots/{p.name})", ""]
        md += ["### Every matrix", "", markdown_table(rows, columns), ""]
    return io.atomic_write(root / "report.md", "\n".join(md) + "\n")
