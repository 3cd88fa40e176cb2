"""Conformance kit for defense and attack plugins: prove on the smoke config that a plugin fits the harness.

A plugin's test suite needs one call:

    from harness.testing import check_attack, check_defense

    def test_my_defense_conforms():
        check_defense("my-defense", params={"steps": 3}, invalid_params=[{"steps": -1}])

    def test_my_attack_conforms():
        check_attack("my-attack", invalid_params=[{"patience": 0}], trial={"steps": 5})

`check_defense` runs the checks below in order; each is usable alone and raises `ConformanceError` (an
`AssertionError`, so pytest reports a failed test) naming the defense and what it got wrong:

- `check_registered`: the name is listed by the registry (a built-in `@register_defense` module or an `sdm.defenses`
  entry point), loads as a `Defense` subclass and has a class docstring for `sdm plugins`;
- `check_params`: the given parameters validate, an unknown parameter and each of `invalid_params` are refused with
  a `UserError` (what `sdm run` turns into a one-line message and exit status 2);
- `check_training`: the defense trains through the real defense service (`harness.defend.train_defense`) on the
  smoke config's base model and data, writes safetensors weights with exactly the base encoder's tensor names,
  shapes and dtypes, all finite, that load into a freshly built encoder; a second training with the same seed in
  another cache gives bit-identical weights; a third call in the first cache is a cache hit with the same weights.

`check_attack` runs these, in order:

- `check_attack_registered`: as `check_registered`, for the `Attack` registry (`@register_attack`, `sdm.attacks`);
- `check_attack_params`: the given params and space overrides validate, an unknown parameter, an unknown search
  dimension and each of `invalid_params` are refused with a `UserError`, and the space converts to Ray Tune's;
- `check_steps_dimension`: a `steps` dimension, where the space has one, is an integer (what ASHA counts rungs in);
- `check_trial`: one trial (each dimension at its low end or first value, then `trial`'s values) on the smoke
  config's tiny model and data, harmful task, largest budget, returns finite validation and test accuracies in
  [0, 1]; a second run with the same seed returns the very same outcome.

The smoke config is `configs/smoke.yaml` of an sdm-bench checkout (a tiny BERT on the bundled stand-in corpus, so a
few training steps take seconds); pass `config=` to use another one.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from harness.config import DefenseSpec, ExperimentConfig

from harness.configfile import load_config
from harness.defend import train_defense
from harness.errors import UserError
from harness.models import build_encoder
from harness.plugins import Attack, AttackContext, AttackOutcome, CellData, Defense
from harness.registry import ATTACKS, DEFENSES, Registry
from harness.space import Choice, Fixed, IntRange, LogUniform, Uniform

SMOKE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
UNKNOWN_PARAM = "no_such_parameter_conformance"


class ConformanceError(AssertionError):
    """A plugin does not meet the harness's contract."""


