"""Spruce's own CUDA kernels without a GPU: NVRTC compilation for sm_80/sm_90, CPU execution of the same sources
through the fiber emulator against a float64 dense reference, planted bugs that the emulator must catch, and
argument validation. Tests that need a real GPU carry the ``gpu`` marker (deselected by default)."""
from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse
import torch
import torch.nn.functional as F

from spruce.kernels import get
from spruce.kernels.cuda import CudaCsrSpmm, CudaCsrSpmmRowtile, CudaCsrSpmmSubwarp, cuda_available
from spruce.kernels.cuda import nvrtc, spmm
from spruce.kernels.cuda.csr import CudaCsr, dense_to_csr
from spruce.kernels.cuda.emu import EmuBackend, EmulatorError
from spruce.kernels.cuda.launch import Launch, i32
from spruce.kernels.cuda.sources import KERNELS, TEST_KERNELS

ARCHS = ("sm_80", "sm_90")
BUGS = ("SPRUCE_PLANTED_BUG_BARRIER", "SPRUCE_PLANTED_BUG_SHUFFLE", "SPRUCE_PLANTED_BUG_OFF_BY_ONE")


# ---- helpers ------------------------------------------------------------------------------------------------------
def sparse_weight(m: int, k: int, density: float, seed: int = 0, empty_rows: tuple[int, ...] = (),
                  dense_rows: tuple[int, ...] = ()) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=g)
    w[torch.rand(m, k, generator=g) >= density] = 0.0
    for r in empty_rows:
        w[r] = 0.0
    for r in dense_rows:
        w[r] = torch.randn(k, generator=g)
    return w


def reference(w: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, act: str) -> torch.Tensor:
    """float64 ``act(W @ X + b)``."""
    y = w.double() @ x.double()
    if bias is not None:
        y = y + bias.double()[:, None]
    if act == "relu":
        y = y.relu()
    elif act == "gelu":
        y = F.gelu(y)
    return y


def assert_close64(y: torch.Tensor, ref: torch.Tensor) -> None:
    # fp32 accumulation in a different order (and FMA on a GPU): relative to the magnitude of the terms
    tol = 1e-5 * (1.0 + ref.abs().max().item())
    assert y.shape == ref.shape
    assert torch.isfinite(y).all(), "output holds NaN/Inf (read of poisoned memory?)"
    err = (y.double() - ref).abs().max().item() if y.numel() else 0.0
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g}"


@pytest.fixture(scope="session")
def emu() -> EmuBackend:
    return EmuBackend(order="reverse")


@pytest.fixture(scope="session")
def emu_forward() -> EmuBackend:
    return EmuBackend(order="forward")


@pytest.fixture(scope="session")
def emu_random() -> EmuBackend:
    return EmuBackend(order="random", seed=7)


# ---- NVRTC ---------------------------------------------------------------------------------------------------------
@pytest.mark.cuda_compile
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", sorted(KERNELS) + sorted(TEST_KERNELS))
def test_nvrtc_compiles_without_warnings(source: str, arch: str) -> None:
    res = nvrtc.compile_source(source, arch)
    assert res.log == ""
    assert res.binary[:4] == b"\x7fELF"  # a CUBIN for the real architecture
    assert set(res.lowered_names) == set(KERNELS.get(source) or TEST_KERNELS[source])
    for name, sym in res.lowered_names.items():
        assert sym.encode() in res.binary, f"{name} ({sym}) missing from the CUBIN"


@pytest.mark.cuda_compile
def test_nvrtc_fails_on_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    code = 'extern "C" __global__ void k(int* p) { int unused = 3; p[0] = 1; }\n'
    monkeypatch.setattr(nvrtc, "expanded_source", lambda name: code)
    monkeypatch.setattr(nvrtc, "kernel_names", lambda name: ("k",))
    with pytest.raises(nvrtc.CudaCompileError, match="warning"):
        nvrtc.compile_source("warn.cu", "sm_80")


