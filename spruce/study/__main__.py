"""``python -m spruce.study [model=vgg16] [quick=true] [source=dlmc] ...``: run the study, print the report dir.

One Hydra CLI over ``conf/study.yaml`` (the keys of ``conf/study/default.yaml`` at top level), plus
``action=rerender dir=<report>``, ``action=merge dirs=[...] out=<new dir>`` and ``action=band dirs=[<run>,...]
out=<dir> [min_runs=3] [profile=<json>]`` (the model against the spread of several runs' crossovers, ``spruce.study.bands``).
Calibration alone is ``python -m spruce.perf``. Bad input prints one ``error: ...`` line and exits with status 2.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

ACTIONS = ("run", "rerender", "merge", "band")


def run(cfg: dict) -> str:
    """Do what ``cfg["action"]`` says; returns the report dir. ValueError on bad input."""
    action = cfg.pop("action", "run")
    report_dir, dirs, min_runs = cfg.pop("dir", None), cfg.pop("dirs", None), cfg.pop("min_runs", 3)
    profile = cfg.pop("profile", None)
    if action == "rerender":
        from spruce.study.study import rerender
        if not report_dir:
            raise ValueError("action=rerender needs dir=<report dir>")
        return str(rerender(report_dir, recalibrate=bool(cfg.get("recalibrate"))))
    if action == "merge":
        from spruce.study.study import merge_reports
        if not dirs or not cfg.get("out"):
            raise ValueError("action=merge needs dirs=[<report>,...] and out=<new report dir>")
        return str(merge_reports(list(dirs), cfg["out"]))
    if action == "band":
        from spruce.study.bands import band_command
        if not dirs or not cfg.get("out"):
            raise ValueError("action=band needs dirs=[<run>,...] (study run folders) and out=<dir for band.md/csv/png>")
        return str(band_command(list(dirs), cfg["out"], min_runs, profile))
    if action != "run":
        raise ValueError(f"action={action!r} is not allowed; allowed: {', '.join(ACTIONS)}")
    from spruce.study import run_study
    return str(run_study(cfg))


@hydra.main(config_path="../conf", config_name="study", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        print(run(OmegaConf.to_container(cfg, resolve=True)))
    except ValueError as e:
        from spruce.io import first_line
        print(f"error: {first_line(e)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
