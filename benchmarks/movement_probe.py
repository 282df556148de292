"""Is a pruning score usable yet? Dense fine-tuning with movement scores accumulated, and after each epoch a one-shot
prune (no further training) of each layer by each score, evaluated.

Scores: magnitude ``|W|``, hard movement ``-sum W * dL/dW`` (``MovementScores``), soft movement (``SoftMovementScores``,
the run's ``prune.score_lr``) and a seeded random ranking. The model, data, optimizer and LR schedule are the training
config's (``train.py`` overrides, default the MiniLM + fortunes experiment), so epoch ``e`` here is epoch ``e`` of a
real run before its pruning starts. Also reported: how many of the weights each score prunes first (at the lowest
sparsity) are among the layer's largest by magnitude (random: about that sparsity).

    python benchmarks/movement_probe.py --epochs 3 --sparsities 0.1,0.3 --out docs/measured/pruning-2026-12-04/probe
    python benchmarks/movement_probe.py model=vgg16 --epochs 1 --out /tmp/probe   # any train.py overrides

Writes ``<out>.md`` (a table per epoch), ``<out>.csv`` and ``<out>.png`` (accuracy vs epoch, one panel per sparsity).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spruce import io  # noqa: E402

SCORES = ("magnitude", "movement", "soft_movement", "random")


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "spruce" / "conf"), version_base="1.3"):
        return OmegaConf.to_container(hydra_compose(config_name="train", overrides=overrides), resolve=True)


@torch.no_grad()
def pruned_accuracy(module, modules: dict, scores: dict, sparsity: float, loader) -> tuple[float, dict]:
    """Accuracy with each layer's ``round(sparsity * numel)`` lowest-scored weights zeroed, then the weights put back;
    also ``{layer: bool pruned}`` (for the overlap statistic)."""
    from spruce.prune.select import lowest_k

    saved = {n: m.weight.detach().clone() for n, m in modules.items()}
    pruned = {}
    try:
        for n, m in modules.items():
            pruned[n] = lowest_k(scores[n], round(sparsity * m.weight.numel()))
            m.weight.masked_fill_(pruned[n], 0.0)
        acc = module.evaluate(loader)["acc"]
    finally:
        for n, m in modules.items():
            m.weight.copy_(saved[n])
    return acc, pruned


def largest_share(modules: dict, pruned: dict) -> float:
    """Over all layers: the share of the pruned weights that are among the layer's largest ``|W|`` (as many)."""
    from spruce.prune.select import lowest_k

    hit = total = 0
    for n, m in modules.items():
        k = int(pruned[n].sum())
        if k:
            largest = lowest_k(-m.weight.detach().abs(), k)
            hit, total = hit + int((pruned[n] & largest).sum()), total + k
    return hit / total if total else math.nan


