"""The conformance kit (harness.testing) passes a sound defense and a sound attack and catches each kind of broken
one.

The broken plugins below are loaded by explicit `module:attr` targets, as a config may name them; the kit trains the
defenses through the real defense service and runs the attacks' trials on the smoke config.
"""

from __future__ import annotations

import random

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from harness.classifier import Classifier
from harness.plugins import Attack, AttackContext, AttackOutcome, Defense, DefenseContext
from harness.registry import ATTACKS, DEFENSES
from harness.space import IntRange, LogUniform, Space, Uniform
from harness.testing import (
    ConformanceError,
    check_attack,
    check_attack_params,
    check_attack_registered,
    check_defense,
    check_params,
    check_registered,
    check_steps_dimension,
    check_training,
    check_trial,
)

HERE = "tests.test_conformance"


class Unseeded(Defense):
    """Base weights plus noise from an unseeded generator: different on every run."""

    def train(self, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        generator = torch.Generator()
        generator.seed()
        state = ctx.base_encoder().state_dict()
        name = "embeddings.word_embeddings.weight"
        state[name] = state[name] + 1e-3 * torch.randn(state[name].shape, generator=generator)
        return state


class WholeClassifier(Defense):
    """Returns the classifier's state dict (encoder.* keys and a head) instead of the encoder's."""

    def train(self, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        return Classifier(ctx.base_encoder(), ctx.num_labels[ctx.desired]).state_dict()


class LenientParams(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a misspelled key silently becomes the default

    steps: int = Field(3, ge=0)


class Lenient(Defense):
    """Ignores unknown parameters."""

    Params = LenientParams

    def train(self, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        return ctx.base_encoder().state_dict()


class SaltedParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    salt: int = Field(default_factory=lambda: random.randrange(2**31))  # changes the cache key on every load


class Salted(Defense):
    """Deterministic weights, but a cache key that never repeats."""

    Params = SaltedParams

    def train(self, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        return ctx.base_encoder().state_dict()


def test_a_sound_defense_passes():
    state = check_defense(
        "bert", params={"steps": 2, "batch_size": 8}, invalid_params=[{"lr": 0}, {"steps": -1}, {"grad_clip": 0}]
    )
    assert "embeddings.word_embeddings.weight" in state


def test_the_trainer_style_bert_variant_conforms():
    state = check_defense("bert-trainer", params={"steps": 2, "batch_size": 8}, invalid_params=[{"weight_decay": -1}])
    assert "embeddings.word_embeddings.weight" in state


def test_an_unregistered_defense_is_caught():
    with pytest.raises(ConformanceError, match="not registered"):
        check_registered(f"{HERE}:Unseeded")


def test_unvalidated_params_are_caught():
    with pytest.raises(ConformanceError, match="accepts an unknown parameter"):
        check_params(DEFENSES.get(f"{HERE}:Lenient"), {"steps": 2})
    # An invalid value the author names must be refused too: here a negative step count that `bert` refuses.
    check_params(DEFENSES.get("bert"), {"steps": 2}, invalid_params=[{"steps": -1}])
    with pytest.raises(ConformanceError, match="accepts the invalid params"):
        check_params(DEFENSES.get("bert"), {"steps": 2}, invalid_params=[{"steps": 5}])


def test_a_wrong_architecture_is_caught():
    with pytest.raises(ConformanceError, match="not the base encoder's"):
        check_training(f"{HERE}:WholeClassifier", {})


def test_nondeterminism_is_caught():
    with pytest.raises(ConformanceError, match="not deterministic.*word_embeddings"):
        check_training(f"{HERE}:Unseeded", {})


def test_a_cache_key_that_never_repeats_is_caught():
    with pytest.raises(ConformanceError, match="trained again instead of being found in the cache"):
        check_training(f"{HERE}:Salted", {})


# -- attacks ----------------------------------------------------------------------------------------------------------
class Constant(Attack):
    """Reports a fixed accuracy without training: a stand-in for attacks whose outcome is what is under test."""

    accuracy: float = 0.5

    def default_space(self) -> Space:
        return {"lr": LogUniform(low=1e-4, high=1e-2), "steps": IntRange(low=5, high=10)}

    def outcome(self, config: dict) -> float:
        return self.accuracy

    def run(self, ctx: AttackContext, config: dict, seed: int, score_test: bool) -> AttackOutcome:
        value = self.outcome(config)
        return AttackOutcome(value, value if score_test else None, config["steps"], config["steps"])


class OutOfRange(Constant):
    """Reports a percentage instead of a fraction."""

    accuracy = 55.0


class UnseededAttack(Constant):
    """Reports an accuracy from an unseeded generator: different on every run."""

    def outcome(self, config: dict) -> float:
        generator = torch.Generator()
        generator.seed()
        return float(torch.rand((), generator=generator))


class FloatSteps(Constant):
    """Searches its training length as a float: ASHA cannot count rungs in it."""

    def default_space(self) -> Space:
        return {"lr": LogUniform(low=1e-4, high=1e-2), "steps": Uniform(low=5, high=10)}


class LenientAttack(Constant):
    """Ignores unknown parameters."""

    Params = LenientParams


def attack(name: str) -> Attack:
    return ATTACKS.get(f"{HERE}:{name}").from_spec({}, {}, "test")


def test_a_sound_attack_passes():
    outcome = check_attack("probe", invalid_params=[{"patience": 0}, {"preset": "nope"}], trial={"steps": 5},
                           space={"batch_size": 8})
    assert 0.0 <= outcome.val_accuracy <= 1.0 and outcome.steps_run <= 5


def test_a_fine_tuning_attack_passes():
    check_attack("finetune", params={"preset": "paper"}, trial={"steps": 3, "batch_size": 8})


def test_an_unregistered_attack_is_caught():
    with pytest.raises(ConformanceError, match="attack .* not registered"):
        check_attack_registered(f"{HERE}:Constant")


def test_unvalidated_attack_params_are_caught():
    with pytest.raises(ConformanceError, match="accepts an unknown parameter"):
        check_attack_params(ATTACKS.get(f"{HERE}:LenientAttack"), {})
    check_attack_params(ATTACKS.get("probe"), {}, invalid_params=[{"patience": 0}])
    with pytest.raises(ConformanceError, match="accepts the invalid params"):
        check_attack_params(ATTACKS.get("probe"), {}, invalid_params=[{"patience": 5}])


def test_a_float_steps_dimension_is_caught():
    with pytest.raises(ConformanceError, match="'steps' dimension .* integer"):
        check_steps_dimension(attack("FloatSteps"))
    check_steps_dimension(attack("Constant"))


def test_an_accuracy_outside_0_1_is_caught():
    check_trial(attack("Constant"))
    with pytest.raises(ConformanceError, match="val_accuracy is 55.0"):
        check_trial(attack("OutOfRange"))


def test_a_nondeterministic_attack_is_caught():
    with pytest.raises(ConformanceError, match="not deterministic"):
        check_trial(attack("UnseededAttack"))
