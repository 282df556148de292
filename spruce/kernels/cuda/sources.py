"""The CUDA sources of Spruce's own kernels and the kernel instantiations each one exports.

One list serves three consumers, so they cannot drift apart: CuPy's ``RawModule(name_expressions=...)`` on a GPU,
the NVRTC compile check in CI, and the CPU emulator's export table (``emu.py``).
"""
from __future__ import annotations

import re
from pathlib import Path

SRC_DIR = Path(__file__).resolve().parent / "src"
EMU_DIR = Path(__file__).resolve().parent / "emu"

SUBWARP_WIDTHS = (4, 8, 16, 32)
ROWTILE_THREADS = (32, 64, 128)

#: source file -> kernel name expressions (templates spelled exactly as launchers name them, no spaces)
KERNELS: dict[str, tuple[str, ...]] = {
    "csr_spmm.cu": tuple(
        [f"csr_spmm_subwarp<{sw},{'true' if v else 'false'}>" for sw in SUBWARP_WIDTHS for v in (False, True)]
        + [f"csr_linear_subwarp<{sw}>" for sw in SUBWARP_WIDTHS]
        + [f"csr_spmm_rowtile<{v}>" for v in (1, 4)]),
    "dense_to_csr.cu": ("dense_count_rows", "exclusive_scan_rows", "dense_scatter_rows"),
}

#: test-only sources (in emu/): kernels that pin down the emulator's semantics and fault detection; compiled by
#: NVRTC in CI like the others but never loaded by CuPy
TEST_KERNELS: dict[str, tuple[str, ...]] = {
    "selftest.cu": ("emu_shuffle_semantics", "emu_exit_before_barrier", "emu_half_warp_shuffle",
                    "emu_read_neighbour_without_barrier"),
}

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)


def source_path(name: str) -> Path:
    """Path of a ``.cu`` source by file name; ValueError naming the known ones otherwise."""
    if name in KERNELS:
        return SRC_DIR / name
    if name in TEST_KERNELS:
        return EMU_DIR / name
    raise ValueError(f"unknown CUDA source {name!r}; known: {', '.join(sorted(KERNELS) + sorted(TEST_KERNELS))}")


def kernel_names(source: str) -> tuple[str, ...]:
    """The kernel name expressions a source exports."""
    source_path(source)
    return KERNELS.get(source) or TEST_KERNELS[source]


def expanded_source(name: str) -> str:
    """The source text with local ``#include "..."`` lines replaced by the header's text (once each).

    CuPy keys its on-disk kernel cache on the code string only, so headers must be inlined or an edited
    header would be served stale from the cache; NVRTC then needs no include path either.
    """
    seen: set[str] = set()

    def expand(text: str) -> str:
        def sub(match: re.Match) -> str:
            header = match.group(1)
            if header in seen:
                return ""
            seen.add(header)
            path = SRC_DIR / header
            if not path.is_file():
                raise ValueError(f"{name}: included header {header!r} not found in {SRC_DIR}")
            return expand(path.read_text())
        return _INCLUDE.sub(sub, text)

    return expand(source_path(name).read_text())


def source_of(kernel: str) -> str:
    """The source file exporting a kernel name expression."""
    for src, names in KERNELS.items():
        if kernel in names:
            return src
    raise ValueError(f"unknown CUDA kernel {kernel!r}; known: {', '.join(n for v in KERNELS.values() for n in v)}")
