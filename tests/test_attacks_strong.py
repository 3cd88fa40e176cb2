"""The stronger attacks: `reinit-top` (redraw the top encoder layers, then fine-tune) and `benign-first` (fine-tune on
the attacker's own desired-task rows, then on the harmful budget). Conformance, what each changes and trains, where
the benign rows come from, and real `sdm run`s of the smoke config with each."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import attacks.benign_first as benign_first_module
from attacks.benign_first import BenignFirst
from attacks.reinit_top import ReinitTop, reinitialise_top_layers
from harness.config import ModelConfig
from harness.configfile import load_config
from harness.errors import UserError
from harness.models import build_encoder
from harness.plugins import AttackContext, CellData, desired_rows
from harness.registry import ATTACKS
from harness.space import Choice, Fixed
from harness.testing import check_attack
from harness.tokenized import TokenizedSplit
from harness.training import fit
from tests.conftest import SMOKE, sdm_command

TINY = ModelConfig(source="tiny", max_length=32)  # 2 layers
TRAINING = {"steps": 30, "batch_size": 16}
SPY_DIR = "SDM_TEST_BENIGN_SPY"


def easy_split(n: int, seed: int) -> TokenizedSplit:
    """Random-token texts with two labels: `y`, which of two cue tokens fills half of the text (easy), and `d`, a
    three-class label carried by a third set of cue tokens."""
    rng = np.random.default_rng(seed)
    rows, y, d = [], rng.integers(0, 2, n), rng.integers(0, 3, n)
    for a, b in zip(y, d):
        body = rng.integers(1000, 1500, 4).tolist() + [2000 if a else 3000] * 4 + [4000 + int(b)] * 2
        rows.append([101, *rng.permutation(body).tolist(), 102])
    lengths = np.array([len(r) for r in rows])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return TokenizedSplit(np.concatenate(rows).astype(np.int32), offsets,
                          {"y": y.astype(np.int64), "d": d.astype(np.int64)})


def cell_data(benign: bool = True) -> CellData:
    data = CellData(easy_split(100, 1), easy_split(60, 2), easy_split(60, 3), "y", 2)
    if benign:
        data.benign, data.benign_label, data.benign_num_labels = desired_rows(easy_split(400, 4), "d"), "d", 3
    return data


def context(state: dict[str, torch.Tensor], data: CellData, model: ModelConfig = TINY) -> AttackContext:
    return AttackContext(model, state, data, None, 0, torch.device("cpu"))


def config(attack, **values) -> dict:
    """A full configuration: the space's first value of each dimension, then `values`."""
    base = {}
    for key, dim in attack.space.items():
        base[key] = dim.value if isinstance(dim, Fixed) else dim.values[0] if isinstance(dim, Choice) else dim.low
    return {**base, **values}


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return build_encoder(TINY).state_dict()


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of a module's state (a state_dict aliases the live, cached weights)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed_keys(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


# -- conformance ------------------------------------------------------------------------------------------------------
def test_reinit_top_conforms():
    outcome = check_attack("reinit-top", invalid_params=[{"patience": 0}, {"preset": "nope"}],
                           trial={"steps": 5, "reinit_layers": 1, "mode": "full"})
    assert outcome.steps_run >= 1


def test_benign_first_conforms():
    # The kit's cell has no benign rows (it builds CellData itself): this trial is the harmful phase alone; the real
    # smoke trial with the attacker's desired-task rows is test_benign_first_smoke_trial_on_the_attackers_pool.
    check_attack("benign-first", invalid_params=[{"patience": 0}],
                 trial={"steps": 5, "benign_steps": 5, "benign_examples": 40})


