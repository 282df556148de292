"""Export a checkpoint's sparse layers (and synthetic twins) to files: ``python export.py ckpt=<run.ckpt>``.

A thin Hydra wrapper over ``spruce.sparse.export`` (see conf/export.yaml for every option). Prints the export
directory at the end. Bad input prints one ``error: ...`` line, exits with status 1 and writes nothing.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

def _as_list(x, what: str) -> list:
    if x is None:
        return []
    if isinstance(x, (str, int, float)):
        return [x]
    if isinstance(x, (list, tuple)):
        return list(x)
    raise ValueError(f"{what} must be a list, got {x!r}")


def _dlmc(value) -> Path | None:
    """``dlmc=auto``: the sample where ``spruce.sparse.dlmc`` finds one (else none); a path: that folder."""
    from spruce.sparse.dlmc import find_dlmc
    if value is None or value is False:
        return None
    if value == "auto":
        return find_dlmc()
    if not Path(str(value)).is_dir():
        raise ValueError(f"dlmc={value!r} is not a directory (pass dlmc=null to leave DLMC out of the report)")
    return Path(str(value))


def run(cfg: dict) -> Path:
    """Validate the plain config and run the export; returns the export directory. ValueError on bad input."""
    from spruce.sparse.export import check_formats, check_kinds, export_checkpoint, export_synthetic
    from spruce.sparse.synthetic import KINDS, check_sparsity

    syn = cfg.get("synthetic") or {}
    formats = check_formats([str(f) for f in _as_list(cfg.get("formats"), "formats")])
    only = bool(syn.get("only", False))
    kinds = syn.get("kinds")
    if kinds is None:
        kinds = [k for k in KINDS if not (only and k == "row_matched")]
    kinds = check_kinds([str(k) for k in _as_list(kinds, "synthetic.kinds")])
    seed = syn.get("seed", 0)
    if not isinstance(seed, int):
        raise ValueError(f"synthetic.seed must be an int, got {seed!r}")
    dlmc = _dlmc(cfg.get("dlmc")) if cfg.get("report", True) else None
    common = dict(formats=formats, kinds=kinds, seed=seed, report=bool(cfg.get("report", True)), dlmc=dlmc,
                  overwrite=bool(cfg.get("overwrite", False)), progress=bool(cfg.get("progress", True)))
    if only:
        if cfg.get("ckpt") is not None:
            raise ValueError("give either ckpt=<path> or synthetic.only=true, not both")
        sparsities = _as_list(syn.get("sparsities"), "synthetic.sparsities")
        for s in sparsities:
            check_sparsity(s)
        shapes = [str(s) for s in _as_list(syn.get("shapes"), "synthetic.shapes")]
        out = Path(cfg["out"]) if cfg.get("out") else Path("exports") / "synthetic"
        return export_synthetic(out, shapes, [float(s) for s in sparsities], dedupe=bool(syn.get("dedupe", True)),
                                **common)
    if cfg.get("ckpt") is None:
        raise ValueError("no checkpoint: pass ckpt=<path/to/run.ckpt> (or synthetic.only=true)")
    return export_checkpoint(cfg["ckpt"], Path(cfg["out"]) if cfg.get("out") else None, **common)


@hydra.main(config_path="conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        out = run(OmegaConf.to_container(cfg, resolve=True))
    except (ValueError, OSError) as e:
        from spruce.io import first_line
        print(f"error: {first_line(e)}", file=sys.stderr)
        sys.exit(1)
    print(out)


if __name__ == "__main__":
    main()
