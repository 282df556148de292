"""Importance scores of weights: a low score means "prune me first".

* magnitude: ``|w|`` (Han et al. 2015; Zhu & Gupta 2017).
* movement (Sanh, Wolf & Rush 2020, "Movement Pruning"): ``S = -sum_t W_t * dL/dW'_t`` accumulated over the
  optimizer steps, where ``W' = W * M`` is the masked weight the forward uses: weights moving away from zero score
  high, weights shrinking towards zero score low. As in the paper the masks are *not* monotone: the straight-through
  estimator gives the pruned entries a score gradient too (the gradient of the masked weight times the weight's
  value when it was pruned), and every pruning step takes the top-k of all scores, so a weight pruned on the
  early, noisy scores comes back (with its old value) once its score has risen. ``RevivableScores`` keeps the
  pruned values and reads the pruned entries' gradient before masking it (``masks.DEFER_GRAD_MASK``).
* soft movement: learned scores ``S`` (own Adam) trained through the same straight-through top-k, with the
  regulariser ``lambda * sum(sigmoid(S))``.

Measured on MiniLM + fortunes (2026-12-04; README "Pruning II"): in that 270-step budget both movement scores, with
monotone masks (before) and straight-through (now), collapse the model to chance (16.7%, 6 classes) at the first
validation of the ramp. ``benchmarks/movement_probe.py`` shows why: after 1-3 epochs of dense fine-tuning a one-shot
10% prune by hard movement already gives chance, where magnitude and a random 10% keep 67-79%. Movement prunes first
the weights the gradient pushes towards zero, which to first order lowers the loss, but its lowest 10% hold 2.7x
their share of each layer's largest weights, whose removal the curvature term makes costly; Sanh et al. accumulate
the scores over thousands of steps, where the trend outweighs this.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

SCORES = ("magnitude", "movement", "soft_movement")


def magnitude_score(weight: torch.Tensor) -> torch.Tensor:
    """``|w|``, same shape as ``weight`` (any shape)."""
    return weight.detach().abs()


class RevivableScores:
    """What the two movement scores share: the values of the pruned weights and the straight-through gradient.

    ``shadow[name]`` is the layer's full weight as of its last mask change (pruned entries keep the value they had
    when pruned); ``full_weight`` is the current weight where kept and the shadow where pruned. The pruner calls
    ``set_mask`` to change a layer's mask (revived entries get their old value back) and ``accumulate`` once per
    optimizer step, which updates the scores from the *whole* gradient of the masked weight and then zeroes the
    gradient of the pruned entries (the modules defer their gradient masking to it: ``DEFER_GRAD_MASK``).
    """

    def __init__(self) -> None:
        self.scores: dict[str, torch.Tensor] = {}
        self.shadow: dict[str, torch.Tensor] = {}

    @staticmethod
    def _mask(mod: nn.Module) -> torch.Tensor | None:
        return getattr(mod, "weight_mask", None)

    def full_weight(self, name: str, mod: nn.Module) -> torch.Tensor:
        """The layer's weight with the pruned entries at their values from before they were pruned."""
        w = mod.weight.detach()
        sh, mask = self.shadow.get(name), self._mask(mod)
        if sh is None or mask is None:
            return w
        return torch.where(mask, w, sh.to(device=w.device, dtype=w.dtype))

    @torch.no_grad()
    def set_mask(self, name: str, mod: nn.Module, keep: torch.Tensor) -> None:
        """Make ``keep`` (bool, weight-shaped) the layer's mask: revived weights get their old values back,
        newly pruned ones are remembered (and zeroed by the caller's ``apply_mask_``)."""
        full = self.full_weight(name, mod).clone()
        self._mask(mod).copy_(keep.to(self._mask(mod).device))
        mod.weight.copy_(full)
        self.shadow[name] = full

    def _score_grad(self, name: str, mod: nn.Module, g: torch.Tensor, w_full: torch.Tensor) -> None:
        raise NotImplementedError

    def accumulate(self, modules: Mapping[str, nn.Module]) -> None:
        """Update every layer's scores from its whole gradient, then zero the gradient of its pruned entries.

        Call after backward (gradients all-reduced under DDP), before the optimizer step; layers whose weight has
        no gradient this step are skipped."""
        with torch.no_grad():
            for name, mod in modules.items():
                g = mod.weight.grad
                if g is None:
                    continue
                s = self.scores.get(name)
                if s is None or s.shape != mod.weight.shape or s.device != mod.weight.device:
                    self._new(name, mod)
                self._score_grad(name, mod, g.float(), self.full_weight(name, mod).float())
                mask = self._mask(mod)
                if mask is not None:
                    g.mul_(mask)

    def _new(self, name: str, mod: nn.Module) -> None:
        self.scores[name] = torch.zeros_like(mod.weight, dtype=torch.float32)

    def score(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The layer's score (zeros, i.e. ties everywhere, before the first ``accumulate``)."""
        s = self.scores.get(name)
        return torch.zeros_like(weight, dtype=torch.float32) if s is None else s.to(weight.device)

    def _state(self) -> dict:
        return {"scores": {k: v.detach().cpu().clone() for k, v in self.scores.items()},
                "shadow": {k: v.detach().cpu().clone() for k, v in self.shadow.items()}}

    def _load(self, state: Mapping) -> None:
        self.scores = {k: v.detach().clone().float() for k, v in state["scores"].items()}
        self.shadow = {k: v.detach().clone() for k, v in state.get("shadow", {}).items()}


class MovementScores(RevivableScores):
    """Hard movement: running scores ``S = -sum_t W_t * dL/dW'_t`` (float32, weight shape) of named layers."""

    def _score_grad(self, name: str, mod: nn.Module, g: torch.Tensor, w_full: torch.Tensor) -> None:
        self.scores[name].sub_(w_full * g)

    def state_dict(self) -> dict:
        return self._state()

    def load_state_dict(self, state: Mapping) -> None:
        if "scores" not in state:  # a checkpoint from before the straight-through masks: {name: scores}
            state = {"scores": state}
        self._load(state)


class SoftMovementScores(RevivableScores):
    """Learned scores ``S`` (float32, weight shape, start at 0) trained by straight-through top-k + regulariser.

    One :meth:`accumulate` per optimizer step (after backward) does one Adam step on
    ``g = dL/dW' * W + reg * sigmoid(S) * (1 - sigmoid(S))`` for every weight, pruned ones included (their ``W`` is
    the value they had when pruned), so a pruned weight whose score rises above the top-k threshold comes back.

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
        super().__init__()
        self.lr, self.reg = float(lr), float(reg)
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}
        self.t: dict[str, int] = {}

    def _new(self, name: str, mod: nn.Module) -> None:
        super()._new(name, mod)
        s = self.scores[name]
        self.m[name], self.v[name], self.t[name] = torch.zeros_like(s), torch.zeros_like(s), 0

    def _score_grad(self, name: str, mod: nn.Module, g_w: torch.Tensor, w_full: torch.Tensor) -> None:
        b1, b2 = self.BETAS
        s = self.scores[name]
        sig = torch.sigmoid(s)
        g = g_w * w_full + self.reg * sig * (1.0 - sig)
        self.t[name] += 1
        t = self.t[name]
        m, v = self.m[name], self.v[name]
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        s.sub_(self.lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + self.EPS))

    def state_dict(self) -> dict:
        return {**self._state(),
                "m": {k: v.detach().cpu().clone() for k, v in self.m.items()},
                "v": {k: v.detach().cpu().clone() for k, v in self.v.items()},
                "t": dict(self.t), "lr": self.lr, "reg": self.reg}

    def load_state_dict(self, state: Mapping) -> None:
        self._load(state)
        self.m = {k: v.detach().clone().float() for k, v in state["m"].items()}
        self.v = {k: v.detach().clone().float() for k, v in state["v"].items()}
        self.t = {k: int(v) for k, v in state["t"].items()}
