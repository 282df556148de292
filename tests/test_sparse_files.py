""".smtx (DLMC byte layout), .mtx (scipy-readable, exact values), .npz: round trips and malformed input."""
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from spruce.sparse.files import (mtx_bytes, read_mtx, read_npz, read_smtx, smtx_bytes, write_mtx, write_npz,
                                 write_smtx)
from spruce.sparse.formats import dense_to_csr

from shared_data import DLMC  # noqa: E402
DLMC_SAMPLE = [DLMC / "rn50/magnitude_pruning/0.98/bottleneck_1_block_group1_1_1.smtx",
               DLMC / "transformer/random_pruning/0.9/body_encoder_layer_0_self_attention_multihead_attention_q_"
                      "fully_connected.smtx"]
needs_dlmc = pytest.mark.skipif(not DLMC.is_dir(), reason="DLMC sample not found (spruce.sparse.dlmc)")


def _w(m=13, k=29, density=0.3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.where(torch.rand(m, k, generator=g) < density, torch.randn(m, k, generator=g), torch.zeros(()))
    w[1] = 0  # an empty row
    return w.to(dtype)


def independent_smtx_reader(data: bytes):
    """A minimal reader written from the DLMC README, sharing no code with spruce.sparse.files."""
    head, offs, cols, tail = data.decode().split("\n")
    assert tail == ""
    m, k, nnz = [int(x) for x in head.split(", ")]
    offsets = [int(x) for x in offs.split(" ") if x != ""]
    indices = [int(x) for x in cols.split(" ") if x != ""]
    return m, k, nnz, offsets, indices


def test_smtx_layout_matches_independent_reader(tmp_path):
    w = _w()
    csr = dense_to_csr(w)
    p = write_smtx(tmp_path / "a.smtx", csr)
    data = p.read_bytes()
    m, k, nnz, offsets, indices = independent_smtx_reader(data)
    assert (m, k, nnz) == (13, 29, csr.nnz)
    assert offsets == csr.indptr.tolist() and indices == csr.indices.tolist()
    lines = data.split(b"\n")
    assert lines[1].endswith(b" ") and lines[2].endswith(b" ")  # DLMC: every number followed by a space
    back = read_smtx(p)
    assert torch.equal(back.indptr, csr.indptr) and torch.equal(back.indices, csr.indices)
    assert torch.equal(back.values, torch.ones(csr.nnz))


def test_smtx_empty_matrix(tmp_path):
    csr = dense_to_csr(torch.zeros(3, 4))
    p = write_smtx(tmp_path / "z.smtx", csr)
    assert p.read_bytes() == b"3, 4, 0\n0 0 0 0 \n\n"
    assert read_smtx(p).nnz == 0


@needs_dlmc
@pytest.mark.parametrize("path", DLMC_SAMPLE, ids=lambda p: p.parent.parent.parent.name)
def test_dlmc_file_rewritten_byte_identical(path, tmp_path):
    csr = read_smtx(path)
    out = write_smtx(tmp_path / path.name, csr)
    assert out.read_bytes() == path.read_bytes()
    m, k, nnz, offsets, indices = independent_smtx_reader(path.read_bytes())
    assert csr.shape == (m, k) and csr.nnz == nnz and csr.indptr.tolist() == offsets


def test_smtx_uniform_values_reproducible(tmp_path):
    p = write_smtx(tmp_path / "a.smtx", dense_to_csr(_w()))
    a, b = read_smtx(p, values="uniform", seed=3), read_smtx(p, values="uniform", seed=3)
    assert torch.equal(a.values, b.values) and float(a.values.abs().max()) <= 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_mtx_exact_and_scipy_readable(tmp_path, dtype):
    w = _w(dtype=dtype)
    w[0, 0] = 1e-38 if dtype != torch.float16 else 6e-5  # tiny values print with enough digits
    csr = dense_to_csr(w)
    p = write_mtx(tmp_path / "a.mtx", csr, comment="test")
    back = read_mtx(p, dtype=dtype)
    assert torch.equal(back.indptr, csr.indptr) and torch.equal(back.indices, csr.indices)
    assert torch.equal(back.values.view(torch.uint8), csr.values.view(torch.uint8))
    sp = scipy.io.mmread(p)
    dense = torch.from_numpy(np.asarray(sp.toarray())).to(dtype)
    assert torch.equal(dense, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_npz_bit_exact(tmp_path, dtype):
    w = _w(dtype=dtype)
    w[2, 2] = -0.0
    mask = w != 0
    mask[2, 2] = True
    csr = dense_to_csr(w, mask)
    back, orig = read_npz(write_npz(tmp_path / "a.npz", csr, (13, 29, 1, 1)))
    assert orig == (13, 29, 1, 1) and back.values.dtype == dtype
    assert torch.equal(back.values.view(torch.uint8), csr.values.view(torch.uint8))
    assert torch.equal(back.indices, csr.indices) and torch.equal(back.indptr, csr.indptr)


def test_writes_leave_no_temp_files(tmp_path):
    csr = dense_to_csr(_w())
    write_smtx(tmp_path / "a.smtx", csr)
    write_mtx(tmp_path / "a.mtx", csr)
    write_npz(tmp_path / "a.npz", csr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mtx", "a.npz", "a.smtx"]


SMTX_GOOD = b"2, 3, 3\n0 2 3 \n0 2 1 \n"
SMTX_BAD = {
    "truncated_indices": (b"2, 3, 3\n0 2 3 \n0 2 \n", "expected nnz=3"),
    "truncated_file": (b"2, 3, 3\n0 2 3 \n", "expected nnz=3 column indices, found 0"),
    "header_only": (b"2, 3, 3\n", "3 lines"),
    "empty": (b"", "3 lines"),
    "short_offsets": (b"2, 3, 3\n0 3 \n0 2 1 \n", "M\\+1=3"),
    "non_monotone": (b"2, 4, 3\n0 4 3 \n0 2 1 \n", "0 to nnz|decrease"),
    "col_out_of_range": (b"2, 3, 3\n0 2 3 \n0 3 1 \n", "column index 3 out of range"),
    "bad_header": (b"2 3 3\n0 2 3 \n0 2 1 \n", "header"),
    "garbage_token": (b"2, 3, 3\n0 2 x \n0 2 1 \n", "non-integer"),
    "extra_line": (b"2, 3, 3\n0 2 3 \n0 2 1 \n5 5\n", "3 lines"),
}


def test_smtx_good_fixture_reads(tmp_path):
    (tmp_path / "g.smtx").write_bytes(SMTX_GOOD)
    assert read_smtx(tmp_path / "g.smtx").to_dense().tolist() == [[1, 0, 1], [0, 1, 0]]


@pytest.mark.parametrize("name", list(SMTX_BAD))
def test_smtx_malformed_raises(tmp_path, name):
    data, match = SMTX_BAD[name]
    (tmp_path / "b.smtx").write_bytes(data)
    with pytest.raises(ValueError, match=match):
        read_smtx(tmp_path / "b.smtx")


MTX_HEAD = b"%%MatrixMarket matrix coordinate real general\n"
MTX_BAD = {
    "truncated": (MTX_HEAD + b"2 3 3\n1 1 1.5\n2 2 2\n", "expected 3 entries"),
    "no_banner": (b"2 3 1\n1 1 1\n", "banner"),
    "row_out_of_range": (MTX_HEAD + b"2 3 1\n3 1 1\n", "row index"),
    "col_out_of_range": (MTX_HEAD + b"2 3 1\n1 0 1\n", "column index"),
    "duplicate": (MTX_HEAD + b"2 3 2\n1 1 1\n1 1 2\n", "duplicate"),
    "bad_value": (MTX_HEAD + b"2 3 1\n1 1 abc\n", "malformed"),
    "symmetric": (b"%%MatrixMarket matrix coordinate real symmetric\n2 2 1\n1 1 1\n", "general"),
    "no_size": (MTX_HEAD + b"% only a comment\n", "size line"),
}


@pytest.mark.parametrize("name", list(MTX_BAD))
def test_mtx_malformed_raises(tmp_path, name):
    data, match = MTX_BAD[name]
    (tmp_path / "b.mtx").write_bytes(data)
    with pytest.raises(ValueError, match=match):
        read_mtx(tmp_path / "b.mtx")


def test_mtx_unordered_entries_read(tmp_path):
    (tmp_path / "u.mtx").write_bytes(MTX_HEAD + b"% c\n2 3 3\n2 2 2.5\n1 3 -1\n1 1 0.25\n")
    assert read_mtx(tmp_path / "u.mtx").to_dense().tolist() == [[0.25, 0, -1], [0, 2.5, 0]]


def test_npz_truncated_or_foreign_raises(tmp_path):
    p = write_npz(tmp_path / "a.npz", dense_to_csr(_w()))
    data = p.read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="t.npz"):
        read_npz(tmp_path / "t.npz")
    np.savez(tmp_path / "f.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="missing"):
        read_npz(tmp_path / "f.npz")


def test_missing_file_raises(tmp_path):
    for reader in (read_smtx, read_mtx, read_npz):
        with pytest.raises(ValueError, match="nope"):
            reader(tmp_path / "nope")


def test_bytes_helpers_agree_with_writers(tmp_path):
    csr = dense_to_csr(_w())
    assert write_smtx(tmp_path / "a.smtx", csr).read_bytes() == smtx_bytes(csr)
    assert write_mtx(tmp_path / "a.mtx", csr).read_bytes() == mtx_bytes(csr)
