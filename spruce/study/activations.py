"""Activation sparsity, measured: the fraction of exact zeros in the input of every Conv2d/Linear of a trained model,
per image over its evaluation set (mean and spread across images).

ReLU leaves many activations zero; a sparse x sparse kernel (``spruce_spsp``) skips them as well as the weight's
zeros, so where it pays depends on these numbers (``spruce.study.spsp_map`` places the layers on its map).
The input of a layer is what its forward receives (after ReLU, max-pooling, flattening, dropout in eval mode); the
zero padding a convolution adds is not counted.

``python bench.py mode=study study=activation ckpt=<.ckpt>`` or ``python -m spruce.study analysis=activation
ckpt=<.ckpt>`` writes ``activation_sparsity.csv/.md/.png`` (+ ``report.md``, ``config.json``, a W&B run).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from spruce import io

#: columns of activation_sparsity.csv
COLUMNS = ("layer", "name", "kind", "in_shape", "weight_sparsity", "images", "act_sparsity_mean", "act_sparsity_std",
           "act_sparsity_min", "act_sparsity_p10", "act_sparsity_median", "act_sparsity_p90", "act_sparsity_max")


def vgg_names(layers: list[tuple[str, str, tuple[int, ...]]]) -> dict[str, str]:
    """``{fqn: conv<stage>_<i> | fc<6..>}`` for a VGG's layers ``(fqn, kind, input shape)`` in forward order: a
    stage ends where the feature map shrinks (the study's naming, ``spruce.study.shapes``)."""
    out, stage, idx, side, fc = {}, 0, 0, None, 6
    for fqn, kind, shape in layers:
        if kind == "conv2d":
            hw = tuple(shape[-2:])
            stage, idx = (stage + 1, 1) if hw != side else (stage, idx + 1)
            side = hw
            out[fqn] = f"conv{stage}_{idx}"
        else:
            out[fqn] = f"fc{fc}"
            fc += 1
    return out


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(per_image: list[float]) -> dict[str, float]:
    """Mean, population std, min, p10, median, p90, max of per-image zero fractions (non-empty)."""
    n = len(per_image)
    mean = sum(per_image) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in per_image) / n)
    return {"images": n, "act_sparsity_mean": mean, "act_sparsity_std": std, "act_sparsity_min": min(per_image),
            "act_sparsity_p10": _quantile(per_image, 0.1), "act_sparsity_median": _quantile(per_image, 0.5),
            "act_sparsity_p90": _quantile(per_image, 0.9), "act_sparsity_max": max(per_image)}


def measure(model: nn.Module, batches: Iterable[Any], max_images: int | None = None,
            layers: list[str] | None = None) -> list[dict[str, Any]]:
    """Per-image zero fractions of every Conv2d/Linear input of ``model`` (``layers``: only these names) over
    ``batches`` (tensors ``[B, ...]``, tuples ``(x, y, ...)`` or dicts of keyword tensors without ``labels``), at
    most ``max_images`` samples. Returns one row per layer in forward order (``COLUMNS``; ``name`` left to the
    caller). ValueError when no batch or no layer was seen."""
    mods = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
            and (layers is None or n in layers)}
    if layers is not None and set(layers) - set(mods):
        raise ValueError(f"layers {sorted(set(layers) - set(mods))} are not Conv2d/Linear layers of the model")
    if not mods:
        raise ValueError("the model has no Conv2d/Linear layer to measure")
    fractions: dict[str, list[float]] = {n: [] for n in mods}
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []
    take = [0]

    def hook(mod: nn.Module, inp: tuple, name: str) -> None:
        x = inp[0][: take[0]]
        if name not in shapes:
            shapes[name] = tuple(int(s) for s in x.shape[1:])
            order.append(name)
        flat = x.reshape(x.shape[0], -1)
        fractions[name].extend((flat == 0).float().mean(dim=1).tolist())

    handles = [m.register_forward_pre_hook(lambda m, i, name=n: hook(m, i, name)) for n, m in mods.items()]
    seen = 0
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                if max_images is not None and seen >= max_images:
                    break
                if isinstance(batch, dict):
                    inputs = {k: v for k, v in batch.items() if k != "labels"}
                    n = int(next(iter(inputs.values())).shape[0])
                    take[0] = n if max_images is None else min(n, max_images - seen)
                    model(**inputs)
                else:
                    x = batch[0] if isinstance(batch, (tuple, list)) else batch
                    n = int(x.shape[0])
                    take[0] = n if max_images is None else min(n, max_images - seen)
                    model(x[: take[0]])
                seen += take[0]
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise ValueError("the evaluation data is empty; no activation sparsity to measure")
    rows = []
    for name in order:
        w = mods[name].weight
        rows.append({"layer": name, "name": name, "kind": "conv2d" if isinstance(mods[name], nn.Conv2d) else "linear",
                     "in_shape": "x".join(str(s) for s in shapes[name]),
                     "weight_sparsity": float((w == 0).float().mean()), **summarize(fractions[name])})
    return rows


