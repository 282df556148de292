"""The roofline model's formulas on a fake machine profile, checked against values computed by hand."""
import math

import pytest

from spruce.perf import model as pm
from spruce.perf.profile import MachineProfile, h100_profile


@pytest.fixture
def fake() -> MachineProfile:
    # 100 GFLOP/s, 10 GB/s, 1 MB cache, one thread, no overhead, sparse kernels at 10% of peak; the base roofline
    # without the residual terms (``tiny_llc`` below turns them on)
    return MachineProfile(name="fake", peak_gflops=100.0, bw_gbs=10.0, cache_bytes=1e6, threads=1,
                          overhead_us={"default": 0.0}, sparse_eff={"default": 0.1},
                          gather_penalty={"default": 1.0}, convert_ns={"default": [1.0, 10.0]}, terms=[])


def test_dense_time_compute_and_memory_bound(fake):
    # 2*1000*1000*100 FLOP / 1e11 FLOP/s = 2 ms; bytes 4.8e6 / 1e10 = 0.48 ms -> compute-bound
    assert pm.dense_time_s(1000, 1000, 100, fake) == pytest.approx(2e-3)
    # N = 1: bytes 4*(1e6 + 1e3 + 1e3) / 1e10 = 0.4008 ms beats 0.02 ms of FLOPs -> memory-bound
    assert pm.dense_time_s(1000, 1000, 1, fake) == pytest.approx(4.008e-4)


def test_weight_bytes_per_format():
    assert pm.weight_bytes("dense", 10, 20, 7) == 800
    assert pm.weight_bytes("csr", 10, 20, 7) == 7 * 8 + 4 * 11
    assert pm.weight_bytes("csr", 10, 20, 7, index_bytes=2) == 7 * 6 + 4 * 11
    assert pm.weight_bytes("coo", 10, 20, 7, index_bytes=8) == 7 * 20
    # BSR with 2 given 4x4 blocks: 2 * (64 + 4) + 4 * (ceil(10/4) + 1) = 136 + 16
    assert pm.weight_bytes("bsr", 10, 20, 7, block=4, nblocks=2) == 152
    with pytest.raises(ValueError, match="unknown format"):
        pm.weight_bytes("ell", 10, 20, 7)
    with pytest.raises(ValueError, match="nnz"):
        pm.weight_bytes("csr", 10, 20, 201)


def test_expected_blocks_uniform_mask():
    # 4x4 matrix, 2x2 tiles, density 0.25: 4 * (1 - 0.75**4) = 2.734375
    assert pm.expected_blocks(4, 4, 4, 2) == pytest.approx(2.734375)
    # never fewer blocks than nnz / b^2 (fully dense)
    assert pm.expected_blocks(4, 4, 16, 2) == pytest.approx(4.0)
    # 4x1 blocks of an 8x4 matrix, density 0.5: 2 * 4 tiles * (1 - 0.5**4) = 7.5
    assert pm.expected_blocks(8, 4, 16, (4, 1)) == pytest.approx(7.5)
    # and their bytes: 7.5 * (16 + 4) + 4 * (2 + 1)
    assert pm.weight_bytes("bsr", 8, 4, 16, block=(4, 1)) == pytest.approx(162.0)


def test_reread_factor_and_imbalance():
    assert pm.reread_factor(1000, 1000, 100, 1e5, 1e6) == 1.0  # X = 400 kB fits in 1 MB
    # X = 4 MB, cache 1 MB: 1 + (1e5/1e3 - 1) * (1 - 0.25) = 75.25
    assert pm.reread_factor(1000, 1000, 1000, 1e5, 1e6) == pytest.approx(75.25)
    assert pm.imbalance(0.5, 1, 1000) == 1.0
    # 1 + 0.5 * sqrt(2 ln 4) / sqrt(1000 / 4)
    assert pm.imbalance(0.5, 4, 1000) == pytest.approx(1 + 0.5 * math.sqrt(2 * math.log(4)) / math.sqrt(250))
    assert pm.binomial_row_cov(100, 0.2) == pytest.approx(math.sqrt(0.8 / 20))


