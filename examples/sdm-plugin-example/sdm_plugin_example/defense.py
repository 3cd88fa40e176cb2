"""An example defense: fine-tune on the desired task, then add seeded Gaussian noise to the encoder's weights.

It shows the plugin interface (a parameter model, training from the context, seeded randomness, the encoder's state
dict as the result); it is not meant to block anything.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from harness.attack_step import AttackSetting
from harness.plugins import Defense, DefenseContext
from harness.training import fit


class NoisyFinetuneParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)  # a misspelled parameter is an error, not a default

    steps: int = Field(50, ge=0, description="fine-tuning steps on the desired task")
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(16, gt=0)
    noise: float = Field(0.01, ge=0, description="noise std, relative to each weight tensor's std")


class NoisyFinetune(Defense):
    """Example: desired-task fine-tuning, then Gaussian noise on the weights (shows the interface, blocks nothing)."""

    Params = NoisyFinetuneParams  # its `steps` is also the progress bar's length (`Defense.total_steps`)

    def train(self, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        p = self.params
        model = ctx.classifier(ctx.num_labels[ctx.desired])  # the base encoder, pooled as the config says
        if p.steps:
            setting = AttackSetting(lr=p.lr, steps=p.steps, batch_size=p.batch_size, adapt="full", optimizer="adamw")
            fit(model, ctx.train, ctx.desired, setting, seed=ctx.seed,
                on_step=lambda step, loss: ctx.progress(step, {"desired_loss": loss}))
        # All randomness from a generator seeded by ctx.seed: the same seed gives the same weights.
        generator = torch.Generator().manual_seed(ctx.seed)
        state = {}
        for name, tensor in model.encoder.state_dict().items():
            if tensor.is_floating_point() and tensor.numel() > 1:
                noise = torch.randn(tensor.shape, generator=generator) * float(tensor.std()) * p.noise
                tensor = tensor + noise.to(tensor.device, tensor.dtype)
            state[name] = tensor
        return state
