"""End to end, several checkpoints of one model side by side: ``bench.py deploy=auto ckpt=...`` for each, the
checkpoints taken in turn (round-robin, so drifting machine load falls on all alike), then one table of accuracy,
overall sparsity, dense and deployed latency (medians of each bench run) and the speed-up each run measured against
its own dense model. Written for uniform vs speed-guided per-layer targets (issue 16), usable for any set.

    python benchmarks/checkpoints_e2e.py uniform-s0=<a/last.ckpt> guided-s0=<b/last.ckpt> ... --rounds 2 \\
        --out docs/measured/pruning-2026-12-04/vgg16_guided_e2e
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spruce import io  # noqa: E402


def bench_once(ckpt: Path, a: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, "bench.py", "deploy=auto", f"ckpt={ckpt}", f"threads={a.threads}",
           f"repeats={a.repeats}", "logger.wandb=false", "progress=false", f"out_dir={out}", *a.bench_args]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"bench.py failed on {ckpt}: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads((out / "result.json").read_text())["row"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpts", nargs="+", help="label=<path to last.ckpt>; labels ending -s<seed> are grouped")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", type=Path, required=True, help="output prefix: <out>.md, <out>.csv")
    ap.add_argument("--bench-args", nargs="*", default=[], help="more bench.py overrides, e.g. compile=off")
    a = ap.parse_args(argv)
    try:
        ckpts = io.labelled_files(a.ckpts)
        if a.rounds < 1:
            raise ValueError(f"--rounds {a.rounds} is not allowed; it must be >= 1")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs: list[dict] = []
    from tqdm.auto import tqdm
    with tempfile.TemporaryDirectory(prefix="spruce-ckpt-e2e-") as tmp:
        jobs = [(r, lab, p) for r in range(a.rounds) for lab, p in ckpts]
        for i, (r, lab, p) in enumerate(tqdm(jobs, desc="bench", unit="run")):
            row = bench_once(p, a, Path(tmp) / str(i))
            runs.append({"label": lab, "round": r, "accuracy": row.get("accuracy"), "sparsity": row["sparsity"],
                         "dense_ms": row["dense_latency_ms_median"], "ms": row["latency_ms_median"],
                         "speedup": row["speedup"], "layers_sparse": row["layers_sparse"],
                         "kernels": row["kernels_used"], "input": row["input"]})
    per: dict[str, list[dict]] = {}
    for r in runs:
        per.setdefault(r["label"], []).append(r)
    table_rows = []
    for lab, rs in per.items():
        table_rows.append({"label": lab, "accuracy": 100 * rs[0]["accuracy"] if rs[0]["accuracy"] is not None
                           else None, "sparsity": rs[0]["sparsity"],
                           "dense_ms": statistics.median(r["dense_ms"] for r in rs),
                           "ms": statistics.median(r["ms"] for r in rs),
                           "speedup": statistics.median(r["speedup"] for r in rs),
                           "speedup_range": f"{min(r['speedup'] for r in rs):.2f}-{max(r['speedup'] for r in rs):.2f}",
                           "layers_sparse": rs[-1]["layers_sparse"], "kernels": rs[-1]["kernels"]})
    cols = [("checkpoint", "label", ""), ("accuracy %", "accuracy", ".2f"), ("overall sparsity", "sparsity", ".4f"),
            ("dense ms", "dense_ms", ".2f"), ("deployed ms", "ms", ".2f"), ("x dense (median)", "speedup", ".2f"),
            ("x dense (min-max)", "speedup_range", ""), ("sparse layers", "layers_sparse", "d"),
            ("kernels (last round)", "kernels", "")]
    table = io.markdown_table(table_rows, cols)
    cmd = "python benchmarks/checkpoints_e2e.py " + " ".join(a.ckpts) + \
          f" --rounds {a.rounds} --threads {a.threads} --repeats {a.repeats}" + \
          (" --bench-args " + " ".join(a.bench_args) if a.bench_args else "")
    io.atomic_write(a.out.with_suffix(".md"), f"Input {runs[0]['input']}, threads={a.threads}, {a.rounds} round(s) "
                    f"of bench.py deploy=auto per checkpoint, taken in turn.\n\n{table}\n\n`{cmd}`\n")
    io.write_csv(a.out.with_suffix(".csv"), runs, list(runs[0]))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
