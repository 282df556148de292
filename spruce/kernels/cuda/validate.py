"""Argument checks for the CUDA launchers: run before anything touches a GPU or CuPy, so they work (and are
tested) on machines without one. Every failure is a ValueError naming the bad value and what is allowed."""
from __future__ import annotations

import torch

from spruce.kernels.cuda.launch import INT32_MAX


def check_tensor(owner: str, what: str, t: object, device_type: str, dtype: torch.dtype | None = torch.float32,
                 dim: int | None = None, shape: tuple[int, ...] | None = None, contiguous: bool = True) -> None:
    """Raise ValueError unless ``t`` is a tensor on ``device_type`` with the given dtype / rank / shape / layout."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{owner}: {what} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != device_type:
        raise ValueError(f"{owner}: {what} is on {t.device.type}, kernel runs on {device_type}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{owner}: {what} dtype {t.dtype} not supported; allowed: {dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{owner}: {what} must be {dim}-D, got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{owner}: {what} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{owner}: {what} must be contiguous (row-major), got strides {t.stride()}; "
                         f"call .contiguous() first")
    for s in t.shape:
        if s > INT32_MAX:
            raise ValueError(f"{owner}: {what} dimension {s} exceeds the int32 index range")


def check_same_device(owner: str, **tensors: torch.Tensor | None) -> None:
    """Raise ValueError unless all given tensors sit on one device (e.g. cuda:0, not cuda:0 and cuda:1)."""
    devs = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devs.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devs.items())
        raise ValueError(f"{owner}: tensors on different devices ({listing}); all must be on one device")


def check_finite(owner: str, what: str, t: torch.Tensor) -> None:
    """Raise ValueError if ``t`` holds NaN or Inf."""
    if t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{owner}: {what} holds {bad} non-finite value(s) (NaN/Inf); only finite values allowed")
