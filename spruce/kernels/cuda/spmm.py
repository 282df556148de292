"""Launchers of the CSR SpMM kernels (``src/csr_spmm.cu``): validation, variant choice, launch geometry.

``matmul``: ``Y = act(W @ X + bias[:, None])``, ``x`` ``[K, N]`` row-major -> ``[M, N]``.
``linear``: ``y = act(x @ W^T + bias)``, ``x`` ``[..., K]`` -> ``[..., M]``.
Both validate everything (dtype, device, shapes, contiguity, int32 ranges) before any launch, with ValueError.
"""
from __future__ import annotations

import torch

from spruce.kernels.cuda.csr import CudaCsr
from spruce.kernels.cuda.launch import ACT_CODES, INT32_MAX, Backend, Launch, i32, ptr
from spruce.kernels.cuda.validate import check_same_device, check_tensor

VARIANTS = ("auto", "subwarp", "rowtile")
SMALL_N_MAX = 16        # auto: N <= this -> subwarp kernel (several threads per row), else row tile
LINEAR_MAX_B = 16       # auto: linear form natively (no transposes) for batch <= this
SUBWARP_BLOCK = 128


def subwarp_width(csr: CudaCsr) -> int:
    """Lanes per row for the subwarp kernel: wider for longer rows (mean non-zeros per row)."""
    mean = csr.nnz / max(csr.m, 1)
    return 32 if mean >= 64 else 16 if mean >= 32 else 8 if mean >= 12 else 4


def _vec4_ok(n: int, *tensors: torch.Tensor) -> bool:
    return n % 4 == 0 and all(t.data_ptr() % 16 == 0 for t in tensors)


