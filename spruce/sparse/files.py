"""Sparse matrix files: ``.smtx`` (DLMC), ``.mtx`` (Matrix Market) and ``.npz`` (CSR, bit-exact values).

``.smtx`` -- the Deep Learning Matrix Collection's text format, topology only (byte-compatible with DLMC's own
files; ``spruce.sparse.dlmc`` finds the sample)::

    M, K, nnz\\n
    o_0 o_1 ... o_M \\n          (M+1 row offsets, each followed by one space)
    c_0 c_1 ... c_{nnz-1} \\n    (column indices, each followed by one space; an empty line when nnz = 0)

``.mtx`` -- Matrix Market ``coordinate real general``, 1-based ``i j value`` lines in row-major order. Values
are printed with ``%.9g`` (float32/16/bf16, exactly representable as float32) or ``%.17g`` (float64), so
reading back and casting to the original dtype is bit-exact. ``scipy.io.mmread`` reads these files.

``.npz`` -- ``indptr``/``indices`` int32, ``values`` (raw bits of the dtype named in ``dtype``, which also
covers bfloat16), ``shape`` ``[M, K]``, ``original_shape`` (e.g. a conv's ``[C_out, C_in, kh, kw]``).

Every writer writes a temporary file in the target directory and renames it into place. Every reader raises
``ValueError`` with one line naming the file and what is wrong on truncated or malformed input, and checks the
sizes a file declares (against ``MAX_DIM`` and against what the file's length can hold) before allocating
anything sized by them; duplicate ``(row, column)`` positions are refused in every format.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch

from spruce.io import atomic_write
from spruce.sparse.formats import CSR, INDEX_DTYPE

#: the largest M or K a sparse file may declare (2**26 rows: a 0.5 GiB int64 offsets array). Real layers are far
#: below it (VGG-16's largest K is 25088); a hostile header above it would otherwise ask for gigabytes.
MAX_DIM = 1 << 26
#: deflate cannot expand data more than ~1032x: an .npz member claiming more than this is not a real file
_MAX_DEFLATE_RATIO = 1100

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                 "bfloat16": torch.bfloat16}
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
         torch.bfloat16: torch.int16}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``; ValueError for dtypes the files cannot hold."""
    for name, d in _TORCH_DTYPES.items():
        if d == dtype:
            return name
    raise ValueError(f"unsupported value dtype {dtype}; allowed: {', '.join(_TORCH_DTYPES)}")


def torch_dtype(name: str) -> torch.dtype:
    if name not in _TORCH_DTYPES:
        raise ValueError(f"unknown dtype name {name!r}; allowed: {', '.join(_TORCH_DTYPES)}")
    return _TORCH_DTYPES[name]


def _ints_text(a: np.ndarray) -> str:
    """``"a0 a1 ... an "`` -- every number followed by one space, as DLMC writes them."""
    if a.size == 0:
        return ""
    return " ".join(map(str, a.tolist())) + " "


# ---- .smtx ----------------------------------------------------------------------------------------------
def smtx_bytes(csr: CSR) -> bytes:
    """The DLMC ``.smtx`` text of ``csr``'s structure (values are not part of the format)."""
    m, k = csr.shape
    head = f"{m}, {k}, {csr.nnz}\n"
    return (head + _ints_text(csr.indptr.numpy()) + "\n" + _ints_text(csr.indices.numpy()) + "\n").encode()


def write_smtx(path: str | Path, csr: CSR) -> Path:
    """Write the structure of ``csr`` as a DLMC ``.smtx`` file (atomic)."""
    return atomic_write(path, smtx_bytes(csr))


def _parse_ints(text: str, what: str, path: Path) -> np.ndarray:
    try:
        return np.array(text.split(), dtype=np.int64)
    except ValueError:
        bad = next((t for t in text.split() if not t.lstrip("-").isdigit()), "?")
        raise ValueError(f"{path}: {what} holds a non-integer token {bad[:20]!r}") from None


def check_sizes(path: Path, m: int, k: int, nnz: int) -> None:
    """The declared sizes are sane before anything sized by them is allocated: non-negative, ``M, K <= MAX_DIM``,
    ``nnz <= M*K``. (Entries are parsed in proportion to the file's length, so nnz needs no other bound.)"""
    if m < 0 or k < 0 or nnz < 0:
        raise ValueError(f"{path}: negative size in header M={m}, K={k}, nnz={nnz}")
    if m > MAX_DIM or k > MAX_DIM:
        raise ValueError(f"{path}: header declares {m}x{k}; at most {MAX_DIM} rows and columns are supported")
    if nnz > m * k:
        raise ValueError(f"{path}: header declares nnz={nnz} but {m}x{k} holds at most {m * k} entries")


