"""train.py: every config group composes and instantiates, a tiny end-to-end run, resume, and bad inputs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from spruce.data.fortunes import DEFAULT_ROOT as FORTUNES_ROOT
from spruce.models.train_config import ConfigError, check_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TINY_VGG = ["model.width_div=16", "data.limit=200", "trainer=smoke", "logger=csv", "prune.start=0",
            "prune.end=1", "prune.every=0.25"]
MID_SCHEDULE = ["prune.end=2", "prune.every=0.3"]  # 3 steps/epoch: prune every step from step 0 to 6
HALFWAY = 0.9 * (1 - (1 - 3 / 6) ** 3)  # AGP target after 3 of 6 steps: 0.7875
TINY_BERT = "+model.config={hidden_size:32,num_hidden_layers:2,num_attention_heads:2,intermediate_size:64}"


def make_cfg(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def group_names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_defaults_are_the_documented_job():
    cfg = make_cfg()
    assert (cfg["model"]["name"], cfg["data"]["name"], cfg["prune"]["method"]) == ("vgg16", "digits", "agp")
    assert cfg["prune"]["final"] == 0.9 and cfg["model"]["batch_norm"] is True
    assert cfg["logger"] == {"name": "wandb", "offline": True, "project": "spruce", "entity": None, "tags": [],
                             "group": None}
    assert cfg["ckpt_path"] is None and cfg["trainer"]["enable_progress_bar"] is True
    check_config(cfg)


@pytest.mark.parametrize("group", ["prune", "trainer", "logger", "experiment"])
def test_every_option_of_a_group_composes_and_validates(group):
    names = group_names(group)
    assert names
    for name in names:
        cfg = make_cfg(f"{group}={name}")
        check_config(cfg)
        if group == "prune":
            assert {"final", "initial", "start", "end", "every", "unit", "scope"} <= set(cfg["prune"])


def test_experiments_set_what_they_say():
    cfg = make_cfg("experiment=minilm_fortunes")
    assert (cfg["model"]["name"], cfg["data"]["name"], cfg["prune"]["final"]) == ("minilm", "fortunes", 0.8)
    assert cfg["trainer"]["max_epochs"] == 6 and (cfg["prune"]["start"], cfg["prune"]["end"]) == (1, 3.5)


def test_every_model_group_instantiates():
    from spruce.models import build_model
    assert group_names("model") == ["bert_base", "minilm", "vgg16"]
    for name, extra, data in (("vgg16", ["model.width_div=16"], "digits"),
                              ("bert_base", ["model.pretrained=null", TINY_BERT], "fortunes"),
                              ("minilm", [], "fortunes")):
        cfg = make_cfg(f"model={name}", f"data={data}", *extra)
        check_config(cfg)
        model = build_model(**{k: v for k, v in cfg["model"].items()}, num_classes=4)
        assert model.family == ("vgg" if name == "vgg16" else "bert")


def test_every_data_group_instantiates(tmp_path):
    from spruce.data import build_datamodule
    from spruce.models.bert import build_tokenizer
    assert group_names("data") == ["cifar10", "digits", "fortunes", "imagenet", "sst2"]
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
    tok = build_tokenizer("minilm")
    for name in group_names("data"):
        model = "vgg16" if name in ("digits", "cifar10", "imagenet") else "minilm"
        cfg = make_cfg(f"data={name}", f"model={model}")
        check_config(cfg)
        data = dict(cfg["data"])
        if name == "imagenet":
            data["root"] = str(tmp_path)
        dm = build_datamodule(data.pop("name"), tokenizer=tok, **data)
        assert dm.num_classes >= 2 and dm.kind in ("image", "text")


@pytest.mark.parametrize("overrides, match", [
    (["prune.final=1.0"], r"prune.final=1.0 is not allowed; it must be in \[0, 1\)"),
    (["prune.final=-0.1"], r"prune.final=-0.1"),
    (["prune.start=3", "prune.end=1"], r"prune.start=3 > prune.end=1"),
    (["prune.unit=fortnight"], "allowed: step, epoch"),
    (["prune=none", "prune.final=0.5"], "dense baseline"),
    (["model=minilm"], "cannot train on data=digits"),
    (["data=fortunes"], "cannot train on data=fortunes"),
    (["ckpt_path=/no/such/file.ckpt"], "does not exist"),
    (["model.optim.lr=-1"], "model.optim.lr=-1"),
])
def test_bad_config_is_one_line(overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        check_config(make_cfg(*overrides))
    assert "\n" not in str(e.value)


def test_bad_checkpoints(tmp_path):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="cannot be read safely"):
        check_config(make_cfg(f"ckpt_path={corrupt}"))
    other = tmp_path / "bert.ckpt"
    torch.save({"state_dict": {}, "spruce": {"model": {"name": "minilm"}, "version": 1}}, other)
    with pytest.raises(ConfigError, match="holds model 'minilm', not model='vgg16'"):
        check_config(make_cfg(f"ckpt_path={other}"))
    vgg = tmp_path / "vgg.ckpt"
    torch.save({"state_dict": {}, "spruce": {"model": {"name": "vgg16", "width_div": 2}, "version": 1}}, vgg)
    with pytest.raises(ConfigError, match="model.width_div=2"):
        check_config(make_cfg(f"ckpt_path={vgg}", "model.width_div=16"))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A tiny AGP run to 90% over 6 steps, stopped after 3 (one epoch), with the W&B offline logger."""
    from spruce.models.train_job import train
    run_dir = tmp_path_factory.mktemp("run1")
    cfg = make_cfg(*TINY_VGG, "logger=wandb", "trainer.max_epochs=1", *MID_SCHEDULE)
    return train(cfg, run_dir), run_dir


