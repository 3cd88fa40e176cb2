"""The conformance kit (harness.testing) passes a sound defense and catches each kind of broken one.

The broken defenses below are loaded by explicit `module:attr` targets, as a config may name them; the kit trains
them through the real defense service on the smoke config.
"""

from __future__ import annotations

import random

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from harness.classifier import Classifier
from harness.plugins import Defense, DefenseContext
from harness.registry import DEFENSES
from harness.testing import ConformanceError, check_defense, check_params, check_registered, check_training

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