def _check_structure(path: Path, m: int, k: int, nnz: int, indptr: np.ndarray, indices: np.ndarray) -> None:
    check_sizes(path, m, k, nnz)
    if indptr.size != m + 1:
        raise ValueError(f"{path}: expected M+1={m + 1} row offsets, found {indptr.size} (truncated or malformed)")
    if indices.size != nnz:
        raise ValueError(f"{path}: expected nnz={nnz} column indices, found {indices.size} (truncated or malformed)")
    if indptr[0] != 0 or indptr[-1] != nnz:
        raise ValueError(f"{path}: row offsets must run from 0 to nnz={nnz}, got {indptr[0]}..{indptr[-1]}")
    if m and (np.diff(indptr) < 0).any():
        row = int(np.argmax(np.diff(indptr) < 0))
        raise ValueError(f"{path}: row offsets decrease at row {row} ({indptr[row]} -> {indptr[row + 1]})")
    if nnz and (indices.min() < 0 or indices.max() >= k):
        bad = int(indices[(indices < 0) | (indices >= k)][0])
        raise ValueError(f"{path}: column index {bad} out of range [0, {k})")
    if max(m, k, nnz) > torch.iinfo(INDEX_DTYPE).max:
        raise ValueError(f"{path}: {m}x{k} with nnz={nnz} exceeds int32 indexing")
    if nnz > 1:  # a position stored twice would be summed by some readers and kept twice by others
        rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(indptr))
        key = np.sort(rows * k + indices)
        dup = np.flatnonzero(key[1:] == key[:-1])
        if dup.size:
            r, c = divmod(int(key[dup[0]]), k)
            raise ValueError(f"{path}: duplicate entry at row {r}, column {c}")


