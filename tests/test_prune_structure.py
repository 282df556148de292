"""Issue 16: block and N:M masks (every group), per-layer targets (exact), hard/soft movement scores by hand,
speed-guided targets, and block-pruned layers through export's packing and the deploy planner."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import spruce.prune as sp
from spruce.prune.structure import Structure, check_structure, flat_2d, structured_lowest
from spruce.prune.targets import load_targets, resolve_targets, speed_guided_targets


class Net(nn.Module):
    """Conv [16, 8, 3, 3] (im2col K = 72) and Linear [32, 64]; shapes divisible by 4x1, 4x4, 2:4 and 8x8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(64, 32)
        self.odd = nn.Linear(10, 6)  # not divisible: edge tiles / a short N:M group

    def forward(self, x):
        return self.conv(x)


def pruned(structure: Structure, s: float, layers=("conv", "fc", "odd"), seed: int = 0) -> tuple[Net, dict]:
    torch.manual_seed(seed)
    net = Net()
    p = sp.MagnitudePruner(structure=structure)
    p.prepare(net, list(layers))
    return net, p.step(s)


@pytest.mark.parametrize("block", [(4, 1), (4, 4), (8, 8), (1, 4)])
@pytest.mark.parametrize("s", [0.25, 0.5, 0.9])
def test_block_masks_every_tile_all_or_nothing_and_exact(block, s):
    net, sparsity = pruned(Structure(block=block), s)
    for name in ("conv", "fc", "odd"):
        mod = getattr(net, name)
        assert check_structure(mod.weight_mask, Structure(block=block)) is None, name
        assert torch.equal(mod.weight == 0, ~mod.weight_mask)
    for name in ("conv", "fc"):  # divisible: exactly round(s * tiles) tiles, so exactly s of the weights
        m, k = flat_2d(getattr(net, name).weight).shape
        tiles = (m // block[0]) * (k // block[1])
        assert sparsity[name] == round(s * tiles) / tiles


def test_block_mask_hand_case():
    # 4x4 scores, 2x2 blocks: tile means 1, 10 / 5, 0.5 -> 50% prunes tiles (1,1) and (0,0)
    scores = torch.tensor([[1., 1, 10, 10], [1, 1, 10, 10], [5, 5, .5, .5], [5, 5, .5, .5]])
    got = structured_lowest(scores, 0.5, Structure(block=(2, 2)))
    want = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(got, want)


def test_conv_blocks_are_over_the_im2col_weight():
    net, _ = pruned(Structure(block=(4, 1)), 0.75, layers=("conv",))
    flat = flat_2d(net.conv.weight_mask)  # [16, 72]: one input column of 4 output channels per tile
    for i in range(0, 16, 4):
        col = flat[i:i + 4]
        assert bool(((col.all(0)) | (~col).all(0)).all())


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (4, 8)])
def test_nm_every_group_exact_at_final_and_at_least_n_on_the_way(nm):
    n, m = nm
    final = 1 - n / m
    torch.manual_seed(1)
    net = Net()
    p = sp.MagnitudePruner(structure=Structure(n_m=nm))
    p.prepare(net, ["conv", "fc", "odd"])
    for s in (final / 3, final / 2):  # AGP ramps up: never fewer than n kept in a group
        p.step(s)
        for name in ("conv", "fc", "odd"):
            assert check_structure(getattr(net, name).weight_mask, Structure(n_m=nm)) is None
    out = p.step(final)
    for name in ("conv", "fc", "odd"):
        assert check_structure(getattr(net, name).weight_mask, Structure(n_m=nm), exact_nm=True) is None, name
    assert out["conv"] == out["fc"] == final  # K = 72 and 64 are multiples of m
    with pytest.raises(ValueError, match="above"):
        p.step(min(0.99, final + 0.1))


def test_nm_hand_case():
    scores = torch.tensor([[4., 3, 2, 1, 1, 2, 3, 4]])
    assert structured_lowest(scores, 0.5, Structure(n_m=(2, 4))).tolist() == [[0, 0, 1, 1, 1, 1, 0, 0]]
    # 25%: the 2 lowest among the eligible (the 2 lowest of each group), ties by position
    assert structured_lowest(scores, 0.25, Structure(n_m=(2, 4))).tolist() == [[0, 0, 0, 1, 1, 0, 0, 0]]


