"""Sparsity schedules: pure functions of the optimizer step that say how sparse the model should be.

Every function maps ``step`` (an integer count of optimizer steps, ``trainer.global_step``) to a target
sparsity in ``[0, 1)`` (the fraction of weights that are zero). They are monotone non-decreasing in ``step``,
return ``0.0`` before pruning starts and hold ``final`` once it ends, so a caller can compare the target with the
last one it applied and prune only when it changed.
"""
from __future__ import annotations

import math


def _check_step(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}={value!r} is not allowed; it must be an integer >= 0 (optimizer steps)")


def _check_final(final: float) -> None:
    if isinstance(final, bool) or not isinstance(final, (int, float)) or not 0.0 <= final < 1.0:
        raise ValueError(f"final={final!r} is not allowed; the final sparsity must be in [0, 1)")


def _check_window(start: int, end: int) -> None:
    _check_step("start", start)
    _check_step("end", end)
    if start > end:
        raise ValueError(f"start={start} > end={end} is not allowed; pruning must start at or before it ends")


def check_agp_args(initial: float, final: float, start: int, end: int, every: int = 1) -> None:
    """Validate AGP arguments; raise ``ValueError`` naming the bad value and what is allowed."""
    _check_final(final)
    if isinstance(initial, bool) or not isinstance(initial, (int, float)) or not 0.0 <= initial <= final:
        raise ValueError(f"initial={initial!r} is not allowed; the initial sparsity must be in [0, final={final}]")
    _check_window(start, end)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every={every!r} is not allowed; it must be an integer >= 1 (prune every `every` steps)")


def agp_sparsity(step: int, initial: float, final: float, start: int, end: int, every: int = 1) -> float:
    """Automated gradual pruning (Zhu & Gupta 2017, "To prune, or not to prune"), cubic schedule.

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3``  for ``t0 <= t <= t0 + n*dt``

    with ``s_i = initial``, ``s_f = final``, ``t0 = start``, ``n * dt = end - start`` and ``dt = every``:
    the masks change only every ``every`` optimizer steps, so ``t`` is quantised down to the last multiple of
    ``every`` since ``start``. Outside the window:

    * ``step < start``: ``0.0`` (no pruning yet, even when ``initial > 0``); at ``step == start`` the target
      jumps to ``initial``.
    * ``step >= end``: ``final`` (held). When ``end - start`` is not a multiple of ``every``, the last update
      happens at ``end`` itself so the run always reaches ``final`` there.
    * ``start == end``: one-shot, ``final`` from ``start`` on.

    Args:
        step: optimizer steps done (``trainer.global_step``), >= 0.
        initial: sparsity at ``start``, in ``[0, final]``.
        final: sparsity from ``end`` on, in ``[0, 1)``.
        start, end: first and last pruning step, ``0 <= start <= end``.
        every: prune every ``every`` steps, >= 1.

    Returns:
        The target sparsity (fraction of zeros) in ``[0, final]``.
    """
    check_agp_args(initial, final, start, end, every)
    _check_step("step", step)
    if step < start:
        return 0.0
    if step >= end:
        return float(final)
    t = start + ((step - start) // every) * every
    frac = (t - start) / (end - start)
    return float(final + (initial - final) * (1.0 - frac) ** 3)


def oneshot_sparsity(step: int, final: float, at: int) -> float:
    """One-shot pruning: ``0.0`` before step ``at``, ``final`` from ``at`` on (``final`` in ``[0, 1)``)."""
    _check_final(final)
    _check_step("at", at)
    _check_step("step", step)
    return float(final) if step >= at else 0.0


def iterative_prune_steps(start: int, end: int, iterations: int) -> list[int]:
    """The steps at which iterative pruning prunes: ``iterations`` points spaced evenly from ``start`` to ``end``.

    Pruning event ``k = 1..iterations`` happens at ``start + floor((k - 1) * (end - start) / (iterations - 1))``
    (just ``start`` when ``iterations == 1``), so the first is at ``start`` and the last at ``end``.
    """
    _check_window(start, end)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations={iterations!r} is not allowed; it must be an integer >= 1")
    if iterations == 1:
        return [start]
    return [start + ((k - 1) * (end - start)) // (iterations - 1) for k in range(1, iterations + 1)]


def iterative_sparsity(step: int, final: float, start: int, end: int, iterations: int) -> float:
    """Iterative magnitude pruning in ``iterations`` equal-ratio rounds between ``start`` and ``end``.

    Each round removes the same fraction of the weights still alive, so after ``k`` rounds the kept fraction is
    ``(1 - s_f) ** (k / iterations)``, i.e. ``s_k = 1 - (1 - s_f) ** (k / iterations)``; the last round lands
    exactly on ``final``. Rounds happen at the steps of :func:`iterative_prune_steps`. ``0.0`` before ``start``.
    """
    _check_final(final)
    steps = iterative_prune_steps(start, end, iterations)
    _check_step("step", step)
    k = sum(1 for s in steps if step >= s)
    if k == 0:
        return 0.0
    if k >= iterations:
        return float(final)
    return float(1.0 - math.pow(1.0 - final, k / iterations))


def optimizer_steps_per_epoch(trainer) -> int | None:
    """Optimizer steps per training epoch of a Lightning ``trainer`` (batches over gradient accumulation), or None
    when its train dataloader has no length. Shared by the pruning schedule and the LR schedule in epochs."""
    n = trainer.num_training_batches
    if not isinstance(n, (int, float)) or not math.isfinite(n) or n <= 0:
        return None
    return max(1, math.ceil(n / max(1, trainer.accumulate_grad_batches)))