def read_smtx_header(path: str | Path) -> tuple[int, int, int]:
    """``(M, K, nnz)`` from the first line of a ``.smtx`` file, checked like ``read_smtx`` checks it (the body is
    not read: ``read_smtx`` validates the rest)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            line = f.readline(200).decode("ascii", errors="replace").rstrip("\n")
    except OSError as e:
        raise ValueError(f"{path}: cannot read .smtx file ({e.strerror or e})") from None
    head = [s.strip() for s in line.split(",")]
    if len(head) != 3 or not all(s.isascii() and s.isdigit() for s in head):
        raise ValueError(f"{path}: header must be 'M, K, nnz', got {line[:60]!r}")
    m, k, nnz = (int(s) for s in head)
    check_sizes(path, m, k, nnz)
    return m, k, nnz


def read_smtx(path: str | Path, values: str = "ones", seed: int = 0,
              dtype: torch.dtype = torch.float32) -> CSR:
    """Read a DLMC ``.smtx`` file as CSR.

    The format has no values: ``values="ones"`` fills 1.0, ``values="uniform"`` draws U[-1, 1) from ``seed``
    (what DLMC suggests for kernel benchmarks).
    """
    path = Path(path)
    if values not in ("ones", "uniform"):
        raise ValueError(f"values={values!r}; allowed: ones, uniform")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read .smtx file ({e})") from None
    lines = text.split("\n")
    if len(lines) < 3 or (len(lines) > 3 and any(s.strip() for s in lines[3:])):
        raise ValueError(f"{path}: a .smtx file has 3 lines (header, row offsets, column indices); "
                         f"found {len([s for s in lines if s.strip()])} non-empty")
    head = [s.strip() for s in lines[0].split(",")]
    if len(head) != 3 or not all(s.isascii() and s.isdigit() for s in head):
        raise ValueError(f"{path}: header must be 'M, K, nnz', got {lines[0][:60]!r}")
    m, k, nnz = (int(s) for s in head)
    check_sizes(path, m, k, nnz)  # (parsing below allocates in proportion to the file, not to the header)
    indptr = _parse_ints(lines[1], "row offsets line", path)
    indices = _parse_ints(lines[2], "column indices line", path)
    _check_structure(path, m, k, nnz, indptr, indices)
    if values == "ones":
        vals = torch.ones(nnz, dtype=dtype)
    else:
        rng = np.random.default_rng(seed)
        vals = torch.from_numpy(rng.uniform(-1.0, 1.0, nnz).astype(np.float32)).to(dtype)
    return CSR(torch.from_numpy(indptr.astype(np.int32)), torch.from_numpy(indices.astype(np.int32)), vals,
               (m, k))


# ---- .mtx -----------------------------------------------------------------------------------------------
def mtx_bytes(csr: CSR, comment: str | None = None) -> bytes:
    """Matrix Market ``coordinate real general`` text of ``csr`` (1-based, row-major, exact values)."""
    m, k = csr.shape
    fmt = "%.17g" if csr.values.dtype == torch.float64 else "%.9g"
    vals = csr.values.to(torch.float64 if csr.values.dtype == torch.float64 else torch.float32).numpy()
    rows = np.repeat(np.arange(1, m + 1, dtype=np.int64), csr.row_lengths().numpy())
    cols = csr.indices.numpy().astype(np.int64) + 1
    buf = io.StringIO()
    buf.write("%%MatrixMarket matrix coordinate real general\n")
    if comment:
        for line in comment.splitlines():
            buf.write(f"% {line}\n")
    buf.write(f"{m} {k} {csr.nnz}\n")
    if csr.nnz:
        # .tolist() turns float32 into the exactly equal Python float; %.9g of it round-trips the float32.
        line = f"%d %d {fmt}\n"
        buf.write("".join(map(line.__mod__, zip(rows.tolist(), cols.tolist(), vals.tolist()))))
    return buf.getvalue().encode()


def write_mtx(path: str | Path, csr: CSR, comment: str | None = None) -> Path:
    """Write ``csr`` as a Matrix Market coordinate file (atomic)."""
    return atomic_write(path, mtx_bytes(csr, comment))


def read_mtx(path: str | Path, dtype: torch.dtype = torch.float32) -> CSR:
    """Read a Matrix Market ``coordinate real|integer|pattern general`` file as CSR with ``dtype`` values.

    Entries may come in any order; duplicates are an error (they would be summed by other readers).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read .mtx file ({e})") from None
    lines = text.split("\n")
    banner = lines[0].split()
    if len(banner) != 5 or banner[0].lower() != "%%matrixmarket" or banner[1].lower() != "matrix":
        raise ValueError(f"{path}: missing '%%MatrixMarket matrix ...' banner, got {lines[0][:60]!r}")
    layout, field, symmetry = (b.lower() for b in banner[2:])
    if layout != "coordinate" or field not in ("real", "integer", "pattern") or symmetry != "general":
        raise ValueError(f"{path}: only 'coordinate real|integer|pattern general' is supported, got "
                         f"{layout} {field} {symmetry}")
    i = 1
    while i < len(lines) and (lines[i].startswith("%") or not lines[i].strip()):
        i += 1
    if i >= len(lines):
        raise ValueError(f"{path}: missing size line 'M K nnz' (truncated)")
    size = lines[i].split()
    if len(size) != 3 or not all(s.isascii() and s.isdigit() for s in size):
        raise ValueError(f"{path}: size line must be 'M K nnz', got {lines[i][:60]!r}")
    m, k, nnz = (int(s) for s in size)
    per = 2 if field == "pattern" else 3
    body = "\n".join(lines[i + 1:])
    check_sizes(path, m, k, nnz)  # before the M+1 offsets below are allocated
    try:  # numpy's C parser; float64 holds the 1-based indices exactly and every %.9g/%.17g value exactly
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data" for nnz = 0
            table = np.loadtxt(io.StringIO(body), dtype=np.float64, comments="%", ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: malformed entry ({str(e).splitlines()[0][:120]})") from None
    if table.size == 0:
        table = np.zeros((0, per))
    if table.shape != (nnz, per):
        raise ValueError(f"{path}: expected {nnz} entries of {per} fields, found {table.shape[0]} lines of "
                         f"{table.shape[1]} (truncated or malformed)")
    rows, cols = table[:, 0], table[:, 1]
    if nnz and (rows != np.floor(rows)).any() | (cols != np.floor(cols)).any():
        raise ValueError(f"{path}: malformed entry (non-integer row/column index)")
    rows, cols = rows.astype(np.int64) - 1, cols.astype(np.int64) - 1
    vals = table[:, 2] if per == 3 else np.ones(nnz)
    if nnz and (rows.min() < 0 or rows.max() >= m):
        raise ValueError(f"{path}: row index out of range [1, {m}]")
    if nnz and (cols.min() < 0 or cols.max() >= k):
        raise ValueError(f"{path}: column index out of range [1, {k}]")
    key = rows * max(k, 1) + cols
    order = np.argsort(key, kind="stable")
    if nnz and (np.diff(key[order]) == 0).any():
        raise ValueError(f"{path}: duplicate entries")
    indptr = np.zeros(m + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(np.bincount(rows, minlength=m))
    _check_structure(path, m, k, nnz, indptr, cols)
    if nnz and not np.isfinite(vals).all():
        raise ValueError(f"{path}: non-finite value (NaN or Inf) in entry {int(np.flatnonzero(~np.isfinite(vals))[0]) + 1}")
    values = torch.from_numpy(vals[order]).to(dtype)
    return CSR(torch.from_numpy(indptr.astype(np.int32)), torch.from_numpy(cols[order].astype(np.int32)),
               values, (m, k))


# ---- .npz -----------------------------------------------------------------------------------------------
def write_npz(path: str | Path, csr: CSR, original_shape: tuple[int, ...] | None = None) -> Path:
    """Write CSR structure + values (raw bits, any supported dtype) + shapes as an uncompressed ``.npz``."""
    name = dtype_name(csr.values.dtype)
    bits = csr.values.contiguous().view(_BITS[csr.values.dtype]).numpy()
    buf = io.BytesIO()
    np.savez(buf, indptr=csr.indptr.numpy().astype(np.int32), indices=csr.indices.numpy().astype(np.int32),
             values_bits=bits, dtype=np.array(name), shape=np.array(csr.shape, dtype=np.int64),
             original_shape=np.array(original_shape if original_shape is not None else csr.shape,
                                     dtype=np.int64))
    return atomic_write(path, buf.getvalue())


def _check_npz_members(path: Path, names: tuple[str, ...]) -> None:
    """Before numpy allocates anything: every member is a plain ``.npy`` whose header's shape fits the member's
    size, and no member claims more bytes than the archive could expand to (a lying header or a zip bomb)."""
    import zipfile
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as zf:
            for n in names:
                try:
                    info = zf.getinfo(n + ".npy")
                except KeyError:
                    continue  # reported as missing below
                if info.file_size > max(info.compress_size, 1) * _MAX_DEFLATE_RATIO or info.compress_size > size:
                    raise ValueError(f"{path}: member {n} claims {info.file_size} bytes from {info.compress_size}")
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dt = read(f)
                    if dt.hasobject:
                        raise ValueError(f"{path}: member {n} holds Python objects (refused)")
                    if int(np.prod(shape, dtype=object)) * dt.itemsize > info.file_size:
                        raise ValueError(f"{path}: member {n} declares shape {list(shape)} of {dt}, more than its "
                                         f"{info.file_size} bytes (truncated or malformed)")
    except ValueError as e:
        raise ValueError(f"{path}: cannot read .npz ({e})" if not str(e).startswith(str(path)) else str(e)) from None
    except Exception as e:  # noqa: BLE001 - BadZipFile, EOFError, OSError: a truncated/corrupt file
        raise ValueError(f"{path}: cannot read .npz ({type(e).__name__}: {str(e)[:120]})") from None


def read_npz(path: str | Path) -> tuple[CSR, tuple[int, ...]]:
    """Read a ``.npz`` written by ``write_npz``: ``(csr, original_shape)``, values bit-exact."""
    path = Path(path)
    need = ("indptr", "indices", "values_bits", "dtype", "shape", "original_shape")
    _check_npz_members(path, need)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [n for n in need if n not in z.files]
            if missing:
                raise ValueError(f"{path}: not a Spruce CSR .npz (missing {', '.join(missing)})")
            arrs = {n: z[n] for n in need}
    except ValueError:
        raise
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError: a truncated/corrupt file
        raise ValueError(f"{path}: cannot read .npz ({type(e).__name__}: {e})") from None
    try:
        dtype = torch_dtype(str(arrs["dtype"]))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    for n in ("indptr", "indices", "shape", "original_shape"):
        if arrs[n].dtype.kind not in "iu" or arrs[n].ndim != 1:
            raise ValueError(f"{path}: {n} must be a 1-D integer array, got {arrs[n].dtype} with {arrs[n].ndim} dims")
    shape = tuple(int(s) for s in arrs["shape"])
    if len(shape) != 2:
        raise ValueError(f"{path}: shape must be [M, K], got {list(shape)}")
    m, k = shape
    indptr, indices = arrs["indptr"].astype(np.int64), arrs["indices"].astype(np.int64)
    _check_structure(path, m, k, int(indices.size), indptr, indices)
    bits = arrs["values_bits"]
    if bits.size != indices.size or bits.dtype.itemsize != torch.empty((), dtype=dtype).element_size():
        raise ValueError(f"{path}: values ({bits.size} x {bits.dtype}) do not match nnz={indices.size} of {dtype}")
    values = torch.from_numpy(bits.copy()).view(dtype)
    if values.numel() and not torch.isfinite(values).all():
        raise ValueError(f"{path}: non-finite value (NaN or Inf) among the values")
    original = tuple(int(s) for s in arrs["original_shape"])
    if any(s < 0 for s in original) or int(np.prod(original, dtype=object)) != m * k:
        raise ValueError(f"{path}: original_shape {list(original)} does not hold {m}x{k} entries")
    csr = CSR(torch.from_numpy(indptr.astype(np.int32)), torch.from_numpy(indices.astype(np.int32)), values, shape)
    return csr, original


FORMATS = ("smtx", "mtx", "npz")
