"""Named GEMM shapes of the study: the layers of VGG-16 (ImageNet, 224 x 224) and BERT-base (sequence 128).

A layer is ``W`` ``[M, K]`` times ``X`` ``[K, N]`` with ``N = n_per_sample * batch``: a Linear has ``M = out``,
``K = in`` and ``n_per_sample = 1`` (VGG) or the sequence length (BERT); a Conv2d is the im2col GEMM with
``M = C_out``, ``K = C_in kh kw`` and ``n_per_sample = H_out W_out``. Layers of equal ``(M, K, n_per_sample)``
are merged into one entry whose name lists them (``conv3_2+conv3_3``). The first VGG conv is left out (it is
never pruned, ``spruce.prune.default_prunable``).

``spruce.sparse.shapes`` holds the project's per-layer shape lists (every layer, for export twins); the study
needs the *distinct* GEMM shapes with equal layers merged, which these tables give for the same architectures
(torchvision VGG-16 at 224 x 224, BERT-base at sequence 128).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LayerShape:
    """One GEMM shape: ``model``, ``name``, ``m`` (out), ``k`` (in, im2col for convs), ``n_per_sample``, ``kind``."""

    model: str
    name: str
    m: int
    k: int
    n_per_sample: int
    kind: str  # "conv" | "linear"

    def __post_init__(self) -> None:
        if min(self.m, self.k, self.n_per_sample) < 1:
            raise ValueError(f"layer {self.name!r}: m, k, n_per_sample must be >= 1, got "
                             f"{self.m}, {self.k}, {self.n_per_sample}")


def _vgg16(input_size: int = 224) -> list[LayerShape]:
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    out, c_in, side, stage, idx = [], 3, input_size, 1, 1
    for v in cfg:
        if v == "M":
            side //= 2
            stage, idx = stage + 1, 1
            continue
        if not (stage == 1 and idx == 1):
            out.append(LayerShape("vgg16", f"conv{stage}_{idx}", int(v), c_in * 9, side * side, "conv"))
        c_in, idx = int(v), idx + 1
    flat = 512 * 7 * 7
    out += [LayerShape("vgg16", "fc6", 4096, flat, 1, "linear"),
            LayerShape("vgg16", "fc7", 4096, 4096, 1, "linear"),
            LayerShape("vgg16", "fc8", 1000, 4096, 1, "linear")]
    return out


def _bert_base(seq: int = 128, hidden: int = 768, ffn: int = 3072) -> list[LayerShape]:
    return [LayerShape("bert_base", "attn_q+k+v+o", hidden, hidden, seq, "linear"),
            LayerShape("bert_base", "ffn_in", ffn, hidden, seq, "linear"),
            LayerShape("bert_base", "ffn_out", hidden, ffn, seq, "linear")]


def merge_equal(shapes: list[LayerShape]) -> list[LayerShape]:
    """Merge layers of equal ``(model, m, k, n_per_sample)`` into one entry named ``a+b`` (order kept)."""
    groups: dict[tuple, list[LayerShape]] = {}
    for s in shapes:
        groups.setdefault((s.model, s.m, s.k, s.n_per_sample, s.kind), []).append(s)
    out = []
    for (model, m, k, n, kind), items in groups.items():
        names = [s.name for s in items]
        if len(names) > 1 and all("_" in x for x in names) and len({x.split("_")[0] for x in names}) == 1:
            name = names[0] + "".join("+" + x.split("_", 1)[1] for x in names[1:])
        else:
            name = "+".join(names)
        out.append(LayerShape(model, name, m, k, n, kind))
    return out


def model_shapes(model: str, seq: int = 128, input_size: int = 224) -> list[LayerShape]:
    """The distinct GEMM shapes of ``model`` (``"vgg16"`` or ``"bert_base"``)."""
    if model == "vgg16":
        return merge_equal(_vgg16(input_size))
    if model == "bert_base":
        return merge_equal(_bert_base(seq))
    raise ValueError(f"unknown model {model!r} for named shapes; allowed: vgg16, bert_base")


def shapes_from_config(spec: Any) -> list[LayerShape]:
    """Shapes from a config override: a list of ``{name, m, k, n}`` dicts (``model`` optional)."""
    if not isinstance(spec, (list, tuple)) or not spec:
        raise ValueError(f"shapes must be a non-empty list of {{name, m, k, n}} dicts, got {spec!r}")
    out = []
    for i, d in enumerate(spec):
        if not isinstance(d, dict) or not {"m", "k", "n"} <= set(d):
            raise ValueError(f"shapes[{i}] = {d!r}: needs keys m, k, n (and optionally name, model, kind)")
        out.append(LayerShape(str(d.get("model", "custom")), str(d.get("name", f"layer{i}")), int(d["m"]),
                              int(d["k"]), int(d["n"]), str(d.get("kind", "linear"))))
    return out
