"""spruce.prune without Lightning: schedules, masks, layer selection, exact sparsity, masks through training."""
from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import spruce.prune as sp
from spruce.prune.schedule import iterative_prune_steps
from spruce.prune.select import lowest_k, lowest_k_global


# ---------------------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------------------
def agp_formula(t: int, si: float, sf: float, t0: int, span: int) -> float:
    return sf + (si - sf) * (1 - (t - t0) / span) ** 3


def test_agp_boundaries():
    kw = dict(initial=0.1, final=0.9, start=10, end=110, every=1)
    assert sp.agp_sparsity(0, **kw) == 0.0
    assert sp.agp_sparsity(9, **kw) == 0.0  # no pruning before start, even with initial > 0
    assert sp.agp_sparsity(10, **kw) == pytest.approx(0.1)
    assert sp.agp_sparsity(110, **kw) == 0.9
    assert sp.agp_sparsity(10_000, **kw) == 0.9
    assert sp.agp_sparsity(60, **kw) == pytest.approx(0.9 - 0.8 * 0.5 ** 3)
    # start == end: one-shot at start
    assert sp.agp_sparsity(4, 0.0, 0.5, 5, 5) == 0.0
    assert sp.agp_sparsity(5, 0.0, 0.5, 5, 5) == 0.5


@settings(max_examples=200, deadline=None)
@given(si=st.floats(0, 0.99), sf=st.floats(0, 0.99), t0=st.integers(0, 1000), span=st.integers(1, 5000),
       frac=st.floats(0, 1))
def test_agp_matches_formula_at_random_points(si, sf, t0, span, frac):
    si, sf = min(si, sf), max(si, sf)
    t = t0 + int(frac * span)
    got = sp.agp_sparsity(t, si, sf, t0, t0 + span)
    want = sf if t >= t0 + span else agp_formula(t, si, sf, t0, span)
    assert got == pytest.approx(want, abs=1e-12)
    assert si - 1e-12 <= got <= sf + 1e-12


@settings(max_examples=100, deadline=None)
@given(every=st.integers(1, 50), t0=st.integers(0, 100), span=st.integers(1, 500), step=st.integers(0, 800))
def test_agp_quantised_by_every(every, t0, span, step):
    end = t0 + span
    got = sp.agp_sparsity(step, 0.0, 0.8, t0, end, every)
    if step < t0:
        assert got == 0.0
    elif step >= end:
        assert got == 0.8
    else:
        tq = t0 + ((step - t0) // every) * every
        assert got == pytest.approx(agp_formula(tq, 0.0, 0.8, t0, span), abs=1e-12)
        # constant between two pruning steps
        assert sp.agp_sparsity(tq, 0.0, 0.8, t0, end, every) == got


def test_agp_every_changes_only_on_multiples():
    values = [sp.agp_sparsity(s, 0.0, 0.9, 0, 100, every=10) for s in range(101)]
    changes = [s for s in range(1, 101) if values[s] != values[s - 1]]
    assert changes == list(range(10, 101, 10))
    assert all(b >= a for a, b in zip(values, values[1:]))  # monotone


@pytest.mark.parametrize("kwargs, bad", [
    (dict(initial=0.0, final=1.0, start=0, end=10), "final=1.0"),
    (dict(initial=0.0, final=-0.1, start=0, end=10), "final=-0.1"),
    (dict(initial=0.0, final=float("nan"), start=0, end=10), "final=nan"),
    (dict(initial=0.6, final=0.5, start=0, end=10), "initial=0.6"),
    (dict(initial=0.0, final=0.5, start=11, end=10), "start=11 > end=10"),
    (dict(initial=0.0, final=0.5, start=0, end=10, every=0), "every=0"),
    (dict(initial=0.0, final=0.5, start=-1, end=10), "start=-1"),
])
def test_agp_bad_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=re.escape(bad)):
        sp.agp_sparsity(0, **kwargs)


def test_oneshot_sparsity():
    assert sp.oneshot_sparsity(4, 0.7, at=5) == 0.0
    assert sp.oneshot_sparsity(5, 0.7, at=5) == 0.7
    assert sp.oneshot_sparsity(500, 0.7, at=5) == 0.7
    with pytest.raises(ValueError, match="final=1.5"):
        sp.oneshot_sparsity(0, 1.5, at=0)


