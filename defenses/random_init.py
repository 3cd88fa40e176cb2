from __future__ import annotations

import torch

from harness.plugins import Defense, DefenseContext
from harness.registry import register_defense


@register_defense("random-init")
class RandomInit(Defense):
    """Same architecture, freshly initialised weights: the floor a blocked model should sit near."""

    def train(self, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        return ctx.base_encoder(pretrained=False).state_dict()  # drawn from ctx.seed: one draw per seed
