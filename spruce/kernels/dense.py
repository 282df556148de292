"""``torch_dense``: the dense baseline every sparse kernel is measured against (MKL/oneDNN through torch).

Also holds the small validation helpers the CPU baselines share (finite weights, bias dtype).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from spruce.kernels.registry import Kernel, apply_activation, register


def check_finite_weight(kernel: Kernel, weight: torch.Tensor) -> None:
    """Raise ValueError if ``weight`` holds NaN or Inf (a pruned weight never should; a packed one would hide it)."""
    if weight.numel() and not bool(torch.isfinite(weight).all()):
        bad = int((~torch.isfinite(weight)).sum())
        raise ValueError(f"{kernel.name}: weight holds {bad} non-finite value(s) (NaN/Inf); only finite weights "
                         f"are allowed")


def check_bias_dtype(kernel: Kernel, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
    """Raise ValueError unless ``bias`` is None or has the input's dtype."""
    if bias is not None and bias.dtype != dtype:
        raise ValueError(f"{kernel.name}: bias dtype {bias.dtype} must match the input dtype {dtype}")


def check_prepare(kernel: Kernel, weight: torch.Tensor) -> None:
    """The checks every CPU baseline's ``prepare`` makes: 2-D, accepted dtype/device, finite values."""
    kernel.check_weight(weight)
    check_finite_weight(kernel, weight)


def check_packed(kernel: Kernel, packed: object, ok: bool, expected: str) -> None:
    """ValueError unless ``packed`` is what ``kernel.prepare`` returns (``ok``): another kernel's packed weight or
    ``None`` would otherwise fail deep inside with an AttributeError/TypeError/RuntimeError."""
    if not ok:
        got = type(packed).__name__ + (f" ({packed.layout})" if isinstance(packed, torch.Tensor) else "")
        raise ValueError(f"{kernel.name}: packed must be what {kernel.name}.prepare returns ({expected}), got {got}")


def is_tensor_of(packed: object, layout: torch.layout) -> bool:
    """``packed`` is a 2-D tensor of ``layout`` (``torch.strided``, ``torch.sparse_csr``, ``torch.sparse_coo``)."""
    return isinstance(packed, torch.Tensor) and packed.layout == layout and packed.dim() == 2


def check_matmul_call(kernel: Kernel, x: torch.Tensor, m: int, k: int, bias: torch.Tensor | None,
                      activation: str, weight_dtype: object) -> None:
    """The checks every CPU baseline's ``matmul`` makes: ``x`` ``[K, N]``, ``bias`` ``[M]`` of ``x``'s dtype, and
    ``x`` of the weight's dtype (``weight_dtype`` as the packed weight reports it: a torch or numpy dtype)."""
    kernel.check_input(x, k, bias, m, activation)
    check_bias_dtype(kernel, bias, x.dtype)
    if weight_dtype != x.dtype and str(weight_dtype) != str(x.dtype).removeprefix("torch."):
        raise ValueError(f"{kernel.name}: x dtype {x.dtype} differs from the weight dtype {weight_dtype}")


def check_linear_input(kernel: Kernel, x: torch.Tensor, k: int) -> None:
    """Raise ValueError unless ``x`` is ``[..., K]`` with at least one dimension."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{kernel.name}: x must be [..., K] with K={k}, got {shape}")
    if x.shape[-1] != k:
        raise ValueError(f"{kernel.name}: x has last dimension {x.shape[-1]} but the weight has K={k} columns")


@register
class TorchDense(Kernel):
    """Dense ``W @ X`` with ``torch.addmm`` (bias fused into the GEMM) and ``F.linear``."""

    name = "torch_dense"
    format = "dense"
    device = "cpu"
    dtypes = (torch.float32, torch.float64)
    description = "dense torch.mm / F.linear (MKL/oneDNN), the baseline"

    def prepare(self, weight: torch.Tensor) -> torch.Tensor:
        """A contiguous copy of ``weight`` ``[M, K]``."""
        check_prepare(self, weight)
        return weight.detach().contiguous().clone()

    def matmul(self, packed: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """``act(W @ X + bias[:, None])``: ``x`` ``[K, N]`` -> ``[M, N]``."""
        check_packed(self, packed, is_tensor_of(packed, torch.strided), "a dense 2-D tensor")
        m, k = packed.shape
        check_matmul_call(self, x, m, k, bias, activation, packed.dtype)
        y = torch.addmm(bias[:, None], packed, x) if bias is not None else torch.mm(packed, x)
        return apply_activation(y, activation)

    def linear(self, packed: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """``act(x @ W^T + b)``: ``x`` ``[..., K]`` -> ``[..., M]``."""
        check_packed(self, packed, is_tensor_of(packed, torch.strided), "a dense 2-D tensor")
        m, k = packed.shape
        check_linear_input(self, x, k)
        self.check_input(x.reshape(-1, k).t(), k, bias, m, activation)
        check_bias_dtype(self, bias, x.dtype)
        return apply_activation(F.linear(x, packed, bias), activation)

    def conv2d(self, packed: torch.Tensor, x: torch.Tensor, kernel_size: tuple[int, int],
               stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
               dilation: tuple[int, int] = (1, 1), bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """``F.conv2d`` with the flattened weight reshaped back to ``[C_out, C_in, kh, kw]``."""
        if x.dim() != 4:
            raise ValueError(f"{self.name}: conv2d input must be [B, C_in, H, W], got {tuple(x.shape)}")
        kh, kw = kernel_size
        m, k = packed.shape
        if k != x.shape[1] * kh * kw:
            raise ValueError(f"{self.name}: weight has K={k} columns but C_in*kh*kw = {x.shape[1] * kh * kw}")
        w4 = packed.reshape(m, x.shape[1], kh, kw)
        y = F.conv2d(x, w4, bias, stride=stride, padding=padding, dilation=dilation)
        return apply_activation(y, activation)

    def weight_bytes(self, packed: torch.Tensor) -> int:
        return packed.numel() * packed.element_size()
