"""Structure statistics on hand-built matrices whose answers are known, and the KS distance."""
import numpy as np
import pytest
import torch

from spruce.sparse.formats import dense_to_csr
from spruce.sparse.stats import STAT_KEYS, block_counts, ks_distance, matrix_stats, row_length_ks


def test_row_and_column_stats_by_hand():
    w = torch.zeros(4, 8)
    w[0, :4] = 1   # row lengths 4, 2, 0, 2 -> mean 2, std sqrt(2)
    w[1, [0, 5]] = 1
    w[3, [1, 2]] = 1
    s = matrix_stats(dense_to_csr(w))
    assert list(s) == list(STAT_KEYS)
    assert s["nnz"] == 8 and s["density"] == pytest.approx(8 / 32)
    assert s["row_mean"] == 2 and s["row_cov"] == pytest.approx(np.sqrt(2) / 2)
    assert s["row_max_over_mean"] == 2 and s["empty_rows"] == 1 and s["empty_row_frac"] == 0.25
    cols = np.array([2, 2, 2, 1, 0, 1, 0, 0])
    assert s["col_cov"] == pytest.approx(cols.std() / cols.mean())


def test_block_fill_and_2of4():
    w = torch.zeros(4, 8)
    w[0, :4] = 1        # a full 1x4 group: breaks 2:4
    w[1, 4:6] = 1       # 2 of 4: conforms
    w[2, 0] = 1
    s = matrix_stats(w)
    assert s["conform_2of4"] == pytest.approx(7 / 8)                  # 8 groups, one with 4 entries
    assert s["blk_1x4_nonempty"] == pytest.approx(3 / 8)
    assert s["blk_1x4_fill"] == pytest.approx((4 + 2 + 1) / 3 / 4)
    assert s["blk_4x1_nonempty"] == pytest.approx(6 / 8)                # 6 columns touched, 1 block row
    assert s["blk_16x16_nonempty"] == 1.0                              # one padded block
    assert s["blk_16x16_fill"] == pytest.approx(7 / 256)


def test_block_counts_sorted_fast_path_matches_unique():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(50, 70, generator=g) * (torch.rand(50, 70, generator=g) < 0.2)
    csr = dense_to_csr(w)
    for bh, bw in [(1, 4), (4, 1), (16, 16), (1, 3)]:
        counts = block_counts(csr, bh, bw)
        ref = torch.zeros(-(-50 // bh) * bh, -(-70 // bw) * bw)
        ref[:50, :70] = (w != 0).float()
        ref = ref.reshape(-(-50 // bh), bh, -(-70 // bw), bw).sum(dim=(1, 3)).flatten()
        assert sorted(counts.tolist()) == sorted(int(c) for c in ref[ref > 0].tolist())


def test_empty_and_dense_matrices():
    s = matrix_stats(torch.zeros(3, 5))
    assert s["nnz"] == 0 and s["row_cov"] == 0 and s["empty_rows"] == 3 and s["conform_2of4"] == 1.0
    d = matrix_stats(torch.ones(8, 8))
    assert d["density"] == 1 and d["row_cov"] == 0 and d["conform_2of4"] == 0.0 and d["blk_4x1_fill"] == 1.0


def test_ks_distance():
    assert ks_distance([1, 2, 3], [1, 2, 3]) == 0.0
    assert ks_distance([0, 0], [1, 1]) == 1.0
    assert ks_distance([1, 2, 3, 4], [3, 4, 5, 6]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="non-empty"):
        ks_distance([], [1])


def test_row_length_ks_uses_densities():
    a = torch.zeros(4, 10)
    a[:, :5] = 1            # every row half full
    b = torch.zeros(4, 20)
    b[:, :10] = 1           # also half full, twice as wide
    assert row_length_ks(a, b) == 0.0
    b[0, 10:] = 1
    assert row_length_ks(a, b) == pytest.approx(0.25)
