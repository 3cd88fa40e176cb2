"""The attack suite on a real tiny BERT: every attack learns an easy signal, adapts only what it says it adapts,
declares its space once (the paper's preset included), and refuses bad space values before anything runs."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from attacks.finetune import Finetune
from attacks.lora import Lora
from attacks.probe import Probe
from attacks.top_k import TopK
from harness.classifier import Classifier
from harness.config import ModelConfig
from harness.errors import UserError
from harness.models import build_encoder
from harness.plugins import AttackContext, CellData
from harness.registry import ATTACKS
from harness.space import Choice, Fixed, IntRange, LogUniform
from harness.tokenized import TokenizedSplit
from harness.training import Features, accuracy, encode, fit
from tests.conftest import sdm_command

TINY = ModelConfig(source="tiny", max_length=32)
ATTACK_NAMES = {"finetune", "probe", "top-k", "lora", "reinit-top", "benign-first"}


def easy_split(n: int, seed: int) -> TokenizedSplit:
    """Short texts of random tokens; the label is which of two cue tokens fills half of each text."""
    rng = np.random.default_rng(seed)
    rows, labels = [], rng.integers(0, 2, n)
    for label in labels:
        body = rng.integers(1000, 1500, 4).tolist() + [2000 if label else 3000] * 4
        rows.append([101, *rng.permutation(body).tolist(), 102])
    lengths = np.array([len(r) for r in rows])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return TokenizedSplit(np.concatenate(rows).astype(np.int32), offsets, {"y": labels.astype(np.int64)})


@pytest.fixture(scope="module")
def cell() -> tuple[dict[str, torch.Tensor], CellData, Features]:
    state = build_encoder(TINY).state_dict()
    data = CellData(easy_split(100, 1), easy_split(60, 2), easy_split(60, 3), "y", 2)
    frozen = Classifier(build_encoder(TINY), 2)
    features = Features(encode(frozen, data.train), encode(frozen, data.val), encode(frozen, data.test))
    return state, data, features


def context(cell, eval_every: int = 0) -> AttackContext:
    state, data, features = cell
    return AttackContext(TINY, state, data, features, eval_every, torch.device("cpu"))


def config(attack, **values) -> dict:
    """A full configuration: the space's first value of each dimension, then `values`."""
    base = {}
    for key, dim in attack.space.items():
        base[key] = dim.value if isinstance(dim, Fixed) else dim.values[0] if isinstance(dim, Choice) else dim.low
    return {**base, **values}


TRAINING = {"steps": 30, "batch_size": 16}


@pytest.mark.parametrize(
    "name, values",
    [
        ("finetune", {"mode": "full", "lr": 3e-3}),
        ("finetune", {"mode": "full", "lr": 0.05, "optimizer": "sgd", "schedule": "linear", "warmup_frac": 0.1}),
        ("finetune", {"mode": "probe", "lr": 3e-2}),
        ("probe", {"lr": 3e-2}),
        ("top-k", {"top_k": 1, "lr": 3e-3}),
        ("lora", {"rank": 4, "lr": 1e-2}),
    ],
)
def test_each_attack_learns_an_easy_signal(cell, name: str, values: dict):
    attack = ATTACKS.get(name).from_spec({}, {}, "test")
    ctx = context(cell)
    before = accuracy(ctx.classifier(0), cell[1].val, "y")
    outcome = attack.run(ctx, config(attack, **values, **TRAINING), seed=0, score_test=True)
    assert outcome.val_accuracy >= 0.9 and outcome.test_accuracy >= 0.9, outcome
    assert before <= 0.75  # the signal is learnt by the attack, not there from the start
    assert outcome.steps_run == TRAINING["steps"]


def test_probe_uses_the_cached_features_and_never_runs_the_encoder(cell):
    attack = Probe(Probe.Params())
    assert attack.needs_features()
    state, data, features = cell
    # Planted features: the label in the training rows' features, its opposite in the validation and test rows'. A
    # probe trained and scored on them is always wrong; one that ran the encoder would be right.
    def planted(split: TokenizedSplit, flip: bool) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.as_tensor(split.labels["y"] ^ flip), 32).float() * 5

    fake = Features(planted(data.train, False), planted(data.val, True), planted(data.test, True))
    ctx = AttackContext(TINY, state, data, fake, 0, torch.device("cpu"))
    outcome = attack.run(ctx, config(attack, lr=3e-2, **TRAINING), seed=0, score_test=True)
    assert outcome.val_accuracy == 0.0 and outcome.test_accuracy == 0.0


