"""Sparse weight x sparse input (spruce_spsp): the kernel, the dense -> sparse activation conversion and the
sparse-output chain, each against float64 dense references on awkward shapes, once per instruction set."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spruce.kernels import get, kernels
from spruce.kernels.cpu import build
from spruce.kernels.cpu.spsp import SparseActivation, SpspPacked, to_sparse_activation


from cpu_isa import extension, isa  # noqa: E402,F401  (autouse: every test once per ISA)


def activation(shape, sparsity: float, seed: int, empty_channels: int = 0) -> torch.Tensor:
    """ReLU-like input: nonnegative and negative values, ``sparsity`` of them exact zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    x[torch.rand(*shape, generator=g) < sparsity] = 0.0
    if empty_channels and shape[1] > 1:
        x[:, torch.randperm(shape[1], generator=g)[:empty_channels]] = 0.0
    return x


def conv_weight(co, ci, kh, kw, sparsity: float, seed: int, empty_out: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    w = torch.empty(co, ci, kh, kw).uniform_(-1, 1, generator=g)
    w[torch.rand(co, ci, kh, kw, generator=g) < sparsity] = 0.0
    if empty_out:
        w[torch.randperm(co, generator=g)[:empty_out]] = 0.0
    return w


def reference(x, w, bias, stride, padding, dilation, act):
    y = F.conv2d(x.double(), w.double(), None if bias is None else bias.double(), stride, padding, dilation)
    return torch.relu(y) if act == "relu" else F.gelu(y) if act == "gelu" else y


def close(y: torch.Tensor, ref: torch.Tensor, k: int) -> None:
    assert y.dtype == torch.float32 and tuple(y.shape) == tuple(ref.shape)
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-5 * max(1.0, k ** 0.5))


CONVS = [  # (B, C_in, C_out, H, W, kernel, stride, padding, dilation, w sparsity, x sparsity, empty in/out channels)
    (1, 1, 1, 1, 1, (1, 1), (1, 1), (0, 0), (1, 1), 0.0, 0.0, 0),           # one of everything, fully dense
    (2, 5, 13, 9, 11, (3, 3), (1, 1), (1, 1), (1, 1), 0.7, 0.6, 2),         # odd sizes, C_out off the block width
    (1, 3, 17, 7, 8, (3, 2), (2, 3), (2, 0), (1, 2), 0.5, 0.5, 1),          # stride, asymmetric padding, dilation
    (3, 8, 24, 6, 6, (3, 3), (1, 1), (1, 1), (1, 1), 0.0, 0.0, 0),          # dense weight, dense input
    (2, 6, 9, 5, 7, (3, 3), (1, 1), (1, 1), (1, 1), 0.9, 1.0, 0),           # all-zero input
    (2, 6, 9, 5, 7, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, 0.3, 0),           # all-zero weight
    (1, 4, 33, 4, 70, (1, 1), (1, 1), (0, 0), (1, 1), 0.8, 0.9, 1),         # 1x1, a row wider than a column band
    (2, 16, 40, 12, 12, (5, 5), (2, 2), (2, 2), (1, 1), 0.8, 0.7, 3),       # larger kernel with stride
    (1, 2, 3, 3, 3, (3, 3), (1, 1), (4, 4), (1, 1), 0.0, 0.0, 0),           # padding larger than the image
]


