"""Apply a plan to a model (``convert_``), check it against the dense model (``verify``), time it (``measure``)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spruce.deploy.compare import DEFAULT_ATOL, DEFAULT_RTOL, exact_fp32, first_tensor, mismatch, run_model
from spruce.deploy.fusion import apply_fusion
from spruce.deploy.memory import peak_bytes, reset_peak
from spruce.deploy.modules import SparseConv2d, SparseLinear
from spruce.deploy.plan import DENSE, Plan
from spruce.perf.timing import median, p90, time_ms
from spruce.kernels import get as get_kernel
from spruce.kernels.registry import apply_activation

SPARSE_MODULES = (SparseLinear, SparseConv2d)


class VerificationError(ValueError):
    """The converted model's output differs from the dense model's beyond tolerance; names the first layer."""

    def __init__(self, layer: str, reason: str) -> None:
        super().__init__(f"verification failed at layer {layer!r}: {reason}")
        self.layer, self.reason = layer, reason


def _set_module(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def convert_(model: nn.Module, plan: Plan, device: str | None = None,
             originals: dict[str, nn.Module] | None = None) -> dict[str, float]:
    """Swap every planned layer whose kernel is not ``"dense"`` for a Sparse module, in place.

    A layer whose entry records a ``fusion`` gets the activation as its kernel's epilogue, and the activation
    module (``fusion["module"]``) becomes ``nn.Identity``. Returns ``{fqn: conversion ms}`` (the ``prepare`` time
    of each swapped layer). ValueError when the plan names a layer that is missing or of another kind, an unknown
    kernel, a kernel unavailable here, or a fused activation the model does not have. ``originals``: when given, it
    receives every replaced module ``{fqn: original}`` (layers and fused activations), for :func:`swap_modules`.
    """
    import time
    mods = dict(model.named_modules())
    times: dict[str, float] = {}
    for fqn, entry in plan.layers.items():
        name = entry["kernel"]
        if name == DENSE:
            continue
        if fqn not in mods:
            raise ValueError(f"plan layer {fqn!r} is not in the model (was the plan made for another model?)")
        layer = mods[fqn]
        kernel = get_kernel(name)
        ok, why = kernel.is_available()
        if not ok:
            raise ValueError(f"plan layer {fqn!r}: kernel {name!r} is unavailable here: {why}")
        if device is not None and kernel.device != device:
            raise ValueError(f"plan layer {fqn!r}: kernel {name!r} runs on {kernel.device}, not {device}")
        shape = entry.get("shape")
        fusion = entry.get("fusion")
        activation = fusion["activation"] if fusion else "none"
        t0 = time.perf_counter()
        if isinstance(layer, nn.Linear):
            if shape and list(shape) != [layer.out_features, layer.in_features]:
                raise ValueError(f"plan layer {fqn!r} has shape {shape}, model has "
                                 f"{[layer.out_features, layer.in_features]}")
            new: nn.Module = SparseLinear.from_linear(layer, kernel, activation=activation)
        elif isinstance(layer, nn.Conv2d):
            if shape and list(shape) != [layer.out_channels, layer.weight[0].numel()]:
                raise ValueError(f"plan layer {fqn!r} has shape {shape}, model has "
                                 f"{[layer.out_channels, layer.weight[0].numel()]}")
            new = SparseConv2d.from_conv(layer, kernel, activation=activation)
        else:
            raise ValueError(f"plan layer {fqn!r} is a {type(layer).__name__}; only Linear and Conv2d convert")
        times[fqn] = (time.perf_counter() - t0) * 1e3
        if originals is not None:
            originals[fqn] = layer
            if fusion:
                originals[fusion["module"]] = model.get_submodule(fusion["module"])
        if fusion:
            apply_fusion(model, fqn, fusion)
        _set_module(model, fqn, new)
    return times


def swap_modules(model: nn.Module, modules: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Put ``modules`` (``{fqn: module}``) in place; returns the ones they replaced (swap back with the result)."""
    old = {fqn: model.get_submodule(fqn) for fqn in modules}
    for fqn, m in modules.items():
        _set_module(model, fqn, m)
    return old


def faster_than_dense(model: nn.Module, originals: dict[str, nn.Module], inputs: object, rounds: int = 3,
                      runs: int = 3, margin: float = 0.03, device: str = "cpu") -> tuple[bool, float, float]:
    """Whether the converted ``model`` beats the dense one end to end: ``(ok, converted ms, dense ms)``.

    The two are timed interleaved (``rounds`` x ``runs`` each, swapping the original modules in and out), and
    compared by their fastest run, so a minutes-long drift or a busy neighbour hits both alike. ``ok`` when the
    converted model is no more than ``margin`` slower. The model is left converted."""
    conv, dense = [], []
    for _ in range(rounds):
        conv += time_ms(lambda: run_model(model, inputs), repeats=runs, warmup=1, device=device)
        converted = swap_modules(model, originals)
        try:
            dense += time_ms(lambda: run_model(model, inputs), repeats=runs, warmup=1, device=device)
        finally:
            swap_modules(model, converted)
    c, d = min(conv), min(dense)
    return c <= d * (1.0 + margin), c, d


