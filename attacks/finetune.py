from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.attack_step import AttackSetting
from harness.plugins import Attack, AttackContext, AttackOutcome
from harness.registry import register_attack
from harness.space import Choice, Fixed, IntRange, LogUniform, Space
from harness.training import fit, probe_accuracy, accuracy


class FinetuneParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Literal["default", "paper"] = Field(
        "default", description="'paper': the reference attacker (Adam, steps 100-1000); 'default': AdamW"
    )
    patience: int = Field(3, ge=1, description="validation checks without improvement before a trial stops early")


@register_attack("finetune")
class Finetune(Attack):
    """Fresh linear head; full fine-tuning or a frozen-encoder linear probe (searched); AdamW or the paper's Adam."""

    Params = FinetuneParams

    def default_space(self) -> Space:
        return {
            "lr": LogUniform(low=1e-5, high=1e-2),
            "steps": IntRange(low=100, high=1000),
            "batch_size": Choice(values=[12, 24, 48]),
            "mode": Choice(values=["probe", "full"]),
            "optimizer": Fixed(value="adam" if self.params.preset == "paper" else "adamw"),
            "weight_decay": Fixed(value=0.0),
        }

    def needs_features(self) -> bool:
        mode = self.space["mode"]
        return "probe" in (mode.values if isinstance(mode, Choice) else [getattr(mode, "value", None)])

    def setting(self, config: dict[str, Any]) -> AttackSetting:
        return AttackSetting(
            lr=config["lr"],
            steps=config["steps"],
            batch_size=config["batch_size"],
            adapt=config["mode"],
            optimizer=config["optimizer"],
            weight_decay=config["weight_decay"],
        )

    def run(self, ctx: AttackContext, config: dict[str, Any], seed: int, score_test: bool) -> AttackOutcome:
        setting = self.setting(config)
        cached = ctx.features if setting.adapt == "probe" else None
        model = ctx.classifier(seed, load_encoder=cached is None)
        data = ctx.data
        result = fit(
            model, data.train, data.label, setting, seed=seed, val=data.val,
            eval_every=ctx.eval_every, patience=self.params.patience, features=cached,
        )
        test = None
        if score_test:
            if cached is not None and cached.test is not None:
                test = probe_accuracy(model.head, cached.test, data.test.labels[data.label])
            else:
                test = accuracy(model, data.test, data.label)
        return AttackOutcome(result.val_accuracy or 0.0, test, result.steps_run, result.best_step)
