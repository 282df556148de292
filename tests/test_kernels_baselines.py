"""The baseline CPU kernels (torch_dense, torch_csr, torch_bsr4/16, torch_coo, scipy_csr) against float64."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spruce.kernels import get, kernels, names

BASELINES = ["torch_dense", "torch_csr", "torch_bsr4", "torch_bsr16", "torch_coo", "scipy_csr"]


def sparse_weight(m: int, k: int, density: float, seed: int = 0, empty_rows: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.empty(m, k).uniform_(-1, 1, generator=g)
    w[torch.rand(m, k, generator=g) >= density] = 0.0
    if empty_rows:
        w[torch.randperm(m, generator=g)[:empty_rows]] = 0.0
    return w


def reference(w, x, bias, act):
    y = w.double() @ x.double()
    if bias is not None:
        y = y + bias.double()[:, None]
    return torch.relu(y) if act == "relu" else F.gelu(y) if act == "gelu" else y


def assert_matches(y, ref, k):
    assert tuple(y.shape) == tuple(ref.shape)
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-5 * max(1.0, k ** 0.5))


def test_all_registered_and_available():
    for name in BASELINES:
        assert name in names()
    avail = {k.name for k in kernels(device="cpu")}
    assert {"torch_dense", "torch_csr", "torch_bsr4", "torch_bsr16", "torch_coo"} <= avail


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("m,k,density,empty", [(1, 1, 1.0, 0), (1, 53, 0.3, 0), (37, 1, 0.5, 0), (37, 53, 0.2, 5),
                                               (37, 53, 0.0, 0), (37, 53, 1.0, 0), (33, 70, 0.05, 10)])
@pytest.mark.parametrize("n", [1, 7, 33])
def test_matmul_awkward_shapes(name, m, k, density, empty, n):
    kern = get(name)
    w = sparse_weight(m, k, density, seed=m + k, empty_rows=empty)
    x = torch.randn(k, n)
    assert_matches(kern.matmul(kern.prepare(w), x), reference(w, x, None, "none"), k)


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("act", ["none", "relu", "gelu"])
def test_epilogues_and_large_n(name, act):
    kern = get(name)
    w = sparse_weight(40, 90, 0.15, seed=3, empty_rows=4)
    b = torch.randn(40)
    p = kern.prepare(w)
    for n in (1, 45, 3000):
        x = torch.randn(90, n)
        assert_matches(kern.matmul(p, x, b, act), reference(w, x, b, act), 90)


@pytest.mark.parametrize("name", BASELINES)
def test_linear(name):
    kern = get(name)
    w = sparse_weight(50, 64, 0.2, seed=9)
    b = torch.randn(50)
    p = kern.prepare(w)
    for shape in [(1, 64), (3, 5, 64)]:
        x = torch.randn(*shape)
        ref = F.gelu(F.linear(x.double(), w.double(), b.double()))
        torch.testing.assert_close(kern.linear(p, x, b, "gelu").double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("cfg", [(2, 3, 9, 11, 5, 3, 3, (1, 1), (1, 1), (1, 1)),
                                 (1, 4, 10, 12, 6, 3, 2, (2, 1), (0, 2), (1, 2))])
def test_conv2d(name, cfg):
    bsz, ci, h, wd, co, kh, kw, stride, pad, dil = cfg
    kern = get(name)
    w4 = torch.randn(co, ci, kh, kw)
    w4[w4.abs() < 0.9] = 0.0
    x, b = torch.randn(bsz, ci, h, wd), torch.randn(co)
    y = kern.conv2d(kern.prepare(w4.reshape(co, -1)), x, (kh, kw), stride, pad, dil, b, "relu")
    ref = F.relu(F.conv2d(x.double(), w4.double(), b.double(), stride=stride, padding=pad, dilation=dil))
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)


def test_torch_csr_uses_int32_indices():
    p = get("torch_csr").prepare(sparse_weight(10, 20, 0.3))
    assert p.crow_indices().dtype == torch.int32 and p.col_indices().dtype == torch.int32


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 40), k=st.integers(1, 40), n=st.integers(1, 40), density=st.floats(0.0, 1.0),
       name=st.sampled_from(BASELINES), seed=st.integers(0, 1000))
def test_property_random_shapes(m, k, n, density, name, seed):
    kern = get(name)
    w = sparse_weight(m, k, density, seed=seed)
    x = torch.randn(k, n)
    assert_matches(kern.matmul(kern.prepare(w), x), reference(w, x, None, "none"), k)


@pytest.mark.parametrize("name", BASELINES)
def test_bad_input(name):
    kern = get(name)
    w = sparse_weight(6, 8, 0.5)
    p = kern.prepare(w)
    x = torch.randn(8, 3)
    for call in [
        lambda: kern.prepare(w.half()),
        lambda: kern.prepare(torch.empty(6, 8, device="meta")),
        lambda: kern.prepare(torch.randn(8)),
        lambda: kern.prepare(torch.tensor([[1.0, float("nan")]])),
        lambda: kern.prepare(torch.tensor([[float("-inf"), 1.0]])),
        lambda: kern.matmul(p, torch.randn(7, 3)),
        lambda: kern.matmul(p, torch.randn(8)),
        lambda: kern.matmul(p, x.half()),
        lambda: kern.matmul(p, x, torch.randn(5)),
        lambda: kern.matmul(p, x, None, "swish"),
    ]:
        with pytest.raises(ValueError):
            call()


def test_non_contiguous_input_is_correct():
    w = sparse_weight(12, 10, 0.4)
    x = torch.randn(5, 10).t()
    for name in BASELINES:
        kern = get(name)
        assert_matches(kern.matmul(kern.prepare(w), x), reference(w, x, None, "none"), 10)
