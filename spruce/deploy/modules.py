"""Drop-in replacements for ``nn.Linear`` / ``nn.Conv2d`` that run a registered kernel on a packed weight.

The module keeps the kernel's packed weight (the dense weight is dropped, which is where the memory saving comes
from), the bias and the kernel instance; ``forward`` calls ``kernel.linear`` / ``kernel.conv2d``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spruce.kernels import get as get_kernel
from spruce.kernels.registry import Kernel


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class SparseLinear(nn.Module):
    """``y = act(x @ W^T + b)`` with ``W`` ``[out_features, in_features]`` held packed by ``kernel``.

    Accepts any leading batch dims (``[B, S, H]`` for BERT): ``x`` ``[..., in_features]`` -> ``[..., out_features]``.
    """

    def __init__(self, kernel: Kernel, packed: Any, in_features: int, out_features: int,
                 bias: torch.Tensor | None, activation: str = "none") -> None:
        super().__init__()
        self.kernel, self.packed = kernel, packed
        self.in_features, self.out_features = in_features, out_features
        self.activation = activation
        self.op_handle: int | None = None  # set by spruce.deploy.compiled.register_packed for torch.compile
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, layer: nn.Linear, kernel: Kernel | str, packed: Any = None,
                    activation: str = "none") -> "SparseLinear":
        """Pack ``layer.weight`` with ``kernel`` (or reuse ``packed``, prepared from the same weight)."""
        k = get_kernel(kernel) if isinstance(kernel, str) else kernel
        with torch.no_grad():
            p = k.prepare(layer.weight.detach()) if packed is None else packed
        return cls(k, p, layer.in_features, layer.out_features, layer.bias, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op_handle is not None and torch.compiler.is_compiling():  # a graph op (spruce.deploy.compiled)
            return torch.ops.spruce.sparse_linear(x, self.op_handle, self.bias, self.out_features)
        return self.kernel.linear(self.packed, x, self.bias, self.activation)

    def weight_bytes(self) -> int:
        """Bytes of the packed weight (values + indices + offsets; bias not counted)."""
        return int(self.kernel.weight_bytes(self.packed))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel.name}, "
                f"bias={self.bias is not None}, activation={self.activation}")


class SparseConv2d(nn.Module):
    """``nn.Conv2d`` (groups=1) whose im2col-flattened weight ``[C_out, C_in*kh*kw]`` is packed by ``kernel``.

    ``x`` ``[B, C_in, H, W]`` -> ``[B, C_out, H_out, W_out]``.
    """

    def __init__(self, kernel: Kernel, packed: Any, in_channels: int, out_channels: int,
                 kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                 dilation: tuple[int, int], bias: torch.Tensor | None, activation: str = "none") -> None:
        super().__init__()
        self.kernel, self.packed = kernel, packed
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.padding, self.dilation = padding, dilation
        self.activation = activation
        self.op_handle: int | None = None  # set by spruce.deploy.compiled.register_packed for torch.compile
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @staticmethod
    def unsupported_reason(layer: nn.Conv2d) -> str | None:
        """Why ``layer`` cannot be converted (None when it can): only groups=1, numeric zero padding."""
        if layer.groups != 1:
            return f"groups={layer.groups} not supported (only groups=1)"
        if isinstance(layer.padding, str):
            return f"padding={layer.padding!r} not supported (only numeric padding)"
        if layer.padding_mode != "zeros":
            return f"padding_mode={layer.padding_mode!r} not supported (only 'zeros')"
        return None

    @staticmethod
    def flat_weight(layer: nn.Conv2d) -> torch.Tensor:
        """``[C_out, C_in, kh, kw]`` -> ``[C_out, C_in*kh*kw]`` (the im2col layout the kernels take)."""
        return layer.weight.detach().reshape(layer.out_channels, -1).contiguous()

    @classmethod
    def from_conv(cls, layer: nn.Conv2d, kernel: Kernel | str, packed: Any = None,
                  activation: str = "none") -> "SparseConv2d":
        """Pack ``layer``'s flattened weight with ``kernel``; ValueError if the conv is not supported."""
        reason = cls.unsupported_reason(layer)
        if reason:
            raise ValueError(f"cannot convert Conv2d: {reason}")
        k = get_kernel(kernel) if isinstance(kernel, str) else kernel
        with torch.no_grad():
            p = k.prepare(cls.flat_weight(layer)) if packed is None else packed
        return cls(k, p, layer.in_channels, layer.out_channels, _pair(layer.kernel_size), _pair(layer.stride),
                   _pair(layer.padding), _pair(layer.dilation), layer.bias, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op_handle is not None and torch.compiler.is_compiling():  # a graph op (spruce.deploy.compiled)
            return torch.ops.spruce.sparse_conv2d(x, self.op_handle, self.bias, self.out_channels,
                                                  [*self.kernel_size, *self.stride, *self.padding, *self.dilation])
        return self.kernel.conv2d(self.packed, x, self.kernel_size, self.stride, self.padding, self.dilation,
                                  self.bias, self.activation)

    def weight_bytes(self) -> int:
        """Bytes of the packed weight (values + indices + offsets; bias not counted)."""
        return int(self.kernel.weight_bytes(self.packed))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, kernel={self.kernel.name}, bias={self.bias is not None}, "
                f"activation={self.activation}")


SPARSE_MODULES = (SparseLinear, SparseConv2d)