def test_top_k_adapts_only_the_last_layers_and_the_head(cell):
    attack = TopK(TopK.Params())
    ctx = context(cell)
    attack.run(ctx, config(attack, top_k=1, lr=3e-3, **TRAINING), seed=0, score_test=False)
    trained = ctx.classifier(0, load_encoder=False).encoder.state_dict()  # the worker's model, as the run left it
    original = cell[0]
    changed = {k for k in original if not torch.equal(trained[k], original[k])}
    assert changed and all(k.startswith("encoder.layer.1.") for k in changed), sorted(changed)


def test_lora_adapts_only_its_adapters_and_the_head(cell):
    attack = Lora(Lora.Params())
    ctx = context(cell)
    values = config(attack, rank=4, lr=1e-2, **TRAINING)
    model = attack.prepare(ctx.classifier(0), values, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, cell[1].train, "y", attack.setting(values), seed=0)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    adapters = {k for k in before if ".lora_" in k}
    assert {k for k in changed if not k.startswith("head.")} <= adapters
    assert any(".lora_B." in k for k in changed) and {"head.weight", "head.bias"} <= changed
    assert any("attention.self.query.base_layer" in k for k in before)  # adapters sit on the attention projections
    # Once the trial restores it, the worker's cached model is the plain defended encoder the next trial starts from.
    attack.restore(model)
    cached = ctx.classifier(1, load_encoder=False).encoder.state_dict()
    assert set(cached) == set(cell[0]) and all(torch.equal(cached[k], cell[0][k]) for k in cached)


def test_paper_preset_is_the_reference_attacker():
    space = Finetune(Finetune.Params(preset="paper")).space
    assert space["lr"] == LogUniform(low=1e-5, high=1e-2)
    assert space["steps"] == IntRange(low=100, high=1000)
    assert space["batch_size"] == Choice(values=[12, 24, 48])
    assert space["mode"] == Choice(values=["probe", "full"])
    assert space["optimizer"] == Fixed(value="adam") and space["schedule"] == Fixed(value="constant")
    assert space["warmup_frac"] == Fixed(value=0.0) and space["weight_decay"] == Fixed(value=0.0)
    default = Finetune(Finetune.Params()).space
    assert default["optimizer"] == Fixed(value="adamw") and default["schedule"] == Choice(values=["constant", "linear"])


def test_attacks_declare_what_adapts():
    assert not TopK(TopK.Params()).needs_features() and not Lora(Lora.Params()).needs_features()
    assert Finetune(Finetune.Params()).needs_features()
    assert not Finetune.from_spec({}, {"mode": "full"}, "test").needs_features()
    assert TopK(TopK.Params()).setting(config(TopK(TopK.Params()), top_k=2)).top_k == 2


@pytest.mark.parametrize(
    "name, space, message",
    [
        ("finetune", {"optimizer": "sgdd"}, "space.optimizer: 'sgdd' is not valid"),
        ("finetune", {"mode": {"type": "choice", "values": ["full", "lora"]}}, "space.mode: 'lora' is not valid"),
        ("probe", {"steps": {"type": "int", "low": 0, "high": 10}}, "space.steps: 0 is not valid"),
        ("top-k", {"top_k": 0}, "space.top_k: 0 is not valid"),
        ("lora", {"rank": {"type": "choice", "values": [8, -1]}}, "space.rank: -1 is not valid"),
        ("lora", {"schedule": "cosine"}, "space.schedule: 'cosine' is not valid"),
    ],
)
def test_bad_space_values_fail_before_any_trial(name: str, space: dict, message: str):
    with pytest.raises(UserError) as error:
        ATTACKS.get(name).from_spec({}, space, "cfg.yaml")
    assert str(error.value).startswith(f"cfg.yaml: attack '{name}' {message} (")


def test_sdm_plugins_lists_the_built_in_attacks():
    out = subprocess.run([*sdm_command(), "plugins"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    attacks = out.stdout.split("attacks:")[1].split()
    assert ATTACK_NAMES <= set(attacks)
    assert ATTACK_NAMES <= set(ATTACKS.names())


def test_lora_adapts_its_adapters_in_the_shared_step_and_mlac_does_not_simulate_it():
    from pydantic import ValidationError

    from defenses.mlac import MlacParams
    from harness.attack_step import adapted_parameter_names

    names = ["encoder.encoder.layer.0.attention.self.query.base_layer.weight",
             "encoder.encoder.layer.0.attention.self.query.lora_A.default.weight",
             "encoder.encoder.layer.0.attention.self.query.lora_B.default.weight", "head.weight", "head.bias"]
    assert adapted_parameter_names(names, "lora") == names[1:]
    with pytest.raises(ValueError, match="no LoRA adapters"):
        adapted_parameter_names([names[0], "head.weight"], "lora")
    with pytest.raises(ValidationError):
        MlacParams(inner_adapt=("lora",))
