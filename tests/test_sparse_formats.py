"""CSR / COO / BSR packing: exact round trips on awkward shapes, int32 structure, byte counts."""
import pytest
import torch

from spruce.sparse.formats import (BSR, CSR, bsr_to_csr, bsr_to_dense, coo_to_csr, csr_structure, csr_to_bsr,
                                   csr_to_coo,
                                   csr_to_dense, dense_bytes, dense_to_bsr, dense_to_coo, dense_to_csr,
                                   format_bytes)


def _sparse(m, k, density, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=g).to(dtype)
    return torch.where(torch.rand(m, k, generator=g) < density, w, torch.zeros((), dtype=dtype))  # +0.0 only


def _bits_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


SHAPES = [(1, 1), (1, 7), (7, 1), (5, 3), (33, 17), (64, 130)]


@pytest.mark.parametrize("m,k", SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.1, 1.0])
def test_round_trips_exact(m, k, density):
    w = _sparse(m, k, density, seed=m * k)
    csr = dense_to_csr(w)
    csr.validate()
    assert csr.indptr.dtype == torch.int32 and csr.indices.dtype == torch.int32
    assert csr.indptr.shape == (m + 1,) and csr.nnz == int((w != 0).sum())
    assert _bits_equal(csr_to_dense(csr), w)
    assert _bits_equal(dense_to_coo(w).to_dense(), w)
    for block in [(1, 4), (4, 1), (16, 16), (3, 5)]:
        assert _bits_equal(bsr_to_dense(dense_to_bsr(w, block)), w)
    assert torch.equal(coo_to_csr(csr_to_coo(csr)).indices, csr.indices)


def test_columns_sorted_within_rows_and_empty_rows():
    w = _sparse(20, 40, 0.2, seed=3)
    w[[0, 7, 19]] = 0
    csr = dense_to_csr(w)
    rl = csr.row_lengths()
    assert rl[0] == 0 and rl[7] == 0 and rl[19] == 0
    for i in range(20):
        cols = csr.indices[csr.indptr[i]:csr.indptr[i + 1]]
        assert torch.all(cols[1:] > cols[:-1])


def test_mask_keeps_explicit_zeros_and_negative_zero():
    w = _sparse(6, 9, 0.5, seed=1)
    mask = w != 0
    mask[2, 3] = True
    w[2, 3] = -0.0
    mask[4, 4] = True
    w[4, 4] = 0.0
    csr = dense_to_csr(w, mask)
    assert csr.nnz == int(mask.sum())
    assert _bits_equal(csr.to_dense(), w)  # -0.0 survives bit-exactly
    assert torch.equal(csr_structure(csr), mask)
    assert dense_to_bsr(w, (2, 2), mask).nblocks >= dense_to_bsr(w, (2, 2)).nblocks


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes_exact(dtype):
    w = _sparse(9, 11, 0.3, dtype=dtype)
    assert _bits_equal(dense_to_csr(w).to_dense(), w)
    assert _bits_equal(dense_to_bsr(w, (4, 4)).to_dense(), w)


def test_torch_views_match_dense():
    w = _sparse(32, 48, 0.2)
    assert torch.equal(dense_to_csr(w).to_torch().to_dense(), w)
    b = dense_to_bsr(w, (16, 16))
    assert isinstance(b, BSR) and torch.equal(b.to_torch().to_dense()[:32, :48], w)


def test_csr_to_bsr_keeps_every_block_with_an_entry():
    w = torch.zeros(32, 32)
    w[0, 0] = 1.0
    w[31, 17] = 2.0
    b = csr_to_bsr(dense_to_csr(w), (16, 16))
    assert b.nblocks == 2 and b.indices.tolist() == [0, 1]
    assert torch.equal(b.to_dense(), w)
    assert bsr_to_csr(b).nnz == 2 and torch.equal(bsr_to_csr(b).to_dense(), w)
    assert bsr_to_csr(b, keep_block_zeros=True).nnz == 2 * 256
    edge = dense_to_bsr(torch.ones(5, 7), (4, 4))
    assert bsr_to_csr(edge, keep_block_zeros=True).nnz == 35  # padding is cropped


def test_bytes():
    w = _sparse(10, 20, 0.25, seed=5)
    csr = dense_to_csr(w)
    assert csr.nbytes == csr.nnz * 4 + csr.nnz * 4 + 11 * 4
    assert dense_to_coo(w).nbytes == csr.nnz * 12
    b = dense_to_bsr(w, (5, 10))
    assert b.nbytes == b.nblocks * 50 * 4 + b.nblocks * 4 + 3 * 4
    fb = format_bytes(w, block=(5, 10))
    assert fb == {"dense": 800, "csr": csr.nbytes, "coo": csr.nnz * 12, "bsr": b.nbytes}
    assert dense_bytes((3, 4), torch.float16) == 24


def test_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        dense_to_csr(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="mask shape"):
        dense_to_csr(torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="block"):
        dense_to_bsr(torch.zeros(2, 3), (0, 4))
    bad = CSR(torch.tensor([0, 2, 1], dtype=torch.int32), torch.tensor([0], dtype=torch.int32), torch.ones(1),
              (2, 3))
    with pytest.raises(ValueError):
        bad.validate()
