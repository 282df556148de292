"""Fusion of Linear/Conv2d -> ReLU/GELU into the kernels' epilogue: detection on real module trees (built on the
meta device, no weights), fused outputs against dense layer + activation, plan -> convert -> verify."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spruce.deploy import Plan, SparseConv2d, SparseLinear, convert_, plan, verify
from spruce.deploy.fusion import activation_name, find_fusions
from spruce.kernels import get, kernels
from tests.test_deploy import tiny_bert, tiny_cnn

CPU_KERNELS = [k.name for k in kernels(device="cpu")]


def _meta(build):
    with torch.device("meta"):
        return build()


def test_bert_base_tree_fuses_every_intermediate_gelu() -> None:
    from transformers import BertConfig, BertForSequenceClassification
    m = _meta(lambda: BertForSequenceClassification(BertConfig()))
    f = find_fusions(m)
    assert sorted(f) == sorted(f"bert.encoder.layer.{i}.intermediate.dense" for i in range(12))
    assert all(v == {"activation": "gelu", "module": k.replace(".dense", ".intermediate_act_fn")} for k, v in f.items())


def test_minilm_tree_fuses_six_gelus() -> None:
    from spruce.models import build_model
    m = _meta(lambda: build_model("minilm", pretrained=False))
    f = find_fusions(m)
    assert len(f) == 6 and {v["activation"] for v in f.values()} == {"gelu"}


def test_vgg16_tree_fuses_conv_relu_and_linear_relu() -> None:
    from spruce.models import build_model
    from spruce.prune import default_prunable
    m = _meta(lambda: build_model("vgg16", input_size=224, batch_norm=False, weights=None, num_classes=1000))
    f = find_fusions(m)
    convs = [k for k in f if k.startswith("features.")]
    assert len(convs) == 13 and sorted(k for k in f if k.startswith("classifier.")) == ["classifier.0", "classifier.3"]
    assert all(v["activation"] == "relu" for v in f.values())
    # restricted to the prunable layers (not the first conv) as the planner asks
    assert len(find_fusions(m, default_prunable(m, "vgg"))) == 14


def test_vgg16_bn_relu_follows_batchnorm_not_fused() -> None:
    from spruce.models import build_model
    m = _meta(lambda: build_model("vgg16", input_size=32, batch_norm=True))
    assert not [k for k in find_fusions(m) if k.startswith("features.")]


def test_not_fused_tanh_gelu_shared_activation_and_rewired_forward() -> None:
    assert activation_name(nn.GELU(approximate="tanh")) is None
    relu = nn.ReLU()
    shared = nn.Sequential(nn.Linear(4, 4), relu, nn.Linear(4, 4), relu)
    assert find_fusions(shared) == {}
    assert find_fusions(nn.Sequential(nn.Linear(4, 4), nn.GELU(approximate="tanh"))) == {}

    class Rewired(nn.Module):  # structure of BertIntermediate, but the Linear's output also feeds a residual
        def __init__(self) -> None:
            super().__init__()
            self.dense, self.intermediate_act_fn = nn.Linear(4, 4), nn.GELU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.dense(x)
            return self.intermediate_act_fn(h * 2) + h

    assert list(find_fusions(Rewired())) == ["dense"]  # structure alone cannot tell ...
    assert find_fusions(Rewired(), example_input=torch.randn(2, 4)) == {}  # ... the forward pass can


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_fused_layer_matches_dense_plus_activation(kernel: str) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(40, 24)
    conv = nn.Conv2d(6, 10, 3, padding=1)
    with torch.no_grad():
        for mod in (lin, conv):
            mod.weight[torch.rand_like(mod.weight) < 0.8] = 0
    x, xc = torch.randn(3, 5, 40), torch.randn(2, 6, 7, 7)
    k = get(kernel)
    with torch.inference_mode():
        y = SparseLinear.from_linear(lin, k, activation="gelu")(x)
        torch.testing.assert_close(y, F.gelu(lin(x)), rtol=1e-4, atol=1e-5)
        yc = SparseConv2d.from_conv(conv, k, activation="relu")(xc)
        torch.testing.assert_close(yc, F.relu(conv(xc)), rtol=1e-4, atol=1e-5)


def test_plan_records_fusions_and_convert_fuses_cnn() -> None:
    m = tiny_cnn()
    x = torch.randn(2, 3, 8, 8)
    p = plan(m, x, kernels(device="cpu", fmt="csr"), mode="sparse", progress=False, repeats=1, budget_s=0.02)
    fused = {k: v["fusion"] for k, v in p.layers.items() if "fusion" in v}
    assert fused == {"0": {"activation": "relu", "module": "1"}, "2": {"activation": "relu", "module": "3"},
                     "5": {"activation": "relu", "module": "6"}, "8": {"activation": "relu", "module": "9"}}
    assert p.meta["fusions"] == 4 and "fusion" not in p.layers["10"]
    s = copy.deepcopy(m)
    convert_(s, p)
    assert [type(s[i]).__name__ for i in (1, 3, 6, 9)] == ["Identity"] * 4
    assert s[0].activation == "relu" and s[10].activation == "none"
    verify(m, s, x)  # per layer: fused output vs dense layer + ReLU
    nofuse = plan(m, x, kernels(device="cpu", fmt="csr"), mode="sparse", progress=False, repeats=1, budget_s=0.02,
                  fuse=False)
    assert nofuse.meta["fusions"] == 0


def test_plan_fuses_bert_gelu_and_verifies() -> None:
    m, x = tiny_bert()
    p = plan(m, x, [get("spruce_csr")], mode="sparse", progress=False, repeats=1, budget_s=0.02)
    assert sorted(k for k, v in p.layers.items() if "fusion" in v) == [
        "encoder.layer.0.intermediate.dense", "encoder.layer.1.intermediate.dense"]
    s = copy.deepcopy(m)
    convert_(s, p)
    assert isinstance(s.encoder.layer[0].intermediate.intermediate_act_fn, nn.Identity)
    verify(m, s, x)


def test_dense_pick_keeps_activation_module() -> None:
    m = tiny_cnn()
    x = torch.randn(2, 3, 8, 8)
    p = plan(m, x, kernels(device="cpu", fmt="csr"), mode="dense", progress=False, repeats=1, budget_s=0.02)
    assert p.meta["fusions"] == 0 and all(e.get("fusable") == "relu" for k, e in p.layers.items() if k != "10")
    s = copy.deepcopy(m)
    convert_(s, p)
    assert isinstance(s[1], nn.ReLU)


def test_convert_rejects_plan_fusing_a_missing_activation() -> None:
    m = tiny_cnn()
    bad = Plan(layers={"0": {"kernel": "spruce_csr", "fusion": {"activation": "relu", "module": "4"}}})
    with pytest.raises(ValueError, match="MaxPool2d"):
        convert_(copy.deepcopy(m), bad)
