"""cuSPARSE kernels through CuPy: registration, availability, validation and the column-split rule without a GPU;
correctness against a float64 dense reference with one (``gpu`` marker, deselected by default)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from spruce.kernels import cusparse as cs
from spruce.kernels import get, names

NAMES = ("cusparse_csr_highlevel", "cusparse_csr_spmm", "cusparse_csr_spmm_alg2")


def test_registered_under_cuda_and_unavailable_without_gpu() -> None:
    for name in NAMES:
        assert name in names()
        kern = get(name)
        assert kern.device == "cuda" and kern.format == "csr"
        ok, reason = type(kern).is_available()
        if not torch.cuda.is_available():
            assert not ok and "GPU" in reason


@pytest.mark.parametrize("name", NAMES)
def test_weight_validation_runs_before_cupy(name: str) -> None:
    kern = get(name)
    with pytest.raises(ValueError, match="weight is on cpu, kernel runs on cuda"):
        kern.prepare(torch.randn(3, 4))
    with pytest.raises(ValueError, match="weight must be a torch.Tensor"):
        kern.prepare([[1.0]])
    meta = torch.empty(3, 4, device="meta")
    with pytest.raises(ValueError, match="weight is on meta"):
        kern.prepare(meta)


def test_call_validation_without_gpu() -> None:
    dev = torch.device("cuda", 0)  # only compared, never used
    check = cs._check_call
    with pytest.raises(ValueError, match="x is on cpu, kernel runs on cuda"):
        check("k", 3, 4, dev, torch.randn(4, 2), None, "none")
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        check("k", 3, 4, dev, torch.randn(4, 2), None, "swish")
    with pytest.raises(ValueError, match="x must be a torch.Tensor"):
        check("k", 3, 4, dev, None, None, "none")
    with pytest.raises(ValueError, match="packed weight must come from prepare"):
        get("cusparse_csr_spmm").matmul(object(), torch.randn(4, 2))
    with pytest.raises(ValueError, match="packed weight must come from prepare"):
        get("cusparse_csr_highlevel").matmul(object(), torch.randn(4, 2))


def test_column_chunks_guard_the_dense_column_limit() -> None:
    limit = cs.SPMM_MAX_DENSE_COLS
    assert limit == 1_048_560
    assert cs.column_chunks(100, 12000) == [(0, 100)]
    assert cs.column_chunks(limit, 12000) == [(0, limit)]
    chunks = cs.column_chunks(2 * limit + 5, 12603)  # cuSPARSE 12.6.3 (CUDA 13.0): split
    assert chunks == [(0, limit), (limit, 2 * limit), (2 * limit, 2 * limit + 5)]
    assert cs.column_chunks(2 * limit + 5, cs.CUSPARSE_FIXED_VERSION) == [(0, 2 * limit + 5)]
    assert cs.column_chunks(10, 0, limit=4) == [(0, 4), (4, 8), (8, 10)]
    assert cs.column_chunks(0, 0) == [(0, 0)]
    with pytest.raises(ValueError, match="n=-1"):
        cs.column_chunks(-1, 0)


def test_enum_values_match_the_installed_headers() -> None:
    """Our hard-coded cusparse.h enum values (CuPy does not export the SpMM CSR algorithms) against the header."""
    import nvidia
    headers = [Path(p) / "cu13" / "include" / "cusparse.h" for p in nvidia.__path__]
    header = next((h for h in headers if h.is_file()), None)
    if header is None:
        pytest.skip("cusparse.h not installed (nvidia-cusparse wheel headers missing)")
    text = header.read_text()
    for key, name in (("csr_alg1", "CUSPARSE_SPMM_CSR_ALG1"), ("csr_alg2", "CUSPARSE_SPMM_CSR_ALG2"),
                      ("csr_alg3", "CUSPARSE_SPMM_CSR_ALG3"), ("default", "CUSPARSE_SPMM_ALG_DEFAULT")):
        value = int(re.search(rf"\b{name}\s*=\s*(\d+)", text).group(1))
        assert cs.SPMM_ALGS[key] == value, name
    from cupy_backends.cuda.libs import cusparse
    assert cs._CUSPARSE_ORDER_ROW == cusparse.CUSPARSE_ORDER_ROW
    assert cs._CUSPARSE_INDEX_32I == cusparse.CUSPARSE_INDEX_32I
    assert cs._CUSPARSE_INDEX_BASE_ZERO == cusparse.CUSPARSE_INDEX_BASE_ZERO
    assert cs._CUSPARSE_OPERATION_NON_TRANSPOSE == cusparse.CUSPARSE_OPERATION_NON_TRANSPOSE


# ---- real GPU ------------------------------------------------------------------------------------------------------
def _weight(m: int, k: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=g)
    w[torch.rand(m, k, generator=g) >= density] = 0
    w[0] = 0
    return w.cuda()


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_gpu_matches_dense(name: str) -> None:
    kern = get(name)
    for (m, k, density), n in [((37, 70, 0.15), 1), ((37, 70, 0.15), 17), ((256, 300, 0.1), 128),
                               ((64, 48, 0.0), 4), ((33, 129, 1.0), 64)]:
        w = _weight(m, k, density, n)
        packed = kern.prepare(w)
        bias = torch.randn(m, device="cuda")
        for act in ("none", "relu", "gelu"):
            x = torch.randn(k, n, device="cuda")  # a new x each call: reused descriptors must follow the pointer
            ref = w.double() @ x.double() + bias.double()[:, None]
            ref = ref.relu() if act == "relu" else F.gelu(ref) if act == "gelu" else ref
            y = kern.matmul(packed, x, bias, act)
            torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_gpu_descriptors_reused_and_columns_split(monkeypatch: pytest.MonkeyPatch) -> None:
    kern = get("cusparse_csr_spmm")
    w = _weight(50, 40, 0.2, 0)
    packed = kern.prepare(w)
    for _ in range(3):
        kern.matmul(packed, torch.randn(40, 8, device="cuda"))
    assert list(packed.plans) == [8] and len(packed.plans[8]) == 1
    monkeypatch.setattr(cs, "column_chunks", lambda n, version: [(c, min(c + 3, n)) for c in range(0, n, 3)])
    x = torch.randn(40, 10, device="cuda")
    y = kern.matmul(packed, x)
    assert len(packed.plans[10]) == 4
    torch.testing.assert_close(y.double(), w.double() @ x.double(), rtol=1e-4, atol=1e-4)


# ---- the low-level path's control flow on the CPU, with cuSPARSE replaced by a NumPy model ------------------------
class FakeCusparse:
    """Just enough of cupy_backends' cusparse: descriptors are dicts, spMM computes C = A @ B from the raw pointers
    (so pointer offsets, leading dimensions and the row-major layout of column chunks are really checked)."""

    def __init__(self):
        self.descs: dict[int, dict] = {}
        self.calls: list[str] = []

    def _new(self, **d) -> int:
        h = len(self.descs) + 1
        self.descs[h] = d
        return h

    def getVersion(self, handle):  # noqa: N802 - mirrors the CuPy name
        return 12603  # CUDA 13.0's cuSPARSE: the dense-column bug is present

    def setStream(self, handle, stream):  # noqa: N802
        self.calls.append("setStream")

    def createCsr(self, m, k, nnz, rp, ci, v, it1, it2, base, dt):  # noqa: N802
        return self._new(kind="csr", m=m, k=k, nnz=nnz, rp=rp, ci=ci, v=v)

    def createDnMat(self, rows, cols, ld, ptr, dt, order):  # noqa: N802
        assert order == cs._CUSPARSE_ORDER_ROW and ld >= cols
        return self._new(kind="dn", rows=rows, cols=cols, ld=ld, ptr=ptr)

    def dnMatSetValues(self, h, ptr):  # noqa: N802
        self.descs[h]["ptr"] = ptr

    def spMM_bufferSize(self, handle, op_a, op_b, alpha, a, b, beta, c, dt, alg):  # noqa: N802
        self.calls.append("bufferSize")
        return 64

    def spMM(self, handle, op_a, op_b, alpha, a, b, beta, c, dt, alg, buf):  # noqa: N802
        import ctypes

        import numpy as np
        self.calls.append(f"spMM alg={alg}")
        A, B, C = self.descs[a], self.descs[b], self.descs[c]

        def arr(ptr, count, ctype, dtype):
            return np.ctypeslib.as_array((ctype * count).from_address(ptr)).view(dtype) if count else np.zeros(0, dtype)
        rp = arr(A["rp"], A["m"] + 1, ctypes.c_int32, np.int32)
        ci = arr(A["ci"], A["nnz"], ctypes.c_int32, np.int32)
        v = arr(A["v"], A["nnz"], ctypes.c_float, np.float32)

        def view(d, rows):
            span = (rows - 1) * d["ld"] + d["cols"]
            flat = arr(d["ptr"], span, ctypes.c_float, np.float32)
            return np.lib.stride_tricks.as_strided(flat, (rows, d["cols"]), (4 * d["ld"], 4))
        b_mat, c_mat = view(B, A["k"]), view(C, A["m"])
        for r in range(A["m"]):
            c_mat[r, :] = v[rp[r]:rp[r + 1]] @ b_mat[ci[rp[r]:rp[r + 1]], :]

    def destroyDnMat(self, h):  # noqa: N802
        pass

    def destroySpMat(self, h):  # noqa: N802
        pass


def test_low_level_plans_and_column_chunks_on_a_numpy_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    import types

    import cupy
    from cupy_backends.cuda import libs

    fake = FakeCusparse()
    preprocessed = []
    monkeypatch.setattr(libs, "cusparse", fake)
    monkeypatch.setitem(__import__("sys").modules, "cupy_backends.cuda.libs.cusparse", fake)
    monkeypatch.setattr(cupy.cuda, "Device", lambda i=None: contextlib.nullcontext())
    monkeypatch.setattr(cupy.cuda.device, "get_cusparse_handle", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda d=None: types.SimpleNamespace(cuda_stream=0))
    monkeypatch.setattr(cs, "_spmm_preprocess", lambda: lambda *a: preprocessed.append(a[-2]) or 0)
    monkeypatch.setattr(cs, "_check_weight", lambda owner, w: None)  # CPU tensors stand in for CUDA ones
    monkeypatch.setattr(cs, "_check_call", lambda *a: None)
    monkeypatch.setattr(cs, "SPMM_MAX_DENSE_COLS", 3)  # force the split below 1,048,560 columns

    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, 5, generator=g)
    w[torch.rand(7, 5, generator=g) < 0.6] = 0
    w[2] = 0
    kern = get("cusparse_csr_spmm")
    packed = kern.prepare(w)
    for _ in range(2):  # a fresh x each call: the reused descriptors must follow the pointers
        x = torch.randn(5, 8, generator=g)
        y = kern.matmul(packed, x, torch.ones(7), "relu")
        torch.testing.assert_close(y.double(), (w.double() @ x.double() + 1).relu(), rtol=1e-5, atol=1e-5)
    assert [(c.c0, c.c1) for c in packed.plans[8]] == [(0, 3), (3, 6), (6, 8)]
    assert len(preprocessed) == 3  # once per chunk, on the first call only
    assert fake.calls.count("bufferSize") == 3
    assert fake.calls.count(f"spMM alg={cs.SPMM_ALGS['csr_alg3']}") == 6
