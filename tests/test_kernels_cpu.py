"""Spruce's C++ CPU kernels (spruce_csr, spruce_csr_direct, spruce_bsr4x1) against float64 dense references."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spruce.kernels import get
from spruce.kernels.cpu import CpuPacked, build

OURS = ["spruce_csr", "spruce_csr_direct", "spruce_bsr4x1"]
from shared_data import DLMC  # noqa: E402


from cpu_isa import extension, isa  # noqa: E402,F401  (autouse: every test once per ISA)


def sparse_weight(m: int, k: int, density: float, seed: int = 0, empty_rows: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.empty(m, k).uniform_(-1, 1, generator=g)
    w[torch.rand(m, k, generator=g) >= density] = 0.0
    if empty_rows:
        w[torch.randperm(m, generator=g)[:empty_rows]] = 0.0
    return w


def reference(w: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, act: str) -> torch.Tensor:
    """float64 ``act(W @ X + b)``."""
    y = w.double() @ x.double()
    if bias is not None:
        y = y + bias.double()[:, None]
    if act == "relu":
        y = torch.relu(y)
    elif act == "gelu":
        y = F.gelu(y)
    return y


def assert_matches(y: torch.Tensor, ref: torch.Tensor, k: int) -> None:
    assert y.dtype == torch.float32 and tuple(y.shape) == tuple(ref.shape)
    # fp32 accumulation of up to k products of values in [-1, 1]
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-5 * max(1.0, k ** 0.5))


# ---- awkward shapes ---------------------------------------------------------------------------------------
SHAPES = [  # (M, K, density, empty rows)
    (1, 1, 1.0, 0), (1, 53, 0.3, 0), (37, 1, 0.5, 0), (37, 53, 0.2, 5), (37, 53, 0.0, 0), (37, 53, 1.0, 0),
    (64, 576, 0.1, 3), (130, 70, 0.05, 20), (9, 65537, 0.001, 2),  # K > 65535: int32 indices
]


@pytest.mark.parametrize("name", OURS)
@pytest.mark.parametrize("m,k,density,empty", SHAPES)
@pytest.mark.parametrize("n", [1, 7, 33])
def test_matmul_awkward_shapes(name, m, k, density, empty, n):
    kern = get(name)
    w = sparse_weight(m, k, density, seed=m * 7 + k, empty_rows=empty)
    x = torch.randn(k, n)
    packed = kern.prepare(w)
    assert_matches(kern.matmul(packed, x), reference(w, x, None, "none"), k)


@pytest.mark.parametrize("name", OURS)
@pytest.mark.parametrize("act", ["none", "relu", "gelu"])
@pytest.mark.parametrize("n", [1, 8, 45, 300])
def test_epilogues(name, act, n):
    kern = get(name)
    w = sparse_weight(70, 90, 0.15, seed=3, empty_rows=4)
    x, b = torch.randn(90, n), torch.randn(70)
    packed = kern.prepare(w)
    assert_matches(kern.matmul(packed, x, b, act), reference(w, x, b, act), 90)
    assert_matches(kern.matmul(packed, x, None, act), reference(w, x, None, act), 90)


@pytest.mark.parametrize("name", OURS)
def test_large_n_uses_panels(name):
    """N = 3000 spans several L2 panels (and the column split across threads)."""
    kern = get(name)
    w = sparse_weight(40, 600, 0.1, seed=5, empty_rows=3)
    x, b = torch.randn(600, 3000), torch.randn(40)
    assert_matches(kern.matmul(kern.prepare(w), x, b, "relu"), reference(w, x, b, "relu"), 600)


def test_gelu_is_exact_erf_gelu():
    """The fused GELU is the erf form to ~1e-6 relative against an exact (math.erfc) reference, including the
    negative tail where torch's own float32 GELU cancels to 0; and within 1e-6 absolute of F.gelu."""
    kern = get("spruce_csr")
    x = torch.cat([torch.linspace(-12, 12, 64 * 40), torch.randn(64 * 40) * 3]).reshape(64, 80)
    y = kern.matmul(kern.prepare(torch.eye(64)), x, None, "gelu")
    exact = torch.tensor([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.double().flatten().tolist()],
                         dtype=torch.float64).reshape(x.shape)
    big = exact.abs() > 1e-3
    torch.testing.assert_close(y.double()[big], exact[big], rtol=2e-6, atol=0)
    torch.testing.assert_close(y.double(), exact, rtol=2e-5, atol=1e-30)
    torch.testing.assert_close(y, F.gelu(x), rtol=0, atol=1.5e-6)


