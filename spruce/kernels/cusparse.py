"""cuSPARSE through CuPy, registered under device ``cuda``; imports cleanly without a GPU or CuPy.

* ``cusparse_csr_highlevel``: ``cupyx.scipy.sparse.csr_matrix @ dense``. CuPy creates descriptors and workspace on
  every call and wants column-major operands (it copies ``x`` to Fortran order), so this is the convenience baseline.
* ``cusparse_csr_spmm`` (CSR_ALG3) and ``cusparse_csr_spmm_alg2``: the generic API directly
  (``cusparseCreateCsr`` / ``cusparseCreateDnMat`` row-major / ``SpMM_bufferSize`` / ``SpMM_preprocess`` / ``SpMM``),
  the sparse descriptor created in ``prepare``, dense descriptors + workspace created on the first call for each N
  and reused (only the data pointers are updated per call). ``SpMM_preprocess`` is not wrapped by CuPy, so it is
  called through ctypes on the libcusparse CuPy loaded.

cuSPARSE's SpMM fails for more than 1,048,560 dense columns (gridDim.y = ceil(N/16) > 65535, CuPy issue #9850)
before cuSPARSE 12.7.20 (CUDA 13.2): the low-level path then splits N into column chunks that view the same
row-major arrays through the leading dimension (no copy). Bias and activation run in torch after the SpMM (not
fused). All argument checks run before CuPy is imported, so they are tested without a GPU.
"""
from __future__ import annotations

import ctypes
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from spruce.kernels.registry import ACTIVATIONS, Kernel, apply_activation, register

SPMM_MAX_DENSE_COLS = 65535 * 16    # 1,048,560: cuSPARSE csrmm gridDim.y limit before the fix
CUSPARSE_FIXED_VERSION = 12720      # cuSPARSE 12.7.20 ships with CUDA 13.2
# cusparseSpMMAlg_t values (cusparse.h; CuPy does not export the CSR_ALG constants)
SPMM_ALGS = {"default": 0, "csr_alg1": 4, "csr_alg2": 6, "csr_alg3": 12}
_CUDA_R_32F = 0
_CUSPARSE_OPERATION_NON_TRANSPOSE = 0
_CUSPARSE_ORDER_ROW = 2
_CUSPARSE_INDEX_32I = 2
_CUSPARSE_INDEX_BASE_ZERO = 0


def cusparse_available() -> tuple[bool, str]:
    """``(True, "")`` when a CUDA GPU and CuPy's cuSPARSE are usable, else ``(False, reason)``."""
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False)"
    try:
        import cupy
        import cupyx.scipy.sparse  # noqa: F401
        from cupy_backends.cuda.libs import cusparse  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means unavailable, and we say why
        return False, f"CuPy/cuSPARSE not importable ({type(e).__name__}: {e}); install cupy-cuda13x"
    try:
        if not cupy.cuda.is_available():
            return False, "CuPy sees no CUDA device"
    except Exception as e:  # noqa: BLE001
        return False, f"CuPy cannot query the CUDA runtime ({type(e).__name__}: {e})"
    return True, ""


def column_chunks(n: int, version: int, limit: int | None = None) -> list[tuple[int, int]]:
    """Column ranges ``[(c0, c1), ...]`` covering ``0..n`` for one SpMM each: one range when cuSPARSE ``version``
    is fixed or ``n <= limit`` (default ``SPMM_MAX_DENSE_COLS``), else chunks of at most ``limit`` columns."""
    limit = SPMM_MAX_DENSE_COLS if limit is None else limit
    if n < 0 or limit < 1:
        raise ValueError(f"column_chunks: n={n} must be >= 0 and limit={limit} >= 1")
    if n <= limit or version >= CUSPARSE_FIXED_VERSION:
        return [(0, n)]
    return [(c0, min(c0 + limit, n)) for c0 in range(0, n, limit)]