def test_sparse_time_and_predict_ms(fake):
    # CSR 90%: 2e7 FLOP / (1e11 * 0.1) = 2 ms; bytes (8e5 + 4004 + 4e5 + 4e5) / 1e10 = 0.16 ms
    assert pm.sparse_time_s("k", "csr", 1000, 1000, 100, 1e5, 0.0, fake) == pytest.approx(2e-3)
    assert pm.predict_ms("k", "csr", 1000, 1000, 100, 1e5, 0.0, fake) == pytest.approx(2.0)
    assert pm.predict_ms("torch_dense", "dense", 1000, 1000, 100, 1e6, None, fake) == pytest.approx(2.0)
    slow = MachineProfile(**{**fake.to_dict(), "overhead_us": {"default": 0.0, "k": 50.0},
                             "gather_penalty": {"default": 10.0}})
    # N = 1, memory-bound: 10 * (8e5 + 4004 + 4e3 + 4e3) / 1e10 = 0.812004 ms, plus 50 us overhead
    assert pm.predict_ms("k", "csr", 1000, 1000, 1, 1e5, 0.0, slow) == pytest.approx(0.812004 + 0.05)


def test_predicted_crossover_solves_t_sparse_equals_t_dense(fake):
    # compute-bound both ways: 20 (1 - s) ms = 2 ms  ->  s = 0.9
    st, s = pm.predicted_crossover("k", "csr", 1000, 1000, 100, fake, row_cov=0.0)
    assert st == "cross" and s == pytest.approx(0.9, abs=1e-6)
    never = MachineProfile(**{**fake.to_dict(), "overhead_us": {"default": 0.0, "k": 1e4}})
    assert pm.predicted_crossover("k", "csr", 1000, 1000, 100, never, row_cov=0.0) == ("never", None)
    always = MachineProfile(**{**fake.to_dict(), "sparse_eff": {"default": 2.0}})
    assert pm.predicted_crossover("k", "csr", 1000, 1000, 100, always, row_cov=0.0) == ("always", 0.0)


def test_memory_crossover():
    # CSR: 8 nnz + 4004 = 4e6  ->  nnz = 499499.5  ->  s = 0.5005005
    st, s = pm.memory_crossover("csr", 1000, 1000)
    assert st == "cross" and s == pytest.approx(1 - 499499.5 / 1e6, abs=1e-6)
    # COO with int64 indices: 20 nnz = 4e6  ->  s = 0.8
    assert pm.memory_crossover("coo", 1000, 1000, index_bytes=8)[1] == pytest.approx(0.8, abs=1e-6)


def test_conversion_and_amortisation(fake):
    # 1 ns * 1e6 + 10 ns * 1e5 = 2 ms
    assert pm.conversion_time_s("k", "csr", 1000, 1000, 1e5, fake) == pytest.approx(2e-3)
    assert pm.amortisation(2e-3, 2e-3, 1e-3) == pytest.approx(2.0)  # 2 ms / 1 ms saved
    assert pm.amortisation(2e-3, 1e-3, 1e-3) == math.inf
    assert pm.amortisation(2e-3, 1e-3, 2e-3) == math.inf


def test_kernel_naming_helpers():
    assert pm.block_for("torch_bsr4", "bsr") == (4, 4)
    assert pm.block_for("torch_bsr16", "bsr") == (16, 16)
    assert pm.block_for("spruce_bsr4x1", "bsr") == (4, 1)
    assert pm.block_for("torch_csr", "csr") == (1, 1)
    assert pm.index_bytes_for("torch_coo", "coo") == 8
    assert pm.index_bytes_for("torch_csr", "csr") == 4


def test_h100_profile_dense_paths():
    h = h100_profile()
    n = 4096
    assert pm.dense_time_s(n, n, n, h, path="tf32_tc") == pytest.approx(2 * n ** 3 / 495e12 + 5e-6)
    assert pm.dense_time_s(n, n, n, h, path="fp32") == pytest.approx(2 * n ** 3 / 67e12 + 5e-6)
    # BF16 GEMV streams 2-byte weights: 2 * (n*n + 2n) / 3.35e12
    assert pm.dense_time_s(n, n, 1, h, path="bf16_tc") == pytest.approx(2 * (n * n + 2 * n) / 3.35e12 + 5e-6)
    with pytest.raises(ValueError, match="unknown dense path"):
        pm.dense_time_s(n, n, n, h, path="fp8")


