"""Deploy runtime: plan -> convert -> verify on tiny VGG-like and BERT models, for every available CPU kernel."""
from __future__ import annotations

import copy
import math
import time

import pytest
import torch
from torch import nn

from spruce.deploy import (DENSE, Plan, SparseConv2d, SparseLinear, VerificationError, convert_, measure, plan,
                           verify)
from spruce.deploy.candidates import resolve_candidates
from spruce.kernels import kernels, register, unregister
from spruce.kernels.registry import Kernel

CPU_KERNELS = [k.name for k in kernels(device="cpu")]


def _prune_(model: nn.Module, sparsity: float) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                w = m.weight
                k = int(sparsity * w.numel())
                thr = w.abs().flatten().kthvalue(k).values
                w[w.abs() <= thr] = 0


def tiny_cnn(seed: int = 0) -> nn.Module:
    """A VGG-like CNN: conv-relu-conv-relu-pool-conv-relu, then a two-layer head; input [B, 3, 8, 8]."""
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1, stride=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 24), nn.ReLU(),
        nn.Linear(24, 5)).eval()
    _prune_(m, 0.8)
    return m


def tiny_bert() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A 2-layer BERT (hidden 32) with its encoder Linears pruned to 80%; input [2, 7] token ids."""
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=48, max_position_embeddings=16)
    m = BertModel(cfg).eval()
    with torch.no_grad():
        for name, mod in m.named_modules():
            if isinstance(mod, nn.Linear) and name.startswith("encoder."):
                w = mod.weight
                w[w.abs() <= w.abs().flatten().kthvalue(int(0.8 * w.numel())).values] = 0
    ids = torch.randint(0, 50, (2, 7))
    return m, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def forced_plan(model: nn.Module, kernel: str) -> Plan:
    """A plan putting every Linear/Conv2d with zeros on ``kernel`` (bypasses timing)."""
    return Plan(layers={n: {"kernel": kernel} for n, m in model.named_modules()
                        if isinstance(m, (nn.Linear, nn.Conv2d)) and bool((m.weight == 0).any())})


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_convert_matches_dense_cnn(kernel: str) -> None:
    m = tiny_cnn()
    x = torch.randn(2, 3, 8, 8)
    s = copy.deepcopy(m)
    convert_(s, forced_plan(m, kernel))
    assert sum(isinstance(mm, (SparseConv2d, SparseLinear)) for mm in s.modules()) == 5
    verify(m, s, x)
    with torch.inference_mode():
        torch.testing.assert_close(s(x), m(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_convert_matches_dense_bert(kernel: str) -> None:
    m, x = tiny_bert()
    s = copy.deepcopy(m)
    p = forced_plan(m, kernel)
    assert len(p.layers) == 12  # 6 encoder Linears per layer x 2 layers
    convert_(s, p)
    verify(m, s, x)
    with torch.inference_mode():
        torch.testing.assert_close(s(**x).last_hidden_state, m(**x).last_hidden_state, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["sparse", "auto", "dense"])
def test_plan_convert_verify_all_kernels(mode: str) -> None:
    m = tiny_cnn()
    x = torch.randn(1, 3, 8, 8)
    p = plan(m, x, kernels(device="cpu"), mode=mode, repeats=1, warmup=0, progress=False)
    assert list(p.layers) == ["0", "2", "5", "8", "10"]
    for e in p.layers.values():
        for key in ("kernel", "format", "weight_bytes", "dense_bytes", "predicted_ms", "measured_ms", "dense_ms",
                    "convert_ms", "candidates", "amortise_inferences"):
            assert key in e
        if mode == "sparse":
            assert e["format"] != "dense" and e["kernel"] != DENSE
        if mode == "dense":
            assert e["kernel"] == DENSE and e["candidates"] == {DENSE: e["dense_ms"]}
        else:
            assert set(e["candidates"]) == {DENSE, *CPU_KERNELS}
            chosen = e["candidates"][e["kernel"]]
            assert isinstance(chosen, float) and chosen == e["measured_ms"]
    s = copy.deepcopy(m)
    convert_(s, p)
    verify(m, s, x)


def test_objective_memory_picks_fewest_bytes() -> None:
    m = tiny_cnn()
    p = plan(m, torch.randn(1, 3, 8, 8), kernels(device="cpu"), objective="memory", mode="sparse", repeats=1,
             warmup=0, progress=False)
    for e in p.layers.values():
        assert e["weight_bytes"] < e["dense_bytes"]


def test_plan_json_round_trip(tmp_path) -> None:
    m = tiny_cnn()
    p = plan(m, torch.randn(1, 3, 8, 8), kernels(device="cpu"), mode="auto", repeats=1, warmup=0, progress=False)
    p.layers["0"]["amortise_inferences"] = math.inf
    path = p.save(tmp_path / "sub" / "plan.json")
    q = Plan.load(path)
    assert q.layers == p.layers and q.meta == p.meta
    assert q.layers["0"]["amortise_inferences"] == math.inf
    assert not list(path.parent.glob(".*.tmp"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Plan.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="does not exist"):
        Plan.load(tmp_path / "missing.json")


# ---- deliberately wrong / failing kernels -----------------------------------------------------------------
class _OffByOne(Kernel):
    """A 'sparse' kernel whose output is off by 1e-2: verification must catch it."""

    name = "test_wrong_plus_1e2"
    format = "csr"
    device = "cpu"

    def prepare(self, weight):
        return weight.detach().clone()

    def matmul(self, packed, x, bias=None, activation="none"):
        y = packed @ x + 1e-2
        return y if bias is None else y + bias[:, None]

    def weight_bytes(self, packed):
        return packed.numel() * packed.element_size() // 10


class _Broken(_OffByOne):
    name = "test_broken_prepare"

    def prepare(self, weight):
        raise RuntimeError("cannot pack this\nsecond line")


class _Unavailable(_OffByOne):
    name = "test_unavailable"

    @classmethod
    def is_available(cls):
        return False, "needs a library that is not installed"


class _Slow(_OffByOne):
    """Correct but slow: its amortisation must be inf."""

    name = "test_slow_correct"

    def matmul(self, packed, x, bias=None, activation="none"):
        time.sleep(0.003)
        y = packed @ x
        return y if bias is None else y + bias[:, None]


@pytest.fixture
def test_kernels():
    for cls in (_OffByOne, _Broken, _Unavailable, _Slow):
        register(cls)
    yield
    for cls in (_OffByOne, _Broken, _Unavailable, _Slow):
        unregister(cls.name)


def test_plan_reports_wrong_and_broken_kernels_as_failed(test_kernels) -> None:
    m = tiny_cnn()
    cands = [_OffByOne(), _Broken(), _Slow()]
    p = plan(m, torch.randn(1, 3, 8, 8), cands, mode="auto", repeats=1, warmup=0, progress=False)
    for e in p.layers.values():
        assert e["candidates"][_OffByOne.name].startswith("failed: wrong output")
        assert e["candidates"][_Broken.name] == "failed: RuntimeError: cannot pack this"
        assert e["kernel"] != _OffByOne.name
    with pytest.raises(ValueError, match="no sparse kernel works for layer '0'"):
        plan(m, torch.randn(1, 3, 8, 8), [_OffByOne(), _Broken()], mode="sparse", repeats=1, warmup=0,
             progress=False)


def test_slow_kernel_never_amortises(test_kernels) -> None:
    m = nn.Sequential(nn.Linear(8, 4)).eval()
    _prune_(m, 0.5)
    p = plan(m, torch.randn(3, 8), [_Slow()], mode="sparse", repeats=2, warmup=0, progress=False)
    e = p.layers["0"]
    assert e["kernel"] == _Slow.name and e["measured_ms"] >= 3.0
    assert e["amortise_inferences"] == math.inf and e["speedup"] < 1


def test_verify_names_first_wrong_layer(test_kernels) -> None:
    m = tiny_cnn()
    s = copy.deepcopy(m)
    p = forced_plan(m, "torch_dense" if "torch_dense" in CPU_KERNELS else CPU_KERNELS[0])
    p.layers["2"] = {"kernel": _OffByOne.name}
    p.layers["8"] = {"kernel": _OffByOne.name}
    convert_(s, p)
    with pytest.raises(VerificationError, match="layer '2'") as ei:
        verify(m, s, torch.randn(2, 3, 8, 8))
    assert ei.value.layer == "2"


def test_candidates_restriction(test_kernels) -> None:
    with pytest.raises(ValueError, match="unknown kernel 'nope'"):
        resolve_candidates(["nope"], "cpu", "auto")
    with pytest.raises(ValueError, match="unavailable on cpu: needs a library"):
        resolve_candidates([_Unavailable.name], "cpu", "sparse")
    got, notes = resolve_candidates([_Unavailable.name, _Slow.name], "cpu", "auto")
    assert [k.name for k in got] == [_Slow.name] and "dropped" in notes[0]
    if "torch_dense" in CPU_KERNELS:
        with pytest.raises(ValueError, match="deploy=sparse needs a sparse kernel"):
            resolve_candidates(["torch_dense"], "cpu", "sparse")
    assert all(k.device == "cpu" for k in resolve_candidates(None, "cpu", "auto")[0])


def test_convert_rejects_unknown_layer_and_kernel() -> None:
    m = tiny_cnn()
    with pytest.raises(ValueError, match="'nothere' is not in the model"):
        convert_(copy.deepcopy(m), Plan(layers={"nothere": {"kernel": CPU_KERNELS[0]}}))
    with pytest.raises(ValueError, match="unknown kernel 'nope'"):
        convert_(copy.deepcopy(m), Plan(layers={"0": {"kernel": "nope"}}))


# ---- modules and measurement -----------------------------------------------------------------------------
def test_sparse_linear_batch_dims_and_grouped_conv_skipped() -> None:
    lin = nn.Linear(6, 5)
    sl = SparseLinear.from_linear(lin, CPU_KERNELS[0])
    x = torch.randn(2, 3, 6)
    with torch.inference_mode():
        torch.testing.assert_close(sl(x), lin(x), rtol=1e-5, atol=1e-6)
    m = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=2)).eval()
    _prune_(m, 0.5)
    p = plan(m, torch.randn(1, 4, 5, 5), kernels(device="cpu"), mode="sparse", repeats=1, warmup=0, progress=False)
    assert p.layers["0"]["kernel"] == DENSE and "groups=2" in p.layers["0"]["skipped"]


def test_measure_keys() -> None:
    m = tiny_cnn()
    r = measure(m, torch.randn(1, 3, 8, 8), repeats=5, warmup=1)
    assert len(r["latency_ms"]) == 5
    assert 0 < r["latency_ms_median"] <= r["latency_ms_p90"]
    assert r["peak_memory_bytes"] > 0
    total = sum(p.numel() * 4 for p in m.parameters())
    assert r["weight_bytes"] == {"dense": total}


def test_bad_plan_arguments() -> None:
    m = tiny_cnn()
    with pytest.raises(ValueError, match="unknown deploy mode 'fast'"):
        plan(m, torch.randn(1, 3, 8, 8), [], mode="fast")
    with pytest.raises(ValueError, match="unknown objective"):
        plan(m, torch.randn(1, 3, 8, 8), [], objective="speed")
    with pytest.raises(ValueError, match="layer 'zz' is not in the model"):
        plan(m, torch.randn(1, 3, 8, 8), [], layers=["zz"])


def test_predictor_hook_fills_predicted_ms() -> None:
    m = tiny_cnn()
    seen = []

    def predictor(kernel: str, info: dict) -> float:
        seen.append((kernel, info["format"], info["m"], info["k"], info["n"]))
        return 1.25

    p = plan(m, torch.randn(1, 3, 8, 8), kernels(device="cpu"), mode="sparse", repeats=1, warmup=0,
             progress=False, predictor=predictor)
    assert all(e["predicted_ms"] == 1.25 for e in p.layers.values())
    assert seen[0][2:] == (8, 27, 64)  # first conv: 8 x (3*3*3), N = 8*8 output pixels
    assert all(fmt != "dense" for _, fmt, *_ in seen)


def test_median_and_p90_nearest_rank() -> None:
    from spruce.perf.timing import median, p90, time_ms
    xs = [float(i) for i in range(10, 0, -1)]
    assert median(xs) == 5.5 and p90(xs) == 9.0 and p90([3.0]) == 3.0
    assert len(time_ms(lambda: time.sleep(0.002), repeats=50, warmup=0, budget_s=0.01)) < 50
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        time_ms(lambda: None, repeats=0)


@pytest.mark.parametrize("sparse_ms, expected", [(9.5, DENSE), (8.0, "torch_csr")])
def test_auto_needs_a_margin_over_dense(monkeypatch, sparse_ms: float, expected: str) -> None:
    """deploy=auto keeps the original module unless a sparse kernel is more than AUTO_MARGIN faster."""
    import importlib
    plan_mod = importlib.import_module("spruce.deploy.plan")  # the module (spruce.deploy.plan is also a function)
    monkeypatch.setattr(plan_mod, "time_ms", lambda fn, **kw: [10.0])  # the dense layer: 10 ms
    monkeypatch.setattr(plan_mod, "_time_candidate", lambda *a, **kw: (sparse_ms, 3, sparse_ms))
    layer = nn.Linear(16, 8)
    with torch.no_grad():
        layer.weight[:, ::2] = 0
    from spruce.kernels import get
    entry = plan_mod.plan_layer("fc", layer, torch.randn(4, 16), [get("torch_csr")], "auto", "latency")
    assert entry["kernel"] == expected and entry["candidates"]["torch_csr"] == sparse_ms


def test_choice_follows_the_fastest_run_not_the_median(monkeypatch) -> None:
    """A dense layer whose median is hit by scheduler stalls (1 ms runs measured at 16 ms) stays dense when a sparse
    kernel is only faster than the stalled median."""
    import importlib
    plan_mod = importlib.import_module("spruce.deploy.plan")
    monkeypatch.setattr(plan_mod, "time_ms", lambda fn, **kw: [1.0, 16.0, 16.0])  # dense: median 16, best 1
    monkeypatch.setattr(plan_mod, "_time_candidate", lambda *a, **kw: (3.0, 3, 2.5))
    layer = nn.Linear(16, 8)
    with torch.no_grad():
        layer.weight[:, ::2] = 0
    from spruce.kernels import get
    entry = plan_mod.plan_layer("fc", layer, torch.randn(4, 16), [get("torch_csr")], "auto", "latency")
    assert entry["kernel"] == DENSE and entry["best_ms"] == {DENSE: 1.0, "torch_csr": 2.5}


def test_shortlist_times_only_the_predicted_fastest() -> None:
    m = tiny_cnn()
    cands = [k for k in kernels(device="cpu") if k.format != "dense"]
    assert len(cands) >= 3
    order = {k.name: i for i, k in enumerate(reversed(cands))}  # the model "prefers" the last candidate

    def predictor(kernel: str, info: dict) -> float:
        return 1.0 + order[kernel]

    favourite = cands[-1].name
    p = plan(m, torch.randn(1, 3, 8, 8), cands, mode="sparse", repeats=1, warmup=0, progress=False,
             predictor=predictor, shortlist=1)
    assert p.meta["shortlist"] == 1
    for e in p.layers.values():
        if "skipped" in e:
            continue
        timed = [n for n, v in e["candidates"].items() if n != DENSE and not str(v).startswith("not timed")]
        assert timed == [favourite]
        assert e["kernel"] == favourite
        left = [n for n, v in e["candidates"].items() if str(v).startswith("not timed")]
        assert sorted(left) == sorted(k.name for k in cands[:-1])
        assert e["predicted"] == {k.name: pytest.approx(1.0 + order[k.name]) for k in cands}
    # two: the two predicted fastest; a candidate the model cannot predict is timed anyway
    def partial(kernel: str, info: dict) -> float:
        if kernel == cands[0].name:
            raise ValueError("no constants for this kernel")
        return predictor(kernel, info)

    p2 = plan(m, torch.randn(1, 3, 8, 8), cands, mode="sparse", repeats=1, warmup=0, progress=False,
              predictor=partial, shortlist=2)
    e = next(e for e in p2.layers.values() if "skipped" not in e)
    timed = {n for n, v in e["candidates"].items() if n != DENSE and not str(v).startswith("not timed")}
    assert timed == {cands[0].name, cands[-1].name, cands[-2].name}
    with pytest.raises(ValueError, match="shortlist needs the performance model"):
        plan(m, torch.randn(1, 3, 8, 8), cands, mode="sparse", progress=False, shortlist=1)
    with pytest.raises(ValueError, match="shortlist=0 is not allowed"):
        plan(m, torch.randn(1, 3, 8, 8), cands, mode="sparse", progress=False, predictor=predictor, shortlist=0)


def test_shortlist_replaces_a_failing_kernel_with_the_next_ranked(test_kernels) -> None:
    m = tiny_cnn()
    good = next(k for k in kernels(device="cpu") if k.format == "csr" and k.name == "torch_csr")
    cands = [_Broken(), _OffByOne(), good, _Slow()]
    rank = {_Broken.name: 1.0, _OffByOne.name: 2.0, good.name: 3.0, _Slow.name: 4.0}
    p = plan(m, torch.randn(1, 3, 8, 8), cands, mode="sparse", repeats=1, warmup=0, progress=False,
             predictor=lambda kernel, info: rank[kernel], shortlist=1)
    for e in p.layers.values():
        if "skipped" in e:
            continue
        # the two predicted fastest fail (one raises, one is wrong): the third is timed and chosen, the fourth not
        assert e["candidates"][_Broken.name] == "failed: RuntimeError: cannot pack this"
        assert e["candidates"][_OffByOne.name].startswith("failed: wrong output")
        assert isinstance(e["candidates"][good.name], float) and e["kernel"] == good.name
        assert e["candidates"][_Slow.name].startswith("not timed: predicted 4 ms")


def test_steady_allocator_fixes_the_glibc_mmap_threshold() -> None:
    import platform

    from spruce.perf.allocator import steady_allocator

    first = steady_allocator()
    assert steady_allocator() is first  # idempotent
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first is True


# ---- torch.compile of a converted model (spruce.deploy.compiled) ----------------------------------------------
def _fused_plan(model: nn.Module, x: object, kernel: str) -> Plan:
    from spruce.deploy.fusion import find_fusions
    f = find_fusions(model, None, x)
    return Plan(layers={n: {"kernel": kernel, **({"fusion": f[n]} if n in f else {})}
                        for n in forced_plan(model, kernel).layers})


@pytest.mark.parametrize("which", ["cnn", "bert"])
def test_compiled_path_equals_eager(which: str) -> None:
    from spruce.deploy.compare import first_tensor, run_model
    from spruce.deploy.compiled import compile_model
    m, x = (tiny_cnn(), torch.randn(2, 3, 8, 8)) if which == "cnn" else tiny_bert()
    convert_(m, _fused_plan(m, x, "spruce_csr"))
    c, info = compile_model(m, x, mode="on")
    assert info["compiled"] and info["compile_s"] > 0, info
    with torch.inference_mode():
        torch.testing.assert_close(first_tensor(run_model(c, x)), first_tensor(run_model(m, x)), rtol=1e-4, atol=1e-5)
    # the sparse layers are graph ops, not graph breaks
    explain = torch._dynamo.explain(m)(**x) if isinstance(x, dict) else torch._dynamo.explain(m)(x)
    assert explain.graph_break_count == 0, explain.break_reasons


def test_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from spruce.deploy.compiled import compile_model

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("no C++ compiler here")
    monkeypatch.setattr(torch, "compile", broken)
    m = tiny_cnn()
    out, info = compile_model(m, torch.randn(1, 3, 8, 8), mode="auto")
    assert out is m and not info["compiled"] and "no C++ compiler" in info["compile_error"]
    assert capsys.readouterr().err.count("torch.compile failed") == 1
    assert compile_model(m, None, mode="off")[0] is m
    with pytest.raises(ValueError, match="compile="):
        compile_model(m, None, mode="yes")


def test_faster_than_dense_swaps_and_restores() -> None:
    from spruce.deploy.runtime import faster_than_dense, swap_modules
    m = tiny_cnn()
    x = torch.randn(1, 3, 8, 8)
    originals: dict = {}
    convert_(m, _fused_plan(m, x, "spruce_csr"), originals=originals)
    assert set(originals) == {"0", "1", "2", "3", "5", "6", "8", "9", "10"}
    ok, conv, dense = faster_than_dense(m, originals, x, rounds=1, runs=1, margin=10.0)
    assert ok and conv > 0 and dense > 0 and isinstance(m[0], SparseConv2d)  # left converted
    swap_modules(m, originals)
    assert isinstance(m[0], nn.Conv2d) and isinstance(m[1], nn.ReLU)


def test_bench_auto_keeps_dense_when_converted_model_is_slower(monkeypatch, tmp_path) -> None:
    import spruce.deploy.pipeline as pipe
    from tests.test_bench import TINY_VGG, cfg_of
    import importlib
    plan_mod = importlib.import_module("spruce.deploy.plan")  # the module (spruce.deploy.plan is also a function)
    real = plan_mod.plan_layer

    def all_sparse(name, layer, x, candidates, mode, *a, **k):  # plan as deploy=sparse would
        return real(name, layer, x, candidates, "sparse", *a, **k)
    monkeypatch.setattr(plan_mod, "plan_layer", all_sparse)
    monkeypatch.setattr(pipe, "faster_than_dense", lambda *a, **k: (False, 2.0, 1.0))
    out = pipe.bench(cfg_of(TINY_VGG + ["deploy=auto", "logger.wandb=false", "kernels=spruce_csr",
                                        "plan_budget_s=0.01"], tmp_path))
    assert out["layers_sparse"] == 0 and out["pruned_memory_ratio"] == 1.0 and out["fusions"] == 0
    assert any("slower than dense" in n for n in out["notes"])


def test_dense_references_are_full_fp32_not_tf32():
    # cuDNN's default lets FP32 convolutions run in TF32 on Ampere+; a reference computed so made every exact
    # sparse kernel "fail" on an H200. The planner's and the verifier's references are computed with TF32 off,
    # timings keep the defaults, and the flags are restored (also after an error).
    from spruce.deploy.compare import exact_fp32
    from spruce.deploy.plan import _dense_side
    from spruce.deploy.runtime import reference_outputs

    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = [f.allow_tf32 for f in flags]
    try:
        for f in flags:
            f.allow_tf32 = True
        seen = []
        conv = nn.Conv2d(2, 3, 3)
        conv.register_forward_hook(lambda m, a, out: seen.append([f.allow_tf32 for f in flags]))
        x = torch.randn(1, 2, 6, 6)
        model = nn.Sequential(conv).eval()
        reference_outputs(model, x)
        assert seen == [[False, False]]
        seen.clear()
        verify(model, model, x)  # the converted side too (its dense layers feed the sparse ones)
        assert seen == [[False, False]] * 2
        seen.clear()
        _dense_side(conv, x, "none", repeats=2, warmup=0, device="cpu", budget_s=1.0)
        assert seen[0] == [False, False] and all(s == [True, True] for s in seen[1:]) and len(seen) >= 3
        with pytest.raises(RuntimeError):
            with exact_fp32():
                raise RuntimeError("boom")
        assert [f.allow_tf32 for f in flags] == [True, True]
    finally:
        for f, v in zip(flags, saved):
            f.allow_tf32 = v
