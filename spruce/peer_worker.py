"""Time one peer inference engine on an ONNX file, inside the peers venv: ``python -m spruce.peer_worker ...``.

Runs in ``.venv-peers`` (see ``scripts/install_peers.sh``), which holds numpy<2 and the engines but not torch, so
this module imports only the standard library, numpy and the engine it is asked for: never torch, never the rest
of ``spruce`` (``spruce/__init__.py`` only sets ``__version__``). ``spruce.deploy.peers`` starts it once per engine,
each in its own process, so the engines' thread pools and allocators never meet.

Command line::

    python -m spruce.peer_worker --engine onnxruntime --model m.onnx --inputs in.npz --out out.npz \
        --threads 2 --repeats 10 --warmup 2
    python -m spruce.peer_worker --versions          # {engine: version | "not installed: ..."} as JSON

``in.npz`` holds the model's inputs under their ONNX input names, in the graph's input order (batch 1). The worker
loads and compiles the model, runs it ``warmup`` times untimed and ``repeats`` times timed (wall clock around the
engine's synchronous run call), writes every output to ``out.npz`` (keys ``arr_0``, ``arr_1``, ... in the graph's
output order) and prints one JSON line:
``{"engine", "version", "median_ms", "p90_ms", "times_ms", "load_ms", "threads", "detail"}``.
Exit status: 0 ok, 3 engine not installed (the JSON line says why), anything else a failure (stderr says why).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable

ENGINES = ("onnxruntime", "deepsparse", "openvino")
EXIT_NOT_INSTALLED = 3

Runner = Callable[[dict[str, Any]], list[Any]]  # feeds by input name -> every output, graph order


class NotInstalled(Exception):
    """The engine's package cannot be imported in this interpreter."""


def _import(engine: str) -> Any:
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # DeepSparse sends usage analytics on import otherwise
    module = {"onnxruntime": "onnxruntime", "deepsparse": "deepsparse", "openvino": "openvino"}[engine]
    try:
        return __import__(module)
    except ImportError as e:
        raise NotInstalled(f"{engine} is not installed in {sys.prefix} ({e}); run bash scripts/install_peers.sh")


def version(engine: str) -> str:
    """The engine's version string; NotInstalled when it cannot be imported."""
    mod = _import(engine)
    if engine == "openvino":
        try:
            return str(mod.get_version()).split("-")[0]
        except AttributeError:
            pass
    return str(getattr(mod, "__version__", "unknown"))


def _onnxruntime(path: str, threads: int, names: list[str]) -> tuple[Runner, str]:
    ort = _import("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return (lambda feeds: sess.run(None, feeds)), "CPUExecutionProvider, graph optimisation ORT_ENABLE_ALL"


def _openvino(path: str, threads: int, names: list[str]) -> tuple[Runner, str]:
    ov = _import("openvino")
    core = ov.Core()
    # f32 explicitly: on CPUs with native bf16 OpenVINO may pick bf16, which would not be the same computation
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    compiled = core.compile_model(path, "CPU", config)
    req = compiled.create_infer_request()
    n_out = len(compiled.outputs)

    def run(feeds: dict[str, Any]) -> Any:
        req.infer(feeds)
        return [req.get_output_tensor(i).data for i in range(n_out)]
    return run, "CPU plugin, PERFORMANCE_HINT=LATENCY, INFERENCE_PRECISION_HINT=f32"


def _deepsparse(path: str, threads: int, names: list[str]) -> tuple[Runner, str]:
    ds = _import("deepsparse")
    engine = ds.compile_model(path, batch_size=1, num_cores=threads)

    def run(feeds: dict[str, Any]) -> Any:
        return engine.run([feeds[n] for n in names])
    detail = "num_cores=%d" % threads
    cpu = getattr(getattr(ds, "cpu", None), "cpu_architecture", None)
    if cpu is not None:
        try:
            arch = cpu()
            detail += f", isa={getattr(arch, 'isa', '?')}"
        except Exception:  # noqa: BLE001 - the ISA string is decoration; the timing below is what counts
            pass
    return run, detail


BUILDERS: dict[str, Callable[[str, int, list[str]], tuple[Runner, str]]] = {
    "onnxruntime": _onnxruntime, "deepsparse": _deepsparse, "openvino": _openvino}


def p90(xs: list[float]) -> float:
    """Nearest-rank 90th percentile (the same definition as ``spruce.deploy.timing.p90``)."""
    s = sorted(xs)
    return float(s[max(0, min(len(s) - 1, math.ceil(0.9 * len(s)) - 1))])


def time_engine(engine: str, model: str, inputs: str, out: str, threads: int, repeats: int, warmup: int
                ) -> dict[str, Any]:
    """Load ``model`` in ``engine``, time it on the arrays of ``inputs`` (.npz), save its outputs to ``out``."""
    import numpy as np
    if engine not in BUILDERS:
        raise ValueError(f"unknown engine {engine!r}; allowed: {', '.join(ENGINES)}")
    ver = version(engine)  # NotInstalled before any work
    with np.load(inputs) as z:
        names = list(z.files)
        feeds = {n: np.ascontiguousarray(z[n]) for n in names}
    t0 = time.perf_counter()
    run, detail = BUILDERS[engine](model, threads, names)
    load_ms = (time.perf_counter() - t0) * 1e3
    ys: list[Any] = []
    for _ in range(warmup):
        ys = run(feeds)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        ys = run(feeds)
        times.append((time.perf_counter() - t) * 1e3)
    np.savez(out, *[np.array(y, dtype=np.float32, copy=True) for y in ys])
    return {"engine": engine, "version": ver, "median_ms": float(statistics.median(times)), "p90_ms": p90(times),
            "times_ms": times, "load_ms": load_ms, "threads": threads, "detail": detail}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m spruce.peer_worker", description=__doc__.split("\n")[0])
    ap.add_argument("--versions", action="store_true", help="print each engine's version (or why not) as JSON")
    ap.add_argument("--engine", choices=ENGINES)
    ap.add_argument("--model", help="the .onnx file")
    ap.add_argument("--inputs", help=".npz of the inputs under their ONNX names, in input order")
    ap.add_argument("--out", help=".npz to write the outputs to (arr_0, arr_1, ... in graph order)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args(argv)
    if a.versions:
        vs = {}
        for e in ENGINES:
            try:
                vs[e] = version(e)
            except NotInstalled as ex:
                vs[e] = f"not installed: {ex}"
        print(json.dumps(vs))
        return 0
    missing = [f"--{k}" for k in ("engine", "model", "inputs", "out") if not getattr(a, k)]
    if missing:
        ap.error(f"missing {', '.join(missing)}")
    if a.threads < 1 or a.repeats < 1 or a.warmup < 0:
        ap.error("--threads and --repeats must be >= 1, --warmup >= 0")
    try:
        res = time_engine(a.engine, a.model, a.inputs, a.out, a.threads, a.repeats, a.warmup)
    except NotInstalled as e:
        print(json.dumps({"engine": a.engine, "status": "not installed", "why": str(e)}))
        return EXIT_NOT_INSTALLED
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