@pytest.mark.cuda_compile
def test_nvrtc_fails_on_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvrtc, "expanded_source", lambda name: 'extern "C" __global__ void k() { undeclared(); }\n')
    monkeypatch.setattr(nvrtc, "kernel_names", lambda name: ("k",))
    with pytest.raises(nvrtc.CudaCompileError, match="does not compile"):
        nvrtc.compile_source("err.cu", "sm_90")


def test_nvrtc_rejects_bad_arch() -> None:
    with pytest.raises(ValueError, match="arch"):
        nvrtc.compile_source("csr_spmm.cu", "compute80")


# ---- dense -> CSR on the emulator ------------------------------------------------------------------------------------
CONVERT_CASES = {
    "awkward": dict(m=37, k=70, density=0.2, empty_rows=(0, 3, 36), dense_rows=(5,)),
    "one_by_one": dict(m=1, k=1, density=1.0),
    "all_zero": dict(m=9, k=33, density=0.0),
    "fully_dense": dict(m=7, k=65, density=1.0),
    "no_columns": dict(m=6, k=0, density=0.5),
    "scan_multi_chunk": dict(m=1500, k=3, density=0.5, empty_rows=(1023, 1024)),
}


@pytest.mark.cuda_compile
@pytest.mark.parametrize("case", sorted(CONVERT_CASES))
def test_dense_to_csr_matches_scipy(emu: EmuBackend, case: str) -> None:
    w = sparse_weight(**CONVERT_CASES[case])
    if case == "awkward":
        w[1, 0] = -0.0  # a negative zero is a zero, as for scipy
    csr = dense_to_csr(w, emu)
    ref = scipy.sparse.csr_matrix(w.numpy())
    ref.eliminate_zeros()
    assert csr.nnz == ref.nnz
    np.testing.assert_array_equal(csr.row_ptr.numpy(), ref.indptr)
    np.testing.assert_array_equal(csr.col_idx.numpy(), ref.indices)
    np.testing.assert_array_equal(csr.values.numpy(), ref.data)
    lengths = np.diff(ref.indptr)
    perm = csr.row_perm.numpy()
    assert sorted(perm.tolist()) == list(range(w.shape[0]))
    assert np.all(np.diff(lengths[perm]) <= 0), "row swizzle must order rows by descending length"
    csr.check("test", "cpu", full=True)


# ---- SpMM on the emulator ------------------------------------------------------------------------------------------
SPMM_CASES = {
    # name: (m, k, density, empty_rows, dense_rows)
    "awkward": (37, 70, 0.15, (0, 4, 36), (7,)),
    "long_rows": (5, 300, 0.9, (2,), (0,)),     # rows of ~270-300 nnz: several 32/64/128-entry chunks
    "nnz0": (6, 11, 0.0, (), ()),
    "fully_dense": (9, 13, 1.0, (), ()),
    "one_row": (1, 5, 1.0, (), ()),
}
N_VALUES = (1, 3, 4, 17, 64, 130)


@pytest.mark.cuda_compile
@pytest.mark.parametrize("variant", ("subwarp", "rowtile"))
@pytest.mark.parametrize("case", sorted(SPMM_CASES))
def test_spmm_matches_dense(emu: EmuBackend, case: str, variant: str) -> None:
    m, k, density, empty, dense = SPMM_CASES[case]
    w = sparse_weight(m, k, density, seed=1, empty_rows=empty, dense_rows=dense)
    csr = dense_to_csr(w, emu)
    g = torch.Generator().manual_seed(2)
    for i, n in enumerate(N_VALUES):
        x = torch.randn(k, n, generator=g)
        act = ("none", "relu", "gelu")[i % 3]
        bias = torch.randn(m, generator=g) if i % 2 == 0 else None
        y = spmm.matmul(csr, x, emu, bias, act, variant)
        assert_close64(y, reference(w, x, bias, act))


