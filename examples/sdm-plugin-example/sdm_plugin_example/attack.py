"""An example attack: a linear probe on the defended encoder's frozen features, with its own search space."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from harness.attack_step import AttackSetting
from harness.plugins import Attack, AttackContext, AttackOutcome
from harness.space import Choice, IntRange, LogUniform, Space
from harness.training import accuracy, fit, probe_accuracy


class LinearProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    optimizer: Literal["adam", "sgd"] = "adam"


class LinearProbe(Attack):
    """Example: a fresh linear head trained on the frozen encoder's features (shows the attack interface)."""

    Params = LinearProbeParams

    def default_space(self) -> Space:
        # Declared once; a config overrides single dimensions under `space:`.
        return {
            "lr": LogUniform(low=1e-4, high=1e-1),
            "steps": IntRange(low=50, high=300),
            "batch_size": Choice(values=[16, 32]),
        }

    def needs_features(self) -> bool:
        return True  # the harness encodes each split once per defense; every trial trains only the head

    def run(self, ctx: AttackContext, config: dict[str, Any], seed: int, score_test: bool) -> AttackOutcome:
        setting = AttackSetting(lr=config["lr"], steps=config["steps"], batch_size=config["batch_size"],
                                adapt="probe", optimizer=self.params.optimizer)
        model = ctx.classifier(seed, load_encoder=ctx.features is None)
        data = ctx.data
        # on_eval / on_step let the search stop a trial early (no-ops outside a search).
        result = fit(model, data.train, data.label, setting, seed=seed, val=data.val, eval_every=ctx.eval_every,
                     features=ctx.features, on_eval=ctx.on_eval, on_step=ctx.on_step)
        test = None
        if score_test:  # only reruns of the selected configuration see the test split
            if ctx.features is not None and ctx.features.test is not None:
                test = probe_accuracy(model.head, ctx.features.test, data.test.labels[data.label])
            else:
                test = accuracy(model, data.test, data.label)
        return AttackOutcome(result.val_accuracy or 0.0, test, result.steps_run, result.best_step)