def test_profile_rejects_bad_values():
    with pytest.raises(ValueError, match="bw_gbs"):
        MachineProfile(name="x", peak_gflops=1.0, bw_gbs=0.0, cache_bytes=1.0, threads=1)
    with pytest.raises(ValueError, match="unknown field"):
        MachineProfile.from_dict({"name": "x", "peak_gflops": 1.0, "bw_gbs": 1.0, "cache_bytes": 1.0,
                                  "threads": 1, "bogus": 1})


def test_efficiency_tables_interpolate_in_log_n(fake):
    prof = MachineProfile(**{**fake.to_dict(), "sparse_eff": {"k": {"1": 0.01, "100": 0.1}},
                             "dense_eff": {"1": 0.5, "100": 1.0}})
    assert prof.eff("k", "csr", 10) == pytest.approx(0.055)  # halfway in log N
    assert prof.eff("k", "csr", 1000) == pytest.approx(0.1)  # clamped
    assert prof.dense_efficiency(1) == pytest.approx(0.5)
    # dense at N = 100 with e_d = 1: 2e8 / 1e11 = 2 ms; sparse 90% at N = 100: 2e7 / (1e11 * 0.1) = 2 ms
    assert pm.dense_time_s(1000, 1000, 100, prof) == pytest.approx(2e-3)
    assert pm.sparse_time_s("k", "csr", 1000, 1000, 100, 1e5, 0.0, prof) == pytest.approx(2e-3)
    # N = 10: dense compute 2e7 / (1e11 * 0.75) = 0.2667 ms < memory 4*(1e6 + 2e4)/1e10 = 0.408 ms
    assert pm.dense_time_s(1000, 1000, 10, prof) == pytest.approx(4.08e-4)


def test_efficiency_by_density(fake):
    tables = {"by_density": {"0.01": {"1": 0.01}, "0.1": {"1": 0.04}}}
    prof = MachineProfile(**{**fake.to_dict(), "sparse_eff": {"k": tables}})
    # sqrt(0.01 * 0.1) is halfway in log density
    assert prof.eff("k", "csr", 1, (0.01 * 0.1) ** 0.5) == pytest.approx(0.025)
    assert prof.eff("k", "csr", 1, 0.5) == pytest.approx(0.04)  # clamped
    # density 0.01 reads eff 0.01: 2e4 FLOP / (1e11 * 0.01) = 20 us > memory (8e4 + 4004 + 8e3) / 1e10 = 9.2 us
    assert pm.sparse_time_s("k", "csr", 1000, 1000, 1, 1e4, 0.0, prof) == pytest.approx(2e-5)


def test_efficiency_by_k_interpolates_in_log_k(fake):
    # sparse: at K = 100 the kernel reaches 0.2 of peak, at K = 10000 only 0.05 (its X slice left the cache)
    sparse = {"by_k": {"100": {"by_density": {"0.1": {"1": 0.2}}}, "10000": {"1": 0.05}}}
    dense = {"by_k": {"100": {"1": 1.0}, "10000": {"1": 0.5}}}
    prof = MachineProfile(**{**fake.to_dict(), "sparse_eff": {"k": sparse}, "dense_eff": dense})
    assert prof.eff("k", "csr", 1, 0.1, 1000) == pytest.approx(0.125)  # halfway in log K
    assert prof.eff("k", "csr", 1, 0.1, 10) == pytest.approx(0.2)  # clamped below
    assert prof.eff("k", "csr", 1, 0.1, 10 ** 6) == pytest.approx(0.05)  # clamped above
    assert prof.eff("k", "csr", 1, 0.1) == pytest.approx(0.05)  # no K: the largest
    assert prof.dense_efficiency(1, 1000) == pytest.approx(0.75)
    # the model reads K from the shape: dense 1000 x 1000 x 100 at e_d = 0.75: 2e8 / 7.5e10 = 2.6667 ms
    assert pm.dense_time_s(1000, 1000, 100, prof) == pytest.approx(2e-3 / 0.75)
    # sparse 90%: 2e7 / (1e11 * 0.125) = 1.6 ms (memory (8e5 + 4004 + 4e5 + 4e5) / 1e10 = 0.16 ms)
    assert pm.sparse_time_s("k", "csr", 1000, 1000, 100, 1e5, 0.0, prof) == pytest.approx(1.6e-3)
    # crossover: 2e8 (1 - s) / 1.25e10 s = 16 (1 - s) ms equals 2.6667 ms  ->  1 - s = 1/6
    st, s = pm.predicted_crossover("k", "csr", 1000, 1000, 100, prof, row_cov=0.0)
    assert st == "cross" and s == pytest.approx(1 - 1 / 6, abs=1e-6)
    # a K-free table still reads the same at every K (profiles calibrated before the K axis)
    flat = MachineProfile(**{**fake.to_dict(), "sparse_eff": {"k": {"1": 0.3}}})
    assert flat.eff("k", "csr", 1, 0.1, 10) == flat.eff("k", "csr", 1, 0.1, 10 ** 5) == pytest.approx(0.3)


