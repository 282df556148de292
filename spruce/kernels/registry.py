"""The kernel registry: every way of computing ``Y = W @ X`` that Spruce can deploy.

A kernel is registered once under ``(format, device, name)``; ``name`` alone is unique across the registry
(duplicate names are an error, so a plan that names a kernel is never ambiguous).

Contract of a kernel (see ``Kernel``):

* ``is_available() -> (bool, reason)``: whether it can run here (library importable, GPU present, extension
  built); ``reason`` is a human sentence when it cannot.
* ``prepare(weight) -> packed``: the one-off dense -> packed conversion (the cost deployment amortises), from a
  dense ``[M, K]`` tensor on the kernel's device. Timed separately from ``matmul``.
* ``matmul(packed, x, bias=None, activation="none") -> y``: ``Y = act(W @ X + bias[:, None])`` with
  ``x`` ``[K, N]`` row-major, ``y`` ``[M, N]``.
* ``linear(packed, x, bias=None, activation="none") -> y``: the ``nn.Linear`` form ``y = act(x @ W^T + b)``
  with ``x`` ``[..., K]`` and ``y`` ``[..., M]``. The default goes through ``matmul``; kernels with a native
  layout for it override it.
* ``weight_bytes(packed) -> int``: bytes the packed weight occupies (values + indices + offsets).

A kernel accepts what it declares (``dtypes``, ``device``) and raises ``ValueError`` naming the problem on
anything else (wrong dtype/device/rank/shape, non-finite weights where it cannot handle them).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

ACTIVATIONS = ("none", "relu", "gelu")
FORMATS = ("dense", "csr", "coo", "bsr")
DEVICES = ("cpu", "cuda")


def apply_activation(y: torch.Tensor, activation: str) -> torch.Tensor:
    """Apply an epilogue activation in place where possible. GELU is the exact (erf) form, as BERT uses."""
    if activation == "none":
        return y
    if activation == "relu":
        return torch.relu_(y)
    if activation == "gelu":
        return torch.nn.functional.gelu(y)
    raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")


class Kernel:
    """Base class of a registered kernel. Subclasses set the class attributes and override the methods."""

    name: ClassVar[str] = ""
    format: ClassVar[str] = ""
    device: ClassVar[str] = "cpu"
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32,)
    description: ClassVar[str] = ""
    #: bytes of X ([K, N]) the kernel keeps cache-resident while every row passes over them (it cuts N into
    #: panels of about this size), so X streams from memory once whatever its size; None: it sweeps all of N
    #: per row and re-reads X from memory once X outgrows the cache. Read by the performance model.
    x_panel_bytes: ClassVar[int | None] = None
    #: True for a kernel whose speed depends on the input's values (e.g. on activation sparsity): calibration and
    #: planning time kernels on synthetic inputs, so ``kernels()`` lists it only with ``opt_in=True``; ``get(name)``
    #: and a plan that names it still find it.
    opt_in: ClassVar[bool] = False

    # ---- availability -------------------------------------------------------------------------------
    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return True, ""

    # ---- the two phases -----------------------------------------------------------------------------
    def prepare(self, weight: torch.Tensor) -> Any:
        raise NotImplementedError

    def matmul(self, packed: Any, x: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        raise NotImplementedError

    def linear(self, packed: Any, x: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """``y = act(x @ W^T + b)`` for ``x`` of shape ``[..., K]``; returns ``[..., M]``."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        y = self.matmul(packed, x2.t().contiguous(), bias, activation)  # [M, N]
        return y.t().reshape(*lead, y.shape[0])

    def conv2d(self, packed: Any, x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int] = (1, 1),
               padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1),
               bias: torch.Tensor | None = None, activation: str = "none") -> torch.Tensor:
        """Convolution with the im2col-flattened weight ``W`` ``[C_out, C_in*kh*kw]`` (groups=1).

        ``x`` is ``[B, C_in, H, W]``; returns ``[B, C_out, H_out, W_out]``. The default materialises the im2col
        matrix (``unfold``) and calls ``matmul`` per image; kernels with a direct sparse convolution override it.
        """
        b, _, h, w = x.shape
        kh, kw = kernel_size
        h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        w_out = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        cols = torch.nn.functional.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
        outs = [self.matmul(packed, cols[i].contiguous(), bias, activation) for i in range(b)]  # [C_out, L] each
        return torch.stack(outs).reshape(b, -1, h_out, w_out)

    def weight_bytes(self, packed: Any) -> int:
        raise NotImplementedError

    # ---- shared validation --------------------------------------------------------------------------
    def check_weight(self, weight: torch.Tensor) -> None:
        """Raise ValueError unless ``weight`` is a 2-D tensor of an accepted dtype on this kernel's device."""
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"{self.name}: weight must be a torch.Tensor, got {type(weight).__name__}")
        if weight.dim() != 2:
            raise ValueError(f"{self.name}: weight must be 2-D [M, K], got shape {tuple(weight.shape)}")
        if weight.dtype not in self.dtypes:
            raise ValueError(f"{self.name}: weight dtype {weight.dtype} not supported; allowed: "
                             f"{', '.join(str(d) for d in self.dtypes)}")
        if weight.device.type != self.device:
            raise ValueError(f"{self.name}: weight is on {weight.device.type}, kernel runs on {self.device}")

    def check_input(self, x: torch.Tensor, k: int, bias: torch.Tensor | None, m: int,
                    activation: str) -> None:
        """Raise ValueError unless ``x`` is ``[K, N]`` and ``bias`` is ``[M]`` of the accepted dtype/device."""
        if activation not in ACTIVATIONS:
            raise ValueError(f"{self.name}: unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{self.name}: x must be 2-D [K, N], got {shape}")
        if x.shape[0] != k:
            raise ValueError(f"{self.name}: x has {x.shape[0]} rows but the weight has K={k} columns")
        if x.dtype not in self.dtypes:
            raise ValueError(f"{self.name}: x dtype {x.dtype} not supported; allowed: "
                             f"{', '.join(str(d) for d in self.dtypes)}")
        if x.device.type != self.device:
            raise ValueError(f"{self.name}: x is on {x.device.type}, kernel runs on {self.device}")
        if bias is not None:
            if bias.dim() != 1 or bias.shape[0] != m:
                raise ValueError(f"{self.name}: bias must be [M]=[{m}], got {tuple(bias.shape)}")
            if bias.device.type != self.device:
                raise ValueError(f"{self.name}: bias is on {bias.device.type}, kernel runs on {self.device}")