@pytest.mark.parametrize("width", [8, 16])
@pytest.mark.parametrize("case", CONVS)
def test_conv_matches_dense(case, width):
    b, ci, co, h, w, ks, st, pd, dl, ws, xs, empty = case
    kern = get("spruce_spsp")
    x = activation((b, ci, h, w), xs, seed=ci * 31 + h, empty_channels=empty)
    wt = conv_weight(co, ci, *ks, ws, seed=co, empty_out=empty)
    bias = torch.randn(co)
    packed = kern.prepare(wt.reshape(co, -1), width=width)
    k = ci * ks[0] * ks[1]
    for act in ("none", "relu", "gelu"):
        ref = reference(x, wt, bias, st, pd, dl, act)
        close(kern.conv2d(packed, x, ks, st, pd, dl, bias, act), ref, k)  # dense input: converted inside
        sx = to_sparse_activation(x)
        close(kern.conv2d(packed, sx, ks, st, pd, dl, bias, act), ref, k)
        out = kern.conv2d_sparse(packed, sx, ks, st, pd, dl, bias, act)
        assert isinstance(out, SparseActivation) and out.shape == tuple(ref.shape)
        close(out.to_dense(), ref, k)
        assert out.nnz == int((out.to_dense() != 0).sum())  # no stored zeros
    close(kern.conv2d(packed, x, ks, st, pd, dl), reference(x, wt, None, st, pd, dl, "none"), k)


@pytest.mark.parametrize("shape,sparsity", [((1, 1, 1, 1), 0.0), ((1, 1, 1, 1), 1.0), ((2, 3, 5, 7), 0.5),
                                            ((2, 3, 5, 7), 1.0), ((1, 2, 3, 200), 0.9), ((3, 4, 1, 63), 0.0),
                                            ((1, 1, 2, 64), 0.3), ((0, 3, 4, 4), 0.5)])
def test_conversion_round_trip(shape, sparsity):
    x = activation(shape, sparsity, seed=sum(shape))
    if x.numel():
        x[..., 0] = -0.0  # a negative zero is a zero
    sx = to_sparse_activation(x)
    b, c, h, w = shape
    assert sx.rowptr.dtype == torch.int32 and sx.rowptr.numel() == b * c * h + 1
    assert sx.nnz == int((x != 0).sum())
    assert torch.equal(sx.to_dense(), x)
    # CSR invariants: rows ascend, columns ascend within a row and lie in [0, W)
    counts = (sx.rowptr[1:] - sx.rowptr[:-1]).tolist()
    assert min(counts, default=0) >= 0
    p = 0
    for n in counts:
        cols = sx.cols[p:p + n].tolist()
        assert cols == sorted(set(cols)) and all(0 <= c_ < w for c_ in cols)
        p += n


def test_chain_of_two_layers_converts_once_and_equals_dense():
    """conv -> ReLU -> conv -> ReLU with the sparse output feeding the next layer, against float64 dense."""
    kern = get("spruce_spsp")
    x = torch.relu(torch.randn(2, 6, 10, 9))
    w1, w2 = conv_weight(12, 6, 3, 3, 0.6, seed=1), conv_weight(10, 12, 3, 3, 0.7, seed=2)
    b1, b2 = torch.randn(12) * 0.5 - 0.3, torch.randn(10)
    p1, p2 = kern.prepare(w1.reshape(12, -1)), kern.prepare(w2.reshape(10, -1), width=16)
    s0 = to_sparse_activation(x)  # the one conversion
    s1 = kern.conv2d_sparse(p1, s0, (3, 3), (1, 1), (1, 1), bias=b1, activation="relu")
    assert 0 < s1.nnz < 12 * 10 * 9 * 2  # ReLU left zeros, not only zeros
    y = kern.conv2d(p2, s1, (3, 3), (2, 2), (1, 1), bias=b2, activation="relu")
    r1 = reference(x, w1, b1, (1, 1), (1, 1), (1, 1), "relu")
    ref = reference(r1, w2, b2, (2, 2), (1, 1), (1, 1), "relu")
    close(s1.to_dense(), r1, 54)
    close(y, ref, 108)
    s2 = kern.conv2d_sparse(p2, s1, (3, 3), (2, 2), (1, 1), bias=b2, activation="relu")
    close(s2.to_dense(), ref, 108)


