"""Where the study's matrices come from: named shapes (synthetic kinds), a pruned checkpoint, or DLMC ``.smtx``.

Each source yields ``Case``s: one weight (built lazily by ``make``) timed at one or more ``N``. Cases of one layer
and target sparsity share a ``group`` so the report can put a real matrix beside its synthetic twins (same shape,
same nnz): ``kind`` is ``real`` (checkpoint), ``dlmc_magnitude`` / ``dlmc_random`` (DLMC's two pruning methods)
or a generator kind (``uniform``, ``magnitude``, ``balanced``, ...).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from spruce.perf.matrices import smtx_weight, synthetic_weight, twin
from spruce.sparse.files import read_smtx_header
from spruce.study.shapes import LayerShape

#: kinds that are real pruned topologies (the others are synthetic).
REAL_KINDS = ("real", "dlmc_magnitude")


@dataclass
class Case:
    """One weight to time: ``make()`` returns the dense FP32 ``[m, k]`` matrix with exact zeros."""

    source: str
    model: str
    layer: str
    m: int
    k: int
    ns: list[int]
    kind: str
    sparsity: float  # the target (nominal) sparsity; the achieved one is measured
    group: str
    make: Callable[[], torch.Tensor] = field(repr=False)
    batches: list[int] = field(default_factory=list)


def shape_cases(shapes: Iterable[LayerShape], sparsities: Iterable[float], kinds: Iterable[str],
                batches: Iterable[int], max_n: int, seed: int = 0,
                n_cap: int | None = None) -> tuple[list[Case], list[str]]:
    """Cases for named shapes x sparsities x generator kinds; ``N = n_per_sample * batch`` up to ``max_n``.

    ``n_cap`` truncates larger N to ``n_cap`` columns (a conv's im2col GEMM at 224 x 224 has N = 50176; its columns
    are independent, so beyond a few thousand both dense and sparse time grow linearly with N and the speedup
    stays); batches that become equal after capping are timed once. Returns the cases and notes on what was
    skipped or capped.
    """
    cases, notes = [], []
    for sh in shapes:
        bs = [b for b in batches if sh.n_per_sample * b <= max_n]
        skipped = [b for b in batches if b not in bs]
        if skipped:
            notes.append(f"{sh.model}:{sh.name}: batch {skipped} skipped (N = {sh.n_per_sample} x batch > "
                         f"max_n = {max_n})")
        ns, kept = [], []
        for b in bs:
            n = sh.n_per_sample * b
            if n_cap is not None and n > n_cap:
                notes.append(f"{sh.model}:{sh.name}: batch {b} N = {n} capped to {n_cap} columns")
                n = n_cap
            if n not in ns:
                ns.append(n)
                kept.append(b)
        if not ns:
            continue
        for s in sparsities:
            for kind in kinds:
                cases.append(Case("shapes", sh.model, sh.name, sh.m, sh.k, ns,
                                  kind, float(s), f"{sh.model}:{sh.name}:{s}",
                                  (lambda kind=kind, sh=sh, s=s: synthetic_weight(kind, sh.m, sh.k, s, seed)),
                                  kept))
    return cases, notes


def dlmc_cases(folder: Path, ns: Iterable[int], sparsities: Iterable[float] | None = None,
               max_files: int | None = None, twin_kinds: Iterable[str] = ("uniform",),
               seed: int = 0) -> list[Case]:
    """Cases from a DLMC tree ``<model>/<method>/<sparsity>/<layer>.smtx`` (or any folder of ``.smtx``).

    For each magnitude-pruned file: the file itself (``dlmc_magnitude``), the random-pruning file of the same
    layer and sparsity when present (``dlmc_random``), and generator twins of the same shape and nnz.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"DLMC folder {folder} does not exist; set dlmc_dir= or $SPRUCE_DLMC")
    files = sorted(folder.rglob("*.smtx"))
    if not files:
        raise ValueError(f"no .smtx files under {folder}")
    ns = list(ns)
    wanted = None if sparsities is None else {round(float(s), 4) for s in sparsities}
    cases: list[Case] = []
    count = 0
    for f in files:
        parts = f.relative_to(folder).parts
        method = next((p for p in parts if p.endswith("_pruning")), "")
        if method == "random_pruning":
            continue  # added beside its magnitude twin
        sp_part = next((p for p in parts if re.fullmatch(r"0?\.\d+", p)), None)
        m, k, nnz = read_smtx_header(f)
        if m * k == 0:
            raise ValueError(f"{f}: an empty {m}x{k} matrix has nothing to time")
        s = float(sp_part) if sp_part else 1.0 - nnz / (m * k)
        if wanted is not None and round(s, 4) not in wanted:
            continue
        if max_files is not None and count >= max_files:
            break
        count += 1
        model = parts[0] if len(parts) > 1 else "dlmc"
        layer = f.stem
        group = f"{model}:{layer}:{s}"
        kind = "dlmc_magnitude" if method == "magnitude_pruning" else "real"
        cases.append(Case("dlmc", model, layer, m, k, ns, kind, s, group, (lambda f=f: smtx_weight(f, seed))))
        rnd = Path(str(f).replace("magnitude_pruning", "random_pruning"))
        if method == "magnitude_pruning" and rnd.exists():
            cases.append(Case("dlmc", model, layer, m, k, ns, "dlmc_random", s, group,
                              (lambda rnd=rnd: smtx_weight(rnd, seed))))
        for tk in twin_kinds:
            cases.append(Case("dlmc", model, layer, m, k, ns, tk, s, group,
                              (lambda f=f, tk=tk: _twin_of(smtx_weight(f, seed), tk, seed))))
    return cases


