"""Named GEMM shapes of the study: the layers of VGG-16 (ImageNet, 224 x 224) and BERT-base (sequence 128).

A layer is ``W`` ``[M, K]`` times ``X`` ``[K, N]`` with ``N = n_per_sample * batch``: a Linear has ``M = out``,
``K = in`` and ``n_per_sample = 1`` (VGG) or the sequence length (BERT); a Conv2d is the im2col GEMM with
``M = C_out``, ``K = C_in kh kw`` and ``n_per_sample = H_out W_out``. Layers of equal ``(M, K, n_per_sample)``
are merged into one entry whose name lists them (``conv3_2+conv3_3``). The first VGG conv is left out (it is
never pruned, ``spruce.prune.default_prunable``).

The shapes are read off the real models (``spruce.models.shapes``: torchvision VGG-16 without batch norm at
224 x 224, BERT-base at sequence 128, one forward on the ``meta`` device); this module only gives them the
paper-style names the study's tables use (``conv4_2``, ``fc6``, ``ffn_in``) and merges equal ones.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from spruce.models.shapes import LayerShape, model_shapes as traced_model_shapes

__all__ = ["LayerShape", "gemm", "merge_equal", "model_shapes", "shapes_from_config"]

#: BERT encoder Linears (the names inside one ``encoder.layer.<i>``) -> the study's short names
_BERT_NAMES = {"attention.self.query": "attn_q", "attention.self.key": "attn_k", "attention.self.value": "attn_v",
               "attention.output.dense": "attn_o", "intermediate.dense": "ffn_in", "output.dense": "ffn_out"}


def _named(s: LayerShape, name: str) -> LayerShape:
    return LayerShape(name, s.kind, s.m, s.k, s.n_per_sample, s.original_shape, s.model)


@lru_cache(maxsize=4)
def _vgg16(input_size: int = 224) -> tuple[LayerShape, ...]:
    """VGG-16's convs as ``conv<stage>_<i>`` (a stage ends where the feature map shrinks), FC layers fc6-fc8."""
    traced = traced_model_shapes("vgg16", input_kwargs={"input_size": input_size}, weights=None, batch_norm=False,
                                 num_classes=1000, head="auto", input_size=input_size)
    out, stage, idx, side, fc = [], 0, 0, None, 6
    for s in traced:
        if s.kind == "conv2d":
            stage, idx = (stage + 1, 1) if s.n_per_sample != side else (stage, idx + 1)
            side = s.n_per_sample
            if (stage, idx) != (1, 1):
                out.append(_named(s, f"conv{stage}_{idx}"))
        else:
            out.append(_named(s, f"fc{fc}"))
            fc += 1
    return tuple(out)


@lru_cache(maxsize=4)
def _bert_base(seq: int = 128) -> tuple[LayerShape, ...]:
    """The six Linears of BERT-base's first encoder layer (the other eleven have the same shapes)."""
    prefix = "bert.encoder.layer.0."
    traced = traced_model_shapes("bert_base", input_kwargs={"seq_len": seq}, pretrained=None)
    return tuple(_named(s, _BERT_NAMES[s.name[len(prefix):]]) for s in traced
                 if s.name.startswith(prefix) and s.name[len(prefix):] in _BERT_NAMES)


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
        out.append(LayerShape(name, kind, m, k, n, (m, k), model))
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
        out.append(LayerShape(str(d.get("name", f"layer{i}")), str(d.get("kind", "linear")), int(d["m"]), int(d["k"]),
                              int(d["n"]), (int(d["m"]), int(d["k"])), str(d.get("model", "custom"))))
    return out


def gemm(model: str, layer: str, batch: int = 1) -> tuple[int, int, int]:
    """``(M, K, N)`` of the study layer of ``model`` named ``layer`` (any part of a merged name: ``conv4_3``)."""
    for s in model_shapes(model):
        first, *rest = s.name.split("+")  # merge_equal writes conv4_2 + conv4_3 as "conv4_2+3"
        if layer in {s.name, first} | {first.split("_")[0] + "_" + r for r in rest}:
            return s.m, s.k, s.n(batch)
    raise ValueError(f"{model} has no layer {layer!r}; layers: {', '.join(s.name for s in model_shapes(model))}")