def test_structure_config_errors():
    with pytest.raises(ValueError, match="choose one"):
        Structure(block=(4, 1), n_m=(2, 4))
    with pytest.raises(ValueError, match="n < m"):
        Structure(n_m=(4, 4))
    with pytest.raises(ValueError, match="two integers"):
        Structure(block=(4,))
    with pytest.raises(ValueError, match="layerwise"):
        sp.MagnitudePruner(scope="global", structure=Structure(block=(4, 4)))


# ---- per-layer targets --------------------------------------------------------------------------------------
def test_per_layer_targets_reached_exactly(tmp_path):
    torch.manual_seed(0)
    net = Net()
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"targets": {"conv": 0.3, "f*": 0.75}}))
    finals = resolve_targets(load_targets(str(f)), ["conv", "fc", "odd"], default=0.5)
    assert finals == {"conv": 0.3, "fc": 0.75, "odd": 0.5}
    p = sp.MagnitudePruner()
    p.prepare(net, list(finals))
    out = p.step(finals)
    for name, t in finals.items():
        w = getattr(net, name).weight
        assert int((w == 0).sum()) == round(t * w.numel())
    assert out["fc"] == 0.75 and p.state_dict()["target"] == finals


def test_targets_errors(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        load_targets(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        load_targets({"fc": 1.0})
    with pytest.raises(ValueError, match="matches none"):
        resolve_targets({"nope": 0.5}, ["conv", "fc"], 0.5)
    (tmp_path / "t.yaml").write_text("fc: 0.6\n")
    assert load_targets(str(tmp_path / "t.yaml")) == {"fc": 0.6}


def test_callback_agp_drives_each_layer_to_its_target():
    pl = pytest.importorskip("lightning.pytorch")
    from tests.test_prune_callback import LitTiny, loader, masks_of, trainer  # noqa: F401

    finals = {"features.2": 0.5, "classifier.1": 0.875, "classifier.3": 0.0}
    cb = sp.PruningCallback(final=0.9, start=1, end=6, every=1, targets=finals, block=[2, 1])
    lit = LitTiny()
    trainer(8, [cb]).fit(lit, loader())
    for name, t in finals.items():
        mod = dict(lit.model.named_modules())[name]
        w = mod.weight
        assert int((w == 0).sum()) == round(t * w.numel()), name
        assert check_structure(mod.weight_mask, Structure(block=(2, 1))) is None
    assert pl is not None


# ---- movement scores by hand --------------------------------------------------------------------------------
def _two_by_two(score: str, **kw):
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
    p = sp.MagnitudePruner(score=score, **kw)
    p.prepare(nn.Sequential(lin), ["0"])
    lin.weight.grad = torch.tensor([[0.1, 0.1], [-0.2, 0.4]])  # w * g = [[0.1, -0.2], [-0.6, 0.2]]
    return lin, p


def test_hard_movement_scores_by_hand():
    lin, p = _two_by_two("movement")
    p.accumulate()
    p.accumulate()  # twice: S = -2 * w * g
    assert torch.allclose(p.movement.scores["0"], torch.tensor([[-0.2, 0.4], [1.2, -0.4]]))
    p.step(0.5)  # lowest: (1,1) = -0.4 and (0,0) = -0.2; magnitude would prune (1,1) and (0,0) too, so check 25%
    assert lin.weight_mask.tolist() == [[False, True], [True, False]]


def test_hard_movement_differs_from_magnitude():
    lin, p = _two_by_two("movement")
    p.accumulate()
    p.step(0.25)  # S = [[-0.1, 0.2], [0.6, -0.2]]: prunes (1,1) (|w| = 0.5 would too) ...
    assert lin.weight_mask.tolist() == [[True, True], [True, False]]
    lin.weight.grad = torch.tensor([[-1.0, 0.0], [0.0, 0.0]])  # ... now w=1 moves away from 0: S00 = 0.9
    p.accumulate()
    lin.weight.grad = torch.tensor([[0.0, -1.0], [0.0, 0.0]])  # w=-2 shrinks: S01 = 0.2 - 2 = -1.8
    p.accumulate()
    p.step(0.5)  # magnitude would prune w=1 (|1| < |-2|); movement prunes w=-2
    assert lin.weight_mask.tolist() == [[True, False], [True, False]]


def test_soft_movement_scores_by_hand():
    # one Adam step from S = 0: m = (1-b1) g, v = (1-b2) g^2 -> step = g / (|g| + eps) = sign(g), S = -lr sign(g)
    lin, p = _two_by_two("soft_movement", score_lr=0.1, score_reg=0.0)
    p.accumulate()
    assert torch.allclose(p.movement.scores["0"], torch.tensor([[-0.1, 0.1], [0.1, -0.1]]), atol=1e-6)
    # regulariser lambda * sum(sigmoid(S)): its gradient at S = 0 is lambda / 4 = 0.25 for lambda = 1, so
    # g = w*grad + 0.25 = [[0.35, 0.05], [-0.35, 0.45]]: every sign is that of g, (1,0) still moves up
    lin, p = _two_by_two("soft_movement", score_lr=0.1, score_reg=1.0)
    p.accumulate()
    assert torch.allclose(p.movement.scores["0"], torch.tensor([[-0.1, -0.1], [0.1, -0.1]]), atol=1e-6)
    p.step(0.75)  # the three at -0.1 go, the one moving up stays (magnitude would keep w=-2 instead)
    assert lin.weight_mask.tolist() == [[False, False], [True, False]]
    state = p.state_dict()["movement"]
    assert state["t"] == {"0": 1} and state["reg"] == 1.0
    q = sp.MagnitudePruner(score="soft_movement", score_lr=0.1, score_reg=1.0)
    q.load_state_dict(p.state_dict())
    assert torch.equal(q.movement.scores["0"], p.movement.scores["0"])


def test_hard_movement_revives_a_weight_whose_score_rises():
    # Sanh et al. (straight-through): a pruned weight's score still moves with the gradient of the masked weight
    # times the value it had when pruned, and it comes back, with that value, once its score is in the top-k again
    lin, p = _two_by_two("movement")
    p.accumulate()  # S = -w*g = [[-0.1, 0.2], [0.6, -0.2]]
    p.step(0.25)  # prunes (1,1): w = 0.5 -> 0
    assert lin.weight_mask.tolist() == [[True, True], [True, False]] and lin.weight[1, 1] == 0
    lin.weight.grad = torch.tensor([[0.0, 0.0], [0.0, -2.0]])  # dL/dW'_11 = -2: the masked weight wants to grow
    p.accumulate()  # S11 = -0.2 - 0.5 * (-2) = 0.8 (0.5: its value when pruned, not the 0 in the model)
    assert p.movement.scores["0"][1, 1].item() == pytest.approx(0.8)
    assert lin.weight.grad[1, 1] == 0  # masked once the scores have read it
    p.step(0.25)  # now (0,0) at -0.1 is the lowest: it goes; (1,1) comes back with 0.5
    assert lin.weight_mask.tolist() == [[False, True], [True, True]]
    assert lin.weight.tolist() == [[0.0, -2.0], [3.0, 0.5]]
    assert p.movement.shadow["0"][0, 0] == 1.0  # kept for a later revival
    # the shadow travels in the pruner's state (a plain tensor dict, weights_only-safe) ...
    q = sp.MagnitudePruner(score="movement")
    q.load_state_dict(p.state_dict())
    assert torch.equal(q.movement.shadow["0"], p.movement.shadow["0"])
    # ... and a checkpoint from before (scores only, {layer: S}) still loads
    q.load_state_dict({**p.state_dict(), "movement": {"0": torch.ones(2, 2)}})
    assert torch.equal(q.movement.scores["0"], torch.ones(2, 2)) and q.movement.shadow == {}


def test_soft_movement_revives_a_weight_whose_score_rises():
    lin, p = _two_by_two("soft_movement", score_lr=0.1)
    p.accumulate()  # one Adam step: S = -0.1 sign(w*g) = [[-0.1, 0.1], [0.1, -0.1]]
    p.step(0.25)  # a tie at -0.1: the first position goes
    assert lin.weight_mask.tolist() == [[False, True], [True, True]] and lin.weight[0, 0] == 0
    for _ in range(5):
        lin.weight.grad = torch.tensor([[-5.0, 0.0], [0.0, 0.0]])  # the pruned w=1 is pushed away from zero
        p.accumulate()
    s = p.movement.scores["0"]
    assert s[0, 0] > s[1, 1]  # its score rose past (1,1)'s (whose Adam momentum keeps it falling)
    p.step(0.25)
    assert lin.weight_mask.tolist() == [[True, True], [True, False]]
    assert lin.weight[0, 0] == 1.0 and lin.weight[1, 1] == 0 and p.movement.shadow["0"][1, 1] == 0.5


@pytest.mark.parametrize("score", ["magnitude", "movement", "soft_movement"])
def test_gradient_of_pruned_weights_reaches_only_movement_scores(score):
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
    p = sp.MagnitudePruner(score=score)
    p.prepare(nn.Sequential(lin), ["0"])
    p.step(0.25)  # magnitude prunes |w| = 0.5 at (1,1); movement scores are all 0 yet, the tie goes to (0,0)
    i, j = (1, 1) if score == "magnitude" else (0, 0)
    assert int((~lin.weight_mask).sum()) == 1 and not lin.weight_mask[i, j]
    lin(torch.ones(1, 2)).sum().backward()  # dL/dW' = 1 everywhere
    # magnitude masks the gradient in its hook; movement passes it whole to accumulate(), which masks it
    assert lin.weight.grad[i, j].item() == (0.0 if score == "magnitude" else 1.0)
    p.accumulate()
    assert lin.weight.grad.tolist() == lin.weight_mask.float().tolist()
    if score == "movement":  # the pruned entry's score read its gradient with its value when pruned: -1.0 * 1
        assert p.movement.scores["0"][0, 0].item() == pytest.approx(-1.0)
    p.squash()
    assert not hasattr(lin, "_spruce_defer_grad_mask")


# ---- speed-guided targets -----------------------------------------------------------------------------------
def test_speed_guided_targets_budget_and_rules():
    sizes = {"a": 300, "b": 100, "c": 100}
    cross = {"a": 0.5, "b": 0.95, "c": None}  # b pays only past 0.95, c never
    t, why = speed_guided_targets(sizes, cross, 0.6, margin=0.02, max_sparsity=0.98)
    assert t["c"] == 0.0 and why["c"].startswith("dense")
    assert t["b"] == pytest.approx(0.97) and "pushed" in why["b"]
    assert (t["a"] * 300 + t["b"] * 100) / 500 == pytest.approx(0.6)  # same parameter budget as uniform 0.6
    assert t["a"] == pytest.approx(203 / 300)
    for n in ("a", "b"):
        assert t[n] >= cross[n] + 0.02 - 1e-9  # no pruned layer below its crossover
    t2, why2 = speed_guided_targets(sizes, cross, 0.9)
    assert t2["a"] == 0.98 and t2["b"] == 0.0 and "not reachable" in why2["a"]  # margin 0.05: b never pays


# ---- block masks through export packing and the deploy planner ----------------------------------------------
def test_block_pruned_layers_pack_and_plan_on_bsr_kernels():
    from spruce.deploy.plan import plan
    from spruce.kernels import get as get_kernel

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 32))
    p = sp.MagnitudePruner(structure=Structure(block=(4, 4)))
    p.prepare(model, ["0", "3"])
    p.step(0.75)
    p.squash()
    bsr = get_kernel("torch_bsr4")
    for name in ("0", "3"):
        w = flat_2d(model[int(name)].weight.detach())
        packed = bsr.prepare(w)
        assert packed.tensor.values().shape[0] == (w.shape[0] // 4) * (w.shape[1] // 4) // 4  # 25% of the tiles
        assert bool((packed.tensor.values() != 0).all())  # every stored block is full: no padding inside
    x = torch.randn(1, 8, 4, 4)
    the_plan = plan(model.eval(), x, [bsr, get_kernel("torch_csr")], mode="sparse", repeats=1, warmup=0,
                    progress=False, budget_s=0.2)
    assert set(the_plan.layers) == {"0", "3"}
    assert all(e["kernel"] in ("torch_bsr4", "torch_csr") for e in the_plan.layers.values())


# ---- sensitivity ----------------------------------------------------------------------------------------------
def test_sensitivity_one_layer_at_a_time_restores_and_writes_files(tmp_path):
    from spruce.prune.sensitivity import sensitivity, write_sensitivity

    torch.manual_seed(0)
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 8, 4, 4)
    ref = net(x).detach()
    seen = []

    def evaluate(model):  # "accuracy": 1 - relative output error; only the conv matters, so fc/odd drop 0
        seen.append({n: float((getattr(model, n).weight == 0).float().mean()) for n in ("conv", "fc")})
        with torch.no_grad():
            return 1.0 - float((model(x) - ref).norm() / ref.norm())

    res = sensitivity(net, evaluate, ["conv", "fc"], [0.5, 0.9], Structure(block=(4, 1)))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # weights restored bit for bit
    assert [(r["layer"], r["sparsity"]) for r in res["rows"]] == [("conv", 0.5), ("conv", 0.9), ("fc", 0.5),
                                                                  ("fc", 0.9)]
    assert seen[1] == {"conv": 0.5, "fc": 0.0} and seen[4] == {"conv": 0.0, "fc": 461 / 512}  # one at a time
    # (fc: 8 x 64 tiles of 4x1, round(0.9 * 512) = 461 pruned)
    assert res["rows"][0]["drop"] > 0 and res["rows"][3]["drop"] == 0
    files = write_sensitivity(res, tmp_path, tolerance=1e-9, title="tiny")
    assert {p.name for p in files.values()} == {"sensitivity.csv", "sensitivity.md", "sensitivity.png",
                                               "targets.json"}
    tg = load_targets(str(files["targets"]))
    assert tg == {"conv": 0.0, "fc": 0.9}
    assert "| conv |" in files["md"].read_text() and files["png"].stat().st_size > 1000


