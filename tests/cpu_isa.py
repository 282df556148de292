"""Fixtures shared by the CPU-kernel test modules: import ``extension`` and ``isa`` into a module and every test there
runs once per instruction set the CPU has (forced through ``$SPRUCE_ISA``), with the extension built once."""
from __future__ import annotations

import pytest

from spruce.kernels.cpu import build


@pytest.fixture(scope="module", autouse=True)
def extension():
    """Build (or load the cached) extension once for the module; skip with the reason where it cannot."""
    ok, why = build.availability()
    if not ok:
        pytest.skip(f"spruce_cpu unavailable: {why}")
    return build.load()


@pytest.fixture(autouse=True, params=list(build.ISAS))
def isa(request, monkeypatch):
    """Every test runs once per instruction set (forced through $SPRUCE_ISA), where the CPU has it."""
    if request.param not in build.cpu_isas():
        pytest.skip(f"this CPU lacks {request.param} (it has {build.cpu_isas()})")
    monkeypatch.setenv(build.ENV, request.param)
    assert build.isa() == request.param and build.isa("conv") == request.param
    return request.param
