"""Compile Spruce's CUDA sources with NVRTC (no GPU needed), failing on any error or warning.

This is what CuPy's ``RawModule`` does on a GPU; CI runs it for every target architecture so a compile error
or warning never reaches a user. Uses ``cuda.bindings.nvrtc`` (installed with PyTorch's CUDA wheels).
"""
from __future__ import annotations

from dataclasses import dataclass

from spruce.kernels.cuda.sources import expanded_source, kernel_names

#: options shared with the CuPy RawModule path (plus the architecture)
COMPILE_OPTIONS: tuple[str, ...] = ("-std=c++17",)


class CudaCompileError(ValueError):
    """NVRTC reported an error or a warning; the message holds the compiler log."""


@dataclass
class CompileResult:
    """Output of one NVRTC compilation."""
    source: str                 # file name, e.g. "csr_spmm.cu"
    arch: str                   # e.g. "sm_80"
    binary: bytes               # CUBIN for a real sm_XX target
    log: str                    # compiler log (empty on success)
    lowered_names: dict[str, str]  # name expression -> mangled symbol in the CUBIN


def _check(result, what: str) -> None:
    from cuda.bindings import nvrtc
    err = result[0] if isinstance(result, tuple) else result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CudaCompileError(f"NVRTC {what} failed: {nvrtc.nvrtcGetErrorString(err)[1].decode()}")


def compile_source(source: str, arch: str = "sm_80", defines: tuple[str, ...] = (),
                   extra_options: tuple[str, ...] = ()) -> CompileResult:
    """Compile one ``.cu`` source (headers inlined) to a CUBIN for ``arch`` (``sm_80``, ``sm_90``, ...).

    Raises CudaCompileError when compilation fails or when the log mentions a warning, and ValueError when
    ``arch`` is not of the form ``sm_NN``.
    """
    from cuda.bindings import nvrtc

    if not (arch.startswith("sm_") and arch[3:].rstrip("a").isdigit()):
        raise ValueError(f"arch must look like 'sm_80' or 'sm_90a', got {arch!r}")
    code = expanded_source(source).encode()
    names = kernel_names(source)
    err, prog = nvrtc.nvrtcCreateProgram(code, source.encode(), 0, [], [])
    _check(err, "create program")
    try:
        for name in names:
            _check(nvrtc.nvrtcAddNameExpression(prog, name.encode()), f"add name expression {name}")
        opts = [o.encode() for o in (*COMPILE_OPTIONS, f"--gpu-architecture={arch}",
                                     *(f"-D{d}" for d in defines), *extra_options)]
        (compile_err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        err, size = nvrtc.nvrtcGetProgramLogSize(prog)
        _check(err, "get log size")
        # A fresh mutable buffer: NVRTC writes into it. (`b" " * size` would hand NVRTC an immutable bytes
        # object, and for size 1 CPython's shared one-byte singleton, corrupting every later b" " in the process.)
        buf = bytearray(size + 1)
        _check(nvrtc.nvrtcGetProgramLog(prog, buf), "get log")
        log = bytes(buf).rstrip(b"\x00").decode(errors="replace").strip()
        if compile_err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CudaCompileError(f"{source} ({arch}) does not compile:\n{log}")
        if "warning" in log.lower():
            raise CudaCompileError(f"{source} ({arch}) compiles with warnings:\n{log}")
        lowered = {}
        for name in names:
            err, sym = nvrtc.nvrtcGetLoweredName(prog, name.encode())
            _check(err, f"lowered name of {name}")
            lowered[name] = sym.decode()
        err, size = nvrtc.nvrtcGetCUBINSize(prog)
        _check(err, "get CUBIN size")
        cubin = bytearray(size)
        _check(nvrtc.nvrtcGetCUBIN(prog, cubin), "get CUBIN")
        return CompileResult(source, arch, bytes(cubin), log, lowered)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
