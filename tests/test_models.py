"""Model builders, example inputs, the LR schedule and safe checkpoint loading."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from spruce.models import build_model, example_input, model_family
from spruce.models.checkpoint import load_checkpoint, model_from_checkpoint, model_state_dict
from spruce.models.optim import build_optimizer, warmup_cosine

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def test_vgg16_small_head_shapes_and_family():
    m = build_model("vgg16", num_classes=7, input_size=32, width_div=16)
    assert m.family == "vgg" and model_family(m) == "vgg"
    assert isinstance(m.avgpool, nn.Identity)
    assert [type(x) for x in m.classifier if isinstance(x, nn.Linear)] == [nn.Linear, nn.Linear]
    assert m(example_input(m, 3)).shape == (3, 7)
    assert m.spruce_config == {"name": "vgg16", "num_classes": 7, "input_size": 32, "width_div": 16,
                               "init": "scratch"}
    convs = [x for x in m.features if isinstance(x, nn.Conv2d)]
    assert len(convs) == 13 and any(isinstance(x, nn.BatchNorm2d) for x in m.features)


def test_vgg16_real_widths_and_plain_variant():
    m = build_model("vgg16", num_classes=10, input_size=32)
    assert m.features[0].out_channels == 64 and m.classifier[0].in_features == 512
    assert 14.9e6 < sum(p.numel() for p in m.parameters()) < 15.1e6
    plain = build_model("vgg16", num_classes=10, batch_norm=False, width_div=16)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in plain.modules())


def test_vgg16_224_keeps_torchvision_head():
    m = build_model("vgg16", num_classes=5, input_size=224, width_div=16)
    assert isinstance(m.avgpool, nn.AdaptiveAvgPool2d) and len(m.classifier) == 7
    assert m.classifier[6].out_features == 5
    assert m(example_input(m, 1)).shape == (1, 5)


def test_vgg16_convs_use_kaiming_init():
    m = build_model("vgg16", num_classes=10, width_div=2)
    conv = m.features[3]  # 32 -> 32 channels, 3x3
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)


@pytest.mark.parametrize("kwargs, match", [
    ({"input_size": 40}, "multiple of 32"), ({"weights": "nope"}, "IMAGENET1K_V1"), ({"head": "x"}, "head"),
    ({"width_div": 3}, "width_div"), ({"num_classes": 0}, "num_classes"),
])
def test_vgg16_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model("vgg16", **{"num_classes": 10, **kwargs})


def test_unknown_model_name():
    with pytest.raises(ValueError, match="allowed: vgg16, bert_base, minilm"):
        build_model("resnet50")


def test_bert_base_random_init_is_labelled_and_rebuilds_from_arch():
    m = build_model("bert_base", num_classes=3, pretrained=None, config=TINY_BERT)
    assert m.family == "bert" and m.spruce_config["init"] == "random-init"
    x = example_input(m, 2, seq_len=16)
    assert set(x) == {"input_ids", "attention_mask"} and x["input_ids"].shape == (2, 16)
    assert m(**x).logits.shape == (2, 3)
    again = build_model(**m.spruce_config)
    assert again.config.hidden_size == 32 and again.config.num_labels == 3
    assert again.spruce_config["init"] == "random-init"


def test_bert_base_full_size_without_weights():
    m = build_model("bert_base", num_classes=2, pretrained=None)
    assert 109e6 < sum(p.numel() for p in m.parameters()) < 110e6


def test_bert_base_pretrained_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="model.pretrained=null") as e:
        build_model("bert_base", num_classes=2, pretrained="/nonexistent/bert-dir")
    assert "\n" not in str(e.value)


def test_minilm_is_real_pretrained_weights():
    a = build_model("minilm", num_classes=6)
    b = build_model("minilm", num_classes=6)
    assert a.config.num_hidden_layers == 6 and a.config.hidden_size == 384
    assert 22e6 < sum(p.numel() for p in a.parameters()) < 23e6
    # pretrained encoder weights are identical across loads (only the new head is random)
    assert torch.equal(a.bert.encoder.layer[0].attention.self.query.weight,
                       b.bert.encoder.layer[0].attention.self.query.weight)
    assert a.spruce_config["init"] == "pretrained" and "arch" in a.spruce_config


def test_example_input_by_name():
    assert example_input("vgg16", 2, input_size=64).shape == (2, 3, 64, 64)
    assert example_input("bert_base", 4)["input_ids"].shape == (4, 128)
    with pytest.raises(ValueError, match="batch_size"):
        example_input("vgg16", 0)


def test_warmup_cosine_schedule():
    f = warmup_cosine(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    assert all(f(i) >= f(i + 1) for i in range(10, 100))


def test_optimizer_no_decay_on_biases():
    m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    opt = build_optimizer(m, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.1})
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert len(opt.param_groups[0]["params"]) == 1 and len(opt.param_groups[1]["params"]) == 3
    with pytest.raises(ValueError, match="allowed: sgd, adamw"):
        build_optimizer(m, {"name": "lbfgs", "lr": 1.0})


def _fake_ckpt(tmp_path, model):
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["model.features.3.weight_mask"] = torch.ones_like(model.features[3].weight, dtype=torch.bool)
    ckpt = {"state_dict": state, "spruce": {"model": dict(model.spruce_config), "data": {}, "layers": {},
                                           "sparsity": {}, "metrics": {}, "version": 1}}
    path = tmp_path / "m.ckpt"
    torch.save(ckpt, path)
    return path


def test_model_from_checkpoint_roundtrip(tmp_path):
    m = build_model("vgg16", num_classes=10, width_div=16).eval()
    path = _fake_ckpt(tmp_path, m)
    rebuilt, meta = model_from_checkpoint(path)
    x = example_input(m, 2)
    assert not rebuilt.training and meta["model"]["name"] == "vgg16"
    torch.testing.assert_close(rebuilt(x), m(x))
    assert not hasattr(rebuilt.features[3], "weight_mask")


def test_model_state_dict_folds_parametrizations():
    sd = {"model.a.parametrizations.weight.original": torch.ones(1), "model.a.weight_mask": torch.ones(1),
          "model.a.bias": torch.zeros(1), "other": torch.ones(1)}
    assert set(model_state_dict(sd)) == {"a.weight", "a.bias"}


@pytest.mark.parametrize("kind", ["missing", "corrupt", "foreign", "pickle", "directory"])
def test_load_checkpoint_bad_files_are_one_line_errors(tmp_path, kind):
    path = tmp_path / "x.ckpt"
    if kind == "corrupt":
        path.write_bytes(b"not a zip file at all")
    elif kind == "foreign":
        torch.save({"state_dict": {}, "epoch": 1}, path)
    elif kind == "pickle":
        torch.save({"spruce": {"version": 1}, "state_dict": {}, "obj": nn.Linear(2, 2)}, path)  # needs unpickling code
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(ValueError) as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
