"""Named GEMM shapes of whole models, for synthetic matrices without a checkpoint.

Each layer is the ``Y = W @ X`` a kernel sees: ``W`` is ``[m, k]`` (a Linear's ``[out, in]``, a conv's im2col
``[C_out, C_in*kh*kw]``) and ``X`` is ``[k, n]`` with ``n = n_per_sample * batch`` (1 per sample for an FC layer
on images, the output pixels ``H_out*W_out`` of a conv, the sequence length for a transformer Linear).

Names follow the PyTorch modules (torchvision ``vgg16``: ``features.<i>``, ``classifier.<i>``; HuggingFace
``BertModel``: ``encoder.layer.<i>....``) so they line up with a real checkpoint's layers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LayerShape:
    """One layer's GEMM: ``W`` ``[m, k]``, ``X`` ``[k, n_per_sample * batch]``; ``original_shape`` of the weight."""

    name: str
    kind: str                      # "linear" | "conv2d"
    m: int
    k: int
    n_per_sample: int
    original_shape: tuple[int, ...]

    def n(self, batch: int = 1) -> int:
        return self.n_per_sample * batch

    def to_dict(self) -> dict:
        d = asdict(self)
        d["original_shape"] = list(self.original_shape)
        return d


_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(image_size: int = 224, num_classes: int = 1000) -> list[LayerShape]:
    """torchvision VGG-16 (no BN) at ``image_size`` x ``image_size`` input: 13 convs (3x3, pad 1) and fc6-8."""
    out, c_in, hw, idx = [], 3, image_size, 0
    for v in _VGG16_CFG:
        if v == "M":
            hw //= 2
            idx += 1
            continue
        out.append(LayerShape(f"features.{idx}", "conv2d", v, c_in * 9, hw * hw, (v, c_in, 3, 3)))
        c_in, idx = v, idx + 2  # conv + ReLU
    flat = 512 * 7 * 7  # torchvision pools adaptively to 7x7 before the classifier
    for name, m, k in (("classifier.0", 4096, flat), ("classifier.3", 4096, 4096),
                       ("classifier.6", num_classes, 4096)):
        out.append(LayerShape(name, "linear", m, k, 1, (m, k)))
    return out


def bert(hidden: int = 768, intermediate: int = 3072, layers: int = 12, seq: int = 128) -> list[LayerShape]:
    """The encoder Linears of a BERT-family model: per layer q/k/v/attention-out, intermediate, output."""
    out = []
    for i in range(layers):
        p = f"encoder.layer.{i}"
        for name, m, k in ((f"{p}.attention.self.query", hidden, hidden), (f"{p}.attention.self.key", hidden, hidden),
                           (f"{p}.attention.self.value", hidden, hidden),
                           (f"{p}.attention.output.dense", hidden, hidden),
                           (f"{p}.intermediate.dense", intermediate, hidden),
                           (f"{p}.output.dense", hidden, intermediate)):
            out.append(LayerShape(name, "linear", m, k, seq, (m, k)))
    return out


SHAPES = {
    "vgg16": lambda: vgg16(),
    "bert_base": lambda: bert(),
    "bert_base_layer": lambda: bert(layers=1),            # one encoder layer: the 6 distinct BERT-base shapes
    "minilm": lambda: bert(hidden=384, intermediate=1536, layers=6),
    "minilm_layer": lambda: bert(hidden=384, intermediate=1536, layers=1),
}


def named_shapes(name: str) -> list[LayerShape]:
    """The layer shapes of a named model (``SHAPES``); ValueError naming the known ones otherwise."""
    if name not in SHAPES:
        raise ValueError(f"unknown model shapes {name!r}; known: {', '.join(SHAPES)}")
    return SHAPES[name]()


def layer_shapes(model: str) -> list[LayerShape]:
    """Alias of ``named_shapes`` (the name the study package looks for)."""
    return named_shapes(model)
