"""Crossover detection on measured curves: the sparsity where a speedup (or a size ratio) reaches 1.

Given points ``(s_i, r_i)`` with ``r = t_dense / t_sparse`` (or ``bytes_dense / bytes_sparse``), the crossover is
the sparsity after the **last** point with ``r < 1``: between that point and the next, ``log r`` is interpolated
linearly in ``log(1 - s)`` (log density), the space in which sparsities 0.9, 0.95, 0.98 are evenly spread and
sparse time is close to a power law of density. Statuses:

* ``"cross"``: ``r < 1`` below and ``r >= 1`` at every measured sparsity above the crossing;
* ``"always"``: ``r >= 1`` at every measured sparsity (the crossover is at or below the smallest one);
* ``"never"``: ``r < 1`` at the largest measured sparsity (the crossover, if any, is above it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Crossover:
    """A crossover: ``status`` in {cross, always, never}; ``sparsity`` (None for never); the measured range."""

    status: str
    sparsity: float | None
    s_min: float
    s_max: float

    def interval(self) -> tuple[float, float]:
        """Where the true crossover lies: a point for cross, ``[0, s_min]`` for always, ``[s_max, 1]`` for never."""
        if self.status == "cross":
            return self.sparsity, self.sparsity  # type: ignore[return-value]
        if self.status == "always":
            return 0.0, self.s_min
        return self.s_max, 1.0

    def label(self) -> str:
        """``0.83``, ``<=0.50`` or ``>0.98``."""
        if self.status == "cross":
            return f"{self.sparsity:.2f}"
        if self.status == "always":
            return f"<={self.s_min:.2f}"
        return f">{self.s_max:.2f}"


def find_crossover(sparsities: Sequence[float], ratios: Sequence[float]) -> Crossover:
    """The crossover of a measured curve (module docstring). Points need not be sorted; NaN ratios are dropped.

    Raises ValueError on no valid point, a sparsity outside [0, 1) or a non-positive ratio.
    """
    pts = sorted((float(s), float(r)) for s, r in zip(sparsities, ratios) if not math.isnan(float(r)))
    if not pts:
        raise ValueError("find_crossover: no valid (sparsity, ratio) point")
    for s, r in pts:
        if not 0.0 <= s < 1.0:
            raise ValueError(f"find_crossover: sparsity {s} outside [0, 1)")
        if r <= 0:
            raise ValueError(f"find_crossover: ratio {r} at sparsity {s} must be > 0")
    s_min, s_max = pts[0][0], pts[-1][0]
    below = [i for i, (_, r) in enumerate(pts) if r < 1.0]
    if not below:
        return Crossover("always", s_min, s_min, s_max)
    i = below[-1]
    if i == len(pts) - 1:
        return Crossover("never", None, s_min, s_max)
    (s0, r0), (s1, r1) = pts[i], pts[i + 1]
    x0, x1 = math.log(1.0 - s0), math.log(1.0 - s1)
    y0, y1 = math.log(r0), math.log(r1)
    x = x0 + (0.0 - y0) * (x1 - x0) / (y1 - y0) if y1 != y0 else x1
    return Crossover("cross", 1.0 - math.exp(x), s_min, s_max)


def within(measured: Crossover, predicted_status: str, predicted: float | None, tol: float = 0.05) -> bool:
    """Whether a predicted crossover is within ``tol`` (sparsity units) of the measured one's interval.

    A predicted ``never`` counts as sparsity 1 and a predicted ``always`` as 0.
    """
    p = 1.0 if predicted_status == "never" or predicted is None else (0.0 if predicted_status == "always"
                                                                       else predicted)
    lo, hi = measured.interval()
    return lo - tol <= p <= hi + tol