_REGISTRY: dict[str, type[Kernel]] = {}


def register(cls: type[Kernel]) -> type[Kernel]:
    """Class decorator: add a kernel to the registry. Duplicate names are an error."""
    if not cls.name:
        raise ValueError(f"kernel class {cls.__name__} has no name")
    if cls.format not in FORMATS:
        raise ValueError(f"kernel {cls.name!r}: format {cls.format!r} not in {FORMATS}")
    if cls.device not in DEVICES:
        raise ValueError(f"kernel {cls.name!r}: device {cls.device!r} not in {DEVICES}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"kernel name {cls.name!r} is already registered by {_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a kernel (tests register throw-away kernels)."""
    _REGISTRY.pop(name, None)


def _load_builtin() -> None:
    # Importing the modules runs their @register decorators. Missing optional modules are not an error
    # here: each kernel reports its own availability.
    import importlib
    for mod in ("spruce.kernels.dense", "spruce.kernels.torch_sparse", "spruce.kernels.scipy_csr",
                "spruce.kernels.cpu", "spruce.kernels.cuda", "spruce.kernels.cusparse"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # only the module itself missing, not its dependencies
            if e.name != mod:
                raise


def names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get(name: str) -> Kernel:
    """An instance of the kernel registered under ``name``; ValueError naming the known kernels otherwise."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown kernel {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def kernels(device: str | None = None, fmt: str | None = None, available_only: bool = True,
            dtype: torch.dtype | None = None, opt_in: bool = False) -> list[Kernel]:
    """Instances of the registered kernels matching device / format / dtype, in name order (``Kernel.opt_in``
    kernels only when ``opt_in``)."""
    _load_builtin()
    out = []
    for name in sorted(_REGISTRY):
        cls = _REGISTRY[name]
        if cls.opt_in and not opt_in:
            continue
        if device is not None and cls.device != device:
            continue
        if fmt is not None and cls.format != fmt:
            continue
        if dtype is not None and dtype not in cls.dtypes:
            continue
        if available_only and not cls.is_available()[0]:
            continue
        out.append(cls())
    return out


def availability() -> dict[str, tuple[bool, str]]:
    """``{name: (available, reason)}`` for every registered kernel."""
    _load_builtin()
    return {n: _REGISTRY[n].is_available() for n in sorted(_REGISTRY)}
