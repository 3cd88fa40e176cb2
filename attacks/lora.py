"""`lora`: low-rank adapters (peft) on the encoder's attention projections, and a fresh head.

The encoder's own weights stay frozen; only the adapters and the head train. Adapters are injected into the
worker's cached model for the trial and taken out again after it (`restore`), so later trials of the cell find the
plain defended encoder there without a copy of the model (on a GPU, the model's memory again) for every trial.

No LoRA dropout: every attack trains with dropout off (harness.training.fit), so that trials differ only in their
hyperparameters, and a dropout rate that fit would silently disable is not offered as one.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from attacks.finetune import FineTuning, FinetuneParams
from harness.classifier import Classifier
from harness.registry import register_attack
from harness.space import Choice, Fixed, Space


class LoraParams(FinetuneParams):
    target_modules: tuple[str, ...] = Field(
        ("query", "key", "value"), min_length=1,
        description="names of the encoder's linear layers that get adapters (BERT's attention projections)",
    )


class LoraShape(BaseModel):
    """The adapters' shape for one trial: rank r and scale alpha (the update is alpha / r * B A)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(gt=0)
    alpha: float = Field(gt=0)


@register_attack("lora")
class Lora(FineTuning):
    """LoRA adapters (peft) on the attention projections and a fresh head; the encoder's weights stay frozen."""

    Params = LoraParams

    def adapt_space(self) -> Space:
        # alpha is fixed by default: with Adam, alpha and the searched learning rate scale the update alike.
        return {"rank": Choice(values=[4, 8, 16]), "alpha": Fixed(value=16.0)}

    def adaptation(self, config: dict[str, Any]) -> dict[str, Any]:
        self.shape(config)  # validates rank and alpha with the rest of the configuration
        return {"adapt": "lora"}

    @staticmethod
    def shape(config: dict[str, Any]) -> LoraShape:
        return LoraShape(rank=config["rank"], alpha=config["alpha"])

    def prepare(self, model: Classifier, config: dict[str, Any], seed: int) -> Classifier:
        from peft import LoraConfig, inject_adapter_in_model

        shape = self.shape(config)
        lora = LoraConfig(r=shape.rank, lora_alpha=shape.alpha, lora_dropout=0.0,
                          target_modules=list(self.params.target_modules))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the adapters' initialisation is part of the trial's seed
            inject_adapter_in_model(lora, model.encoder)
        return model

    def restore(self, model: Classifier) -> None:
        """Put each adapted layer's own linear layer back in its place: the defended encoder, as it was."""
        from peft.tuners.lora import LoraLayer

        for module in list(model.encoder.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, LoraLayer):
                    setattr(module, name, child.get_base_layer())
        vars(model.encoder).pop("peft_config", None)  # peft's record of the adapters, which are gone
