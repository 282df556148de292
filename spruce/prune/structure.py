"""Mask structure: unstructured, ``bh x bw`` blocks, or N:M (at most ``M - N`` pruned in every ``M`` consecutive).

Every structure works on the weight as the kernels see it: a Linear's ``[out, in]`` and a convolution's
im2col-flattened ``[C_out, C_in*kh*kw]`` (``weight.reshape(C_out, -1)``, the layout of
``spruce.deploy.modules.SparseConv2d.flat_weight``), so a ``4x1`` block mask is exactly what ``spruce_bsr4x1``
packs and a ``16x16`` mask what ``torch_bsr16`` packs, with no empty padding inside a stored block.

* **block** ``(bh, bw)``: the flattened ``[M, K]`` weight is cut into ``ceil(M/bh) x ceil(K/bw)`` tiles (the last
  row/column of tiles is smaller when ``bh``/``bw`` do not divide ``M``/``K``). A tile's score is the mean score
  of its weights (``-inf`` if any of them is already pruned, so a tile is pruned whole); the
  ``round(sparsity * n_tiles)`` lowest tiles are pruned. The weight sparsity is exactly ``sparsity`` (to one tile)
  when the block divides the shape.
* **N:M** ``(n, m)``: along the input dimension ``K``, every group of ``m`` consecutive weights keeps at least
  ``n`` (at ``sparsity = 1 - n/m`` exactly ``n``; the NVIDIA 2:4 convention). Only the ``m - n`` lowest-scored
  weights of each group may be pruned; among those, the ``round(sparsity * numel)`` lowest in the layer are, so AGP
  can ramp up to ``1 - n/m``. A last, shorter group of ``g < m`` weights keeps ``min(n, g)``.

Ties are broken by position (row-major tile order, flat index), as in ``select.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from spruce.prune.select import lowest_k


def _pair(name: str, value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    if not ok:
        raise ValueError(f"prune.{name}={value!r} is not allowed; give two integers >= 1, e.g. "
                         f"{'[4,1] or [16,16]' if name == 'block' else '[2,4]'} (or null)")
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class Structure:
    """The granularity of a mask: ``block=(rows, cols)`` of the flattened weight, or ``n_m=(n, m)``, or neither."""

    block: tuple[int, int] | None = None
    n_m: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "block", _pair("block", self.block))
        object.__setattr__(self, "n_m", _pair("n_m", self.n_m))
        if self.block is not None and self.n_m is not None:
            raise ValueError("prune.block and prune.n_m are both set; choose one structure (the other null)")
        if self.n_m is not None and not self.n_m[0] < self.n_m[1]:
            raise ValueError(f"prune.n_m={list(self.n_m)} is not allowed; need n < m (n kept of every m, e.g. [2,4])")
        if self.block == (1, 1):
            object.__setattr__(self, "block", None)  # 1x1 blocks are unstructured

    @property
    def unstructured(self) -> bool:
        return self.block is None and self.n_m is None

    @property
    def max_sparsity(self) -> float:
        """Largest reachable sparsity: ``1 - n/m`` for N:M, otherwise anything below 1."""
        return 1.0 - self.n_m[0] / self.n_m[1] if self.n_m else 1.0

    def describe(self) -> str:
        if self.block:
            return f"block{self.block[0]}x{self.block[1]}"
        if self.n_m:
            return f"{self.n_m[0]}:{self.n_m[1]}"
        return "unstructured"

    def check_sparsity(self, sparsity: float, where: str = "target") -> None:
        """``ValueError`` when an N:M structure cannot reach ``sparsity`` (above ``1 - n/m``)."""
        if self.n_m and sparsity > self.max_sparsity + 1e-12:
            raise ValueError(f"{where} sparsity {sparsity} is above {self.max_sparsity:g}, the most that "
                             f"{self.describe()} allows; lower it or use prune.n_m=null")


def flat_2d(t: torch.Tensor) -> torch.Tensor:
    """``[C_out, ...]`` -> ``[C_out, prod(...)]`` (a view when contiguous): the im2col layout of a conv weight."""
    return t.reshape(t.shape[0], -1)


def _block_mask(scores2d: torch.Tensor, sparsity: float, bh: int, bw: int) -> torch.Tensor:
    m, k = scores2d.shape
    mb, kb = math.ceil(m / bh), math.ceil(k / bw)
    pad = (0, kb * bw - k, 0, mb * bh - m)
    total = F.pad(scores2d, pad).view(mb, bh, kb, bw).sum(dim=(1, 3))
    count = F.pad(torch.ones_like(scores2d), pad).view(mb, bh, kb, bw).sum(dim=(1, 3))
    tiles = lowest_k(total / count, round(sparsity * mb * kb))  # [mb, kb]
    return tiles.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:m, :k]


def _nm_mask(scores2d: torch.Tensor, sparsity: float, n: int, m_: int) -> torch.Tensor:
    rows, k = scores2d.shape
    groups = math.ceil(k / m_)
    padded = F.pad(scores2d, (0, groups * m_ - k), value=float("-inf")).view(rows, groups, m_)
    # rank of each weight inside its group (stable: equal scores by position); padding takes the lowest ranks
    order = padded.argsort(dim=-1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(m_, device=order.device).expand_as(order))
    eligible = (ranks < m_ - n).reshape(rows, groups * m_)[:, :k]
    want = min(round(sparsity * rows * k), int(eligible.sum()))
    candidates = scores2d.masked_fill(~eligible, float("inf"))
    return lowest_k(candidates, want) & eligible


def structured_lowest(scores: torch.Tensor, sparsity: float, structure: Structure) -> torch.Tensor:
    """Bool tensor shaped like ``scores`` (a weight's shape), ``True`` where the weight is to be pruned.

    ``scores``: low = prune first, ``-inf`` for weights already pruned (they are chosen first), no NaN.
    Unstructured: exactly ``round(sparsity * numel)`` entries; block and N:M as in the module docstring.
    """
    if structure.unstructured:
        return lowest_k(scores, round(sparsity * scores.numel()))
    s2 = flat_2d(scores.detach().float())
    if structure.block:
        out = _block_mask(s2, sparsity, *structure.block)
    else:
        out = _nm_mask(s2, sparsity, *structure.n_m)
    return out.reshape(scores.shape)


def check_structure(mask: torch.Tensor, structure: Structure, exact_nm: bool = False) -> str | None:
    """``None`` when the bool mask (``False`` = pruned) has ``structure`` in every group, else a description of the
    first group that breaks it. Blocks: every tile all kept or all pruned. N:M: every group of ``m`` keeps at least
    ``min(n, group size)`` (exactly that when ``exact_nm``)."""
    keep = flat_2d(mask.bool())
    rows, k = keep.shape
    if structure.block:
        bh, bw = structure.block
        for i in range(0, rows, bh):
            for j in range(0, k, bw):
                tile = keep[i:i + bh, j:j + bw]
                if tile.any() and not tile.all():
                    return f"tile at ({i}, {j}) is partly pruned"
    elif structure.n_m:
        n, m_ = structure.n_m
        for j in range(0, k, m_):
            kept = keep[:, j:j + m_].sum(dim=1)
            need = min(n, keep[:, j:j + m_].shape[1])
            bad = (kept != need) if exact_nm else (kept < need)
            if bad.any():
                r = int(bad.nonzero()[0])
                return f"group at ({r}, {j}) keeps {int(kept[r])}, needs {'exactly ' if exact_nm else ''}{need}"
    return None
