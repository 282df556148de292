"""Synthetic generator: exact shape and nnz, reproducibility, each kind's defining property; named shapes."""
from pathlib import Path

import numpy as np
import pytest
import torch

from spruce.sparse.files import read_smtx
from spruce.sparse.shapes import layer_shapes, named_shapes
from spruce.sparse.stats import matrix_stats, row_length_ks
from spruce.sparse.synthetic import KINDS, benchmark_case, dense_operand, derive_seed, generate, nnz_for

from shared_data import DLMC  # noqa: E402
DLMC_REF = (DLMC / "transformer/magnitude_pruning/0.7/"
                "body_encoder_layer_0_self_attention_multihead_attention_q_fully_connected.smtx")


def _ref_csr():
    if DLMC_REF.is_file():
        return read_smtx(DLMC_REF)
    from spruce.sparse.formats import dense_to_csr
    g = torch.Generator().manual_seed(0)
    p = torch.linspace(0.05, 0.9, 300)[:, None].expand(300, 400)
    return dense_to_csr((torch.rand(300, 400, generator=g) < p).float())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("m,k,sparsity", [(1, 1, 0.0), (7, 13, 0.9), (64, 96, 0.5), (33, 5, 0.99), (16, 16, 0.0)])
def test_exact_shape_and_nnz(kind, m, k, sparsity):
    ref = generate("uniform", 20, 30, 0.7, seed=1)
    w = generate(kind, m, k, sparsity, seed=2, reference=ref)
    w.validate()
    assert w.shape == (m, k) and w.nnz == nnz_for(m, k, sparsity)
    dense = w.to_dense()
    assert int((dense != 0).sum()) == w.nnz  # no stored zeros: values are nonzero
    assert w.values.dtype == torch.float32


def test_nnz_for_follows_dlmc_floor():
    assert nnz_for(2048, 512, 0.9) == 104857
    assert nnz_for(64, 256, 0.7) == 4915
    assert nnz_for(64, 256, 0.98) == 327
    assert nnz_for(10, 10, 0.0) == 100
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="outside"):
            nnz_for(4, 4, bad)


@pytest.mark.parametrize("kind", KINDS)
def test_reproducible_by_seed(kind):
    ref = generate("uniform", 20, 30, 0.7, seed=1)
    a = generate(kind, 40, 50, 0.8, seed=5, reference=ref)
    b = generate(kind, 40, 50, 0.8, seed=5, reference=ref)
    c = generate(kind, 40, 50, 0.8, seed=6, reference=ref)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    assert not torch.equal(a.to_dense(), c.to_dense())


def test_exact_nnz_override():
    w = generate("magnitude", 30, 40, None, seed=0, nnz=123)
    assert w.nnz == 123
    with pytest.raises(ValueError, match="nnz"):
        generate("uniform", 3, 3, None, nnz=10)


def test_balanced_rows_differ_by_at_most_one():
    w = generate("balanced", 37, 101, 0.83, seed=3)
    rl = w.row_lengths()
    assert int(rl.max() - rl.min()) <= 1


def test_row_matched_follows_the_reference():
    ref = _ref_csr()
    m, k = ref.shape
    sp = 1 - ref.nnz / (m * k)
    matched = generate("row_matched", m, k, None, seed=4, reference=ref, nnz=ref.nnz)
    uniform = generate("uniform", m, k, None, seed=4, nnz=ref.nnz)
    assert matched.nnz == ref.nnz
    assert row_length_ks(matched, ref) < 0.1
    assert row_length_ks(matched, ref) < row_length_ks(uniform, ref) / 2
    # a different shape, same distribution of row densities
    other = generate("row_matched", 2 * m, k // 2, sp, seed=4, reference=ref)
    assert row_length_ks(other, ref) < 0.1
    assert int(other.row_lengths().max()) <= k // 2


def test_row_matched_needs_reference():
    with pytest.raises(ValueError, match="reference"):
        generate("row_matched", 4, 4, 0.5)


def test_magnitude_rows_uneven_with_strong_scales():
    uni = matrix_stats(generate("uniform", 200, 300, 0.9, seed=0))
    mag = matrix_stats(generate("magnitude", 200, 300, 0.9, seed=0, row_sigma=0.5, col_sigma=0.5))
    assert mag["row_cov"] > 2 * uni["row_cov"]
    assert mag["col_cov"] > 2 * uni["col_cov"]
    flat = matrix_stats(generate("magnitude", 200, 300, 0.9, seed=0, row_sigma=0.0, col_sigma=0.0))
    assert flat["row_cov"] < 1.5 * uni["row_cov"]  # no scales: as unstructured as uniform


def test_magnitude_keeps_the_largest_scores():
    w = generate("magnitude", 50, 60, 0.9, seed=1, row_sigma=0.0, col_sigma=0.0)
    assert w.nnz == nnz_for(50, 60, 0.9)
    # values are the kept Gaussian draws scaled to Kaiming variance: all large in magnitude
    assert float(w.values.abs().min()) > 1.0 * np.sqrt(2 / 60)


def test_unknown_kind_and_bad_shape():
    with pytest.raises(ValueError, match="unknown synthetic kind 'dense'"):
        generate("dense", 3, 3, 0.5)
    with pytest.raises(ValueError, match="positive"):
        generate("uniform", 0, 3, 0.5)


def test_dense_operand_and_case():
    x = dense_operand(27, 50, seed=3)
    assert x.shape == (27, 50) and x.dtype == torch.float32
    assert torch.equal(x, dense_operand(27, 50, seed=3))
    assert float(dense_operand(5, 6, seed=1, nonnegative=True).min()) >= 0
    w, x2 = benchmark_case("uniform", 64, 27, 100, 0.9, seed=0)
    assert w.shape == (64, 27) and x2.shape == (27, 100)
    y = w.to_dense() @ x2
    assert y.shape == (64, 100)


def test_derive_seed_stable():
    assert derive_seed(0, "features.3", "uniform") == derive_seed(0, "features.3", "uniform")
    assert derive_seed(0, "features.3", "uniform") != derive_seed(0, "features.3", "balanced")


def test_named_shapes():
    vgg = named_shapes("vgg16")
    assert len(vgg) == 16 and [s.kind for s in vgg].count("conv2d") == 13
    first, fc6 = vgg[0], vgg[13]
    assert (first.name, first.m, first.k, first.n_per_sample, first.original_shape) == \
        ("features.0", 64, 27, 224 * 224, (64, 3, 3, 3))
    assert (fc6.name, fc6.m, fc6.k, fc6.n(8)) == ("classifier.0", 4096, 25088, 8)
    assert vgg[-1].m == 1000 and vgg[12].n_per_sample == 14 * 14
    bert = named_shapes("bert_base")
    assert len(bert) == 72
    assert {(s.m, s.k) for s in bert} == {(768, 768), (3072, 768), (768, 3072)}
    assert all(s.n_per_sample == 128 for s in bert)
    assert layer_shapes("minilm_layer")[4].m == 1536
    with pytest.raises(ValueError, match="unknown model shapes"):
        named_shapes("resnet")
