"""``python -m spruce.study [--quick] [--model vgg16] [--source dlmc] ...``: run the study, print the report dir."""
from __future__ import annotations

import argparse
import json
import sys


def _list(conv):
    return lambda s: [conv(v) for v in s.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spruce.study", description=__doc__)
    p.add_argument("--quick", action="store_true", help="CI-sized run (conf/study/quick.yaml)")
    p.add_argument("--model", choices=["vgg16", "bert_base"])
    p.add_argument("--ckpt", help="pruned .ckpt: real layers beside synthetic twins")
    p.add_argument("--source", help="shapes | ckpt | dlmc | <folder of .smtx>")
    p.add_argument("--dlmc-dir")
    p.add_argument("--sparsities", type=_list(float), help="comma list, e.g. 0.5,0.9,0.98")
    p.add_argument("--batches", type=_list(int))
    p.add_argument("--kinds", type=_list(str), help="generator kinds, e.g. uniform,magnitude")
    p.add_argument("--twin-kinds", type=_list(str), help="twins of real layers, e.g. uniform,row_matched")
    p.add_argument("--formats", type=_list(str))
    p.add_argument("--kernels", type=_list(str))
    p.add_argument("--repeats", type=int)
    p.add_argument("--budget-s", type=float)
    p.add_argument("--max-n", type=int)
    p.add_argument("--n-cap", type=int, help="truncate larger N to this many columns")
    p.add_argument("--dlmc-ns", type=_list(int))
    p.add_argument("--dlmc-max-files", type=int)
    p.add_argument("--dlmc-sparsities", type=_list(float), help="DLMC sparsity folders, e.g. 0.7,0.9,0.98")
    p.add_argument("--shapes", help='JSON list of {"name","m","k","n"}')
    p.add_argument("--out")
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--recalibrate", action="store_true")
    p.add_argument("--wandb", choices=["offline", "disabled"])
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--merge", metavar="DIR,DIR,...", help="merge the rows of several reports into --out")
    p.add_argument("--calibrate", action="store_true",
                   help="only calibrate this machine (every available CPU kernel; cached) and print the file")
    p.add_argument("--rerender", metavar="REPORT_DIR",
                   help="rebuild REPORT_DIR's report from its rows.csv with the current machine profile")
    a = p.parse_args(argv)
    if a.calibrate:
        import torch

        from spruce import kernels as registry
        from spruce.perf.calibration import load_or_calibrate, profile_path
        if a.threads:
            torch.set_num_threads(a.threads)
        load_or_calibrate(registry.kernels(device="cpu"), recalibrate=a.recalibrate, progress=not a.no_progress)
        print(profile_path())
        return 0
    if a.merge:
        try:
            from spruce.study.study import merge_reports
            if not a.out:
                raise ValueError("--merge needs --out <new report dir>")
            print(merge_reports(a.merge.split(","), a.out))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if a.rerender:
        try:
            from spruce.study.study import rerender
            print(rerender(a.rerender, recalibrate=a.recalibrate))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    cfg = {k: v for k, v in vars(a).items() if v is not None and k not in ("no_progress", "rerender", "calibrate", "merge")}
    for flag in ("quick", "recalibrate"):
        if not cfg.get(flag):
            cfg.pop(flag, None)
    if a.no_progress:
        cfg["progress"] = False
    try:
        if "shapes" in cfg:
            cfg["shapes"] = json.loads(cfg["shapes"])
        from spruce.study import run_study
        out = run_study(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
