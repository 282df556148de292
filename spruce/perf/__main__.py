"""``python -m spruce.perf [threads=N] [recalibrate=true]``: calibrate this machine (every available CPU kernel,
cached per machine and thread count) and print the profile's path. Config: ``conf/calibrate.yaml``."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="calibrate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import torch

    from spruce import kernels as registry
    from spruce.perf.calibration import load_or_calibrate, profile_path
    from spruce.perf.machine import resolve_threads

    torch.set_num_threads(resolve_threads(cfg.threads))
    load_or_calibrate(registry.kernels(device="cpu"), recalibrate=bool(cfg.recalibrate), progress=bool(cfg.progress))
    print(profile_path())


if __name__ == "__main__":
    main()