def spmm_launch(csr: CudaCsr, x: torch.Tensor, bias: torch.Tensor | None, act: int, y: torch.Tensor,
                variant: str) -> Launch:
    """The launch computing ``y = act(W @ x + bias)`` for validated arguments with m, n >= 1."""
    m, n = csr.m, x.shape[1]
    vec4 = _vec4_ok(n, x, y)
    chosen = variant if variant != "auto" else ("subwarp" if n <= SMALL_N_MAX else "rowtile")
    common = (ptr(csr.row_perm), ptr(csr.row_ptr), ptr(csr.col_idx), ptr(csr.values), ptr(x), ptr(bias), i32(act),
              ptr(y))
    if chosen == "subwarp":
        sw = subwarp_width(csr)
        grid_y = -(-n // 4)
        if grid_y > 65535:
            raise ValueError(f"cuda csr spmm: n={n} too large for the subwarp variant (n <= 262140); use rowtile")
        name = f"csr_spmm_subwarp<{sw},{'true' if vec4 else 'false'}>"
        return Launch("csr_spmm.cu", name, (-(-m // (SUBWARP_BLOCK // sw)), grid_y, 1), (SUBWARP_BLOCK, 1, 1), 0,
                      (i32(m), i32(n), i32(csr.k), *common))
    vec = 4 if vec4 else 1
    cols = -(-n // vec)  # threads needed along N
    threads = 32 if cols <= 32 else 64 if cols <= 64 else 128
    grid_y = -(-n // (threads * vec))
    if grid_y > 65535:
        raise ValueError(f"cuda csr spmm: n={n} too large (gridDim.y {grid_y} > 65535)")
    # One row per block gives the most blocks (occupancy, tail balance); group rows only when blocks abound.
    rows_per_block = 1 if m * grid_y <= 65536 else 4
    return Launch("csr_spmm.cu", f"csr_spmm_rowtile<{vec}>", (-(-m // rows_per_block), grid_y, 1), (threads, 1, 1),
                  threads * 8, (i32(m), i32(n), i32(rows_per_block), *common))


def _check_common(owner: str, csr: object, bias: torch.Tensor | None, activation: str, device_type: str,
                  variant: str) -> None:
    if not isinstance(csr, CudaCsr):
        raise ValueError(f"{owner}: packed weight must be a CudaCsr (from prepare), got {type(csr).__name__}")
    if activation not in ACT_CODES:
        raise ValueError(f"{owner}: unknown activation {activation!r}; allowed: {', '.join(ACT_CODES)}")
    if variant not in VARIANTS:
        raise ValueError(f"{owner}: unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    csr.check(owner, device_type)
    if bias is not None:
        check_tensor(owner, "bias", bias, device_type, torch.float32, shape=(csr.m,))


def matmul(csr: CudaCsr, x: torch.Tensor, backend: Backend, bias: torch.Tensor | None = None,
           activation: str = "none", variant: str = "auto", owner: str = "cuda_csr_spmm") -> torch.Tensor:
    """``act(W @ x + bias[:, None])``: ``x`` float32 ``[K, N]`` contiguous on the backend's device -> ``[M, N]``."""
    _check_common(owner, csr, bias, activation, backend.device_type, variant)
    check_tensor(owner, "x", x, backend.device_type, torch.float32, dim=2)
    if x.shape[0] != csr.k:
        raise ValueError(f"{owner}: x has {x.shape[0]} rows but the weight has K={csr.k} columns")
    check_same_device(owner, x=x, weight=csr.row_ptr, bias=bias)
    n = x.shape[1]
    y = torch.empty((csr.m, n), dtype=torch.float32, device=x.device)
    if csr.m == 0 or n == 0:
        return y
    backend.run(spmm_launch(csr, x, bias, ACT_CODES[activation], y, variant))
    return y


def linear(csr: CudaCsr, x: torch.Tensor, backend: Backend, bias: torch.Tensor | None = None,
           activation: str = "none", variant: str = "auto", owner: str = "cuda_csr_spmm") -> torch.Tensor:
    """``act(x @ W^T + bias)``: ``x`` float32 ``[..., K]`` contiguous -> ``[..., M]``.

    Small batches (B = prod(leading dims) <= 16, or variant "subwarp") use the native linear kernel, which reads
    ``x`` and writes ``y`` in their nn.Linear layout; larger ones transpose into ``matmul``.
    """
    _check_common(owner, csr, bias, activation, backend.device_type, variant)
    check_tensor(owner, "x", x, backend.device_type, torch.float32)
    if x.dim() < 1 or x.shape[-1] != csr.k:
        raise ValueError(f"{owner}: x must be [..., K] with K={csr.k}, got shape {tuple(x.shape)}")
    check_same_device(owner, x=x, weight=csr.row_ptr, bias=bias)
    lead = tuple(x.shape[:-1])
    b = 1
    for s in lead:
        b *= s
    if b > INT32_MAX:
        raise ValueError(f"{owner}: batch {b} exceeds the int32 range")
    x2 = x.reshape(b, csr.k)
    if variant == "subwarp" or (variant == "auto" and b <= LINEAR_MAX_B):
        y = torch.empty((b, csr.m), dtype=torch.float32, device=x.device)
        if b and csr.m:
            sw = subwarp_width(csr)
            grid_y = -(-b // 4)
            if grid_y > 65535:
                raise ValueError(f"{owner}: batch {b} too large for the subwarp linear kernel (<= 262140)")
            backend.run(Launch("csr_spmm.cu", f"csr_linear_subwarp<{sw}>",
                               (-(-csr.m // (SUBWARP_BLOCK // sw)), grid_y, 1), (SUBWARP_BLOCK, 1, 1), 0,
                               (i32(csr.m), i32(b), i32(csr.k), ptr(csr.row_perm), ptr(csr.row_ptr),
                                ptr(csr.col_idx), ptr(csr.values), ptr(x2), ptr(bias),
                                i32(ACT_CODES[activation]), ptr(y))))
        return y.reshape(*lead, csr.m)
    y = matmul(csr, x2.t().contiguous(), backend, bias, activation, variant, owner)  # [M, B]
    return y.t().reshape(*lead, csr.m)
