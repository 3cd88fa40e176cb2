"""Conformance kit for defense plugins: prove on the smoke config that a defense fits the harness.

A plugin's test suite needs one call:

    from harness.testing import check_defense

    def test_my_defense_conforms():
        check_defense("my-defense", params={"steps": 3}, invalid_params=[{"steps": -1}])

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

The smoke config is `configs/smoke.yaml` of an sdm-bench checkout (a tiny BERT on the bundled stand-in corpus, so a
few training steps take seconds); pass `config=` to use another one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from harness.config import DefenseSpec, ExperimentConfig, load_config
from harness.defend import train_defense
from harness.errors import UserError
from harness.models import build_encoder
from harness.plugins import Defense
from harness.registry import DEFENSES

SMOKE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
UNKNOWN_PARAM = "no_such_parameter_conformance"


class ConformanceError(AssertionError):
    """A defense plugin does not meet the harness's contract."""


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
    entry = DEFENSES.entries().get(name)
    if entry is None:
        raise ConformanceError(
            f"defense '{name}' is not registered (registered: {', '.join(DEFENSES.names())}): decorate the class "
            "with @register_defense in a module of defenses/, or declare it in the 'sdm.defenses' entry-point group"
        )
    try:
        cls = DEFENSES.get(name)
    except UserError as exc:
        raise ConformanceError(f"defense '{name}' is registered as {entry.target} but does not load: {exc}") from None
    if entry.description == "(no description)":
        raise ConformanceError(
            f"defense '{name}' ({entry.target}) has no class docstring: `sdm plugins` shows its first line"
        )
    return cls


def check_params(
    cls: type[Defense], params: dict[str, Any], invalid_params: Iterable[dict[str, Any]] = ()
) -> Defense:
    try:
        defense = cls.from_params(params, "conformance")
    except UserError as exc:
        raise ConformanceError(f"defense '{cls.name}' refuses the params {params}: {exc}") from None
    _expect_refusal(cls, {**params, UNKNOWN_PARAM: 1}, "an unknown parameter (Params must forbid extra fields)")
    for bad in invalid_params:
        _expect_refusal(cls, {**params, **bad}, f"the invalid params {bad}")
    return defense


def _expect_refusal(cls: type[Defense], raw: dict[str, Any], what: str) -> None:
    try:
        cls.from_params(raw, "conformance")
    except UserError:
        return
    raise ConformanceError(f"defense '{cls.name}' accepts {what}: bad input must fail as a UserError before training")


def check_training(
    name: str, params: dict[str, Any], config: str | Path = SMOKE_CONFIG, seed: int = 0
) -> dict[str, torch.Tensor]:
    cfg = _config(config)
    spec = DefenseSpec(name=name, params=params)
    train, fingerprint = _training_data(cfg)
    with tempfile.TemporaryDirectory(prefix="sdm-conformance-") as tmp:
        first_cache, second_cache = Path(tmp) / "first", Path(tmp) / "second"
        with _cache_at(first_cache):
            first = train_defense(cfg, spec, train, fingerprint, seed)
        state = _check_weights(name, first.path, cfg)
        with _cache_at(second_cache):
            second = train_defense(cfg, spec, train, fingerprint, seed)
        if second.fingerprint != first.fingerprint:
            differ = _differing(load_file(str(first.path)), load_file(str(second.path)))
            raise ConformanceError(
                f"defense '{name}' is not deterministic: two trainings with seed {seed} gave different weights "
                f"({', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''}); draw all randomness from "
                "generators seeded by ctx.seed"
            )
        with _cache_at(first_cache):
            again = train_defense(cfg, spec, train, fingerprint, seed)
        if not again.cached or again.fingerprint != first.fingerprint:
            raise ConformanceError(
                f"defense '{name}' was trained again instead of being found in the cache: its cache key must depend "
                "only on its params (no random or time-dependent defaults)"
            )
        return state


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


_DATA: dict[str, tuple[Any, str]] = {}


def _training_data(cfg: ExperimentConfig) -> tuple[Any, str]:
    """The config's tokenised defense-training pool and data fingerprint, prepared once per process."""
    from harness.data.prepare import prepare_data

    key = cfg.model_dump_json(include={"model", "data", "tasks", "budgets", "seeds"})
    if key not in _DATA:
        prepared = prepare_data(cfg)
        _DATA[key] = (prepared.defense_train, prepared.fingerprint)
    return _DATA[key]


@contextmanager
def _cache_at(folder: Path) -> Iterator[None]:
    """Point the defense cache (SDM_CACHE_DIR, which `harness.defend.cache_root` reads first) at `folder`."""
    previous = os.environ.get("SDM_CACHE_DIR")
    os.environ["SDM_CACHE_DIR"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["SDM_CACHE_DIR"]
        else:
            os.environ["SDM_CACHE_DIR"] = previous