def _layer_outputs(model: nn.Module, inputs: object, names: list[str]) -> tuple[object, dict[str, torch.Tensor],
                                                                              list[str]]:
    mods = dict(model.named_modules())
    outs: dict[str, torch.Tensor] = {}
    order: list[str] = []
    handles = []
    for n in names:
        def hook(_m: nn.Module, _a: tuple, out: object, n: str = n) -> None:
            if n not in outs and isinstance(out, torch.Tensor):
                outs[n] = out.detach().clone()
                order.append(n)
        handles.append(mods[n].register_forward_hook(hook))
    try:
        with torch.inference_mode():
            y = run_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return y, outs, order


def reference_outputs(dense_model: nn.Module, inputs: object) -> tuple[object, dict[str, torch.Tensor], list[str]]:
    """Record the dense model's output and every Linear/Conv2d output (in execution order) for a later
    :func:`verify_against`, so the dense model can be converted in place (or freed) before verification."""
    names = [n for n, m in dense_model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d) + SPARSE_MODULES)]
    with exact_fp32():  # the reference in full FP32, not cuDNN's default TF32
        return _layer_outputs(dense_model, inputs, names)


def verify_against(reference: tuple[object, dict[str, torch.Tensor], list[str]], sparse_model: nn.Module,
                   inputs: object, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> None:
    """:func:`verify` with the dense side recorded earlier by :func:`reference_outputs`."""
    y_ref, ref, order = reference
    kinds = (nn.Linear, nn.Conv2d) + SPARSE_MODULES
    smods = dict(sparse_model.named_modules())
    names = [n for n in order if isinstance(smods.get(n), kinds)]
    with exact_fp32():  # the dense layers left in the converted model too: TF32 inputs would differ by ~1e-3
        y, got, _ = _layer_outputs(sparse_model, inputs, names)
    for n in names:
        if n not in got:
            raise VerificationError(n, "layer did not run in the converted model")
        # a fused layer's output already holds its activation: compare with the dense layer + that activation
        act = getattr(smods[n], "activation", "none") if isinstance(smods[n], SPARSE_MODULES) else "none"
        want = ref[n] if act == "none" else apply_activation(ref[n].clone(), act)
        why = mismatch(got[n], want, rtol, atol)
        if why:
            raise VerificationError(n, why if act == "none" else f"{why} (fused {act})")
    why = mismatch(first_tensor(y), first_tensor(y_ref), rtol, atol)
    if why:
        raise VerificationError("<model output>", why)


def verify(dense_model: nn.Module, sparse_model: nn.Module, inputs: object, rtol: float = DEFAULT_RTOL,
           atol: float = DEFAULT_ATOL) -> None:
    """Raise :class:`VerificationError` naming the FIRST layer (in execution order) whose output differs.

    Every Linear/Conv2d/Sparse module present under the same name in both models is compared (``|y - ref| <=
    atol * max|ref| + rtol * |ref|``), then the model output. Both models must be in eval mode.
    """
    verify_against(reference_outputs(dense_model, inputs), sparse_model, inputs, rtol, atol)


def weight_bytes_by_format(model: nn.Module) -> dict[str, int]:
    """Bytes of weights per storage format: packed sparse modules by their kernel's format, every other
    parameter and buffer as ``"dense"``."""
    out: dict[str, int] = {}
    sparse_ids = set()
    for m in model.modules():
        if isinstance(m, SPARSE_MODULES):
            fmt = m.kernel.format
            out[fmt] = out.get(fmt, 0) + m.weight_bytes()
            if m.bias is not None:
                sparse_ids.add(id(m.bias))
                out["dense"] = out.get("dense", 0) + m.bias.numel() * m.bias.element_size()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in sparse_ids:
            out["dense"] = out.get("dense", 0) + t.numel() * t.element_size()
    return out


def layer_weight_bytes(model: nn.Module, names: list[str]) -> int:
    """Weight bytes (packed for Sparse modules, dense otherwise; bias excluded) of the named layers."""
    mods = dict(model.named_modules())
    total = 0
    for n in names:
        m = mods[n]
        if isinstance(m, SPARSE_MODULES):
            total += m.weight_bytes()
        else:
            total += m.weight.numel() * m.weight.element_size()
    return total


def measure(model: nn.Module, inputs: object, repeats: int = 10, warmup: int = 2,
            device: str = "cpu") -> dict[str, Any]:
    """End-to-end latency of ``model(inputs)`` and memory.

    Returns ``latency_ms_median``, ``latency_ms_p90``, ``latency_ms`` (every timed run), ``peak_memory_bytes``
    (RSS high-water during the timed runs on CPU, reset first where Linux allows; ``torch.cuda.
    max_memory_allocated`` on GPU), ``peak_memory_reset`` (whether the peak was reset, else it counts from
    process start) and ``weight_bytes`` ``{format: bytes}``.
    """
    was_reset = reset_peak(device)
    runs = time_ms(lambda: run_model(model, inputs), repeats=repeats, warmup=warmup, device=device)
    return {"latency_ms_median": median(runs), "latency_ms_p90": p90(runs), "latency_ms": runs,
            "peak_memory_bytes": peak_bytes(device), "peak_memory_reset": was_reset,
            "weight_bytes": weight_bytes_by_format(model)}
