"""What mask structure buys in kernel speed: per layer, the same model trained unstructured / with blocks / N:M,
every sparse kernel timed on each checkpoint's real weights in one process, against the dense layer.

For each checkpoint the deploy planner (``spruce.deploy.plan`` with ``mode=sparse``, no fusion) verifies and times
every candidate kernel on every prunable layer at the given input size; the table puts the structures side by
side: per layer and structure, the fastest sparse kernel and its speed-up over dense (``F.linear``/``F.conv2d``
on the same weights), plus the share of non-empty 16x16 and 4x1 blocks (what the BSR kernels must store).

    python benchmarks/structure_speed.py unstructured=<a/last.ckpt> block4x1=<b/last.ckpt> block16x16=<c/last.ckpt> \\
        --size 224 --out docs/measured/pruning-2026-12-04/structure_speed
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spruce import io  # noqa: E402

KERNELS = "spruce_csr,spruce_csr_direct,spruce_bsr4x1,torch_bsr16,torch_bsr4,torch_csr"


def block_fill(w: torch.Tensor, rows: int, cols: int) -> float:
    """Share of ``rows x cols`` tiles of the (im2col-flattened) weight holding at least one nonzero."""
    w = w.detach().reshape(w.shape[0], -1) != 0
    m, k = w.shape
    pm, pk = (-m) % rows, (-k) % cols
    w = torch.nn.functional.pad(w.float(), (0, pk, 0, pm)) != 0
    tiles = w.reshape((m + pm) // rows, rows, (k + pk) // cols, cols).any(dim=3).any(dim=1)
    return float(tiles.float().mean())


def layer_inputs(model: torch.nn.Module, names: list[str], size: int) -> dict[str, torch.Tensor]:
    """Each layer's input on one ``[1, 3, size, size]`` image. A classifier built for another input size (the
    digits VGG-16 expects 32x32) cannot run at 224: its Linear layers then get ``|N(0, 1)|`` rows of their own
    width (batch 1), which is all their kernels' speed depends on besides the weights."""
    mods = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}

    def hook(name):
        def f(_m, args):
            seen.setdefault(name, args[0].detach().clone())
        return f

    handles = [mods[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.inference_mode():
            model(torch.randn(1, 3, size, size))
    except RuntimeError:
        pass  # a Linear sized for another input: filled below
    finally:
        for h in handles:
            h.remove()
    for n in names:
        if isinstance(mods[n], torch.nn.Linear) and n in seen and seen[n].shape[-1] != mods[n].in_features:
            del seen[n]  # the pre-hook saw the too-wide input the Linear then refused
        if n not in seen:
            if not isinstance(mods[n], torch.nn.Linear):
                raise ValueError(f"layer {n!r} did not run at --size; try the size the model was trained at")
            seen[n] = torch.randn(1, mods[n].in_features).abs()
    return seen


def measure(ckpts: list[tuple[str, Path]], size: int, kernels: str, repeats: int, budget_s: float,
            threads: int) -> list[dict]:
    from tqdm.auto import tqdm

    from spruce.deploy.candidates import resolve_candidates
    from spruce.deploy.plan import plan_layer, prunable_layers
    from spruce.models.checkpoint import model_from_checkpoint

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    cands, notes = resolve_candidates(kernels.split(","), "cpu", "auto")
    for n in notes:
        print("note:", n)
    rows: dict[str, dict] = {}
    for label, path in ckpts:
        model, _ = model_from_checkpoint(path)
        names = prunable_layers(model)
        mods = dict(model.named_modules())
        inputs = layer_inputs(model, names, size)
        for name in tqdm(names, desc=label, unit="layer"):
            e = plan_layer(name, mods[name], inputs[name], cands, "sparse", "latency", repeats=repeats,
                           budget_s=budget_s)
            r = rows.setdefault(name, {"layer": name, "shape": "x".join(map(str, e["shape"])), "n": e["n"]})
            times = {k: v for k, v in e["candidates"].items() if isinstance(v, float) and k != "dense"}
            best = min(times, key=times.get) if times else None
            w = mods[name].weight
            r[f"{label}_sparsity"] = e["sparsity"]
            r[f"{label}_dense_ms"] = e["dense_ms"]
            r[f"{label}_kernel"] = best
            r[f"{label}_ms"] = times.get(best) if best else None
            r[f"{label}_x"] = e["dense_ms"] / times[best] if best else None
            r[f"{label}_fill16"] = block_fill(w, 16, 16)
            r[f"{label}_fill4x1"] = block_fill(w, 4, 1)
            for k, v in e["candidates"].items():
                r[f"{label}:{k}"] = v
    return list(rows.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpts", nargs="+", help="label=<path to last.ckpt>, one per structure (same model)")
    ap.add_argument("--size", type=int, default=224, help="input height/width (VGG-16: 224 as deployed)")
    ap.add_argument("--kernels", default=KERNELS)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--budget", type=float, default=0.5, help="seconds per kernel and layer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="output prefix: <out>.md, <out>.csv")
    a = ap.parse_args(argv)
    try:
        ckpts = io.labelled_files(a.ckpts)
        if a.size < 32:
            raise ValueError(f"--size {a.size} is not allowed; VGG-16 needs >= 32")
        rows = measure(ckpts, a.size, a.kernels, a.repeats, a.budget, a.threads)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cols = [("layer", "layer", ""), ("[M, K]", "shape", "")]
    for lab, _ in ckpts:
        cols += [(f"{lab}: sparsity", f"{lab}_sparsity", ".3f"), (f"{lab}: 4x1 fill", f"{lab}_fill4x1", ".2f"),
                 (f"{lab}: 16x16 fill", f"{lab}_fill16", ".2f"),
                 (f"{lab}: best kernel", f"{lab}_kernel", ""), (f"{lab}: x dense", f"{lab}_x", ".2f")]
    table = io.markdown_table(rows, cols)
    cmd = "python benchmarks/structure_speed.py " + " ".join(a.ckpts) + f" --size {a.size} --threads {a.threads}"
    io.atomic_write(a.out.with_suffix(".md"),
                    f"Batch 1, {a.size}x{a.size}, threads={a.threads}; x dense = dense ms / fastest sparse kernel ms, "
                    f"both on the checkpoint's own weights in this run.\n\n{table}\n\n`{cmd}`\n")
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("layer", "shape", "n"), k))
    io.write_csv(a.out.with_suffix(".csv"), rows, keys)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