def test_calibration_measures_efficiency_over_k(monkeypatch, tmp_path):
    """A real (tiny) calibration: tables over K, density and N that the model then reads at any K."""
    from spruce import kernels as registry
    from spruce.perf import calibration as machine

    monkeypatch.setenv("SPRUCE_CACHE", str(tmp_path))
    monkeypatch.setattr(machine, "EFF_KS", (64, 256))
    monkeypatch.setattr(machine, "EFF_NS", (1, 8))
    monkeypatch.setattr(machine, "EFF_SPARSITIES", (0.5, 0.9))
    monkeypatch.setattr(machine, "EFF_M", 64)
    monkeypatch.setattr(machine, "GATHER_SHAPE", (256, 512))
    monkeypatch.setattr(machine, "CALIBRATION_PASSES", 3)
    monkeypatch.setattr(machine, "PASS_BUDGET_S", 0.02)
    monkeypatch.setattr(machine, "GATHER_BUDGET_S", 0.02)
    base = MachineProfile(name="t", peak_gflops=50.0, bw_gbs=10.0, cache_bytes=32e6, threads=1,
                          overhead_us={}, sparse_eff={}, gather_penalty={}, convert_ns={})
    prof = machine.calibrate([registry.get("torch_dense"), registry.get("torch_csr"), registry.get("spruce_csr")],
                             base, progress=False)
    # the panelled kernel says so in the profile; the others do not
    assert prof.x_panel_bytes == {"spruce_csr": float(registry.get("spruce_csr").x_panel_bytes)}
    assert sorted(prof.dense_eff["by_k"]) == ["256", "64"]
    assert sorted(prof.dense_eff["by_k"]["64"]) == ["1", "8"]
    tables = prof.sparse_eff["torch_csr"]["by_k"]
    assert sorted(tables) == ["256", "64"]
    assert sorted(tables["256"]["by_density"]) == ["0.1", "0.5"]
    for k in (16, 64, 128, 256, 4096):
        for n in (1, 4, 8, 100):
            assert 0 < prof.dense_efficiency(n, k) < math.inf
            assert 0 < prof.eff("torch_csr", "csr", n, 0.3, k) < math.inf
    # between the calibrated K the value lies between the two tables' values
    lo, hi = sorted((prof.eff("torch_csr", "csr", 8, 0.5, 64), prof.eff("torch_csr", "csr", 8, 0.5, 256)))
    assert lo <= prof.eff("torch_csr", "csr", 8, 0.5, 128) <= hi
    assert pm.predict_ms("torch_csr", "csr", 300, 200, 8, 6000, None, prof) > 0
    # v8: the gather penalty at the byte-parity sparsity, v7's 50% point kept for the model before
    assert prof.meta["gather_sparsity"]["spruce_csr"] == pytest.approx(machine.gather_sparsity(
        "spruce_csr", "csr", 256, 512))
    assert set(prof.meta["gather_penalty_half"]) == {"torch_csr", "spruce_csr"}
    # the profile round-trips through JSON (the cache) unchanged
    import json
    assert MachineProfile.from_dict(json.loads(json.dumps(prof.to_dict()))) == prof


def test_panelled_kernel_reads_x_once(fake):
    # X = 4 MB > 1 MB cache: a row-sweeping kernel re-reads it (R = 75.25): bytes 8e5 + 4004 + 4e6 * 75.25 + 4e6
    # = 3.05804e8 -> 30.58 ms > 20 ms of FLOPs; a panelled one moves 8e5 + 4004 + 4e6 + 4e6 -> 0.88 ms, compute-bound
    assert pm.sparse_time_s("k", "csr", 1000, 1000, 1000, 1e5, 0.0, fake) == pytest.approx(3.058040e-2)
    panelled = MachineProfile(**{**fake.to_dict(), "x_panel_bytes": {"k": 384 * 1024}})
    assert pm.sparse_time_s("k", "csr", 1000, 1000, 1000, 1e5, 0.0, panelled) == pytest.approx(2e-2)
    assert pm.sparse_time_s("other", "csr", 1000, 1000, 1000, 1e5, 0.0, panelled) == pytest.approx(3.058040e-2)


