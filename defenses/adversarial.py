"""Adversarial censoring (AC), the paper's baseline: MLAC with no inner loop (K=0).

A persistent harmful head learns to predict the harmful label from the encoder's features while the encoder (with the
desired head) minimises the desired-task loss plus `harmful_weight` times the censoring loss of that head's output.
It runs the very same outer step as `mlac` (`defenses._censor.train_censoring` with `inner_steps=0`), so the two
cannot drift apart.

`harmful_head: reset` is the reference code's baseline instead: its adversarial head is never used, a freshly drawn
random head is censored at every step (`GoodBadBERT.with_linear_reset` ignores the head it is given), so no trained
adversary ever looks at the features. It is there to reproduce the paper's adversarial row, not as a defense; these
params allow it on purpose (`mlac`'s refuse it).
"""

from __future__ import annotations

import torch
from pydantic import Field

from defenses._censor import CensorParams, CensorTrainerParams, HeadMode, train_censoring
from harness.plugins import Defense, DefenseContext
from harness.registry import register_defense


class AdversarialParams(CensorParams):
    """The outer optimisation and the censoring loss (see `defenses._censor.CensorParams`); nothing adapts between."""

    harmful_head: HeadMode = Field(
        "learned",
        description="learned: a persistent head trained to predict harm (the adversary); reset: a fresh random head "
        "every step, as in the reference code, which never trains its adversarial head",
    )


def as_censoring(p: AdversarialParams) -> CensorTrainerParams:
    """adversarial as the censoring trainer with no inner loop."""
    return CensorTrainerParams(**p.model_dump(), inner_steps=0)


@register_defense("adversarial")
class Adversarial(Defense):
    """Adversarial censoring: desired-task loss plus a censoring loss against a harmful head trained alongside."""

    Params = AdversarialParams

    def train(self, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        return train_censoring(as_censoring(self.params), ctx, self.name)
