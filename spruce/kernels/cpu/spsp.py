"""Sparse weight x sparse input: ``spruce_spsp``, its activation format and the dense -> sparse conversion.

ReLU leaves many activations exactly zero. ``spruce_spsp`` skips them as well as the weight's zeros: the input is
held as ``SparseActivation`` (CSR over the rows ``(b, c, h)`` of the NCHW tensor, one column per ``w``), the
weight as ``W^T [C_in*kh*kw, C_out]`` cut into blocks of ``width`` output channels of which only those holding a
nonzero are stored (``SpspPacked``). Every input nonzero is scattered through the stored blocks of the weight
columns ``(ci, r, s)`` it reaches an output with (C++ ``src/spsp_conv.h``), so the work is about
``(1 - activation sparsity) x (share of nonempty weight blocks)`` of the dense convolution's.

Three calls, timed apart by the study (``spruce.study.spsp_map``):

* ``to_sparse_activation(x)``: the conversion ("input2CSR" penalty), a separate call;
* ``SpruceSpsp.conv2d(packed, x, ...)``: a dense ``x`` is converted first (penalty included), a
  ``SparseActivation`` is used as it is; returns dense NCHW;
* ``SpruceSpsp.conv2d_sparse(packed, x, ...)``: the same product whose output, after the fused bias + activation,
  is written directly as the next layer's ``SparseActivation``, so a chain of layers converts once.

The kernel is **opt-in** (``Kernel.opt_in``): its speed depends on the input's values, which the synthetic inputs of
calibration and planning do not have, so ``spruce.kernels.kernels()`` lists it only when asked; ``get("spruce_spsp")``
and a plan that names it find it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from spruce.kernels.cpu import build
from spruce.kernels.cpu.conv import check_conv_args
from spruce.kernels.dense import check_bias_dtype, check_linear_input
from spruce.kernels.registry import ACTIVATIONS, Kernel, register

_ACT_CODE = {"none": 0, "relu": 1, "gelu": 2}
WIDTHS = (8, 16)
#: accumulator tile of one work item in KiB (0: the extension's default). For experiments.
ACC_KIB = 0


def _threads() -> int:
    return max(1, torch.get_num_threads())


@dataclass
class SparseActivation:
    """An NCHW float32 tensor ``shape = (B, C, H, W)`` as CSR over its rows ``(b, c, h)``.

    ``rowptr`` int32 ``[B*C*H + 1]``, ``cols`` int32 ``[nnz]`` (the ``w`` of each nonzero, ascending within a row),
    ``vals`` float32 ``[nnz]``. Exact zeros are not stored (a ``-0.0`` counts as zero).
    """

    rowptr: torch.Tensor
    cols: torch.Tensor
    vals: torch.Tensor
    shape: tuple[int, int, int, int]

    @property
    def nnz(self) -> int:
        return int(self.vals.numel())

    @property
    def sparsity(self) -> float:
        """Fraction of zeros (1.0 for an empty tensor)."""
        n = 1
        for s in self.shape:
            n *= int(s)
        return 1.0 - self.nnz / n if n else 1.0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.rowptr, self.cols, self.vals))

    def to_dense(self) -> torch.Tensor:
        """The NCHW tensor this holds (for checks, not for speed)."""
        b, c, h, w = self.shape
        out = torch.zeros(b * c * h * w, dtype=torch.float32)
        counts = self.rowptr[1:].long() - self.rowptr[:-1].long()
        rows = torch.repeat_interleave(torch.arange(b * c * h), counts)
        out[rows * w + self.cols.long()] = self.vals
        return out.reshape(b, c, h, w)


def to_sparse_activation(x: torch.Tensor) -> SparseActivation:
    """Dense ``x`` ``[B, C, H, W]`` float32 on the CPU -> ``SparseActivation`` (parallel C++: count, prefix sum,
    write). This is the study's "input2CSR" penalty, timed as its own call. ValueError on anything else."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"to_sparse_activation: x must be a [B, C, H, W] tensor, got {shape}")
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(f"to_sparse_activation: x must be float32 on the CPU, got {x.dtype} on {x.device.type}")
    rp, cols, vals = build.load().to_spact(x.detach().contiguous(), _threads(), build.isa("conv"))
    return SparseActivation(rp, cols, vals, tuple(int(s) for s in x.shape))