def test_calibration_passes_take_the_median_per_point():
    from spruce.perf import calibration as machine

    calls = []
    drift = iter([1.0, 5.0, 2.0, 100.0, 3.0, 4.0])  # pass 1: a=1, b=5; pass 2: a=2, b=100; pass 3: a=3, b=4

    def measure(pt):
        calls.append(pt)
        return next(drift)

    assert machine._passes(["a", "b"], measure, 3) == [2.0, 5.0]
    assert calls == ["a", "b"] * 3  # whole sweeps, not one point at a time


def _plausible_profile(**kw) -> MachineProfile:
    base = dict(name="t", peak_gflops=150.0, bw_gbs=20.0, cache_bytes=32e6, threads=2, llc_bw_gbs=150.0,
                overhead_us={"torch_dense": 3.0, "spruce_csr": 8.0}, sparse_eff={},
                gather_penalty={"torch_dense": 1.4, "spruce_csr": 0.9}, convert_ns={},
                dense_eff={"by_k": {"256": {"1": 0.3, "1024": 1.1}}})
    return MachineProfile(**{**base, **kw})


def test_check_profile_flags_each_disturbed_number():
    from spruce.perf.calibration import check_profile

    assert check_profile(_plausible_profile()) == []
    # the numbers of the disturbed v8 calibration of 2026-12-04 (issue 17's note), one at a time
    (llc,) = check_profile(_plausible_profile(llc_bw_gbs=1.06, bw_gbs=12.8))
    assert "LLC read bandwidth 1.06 GB/s is below the memory bandwidth 12.8" in llc
    (peak,) = check_profile(_plausible_profile(peak_gflops=29.9, dense_eff={"by_k": {"256": {"128": 5.29}}}))
    assert "5.29x the measured peak 29.9" in peak
    (slow,) = check_profile(_plausible_profile(overhead_us={"torch_dense": 3.0, "spruce_csr": 6045.0}))
    assert "spruce_csr" in slow and "torch_dense" not in slow and "6045 us" in slow
    (odd,) = check_profile(_plausible_profile(gather_penalty={"torch_coo": 49.3, "spruce_csr": 0.9}))
    assert "torch_coo (49.3)" in odd and "spruce_csr" not in odd
    assert len(check_profile(_plausible_profile(llc_bw_gbs=1.0, overhead_us={"x": 5000.0}))) == 2


def test_a_disturbed_calibration_says_so_and_records_it(monkeypatch, tmp_path, capsys):
    import json
    from spruce import kernels as registry
    from spruce.perf import calibration as machine

    bad = _plausible_profile(llc_bw_gbs=1.0)
    monkeypatch.setattr(machine, "calibrate", lambda kernels, base, progress: bad)
    path = tmp_path / "machine.json"
    machine.load_or_calibrate([registry.get("torch_dense")], path=path, progress=False)
    err = capsys.readouterr().err
    assert "looks disturbed" in err and "python -m spruce.perf threads=2 recalibrate=true" in err
    assert json.loads(path.read_text())["meta"]["warnings"] == machine.check_profile(bad)
    monkeypatch.setattr(machine, "calibrate", lambda kernels, base, progress: _plausible_profile())
    machine.load_or_calibrate([registry.get("torch_dense")], path=path, recalibrate=True, progress=False)
    assert capsys.readouterr().err == "" and json.loads(path.read_text())["meta"]["warnings"] == []


