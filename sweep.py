"""The accuracy / latency / memory trade-off over a ladder of sparsities, in one command:
``python sweep.py [model=vgg16] [data=digits] [sparsities=[0,0.5,0.7,0.8,0.9,0.95]] [n_jobs=2] ...``.

A thin Hydra wrapper over :func:`spruce.study.tradeoff.run` (``conf/sweep.yaml`` lists every option): the training
sweep is ``train.py -m hydra/launcher=joblib ...``, each checkpoint is deployed and timed by ``bench.py``.
Bad input prints one ``error: ...`` line and exits with status 2, leaving no files behind.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parent


def check_train_config(c) -> None:
    """Compose train.py's config for each job and validate it (``check_config``) before anything runs."""
    from hydra import compose

    from spruce.models.train_config import check_config
    for s in c.sparsities:
        overrides = [f"model={c.model}", f"data={c.data}", "prune=agp", f"prune.final={s:g}", *c.train]
        try:
            cfg = compose(config_name="train", overrides=overrides)
        except Exception as e:  # unknown group option or key: Hydra's message, first line
            raise ValueError(str(e).strip().splitlines()[0]) from None
        plain = OmegaConf.to_container(cfg, resolve=True)
        check_config(plain)
        if s == c.sparsities[0]:  # model and data options are checked by building them once (writes nothing)
            from spruce.models.train_job import prepare
            prepare(plain)


@hydra.main(config_path="conf", config_name="sweep", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from spruce.io import first_line
    from spruce.study.tradeoff import Commands, from_dict, run
    hc = HydraConfig.get()
    d = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in ("seed",)}
    # model / data are config groups (so model=<typo> fails like in train.py); the jobs get the chosen names plus
    # any model.* / data.* overrides of this command line
    d["model"], d["data"] = hc.runtime.choices.get("model"), hc.runtime.choices.get("data")
    d["deploy"] = hc.runtime.choices.get("deploy")
    d["train"] = [o for o in hc.overrides.task if o.lstrip("+~").startswith(("model.", "data."))] + list(
        d.get("train") or [])
    out = Path(d.pop("out_dir") or hc.runtime.output_dir)
    existed = out.is_dir() and any(out.iterdir())
    try:
        c = from_dict(d)
        check_train_config(c)
        result = run(c, Commands(train=[sys.executable, str(ROOT / "train.py")],
                                 bench=[sys.executable, str(ROOT / "bench.py")], cwd=str(ROOT)), out)
    except ValueError as e:  # bad options: nothing was run or written
        print(f"error: {first_line(e)}", file=sys.stderr)
        if not existed and out.is_dir():
            shutil.rmtree(out)
        sys.exit(2)
    except RuntimeError as e:  # a training or bench job failed: its outputs and the log stay for inspection
        print(f"error: {first_line(e)}", file=sys.stderr)
        sys.exit(1)
    print(Path(result["md"]).read_text())
    print(json.dumps({k: result[k] for k in ("csv", "png", "md", "wandb_group", "wandb_dir")}, indent=1))


if __name__ == "__main__":
    main()
