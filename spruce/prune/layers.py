"""Which layers get pruned: fully qualified names (fqn) of the ``nn.Linear`` / ``nn.Conv2d`` modules of a model.

Patterns select by fqn: a plain string is an ``fnmatch`` pattern (``"features.*"``, ``"*.attention.self.query"``;
an exact fqn matches itself), a string starting with ``"re:"`` is a regular expression that must match the whole
fqn (``"re:encoder\\.layer\\.\\d+\\.output\\.dense"``).
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

from torch import nn

from spruce.prune.masks import MASKABLE

FAMILIES = ("vgg", "bert")
_BERT_ENCODER_LINEAR = re.compile(r"(^|.*\.)encoder\.layer\.\d+\..+")


def _matches(fqn: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], fqn) is not None
    return fnmatch.fnmatchcase(fqn, pattern)


def _as_patterns(name: str, patterns: str | Sequence[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    out = list(patterns)
    bad = [p for p in out if not isinstance(p, str)]
    if bad:
        raise ValueError(f"{name} patterns must be strings; got {bad[0]!r}")
    for p in out:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as e:
                raise ValueError(f"{name} pattern {p!r} is not a valid regular expression: {e}") from None
    return out


def all_maskable(model: nn.Module) -> list[str]:
    """fqn of every ``nn.Linear``/``nn.Conv2d`` in ``model``, in module order."""
    return [name for name, m in model.named_modules() if isinstance(m, MASKABLE)]


def prunable_layers(model: nn.Module, include: str | Sequence[str] | None = None,
                    exclude: str | Sequence[str] | None = None) -> list[str]:
    """fqn of the ``nn.Linear``/``nn.Conv2d`` layers selected by the patterns, in module order.

    Args:
        model: the model (fqn are relative to it).
        include: keep layers matching any of these patterns (``None``: all Linear/Conv2d). Every include pattern
            must match at least one layer, so a typo fails loudly instead of silently pruning nothing.
        exclude: then drop layers matching any of these patterns.

    Raises:
        ValueError: an include pattern matches no Linear/Conv2d layer, or a pattern is not a string/regex.
    """
    inc = _as_patterns("include", include)
    exc = _as_patterns("exclude", exclude) or []
    names = all_maskable(model)
    if inc is not None:
        for p in inc:
            if not any(_matches(n, p) for n in names):
                shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
                raise ValueError(f"layer pattern {p!r} matches no nn.Linear/nn.Conv2d of "
                                 f"{type(model).__name__}; its layers are: {shown or '(none)'}")
        names = [n for n in names if any(_matches(n, p) for p in inc)]
    return [n for n in names if not any(_matches(n, p) for p in exc)]


def infer_family(model: nn.Module) -> str | None:
    """``"bert"`` if the model has BERT-style ``encoder.layer.<i>`` Linear layers, ``"vgg"`` if it is (or wraps)
    a torchvision VGG (a ``features`` block of convolutions followed by a ``classifier``), else ``None``."""
    names = all_maskable(model)
    if any(_BERT_ENCODER_LINEAR.fullmatch(n) for n in names):
        return "bert"
    for name, m in model.named_modules():
        if type(m).__name__ == "VGG" or (
                isinstance(getattr(m, "features", None), nn.Module) and isinstance(getattr(m, "classifier", None), nn.Module)
                and any(isinstance(c, nn.Conv2d) for c in m.features.modules())):
            return "vgg"
    return None


def default_prunable(model: nn.Module, family: str, prune_classifier: bool = True) -> list[str]:
    """Default prunable layers of a model family (docs/CONTRACTS.md).

    * ``"vgg"``: every ``nn.Conv2d`` and ``nn.Linear`` except the first convolution (3 input channels: few
      weights, large effect on accuracy). The final classifier layer is included unless
      ``prune_classifier=False``.
    * ``"bert"``: the ``nn.Linear`` layers of the encoder blocks (``encoder.layer.<i>.attention.self.query/key/
      value``, ``attention.output.dense``, ``intermediate.dense``, ``output.dense``), not embeddings, pooler or
      classifier. ``prune_classifier`` does not apply.

    Raises:
        ValueError: unknown family, or the model has no such layers.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; allowed: {', '.join(FAMILIES)}")
    modules = dict(model.named_modules())
    names = all_maskable(model)
    if family == "bert":
        out = [n for n in names if isinstance(modules[n], nn.Linear) and _BERT_ENCODER_LINEAR.fullmatch(n)]
    else:
        convs = [n for n in names if isinstance(modules[n], nn.Conv2d)]
        if not convs:
            out = []
        else:
            out = [n for n in names if n != convs[0]]
            linears = [n for n in names if isinstance(modules[n], nn.Linear)]
            if not prune_classifier and linears:
                out.remove(linears[-1])
    if not out:
        raise ValueError(f"model {type(model).__name__} has no prunable layers for family {family!r} "
                         f"(expected {'encoder.layer.<i> Linear layers' if family == 'bert' else 'Conv2d layers'})")
    return out