@pytest.mark.cuda_compile
@pytest.mark.parametrize("act", ("none", "relu", "gelu"))
@pytest.mark.parametrize("n", (4, 5))  # float4 path and scalar path
def test_every_epilogue_on_both_variants(emu: EmuBackend, act: str, n: int) -> None:
    w = sparse_weight(20, 40, 0.3, seed=3, empty_rows=(2,))
    csr = dense_to_csr(w, emu)
    x = torch.randn(40, n) * 2
    bias = torch.randn(20)
    for variant in ("subwarp", "rowtile"):
        assert_close64(spmm.matmul(csr, x, emu, bias, act, variant), reference(w, x, bias, act))


@pytest.mark.cuda_compile
@pytest.mark.parametrize("mean_len", (2, 20, 40, 100))  # one case per subwarp width 4, 8, 16, 32
def test_every_subwarp_width(emu: EmuBackend, mean_len: int) -> None:
    k = 128
    w = sparse_weight(11, k, mean_len / k, seed=mean_len, empty_rows=(3,))
    csr = dense_to_csr(w, emu)
    x = torch.randn(k, 6)
    y = spmm.matmul(csr, x, emu, None, "none", "subwarp")
    assert_close64(y, reference(w, x, None, "none"))
    sw = int(emu.launches[-1].kernel.split("<")[1].split(",")[0])
    assert sw == spmm.subwarp_width(csr)


@pytest.mark.cuda_compile
def test_thread_orders_agree(emu_forward: EmuBackend, emu_random: EmuBackend) -> None:
    w = sparse_weight(33, 150, 0.5, seed=4, empty_rows=(1,))
    x = torch.randn(150, 36)
    ref = reference(w, x, None, "none")
    for be in (emu_forward, emu_random):
        csr = dense_to_csr(w, be)
        for variant in ("subwarp", "rowtile"):
            assert_close64(spmm.matmul(csr, x, be, None, "none", variant), ref)


@pytest.mark.cuda_compile
def test_vector_loads_only_when_aligned(emu: EmuBackend) -> None:
    w = sparse_weight(10, 12, 0.5, seed=5)
    csr = dense_to_csr(w, emu)
    x = torch.randn(12, 8)
    spmm.matmul(csr, x, emu, variant="subwarp")
    assert emu.launches[-1].kernel.endswith("true>")
    spmm.matmul(csr, x, emu, variant="rowtile")
    assert emu.launches[-1].kernel == "csr_spmm_rowtile<4>"
    storage = torch.empty(1 + x.numel())
    x_mis = storage[1:].view(12, 8)  # contiguous but 4 bytes off a 16-byte boundary
    x_mis.copy_(x)
    for variant, name in (("subwarp", "false>"), ("rowtile", "csr_spmm_rowtile<1>")):
        y = spmm.matmul(csr, x_mis, emu, variant=variant)
        assert emu.launches[-1].kernel.endswith(name)
        assert_close64(y, reference(w, x, None, "none"))


@pytest.mark.cuda_compile
@pytest.mark.parametrize("lead", [(1,), (3,), (2, 5), (4, 5)])  # B = 1, 3, 10 native; 20 via transposes
def test_linear_form(emu: EmuBackend, lead: tuple[int, ...]) -> None:
    w = sparse_weight(19, 45, 0.25, seed=6, empty_rows=(0,))
    kern = CudaCsrSpmm(backend=emu)
    packed = kern.prepare(w)
    x = torch.randn(*lead, 45)
    bias = torch.randn(19)
    y = kern.linear(packed, x, bias, "gelu")
    ref = F.gelu(F.linear(x.double(), w.double(), bias.double()))
    assert y.shape == (*lead, 19)
    assert_close64(y.reshape(-1, 19), ref.reshape(-1, 19))
    b = int(np.prod(lead))
    assert emu.launches[-1].kernel.startswith("csr_linear_subwarp" if b <= spmm.LINEAR_MAX_B else "csr_spmm_")