def eval_batches(meta: dict[str, Any], batch_size: int | None = None) -> Any:
    """The validation DataLoader of a checkpoint's data set (:func:`spruce.models.checkpoint.eval_loader`, the same
    choice as the deploy runtime's accuracy loader)."""
    from spruce.models.checkpoint import eval_loader
    return eval_loader(meta, batch_size, purpose="measure activations")


def checkpoint_activation_sparsity(ckpt: str | Path, max_images: int | None = None,
                                   batch_size: int = 64) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(rows, meta)``: ``measure`` over a checkpoint's evaluation set (loaded with ``weights_only=True``);
    VGG layers also get the study's names (``conv3_3``, ``fc6``)."""
    from spruce.models.checkpoint import model_from_checkpoint
    model, meta = model_from_checkpoint(ckpt)
    rows = measure(model, eval_batches(meta, batch_size), max_images)
    if (meta.get("model") or {}).get("name") == "vgg16":
        names = vgg_names([(r["layer"], r["kind"], tuple(int(s) for s in r["in_shape"].split("x"))) for r in rows])
        for r in rows:
            r["name"] = names[r["layer"]]
    return rows, meta


TABLE = [("layer", "layer", ""), ("name", "name", ""), ("input (C x H x W)", "in_shape", ""),
         ("weight sparsity", "weight_sparsity", ".1%"), ("images", "images", "d"),
         ("act. sparsity mean", "act_sparsity_mean", ".1%"), ("std", "act_sparsity_std", ".1%"),
         ("min", "act_sparsity_min", ".1%"), ("p10", "act_sparsity_p10", ".1%"),
         ("median", "act_sparsity_median", ".1%"), ("p90", "act_sparsity_p90", ".1%"),
         ("max", "act_sparsity_max", ".1%")]


def plot(rows: list[dict[str, Any]], title: str) -> Any:
    """Bar chart: mean zero fraction per layer, whiskers p10-p90, min/max as ticks; weight sparsity beside it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(rows) + 2), 4.2))
    xs = list(range(len(rows)))
    mean = [r["act_sparsity_mean"] for r in rows]
    lo = [r["act_sparsity_mean"] - r["act_sparsity_p10"] for r in rows]
    hi = [r["act_sparsity_p90"] - r["act_sparsity_mean"] for r in rows]
    ax.bar([x - 0.2 for x in xs], mean, width=0.4, yerr=[lo, hi], capsize=3, label="activation sparsity (mean, p10-p90)")
    ax.scatter([x - 0.2 for x in xs], [r["act_sparsity_min"] for r in rows], marker="_", color="k", label="min / max")
    ax.scatter([x - 0.2 for x in xs], [r["act_sparsity_max"] for r in rows], marker="_", color="k")
    ax.bar([x + 0.2 for x in xs], [r["weight_sparsity"] for r in rows], width=0.4, alpha=0.6, label="weight sparsity")
    ax.set_xticks(xs, [r["name"] for r in rows], rotation=60, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of zeros")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def write_activation_files(rows: list[dict[str, Any]], out: Path, title: str) -> str:
    """``activation_sparsity.csv/.md/.png`` in ``out``; returns the markdown table."""
    import matplotlib.pyplot as plt
    io.write_csv(out / "activation_sparsity.csv", rows, COLUMNS)
    table = io.markdown_table(rows, TABLE)
    io.atomic_write(out / "activation_sparsity.md", f"# {title}\n\n{table}\n")
    fig = plot(rows, title)
    io.write_figure(out / "activation_sparsity.png", fig, dpi=120)
    plt.close(fig)
    return table


def run_activation_study(c: dict[str, Any], out: Path, command: str) -> dict[str, Any]:
    """The ``analysis=activation`` study into ``out`` (exists, empty but for config.json): files, report.md and
    the W&B run. Returns the summary scalars."""
    if not c.get("ckpt"):
        raise ValueError("analysis=activation needs ckpt=<a trained .ckpt>")
    sp = c["spsp"]
    rows, meta = checkpoint_activation_sparsity(c["ckpt"], sp["max_images"], int(sp["batch_size"]))
    model = (meta.get("model") or {}).get("name", "?")
    data = (meta.get("data") or {}).get("name", "?")
    title = f"Activation sparsity of {model} on {data} ({rows[0]['images']} eval images)"
    table = write_activation_files(rows, out, title)
    convs = [r for r in rows if r["kind"] == "conv2d"]
    summary = {"layers": len(rows), "images": rows[0]["images"],
               "act_sparsity_mean_all": sum(r["act_sparsity_mean"] for r in rows) / len(rows),
               "act_sparsity_mean_convs": (sum(r["act_sparsity_mean"] for r in convs) / len(convs)) if convs else None}
    report = (f"# {title}\n\n`{command}`\n\nCheckpoint: `{c['ckpt']}`. The fraction of exact zeros in each "
              "Conv2d/Linear layer's input, per image over the evaluation set; mean, spread (std) and quantiles "
              "across images. The first layer reads the image itself.\n\n"
              f"{table}\n\n![activation sparsity](activation_sparsity.png)\n")
    io.atomic_write(out / "report.md", report)
    from spruce.study.wandb_run import log_files
    log_files(out, c, ["activation_sparsity"], ["activation_sparsity"], summary, c["wandb"], "activation-sparsity")
    return summary
