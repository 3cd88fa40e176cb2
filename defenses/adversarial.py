"""Adversarial censoring (AC), the paper's baseline: MLAC with no inner loop (K=0).

A persistent harmful head learns to predict the harmful label from the encoder's features while the encoder (with the
desired head) minimises the desired-task loss plus `harmful_weight` times the censoring loss of that head's output.
It runs the very same outer step as `mlac` (`defenses.mlac.train_censoring` with `inner_steps=0` and
`harmful_head="learned"`), so the two cannot drift apart.
"""

from __future__ import annotations

import torch

from defenses.mlac import CensorParams, MlacParams, train_censoring
from harness.plugins import Defense, DefenseContext
from harness.registry import register_defense


class AdversarialParams(CensorParams):
    """The outer optimisation and the censoring loss (see `defenses.mlac.CensorParams`); nothing adapts in between."""


def as_mlac(p: AdversarialParams) -> MlacParams:
    return MlacParams(**p.model_dump(), inner_steps=0, harmful_head="learned")


@register_defense("adversarial")
class Adversarial(Defense):
    """Adversarial censoring: desired-task loss plus a censoring loss against a harmful head trained alongside."""

    Params = AdversarialParams

    def total_steps(self) -> int:
        return self.params.steps

    def train(self, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        return train_censoring(as_mlac(self.params), ctx, self.name)
