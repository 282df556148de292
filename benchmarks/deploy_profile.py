"""Where a deployed model's milliseconds go: sparse kernels vs the dense remainder, eager and compiled.

    python benchmarks/deploy_profile.py <artefact dir from bench.py save=...> [--threads 2] [--repeats 20] [--compile]

Loads the artefact (no planning), then on its stored reference input:
* eager: median end-to-end ms, and the sparse modules' own time (perf_counter around each Sparse module's forward,
  summed per call; the hooks cost ~2 us per layer), so remainder = total - sparse kernels;
* the top aten ops of the eager remainder (torch.profiler self CPU time per forward; the kernels' C++ calls are
  not aten ops and do not appear);
* with --compile: the inductor-compiled model's median, and the profiler's split between the ``spruce::sparse_*``
  custom ops (the kernels), the compiled graph's own code (fused dense remainder) and the rest.
Timings on a shared 2-core machine drift by 20-30%: compare ratios within one run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median_ms(fn, repeats: int, warmup: int = 3) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def _sparse_time(model, run, repeats: int) -> tuple[float, float]:
    """(median total ms, median ms spent inside Sparse modules' forward) with hooks on every Sparse module."""
    from spruce.deploy.modules import SPARSE_MODULES
    acc = [0.0]
    start: dict[int, float] = {}
    hs = []
    for m in model.modules():
        if isinstance(m, SPARSE_MODULES):
            hs.append(m.register_forward_pre_hook(lambda mod, a: start.__setitem__(id(mod), time.perf_counter())))
            hs.append(m.register_forward_hook(
                lambda mod, a, o: acc.__setitem__(0, acc[0] + time.perf_counter() - start[id(mod)])))
    totals, sparse = [], []
    try:
        with torch.inference_mode():
            for _ in range(3):
                run(model)
            for _ in range(repeats):
                acc[0] = 0.0
                t0 = time.perf_counter()
                run(model)
                totals.append((time.perf_counter() - t0) * 1e3)
                sparse.append(acc[0] * 1e3)
    finally:
        for h in hs:
            h.remove()
    return statistics.median(totals), statistics.median(sparse)


def _profile(model, run, n: int = 5, rows: int = 12) -> list[tuple[str, float, float]]:
    """``[(op, self ms, total ms per forward)]``, largest self time first."""
    from torch.profiler import ProfilerActivity, profile
    with torch.inference_mode():
        run(model)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                run(model)
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1e3 / n, e.cpu_time_total / 1e3 / n) for e in ev[:rows]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from spruce.deploy import load
    from spruce.deploy.artifact import reference_input
    from spruce.deploy.compare import run_model
    x = reference_input(a.artifact)
    model = load(a.artifact, verify=True)

    def run(m):
        return run_model(m, x)
    total, sparse = _sparse_time(model, run, a.repeats)
    print(f"eager: {total:.1f} ms per forward; sparse modules {sparse:.1f} ms; remainder {total - sparse:.1f} ms")
    print("eager remainder, top aten ops (self CPU ms per forward):")
    for k, ms, _ in _profile(model, run):
        print(f"  {ms:8.2f}  {k}")
    if a.compile:
        from spruce.deploy.compiled import compile_model
        compiled, info = compile_model(model, x, mode="on")
        print(f"compile: {info}")
        if info["compiled"]:
            e, c = _median_ms(lambda: run(model), a.repeats), _median_ms(lambda: run(compiled), a.repeats)
            print(f"same run: eager {e:.1f} ms, compiled {c:.1f} ms")
            prof = _profile(compiled, run, rows=60)
            ops = sum(tot for k, _, tot in prof if k.startswith("spruce::sparse"))
            print(f"compiled: spruce::sparse_* ops {ops:.1f} ms per forward (with their children); top self times:")
            for k, ms, _ in prof[:12]:
                print(f"  {ms:8.2f}  {k[:90]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