@pytest.mark.cuda_compile
def test_forced_subwarp_linear_with_large_batch(emu: EmuBackend) -> None:
    w = sparse_weight(8, 30, 0.4, seed=7)
    kern = CudaCsrSpmmSubwarp(backend=emu)
    x = torch.randn(21, 30)
    y = kern.linear(kern.prepare(w), x, None, "relu")
    assert emu.launches[-1].kernel.startswith("csr_linear_subwarp")
    assert_close64(y, F.linear(x.double(), w.double()).relu())


@pytest.mark.cuda_compile
def test_registered_classes_end_to_end_on_the_emulator(emu: EmuBackend) -> None:
    w = sparse_weight(16, 27, 0.3, seed=8, empty_rows=(5,))
    x = torch.randn(27, 9)
    for cls in (CudaCsrSpmm, CudaCsrSpmmSubwarp, CudaCsrSpmmRowtile):
        kern = cls(backend=emu)
        packed = kern.prepare(w)
        assert kern.weight_bytes(packed) == 8 * packed.nnz + 4 * (2 * 16 + 1)
        assert_close64(kern.matmul(packed, x, None, "relu"), reference(w, x, None, "relu"))
    # the registry's default conv2d (im2col + matmul) runs through our matmul as well
    conv_w = sparse_weight(4, 3 * 3 * 3, 0.5, seed=9)
    img = torch.randn(2, 3, 6, 5)
    kern = CudaCsrSpmm(backend=emu)
    y = kern.conv2d(kern.prepare(conv_w), img, (3, 3), padding=(1, 1))
    ref = F.conv2d(img.double(), conv_w.double().reshape(4, 3, 3, 3), padding=1)
    assert_close64(y.reshape(-1), ref.reshape(-1, 1)[:, 0])


@pytest.mark.cuda_compile
def test_empty_outputs_launch_nothing(emu: EmuBackend) -> None:
    kern = CudaCsrSpmm(backend=emu)
    empty_rows = kern.prepare(torch.zeros(0, 5))
    packed = kern.prepare(sparse_weight(4, 5, 0.5))
    before = len(emu.launches)
    assert kern.matmul(empty_rows, torch.randn(5, 3)).shape == (0, 3)
    assert kern.matmul(packed, torch.randn(5, 0)).shape == (4, 0)
    assert kern.linear(packed, torch.randn(0, 5)).shape == (0, 4)
    assert len(emu.launches) == before


# ---- the emulator catches planted bugs ---------------------------------------------------------------------------
@pytest.mark.cuda_compile
@pytest.mark.parametrize("bug", BUGS)
def test_emulator_catches_planted_bug(bug: str) -> None:
    """Each build with one planted bug (missing barrier, short shuffle reduction, off-by-one loop bound) must fail
    the reference comparison or the emulator's own checks on a case the clean build passes."""
    w = sparse_weight(21, 300, 0.5, seed=10, empty_rows=(4,))
    x = torch.randn(300, 40)
    ref = reference(w, x, None, "none")
    clean, buggy = EmuBackend("reverse"), EmuBackend("reverse", defines=(bug,))
    failures = []
    for variant in ("subwarp", "rowtile"):
        assert_close64(spmm.matmul(dense_to_csr(w, clean), x, clean, variant=variant), ref)
        try:
            assert_close64(spmm.matmul(dense_to_csr(w, buggy), x, buggy, variant=variant), ref)
        except (AssertionError, EmulatorError) as e:
            failures.append((variant, str(e)))
    assert failures, f"{bug} went unnoticed"


