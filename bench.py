"""Deploy a pruned model on the best kernel per layer and measure it: ``python bench.py deploy=auto ...``.

A thin Hydra wrapper: ``mode=deploy`` / ``mode=aggregate`` run :func:`spruce.deploy.pipeline.bench`, ``mode=study``
runs :func:`spruce.study.run_study` (see ``conf/bench.yaml`` for every option).
Bad input prints one ``error: ...`` line and exits with status 2, leaving no files behind.
"""
from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig, OmegaConf


def _plain(cfg: DictConfig) -> dict:
    """The DictConfig as a plain dict, plus what only Hydra knows: run/sweep dir, whether model= was given."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    d = OmegaConf.to_container(cfg, resolve=True)
    hc = HydraConfig.get()
    d["out_dir"] = d.get("out_dir") or hc.runtime.output_dir
    if hc.mode == RunMode.MULTIRUN and not d.get("sweep_dir"):
        d["sweep_dir"] = hc.sweep.dir
    d["model_explicit"] = any(o.split("=", 1)[0].lstrip("+~") == "model" for o in hc.overrides.task)
    d["group_choices"] = {g: hc.runtime.choices.get(g) for g in ("model", "prune", "study")}  # optional groups
    return d


def _study(d: dict) -> dict:
    from spruce.study import run_study
    from spruce.study.config import from_bench_mode
    return {"mode": "study", "path": str(run_study(from_bench_mode(d)))}


@hydra.main(config_path="conf", config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from spruce.deploy.config import check_groups
    from spruce.deploy.pipeline import bench, remove_if_empty
    d = _plain(cfg)
    try:
        check_groups(d["group_choices"])  # before the study too (bench() checks them again, cheaply)
        out = _study(d) if d.get("mode") == "study" else bench(d)
    except (ValueError, OSError) as e:  # bad options, unavailable kernels, verification failures: one line, no files
        from spruce.io import first_line
        print(f"error: {first_line(e)}", file=sys.stderr)
        remove_if_empty(d["out_dir"])
        sys.exit(2)
    if out.get("mode") == "study":
        remove_if_empty(d["out_dir"])  # the study writes under results/study/: Hydra's run dir stays empty
    if out.get("mode") in ("study", "aggregate"):
        print(json.dumps(out, indent=1, default=str))
        return
    keys = ("model", "init", "deploy", "sparsity", "latency_ms_median", "dense_latency_ms_median", "speedup",
            "pruned_memory_ratio", "accuracy", "kernels_used", "peer_onnxruntime_ms", "peer_deepsparse_ms",
            "peer_openvino_ms")
    print(json.dumps({k: out.get(k) for k in keys if k in out} | {"paths": out.get("paths")}, indent=1,
                     default=str))


if __name__ == "__main__":
    main()
