"""Where the DLMC sample (Deep Learning Matrix Collection, ``<model>/<method>/<sparsity>/<layer>.smtx``) is.

One resolver for every user (export's report, the study, tests), in this order:

1. an explicit folder (``dlmc=<path>`` in ``export.py``, ``dlmc_dir=`` in the study);
2. ``$SPRUCE_DLMC``;
3. ``../shared/dlmc`` relative to the repository root (a checkout next to a shared data folder).

No path of a particular machine is built in: point ``$SPRUCE_DLMC`` at your copy.
"""
from __future__ import annotations

import os
from pathlib import Path

#: the repository-relative place, tried last
REPO_RELATIVE = Path("..") / "shared" / "dlmc"
ENV = "SPRUCE_DLMC"


def repo_root() -> Path:
    """The checkout this package lives in (``spruce/`` is one level below it)."""
    return Path(__file__).resolve().parents[2]


def candidates(explicit: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """``(how, folder)`` in the order they are tried."""
    out = []
    if explicit is not None:
        out.append(("given", Path(explicit)))
    if os.environ.get(ENV):
        out.append((f"${ENV}", Path(os.environ[ENV])))
    out.append(("next to the repository", (repo_root() / REPO_RELATIVE).resolve()))
    return out


def find_dlmc(explicit: str | os.PathLike | None = None) -> Path | None:
    """The first existing DLMC folder of ``candidates(explicit)``, or None. An explicit folder that does not exist
    is an error (ValueError), not a fallback: a typo should not silently read another copy."""
    if explicit is not None and not Path(explicit).is_dir():
        raise ValueError(f"DLMC folder {str(explicit)!r} does not exist")
    return next((p for _, p in candidates(explicit) if p.is_dir()), None)


def require_dlmc(explicit: str | os.PathLike | None = None) -> Path:
    """``find_dlmc`` or a ValueError that lists where it looked and how to point at a copy."""
    found = find_dlmc(explicit)
    if found is None:
        tried = "; ".join(f"{how}: {p}" for how, p in candidates(explicit))
        raise ValueError(f"no DLMC sample found ({tried}); set ${ENV}=<folder of .smtx> or pass the folder")
    return found