def _twin_of(w: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    """A generator matrix of ``kind`` with the shape and nnz of ``w``."""
    return twin(w, kind, seed + 1)


def ckpt_cases(path: Path, batches: Iterable[int], max_n: int, twin_kinds: Iterable[str] = ("uniform",),
               seed: int = 0) -> tuple[list[Case], list[str]]:
    """Cases from a pruned checkpoint: every pruned layer (``real``) beside generator twins of equal shape and nnz.

    ``N`` per sample comes from one forward pass of the rebuilt model (hooks record each layer's output size), so
    it needs ``spruce.models.checkpoint.model_from_checkpoint`` and ``spruce.models.example_input``.
    """
    try:
        from spruce.models import example_input
        from spruce.models.checkpoint import model_from_checkpoint
    except ImportError as e:
        raise ValueError(f"source=ckpt needs spruce.models.checkpoint ({e})") from None
    model, meta = model_from_checkpoint(str(path))
    name = str(meta.get("model", {}).get("name", "ckpt"))
    pruned = {fqn for fqn, info in meta.get("layers", {}).items() if info.get("pruned")}
    n_per: dict[str, int] = {}
    hooks = []
    for fqn, mod in model.named_modules():
        if fqn in pruned and isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            def hook(mod, inp, out, fqn=fqn):
                if isinstance(mod, torch.nn.Conv2d):
                    n_per[fqn] = int(out.shape[-1] * out.shape[-2])
                else:
                    n_per[fqn] = int(out[0].numel() // out.shape[-1]) if out.dim() > 2 else 1
            hooks.append(mod.register_forward_hook(hook))
    x = example_input(model, 1)
    with torch.no_grad():
        model(**x) if isinstance(x, dict) else model(x)
    for h in hooks:
        h.remove()
    cases, notes = [], []
    mods = dict(model.named_modules())
    for fqn in sorted(n_per):
        w = mods[fqn].weight.detach().reshape(mods[fqn].weight.shape[0], -1).to(torch.float32).clone()
        m, k = w.shape
        s = 1.0 - int((w != 0).sum()) / (m * k)
        bs = [b for b in batches if n_per[fqn] * b <= max_n]
        if not bs:
            notes.append(f"{name}:{fqn}: every batch has N > max_n = {max_n}; skipped")
            continue
        ns = [n_per[fqn] * b for b in bs]
        group = f"{name}:{fqn}:{s:.4f}"
        cases.append(Case("ckpt", name, fqn, m, k, ns, "real", round(s, 4), group, (lambda w=w: w), list(bs)))
        for tk in twin_kinds:
            cases.append(Case("ckpt", name, fqn, m, k, ns, tk, round(s, 4), group,
                              (lambda w=w, tk=tk: _twin_of(w, tk, seed)), list(bs)))
    if not cases:
        raise ValueError(f"checkpoint {path} has no pruned Linear/Conv2d layer to study")
    return cases, notes