@pytest.mark.parametrize("name", OURS)
def test_linear_matches_f_linear(name):
    kern = get(name)
    w = sparse_weight(50, 64, 0.2, seed=9, empty_rows=2)
    b = torch.randn(50)
    packed = kern.prepare(w)
    for shape in [(1, 64), (64,), (3, 5, 64), (77, 64)]:
        x = torch.randn(*shape)
        for act in ["none", "relu", "gelu"]:
            ref = F.linear(x.double(), w.double(), b.double())
            ref = torch.relu(ref) if act == "relu" else F.gelu(ref) if act == "gelu" else ref
            y = kern.linear(packed, x, b, act)
            assert y.shape == ref.shape
            torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-5 * 8)


LINEAR_SHAPES = [  # (M, K, density, empty rows, B): B and M off the vector widths, panels, one nonzero, none
    (50, 64, 0.2, 2, 2), (33, 70, 0.3, 5, 17), (17, 129, 0.1, 0, 130), (40, 3000, 0.05, 3, 100),
    (8, 16, 0.0, 0, 9), (1, 1, 1.0, 0, 31), (20, 65537, 0.0005, 4, 5),  # K > 65536: int32 indices
]


@pytest.mark.parametrize("name", OURS)
@pytest.mark.parametrize("m,k,density,empty,bsz", LINEAR_SHAPES)
def test_linear_layout_awkward_shapes(name, m, k, density, empty, bsz):
    """The nn.Linear layout (x [B, K] -> y [B, M], row-major both) against float64, with a fused epilogue."""
    kern = get(name)
    w = sparse_weight(m, k, density, seed=m + k + bsz, empty_rows=empty)
    if m == 8:  # exactly one nonzero
        w.zero_()
        w[3, 7] = 1.5
    x, b = torch.randn(bsz, k), torch.randn(m)
    packed = kern.prepare(w)
    for act in ["none", "gelu"]:
        ref = reference(w, x.t(), b, act).t()
        assert_matches(kern.linear(packed, x, b, act), ref.contiguous(), k)


CONVS = [  # (B, C_in, H, W, C_out, kh, kw, stride, padding, dilation)
    (1, 4, 20, 70, 6, 3, 3, (1, 1), (1, 1), (1, 1)),  # output rows in several tiles, width 64 + 6
    (3, 3, 30, 30, 5, 3, 3, (1, 1), (1, 1), (1, 1)),
    (1, 2, 19, 14, 3, 3, 3, (1, 1), (2, 2), (2, 2)),
    (2, 64, 12, 12, 64, 3, 3, (1, 1), (1, 1), (1, 1)),  # weights above one chunk of output channels
    (2, 3, 9, 11, 5, 3, 3, (1, 1), (1, 1), (1, 1)),
    (1, 4, 10, 40, 6, 3, 2, (2, 1), (0, 2), (1, 2)),
    (2, 3, 17, 17, 4, 3, 3, (2, 2), (1, 1), (1, 1)),
    (1, 2, 5, 5, 3, 1, 1, (1, 1), (0, 0), (1, 1)),
    (3, 8, 8, 70, 8, 3, 3, (1, 3), (2, 1), (2, 1)),
    (1, 16, 6, 6, 9, 5, 5, (1, 1), (2, 2), (1, 1)),
]


@pytest.mark.parametrize("name", OURS)
@pytest.mark.parametrize("cfg", CONVS)
def test_conv2d_matches_f_conv2d(name, cfg):
    bsz, ci, h, wd, co, kh, kw, stride, pad, dil = cfg
    kern = get(name)
    g = torch.Generator().manual_seed(ci * h)
    w4 = torch.randn(co, ci, kh, kw, generator=g)
    w4[w4.abs() < (0.9 if ci < 64 else 0.05)] = 0.0
    x, b = torch.randn(bsz, ci, h, wd, generator=g), torch.randn(co, generator=g)
    packed = kern.prepare(w4.reshape(co, -1))
    for act in ["none", "relu"]:
        ref = F.conv2d(x.double(), w4.double(), b.double(), stride=stride, padding=pad, dilation=dil)
        ref = torch.relu(ref) if act == "relu" else ref
        y = kern.conv2d(packed, x, (kh, kw), stride, pad, dil, b, act)
        assert y.shape == ref.shape
        torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)


def test_direct_conv_needs_no_im2col(monkeypatch):
    """spruce_csr_direct.conv2d must not call F.unfold (that is the point of a direct convolution)."""
    kern = get("spruce_csr_direct")
    w4 = torch.randn(4, 3, 3, 3)
    packed = kern.prepare(w4.reshape(4, -1))

    def no_unfold(*a, **k):
        raise AssertionError("unfold called")

    monkeypatch.setattr(F, "unfold", no_unfold)
    x = torch.randn(1, 3, 12, 12)
    torch.testing.assert_close(kern.conv2d(packed, x, (3, 3), padding=(1, 1)), F.conv2d(x, w4, padding=1),
                               rtol=1e-4, atol=1e-4)