def test_train_block_targets_resume_and_sensitivity_cli_job(tmp_path):
    """Real train job (tiny VGG): 4x1 blocks + a per-layer target, resume keeps block masks, then the
    mode=sensitivity job on the checkpoint writes its files and a target file train accepts."""
    pytest.importorskip("lightning")
    from spruce.models.sensitivity_job import run_sensitivity
    from spruce.models.train_job import train
    from tests.test_train import TINY_VGG, make_cfg

    targets = tmp_path / "t.json"
    targets.write_text(json.dumps({"features.3": 0.5}))
    over = [*TINY_VGG, "logger=none", "trainer.max_epochs=1", "prune.block=[4,1]", f"prune.targets={targets}"]
    s1 = train(make_cfg(*over), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    sd = state["state_dict"]
    masks = {k[6:-12]: v for k, v in sd.items() if k.endswith(".weight_mask")}
    for fqn, mask in masks.items():
        assert check_structure(mask, Structure(block=(4, 1))) is None, fqn
        want = 0.5 if fqn == "features.3" else 0.9
        rows, k = flat_2d(mask).shape
        if rows % 4 == 0:  # exact to one 4x1 tile
            tiles = rows // 4 * k
            assert s1["sparsity"][fqn] == round(want * tiles) / tiles, fqn
    s2 = train(make_cfg(*over, "trainer.max_epochs=2", f"ckpt_path={ckpt}"), tmp_path / "run2")
    assert s2["sparsity"] == s1["sparsity"]
    with pytest.raises(ValueError, match="block4x1"):
        train(make_cfg(*TINY_VGG, "logger=none", "trainer.max_epochs=2", f"ckpt_path={ckpt}",
                       f"prune.targets={targets}"), tmp_path / "run3")
    out = run_sensitivity(make_cfg(*TINY_VGG, "mode=sensitivity", f"ckpt_path={ckpt}", "sensitivity.sparsities=[0.5]",
                                   "sensitivity.limit_batches=1", "sensitivity.verbose=false",
                                   "prune.layers=[features.3,classifier.*]"), tmp_path / "sens")
    assert set(out["targets"]) >= {"features.3"} and (tmp_path / "sens" / "sensitivity.png").is_file()
    assert load_targets(out["files"]["targets"])


def test_speed_targets_from_a_performance_model():
    from spruce.kernels import get as get_kernel
    from spruce.perf import MachineProfile
    from spruce.study.guided import speed_targets

    prof = MachineProfile(name="toy", peak_gflops=50.0, bw_gbs=10.0, cache_bytes=1e6, threads=1,
                          sparse_eff={"torch_csr": 0.05}, overhead_us={"default": 5.0, "torch_csr": 5.0})
    model = nn.Sequential(nn.Conv2d(8, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 8 * 8, 256))
    out = speed_targets(model.eval(), torch.randn(1, 8, 8, 8), ["0", "3"], 0.8, prof, [get_kernel("torch_csr")])
    sizes = {"0": 64 * 72, "3": 256 * 4096}
    assert sum(out["targets"][n] * sizes[n] for n in sizes) / sum(sizes.values()) == pytest.approx(0.8, abs=1e-6)
    for n, c in out["crossovers"].items():
        if out["targets"][n] > 0:
            assert c["crossover"] is not None and out["targets"][n] >= c["crossover"] + 0.05 - 1e-9