@pytest.mark.cuda_compile
def test_emulator_reports_launch_errors(emu: EmuBackend) -> None:
    counts = torch.zeros(4, dtype=torch.int32)
    row_ptr = torch.zeros(5, dtype=torch.int32)
    # a block that is not a whole number of warps: the full-mask shuffles name lanes that do not exist
    bad = Launch("dense_to_csr.cu", "exclusive_scan_rows", (1, 1, 1), (48, 1, 1), 8,
                 (i32(4), *(spmm.ptr(t) for t in (counts, row_ptr))))
    with pytest.raises(EmulatorError, match="does not exist"):
        emu.run(bad)
    # too little dynamic shared memory: the canary after the buffer is overwritten
    bad = Launch("dense_to_csr.cu", "exclusive_scan_rows", (1, 1, 1), (256, 1, 1), 4,
                 (i32(4), *(spmm.ptr(t) for t in (counts, row_ptr))))
    with pytest.raises(EmulatorError, match="shared memory"):
        emu.run(bad)


# ---- the emulator itself: CUDA's shuffle/vote semantics and its fault detection --------------------------------------
def _expected_shuffles(t: int, width: int, delta: int) -> list[int]:
    """What the CUDA C++ Programming Guide specifies for v = 10 * t (see emu/selftest.cu)."""
    warp0, lane = t - t % 32, t % 32
    seg = lane - lane % width
    idx = warp0 + seg + delta % width
    up = t - delta if lane % width >= delta else t
    down = t + delta if lane % width + delta < width else t
    xor = warp0 + (lane ^ delta) if (lane ^ delta) // width == lane // width else t
    ballot = sum(1 << j for j in range(32) if j % 3 == 0)
    return [10 * idx, 10 * up, 10 * down, 10 * xor, ballot, 1, 0]


@pytest.mark.cuda_compile
@pytest.mark.parametrize("width, delta", [(32, 17), (8, 3), (4, 1), (16, 9)])
def test_emulator_shuffle_semantics(emu: EmuBackend, width: int, delta: int) -> None:
    threads = 64
    out = torch.full((7 * threads,), -7, dtype=torch.int32)
    emu.run(Launch("selftest.cu", "emu_shuffle_semantics", (1, 1, 1), (threads, 1, 1), 0,
                   (i32(width), i32(delta), spmm.ptr(out))))
    got = out.reshape(7, threads)
    for t in range(threads):
        assert got[:, t].tolist() == _expected_shuffles(t, width, delta), f"thread {t}"


@pytest.mark.cuda_compile
def test_emulator_reports_undefined_synchronisation(emu: EmuBackend) -> None:
    out = torch.zeros(64, dtype=torch.int32)
    with pytest.raises(EmulatorError, match="exited while"):
        emu.run(Launch("selftest.cu", "emu_exit_before_barrier", (1, 1, 1), (64, 1, 1), 0, (spmm.ptr(out),)))
    with pytest.raises(EmulatorError, match="deadlock|exited before joining"):
        emu.run(Launch("selftest.cu", "emu_half_warp_shuffle", (1, 1, 1), (32, 1, 1), 0, (spmm.ptr(out),)))


@pytest.mark.cuda_compile
def test_emulator_exposes_a_race_in_some_order(emu: EmuBackend, emu_forward: EmuBackend) -> None:
    """Fibers run between barriers one after another, so a read of a neighbour's shared-memory slot without a
    barrier sees the poison in the forward order (the neighbour has not run yet)."""
    threads = 64
    correct = [(t + 1) % threads for t in range(threads)]
    results = {}
    for name, be in (("forward", emu_forward), ("reverse", emu)):
        out = torch.zeros(threads, dtype=torch.int32)
        be.run(Launch("selftest.cu", "emu_read_neighbour_without_barrier", (1, 1, 1), (threads, 1, 1), 4 * threads,
                      (spmm.ptr(out),)))
        results[name] = out.tolist()
    assert results["forward"] != correct
    assert -1 in results["forward"]  # the 0xFF poison of shared memory