def check_defense(
    name: str,
    params: dict[str, Any] | None = None,
    invalid_params: Iterable[dict[str, Any]] = (),
    config: str | Path = SMOKE_CONFIG,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """All checks, in order; the defended weights they trained."""
    cls = check_registered(name)
    check_params(cls, params or {}, invalid_params)
    return check_training(name, params or {}, config, seed)


def check_registered(name: str) -> type[Defense]:
    return _registered(DEFENSES, name, "@register_defense in a module of defenses/", "sdm.defenses")


def _registered(registry: Registry, name: str, decorator: str, group: str) -> type:
    kind = registry.kind
    entry = registry.entries().get(name)
    if entry is None:
        raise ConformanceError(
            f"{kind} '{name}' is not registered (registered: {', '.join(registry.names())}): decorate the class "
            f"with {decorator}, or declare it in the '{group}' entry-point group"
        )
    try:
        cls = registry.get(name)
    except UserError as exc:
        raise ConformanceError(f"{kind} '{name}' is registered as {entry.target} but does not load: {exc}") from None
    if entry.description == "(no description)":
        raise ConformanceError(
            f"{kind} '{name}' ({entry.target}) has no class docstring: `sdm plugins` shows its first line"
        )
    return cls


def check_params(
    cls: type[Defense], params: dict[str, Any], invalid_params: Iterable[dict[str, Any]] = ()
) -> Defense:
    try:
        defense = cls.from_params(params, "conformance")
    except UserError as exc:
        raise ConformanceError(f"defense '{cls.name}' refuses the params {params}: {exc}") from None
    _expect_refusal("defense", cls.name, lambda: cls.from_params({**params, UNKNOWN_PARAM: 1}, "conformance"),
                    "an unknown parameter (Params must forbid extra fields)")
    for bad in invalid_params:
        _expect_refusal("defense", cls.name, lambda: cls.from_params({**params, **bad}, "conformance"),
                        f"the invalid params {bad}")
    return defense


def _expect_refusal(kind: str, name: str, build: Callable[[], Any], what: str) -> None:
    try:
        build()
    except UserError:
        return
    raise ConformanceError(f"{kind} '{name}' accepts {what}: bad input must fail as a UserError before it runs")


def check_training(
    name: str, params: dict[str, Any], config: str | Path = SMOKE_CONFIG, seed: int = 0
) -> dict[str, torch.Tensor]:
    cfg = _config(config)
    spec = DefenseSpec(name=name, params=params)
    train, fingerprint = _training_data(cfg)
    with tempfile.TemporaryDirectory(prefix="sdm-conformance-") as tmp:
        first_cache, second_cache = Path(tmp) / "first", Path(tmp) / "second"
        first = train_defense(cfg, spec, train, fingerprint, seed, cache=first_cache)
        state = _check_weights(name, first.path, cfg)
        second = train_defense(cfg, spec, train, fingerprint, seed, cache=second_cache)
        if second.fingerprint != first.fingerprint:
            differ = _differing(load_file(str(first.path)), load_file(str(second.path)))
            raise ConformanceError(
                f"defense '{name}' is not deterministic: two trainings with seed {seed} gave different weights "
                f"({', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''}); draw all randomness from "
                "generators seeded by ctx.seed"
            )
        again = train_defense(cfg, spec, train, fingerprint, seed, cache=first_cache)
        if not again.cached or again.fingerprint != first.fingerprint:
            raise ConformanceError(
                f"defense '{name}' was trained again instead of being found in the cache: its cache key must depend "
                "only on its params (no random or time-dependent defaults)"
            )
        return state


# -- attacks ----------------------------------------------------------------------------------------------------------
def check_attack(
    name: str,
    params: dict[str, Any] | None = None,
    invalid_params: Iterable[dict[str, Any]] = (),
    space: dict[str, Any] | None = None,
    trial: dict[str, Any] | None = None,
    config: str | Path = SMOKE_CONFIG,
    seed: int = 0,
) -> AttackOutcome:
    """All attack checks, in order; the outcome of the trial they ran."""
    cls = check_attack_registered(name)
    attack = check_attack_params(cls, params or {}, invalid_params, space or {})
    check_steps_dimension(attack)
    return check_trial(attack, trial or {}, config, seed)


def check_attack_registered(name: str) -> type[Attack]:
    return _registered(ATTACKS, name, "@register_attack in a module of attacks/", "sdm.attacks")


def check_attack_params(
    cls: type[Attack], params: dict[str, Any], invalid_params: Iterable[dict[str, Any]] = (),
    space: dict[str, Any] | None = None,
) -> Attack:
    from harness.space import to_tune

    space = space or {}
    try:
        attack = cls.from_spec(params, space, "conformance")
    except UserError as exc:
        raise ConformanceError(f"attack '{cls.name}' refuses the params {params} and space {space}: {exc}") from None
    _expect_refusal("attack", cls.name, lambda: cls.from_spec({**params, UNKNOWN_PARAM: 1}, space, "conformance"),
                    "an unknown parameter (Params must forbid extra fields)")
    _expect_refusal("attack", cls.name, lambda: cls.from_spec(params, {**space, UNKNOWN_PARAM: 1}, "conformance"),
                    "an unknown search dimension")
    for bad in invalid_params:
        _expect_refusal("attack", cls.name, lambda: cls.from_spec({**params, **bad}, space, "conformance"),
                        f"the invalid params {bad}")
    try:
        to_tune(attack.space)
    except Exception as exc:  # any failure to build the search's domains is the finding
        raise ConformanceError(f"attack '{cls.name}': its space does not convert to Ray Tune's: {exc}") from None
    return attack


def check_steps_dimension(attack: Attack) -> None:
    """A `steps` dimension must be an integer one: ASHA (`search.asha`) counts its rungs in it."""
    from harness.search import max_steps

    if "steps" not in attack.space:
        return
    try:
        max_steps(attack)
    except ValueError:
        raise ConformanceError(
            f"attack '{attack.name}': its 'steps' dimension is {attack.space['steps']!r}; ASHA needs an integer "
            "one (an int range, or a fixed or chosen integer)"
        ) from None


def first_config(attack: Attack, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """A configuration of the attack's space: each dimension at its low end or first value, then `values`."""
    config: dict[str, Any] = {}
    for key, dim in attack.space.items():
        if isinstance(dim, (LogUniform, Uniform, IntRange)):
            config[key] = dim.low
        elif isinstance(dim, Choice):
            config[key] = dim.values[0]
        elif isinstance(dim, Fixed):
            config[key] = dim.value
    return {**config, **(values or {})}


def check_trial(
    attack: Attack, values: dict[str, Any] | None = None, config: str | Path = SMOKE_CONFIG, seed: int = 0
) -> AttackOutcome:
    """One trial on the smoke config's tiny model, twice with the same seed: accuracies in [0, 1], the same outcome."""
    import torch

    cfg = _config(config)
    ctx = _attack_context(cfg, attack)
    trial = first_config(attack, values)
    outcomes = []
    for _ in range(2):
        torch.manual_seed(seed)  # as the search's workers do before every trial
        try:
            outcomes.append(attack.run(ctx, dict(trial), seed, True))
        except Exception as exc:
            raise ConformanceError(f"attack '{attack.name}' failed a trial with {trial}: {exc!r}") from exc
    first, second = outcomes
    if not isinstance(first, AttackOutcome):
        raise ConformanceError(f"attack '{attack.name}' returned {type(first).__name__}, not an AttackOutcome")
    for what, value in (("val_accuracy", first.val_accuracy), ("test_accuracy", first.test_accuracy)):
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:  # NaN fails the comparison too
            raise ConformanceError(
                f"attack '{attack.name}': {what} is {value!r} with {trial}; it must be a finite accuracy in [0, 1]"
                + (" (score_test=True asks for the test accuracy)" if value is None else "")
            )
    if first != second:
        raise ConformanceError(
            f"attack '{attack.name}' is not deterministic: two trials with seed {seed} and {trial} gave {first} and "
            f"{second}; draw all randomness from generators seeded by the trial's seed"
        )
    return first


def _attack_context(cfg: ExperimentConfig, attack: Attack) -> AttackContext:
    """The smoke cell: the tiny base encoder, the harmful task's largest budget sample, validation and test."""
    import torch

    from harness.training import Features, encode

    prepared = prepared_for(cfg)
    task = cfg.tasks.harmful
    budgets = prepared.budget_rows[(task, cfg.seeds[0])]
    data = CellData(prepared.attack_pool.subset(budgets[max(budgets)]), prepared.val, prepared.test, task,
                    cfg.data.labels[task])
    state = build_encoder(cfg.model).state_dict()
    features = None
    if attack.needs_features():
        from harness.classifier import Classifier

        model = Classifier(build_encoder(cfg.model), data.num_labels, cfg.model.pooling)
        features = Features(encode(model, data.train), encode(model, data.val), encode(model, data.test))
    return AttackContext(cfg.model, state, data, features, cfg.search.eval_every, torch.device("cpu"))


def _check_weights(name: str, path: Path, cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    try:
        state = load_file(str(path))
    except Exception as exc:  # any failure to read the file back is the finding
        raise ConformanceError(f"defense '{name}': its weights {path} do not load as safetensors: {exc}") from None
    encoder = build_encoder(cfg.model, pretrained=False)
    expected = encoder.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ConformanceError(
            f"defense '{name}' returned a state dict that is not the base encoder's: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]} (return the encoder's state_dict(), not the classifier's)"
        )
    for key, tensor in expected.items():
        got = state[key]
        if got.shape != tensor.shape or got.dtype != tensor.dtype:
            raise ConformanceError(
                f"defense '{name}': tensor {key} is {got.dtype} {tuple(got.shape)}, the base encoder's is "
                f"{tensor.dtype} {tuple(tensor.shape)}"
            )
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise ConformanceError(f"defense '{name}': tensor {key} has non-finite values")
    encoder.load_state_dict(state)  # what an attack does with the weights
    return state


def _differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not torch.equal(a[k], b[k]))


def _config(config: str | Path) -> ExperimentConfig:
    if not Path(config).exists():
        raise ConformanceError(
            f"config {config} not found: the kit trains on an sdm-bench checkout's configs/smoke.yaml by default; "
            "pass config= with a small config of your own"
        )
    return load_config(config)


_DATA: dict[str, Any] = {}


def prepared_for(cfg: ExperimentConfig) -> Any:
    """The config's `PreparedData` (pools, budget samples), prepared once per process."""
    from harness.data.prepare import prepare_data

    key = cfg.model_dump_json(include={"model", "data", "tasks", "budgets", "seeds"})
    if key not in _DATA:
        _DATA[key] = prepare_data(cfg)
    return _DATA[key]


def _training_data(cfg: ExperimentConfig) -> tuple[Any, str]:
    """The config's tokenised defense-training pool and data fingerprint."""
    prepared = prepared_for(cfg)
    return prepared.defense_train, prepared.fingerprint
