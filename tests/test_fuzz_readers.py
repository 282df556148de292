"""Hypothesis fuzz of every sparse-file reader (issue 18): random headers, offsets, indices, truncations and lying
sizes. A reader accepts exactly the valid files (an independent oracle decides), raises only ``ValueError`` on the
rest, and never allocates more than the file could describe (tracemalloc peak bounded by the file's size).
"""
from __future__ import annotations

import io
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spruce.perf.matrices import read_smtx as perf_read_smtx
from spruce.sparse.files import MAX_DIM, read_mtx, read_npz, read_smtx, read_smtx_header

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                    derandomize=True)
SIZE = st.one_of(st.integers(0, 6), st.sampled_from([-1, 2 ** 31, 3 * 10 ** 9, 10 ** 12, MAX_DIM + 1]))


@st.composite
def structures(draw):
    """``(m, k, nnz, offsets, columns)`` -- a valid CSR about half the time, otherwise perturbed."""
    m, k = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    rows = [sorted(draw(st.sets(st.integers(0, k - 1), max_size=k))) if k else [] for _ in range(m)]
    offsets = [0]
    for r in rows:
        offsets.append(offsets[-1] + len(r))
    cols = [c for r in rows for c in r]
    nnz = len(cols)
    how = draw(st.sampled_from(["valid", "valid", "header", "offsets", "columns"]))
    if how == "header":
        m, k, nnz = draw(st.sampled_from([(draw(SIZE), k, nnz), (m, draw(SIZE), nnz), (m, k, draw(SIZE))]))
    elif how == "offsets" and offsets:
        offsets[draw(st.integers(0, len(offsets) - 1))] = draw(st.integers(-3, 9))
    elif how == "columns" and cols:
        cols[draw(st.integers(0, len(cols) - 1))] = draw(st.integers(-3, 9))
    return m, k, nnz, offsets, cols


def valid(m, k, nnz, offsets, cols) -> bool:
    """The oracle: an independent statement of what a CSR structure must satisfy."""
    if not (0 <= m <= MAX_DIM and 0 <= k <= MAX_DIM and 0 <= nnz <= m * k):
        return False
    if len(offsets) != m + 1 or len(cols) != nnz or offsets[0] != 0 or offsets[-1] != nnz:
        return False
    if any(b < a for a, b in zip(offsets, offsets[1:])):
        return False
    for i in range(m):
        row = cols[offsets[i]:offsets[i + 1]]
        if any(not 0 <= c < k for c in row) or len(set(row)) != len(row):
            return False
    return True


def _check_csr(csr, m, k, offsets, cols) -> None:
    assert tuple(csr.shape) == (m, k)
    assert csr.indptr.tolist() == offsets
    assert csr.indices.tolist() == cols


def _call(reader, path: Path):
    """``reader(path)`` under tracemalloc: ``(result or the ValueError, peak bytes)``; anything else propagates."""
    tracemalloc.start()
    try:
        try:
            out = reader(path)
        except ValueError as e:
            out = e
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, peak


def _bounded(peak: int, path: Path) -> None:
    assert peak <= 64 * path.stat().st_size + (4 << 20), f"peak {peak} B for a {path.stat().st_size} B file"


def _cut(draw, data: bytes) -> bytes:
    if draw(st.booleans()):
        return data
    return data[:draw(st.integers(0, max(len(data) - 1, 0)))]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _ints(a) -> str:
    return "".join(f"{v} " for v in a)


