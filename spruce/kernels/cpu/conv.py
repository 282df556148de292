"""Convolution helpers shared by the spruce_cpu kernels: output size and batched im2col + one SpMM."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def conv_out_size(h: int, w: int, kernel_size: tuple[int, int], stride: tuple[int, int],
                  padding: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """``(H_out, W_out)`` of a convolution, as ``F.conv2d`` computes it."""
    kh, kw = kernel_size
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return ho, wo


def check_conv_args(name: str, x: torch.Tensor, k: int, kernel_size, stride, padding, dilation) -> tuple[int, int]:
    """Validate a conv2d call against a packed ``[C_out, K]`` weight; return ``(H_out, W_out)``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: conv2d input must be [B, C_in, H, W], got {shape}")
    for label, pair, low in (("kernel_size", kernel_size, 1), ("stride", stride, 1), ("padding", padding, 0),
                             ("dilation", dilation, 1)):
        if len(pair) != 2 or any(int(v) < low for v in pair):
            raise ValueError(f"{name}: {label} must be two integers >= {low}, got {tuple(pair)}")
    kh, kw = kernel_size
    if x.shape[1] * kh * kw != k:
        raise ValueError(f"{name}: weight has K={k} columns but C_in*kh*kw = {x.shape[1]}*{kh}*{kw}")
    ho, wo = conv_out_size(x.shape[2], x.shape[3], kernel_size, stride, padding, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(f"{name}: input {tuple(x.shape)} is smaller than the dilated kernel; output {ho}x{wo}")
    return ho, wo


def im2col_conv2d(matmul: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, m: int,
                  kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                  dilation: tuple[int, int], ho: int, wo: int) -> torch.Tensor:
    """Unfold the whole batch into one ``[C_in*kh*kw, B*L]`` matrix and run one SpMM (``matmul(X) -> [M, B*L]``).

    Returns ``[B, C_out, H_out, W_out]``. One large N keeps every thread busy and the sparse weight is read once.
    """
    b = x.shape[0]
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)  # [B, CK, L]
    if b == 1:
        return matmul(cols[0]).reshape(1, m, ho, wo)
    xx = cols.permute(1, 0, 2).reshape(cols.shape[1], -1)  # [CK, B*L], one copy
    y = matmul(xx)  # [M, B*L]
    return y.reshape(m, b, ho * wo).permute(1, 0, 2).reshape(b, m, ho, wo)
