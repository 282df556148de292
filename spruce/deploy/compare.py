"""Output comparison shared by planning (candidate vs dense) and verification (converted vs dense model)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from spruce.models.outputs import first_tensor  # noqa: F401 - re-exported: deploy modules use it from here

DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-4


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Full FP32 inside: TF32 off for cuBLAS matmuls and cuDNN convolutions, restored after. PyTorch lets cuDNN run
    FP32 convolutions in TF32 (a 10-bit mantissa) on Ampere and later by default, so a dense reference computed
    with the defaults is off by ~1e-3 of its scale, and every exact FP32 sparse kernel then "fails" against it (seen
    on an H200, 2026-12-04: all six CUDA kernels 3.7e-4 off on VGG-16's conv1_2). References are computed in here;
    timings keep the defaults (what a user's dense model runs). No effect on CPU."""
    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = [f.allow_tf32 for f in flags]
    for f in flags:
        f.allow_tf32 = False
    try:
        yield
    finally:
        for f, v in zip(flags, saved):
            f.allow_tf32 = v


def mismatch(y: torch.Tensor, ref: torch.Tensor, rtol: float = DEFAULT_RTOL,
             atol: float = DEFAULT_ATOL) -> str | None:
    """Why ``y`` differs from ``ref`` beyond tolerance, or None when it matches.

    Element-wise test ``|y - ref| <= atol * max|ref| + rtol * |ref|``: ``atol`` is scaled by the largest
    magnitude of the reference so one tolerance fits layers whose outputs are 1e-3 or 1e3 (fp32 sums taken in
    a different order differ by ~1e-6 of that scale).
    """
    if not isinstance(y, torch.Tensor):
        return f"output is a {type(y).__name__}, expected a tensor"
    if tuple(y.shape) != tuple(ref.shape):
        return f"output shape {tuple(y.shape)} != dense {tuple(ref.shape)}"
    y64, r64 = y.detach().double(), ref.detach().double()
    if not bool(torch.isfinite(y64).all()) and bool(torch.isfinite(r64).all()):
        return "output holds NaN/Inf where dense is finite"
    if r64.numel() == 0:
        return None
    scale = float(r64.abs().max())
    err = (y64 - r64).abs()
    bad = err > atol * scale + rtol * r64.abs()
    if bool(bad.any()):
        worst = float(err.max())
        return (f"max abs error {worst:.3g} exceeds tolerance (rtol={rtol:g}, atol={atol:g} x max|dense|="
                f"{scale:.3g}) at {int(bad.sum())} of {bad.numel()} elements")
    return None


def run_model(model: torch.nn.Module, inputs: object) -> object:
    """``model(**inputs)`` for a dict (BERT ``input_ids``/``attention_mask``), ``model(*inputs)`` for a tuple,
    else ``model(inputs)``."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def run_hooked(model: torch.nn.Module, inputs: object, handles: list) -> None:
    """One inference-mode forward of ``inputs`` with hooks already registered; their ``handles`` are removed
    afterwards, also when the forward raises."""
    try:
        with torch.inference_mode():
            run_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