def test_matmul_and_linear_match_dense():
    kern = get("spruce_spsp")
    g = torch.Generator().manual_seed(4)
    w = torch.randn(37, 53, generator=g)
    w[torch.rand(37, 53, generator=g) < 0.8] = 0
    w[5] = 0  # an empty row
    bias = torch.randn(37, generator=g)
    p = kern.prepare(w)
    for n in (1, 7, 70):
        x = activation((53, n), 0.6, seed=n)
        ref = torch.relu(w.double() @ x.double() + bias.double()[:, None])
        close(kern.matmul(p, x, bias, "relu"), ref, 53)
    for shape in ((53,), (3, 53), (2, 4, 53)):
        x = activation(shape, 0.5, seed=len(shape))
        ref = F.linear(x.double(), w.double(), bias.double())
        close(kern.linear(p, x, bias), ref, 53)


def test_bad_inputs_are_one_line_value_errors():
    kern = get("spruce_spsp")
    w = conv_weight(8, 3, 3, 3, 0.5, seed=0).reshape(8, -1)
    p = kern.prepare(w)
    x = torch.randn(1, 3, 5, 5)
    with pytest.raises(ValueError, match="block width 4 not allowed"):
        kern.prepare(w, width=4)
    bad = w.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        kern.prepare(bad)
    with pytest.raises(ValueError, match="C_in\\*kh\\*kw"):
        kern.conv2d(p, torch.randn(1, 4, 5, 5), (3, 3))
    with pytest.raises(ValueError, match="float32"):
        kern.conv2d(p, x.double(), (3, 3))
    with pytest.raises(ValueError, match="SpspPacked|prepare"):
        kern.conv2d(w, x, (3, 3))
    with pytest.raises(ValueError, match="bias must be"):
        kern.conv2d(p, x, (3, 3), bias=torch.randn(7))
    with pytest.raises(ValueError, match="unknown activation"):
        kern.conv2d(p, x, (3, 3), activation="tanh")
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        kern.conv2d(p, torch.randn(1, 3, 2, 2), (3, 3))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        to_sparse_activation(torch.randn(3, 5))
    sx = to_sparse_activation(x)
    broken = SparseActivation(sx.rowptr, sx.cols + 5, sx.vals, sx.shape)  # columns past W
    with pytest.raises(ValueError, match="input column .* out of range"):
        kern.conv2d(p, broken, (3, 3))
    swapped = sx.cols.clone()
    r0 = int(torch.nonzero(sx.rowptr[1:] - sx.rowptr[:-1] >= 2)[0])  # a row with two nonzeros
    swapped[sx.rowptr[r0]], swapped[sx.rowptr[r0] + 1] = sx.cols[sx.rowptr[r0] + 1], sx.cols[sx.rowptr[r0]]
    with pytest.raises(ValueError, match="ascend strictly within a row"):
        kern.conv2d(p, SparseActivation(sx.rowptr, swapped, sx.vals, sx.shape), (3, 3))
    rp = sx.rowptr.clone()
    rp[3] = rp[-1] + 1
    with pytest.raises(ValueError, match="non-decreasing|start at 0"):
        kern.conv2d(p, SparseActivation(rp, sx.cols, sx.vals, sx.shape), (3, 3))
    tampered = SpspPacked(p.rowptr, p.blocks + 1, p.vals, p.m, p.k, p.width)
    with pytest.raises(ValueError, match="weight block index"):
        kern.conv2d(tampered, x, (3, 3))


def test_opt_in_registration():
    """Listed only on request (its speed depends on the input's values), found by name, same contract."""
    assert "spruce_spsp" not in {k.name for k in kernels(device="cpu")}
    assert "spruce_spsp" in {k.name for k in kernels(device="cpu", opt_in=True)}
    kern = get("spruce_spsp")
    assert kern.is_available()[0]
    p = kern.prepare(torch.zeros(0, 5))  # no output channels: an empty weight still packs
    assert p.nblocks == 0 and kern.weight_bytes(p) > 0