@dataclass
class SpspPacked:
    """The weight of ``spruce_spsp``: dense ``[m, k]`` (``m`` = C_out, ``k`` = C_in*kh*kw) stored as ``W^T`` in
    blocks of ``width`` consecutive output channels. ``rowptr`` int32 ``[k + 1]`` (blocks of column ``j`` of W are
    ``rowptr[j]:rowptr[j+1]``), ``blocks`` int32 ``[nblocks]`` (block index ``co // width``, ascending),
    ``vals`` float32 ``[nblocks * width]`` (zero-filled past ``m`` and where a block is partly zero)."""

    rowptr: torch.Tensor
    blocks: torch.Tensor
    vals: torch.Tensor
    m: int
    k: int
    width: int

    @property
    def nblocks(self) -> int:
        return int(self.blocks.numel())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.rowptr, self.blocks, self.vals))

    @property
    def block_fill(self) -> float:
        """Share of the ``k x ceil(m / width)`` blocks that are stored (the work relative to dense)."""
        total = self.k * ((self.m + self.width - 1) // self.width)
        return self.nblocks / total if total else 0.0


def pack_spsp(weight: torch.Tensor, width: int) -> SpspPacked:
    """Dense ``[m, k]`` -> ``SpspPacked`` (torch ops; the one-off conversion deployment amortises)."""
    m, k = weight.shape
    nb = (m + width - 1) // width
    wt = weight.detach().t().contiguous()  # [k, m]
    if nb * width != m:
        wt = torch.nn.functional.pad(wt, (0, nb * width - m))
    blocks = wt.reshape(k, nb, width)
    keep = (blocks != 0).any(dim=2)  # [k, nb]
    rowptr = torch.zeros(k + 1, dtype=torch.int32)
    rowptr[1:] = keep.sum(dim=1).cumsum(0).to(torch.int32)
    _, blk = keep.nonzero(as_tuple=True)
    vals = blocks[keep].reshape(-1).contiguous()
    return SpspPacked(rowptr, blk.to(torch.int32).contiguous(), vals, m, k, width)


@register
class SpruceSpsp(Kernel):
    """Sparse weight x sparse input (C++, AVX-512 or AVX2): input nonzeros scattered through the weight's nonempty
    output-channel blocks, fused bias/ReLU/GELU; dense or sparse output. ``matmul``/``linear`` run as 1 x 1
    convolutions (``x [K, N]`` is one image of K channels, 1 row, N columns), converting their dense input."""

    name = "spruce_spsp"
    format = "bsr"
    device = "cpu"
    dtypes = (torch.float32,)
    opt_in = True
    description = "Spruce sparse weight x sparse activation convolution (input CSR per channel row, output-channel blocks)"
    width = 8  # output channels per weight block (8 or 16)

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return build.availability()

    def prepare(self, weight: torch.Tensor, width: int | None = None) -> SpspPacked:
        """Dense ``[C_out, C_in*kh*kw]`` float32 -> ``SpspPacked`` (``width``: 8 or 16 output channels per block).
        ValueError on non-finite weights or another width."""
        self.check_weight(weight)
        width = self.width if width is None else int(width)
        if width not in WIDTHS:
            raise ValueError(f"{self.name}: block width {width} not allowed; allowed: {', '.join(map(str, WIDTHS))}")
        if not bool(torch.isfinite(weight).all()):
            raise ValueError(f"{self.name}: weight holds non-finite values (NaN/Inf); only finite weights are allowed")
        build.load()
        return pack_spsp(weight, width)

    def weight_bytes(self, packed: SpspPacked) -> int:
        return packed.nbytes

    # ---- validation ----------------------------------------------------------------------------------
    def _check_packed(self, packed: object) -> None:
        if not isinstance(packed, SpspPacked):
            raise ValueError(f"{self.name}: packed weight must come from {self.name}.prepare, got "
                             f"{type(packed).__name__}")

    def _check_common(self, packed: SpspPacked, bias: torch.Tensor | None, activation: str) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"{self.name}: unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        if bias is not None:
            if not isinstance(bias, torch.Tensor) or bias.dim() != 1 or bias.shape[0] != packed.m:
                raise ValueError(f"{self.name}: bias must be [M]=[{packed.m}], got "
                                 f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
            if bias.device.type != "cpu":
                raise ValueError(f"{self.name}: bias is on {bias.device.type}, kernel runs on cpu")
            check_bias_dtype(self, bias, torch.float32)

    def _sparse_input(self, x: torch.Tensor | SparseActivation) -> SparseActivation:
        if isinstance(x, SparseActivation):
            return x
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{self.name}: conv2d input must be [B, C_in, H, W] or a SparseActivation, got {shape}")
        if x.dtype not in self.dtypes:
            raise ValueError(f"{self.name}: x dtype {x.dtype} not supported; allowed: torch.float32")
        if x.device.type != "cpu":
            raise ValueError(f"{self.name}: x is on {x.device.type}, kernel runs on cpu")
        return to_sparse_activation(x)

    def _run(self, packed, x, kernel_size, stride, padding, dilation, bias, activation, sparse_out: bool):
        self._check_packed(packed)
        self._check_common(packed, bias, activation)
        sx = self._sparse_input(x)
        # geometry checks shared with the other conv kernels (a meta tensor of the input's shape)
        check_conv_args(self.name, torch.empty(sx.shape, device="meta"), packed.k, kernel_size, stride, padding,
                        dilation)
        b, c, h, w = sx.shape
        kh, kw = (int(v) for v in kernel_size)
        bb = bias.detach().contiguous() if bias is not None else None
        try:
            return build.load().spsp_conv(packed.rowptr, packed.blocks, packed.vals, packed.m, packed.width,
                                          sx.rowptr, sx.cols, sx.vals, b, c, h, w, kh, kw, int(stride[0]),
                                          int(stride[1]), int(padding[0]), int(padding[1]), int(dilation[0]),
                                          int(dilation[1]), bb, _ACT_CODE[activation], sparse_out, _threads(),
                                          build.isa("conv"), ACC_KIB)
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None

    # ---- products ------------------------------------------------------------------------------------
    def conv2d(self, packed: SpspPacked, x: torch.Tensor | SparseActivation, kernel_size: tuple[int, int],
               stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
               dilation: tuple[int, int] = (1, 1), bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """``x`` ``[B, C_in, H, W]`` (converted first) or a ``SparseActivation`` -> dense ``[B, C_out, H_out,
        W_out]``. Any stride, padding and dilation (groups=1)."""
        return self._run(packed, x, kernel_size, stride, padding, dilation, bias, activation, False)[0]

    def conv2d_sparse(self, packed: SpspPacked, x: torch.Tensor | SparseActivation, kernel_size: tuple[int, int],
                      stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
                      dilation: tuple[int, int] = (1, 1), bias: torch.Tensor | None = None,
                      activation: str = "none") -> SparseActivation:
        """As ``conv2d``, with the output (after bias + activation) written directly as a ``SparseActivation``:
        the next layer reads it without a conversion."""
        rp, cols, vals = self._run(packed, x, kernel_size, stride, padding, dilation, bias, activation, True)
        b, _, h, w = (x.shape if isinstance(x, SparseActivation) else tuple(x.shape))
        ho = (h + 2 * int(padding[0]) - int(dilation[0]) * (int(kernel_size[0]) - 1) - 1) // int(stride[0]) + 1
        wo = (w + 2 * int(padding[1]) - int(dilation[1]) * (int(kernel_size[1]) - 1) - 1) // int(stride[1]) + 1
        return SparseActivation(rp, cols, vals, (int(b), packed.m, ho, wo))

    def matmul(self, packed: SpspPacked, x: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """``act(W @ X + b)``: ``x`` ``[K, N]`` -> ``[M, N]`` (a 1 x 1 convolution of one K-channel 1 x N image)."""
        self._check_packed(packed)
        self.check_input(x, packed.k, bias, packed.m, activation)
        n = x.shape[1]
        if n == 0:
            return x.new_zeros(packed.m, 0)
        y = self.conv2d(packed, x.detach().reshape(1, packed.k, 1, n), (1, 1), bias=bias, activation=activation)
        return y.reshape(packed.m, n)

    def linear(self, packed: SpspPacked, x: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """``act(x @ W^T + b)``: ``x`` ``[..., K]`` -> ``[..., M]`` (each row a K-channel 1 x 1 image)."""
        self._check_packed(packed)
        check_linear_input(self, x, packed.k)
        lead = x.shape[:-1]
        x2 = x.detach().reshape(-1, packed.k)
        if x2.shape[0] == 0:
            self._check_common(packed, bias, activation)
            return x.new_zeros(*lead, packed.m)
        y = self.conv2d(packed, x2.reshape(-1, packed.k, 1, 1), (1, 1), bias=bias, activation=activation)
        return y.reshape(*lead, packed.m)
