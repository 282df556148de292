"""Named layer shapes of whole models, for synthetic matrices without a checkpoint.

Each layer is the ``Y = W @ X`` a kernel sees (``spruce.models.shapes.LayerShape``: ``W`` ``[m, k]``, ``X``
``[k, n_per_sample * batch]``), read off the real model builders by a forward pass on the ``meta`` device.

Names follow the PyTorch modules (torchvision ``vgg16``: ``features.<i>``, ``classifier.<i>``; BERT-family models:
the names inside HuggingFace's ``BertModel``, ``encoder.layer.<i>....``, as DLMC's transformer names its layers).
"""
from __future__ import annotations

from spruce.models.shapes import LayerShape, model_shapes

__all__ = ["LayerShape", "SHAPES", "bert", "layer_shapes", "named_shapes", "vgg16"]


def vgg16(image_size: int = 224, num_classes: int = 1000) -> list[LayerShape]:
    """torchvision VGG-16 (no BN) at ``image_size`` x ``image_size`` input: 13 convs (3x3, pad 1) and fc6-8."""
    return model_shapes("vgg16", input_kwargs={"input_size": image_size}, weights=None, batch_norm=False,
                        num_classes=num_classes, head="auto", input_size=image_size)


def bert(model: str = "bert_base", layers: int | None = None, seq: int = 128) -> list[LayerShape]:
    """The encoder Linears of a BERT-family model (``bert_base`` or ``minilm``, random init: nothing is downloaded):
    per layer q/k/v/attention-out, intermediate, output; the first ``layers`` encoder layers when given."""
    build = {"pretrained": None} if model == "bert_base" else {"pretrained": False}
    prefix = "bert."
    out = []
    for s in model_shapes(model, input_kwargs={"seq_len": seq}, **build):
        name = s.name[len(prefix):] if s.name.startswith(prefix) else s.name
        if not name.startswith("encoder.layer."):
            continue  # the pooler and the classifier are not pruned
        if layers is not None and int(name.split(".")[2]) >= layers:
            continue
        out.append(LayerShape(name, s.kind, s.m, s.k, s.n_per_sample, s.original_shape, s.model))
    return out


SHAPES = {
    "vgg16": lambda: vgg16(),
    "bert_base": lambda: bert("bert_base"),
    "bert_base_layer": lambda: bert("bert_base", layers=1),  # one encoder layer: the 6 distinct BERT-base shapes
    "minilm": lambda: bert("minilm"),
    "minilm_layer": lambda: bert("minilm", layers=1),
}


def named_shapes(name: str) -> list[LayerShape]:
    """The layer shapes of a named model (``SHAPES``); ValueError naming the known ones otherwise."""
    if name not in SHAPES:
        raise ValueError(f"unknown model shapes {name!r}; known: {', '.join(SHAPES)}")
    return SHAPES[name]()


def layer_shapes(model: str) -> list[LayerShape]:
    """Alias of ``named_shapes`` (the name the study package looks for)."""
    return named_shapes(model)
