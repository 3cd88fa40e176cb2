from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from harness.attack_step import AttackSetting
from harness.classifier import Classifier
from harness.plugins import Defense, DefenseContext
from harness.registry import register_defense
from harness.training import fit


class BertParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(300, ge=0, description="fine-tuning steps on the desired task (0 = the pretrained encoder as is)")
    lr: float = Field(5e-5, gt=0)
    batch_size: int = Field(32, gt=0)
    weight_decay: float = Field(0.01, ge=0)


@register_defense("bert")
class Bert(Defense):
    """The pretrained encoder fine-tuned on the desired task only (the paper's undefended baseline)."""

    Params = BertParams

    def total_steps(self) -> int:
        return self.params.steps

    def train(self, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        p = self.params
        model = Classifier(ctx.base_encoder(), ctx.num_labels[ctx.desired]).to(ctx.device)
        if p.steps:
            setting = AttackSetting(
                lr=p.lr, steps=p.steps, batch_size=p.batch_size, adapt="full", optimizer="adamw",
                weight_decay=p.weight_decay, warmup_frac=0.1, schedule="linear",
            )
            fit(model, ctx.train, ctx.desired, setting, seed=ctx.seed,
                on_step=lambda step, loss: ctx.progress(step, {"desired_loss": loss}))
        return model.encoder.state_dict()