def test_end_to_end_checkpoint_is_safe_sparse_and_rebuilds(first_run):
    from spruce.models import example_input
    from spruce.models.checkpoint import model_from_checkpoint
    summary, run_dir = first_run
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    assert Path(summary["checkpoint"]) == ckpt_path
    assert sorted(p.name for p in ckpt_path.parent.iterdir()) == ["last.ckpt"]  # no temp files, no versions
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    meta = ckpt["spruce"]
    assert meta["version"] == 1 and meta["model"]["name"] == "vgg16" and meta["data"]["name"] == "digits"
    assert "hyper_parameters" not in ckpt and "PruningCallback" in ckpt["callbacks"]
    masks = {k[len("model."):-len(".weight_mask")]: v for k, v in ckpt["state_dict"].items()
             if k.endswith(".weight_mask")}
    assert len(masks) == 14 and "features.0" not in masks  # all convs/linears but the first conv
    for fqn, mask in masks.items():
        weight = ckpt["state_dict"][f"model.{fqn}.weight"]
        assert mask.dtype == torch.bool and (weight[~mask] == 0).all()
        assert abs((~mask).float().mean().item() - HALFWAY) < 0.01, fqn
        assert meta["layers"][fqn]["pruned"] is True
    assert meta["layers"]["features.0"]["pruned"] is False
    assert abs(meta["sparsity"]["overall"] - HALFWAY) < 1e-3
    assert abs(summary["sparsity"]["overall"] - HALFWAY) < 1e-3
    assert 0.0 <= meta["metrics"]["val_acc"] <= 1.0 and meta["metrics"]["val_acc_initial"] is not None
    model, meta2 = model_from_checkpoint(ckpt_path)
    assert meta2["model"] == meta["model"] and not hasattr(model.features[3], "weight_mask")
    assert (model.features[3].weight == 0).float().mean().item() == pytest.approx(HALFWAY, abs=0.01)
    x = example_input(model, 2)
    assert model(x).shape == (2, 10)
    # outputs for people: summary files and an offline W&B run
    assert (run_dir / "summary.json").is_file() and "| accuracy final |" in (run_dir / "summary.md").read_text()
    wandb_dir = Path(summary["wandb_dir"])
    assert wandb_dir.parent == run_dir / "wandb" and wandb_dir.name.startswith("offline-run-")
    assert list(wandb_dir.glob("*.wandb"))


