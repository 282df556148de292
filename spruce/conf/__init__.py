"""Hydra configs (train, export, bench and their groups), shipped as package data; ``conf/`` at the repository
root links here so the entry scripts find them with ``config_path="conf"``."""
