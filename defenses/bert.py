"""`bert`, the matched control: the pretrained encoder trained on the desired task exactly as the censoring defenses
train it, with the censoring term off.

It runs the censoring trainer itself (`defenses._censor.train_censoring`) with `harmful_weight=0` and no inner loop:
the same Adam at a constant rate, global-norm clip, batch, steps, seed, random draws and pooling as `adversarial` and
`mlac`, so whatever a censoring defense blocks beyond `bert` is its censoring, not its optimiser. `adversarial` with
`harmful_weight: 0` and the same outer parameters gives bit-identical weights. Its harmful head (trained alongside
on the encoder's features, never fed back) only reports how much harm a linear head reads off as training goes.

`bert-trainer` keeps the earlier Trainer-style fine-tuning (AdamW with weight decay, 10% warmup, linear decay, no
clip): a differently trained encoder, labelled as such, *not* the control.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from defenses._censor import CensorTrainerParams, train_censoring
from harness.attack_step import AttackSetting
from harness.censoring import OuterParams
from harness.plugins import Defense, DefenseContext
from harness.registry import register_defense
from harness.training import fit

class BertParams(OuterParams):
    """The censoring defenses' outer optimisation (`harness.censoring.OuterParams`: same defaults, same meaning),
    nothing else."""


def as_censoring(p: BertParams) -> CensorTrainerParams:
    """bert as the censoring trainer with the censoring term off (and no inner loop)."""
    return CensorTrainerParams(**p.model_dump(), harmful_weight=0.0, inner_steps=0, harmful_head="learned")


@register_defense("bert")
class Bert(Defense):
    """The pretrained encoder fine-tuned on the desired task only, like the censoring defenses: the matched control."""

    Params = BertParams

    def train(self, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        return train_censoring(as_censoring(self.params), ctx, self.name)


class BertTrainerParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(300, ge=0, description="desired-task fine-tuning steps (0 = the pretrained encoder as is)")
    lr: float = Field(5e-5, gt=0, description="peak AdamW learning rate (10% linear warmup, then linear decay to 0)")
    batch_size: int = Field(32, gt=0)
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")


@register_defense("bert-trainer")
class BertTrainer(Defense):
    """Trainer-style desired-task fine-tuning (AdamW, warmup, linear decay, no clip): NOT the matched control."""

    Params = BertTrainerParams

    def train(self, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        p = self.params
        model = ctx.classifier(ctx.num_labels[ctx.desired])
        model.reset_head(torch.Generator().manual_seed(ctx.seed))  # from the seed, not the global generator
        if p.steps:
            setting = AttackSetting(
                lr=p.lr, steps=p.steps, batch_size=p.batch_size, adapt="full", optimizer="adamw",
                weight_decay=p.weight_decay, warmup_frac=0.1, schedule="linear",
            )
            fit(model, ctx.train, ctx.desired, setting, seed=ctx.seed,
                on_step=lambda step, loss: ctx.progress(step, {"desired_loss": loss}))
        return model.encoder.state_dict()