# ---- validation (no compiler, no GPU) -----------------------------------------------------------------------------
def test_registered_and_unavailable_without_gpu() -> None:
    kern = get("cuda_csr_spmm")
    ok, reason = type(kern).is_available()
    if not torch.cuda.is_available():
        assert not ok and "GPU" in reason
    assert ok == cuda_available()[0]


def test_cpu_tensors_are_rejected_before_any_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    from spruce.kernels.cuda.backend_cupy import CupyBackend

    def boom(self, launch):  # validation must come first: nothing may reach CuPy
        raise AssertionError("launched")
    monkeypatch.setattr(CupyBackend, "run", boom)
    kern = get("cuda_csr_spmm")
    with pytest.raises(ValueError, match="weight is on cpu, kernel runs on cuda"):
        kern.prepare(torch.randn(4, 4))
    fake = CudaCsr(2, 3, 1, torch.ones(1), torch.zeros(1, dtype=torch.int32),
                   torch.tensor([0, 1, 1], dtype=torch.int32), torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="values is on cpu"):
        kern.matmul(fake, torch.randn(3, 2))
    with pytest.raises(ValueError, match="values is on cpu"):
        kern.linear(fake, torch.randn(2, 3))


def _emu_packed(emu: EmuBackend) -> CudaCsr:
    return dense_to_csr(sparse_weight(6, 5, 0.5, seed=11), emu)