# ---- shared validation (runs before any CuPy import) ------------------------------------------------------------
def _check_tensor(owner: str, what: str, t: Any, dim: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{owner}: {what} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cuda":
        raise ValueError(f"{owner}: {what} is on {t.device.type}, kernel runs on cuda")
    if t.dtype != torch.float32:
        raise ValueError(f"{owner}: {what} dtype {t.dtype} not supported; allowed: torch.float32")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{owner}: {what} must be {dim}-D, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{owner}: {what} must be contiguous (row-major), got strides {t.stride()}; "
                         f"call .contiguous() first")


def _check_weight(owner: str, weight: Any) -> None:
    _check_tensor(owner, "weight", weight, dim=2)
    m, k = weight.shape
    if m * k > 2**31 - 1:
        raise ValueError(f"{owner}: weight [{m}, {k}] has more than 2^31-1 elements (int32 CSR indices)")
    if weight.numel() and not bool(torch.isfinite(weight).all()):
        raise ValueError(f"{owner}: weight holds non-finite values (NaN/Inf); only finite weights are allowed")


def _check_call(owner: str, m: int, k: int, device: torch.device, x: Any, bias: Any, activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{owner}: unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
    _check_tensor(owner, "x", x, dim=2)
    if x.shape[0] != k:
        raise ValueError(f"{owner}: x has {x.shape[0]} rows but the weight has K={k} columns")
    if x.device != device:
        raise ValueError(f"{owner}: x is on {x.device}, the weight on {device}")
    if bias is not None:
        _check_tensor(owner, "bias", bias, dim=1)
        if bias.shape[0] != m:
            raise ValueError(f"{owner}: bias must be [M]=[{m}], got {tuple(bias.shape)}")
        if bias.device != device:
            raise ValueError(f"{owner}: bias is on {bias.device}, the weight on {device}")


def _epilogue(y: torch.Tensor, bias: torch.Tensor | None, activation: str) -> torch.Tensor:
    if bias is not None:
        y.add_(bias[:, None])
    return apply_activation(y, activation)


# ---- high level: cupyx.scipy.sparse ----------------------------------------------------------------------------
@dataclass
class HighLevelCsr:
    """``cupyx.scipy.sparse.csr_matrix`` of the weight plus its shape and device."""
    mat: Any
    m: int
    k: int
    device: torch.device


@register
class CusparseCsrHighLevel(Kernel):
    """``cupyx.scipy.sparse.csr_matrix @ x`` (cuSPARSE SpMM through CuPy's wrapper)."""

    name = "cusparse_csr_highlevel"
    format = "csr"
    device = "cuda"
    dtypes = (torch.float32,)
    description = "cuSPARSE via cupyx.scipy.sparse csr_matrix @ dense (descriptors per call, column-major copy)"

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return cusparse_available()

    def prepare(self, weight: torch.Tensor) -> HighLevelCsr:
        """Dense float32 ``[M, K]`` CUDA tensor -> ``HighLevelCsr`` (CuPy's dense -> CSR)."""
        _check_weight(self.name, weight)
        import cupy
        import cupyx.scipy.sparse as cps

        w = weight.detach()
        with cupy.cuda.Device(w.device.index), _torch_stream(w.device):
            mat = cps.csr_matrix(cupy.asarray(w))
            mat.sum_duplicates()  # canonical format, which CuPy's spmm requires
        return HighLevelCsr(mat, w.shape[0], w.shape[1], w.device)

    def matmul(self, packed: HighLevelCsr, x: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """``act(W @ x + bias[:, None])``: ``x`` ``[K, N]`` -> ``[M, N]``."""
        if not isinstance(packed, HighLevelCsr):
            raise ValueError(f"{self.name}: packed weight must come from prepare, got {type(packed).__name__}")
        _check_call(self.name, packed.m, packed.k, packed.device, x, bias, activation)
        if packed.m == 0 or x.shape[1] == 0 or packed.k == 0:
            return _epilogue(torch.zeros(packed.m, x.shape[1], device=x.device), bias, activation)
        import cupy

        with cupy.cuda.Device(x.device.index), _torch_stream(x.device):
            y = packed.mat @ cupy.asarray(x)
            out = torch.as_tensor(cupy.ascontiguousarray(y), device=x.device)
        return _epilogue(out, bias, activation)

    def weight_bytes(self, packed: HighLevelCsr) -> int:
        mat = packed.mat
        return int(mat.data.nbytes + mat.indices.nbytes + mat.indptr.nbytes)


# ---- low level: generic SpMM API with reused descriptors ---------------------------------------------------------
_preprocess_fn = None
_preprocess_lock = threading.Lock()


def _spmm_preprocess():
    """``cusparseSpMM_preprocess`` from the libcusparse CuPy loaded (CuPy has no wrapper for it)."""
    global _preprocess_fn
    with _preprocess_lock:
        if _preprocess_fn is None:
            path = None
            with open("/proc/self/maps") as f:
                for line in f:
                    if "libcusparse.so" in line:
                        path = line.split()[-1]
                        break
            lib = ctypes.CDLL(path or "libcusparse.so.12")
            fn = lib.cusparseSpMM_preprocess
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                           ctypes.c_void_p]
            _preprocess_fn = fn
        return _preprocess_fn


@dataclass
class _ChunkPlan:
    c0: int
    c1: int
    dn_b: int
    dn_c: int
    workspace: torch.Tensor


@dataclass
class LowLevelCsr:
    """CSR arrays (int32, on the GPU), the cuSPARSE sparse descriptor, and per-N dense descriptors + workspace."""
    m: int
    k: int
    nnz: int
    values: torch.Tensor
    col_idx: torch.Tensor
    row_ptr: torch.Tensor
    device: torch.device
    alg: int
    sp_desc: int = 0
    version: int = 0
    plans: dict[int, list[_ChunkPlan]] = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.col_idx, self.row_ptr))