# ---- DLMC topologies ------------------------------------------------------------------------------------------
def read_smtx(path: Path, seed: int = 0) -> torch.Tensor:
    """A DLMC .smtx topology as a dense [M, K] float32 weight with values uniform in [-1, 1]."""
    lines = path.read_text().split("\n")
    m, k, nnz = (int(v) for v in lines[0].split(","))
    rp = torch.tensor([int(v) for v in lines[1].split()], dtype=torch.int64)
    cols = torch.tensor([int(v) for v in lines[2].split()], dtype=torch.int64) if nnz else torch.zeros(0, dtype=torch.int64)
    assert rp.numel() == m + 1 and cols.numel() == nnz == int(rp[-1])
    rows = torch.repeat_interleave(torch.arange(m), rp[1:] - rp[:-1])
    w = torch.zeros(m, k)
    g = torch.Generator().manual_seed(seed)
    w[rows, cols] = torch.empty(nnz).uniform_(-1, 1, generator=g)
    return w


DLMC_FILES = sorted(DLMC.glob("*/*/*/bottleneck_1_*.smtx")) + sorted(
    DLMC.glob("transformer/*/0.9/*attention_q*.smtx")) + sorted(DLMC.glob("rn50/magnitude_pruning/0.98/*.smtx"))


@pytest.mark.skipif(not DLMC.exists(), reason="DLMC sample not found (spruce.sparse.dlmc)")
@pytest.mark.parametrize("path", DLMC_FILES, ids=lambda p: "/".join(p.parts[-4:]))
def test_dlmc_topologies(path):
    w = read_smtx(path)
    b = torch.randn(w.shape[0])
    for name in OURS:
        kern = get(name)
        packed = kern.prepare(w)
        for n in (1, 33):
            x = torch.randn(w.shape[1], n)
            assert_matches(kern.matmul(packed, x, b, "relu"), reference(w, x, b, "relu"), w.shape[1])


# ---- properties ---------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 70), k=st.integers(1, 90), n=st.integers(1, 70), density=st.floats(0.0, 1.0),
       act=st.sampled_from(["none", "relu", "gelu"]), name=st.sampled_from(OURS), seed=st.integers(0, 2**16),
       with_bias=st.booleans())