@SETTINGS
@given(s=structures(), data=st.data())
def test_smtx_readers(work, s, data) -> None:
    m, k, nnz, offsets, cols = s
    text = f"{m}, {k}, {nnz}\n{_ints(offsets)}\n{_ints(cols)}\n".encode()
    cut = _cut(data.draw, text)
    path = work / "f.smtx"
    path.write_bytes(cut)
    for reader in (read_smtx, perf_read_smtx):
        out, peak = _call(reader, path)
        _bounded(peak, path)
        if cut == text and valid(*s):
            assert not isinstance(out, ValueError), out
            csr = out if reader is read_smtx else None
            if csr is not None:
                _check_csr(csr, m, k, offsets, cols)
            else:
                assert out[:2] == (m, k) and out[2].tolist() == offsets and out[3].tolist() == cols
        elif cut == text:
            assert isinstance(out, ValueError), f"accepted an invalid file: {text!r}"
        elif not isinstance(out, ValueError):  # a truncation that still parses must be a valid structure
            csr = out if reader is read_smtx else None
            if csr is not None:
                assert valid(csr.shape[0], csr.shape[1], csr.nnz, csr.indptr.tolist(), csr.indices.tolist())
    hdr, _ = _call(read_smtx_header, path)
    if not isinstance(hdr, ValueError):
        assert 0 <= hdr[0] <= MAX_DIM and 0 <= hdr[1] <= MAX_DIM and hdr[2] <= hdr[0] * hdr[1]


@SETTINGS
@given(s=structures(), data=st.data())
def test_mtx_reader(work, s, data) -> None:
    m, k, nnz, offsets, cols = s
    rows = [i for i in range(m) for _ in range(max(0, offsets[i + 1] - offsets[i]))] if len(offsets) == m + 1 else []
    entries = list(zip(rows, cols))
    text = (f"%%MatrixMarket matrix coordinate real general\n{m} {k} {nnz}\n"
            + "".join(f"{r + 1} {c + 1} {0.5 + j}\n" for j, (r, c) in enumerate(entries))).encode()
    cut = _cut(data.draw, text)
    path = work / "f.mtx"
    path.write_bytes(cut)
    out, peak = _call(read_mtx, path)
    _bounded(peak, path)
    ok = (len(entries) == nnz and 0 <= m <= MAX_DIM and 0 <= k <= MAX_DIM and 0 <= nnz <= m * k
          and all(0 <= r < m and 0 <= c < k for r, c in entries) and len(set(entries)) == len(entries))
    if cut == text:
        assert isinstance(out, ValueError) != ok, (out, text)
    if not isinstance(out, ValueError):
        assert valid(out.shape[0], out.shape[1], out.nnz, out.indptr.tolist(), out.indices.tolist())


@SETTINGS
@given(s=structures(), data=st.data())
def test_npz_reader(work, s, data) -> None:
    m, k, nnz, offsets, cols = s
    dims_ok = all(-2 ** 31 <= v < 2 ** 31 for v in (m, k)) and all(-2 ** 31 <= v < 2 ** 31 for v in offsets + cols)
    if not dims_ok:
        return
    buf = io.BytesIO()
    np.savez(buf, indptr=np.array(offsets, np.int32), indices=np.array(cols, np.int32),
             values_bits=np.full(len(cols), 1.5, np.float32).view(np.int32), dtype=np.array("float32"),
             shape=np.array([m, k], np.int64), original_shape=np.array([m, k], np.int64))
    text = buf.getvalue()
    lie = data.draw(st.sampled_from([None, None, "indices", "indptr", "values_bits"]))
    if lie is not None:  # a header that declares far more elements than the member holds
        declared = data.draw(st.sampled_from([10 ** 6, 10 ** 9, 10 ** 12]))
        src, out_buf = zipfile.ZipFile(io.BytesIO(text)), io.BytesIO()
        with zipfile.ZipFile(out_buf, "w") as dst:
            for info in src.infolist():
                payload = src.read(info)
                if info.filename == lie + ".npy":
                    hdr = io.BytesIO()
                    np.lib.format.write_array_header_1_0(hdr, {"descr": "<i4", "fortran_order": False,
                                                                "shape": (declared,)})
                    payload = b"\x93NUMPY\x01\x00" + hdr.getvalue()[8:] + payload[128:]
                dst.writestr(info.filename, payload)
        text = out_buf.getvalue()
    cut = _cut(data.draw, text)
    path = work / "f.npz"
    path.write_bytes(cut)
    out, peak = _call(lambda p: read_npz(p)[0], path)
    _bounded(peak, path)
    if cut == text and lie is None:
        assert isinstance(out, ValueError) != valid(*s), (out, s)
    if lie is not None:
        assert isinstance(out, ValueError)
    if not isinstance(out, ValueError):
        assert valid(out.shape[0], out.shape[1], out.nnz, out.indptr.tolist(), out.indices.tolist())
