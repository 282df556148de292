"""``scipy_csr``: scipy.sparse CSR (single-threaded, int32 indices) as a baseline with the kernel interface."""
from __future__ import annotations

import numpy as np
import torch

from spruce.kernels.dense import check_matmul_call, check_packed, check_prepare
from spruce.kernels.registry import Kernel, apply_activation, register



@register
class ScipyCsr(Kernel):
    """``scipy.sparse.csr_matrix @ ndarray`` on CPU tensors (zero-copy in and out)."""

    name = "scipy_csr"
    format = "csr"
    device = "cpu"
    dtypes = (torch.float32, torch.float64)
    description = "scipy.sparse CSR @ dense (single thread)"

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        try:
            import scipy.sparse  # noqa: F401
        except ImportError:
            return False, "scipy is not installed (pip install scipy)"
        return True, ""

    def prepare(self, weight: torch.Tensor):
        """``[M, K]`` dense -> ``scipy.sparse.csr_matrix``."""
        import scipy.sparse
        check_prepare(self, weight)
        return scipy.sparse.csr_matrix(weight.detach().contiguous().numpy())

    def matmul(self, packed, x: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str = "none") -> torch.Tensor:
        """``act(W @ X + bias[:, None])``: ``x`` ``[K, N]`` -> ``[M, N]``."""
        import scipy.sparse
        check_packed(self, packed, scipy.sparse.issparse(packed) and packed.format == "csr", "a SciPy CSR matrix")
        m, k = packed.shape
        check_matmul_call(self, x, m, k, bias, activation, packed.dtype)  # a numpy dtype, compared by name
        y = torch.from_numpy(np.ascontiguousarray(packed @ x.detach().contiguous().numpy()))
        if bias is not None:
            y.add_(bias[:, None])
        return apply_activation(y, activation)

    def weight_bytes(self, packed) -> int:
        return int(packed.data.nbytes + packed.indices.nbytes + packed.indptr.nbytes)
