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

SCORES = ("magnitude", "movement", "soft_movement")


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


class SoftMovementScores:
    """Learned scores ``S`` (float32, weight shape, start at 0) trained by straight-through top-k + regulariser.

    One :meth:`accumulate` per optimizer step (after backward, gradients already masked) does one Adam step on
    ``g = dL/dW * W + reg * sigmoid(S) * (1 - sigmoid(S))`` for every weight still kept (``weight_mask`` True).

    Under DDP the scores are not parameters of the model (DDP does not see them): every rank updates them from the
    same all-reduced weight gradients and weights, so they stay identical on every rank without a collective of
    their own (``PruningCallback(verify_ranks=True)`` checks the resulting masks).

    Args:
        lr: Adam step size of the scores.
        reg: ``lambda`` of the regulariser ``lambda * sum(sigmoid(S))``.
    """

    BETAS = (0.9, 0.999)
    EPS = 1e-8

    def __init__(self, lr: float = 0.01, reg: float = 0.0) -> None:
        for name, v in (("score_lr", lr), ("score_reg", reg)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v != v or v == float("inf"):
                raise ValueError(f"prune.{name}={v!r} is not allowed; it must be a finite number >= 0")
        self.lr, self.reg = float(lr), float(reg)
        self.scores: dict[str, torch.Tensor] = {}
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}
        self.t: dict[str, int] = {}

    def accumulate(self, modules: Mapping[str, nn.Module]) -> None:
        """One Adam step on the scores of each module whose weight has a gradient."""
        b1, b2 = self.BETAS
        with torch.no_grad():
            for name, mod in modules.items():
                g_w = mod.weight.grad
                if g_w is None:
                    continue
                s = self.scores.get(name)
                if s is None or s.shape != mod.weight.shape or s.device != mod.weight.device:
                    s = self.scores[name] = torch.zeros_like(mod.weight, dtype=torch.float32)
                    self.m[name], self.v[name], self.t[name] = torch.zeros_like(s), torch.zeros_like(s), 0
                sig = torch.sigmoid(s)
                g = g_w.float() * mod.weight.float() + self.reg * sig * (1.0 - sig)
                keep = getattr(mod, "weight_mask", None)
                if keep is not None:
                    g = g * keep
                self.t[name] += 1
                t = self.t[name]
                m, v = self.m[name], self.v[name]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                step = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + self.EPS)
                s.sub_(self.lr * step if keep is None else self.lr * step * keep)

    def score(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        s = self.scores.get(name)
        return torch.zeros_like(weight, dtype=torch.float32) if s is None else s.to(weight.device)

    def state_dict(self) -> dict:
        return {"scores": {k: v.detach().cpu().clone() for k, v in self.scores.items()},
                "m": {k: v.detach().cpu().clone() for k, v in self.m.items()},
                "v": {k: v.detach().cpu().clone() for k, v in self.v.items()},
                "t": dict(self.t), "lr": self.lr, "reg": self.reg}

    def load_state_dict(self, state: Mapping) -> None:
        self.scores = {k: v.detach().clone().float() for k, v in state["scores"].items()}
        self.m = {k: v.detach().clone().float() for k, v in state["m"].items()}
        self.v = {k: v.detach().clone().float() for k, v in state["v"].items()}
        self.t = {k: int(v) for k, v in state["t"].items()}