def _destroy(sp_desc: int, plans: dict[int, list[_ChunkPlan]]) -> None:
    try:
        from cupy_backends.cuda.libs import cusparse
        for chunks in plans.values():
            for c in chunks:
                cusparse.destroyDnMat(c.dn_b)
                cusparse.destroyDnMat(c.dn_c)
        if sp_desc:
            cusparse.destroySpMat(sp_desc)
    except Exception:  # noqa: BLE001 - interpreter shutdown: the driver frees everything anyway
        pass


class _torch_stream:
    """Context: make CuPy (and cuSPARSE through CuPy) use PyTorch's current stream on ``device``."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        import cupy
        self.stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(self.device).cuda_stream)
        self.stream.__enter__()
        return self.stream

    def __exit__(self, *exc):
        return self.stream.__exit__(*exc)


class _CusparseSpmmBase(Kernel):
    format = "csr"
    device = "cuda"
    dtypes = (torch.float32,)
    alg_name: ClassVar[str] = "csr_alg3"

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return cusparse_available()

    def prepare(self, weight: torch.Tensor) -> LowLevelCsr:
        """Dense float32 ``[M, K]`` CUDA tensor -> ``LowLevelCsr`` with its cusparseSpMatDescr (int32 indices)."""
        _check_weight(self.name, weight)
        from cupy_backends.cuda.libs import cusparse
        import cupy

        w = weight.detach()
        with warnings.catch_warnings():  # "sparse CSR support is in beta": not actionable here
            warnings.simplefilter("ignore", UserWarning)
            sp = w.to_sparse_csr()
        values = sp.values().contiguous()
        col_idx = sp.col_indices().to(torch.int32).contiguous()
        row_ptr = sp.crow_indices().to(torch.int32).contiguous()
        m, k = w.shape
        packed = LowLevelCsr(m, k, values.numel(), values, col_idx, row_ptr, w.device, SPMM_ALGS[self.alg_name])
        with cupy.cuda.Device(w.device.index):
            handle = cupy.cuda.device.get_cusparse_handle()
            packed.version = int(cusparse.getVersion(handle))
            packed.sp_desc = cusparse.createCsr(m, k, packed.nnz, row_ptr.data_ptr(), col_idx.data_ptr(),
                                                values.data_ptr(), _CUSPARSE_INDEX_32I, _CUSPARSE_INDEX_32I,
                                                _CUSPARSE_INDEX_BASE_ZERO, _CUDA_R_32F)
        weakref.finalize(packed, _destroy, packed.sp_desc, packed.plans)
        return packed

    def matmul(self, packed: LowLevelCsr, x: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """``act(W @ x + bias[:, None])``: ``x`` ``[K, N]`` row-major -> ``[M, N]`` row-major."""
        if not isinstance(packed, LowLevelCsr):
            raise ValueError(f"{self.name}: packed weight must come from prepare, got {type(packed).__name__}")
        _check_call(self.name, packed.m, packed.k, packed.device, x, bias, activation)
        n = x.shape[1]
        y = torch.empty(packed.m, n, dtype=torch.float32, device=x.device)
        if packed.m == 0 or n == 0 or packed.k == 0 or packed.nnz == 0:
            return _epilogue(y.zero_(), bias, activation)
        import numpy as np
        import cupy
        from cupy_backends.cuda.libs import cusparse

        alpha = np.ones(1, np.float32)
        beta = np.zeros(1, np.float32)
        op = _CUSPARSE_OPERATION_NON_TRANSPOSE
        with cupy.cuda.Device(x.device.index):
            handle = cupy.cuda.device.get_cusparse_handle()
            cusparse.setStream(handle, torch.cuda.current_stream(x.device).cuda_stream)
            chunks = packed.plans.get(n)
            first = chunks is None
            if first:
                chunks = []
                for c0, c1 in column_chunks(n, packed.version):
                    # Row-major [K, c1-c0] / [M, c1-c0] views with leading dimension n: chunks need no copy.
                    dn_b = cusparse.createDnMat(packed.k, c1 - c0, n, x.data_ptr() + 4 * c0, _CUDA_R_32F,
                                                _CUSPARSE_ORDER_ROW)
                    dn_c = cusparse.createDnMat(packed.m, c1 - c0, n, y.data_ptr() + 4 * c0, _CUDA_R_32F,
                                                _CUSPARSE_ORDER_ROW)
                    size = cusparse.spMM_bufferSize(handle, op, op, alpha.ctypes.data, packed.sp_desc, dn_b,
                                                    beta.ctypes.data, dn_c, _CUDA_R_32F, packed.alg)
                    ws = torch.empty(max(int(size), 1), dtype=torch.uint8, device=x.device)
                    chunks.append(_ChunkPlan(c0, c1, dn_b, dn_c, ws))
                packed.plans[n] = chunks
            for c in chunks:
                cusparse.dnMatSetValues(c.dn_b, x.data_ptr() + 4 * c.c0)
                cusparse.dnMatSetValues(c.dn_c, y.data_ptr() + 4 * c.c0)
                if first:
                    rc = _spmm_preprocess()(handle, op, op, alpha.ctypes.data, packed.sp_desc, c.dn_b,
                                            beta.ctypes.data, c.dn_c, _CUDA_R_32F, packed.alg, c.workspace.data_ptr())
                    if rc != 0:
                        raise RuntimeError(f"{self.name}: cusparseSpMM_preprocess failed with status {rc}")
                cusparse.spMM(handle, op, op, alpha.ctypes.data, packed.sp_desc, c.dn_b, beta.ctypes.data, c.dn_c,
                              _CUDA_R_32F, packed.alg, c.workspace.data_ptr())
        return _epilogue(y, bias, activation)

    def weight_bytes(self, packed: LowLevelCsr) -> int:
        return packed.nbytes()


@register
class CusparseCsrSpmm(_CusparseSpmmBase):
    """cuSPARSE generic SpMM, CSR_ALG3 + preprocess, row-major operands, descriptors reused per N."""
    name = "cusparse_csr_spmm"
    alg_name = "csr_alg3"
    description = "cuSPARSE generic SpMM (CSR_ALG3, preprocess), row-major, descriptors/workspace reused per N"


@register
class CusparseCsrSpmmAlg2(_CusparseSpmmBase):
    """cuSPARSE generic SpMM, CSR_ALG2 (deterministic, row-major), descriptors reused per N."""
    name = "cusparse_csr_spmm_alg2"
    alg_name = "csr_alg2"
    description = "cuSPARSE generic SpMM (CSR_ALG2), row-major, descriptors/workspace reused per N"
