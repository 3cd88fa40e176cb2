"""Meta-Learned Adversarial Censoring (MLAC): make the encoder bad at the harmful task *after* K simulated attack
steps, while it stays good at the desired task.

The training is the censoring trainer of `defenses._censor` (the outer step, the differentiable inner loop, the
learned or sampled inner learning rate, checkpoints), which `adversarial` (K=0) and `bert` (K=0, no censoring term)
run too; its module docstring describes the method and the choices worth knowing. This module adds what is
particular to the `mlac` plugin: a check that its parameters ask for an inner loop or a trained adversary, and the
`first-order` label.
"""

from __future__ import annotations

import torch
from pydantic import model_validator

from defenses._censor import CensorTrainerParams, train_censoring
from harness.plugins import Defense, DefenseContext
from harness.registry import register_defense


class MlacParams(CensorTrainerParams):
    """The censoring trainer's parameters (`defenses._censor.CensorTrainerParams`), refusing a degenerate setup."""

    @model_validator(mode="after")
    def _trains_an_adversary(self) -> "MlacParams":
        if self.inner_steps == 0 and self.harmful_head == "reset" and self.censor != "probe":
            raise ValueError(
                "inner_steps=0 with harmful_head='reset' censors a random head nobody trained; "
                "use harmful_head='learned' (that is the adversarial defense) or censor='probe'"
            )
        return self


@register_defense("mlac")
class Mlac(Defense):
    """Meta-Learned Adversarial Censoring: make the encoder bad at the harmful task after K simulated attack steps."""

    Params = MlacParams

    def variant(self) -> str | None:
        """`first-order` for first-order MLAC, a different method (with probe attackers, adversarial censoring
        against a freshly trained head), so its rows are never read as MLAC's."""
        p = self.params
        return "first-order" if p.first_order and p.inner_steps > 0 else None

    def training_revision(self) -> int:
        # 1: the learned inner lr moved from the defender's optimizer to its own, on the attacker's objective.
        return 1 if self.params.inner_lr == "learned" and self.params.inner_steps > 0 else 0

    def needs_double_backward(self) -> bool:
        p = self.params
        return p.inner_steps > 0 and not p.first_order

    def train(self, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        return train_censoring(self.params, ctx, self.name)
