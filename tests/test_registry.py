from __future__ import annotations

import subprocess

import pytest

from harness.errors import UserError
from harness.plugins import Attack, Defense
from harness.registry import ATTACKS, DEFENSES, Registry
from tests.conftest import sdm_command


def test_builtins_are_listed_without_importing_them():
    assert {"random-init", "bert"} <= set(DEFENSES.names())
    assert "finetune" in ATTACKS.names()
    entry = DEFENSES.entries()["bert"]
    assert entry.target == "defenses.bert:Bert"
    assert "fine-tuned on the desired task" in entry.description


def test_get_returns_the_registered_class():
    cls = DEFENSES.get("random-init")
    assert issubclass(cls, Defense) and cls.name == "random-init"
    assert issubclass(ATTACKS.get("finetune"), Attack)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UserError, match=r"unknown defense 'bret' \(did you mean 'bert'\?\)"):
        DEFENSES.get("bret")


def test_duplicate_registration_is_an_error():
    registry: Registry = Registry("defense", "defenses", "register_defense", "sdm.none", lambda: Defense)

    @registry.register("twice")
    class First(Defense):
        def train(self, ctx):  # pragma: no cover - never trained
            return {}

    with pytest.raises(UserError, match="registered twice"):

        @registry.register("twice")
        class Second(Defense):
            def train(self, ctx):  # pragma: no cover
                return {}


def test_explicit_module_attr_must_be_a_plugin_class():
    with pytest.raises(UserError, match="not a subclass of Defense"):
        DEFENSES.get("harness.config:ExperimentConfig")
    with pytest.raises(UserError, match="cannot load"):
        DEFENSES.get("no_such_module:Thing")


def test_sdm_plugins_lists_descriptions():
    out = subprocess.run([*sdm_command(), "plugins"], capture_output=True, text=True, check=True).stdout
    assert "random-init" in out and "bert" in out and "finetune" in out
    assert "freshly initialised" in out