def test_property_random_shapes(m, k, n, density, act, name, seed, with_bias):
    kern = get(name)
    w = sparse_weight(m, k, density, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(k, n, generator=g)
    b = torch.randn(m, generator=g) if with_bias else None
    packed = kern.prepare(w)
    assert packed.nblocks <= max(1, m * k)
    assert_matches(kern.matmul(packed, x, b, act), reference(w, x, b, act), k)


# ---- packing, threads ---------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::UserWarning")  # torch: "sparse CSR support is in beta"
def test_prepare_packs_csr_exactly():
    w = sparse_weight(20, 30, 0.3, seed=1, empty_rows=4)
    p = get("spruce_csr").prepare(w)
    ref = w.to_sparse_csr()
    assert p.cols.dtype == torch.int16  # K <= 65536: uint16 indices
    assert torch.equal(p.rowptr.long(), ref.crow_indices())
    assert torch.equal(p.cols.long() & 0xFFFF, ref.col_indices())
    assert torch.equal(p.vals, ref.values())
    assert get("spruce_csr").weight_bytes(p) == 21 * 4 + p.nblocks * (2 + 4)
    assert get("spruce_csr_direct").prepare(w).cols.dtype == torch.int32


def test_prepare_bsr_blocks():
    w = torch.zeros(6, 5)
    w[0, 1] = 1.0
    w[3, 1] = 2.0
    w[5, 4] = 3.0
    p = get("spruce_bsr4x1").prepare(w)
    assert p.rowptr.tolist() == [0, 1, 2]
    assert (p.cols.long() & 0xFFFF).tolist() == [1, 4]
    assert p.vals.tolist() == [1.0, 0.0, 0.0, 2.0, 0.0, 3.0, 0.0, 0.0]


def test_uint16_column_indices_above_32767():
    """Columns >= 32768 are stored as negative int16 and must be read back as uint16."""
    w = torch.zeros(3, 65536)
    w[0, 65535] = 2.0
    w[1, 40000] = -1.0
    w[2, 5] = 0.5
    x = torch.randn(65536, 9)
    for name in ("spruce_csr", "spruce_bsr4x1"):
        kern = get(name)
        p = kern.prepare(w)
        assert p.cols.dtype == torch.int16
        assert_matches(kern.matmul(p, x), reference(w, x, None, "none"), 1)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_agree(threads):
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        w = sparse_weight(301, 257, 0.1, seed=11, empty_rows=30)
        x = torch.randn(257, 1000)
        for name in OURS:
            kern = get(name)
            assert_matches(kern.matmul(kern.prepare(w), x), reference(w, x, None, "none"), 257)
    finally:
        torch.set_num_threads(prev)


def test_non_contiguous_inputs_are_correct():
    kern = get("spruce_csr")
    w = sparse_weight(30, 40, 0.3, seed=2)
    x = torch.randn(19, 40).t()  # [40, 19], not contiguous
    assert not x.is_contiguous()
    assert_matches(kern.matmul(kern.prepare(w.t().contiguous().t().contiguous()), x), reference(w, x, None, "none"), 40)
    wt = sparse_weight(40, 30, 0.3, seed=3).t()  # non-contiguous weight
    assert_matches(kern.matmul(kern.prepare(wt), x), reference(wt, x, None, "none"), 40)


# ---- bad input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OURS)
def test_bad_input_raises_value_error(name):
    kern = get(name)
    w = sparse_weight(6, 8, 0.5)
    p = kern.prepare(w)
    x = torch.randn(8, 3)
    bad_calls = [
        lambda: kern.prepare(w.double()),  # dtype
        lambda: kern.prepare(torch.empty(6, 8, device="meta")),  # device
        lambda: kern.prepare(torch.randn(8)),  # rank
        lambda: kern.prepare(torch.tensor([[1.0, float("nan")], [0.0, 1.0]])),  # NaN
        lambda: kern.prepare(torch.tensor([[float("inf"), 0.0]])),  # Inf
        lambda: kern.matmul(p, torch.randn(7, 3)),  # K mismatch
        lambda: kern.matmul(p, torch.randn(8)),  # rank
        lambda: kern.matmul(p, x.double()),  # dtype
        lambda: kern.matmul(p, torch.empty(8, 3, device="meta")),  # device
        lambda: kern.matmul(p, x, torch.randn(5)),  # bias shape
        lambda: kern.matmul(p, x, torch.randn(6).double()),  # bias dtype
        lambda: kern.matmul(p, x, None, "tanh"),  # activation
        lambda: kern.matmul(get("torch_dense").prepare(w), x),  # foreign packed weight
        lambda: kern.linear(p, torch.randn(2, 7)),  # K mismatch
        lambda: kern.conv2d(p, torch.randn(1, 2, 5, 5), (2, 2)),  # C_in*kh*kw = 8 ok ... see next
        lambda: kern.conv2d(p, torch.randn(1, 2, 1, 1), (2, 2)),  # smaller than the kernel
        lambda: kern.conv2d(p, torch.randn(2, 5, 5), (2, 2)),  # rank
        lambda: kern.conv2d(p, torch.randn(1, 3, 5, 5), (2, 2)),  # C_in*kh*kw != K
    ]
    for i, call in enumerate(bad_calls):
        if i == 14:  # a valid call (K = 2*2*2): must work
            assert call().shape == (1, 6, 4, 4)
            continue
        with pytest.raises(ValueError):
            call()


def test_nan_message_names_the_problem():
    with pytest.raises(ValueError, match="non-finite"):
        get("spruce_csr").prepare(torch.tensor([[0.0, float("nan")]]))


def test_empty_matrices():
    for name in OURS:
        kern = get(name)
        p = kern.prepare(torch.zeros(0, 5))
        assert kern.matmul(p, torch.randn(5, 4)).shape == (0, 4)
        p = kern.prepare(torch.zeros(3, 5))
        y = kern.matmul(p, torch.randn(5, 0))
        assert y.shape == (3, 0)
        assert isinstance(p, CpuPacked)


def test_isa_switch_names_the_path_and_refuses_bad_values(monkeypatch):
    """$SPRUCE_ISA forces a path, availability names it; unknown or unsupported values make the kernels
    unavailable with the reason (never an illegal instruction), and none disables them."""
    for path in build.cpu_isas():
        monkeypatch.setenv(build.ENV, path)
        assert build.availability() == (True, f"isa: {path}")
    monkeypatch.setenv(build.ENV, "sse9")
    ok, why = build.availability()
    assert not ok and "sse9" in why and "avx2" in why
    monkeypatch.setenv(build.ENV, "none")
    ok, why = build.availability()
    assert not ok and "disabled" in why
    with pytest.raises(RuntimeError, match="disabled"):
        get("spruce_csr").prepare(torch.eye(4))
    if "avx512" not in build.cpu_isas():
        monkeypatch.setenv(build.ENV, "avx512")
        assert "lacks" in build.availability()[1]
    monkeypatch.delenv(build.ENV)
    for family in build.FAMILIES:
        assert build.isa(family) == build.preferred_isas(family)[0]
        assert sorted(build.preferred_isas(family)) == sorted(build.cpu_isas())
    assert build.availability()[1].startswith(f"isa: {build.isa()}")
    with pytest.raises(ValueError, match="unknown kernel family"):
        build.preferred_isas("fft")
    with pytest.raises(ValueError, match="unknown instruction set"):
        build.load().cpu_has_isa("sse9")
