"""Importance scores of weights: a low score means "prune me first".

* magnitude: ``|w|`` (Han et al. 2015; Zhu & Gupta 2017).
* movement (Sanh, Wolf & Rush 2020, "Movement Pruning"): ``S = -sum_t w_t * dL/dw_t`` accumulated over the
  optimizer steps; weights moving away from zero score high, weights shrinking towards zero score low. This is
  the hard (top-k) variant with monotone masks: a pruned weight is zero and its gradient is masked, so its score
  no longer changes and it never comes back (the paper's straight-through estimator is not used).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

SCORES = ("magnitude", "movement")


def magnitude_score(weight: torch.Tensor) -> torch.Tensor:
    """``|w|``, same shape as ``weight`` (any shape)."""
    return weight.detach().abs()


class MovementScores:
    """Running movement scores ``S = -sum_t w_t * grad_t`` for a set of named layers (float32, weight shape)."""

    def __init__(self) -> None:
        self.scores: dict[str, torch.Tensor] = {}

    def accumulate(self, modules: Mapping[str, nn.Module]) -> None:
        """Add ``-w * grad`` of each module's weight (call after backward, before ``optimizer.step()``).

        Layers whose weight has no gradient this step are skipped.
        """
        with torch.no_grad():
            for name, m in modules.items():
                g = m.weight.grad
                if g is None:
                    continue
                s = self.scores.get(name)
                if s is None or s.shape != m.weight.shape or s.device != m.weight.device:
                    s = self.scores[name] = torch.zeros_like(m.weight, dtype=torch.float32)
                s.sub_((m.weight.float() * g.float()))

    def score(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The layer's score (zeros, i.e. ties everywhere, before the first ``accumulate``)."""
        s = self.scores.get(name)
        return torch.zeros_like(weight, dtype=torch.float32) if s is None else s.to(weight.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.scores.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.scores = {k: v.detach().clone().float() for k, v in state.items()}
