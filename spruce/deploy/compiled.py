"""``torch.compile`` (inductor, CPU) of a converted model, with the sparse kernels as ``torch.library`` custom ops.

A kernel's packed weight is an arbitrary Python object (a ``CpuPacked``, a torch sparse tensor, a SciPy matrix),
which a graph cannot hold; each Sparse module therefore registers ``(kernel, packed)`` under an integer handle, and
its forward, while dynamo traces it, calls ``spruce::sparse_linear`` / ``spruce::sparse_conv2d`` with that handle
(a constant of the graph). Their fake implementations give the output shape only, so the graph does not break
around a sparse layer and inductor fuses the dense remainder (LayerNorm + residual add, softmax pieces, pools)
between kernel calls. In eager mode the modules call the kernel directly (no dispatcher on the hot path).

:func:`compile_model` compiles, runs the example once (the compile time, reported apart like conversion), checks
the compiled output against eager, and with ``mode="auto"`` keeps the compiled model only when it is faster. Any
failure falls back to the eager model with one line on stderr.
"""
from __future__ import annotations

import itertools
import sys
import time
import weakref
from typing import Any

import torch
from torch import nn

from spruce.deploy.compare import DEFAULT_ATOL, DEFAULT_RTOL, first_tensor, mismatch, run_model
from spruce.perf.timing import median, time_ms

COMPILE_MODES = ("off", "on", "auto")
#: compile=auto keeps the compiled model only when its median is at least this much below eager's
COMPILE_MARGIN = 0.03

_PACKED: dict[int, tuple[Any, Any, str]] = {}  # handle -> (kernel, packed, activation)
_NEXT = itertools.count(1)


def register_packed(module: nn.Module) -> int:
    """Give a Sparse module a handle the custom ops resolve to its ``(kernel, packed, activation)``; dropped
    when the module is garbage-collected."""
    h = next(_NEXT)
    _PACKED[h] = (module.kernel, module.packed, module.activation)
    weakref.finalize(module, _PACKED.pop, h, None)
    module.op_handle = h
    return h


def _lookup(handle: int) -> tuple[Any, Any, str]:
    try:
        return _PACKED[handle]
    except KeyError:
        raise ValueError(f"sparse op handle {handle} is not registered (its module was freed?)") from None


@torch.library.custom_op("spruce::sparse_linear", mutates_args=())
def sparse_linear(x: torch.Tensor, handle: int, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """``act(x @ W^T + b)`` through the registered kernel: ``x`` ``[..., K]`` -> ``[..., out_features]``."""
    kernel, packed, act = _lookup(handle)
    return kernel.linear(packed, x, bias, act).contiguous()


@sparse_linear.register_fake
def _sparse_linear_fake(x: torch.Tensor, handle: int, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.custom_op("spruce::sparse_conv2d", mutates_args=())
def sparse_conv2d(x: torch.Tensor, handle: int, bias: torch.Tensor | None, out_channels: int,
                  geometry: list[int]) -> torch.Tensor:
    """Convolution through the registered kernel; ``geometry`` = kh, kw, stride h/w, padding h/w, dilation h/w."""
    kernel, packed, act = _lookup(handle)
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    return kernel.conv2d(packed, x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), bias, act).contiguous()


@sparse_conv2d.register_fake
def _sparse_conv2d_fake(x: torch.Tensor, handle: int, bias: torch.Tensor | None, out_channels: int,
                        geometry: list[int]) -> torch.Tensor:
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    ho = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return x.new_empty((x.shape[0], out_channels, ho, wo))


def _note(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr)


def compile_model(model: nn.Module, inputs: object, mode: str = "auto", repeats: int = 5,
                  rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                  device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """``(model to run, info)``: the model compiled with inductor, or ``model`` itself.

    ``mode``: ``"off"`` (return ``model``), ``"on"`` (compiled whenever compilation works), ``"auto"`` (compiled
    only when its median over ``repeats`` runs beats eager's by :data:`COMPILE_MARGIN`). The compiled output is
    checked against eager (``rtol``/``atol``) before it is used. ``info``: ``compile`` (the mode), ``compiled``
    (bool), ``compile_s`` (first call, i.e. tracing + code generation), ``eager_ms`` / ``compiled_ms`` (auto),
    ``compile_error`` (why it fell back). On any failure it falls back to eager, said once on stderr."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile={mode!r} is not allowed; allowed: {', '.join(COMPILE_MODES)}")
    info: dict[str, Any] = {"compile": mode, "compiled": False, "compile_s": 0.0}
    if mode == "off":
        return model, info
    from spruce.deploy.modules import SPARSE_MODULES
    for m in model.modules():
        if isinstance(m, SPARSE_MODULES):
            register_packed(m)
    try:
        compiled = torch.compile(model, backend="inductor", dynamic=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            y = first_tensor(run_model(compiled, inputs))
        info["compile_s"] = time.perf_counter() - t0
        with torch.inference_mode():
            ref = first_tensor(run_model(model, inputs))
        why = mismatch(y, ref, rtol, atol)
        if why:
            raise ValueError(f"compiled output differs from eager: {why}")
    except Exception as e:  # no compiler, an op inductor cannot lower, a wrong graph: eager still works
        msg = (str(e).strip().splitlines() or [""])[0][:300]
        info["compile_error"] = f"{type(e).__name__}: {msg}"
        _note(f"torch.compile failed ({info['compile_error']}); running eager")
        return model, info
    if mode == "auto":
        run_e = median(time_ms(lambda: run_model(model, inputs), repeats=repeats, warmup=1, device=device))
        run_c = median(time_ms(lambda: run_model(compiled, inputs), repeats=repeats, warmup=1, device=device))
        info.update(eager_ms=run_e, compiled_ms=run_c)
        if run_c * (1.0 + COMPILE_MARGIN) > run_e:
            _note(f"compiled model {run_c:.1f} ms is not faster than eager {run_e:.1f} ms; running eager")
            return model, info
    info["compiled"] = True
    return compiled, info