def probe(cfg: dict, epochs: int, sparsities: list[float], progress: bool = True) -> list[dict]:
    """One row per (epoch, score, sparsity), epoch 0 being the model before fine-tuning."""
    from tqdm import tqdm

    from spruce.models.module import SpruceModule
    from spruce.models.optim import build_optimizer, warmup_cosine
    from spruce.models.train_job import prepare
    from spruce.prune import default_prunable
    from spruce.prune.scores import MovementScores, SoftMovementScores

    model, dm, _ = prepare(cfg)
    if cfg.get("threads") is not None:
        torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(int(cfg["seed"]))
    dm.setup("fit")
    module = SpruceModule(model, cfg["model"]["optim"], {})
    names = cfg["prune"].get("layers") or default_prunable(model, model.family, cfg["prune"]["prune_classifier"])
    mods = dict(model.named_modules())
    modules = {n: mods[n] for n in names}
    hard, soft = MovementScores(), SoftMovementScores(cfg["prune"]["score_lr"], cfg["prune"]["score_reg"])
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    rand = {n: torch.rand(m.weight.shape, generator=gen) for n, m in modules.items()}
    opt = build_optimizer(model, cfg["model"]["optim"])
    train, val = dm.train_dataloader(), dm.val_dataloader()
    total = len(train) * int(cfg["trainer"]["max_epochs"])  # the real run's schedule, of which we run the start
    factor = warmup_cosine(total, float(cfg["model"]["optim"].get("warmup", 0.0)),
                           float(cfg["model"]["optim"].get("min_lr_ratio", 0.0)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    rows: list[dict] = []

    def measure(epoch: int) -> None:
        model.eval()
        dense = module.evaluate(val)["acc"]
        for score in SCORES:
            if epoch == 0 and score in ("movement", "soft_movement"):
                continue  # no gradient seen yet: all scores tie
            sc = {n: {"magnitude": m.weight.detach().abs(), "movement": hard.score(n, m.weight),
                      "soft_movement": soft.score(n, m.weight), "random": rand[n]}[score]
                  for n, m in modules.items()}
            for i, s in enumerate(sparsities):
                acc, pruned = pruned_accuracy(module, modules, sc, s, val)
                rows.append({"epoch": epoch, "steps": epoch * len(train), "score": score, "sparsity": s,
                             "accuracy": acc, "dense_accuracy": dense,
                             "share_of_largest": largest_share(modules, pruned) if i == 0 else ""})

    measure(0)
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in tqdm(train, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False):
            loss, _, _ = module._step(batch)
            opt.zero_grad()
            loss.backward()
            soft.accumulate(modules)  # no masks: both read the whole gradient
            hard.accumulate(modules)
            opt.step()
            sched.step()
        measure(epoch)
    return rows


def table(rows: list[dict], sparsities: list[float]) -> str:
    epochs = sorted({r["epoch"] for r in rows})
    cols = [(sc, s) for s in sparsities for sc in SCORES]
    head = "| epoch (steps) | dense | " + " | ".join(f"{sc} @{s:g}" for sc, s in cols) + \
           f" | movement's first {sparsities[0]:g} among the largest |"
    lines = [head, "|" + "---|" * (3 + len(cols))]
    for e in epochs:
        by = {(r["score"], r["sparsity"]): r for r in rows if r["epoch"] == e}
        any_row = next(r for r in rows if r["epoch"] == e)
        cells = [f"{100 * by[c]['accuracy']:.1f}" if c in by else "-" for c in cols]
        mv = by.get(("movement", sparsities[0]))
        share = f"{100 * mv['share_of_largest']:.0f}%" if mv else "-"
        lines.append(f"| {e} ({any_row['steps']}) | {100 * any_row['dense_accuracy']:.1f} | " + " | ".join(cells)
                     + f" | {share} |")
    return "\n".join(lines)


def plot(rows: list[dict], sparsities: list[float], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sparsities), figsize=(4.2 * len(sparsities), 3.6), squeeze=False)
    for ax, s in zip(axes[0], sparsities):
        for sc in SCORES:
            pts = sorted((r["epoch"], 100 * r["accuracy"]) for r in rows if r["score"] == sc and r["sparsity"] == s)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=sc)
        dense = sorted({(r["epoch"], 100 * r["dense_accuracy"]) for r in rows})
        ax.plot(*zip(*dense), color="black", linestyle="--", label="dense")
        ax.set_title(f"{s:.0%} of every layer pruned, no retraining", fontsize=9)
        ax.set_xlabel("epochs of dense fine-tuning (scores accumulated)")
        ax.set_ylabel("validation accuracy %")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return io.write_figure(path, fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="train.py overrides (default: experiment=minilm_fortunes seed=0)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--sparsities", default="0.1,0.3", help="comma-separated, each in (0, 1)")
    ap.add_argument("--out", type=Path, required=True, help="output prefix: <out>.md, <out>.csv, <out>.png")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    from hydra.errors import HydraException
    try:
        try:
            sparsities = [float(x) for x in a.sparsities.split(",")]
        except ValueError:
            raise ValueError(f"--sparsities {a.sparsities!r} is not allowed; give numbers in (0, 1), e.g. 0.1,0.3")
        if not sparsities or any(not 0 < s < 1 for s in sparsities):
            raise ValueError(f"--sparsities {a.sparsities!r} is not allowed; each must be in (0, 1)")
        if a.epochs < 1:
            raise ValueError(f"--epochs {a.epochs} is not allowed; it must be >= 1")
        cfg = compose(a.overrides or ["experiment=minilm_fortunes", "seed=0"])
        rows = probe(cfg, a.epochs, sparsities, progress=not a.no_progress)
    except (ValueError, OSError, HydraException) as e:  # config and data errors: one line
        print(f"error: {io.first_line(e, 300)}", file=sys.stderr)
        return 2
    tab = table(rows, sparsities)
    cmd = "python benchmarks/movement_probe.py " + " ".join(
        [*a.overrides, f"--epochs {a.epochs}", f"--sparsities {a.sparsities}", f"--out {a.out}"])
    title = f"{cfg['model']['name']} on {cfg['data']['name']}, seed {cfg['seed']}: accuracy % after a one-shot prune"
    io.atomic_write(a.out.with_suffix(".md"), f"{title}\n\n{tab}\n\n`{cmd}`\n")
    io.write_csv(a.out.with_suffix(".csv"), rows, list(rows[0]))
    plot(rows, sparsities, a.out.with_suffix(".png"))
    print(tab)
    return 0


if __name__ == "__main__":
    sys.exit(main())