def test_weight_bytes_model_matches_every_cpu_kernel() -> None:
    """The memory model (index width, block shape) is the packed size each registered kernel reports."""
    from spruce import kernels as registry
    from spruce.perf.matrices import nonempty_blocks, synthetic_weight

    w = synthetic_weight("uniform", 64, 256, 0.8, seed=0)
    m, k = w.shape
    nnz = int((w != 0).sum())
    checked = 0
    for kn in registry.kernels(device="cpu"):
        if kn.format == "dense":
            continue
        block = pm.block_for(kn.name, kn.format)
        nb = nonempty_blocks(w, block) if kn.format == "bsr" else None
        expected = pm.weight_bytes(kn.format, m, k, nnz, pm.index_bytes_for(kn.name, kn.format), block, nb)
        assert kn.weight_bytes(kn.prepare(w)) == pytest.approx(expected), kn.name
        checked += 1
    assert checked >= 3


# ---- residual terms (issue 17): weight residency in the LLC, X panels beyond L2 ------------------------------------
@pytest.fixture
def tiny_llc(fake) -> MachineProfile:
    # a 20 MB LLC: fc8's dense weight (1000 x 4096 x 4 = 16.384 MB) fits, fc6's (4096 x 25088 x 4 = 411 MB) does not;
    # 1 MiB L2 per core, 50 GB/s from the LLC
    return MachineProfile(**{**fake.to_dict(), "cache_bytes": 20e6, "l2_bytes": 1024.0 ** 2, "llc_bw_gbs": 50.0,
                             "terms": ["weight_residency", "x_panel_l2"]})


FC6, FC7, FC8 = (4096, 25088), (4096, 4096), (1000, 4096)


def test_weight_residency_dense_time(tiny_llc):
    before = pm.without_residual_terms(tiny_llc)
    assert before.terms == [] and tiny_llc.terms == ["weight_residency", "x_panel_l2"]
    # fc8 at N = 1: before, memory-bound on all bytes: 4 (4096000 + 4096 + 1000) / 1e10 = 1.6404384 ms
    assert pm.dense_time_s(*FC8, 1, before) == pytest.approx(1.6404384e-3)
    # after, the weight stays in the LLC: memory 4 (4096 + 1000) / 1e10 = 2.04 us < FLOPs 2 * 4096000 / 1e11
    assert pm.dense_time_s(*FC8, 1, tiny_llc) == pytest.approx(8.192e-5)
    # fc6's weight does not fit: all of it streams on every call, (411041792 + 4 (25088 + 4096)) / 1e10 either way
    assert pm.streamed_fraction(411041792, 20e6) == 1.0 and pm.streamed_fraction(16384000, 20e6) == 0.0
    assert pm.dense_time_s(*FC6, 1, tiny_llc) == pytest.approx(41.1158528e-3)
    assert pm.dense_time_s(*FC6, 1, before) == pytest.approx(41.1158528e-3)


def test_weight_residency_moves_the_batch1_crossover_of_a_resident_layer_only(tiny_llc):
    before = pm.without_residual_terms(tiny_llc)
    # fc8 before: memory-bound both ways, 8 nnz + 4 * 1001 + 4 (4096 + 1000) = 4 (4096000 + 4096 + 1000)
    # -> nnz = (16404384 - 24388) / 8 = 2047499.5 -> s = 1 - nnz / 4096000
    st, s = pm.predicted_crossover("k", "csr", *FC8, 1, before, row_cov=0.0)
    assert st == "cross" and s == pytest.approx(1 - 2047499.5 / 4096000, abs=1e-6)
    # fc8 after: both weights resident, FLOP-bound: 2 nnz / (1e11 * 0.1) = 2 * 4096000 / 1e11 -> s = 0.9
    st, s = pm.predicted_crossover("k", "csr", *FC8, 1, tiny_llc, row_cov=0.0)
    assert st == "cross" and s == pytest.approx(0.9, abs=1e-6)
    # fc6 streams both weights: 8 nnz + 4 * 4097 = 4 * 4096 * 25088 either way
    nnz = (411041792 - 4 * 4097) / 8
    for prof in (before, tiny_llc):
        st, s = pm.predicted_crossover("k", "csr", *FC6, 1, prof, row_cov=0.0)
        assert st == "cross" and s == pytest.approx(1 - nnz / (4096 * 25088), abs=1e-6)


