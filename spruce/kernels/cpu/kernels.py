"""The registered spruce_cpu kernels: ``spruce_csr``, ``spruce_csr_direct`` and ``spruce_bsr4x1``.

All take float32 on the CPU and run with AVX-512 or AVX2 + FMA, whichever the CPU has (``$SPRUCE_ISA`` forces
one, see ``build.isa``); the C++ extension is built on the first ``prepare``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from spruce.kernels.cpu import build
from spruce.kernels.cpu.conv import check_conv_args, im2col_conv2d
from spruce.kernels.cpu.packed import CpuPacked
from spruce.kernels.dense import check_bias_dtype, check_linear_input
from spruce.kernels.registry import ACTIVATIONS, Kernel, register

_ACT_CODE = {"none": 0, "relu": 1, "gelu": 2}
# 0: automatic; 1: split rows across threads; 2: split N (columns of X) across threads. For experiments.
SPLIT_MODE = 0


def _threads() -> int:
    return max(1, torch.get_num_threads())


class _SpruceCpu(Kernel):
    """Shared plumbing: validation, packing, the nn.Linear layout and batched im2col convolution."""

    device = "cpu"
    dtypes = (torch.float32,)
    block_rows = 1
    use_idx16 = True

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return build.availability()

    # ---- conversion ----------------------------------------------------------------------------------
    def prepare(self, weight: torch.Tensor) -> CpuPacked:
        """Dense ``[M, K]`` float32 -> packed, in parallel C++ (one pass over the weight).

        ValueError on non-finite weights (NaN/Inf): a packed weight would silently drop or spread them.
        """
        self.check_weight(weight)
        mod = build.load()
        m, k = weight.shape
        w = weight.detach().contiguous()
        idx16 = self.use_idx16 and k <= 65536
        try:
            rp, cols, vals = mod.pack(w, idx16, self.block_rows, _threads())
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None
        return CpuPacked(rp, cols, vals, m, k, self.block_rows)

    def weight_bytes(self, packed: CpuPacked) -> int:
        return packed.nbytes

    # ---- products ------------------------------------------------------------------------------------
    def _check_packed(self, packed: CpuPacked) -> None:
        if not isinstance(packed, CpuPacked) or packed.block_rows != self.block_rows:
            raise ValueError(f"{self.name}: packed weight must come from {self.name}.prepare, got "
                             f"{type(packed).__name__}")

    def _product(self, packed: CpuPacked, x: torch.Tensor, bias: torch.Tensor | None, act: int) -> torch.Tensor:
        """``[K, N]`` -> ``[M, N]``."""
        raise NotImplementedError

    def _linear(self, packed: CpuPacked, x2: torch.Tensor, bias: torch.Tensor | None, act: int) -> torch.Tensor:
        """``[B, K]`` -> ``[B, M]``, both contiguous."""
        raise NotImplementedError

    def _validate(self, packed: CpuPacked, x: torch.Tensor, bias: torch.Tensor | None, activation: str) -> None:
        self._check_packed(packed)
        self.check_input(x, packed.k, bias, packed.m, activation)
        check_bias_dtype(self, bias, x.dtype)

    def matmul(self, packed: CpuPacked, x: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """``act(W @ X + bias[:, None])``: ``x`` ``[K, N]`` float32 -> ``[M, N]``. Non-contiguous x is copied."""
        self._validate(packed, x, bias, activation)
        b = bias.detach().contiguous() if bias is not None else None
        return self._product(packed, x.detach().contiguous(), b, _ACT_CODE[activation])

    def linear(self, packed: CpuPacked, x: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """``act(x @ W^T + b)``: ``x`` ``[..., K]`` -> ``[..., M]`` (the nn.Linear layout, read and written
        row-major by the kernel; a non-contiguous ``x`` is copied once)."""
        self._check_packed(packed)
        check_linear_input(self, x, packed.k)
        if activation not in ACTIVATIONS:
            raise ValueError(f"{self.name}: unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        lead = x.shape[:-1]
        x2 = x.detach().reshape(-1, packed.k)
        self._validate(packed, x2.t(), bias, activation)
        b = bias.detach().contiguous() if bias is not None else None
        act = _ACT_CODE[activation]
        if x2.shape[0] == 1:  # [1, K] and [K, 1] share their memory
            y = self._product(packed, x2.contiguous().reshape(packed.k, 1), b, act).reshape(1, packed.m)
        else:
            y = self._linear(packed, x2.contiguous(), b, act)
        return y.reshape(*lead, packed.m)

    def conv2d(self, packed: CpuPacked, x: torch.Tensor, kernel_size: tuple[int, int],
               stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
               dilation: tuple[int, int] = (1, 1), bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """Convolution (groups=1) with the im2col-flattened weight ``[C_out, C_in*kh*kw]``: the whole batch
        unfolded into one ``[C_in*kh*kw, B*L]`` matrix and one SpMM. ``x`` ``[B, C_in, H, W]`` ->
        ``[B, C_out, H_out, W_out]``."""
        self._check_packed(packed)
        ho, wo = check_conv_args(self.name, x, packed.k, kernel_size, stride, padding, dilation)
        self._validate(packed, x.new_empty(packed.k, 0), bias, activation)
        return im2col_conv2d(lambda xx: self.matmul(packed, xx, bias, activation), x.detach().contiguous(),
                             packed.m, tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation), ho, wo)


@register
class SpruceCsr(_SpruceCpu):
    """CSR SpMM/SpMV (AVX-512 or AVX2, OpenMP): register-tiled rows, L2 panels over N, gathered SpMV for N = 1,
    uint16 column indices when K <= 65536, fused bias/ReLU/GELU; ``linear`` reads ``x [B, K]`` and writes
    ``y [B, M]`` row-major (its own kernel: panels of x transposed in cache, vector stores of y)."""

    name = "spruce_csr"
    format = "csr"
    description = "Spruce CSR SpMM, AVX-512/AVX2 (uint16/int32 indices, fused epilogue, native nn.Linear layout)"

    @property
    def x_panel_bytes(self) -> int:  # type: ignore[override]
        """Bytes of X a thread keeps in L2 (the extension's constant)."""
        return build.l2_panel_bytes()

    def _product(self, packed, x, bias, act):
        return build.load().csr_spmm(packed.rowptr, packed.cols, packed.vals, packed.m, packed.k, x, bias, act,
                                     _threads(), SPLIT_MODE, build.isa())

    def _linear(self, packed, x2, bias, act):
        return build.load().csr_linear(packed.rowptr, packed.cols, packed.vals, packed.m, packed.k, x2, bias, act,
                                       _threads(), build.isa())


@register
class SpruceCsrDirect(SpruceCsr):
    """``spruce_csr`` whose ``conv2d`` is a direct sparse convolution (Park et al., ICLR 2017): every nonzero
    ``w[co, ci, r, s]`` is an offset into the zero-padded input, and output rows are accumulated in registers
    from shifted input windows, with no im2col matrix. ``matmul``/``linear`` are the CSR SpMM."""

    name = "spruce_csr_direct"
    use_idx16 = False  # offsets into the input image need the full column index
    description = "Spruce CSR with direct sparse convolution (no im2col)"

    def conv2d(self, packed: CpuPacked, x: torch.Tensor, kernel_size: tuple[int, int],
               stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
               dilation: tuple[int, int] = (1, 1), bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """Direct sparse convolution: ``x`` ``[B, C_in, H, W]`` -> ``[B, C_out, H_out, W_out]``."""
        self._check_packed(packed)
        ho, wo = check_conv_args(self.name, x, packed.k, kernel_size, stride, padding, dilation)
        self._validate(packed, x.new_empty(packed.k, 0), bias, activation)
        if packed.cols.dtype != torch.int32:
            raise ValueError(f"{self.name}: packed weight needs int32 column indices (use {self.name}.prepare)")
        ph, pw = padding
        xp = F.pad(x.detach(), (pw, pw, ph, ph)) if (ph or pw) else x.detach()
        b = bias.detach().contiguous() if bias is not None else None
        return build.load().conv_direct(packed.rowptr, packed.cols, packed.vals, packed.m, xp.contiguous(),
                                        kernel_size[0], kernel_size[1], stride[0], stride[1], dilation[0],
                                        dilation[1], ho, wo, b, _ACT_CODE[activation], _threads(),
                                        build.isa("conv"))


@register
class SpruceBsr4x1(_SpruceCpu):
    """BSR with 4 x 1 blocks (4 rows of one column): each X row load feeds 4 output rows, so it pays on
    masks pruned in 4 x 1 blocks; fused bias/ReLU/GELU."""

    name = "spruce_bsr4x1"
    format = "bsr"
    block_rows = 4
    description = "Spruce BSR 4x1 blocks SpMM, AVX-512/AVX2 (fused epilogue)"

    def _product(self, packed, x, bias, act):
        return build.load().bsr_spmm(packed.rowptr, packed.cols, packed.vals, packed.m, packed.k, x, bias, act,
                                     False, _threads(), build.isa())

    def _linear(self, packed, x2, bias, act):
        return build.load().bsr_spmm(packed.rowptr, packed.cols, packed.vals, packed.m, packed.k,
                                     x2.t().contiguous(), bias, act, True, _threads(), build.isa())