def test_iterative_sparsity_equal_ratio_rounds():
    final, iters = 0.9, 4
    steps = iterative_prune_steps(0, 30, iters)
    assert steps == [0, 10, 20, 30]
    for k, s in enumerate(steps, start=1):
        got = sp.iterative_sparsity(s, final, 0, 30, iters)
        assert 1 - got == pytest.approx((1 - final) ** (k / iters))
        if s > 0:
            assert sp.iterative_sparsity(s - 1, final, 0, 30, iters) < got
    assert sp.iterative_sparsity(30, final, 0, 30, iters) == final  # exactly final at the last round
    assert sp.iterative_sparsity(5, final, 10, 30, iters) == 0.0
    with pytest.raises(ValueError, match="iterations=0"):
        sp.iterative_sparsity(0, final, 0, 30, 0)


# ---------------------------------------------------------------------------------------------------------
# exact selection
# ---------------------------------------------------------------------------------------------------------
def test_lowest_k_exact_with_ties_and_deterministic():
    x = torch.tensor([3.0, 1.0, 1.0, 1.0, 2.0, float("-inf"), 1.0])
    sel = lowest_k(x, 3)
    assert sel.tolist() == [False, True, True, False, False, True, False]  # -inf first, then ties by index
    for k in range(x.numel() + 1):
        assert int(lowest_k(x, k).sum()) == k
    a, b = lowest_k_global([torch.ones(2, 2), torch.ones(3)], 5)
    assert a.all() and b.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="k=8"):
        lowest_k(x, 8)


def reference_lowest_k(x: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros(x.numel(), dtype=torch.bool)
    out[torch.sort(x.reshape(-1), stable=True).indices[:k]] = True
    return out.view_as(x)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), levels=st.integers(1, 6), frac=st.floats(0, 1), seed=st.integers(0, 1000))
def test_lowest_k_matches_stable_sort(n, levels, frac, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, levels, (n,), generator=g).float()
    x[torch.rand(n, generator=g) < 0.2] = float("-inf")
    k = int(frac * n)
    assert torch.equal(lowest_k(x, k), reference_lowest_k(x, k))