def test_x_panel_beyond_l2_slows_fc6_not_fc7(tiny_llc):
    panelled = MachineProfile(**{**tiny_llc.to_dict(), "x_panel_bytes": {"p": 384 * 1024}})
    before = pm.without_residual_terms(panelled)
    # fc6: 384 KiB / (4 * 25088) = 3 columns < 32, so the panel is 32 columns: 4 * 25088 * 32 = 3211264 bytes, 49/16
    # of the 1 MiB L2: a share 33/49 of the X reads (128 bytes per nonzero) comes from the LLC at 50 GB/s
    assert pm.panel_columns(25088, 32, 384 * 1024) == 32 and pm.panel_columns(768, 4096, 384 * 1024) == 128
    nnz = 0.1 * 4096 * 25088
    assert pm.x_llc_bytes(25088, 32, nnz, 384 * 1024, 1024 ** 2) == pytest.approx(33 / 49 * nnz * 128)
    flops = 2 * nnz * 32 / (1e11 * 0.1)  # 65.77 ms, above the memory time 8.6 ms (compute-bound)
    llc = 33 / 49 * nnz * 128 / 50e9  # 17.72 ms
    assert pm.sparse_time_s("p", "csr", *FC6, 32, nnz, 0.0, panelled) == pytest.approx(flops + llc)
    assert pm.sparse_time_s("p", "csr", *FC6, 32, nnz, 0.0, before) == pytest.approx(flops)
    # fc7: a 4 * 4096 * 32 = 512 KiB panel fits in L2: no LLC reads; a kernel without panels is not affected
    assert pm.x_llc_bytes(4096, 32, 1e6, 384 * 1024, 1024 ** 2) == 0.0
    nnz7 = 0.1 * 4096 * 4096
    assert pm.sparse_time_s("p", "csr", *FC7, 32, nnz7, 0.0, panelled) == pytest.approx(2 * nnz7 * 32 / 1e10)
    # crossovers at batch 32 (dense FLOP-bound, e_d = 1): before one value for both, 0.9; after fc6 moves to
    # 1 - 0.1 * 6.4 / (6.4 + 33/49 * 128 / 50) ns per nonzero = 0.921222, fc7 stays at 0.9
    s6b = pm.predicted_crossover("p", "csr", *FC6, 32, before, row_cov=0.0)[1]
    s7b = pm.predicted_crossover("p", "csr", *FC7, 32, before, row_cov=0.0)[1]
    assert s6b == pytest.approx(0.9, abs=1e-6) and s7b == pytest.approx(0.9, abs=1e-6)
    s6 = pm.predicted_crossover("p", "csr", *FC6, 32, panelled, row_cov=0.0)[1]
    s7 = pm.predicted_crossover("p", "csr", *FC7, 32, panelled, row_cov=0.0)[1]
    assert s6 == pytest.approx(1 - 0.64 / (6.4 + 33 / 49 * 128 / 50), abs=1e-6)
    assert s7 == pytest.approx(0.9, abs=1e-6)
    # an unknown L2 or LLC bandwidth (0) switches the term off
    unknown = MachineProfile(**{**panelled.to_dict(), "llc_bw_gbs": 0.0})
    assert pm.sparse_time_s("p", "csr", *FC6, 32, nnz, 0.0, unknown) == pytest.approx(flops)


def test_without_residual_terms_restores_the_v7_gather_penalty(tiny_llc):
    prof = MachineProfile(**{**tiny_llc.to_dict(), "gather_penalty": {"default": 1.0, "k": 0.9},
                             "meta": {"gather_penalty_half": {"k": 1.13}}})
    old = pm.without_residual_terms(prof)
    assert old.gather("k", "csr") == 1.13 and prof.gather("k", "csr") == 0.9 and old.terms == []
    with pytest.raises(ValueError, match="terms"):
        MachineProfile(**{**tiny_llc.to_dict(), "terms": ["bogus"]})
    with pytest.raises(ValueError, match="l2_bytes"):
        MachineProfile(**{**tiny_llc.to_dict(), "l2_bytes": -1.0})


def test_gather_sparsity_is_the_byte_parity_point():
    from spruce.perf.calibration import gather_sparsity

    # spruce_csr: 6 bytes per nonzero (+ row pointers) = 4 bytes per dense element at s ~ 1/3
    assert gather_sparsity("spruce_csr", "csr", 4096, 8192) == pytest.approx(1 / 3, abs=1e-3)
    assert gather_sparsity("torch_csr", "csr", 4096, 8192) == pytest.approx(0.5, abs=1e-3)
    assert gather_sparsity("torch_coo", "coo", 4096, 8192) == pytest.approx(0.8, abs=1e-3)  # 20 bytes per nonzero