def test_resume_continues_schedule_and_keeps_masks(first_run, tmp_path):
    from spruce.models.train_job import train
    _, run_dir = first_run
    old = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    cfg = make_cfg(*TINY_VGG, "trainer.max_epochs=2", *MID_SCHEDULE,
                   f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    summary = train(cfg, tmp_path)
    assert summary["global_step"] == old["global_step"] + 3 == 6  # 3 more steps, not a restart
    assert summary["val_acc_initial"] == old["spruce"]["metrics"]["val_acc_initial"]
    assert abs(summary["sparsity"]["overall"] - 0.9) < 1e-3  # the schedule went on from 0.7875 to 0.9
    new = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    n_masks = 0
    for key, mask in old["state_dict"].items():
        if key.endswith(".weight_mask"):
            n_masks += 1
            newmask = new["state_dict"][key]
            assert not (newmask & ~mask).any(), key  # what was pruned before the resume stays pruned
            assert (~newmask).sum() > (~mask).sum(), key
    assert n_masks == 14
    assert new["callbacks"]["PruningCallback"]["pruner"]["target"] == pytest.approx(0.9)


def test_dense_baseline_has_no_masks(tmp_path):
    from spruce.models.train_job import train
    summary = train(make_cfg(*TINY_VGG, "prune=none", "logger=none", "trainer.max_epochs=1"), tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any(k.endswith("weight_mask") for k in ckpt["state_dict"])
    assert summary["sparsity"]["overall"] < 0.01 and summary["val_acc_dense"] is not None
    assert ckpt["spruce"]["metrics"]["dense_epoch"] == 0
    assert set(ckpt["spruce"]["sparsity"]) >= {"overall", "features.3"}
    assert summary["run_name"] == "vgg16-digits-dense"


@pytest.mark.skipif(not Path(FORTUNES_ROOT).is_dir(), reason="Debian's fortunes is not installed")
def test_text_model_oneshot_global_end_to_end(tmp_path):
    from spruce.models.checkpoint import model_from_checkpoint
    from spruce.models.train_job import train
    cfg = make_cfg("model=bert_base", "model.pretrained=null", TINY_BERT, "data=fortunes", "data.limit=24",
                   "trainer=smoke", "trainer.max_epochs=1", "logger=none", "prune=magnitude", "prune.method=oneshot",
                   "prune.final=0.8", "prune.scope=global", "prune.unit=step", "prune.start=1", "prune.end=1")
    summary = train(cfg, tmp_path)
    assert summary["init"] == "random-init" and summary["run_name"].startswith("bert_base-random-init-fortunes")
    assert abs(summary["sparsity"]["overall"] - 0.8) < 1e-3
    assert all(k.startswith("bert.encoder.layer.") for k in summary["sparsity"] if k != "overall")
    model, meta = model_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert meta["model"]["init"] == "random-init" and model.config.hidden_size == 32
    assert model.classifier.out_features == 6


def test_cli_bad_value_exits_1_with_one_line_and_no_output(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "train.py", "prune.final=1.5", f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: prune.final=1.5 is not allowed; it must be in [0, 1)"]
    assert not run_dir.exists()


def test_same_seed_same_initial_model():
    from spruce.models.train_job import prepare
    a, _, _ = prepare(make_cfg("model.width_div=16", "data.limit=50", "seed=3"))
    b, _, _ = prepare(make_cfg("model.width_div=16", "data.limit=50", "seed=3"))
    c, _, _ = prepare(make_cfg("model.width_div=16", "data.limit=50", "seed=4"))
    assert torch.equal(a.features[3].weight, b.features[3].weight)
    assert not torch.equal(a.features[3].weight, c.features[3].weight)


def test_a_failed_run_removes_only_its_own_empty_folders(tmp_path):
    # train.py deletes a run dir holding only Hydra's files after a failure; inside outputs/ (Hydra's default layout)
    # also the dated parents left empty, but never a folder the user named (the CLI test ran jobs in parallel in one
    # such folder, and one job's clean-up removed it under the others)
    import importlib.util
    spec = importlib.util.spec_from_file_location("train_entry", ROOT / "train.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)

    def hydra_run(path):
        (path / ".hydra").mkdir(parents=True)
        (path / "train.log").write_text("")
        return path
    mine = tmp_path / "cli"
    entry._remove_if_empty_run(hydra_run(mine / "t1"))
    assert mine.is_dir() and not any(mine.iterdir())
    run = hydra_run(tmp_path / "outputs" / "train" / "2026-12-04" / "10-00-00_x")
    entry._remove_if_empty_run(run)
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == []  # date and train/ gone, outputs/ kept
    kept = hydra_run(tmp_path / "outputs" / "train" / "d" / "run")
    (kept / "summary.json").write_text("{}")  # a run that wrote something is not Hydra-only: untouched
    entry._remove_if_empty_run(kept)
    assert (kept / "summary.json").is_file()