@pytest.mark.parametrize("kind", ["ties", "sorted", "constant", "pruned_half"])
def test_lowest_k_large_uses_band_and_stays_exact(kind):
    n = 300_000  # above the direct-kthvalue size: exercises the sampled band
    g = torch.Generator().manual_seed(5)
    if kind == "ties":
        x = torch.round(torch.randn(n, generator=g) * 20) / 20
    elif kind == "sorted":
        x = torch.linspace(0, 1, n)
    elif kind == "constant":
        x = torch.full((n,), 0.25)
    else:
        x = torch.rand(n, generator=g)
        x[: n // 2] = float("-inf")
    for k in (1, 1234, n // 2, n // 2 + 1, int(0.9 * n), n - 1):
        got = lowest_k(x, k)
        assert int(got.sum()) == k
        assert torch.equal(got, reference_lowest_k(x, k)), (kind, k)


# ---------------------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------------------
def test_attach_mask_idempotent_and_apply_remove():
    lin = nn.Linear(5, 3)
    m1 = sp.attach_mask(lin)
    assert m1.dtype == torch.bool and m1.shape == lin.weight.shape and bool(m1.all())
    m1[0, :2] = False
    m2 = sp.attach_mask(lin)  # idempotent: keeps the existing mask
    assert m2 is m1 and not bool(m2[0, 0])
    assert "weight_mask" in lin.state_dict() and sp.has_mask(lin)
    sp.apply_mask_(lin)
    assert (lin.weight[0, :2] == 0).all() and (lin.weight[0, 2:] != 0).all()
    lin(torch.randn(4, 5)).sum().backward()
    assert (lin.weight.grad[0, :2] == 0).all() and (lin.weight.grad[1] != 0).all()
    sp.remove_mask(lin)
    assert not sp.has_mask(lin) and "weight_mask" not in lin.state_dict()
    assert (lin.weight[0, :2] == 0).all()
    lin.weight.grad = None
    lin(torch.randn(4, 5)).sum().backward()
    assert (lin.weight.grad[0, :2] != 0).all()  # hook removed with the mask
    with pytest.raises(ValueError, match="BatchNorm1d"):
        sp.attach_mask(nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="attach_mask"):
        sp.apply_mask_(nn.Linear(2, 2))


def test_deepcopy_keeps_mask_and_reattach_rehooks():
    lin = nn.Linear(4, 4)
    sp.attach_mask(lin)[:, 0] = False
    twin = copy.deepcopy(lin)
    sp.attach_mask(twin)
    twin(torch.randn(2, 4)).sum().backward()
    assert (twin.weight.grad[:, 0] == 0).all()


def test_masked_state_dict_roundtrip_needs_masks_attached():
    src = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    p = sp.MagnitudePruner()
    p.prepare(src, ["0", "2"])
    p.step(0.5)
    sd = src.state_dict()
    dst = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(RuntimeError, match="weight_mask"):
        dst.load_state_dict(sd)  # strict load: masks must exist first
    q = sp.MagnitudePruner()
    q.prepare(dst, ["0", "2"])
    dst.load_state_dict(sd)
    assert all(torch.equal(a, b) for a, b in zip(p.masks().values(), q.masks().values()))


# ---------------------------------------------------------------------------------------------------------
# tiny models
# ---------------------------------------------------------------------------------------------------------
class TinyCNN(nn.Module):
    """VGG-shaped: ``features`` (convs) + ``classifier`` (linears); input [B, 3, 8, 8], output [B, 10]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 7, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(7 * 16, 13), nn.ReLU(), nn.Linear(13, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def test_default_prunable_tiny_vgg_shape():
    m = TinyCNN()
    assert sp.infer_family(m) == "vgg"
    assert sp.default_prunable(m, "vgg") == ["features.2", "classifier.1", "classifier.3"]
    assert sp.default_prunable(m, "vgg", prune_classifier=False) == ["features.2", "classifier.1"]
    with pytest.raises(ValueError, match="family 'resnet'"):
        sp.default_prunable(m, "resnet")
    with pytest.raises(ValueError, match="no prunable layers"):
        sp.default_prunable(m, "bert")


def test_default_prunable_torchvision_vgg16_bn():
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):  # shapes only: no 138M-parameter init
        m = torchvision.models.vgg16_bn(weights=None)
    names = sp.default_prunable(m, "vgg")
    convs = [n for n, x in m.named_modules() if isinstance(x, nn.Conv2d)]
    assert len(convs) == 13 and convs[0] == "features.0"
    assert names == convs[1:] + ["classifier.0", "classifier.3", "classifier.6"]
    assert sp.infer_family(m) == "vgg"


@pytest.mark.parametrize("head", [False, True])
def test_default_prunable_tiny_bert(head):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=16, num_labels=3)
    model = transformers.BertForSequenceClassification(cfg) if head else transformers.BertModel(cfg)
    prefix = "bert." if head else ""
    names = sp.default_prunable(model, "bert")
    want = [f"{prefix}encoder.layer.{i}.{s}" for i in range(2) for s in (
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense")]
    assert names == want
    assert sp.infer_family(model) == "bert"
    assert not any("pooler" in n or "classifier" in n or "embeddings" in n for n in names)


def test_prunable_layers_patterns():
    m = TinyCNN()
    assert sp.prunable_layers(m) == ["features.0", "features.2", "classifier.1", "classifier.3"]
    assert sp.prunable_layers(m, include=["features.*"]) == ["features.0", "features.2"]
    assert sp.prunable_layers(m, include="re:classifier\\.\\d") == ["classifier.1", "classifier.3"]
    assert sp.prunable_layers(m, exclude=["*.0", "classifier.3"]) == ["features.2", "classifier.1"]
    with pytest.raises(ValueError, match="'featurs.*'"):
        sp.prunable_layers(m, include=["featurs.*"])
    with pytest.raises(ValueError, match="not a valid regular expression"):
        sp.prunable_layers(m, include=["re:("])


# ---------------------------------------------------------------------------------------------------------
# pruner: exact sparsity
# ---------------------------------------------------------------------------------------------------------
LAYERS = ["features.0", "features.2", "classifier.1", "classifier.3"]


@pytest.mark.parametrize("s", [0.0, 0.1, 0.33, 0.5, 0.77, 0.9, 0.99])
def test_layerwise_exact_to_one_weight(s):
    torch.manual_seed(0)
    m = TinyCNN()
    with torch.no_grad():  # heavy ties: only 5 distinct magnitudes
        m.features[2].weight.copy_(torch.randint(-2, 3, m.features[2].weight.shape).float())
    mods = dict(m.named_modules())
    orig = {n: mods[n].weight.detach().abs().clone() for n in LAYERS}
    p = sp.MagnitudePruner("layerwise")
    p.prepare(m, LAYERS)
    out = p.step(s)
    for n in LAYERS:
        w, mask = mods[n].weight, mods[n].weight_mask
        assert int((~mask).sum()) == round(s * w.numel()), n
        assert (w[~mask] == 0).all()
        if n != "features.2":  # no natural zeros: the zero count is exact too
            assert int((w == 0).sum()) == round(s * w.numel())
            assert out[n] == pytest.approx(round(s * w.numel()) / w.numel())
        if 0 < round(s * w.numel()) < w.numel():  # every pruned weight was no larger than every kept one
            assert orig[n][~mask].max() <= orig[n][mask].min()


def test_layerwise_is_deterministic_with_ties():
    def run():
        m = TinyCNN()
        with torch.no_grad():
            for n in LAYERS:
                dict(m.named_modules())[n].weight.fill_(0.5)
        p = sp.MagnitudePruner()
        p.prepare(m, LAYERS)
        p.step(0.4)
        return p.masks()
    a, b = run(), run()
    assert all(torch.equal(a[n], b[n]) for n in LAYERS)
    assert a["classifier.3"].reshape(-1)[:52].logical_not().all()  # ties pruned in flat index order


def test_global_exact_count_and_single_threshold():
    torch.manual_seed(1)
    m = TinyCNN()
    with torch.no_grad():
        m.classifier[1].weight.mul_(10)  # a layer with larger weights keeps more of them under a global scope
    mods = dict(m.named_modules())
    orig = {n: mods[n].weight.detach().abs().clone() for n in LAYERS}
    p = sp.MagnitudePruner("global")
    p.prepare(m, LAYERS)
    out = p.step(0.7)
    total = sum(mods[n].weight.numel() for n in LAYERS)
    pruned = sum(int((~mods[n].weight_mask).sum()) for n in LAYERS)
    assert pruned == round(0.7 * total)
    assert out["overall"] == pytest.approx(pruned / total)
    masks = p.masks()
    kept_min = min(orig[n][masks[n]].min() for n in LAYERS if masks[n].any())
    pruned_max = max(orig[n][~masks[n]].max() for n in LAYERS if (~masks[n]).any())
    assert pruned_max <= kept_min  # one threshold for all layers
    assert out["classifier.1"] < out["features.2"]
    for n in LAYERS:
        assert (mods[n].weight[~masks[n]] == 0).all()


def test_masks_are_monotone():
    torch.manual_seed(2)
    m = TinyCNN()
    p = sp.MagnitudePruner("layerwise")
    p.prepare(m, LAYERS)
    p.step(0.5)
    first = p.masks()
    with torch.no_grad():  # make the surviving weights tiny: magnitude alone would now prefer them
        for n in LAYERS:
            mod = dict(m.named_modules())[n]
            mod.weight.mul_(1e-3)
    p.step(0.3)  # a lower target keeps the masks
    assert all(torch.equal(first[n], p.masks()[n]) for n in LAYERS)
    p.step(0.8)
    for n in LAYERS:
        assert not (p.masks()[n] & ~first[n]).any(), "a pruned weight came back"


def test_pruner_state_dict_and_errors():
    m = TinyCNN()
    p = sp.MagnitudePruner("global")
    p.prepare(m, LAYERS)
    p.step(0.25)
    state = p.state_dict()
    assert state["target"] == 0.25 and state["layers"] == LAYERS and state["scope"] == "global"
    q = sp.MagnitudePruner("global")
    q.load_state_dict(state)
    assert q.target == 0.25 and q.layers == LAYERS
    with pytest.raises(ValueError, match="scope='global' differs"):
        sp.MagnitudePruner("layerwise").load_state_dict(state)
    with pytest.raises(ValueError, match="scope='row'"):
        sp.MagnitudePruner("row")
    with pytest.raises(ValueError, match="sparsity=1.0"):
        p.step(1.0)
    with pytest.raises(ValueError, match="'nope'"):
        sp.MagnitudePruner().prepare(m, ["nope"])
    with pytest.raises(ValueError, match="ReLU"):
        sp.MagnitudePruner().prepare(m, ["features.1"])
    squashed = p.squash()
    assert squashed == LAYERS and not sp.masked_modules(m)
    assert (m.classifier[3].weight == 0).float().mean() > 0


def test_movement_scores_keep_weights_moving_away_from_zero():
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0, -1.0, -1.0]]))
    model = nn.Sequential(lin)
    p = sp.MagnitudePruner(score="movement")
    p.prepare(model, ["0"])
    lin.weight.grad = torch.tensor([[1.0, -1.0, 1.0, -1.0]])  # -w*g: -1, +1, +1, -1
    p.accumulate()
    p.step(0.5)
    assert lin.weight_mask.tolist() == [[False, True, True, False]]
    assert "movement" in p.state_dict()


# ---------------------------------------------------------------------------------------------------------
# pruned weights stay exactly zero through training
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opt_name", ["sgd_momentum", "adamw"])
def test_masks_stay_zero_through_training(opt_name):
    torch.manual_seed(3)
    m = TinyCNN()
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,))
    if opt_name == "sgd_momentum":
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    else:
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    p = sp.MagnitudePruner()
    p.prepare(m, LAYERS)
    handle = p.hook_optimizer(opt)
    for step in range(20):
        if step == 3:
            p.step(0.5)  # prune after momentum / Adam moments have built up
        if step == 10:
            p.step(0.75)
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for n, mask in p.masks().items():
            w = dict(m.named_modules())[n].weight
            assert (w[~mask] == 0).all(), f"{n} revived at step {step}"
    before = {n: dict(m.named_modules())[n].weight.detach().clone() for n in LAYERS}
    loss = nn.functional.cross_entropy(m(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for n, mask in p.masks().items():
        w = dict(m.named_modules())[n].weight.detach()
        assert not torch.equal(w[mask], before[n][mask]), "kept weights must still train"
        assert int((~mask).sum()) == round(0.75 * mask.numel())
    handle.remove()


def test_mask_after_step_helper():
    m = nn.Sequential(nn.Linear(6, 6))
    sp.attach_mask(m[0])[:3] = False
    sp.apply_masks_([m[0]])
    opt = torch.optim.AdamW(m.parameters(), lr=0.1, weight_decay=0.5)
    with torch.no_grad():
        m[0].weight[:3] = 1.0  # someone wrote into pruned weights
    handle = sp.mask_after_step(opt, m)
    m(torch.randn(3, 6)).sum().backward()
    opt.step()
    assert (m[0].weight[:3] == 0).all()
    handle.remove()


# ---------------------------------------------------------------------------------------------------------
# one-shot
# ---------------------------------------------------------------------------------------------------------
def test_magnitude_prune_oneshot_layerwise_and_global():
    torch.manual_seed(4)
    m = TinyCNN()
    out = sp.magnitude_prune_(m, 0.6)  # family inferred: vgg -> all but the first conv
    assert set(out) == {"features.2", "classifier.1", "classifier.3", "overall"}
    assert not sp.masked_modules(m)
    for n in ("features.2", "classifier.1", "classifier.3"):
        w = dict(m.named_modules())[n].weight
        assert int((w == 0).sum()) == round(0.6 * w.numel())
    assert (m.features[0].weight != 0).all()
    g = TinyCNN()
    outg = sp.magnitude_prune_(g, 0.6, scope="global", layers=["classifier.*"])
    total = g.classifier[1].weight.numel() + g.classifier[3].weight.numel()
    zeros = int((g.classifier[1].weight == 0).sum() + (g.classifier[3].weight == 0).sum())
    assert zeros == round(0.6 * total) and outg["overall"] == pytest.approx(zeros / total)


def test_magnitude_prune_bad_input():
    mlp = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="pass layers"):
        sp.magnitude_prune_(mlp, 0.5)
    with pytest.raises(ValueError, match="sparsity=1.2"):
        sp.magnitude_prune_(mlp, 1.2, layers=["0"])
    with pytest.raises(ValueError, match="scope='rows'"):
        sp.magnitude_prune_(mlp, 0.5, scope="rows", layers=["0"])
    with pytest.raises(ValueError, match="NaN weights"):
        with torch.no_grad():
            mlp[0].weight[0, 0] = float("nan")
        sp.magnitude_prune_(mlp, 0.5, layers=["0"])


def test_import_does_not_pull_lightning():
    code = "import sys, spruce.prune; assert 'lightning' not in sys.modules, 'lightning imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