@pytest.mark.parametrize(
    "name, space, message",
    [
        ("reinit-top", {"reinit_layers": 0}, "space.reinit_layers: 0 is not valid"),
        ("reinit-top", {"mode": {"type": "choice", "values": ["full", "probe"]}}, "space.mode: 'probe' is not valid"),
        ("benign-first", {"benign_steps": 0}, "space.benign_steps: 0 is not valid"),
        ("benign-first", {"benign_examples": {"type": "int", "low": 0, "high": 10}},
         "space.benign_examples: 0 is not valid"),
        ("benign-first", {"benign_lr": -1.0}, "space.benign_lr: -1.0 is not valid"),
    ],
)
def test_bad_space_values_fail_before_any_trial(name: str, space: dict, message: str):
    with pytest.raises(UserError) as error:
        ATTACKS.get(name).from_spec({}, space, "cfg.yaml")
    assert str(error.value).startswith(f"cfg.yaml: attack '{name}' {message} (")


def test_spaces_are_declared_once_with_an_integer_steps_dimension():
    reinit = ReinitTop(ReinitTop.Params()).space
    assert reinit["reinit_layers"].low == 1 and reinit["mode"] == Choice(values=["full", "top"])
    benign = BenignFirst(BenignFirst.Params()).space
    assert {"benign_steps", "benign_lr", "benign_examples"} <= set(benign)
    for space in (reinit, benign):
        assert space["steps"].type == "int" and {"lr", "batch_size", "optimizer", "schedule"} <= set(space)
    assert BenignFirst(BenignFirst.Params()).needs_benign() and not ReinitTop(ReinitTop.Params()).needs_benign()
    assert not BenignFirst(BenignFirst.Params()).needs_features() and not ReinitTop(ReinitTop.Params()).needs_features()
    assert not ATTACKS.get("finetune").from_spec({}, {}, "t").needs_benign()


