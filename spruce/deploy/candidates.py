"""Which registered kernels a plan may use on a device: all available ones, or a user's restricted list."""
from __future__ import annotations

from collections.abc import Sequence

from spruce.kernels import get as get_kernel
from spruce.kernels import kernels as registry_kernels
from spruce.kernels.registry import Kernel


def resolve_candidates(names: Sequence[str] | None, device: str, deploy: str) -> tuple[list[Kernel], list[str]]:
    """Kernel instances to try, and notes on the ones dropped.

    ``names=None``: every available kernel registered for ``device`` (new kernels appear with no change here).
    Otherwise each name must be registered (ValueError naming the known ones); a named kernel that is for another
    device or unavailable here is an error, except with ``deploy="auto"`` where it is dropped with a note (auto
    falls back to what works). ``deploy="sparse"`` needs at least one sparse-format candidate.
    """
    notes: list[str] = []
    if names is None:
        out = registry_kernels(device=device)
    else:
        out = []
        for n in names:
            k = get_kernel(n)  # ValueError for an unknown name, listing the registered ones
            ok, why = k.is_available()
            problem = None
            if k.device != device:
                problem = f"kernel {n!r} runs on {k.device}, not on device={device}"
            elif not ok:
                problem = f"kernel {n!r} is unavailable on {device}: {why}"
            if problem:
                if deploy != "auto":
                    raise ValueError(f"{problem} (deploy=auto would fall back to the other kernels)")
                notes.append(f"{problem}; dropped (deploy=auto falls back)")
                continue
            out.append(k)
    if deploy == "sparse" and not any(k.format != "dense" for k in out):
        have = ", ".join(k.name for k in out) or "none"
        raise ValueError(f"deploy=sparse needs a sparse kernel on {device}, but the candidates are: {have}")
    return out, notes