@pytest.mark.cuda_compile
@pytest.mark.parametrize("bad, pattern", [
    (lambda: torch.randn(5, 3, dtype=torch.float64), "x dtype torch.float64"),
    (lambda: torch.randn(4, 3), "x has 4 rows but the weight has K=5"),
    (lambda: torch.randn(3, 5).t(), "x must be contiguous"),
    (lambda: torch.randn(5), "x must be 2-D"),
    (lambda: "nope", "x must be a torch.Tensor"),
])
def test_matmul_validation(emu: EmuBackend, bad, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        spmm.matmul(_emu_packed(emu), bad(), emu)


@pytest.mark.cuda_compile
def test_bias_activation_variant_and_packed_validation(emu: EmuBackend) -> None:
    packed, x = _emu_packed(emu), torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        spmm.matmul(packed, x, emu, torch.randn(5))
    with pytest.raises(ValueError, match="bias dtype"):
        spmm.matmul(packed, x, emu, torch.randn(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        spmm.matmul(packed, x, emu, None, "tanh")
    with pytest.raises(ValueError, match="unknown variant"):
        spmm.matmul(packed, x, emu, None, "none", "fast")
    with pytest.raises(ValueError, match="must be a CudaCsr"):
        spmm.matmul(torch.randn(6, 5), x, emu)
    with pytest.raises(ValueError, match=r"x must be \[..., K\] with K=5"):
        spmm.linear(packed, torch.randn(2, 4), emu)
    with pytest.raises(ValueError, match="x must be contiguous"):
        spmm.linear(packed, torch.randn(5, 2).t(), emu)


def test_weight_validation() -> None:
    class MetaBackend:  # lets the size check run without allocating 2^31 floats
        device_type = "meta"

        def run(self, launch):
            raise AssertionError("launched")
    with pytest.raises(ValueError, match="at most 2"):
        dense_to_csr(torch.empty(2**16, 2**15, device="meta"), MetaBackend())
    cpu = EmuBackend.__new__(EmuBackend)  # device checks only: no library needed
    with pytest.raises(ValueError, match="non-finite"):
        dense_to_csr(torch.tensor([[1.0, float("nan")]]), cpu)
    with pytest.raises(ValueError, match="weight must be 2-D"):
        dense_to_csr(torch.ones(3), cpu)
    with pytest.raises(ValueError, match="weight dtype torch.float16"):
        dense_to_csr(torch.ones(2, 2, dtype=torch.float16), cpu)


def test_csr_from_parts_checks_index_ranges() -> None:
    v = torch.ones(2)
    with pytest.raises(ValueError, match=r"col_idx values must lie in \[0, 3\)"):
        CudaCsr.from_parts(v, torch.tensor([0, 3], dtype=torch.int32), torch.tensor([0, 1, 2], dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="row_ptr must start at 0"):
        CudaCsr.from_parts(v, torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0, 2, 1], dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="col_idx dtype torch.int64"):
        CudaCsr.from_parts(v, torch.tensor([0, 1]), torch.tensor([0, 1, 2], dtype=torch.int32), 3)
    csr = CudaCsr.from_parts(v, torch.tensor([2, 0], dtype=torch.int32), torch.tensor([0, 0, 2], dtype=torch.int32), 3)
    assert csr.row_perm.tolist() == [1, 0]


def test_launch_limits_and_int32_args() -> None:
    with pytest.raises(ValueError, match="grid"):
        Launch("csr_spmm.cu", "k", (1, 70000, 1), (32, 1, 1), 0, ())
    with pytest.raises(ValueError, match="block"):
        Launch("csr_spmm.cu", "k", (1, 1, 1), (2048, 1, 1), 0, ())
    with pytest.raises(ValueError, match="int32"):
        i32(2**31)


@pytest.mark.cuda_compile
def test_cupy_backend_launch_path_on_the_emulator(monkeypatch: pytest.MonkeyPatch, emu: EmuBackend) -> None:
    """The registered kernel with its real CupyBackend, down to the ``RawKernel(grid, block, args, shared_mem=)``
    call; a stand-in RawModule forwards that call (raw pointers, numpy scalars) to the emulator library."""
    import contextlib
    import ctypes
    import types

    import cupy

    from spruce.kernels.cuda import backend_cupy

    compiled: list[tuple] = []

    class FakeModule:
        def __init__(self, code: str, options: tuple, name_expressions: list[str]):
            assert '#include "' not in code  # headers are inlined (CuPy's cache keys on the code string only)
            compiled.append((options, tuple(name_expressions)))
            self.names = name_expressions

        def compile(self) -> None:
            pass

        def get_function(self, name: str):
            assert name in self.names
            def launch(grid, block, args, shared_mem=0):
                vals = []
                for a in args:
                    assert isinstance(a, (np.uint64, np.int32, np.float32)), type(a)
                    vals.append(ctypes.c_void_p(int(a)) if isinstance(a, np.uint64) else
                                ctypes.c_int32(int(a)) if isinstance(a, np.int32) else ctypes.c_float(float(a)))
                argv = (ctypes.c_void_p * len(vals))(*(ctypes.addressof(v) for v in vals))
                err = ctypes.create_string_buffer(1024)
                rc = emu.lib.spruce_emu_launch(name.encode(), (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block),
                                               shared_mem, argv, 1, 0, err, 1024)
                assert rc == 0, err.value.decode()
            return launch

    monkeypatch.setattr(backend_cupy, "_modules", {})
    monkeypatch.setattr(cupy, "RawModule", FakeModule)
    monkeypatch.setattr(cupy.cuda, "Device", lambda i=None: contextlib.nullcontext())
    monkeypatch.setattr(cupy.cuda, "ExternalStream", lambda ptr: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda d=None: types.SimpleNamespace(cuda_stream=0))
    monkeypatch.setattr(backend_cupy.CupyBackend, "device_type", "cpu")  # CPU tensors stand in for CUDA ones
    kern = get("cuda_csr_spmm")
    w = sparse_weight(23, 40, 0.3, seed=12, empty_rows=(1,))
    packed = kern.prepare(w)
    for n in (2, 33):
        x = torch.randn(40, n)
        bias = torch.randn(23)
        assert_close64(kern.matmul(packed, x, bias, "gelu"), reference(w, x, bias, "gelu"))
    y = kern.linear(packed, torch.randn(3, 40), None, "relu")
    assert y.shape == (3, 23)
    assert [c[1] for c in compiled] == [KERNELS["dense_to_csr.cu"], KERNELS["csr_spmm.cu"]]  # once per source
    assert all(c[0] == nvrtc.COMPILE_OPTIONS for c in compiled)


def test_gpu_smoke_entry_refuses_without_gpu(capsys: pytest.CaptureFixture) -> None:
    from spruce.kernels.cuda.gpu_smoke import main
    assert main(["--sparsity", "1.5"]) == 2
    assert "error: --sparsity 1.5" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([]) == 2
        assert "error: no CUDA GPU" in capsys.readouterr().err


# ---- real GPU ------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["cuda_csr_spmm", "cuda_csr_spmm_subwarp", "cuda_csr_spmm_rowtile"])
def test_gpu_matches_dense(name: str) -> None:
    kern = get(name)
    for (m, k, density), n in [((37, 70, 0.15), 1), ((37, 70, 0.15), 17), ((256, 300, 0.1), 128),
                               ((64, 48, 0.0), 4), ((33, 129, 1.0), 64)]:
        w = sparse_weight(m, k, density, seed=n, empty_rows=(0,)).cuda()
        packed = kern.prepare(w)
        csr_ref = scipy.sparse.csr_matrix(w.cpu().numpy())
        assert packed.nnz == csr_ref.nnz
        x = torch.randn(k, n, device="cuda")
        bias = torch.randn(m, device="cuda")
        for act in ("none", "relu", "gelu"):
            assert_close64(kern.matmul(packed, x, bias, act).cpu(), reference(w.cpu(), x.cpu(), bias.cpu(), act))
        xl = torch.randn(3, n, k, device="cuda")
        ref = F.gelu(F.linear(xl.double(), w.double(), bias.double()))
        assert_close64(kern.linear(packed, xl, bias, "gelu").reshape(-1, m).cpu(), ref.reshape(-1, m).cpu())


@pytest.mark.gpu
def test_gpu_timing_smoke() -> None:
    """Runs each variant on BERT- and VGG-fc6-like shapes at 90% sparsity and prints medians (no pass/fail on time)."""
    for (m, k), n in [((3072, 768), 128), ((4096, 25088), 1)]:
        w = sparse_weight(m, k, 0.1, seed=0).cuda()
        x = torch.randn(k, n, device="cuda")
        dense_ms = _median_ms(lambda: w @ x)
        for name in ("cuda_csr_spmm_subwarp", "cuda_csr_spmm_rowtile", "cuda_csr_spmm"):
            kern = get(name)
            packed = kern.prepare(w)
            assert_close64(kern.matmul(packed, x).cpu(), reference(w.cpu(), x.cpu(), None, "none"))
            ms = _median_ms(lambda: kern.matmul(packed, x))
            print(f"{name} {m}x{k} N={n}: {ms:.4f} ms (dense {dense_ms:.4f} ms)")


def _median_ms(fn, reps: int = 50) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def test_import_needs_neither_cupy_nor_nvrtc() -> None:
    """The registry imports our modules on every machine: they must not import CuPy or NVRTC at module level."""
    import subprocess
    import sys
    code = ("import sys, spruce.kernels as K; K.names(); K.availability(); "
            "bad = [m for m in ('cupy', 'cupyx', 'cuda.bindings.nvrtc') if m in sys.modules]; "
            "assert not bad or __import__('torch').cuda.is_available(), bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_nvrtc_compile_leaves_python_byte_singletons_intact() -> None:
    """Regression: NVRTC once wrote its (empty) log into CPython's shared one-byte b" " object, which broke
    unrelated code later in the process (torch.load of bool tensors)."""
    from spruce.kernels.cuda.nvrtc import compile_source
    compile_source("dense_to_csr.cu", "sm_80")
    assert b" " == bytes([32]) and b" " * 3 == bytes([32, 32, 32])
