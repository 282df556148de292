"""End to end against the peer engines: ``bench.py deploy=auto`` for each model x sparsity, with
``peers=[onnxruntime,deepsparse,openvino]`` (each in its own process, same input, threads and repeats), then one
markdown table of medians (ms) from the runs' ``result.json``. Runs one after another: start it on a quiet machine.

    python benchmarks/e2e_peers.py --models bert_base,vgg16 --sparsities 0,0.5,0.9,0.95 --out docs/measured/e2e
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spruce import io  # noqa: E402
ENGINES = ("onnxruntime", "deepsparse", "openvino")


def run(model: str, sparsity: float, a: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, "bench.py", "deploy=auto", f"model={model}", f"prune.final={sparsity}",
           f"threads={a.threads}", f"repeats={a.repeats}", "logger.wandb=false", "progress=false",
           f"kernels=[{a.kernels}]", f"peers=[{','.join(a.peers)}]" if a.peers else "peers=[]", f"out_dir={out}"]
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        return {"model": model, "sparsity": sparsity, "error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    row = json.loads((out / "result.json").read_text())["row"]
    row["wall_s"] = round(time.time() - t0)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bert_base,vgg16")
    ap.add_argument("--sparsities", default="0,0.5,0.9,0.95")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--kernels", default="spruce_csr,spruce_csr_direct,torch_csr",
                    help="deploy candidates (fewer = faster planning)")
    ap.add_argument("--peers", default=",".join(ENGINES))
    ap.add_argument("--out", type=Path, default=Path("results/e2e_peers"))
    a = ap.parse_args()
    a.peers = [p for p in a.peers.split(",") if p]
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in a.models.split(","):
        for s in (float(x) for x in a.sparsities.split(",")):
            rows.append(run(model, s, a, (a.out / f"{model}-{s:g}").resolve()))
            print(json.dumps({k: rows[-1].get(k) for k in ("model", "sparsity", "latency_ms_median",
                                                            "dense_latency_ms_median", "error")}), flush=True)
    head = ["model", "sparsity", "PyTorch dense", "Spruce deploy=auto", "x dense"] + list(a.peers) + \
        ["Spruce / best peer", "pruned-layer memory"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['sparsity']:g} | failed: {r['error']} |")
            continue
        peers = {p["engine"]: p for p in r.get("peers", [])}
        cells = [r["model"], f"{r['sparsity']:g}", f"{r['dense_latency_ms_median']:.1f}",
                 f"{r['latency_ms_median']:.1f}", f"{r['speedup']:.2f}"]
        best = None
        for e in a.peers:
            p = peers.get(e, {})
            if p.get("status") == "ok":
                cells.append(f"{p['median_ms']:.1f}")
                best = p["median_ms"] if best is None else min(best, p["median_ms"])
            else:
                cells.append(p.get("status", "-"))
        cells.append(f"{r['latency_ms_median'] / best:.2f}" if best else "-")
        ratio = r.get("pruned_memory_ratio")
        cells.append(f"{ratio:.3f}x" if isinstance(ratio, (int, float)) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    text = (f"# End to end vs peer engines (batch 1, threads={a.threads}, medians of {a.repeats}, ms)\n\n"
            f"Command: `python benchmarks/e2e_peers.py {' '.join(sys.argv[1:])}`  \nDate: "
            f"{time.strftime('%Y-%m-%d %H:%M')}  \nRandom-init weights, magnitude-pruned layer-wise; each row one "
            f"`bench.py` run (Spruce, PyTorch dense and the peers in the same run).\n\n" + "\n".join(lines) + "\n")
    io.atomic_write(a.out / "e2e.md", text)
    io.write_json(a.out / "e2e.json", rows, indent=1, default=str)
    print(text)


if __name__ == "__main__":
    main()
