"""Fine-tuning attacks: `FineTuning`, the base every built-in attack shares, and `finetune`, the paper's attacker.

A fine-tuning attack is one `AttackSetting` (harness/attack_step.py: what adapts, the optimizer, its schedule)
trained by `harness.training.fit` from the defended encoder with a fresh head. The defended weights carry no head
(a defense returns an encoder), so the head is always drawn afresh, as in the paper; it is not a hyperparameter.
Subclasses say what adapts (`adaptation`), add their own dimensions (`adapt_space`) and, for `lora`, change the
model before training (`prepare`). Everything else (the training dimensions, presets, validation of a config's
space, the run itself) is defined here once.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.attack_step import AttackSetting
from harness.classifier import Classifier
from harness.errors import UserError
from harness.plugins import Attack, AttackContext, AttackOutcome
from harness.registry import register_attack
from harness.space import Choice, Fixed, IntRange, LogUniform, Space, Uniform
from harness.training import accuracy, fit, probe_accuracy


class FinetuneParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Literal["default", "paper"] = Field(
        "default",
        description="'paper': the reference attacker's space (Adam, constant learning rate); "
        "'default': the same ranges with AdamW and a searched schedule (constant or linear decay)",
    )
    patience: int = Field(3, ge=1, description="validation checks without improvement before a trial stops early")


def training_space(preset: str) -> Space:
    """The dimensions every fine-tuning attack searches: the paper's ranges; optimizer and schedule by preset.

    Every `AttackSetting` field is a dimension, so a config can search any of them, e.g.
    `space: {optimizer: {type: choice, values: [adamw, sgd]}, warmup_frac: {type: uniform, low: 0, high: 0.2}}`.
    """
    paper = preset == "paper"
    return {
        "lr": LogUniform(low=1e-5, high=1e-2),
        "steps": IntRange(low=100, high=1000),
        "batch_size": Choice(values=[12, 24, 48]),
        "optimizer": Fixed(value="adam" if paper else "adamw"),
        "weight_decay": Fixed(value=0.0),
        "momentum": Fixed(value=0.9),  # used by optimizer sgd only
        "warmup_frac": Fixed(value=0.0),
        "schedule": Fixed(value="constant") if paper else Choice(values=["constant", "linear"]),
    }


class FineTuning(Attack):
    """Base of the fine-tuning attacks (not registered itself)."""

    Params = FinetuneParams

    def __init__(self, params: BaseModel, space_overrides: dict[str, Any] | None = None, origin: str = "config"):
        super().__init__(params, space_overrides, origin)
        self._check_space(origin)

    @abstractmethod
    def adaptation(self, config: dict[str, Any]) -> dict[str, Any]:
        """The `AttackSetting` fields that say what adapts (adapt, top_k) for this configuration."""

    def adapt_space(self) -> Space:
        """This attack's own dimensions, beside the training ones."""
        return {}

    def default_space(self) -> Space:
        return {**training_space(self.params.preset), **self.adapt_space()}

    def prepare(self, model: Classifier, config: dict[str, Any], seed: int) -> Classifier:
        """The model to train (by default the defended encoder with its fresh head, as it is)."""
        return model

    def restore(self, model: Classifier) -> None:
        """Undo, after the trial, what `prepare` changed in the module's structure: the worker keeps the module for
        the cell's later trials, which reload only the defended weights into it (by default nothing to undo)."""

    def setting(self, config: dict[str, Any]) -> AttackSetting:
        return AttackSetting(
            lr=config["lr"],
            steps=config["steps"],
            batch_size=config["batch_size"],
            optimizer=config["optimizer"],
            weight_decay=config["weight_decay"],
            momentum=config["momentum"],
            warmup_frac=config["warmup_frac"],
            schedule=config["schedule"],
            **self.adaptation(config),
        )

    def run(self, ctx: AttackContext, config: dict[str, Any], seed: int, score_test: bool) -> AttackOutcome:
        setting = self.setting(config)
        cached = ctx.features if setting.adapt == "probe" else None
        model = self.prepare(ctx.classifier(seed, load_encoder=cached is None), config, seed)
        try:
            return self._train(ctx, model, setting, cached, seed, score_test)
        finally:
            self.restore(model)

    def _train(self, ctx: AttackContext, model: Classifier, setting: AttackSetting, cached: Any, seed: int,
               score_test: bool) -> AttackOutcome:
        data = ctx.data

        def test_accuracy() -> float:
            if cached is not None and cached.test is not None:
                return probe_accuracy(model.head, cached.test, data.test.labels[data.label])
            return accuracy(model, data.test, data.label)

        # Reruns only: test is scored at every validation check (the curves) and once on the restored best weights.
        result = fit(
            model, data.train, data.label, setting, seed=seed, val=data.val, eval_every=ctx.eval_every,
            patience=self.params.patience, features=cached, on_eval=ctx.on_eval, on_step=ctx.on_step,
            test_accuracy=test_accuracy if score_test else None,
        )
        test = test_accuracy() if score_test else None
        return AttackOutcome(result.val_accuracy or 0.0, test, result.steps_run, result.best_step,
                             tuple(result.history), tuple(result.test_history))

    def _check_space(self, origin: str) -> None:
        """Every value the space can produce must make a valid setting: a typo fails here, not in every trial.

        Each dimension's extremes (or every value, for choices) are tried with the other dimensions at a value of
        the attack's own default space, so an error is pinned on the dimension that caused it.
        """
        base = {key: _extremes(dim)[0] for key, dim in self.default_space().items()}
        for key, dim in self.space.items():
            for value in _extremes(dim):
                try:
                    self.setting({**base, key: value})
                except ValueError as exc:  # pydantic's ValidationError is one
                    reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
                    raise UserError(
                        f"{origin}: attack '{self.name}' space.{key}: {value!r} is not valid ({reason})"
                    ) from None


def _extremes(dim: Any) -> list[Any]:
    if isinstance(dim, Fixed):
        return [dim.value]
    if isinstance(dim, Choice):
        return list(dim.values)
    if isinstance(dim, (LogUniform, Uniform, IntRange)):
        return [dim.low, dim.high]
    raise TypeError(f"unknown search dimension {dim!r}")


@register_attack("finetune")
class Finetune(FineTuning):
    """Fresh linear head; full fine-tuning or a frozen-encoder linear probe (searched), as in the paper."""

    MODES = ("probe", "full")

    def adapt_space(self) -> Space:
        return {"mode": Choice(values=list(self.MODES))}

    def adaptation(self, config: dict[str, Any]) -> dict[str, Any]:
        if config["mode"] not in self.MODES:
            raise ValueError(f"mode must be one of {', '.join(self.MODES)}")
        return {"adapt": config["mode"]}

    def needs_features(self) -> bool:
        return "probe" in _extremes(self.space["mode"])