def test_sdm_plugins_lists_both_with_a_description():
    out = subprocess.run([*sdm_command(), "plugins"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    listed = out.stdout.split("attacks:")[1]
    lines = {line.split()[0]: line for line in listed.splitlines() if line.strip()}
    for name in ("reinit-top", "benign-first"):
        assert name in lines and len(lines[name].split()) > 3, listed


# -- reinit-top -------------------------------------------------------------------------------------------------------
def test_reinit_redraws_the_top_layers_and_nothing_below(state):
    attack = ReinitTop(ReinitTop.Params())
    ctx = context(state, cell_data(benign=False))
    before = snapshot(ctx.classifier(0).encoder)
    after = snapshot(attack.prepare(ctx.classifier(0), config(attack, reinit_layers=1), seed=7).encoder)
    changed = changed_keys(before, after)
    linear = {k for k in before if k.startswith("encoder.layer.1.") and k.endswith(".weight") and before[k].dim() == 2}
    assert linear and linear <= changed  # every weight matrix of the top layer is redrawn
    assert all(k.startswith("encoder.layer.1.") for k in changed), sorted(changed)
    for k in linear:  # drawn the way BERT initialises: normal(0, initializer_range = 0.02)
        assert abs(float(after[k].std()) - 0.02) < 0.004, k
    # the same seed redraws the same weights; another seed others
    again = snapshot(attack.prepare(ctx.classifier(0), config(attack, reinit_layers=1), seed=7).encoder)
    assert not changed_keys(after, again)
    other = snapshot(attack.prepare(ctx.classifier(0), config(attack, reinit_layers=1), seed=8).encoder)
    assert linear <= changed_keys(after, other)


def test_reinit_of_a_pretrained_encoder_redraws_its_loaded_weights():
    """Loaded weights carry transformers' 'already initialised' marks, which `_init_weights` would obey."""
    encoder = build_encoder(ModelConfig(source="embedded", max_length=32, num_hidden_layers=2))
    before = snapshot(encoder)
    assert reinitialise_top_layers(encoder, 1, seed=0) == [1]
    after = encoder.state_dict()
    changed = changed_keys(before, after)
    assert all(k.startswith("encoder.layer.1.") for k in changed)
    top = [k for k in before if k.startswith("encoder.layer.1.")]
    assert set(top) <= changed  # pretrained biases and LayerNorms differ from their initial values too
    ln = after["encoder.layer.1.output.LayerNorm.weight"]
    assert torch.equal(ln, torch.ones_like(ln)) and float(after["encoder.layer.1.output.dense.bias"].abs().max()) == 0


def test_reinit_layers_beyond_the_depth_redraw_every_layer_but_not_the_embeddings(state):
    encoder = build_encoder(TINY)
    encoder.load_state_dict(state)
    assert reinitialise_top_layers(encoder, 5, seed=0) == [0, 1]
    changed = changed_keys(state, encoder.state_dict())
    assert {k.split(".")[2] for k in changed if k.startswith("encoder.layer.")} == {"0", "1"}
    assert not any(k.startswith(("embeddings.", "pooler.")) for k in changed)


def test_reinit_top_mode_top_trains_only_the_redrawn_layers(state):
    attack = ReinitTop(ReinitTop.Params())
    ctx = context(state, cell_data(benign=False))
    attack.run(ctx, config(attack, reinit_layers=1, mode="top", lr=3e-3, **TRAINING), seed=0, score_test=False)
    trained = ctx.classifier(0, load_encoder=False).encoder.state_dict()  # the worker's model as the run left it
    changed = changed_keys(state, trained)
    assert changed and all(k.startswith("encoder.layer.1.") for k in changed), sorted(changed)


def test_reinit_top_survives_a_block_hidden_in_the_last_layer(state):
    """A 'defense' that collapses the top layer's output (its LayerNorm zeroed: every text gets the same features)
    leaves a probe at chance; re-initialising that layer and fine-tuning learns the easy signal."""
    blocked = dict(state)
    for name in ("encoder.layer.1.output.LayerNorm.weight", "encoder.layer.1.output.LayerNorm.bias"):
        blocked[name] = torch.zeros_like(state[name])
    data = cell_data(benign=False)
    probe = ATTACKS.get("probe").from_spec({}, {}, "t")
    probed = probe.run(context(blocked, data), config(probe, lr=3e-2, **TRAINING), seed=0, score_test=True)
    assert probed.test_accuracy <= 0.7, probed
    attack = ReinitTop(ReinitTop.Params())
    outcome = attack.run(context(blocked, data), config(attack, reinit_layers=1, mode="full", lr=3e-3, **TRAINING),
                         seed=0, score_test=True)
    assert outcome.val_accuracy >= 0.9 and outcome.test_accuracy >= 0.9, outcome


# -- benign-first -----------------------------------------------------------------------------------------------------
def test_benign_first_trains_on_the_desired_task_first_from_the_benign_rows(state, monkeypatch):
    calls = []

    def spy_fit(model, train, label, setting, **kwargs):  # the real fit, recorded
        calls.append((label, train, setting, model.head.out_features, kwargs.get("val")))
        return fit(model, train, label, setting, **kwargs)

    monkeypatch.setattr(benign_first_module, "fit", spy_fit)
    attack = BenignFirst(BenignFirst.Params())
    data = cell_data()
    values = config(attack, benign_steps=7, benign_lr=2e-4, benign_examples=50, lr=3e-3, **TRAINING)
    outcome = attack.run(context(state, data), values, seed=3, score_test=True)
    assert [c[0] for c in calls] == ["d", "y"]  # desired task first, then the harmful budget
    (_, benign, benign_setting, benign_head, benign_val), (_, harmful, harmful_setting, harmful_head, _) = calls
    assert benign_setting.steps == 7 and benign_setting.lr == 2e-4 and benign_setting.adapt == "full"
    assert benign_head == 3 and harmful_head == 2 and benign_val is None  # no selection on the benign phase
    assert set(benign.labels) == {"d"}  # the benign rows carry no harmful label
    assert len(benign) == 50 and _texts(benign) <= _texts(data.benign)  # drawn from the benign rows, no others
    assert harmful is data.train and harmful_setting.steps == TRAINING["steps"] and harmful_setting.lr == 3e-3
    assert outcome.steps_run == TRAINING["steps"]  # harmful steps: what ASHA counts
    # the sample is a function of the trial's seed
    assert _texts(BenignFirst.benign_sample(data, 50, 3)) == _texts(benign)
    assert _texts(BenignFirst.benign_sample(data, 50, 4)) != _texts(benign)
    assert len(BenignFirst.benign_sample(data, 10_000, 3)) == len(data.benign)  # all rows when it asks for more


def _texts(split: TokenizedSplit) -> set[tuple[int, ...]]:
    return {tuple(split.ids[split.offsets[i]:split.offsets[i + 1]].tolist()) for i in range(len(split))}


def test_benign_phase_changes_the_encoder_the_harmful_phase_starts_from(state):
    attack = BenignFirst(BenignFirst.Params())
    data = cell_data()
    ctx = context(state, data)
    model = ctx.classifier(0)
    head = snapshot(model.head)
    values = config(attack, benign_steps=20, benign_lr=1e-3, benign_examples=200, **TRAINING)
    assert attack.benign_phase(model, ctx, values, seed=0)
    assert changed_keys(state, model.encoder.state_dict())  # the encoder moved on the desired task
    assert not changed_keys(head, model.head.state_dict())  # the harmful head is untouched until its own phase
    # without benign rows (a desired-task cell) there is no benign phase: the attack is plain full fine-tuning
    bare = context(state, cell_data(benign=False))
    assert not attack.benign_phase(bare.classifier(0), bare, values, seed=0)


def test_desired_rows_are_the_attackers_pool_with_the_desired_label_only():
    from harness.testing import prepared_for

    prepared = prepared_for(load_config(SMOKE))
    benign = desired_rows(prepared.attack_pool, "profession")
    assert set(benign.labels) == {"profession"} and set(prepared.attack_pool.labels) >= {"profession", "gender"}
    # the very rows of the attacker's pool (carved from another split than the defense's, disjoint from it by text:
    # harness/data/prepare.py, tests/test_protocol.py), in the pool's order
    assert benign.ids is prepared.attack_pool.ids and benign.offsets is prepared.attack_pool.offsets
    assert prepared.pools["attack"].split != prepared.pools["defense"].split
    with pytest.raises(KeyError, match="no label column"):
        desired_rows(prepared.attack_pool.subset([0]), "nope")


def test_benign_first_smoke_trial_on_the_attackers_pool():
    """One real trial on the smoke cell (tiny BERT, harmful task, largest budget) with the attacker's desired-task
    rows, as the runner hands them: finite accuracies, the same outcome twice, and the benign phase matters."""
    from harness.testing import prepared_for

    cfg = load_config(SMOKE)
    prepared = prepared_for(cfg)
    task, desired = cfg.tasks.harmful, cfg.tasks.desired
    budgets = prepared.budget_rows[(task, cfg.seeds[0])]
    data = CellData(prepared.attack_pool.subset(budgets[max(budgets)]), prepared.val, prepared.test, task,
                    cfg.data.labels[task], desired_rows(prepared.attack_pool, desired), desired,
                    cfg.data.labels[desired])
    state = build_encoder(cfg.model).state_dict()
    attack = BenignFirst(BenignFirst.Params())
    values = config(attack, steps=10, benign_steps=20, benign_lr=1e-3, benign_examples=100)
    outcomes = []
    for _ in range(2):
        torch.manual_seed(0)
        outcomes.append(attack.run(context(state, data, cfg.model), dict(values), 0, True))
    assert outcomes[0] == outcomes[1]
    assert 0.0 <= outcomes[0].val_accuracy <= 1.0 and 0.0 <= outcomes[0].test_accuracy <= 1.0
    # the same trial without its benign phase trains another model
    plain = CellData(data.train, data.val, data.test, task, data.num_labels)
    torch.manual_seed(0)
    model_after = _trained_encoder(attack, context(state, data, cfg.model), values)
    model_plain = _trained_encoder(attack, context(state, plain, cfg.model), values)
    assert changed_keys(model_after, model_plain)


def _trained_encoder(attack, ctx, values) -> dict[str, torch.Tensor]:
    attack.run(ctx, dict(values), 0, False)
    return snapshot(ctx.classifier(0, load_encoder=False).encoder)


# -- end to end -------------------------------------------------------------------------------------------------------
class BenignSpy(BenignFirst):
    """Test only: benign-first that records, per cell task, the benign rows the runner handed it."""

    def run(self, ctx, config, seed, score_test):
        data = ctx.data
        record = {"task": data.label, "benign": None}
        if data.benign is not None:
            record["benign"] = {"rows": len(data.benign), "labels": sorted(data.benign.labels),
                                "label": data.benign_label, "num_labels": data.benign_num_labels,
                                "ids": data.benign.ids.tolist(), "offsets": data.benign.offsets.tolist()}
        Path(os.environ[SPY_DIR], f"{data.label}.json").write_text(json.dumps(record))
        return super().run(ctx, config, seed, score_test)


def sdm(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*sdm_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


SHORT = {"reinit-top": "{steps: {type: int, low: 5, high: 15}, batch_size: 16, "
                       "reinit_layers: {type: int, low: 1, high: 2}}",
         "benign-first": "{steps: {type: int, low: 5, high: 15}, batch_size: 16, benign_steps: {type: int, low: 5, "
                         "high: 15}, benign_examples: {type: int, low: 50, high: 200}}"}


def test_sdm_run_smoke_with_each_new_attack(tmp_path: Path):
    from harness.results import read_cells, read_trials

    attacks = ", ".join(f"{{name: {name}, space: {space}}}" for name, space in SHORT.items())
    out = tmp_path / "run"
    result = sdm("run", str(SMOKE), "--out", str(out), "--set", f"attacks=[{attacks}]",
                 "--set", "tasks.attacked=[harmful]", "--set", "budgets=[30]", "--set", "search.num_samples=2",
                 "--set", "search.reruns=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    cells = read_cells(out).to_pylist()
    assert {(c["defense"], c["attack"]) for c in cells} == {
        (d, a) for d in ("random-init", "bert") for a in ("reinit-top", "benign-first")}
    assert {c["status"] for c in cells} == {"ok"}, [(c["cell_id"], c["status"]) for c in cells]
    for trial in read_trials(out).to_pylist():
        params = json.loads(trial["hyperparameters"])
        assert 5 <= params["steps"] <= 15
        if trial["attack"] == "reinit-top":
            assert params["reinit_layers"] in (1, 2) and params["mode"] in ("full", "top")
        else:
            assert 5 <= params["benign_steps"] <= 15 and 50 <= params["benign_examples"] <= 200


def test_sdm_run_hands_benign_first_the_attackers_pool_on_harmful_cells_only(tmp_path: Path):
    """Through the real runner: a harmful cell gets every row of the attacker's pool with the desired label only
    (no defense-training row), a desired-task cell gets none."""
    from harness.testing import prepared_for

    spy = tmp_path / "spy"
    spy.mkdir()
    out = tmp_path / "run"
    attack = f"{{name: 'tests.test_attacks_strong:BenignSpy', label: benign-spy, space: {SHORT['benign-first']}}}"
    result = sdm("run", str(SMOKE), "--out", str(out), "--set", f"attacks=[{attack}]",
                 "--set", "defenses=[{name: random-init}]", "--set", "tasks.attacked=[harmful, desired]",
                 "--set", "budgets=[30]", "--set", "search.num_samples=1", "--set", "search.reruns=1",
                 cwd=tmp_path, env={SPY_DIR: str(spy), "PYTHONPATH": str(SMOKE.parents[1])})
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = load_config(SMOKE)
    harmful = json.loads((spy / f"{cfg.tasks.harmful}.json").read_text())
    desired = json.loads((spy / f"{cfg.tasks.desired}.json").read_text())
    assert desired["benign"] is None
    got = harmful["benign"]
    assert got["labels"] == [cfg.tasks.desired] and got["label"] == cfg.tasks.desired
    assert got["num_labels"] == cfg.data.labels[cfg.tasks.desired]
    pool = prepared_for(cfg).attack_pool
    assert got["ids"] == pool.ids.tolist() and got["offsets"] == pool.offsets.tolist()
