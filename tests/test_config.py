from __future__ import annotations

from pathlib import Path

import pytest

from harness.configfile import load_config
from harness.errors import UserError
from tests.conftest import SMOKE


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


MINIMAL = """
experiment: t
budgets: [20, 50]
defenses: [{name: random-init}]
attacks: [{name: finetune}]
"""


def test_smoke_config_loads_with_defaults():
    cfg = load_config(SMOKE)
    assert cfg.experiment == "smoke"
    assert cfg.model.source == "tiny"
    assert cfg.search.selection == "heldout"
    assert cfg.run_dir() == Path("results/runs/smoke")


def test_overrides_reach_nested_fields_and_lists(tmp_path: Path):
    cfg = load_config(
        write(tmp_path, MINIMAL),
        ["search.num_samples=7", "budgets=[5, 10]", "defenses.0.params={steps: 3}", "model.max_length=64"],
    )
    assert cfg.search.num_samples == 7
    assert cfg.budgets == [5, 10]
    assert cfg.defenses[0].params == {"steps": 3}
    assert cfg.model.max_length == 64


def test_misspelled_key_names_the_closest_field(tmp_path: Path):
    with pytest.raises(UserError, match=r"unknown field 'search.num_sample' \(did you mean 'num_samples'\?\)"):
        load_config(write(tmp_path, MINIMAL + "search: {num_sample: 3}\n"))


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("search: {num_samples: many}\n", r"search.num_samples: .*integer.*'many'"),
        ("seeds: [0, 0]\n", r"seeds: .*repeat"),
        ("tasks: {harmful: gendr}\n", r"tasks.harmful: 'gendr' is not a label column \(did you mean 'gender'\?\)"),
        ("model: {max_length: 0}\n", r"model.max_length"),
    ],
)
def test_wrong_values_are_one_line_errors(tmp_path: Path, extra: str, expected: str):
    with pytest.raises(UserError, match=expected) as info:
        load_config(write(tmp_path, MINIMAL + extra))
    assert "\n" not in str(info.value)
    assert str(tmp_path / "exp.yaml") in str(info.value)


def test_non_positive_budget_is_rejected(tmp_path: Path):
    with pytest.raises(UserError, match=r"budgets.*budget -5 must be a positive"):
        load_config(write(tmp_path, MINIMAL.replace("[20, 50]", "[-5, 50]")))


def test_missing_file_and_directory_and_bad_yaml(tmp_path: Path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="is a directory"):
        load_config(tmp_path)
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_config(write(tmp_path, "experiment: [unclosed\n"))


def test_bad_override_syntax(tmp_path: Path):
    with pytest.raises(UserError, match="expected key.path=value"):
        load_config(write(tmp_path, MINIMAL), ["search.num_samples"])


def test_content_hash_ignores_output_location(tmp_path: Path):
    path = write(tmp_path, MINIMAL)
    assert load_config(path, ["output=a"]).content_hash() == load_config(path, ["output=b"]).content_hash()
    assert load_config(path).content_hash() != load_config(path, ["budgets=[20]"]).content_hash()


def test_per_task_and_per_attack_budgets_shape_the_cell_plan(tmp_path: Path):
    from harness.plan import plan_cells

    cfg = load_config(SMOKE, ["desired_budgets=[60]", "attacks.0.budgets=[30, 60]"])
    cells = plan_cells(cfg, tmp_path / "run").cells
    budgets = {(c.task_role, c.budget) for c in cells}
    assert budgets == {("harmful", 30), ("harmful", 60), ("desired", 60)}
    assert len(cells) == 2 * 3  # 2 defenses x (2 harmful budgets + 1 desired), one seed

    cfg = load_config(SMOKE, ["attacks.0.budgets=[60]"])
    assert {c.budget for c in plan_cells(cfg, tmp_path / "run").cells} == {60}


def test_attack_tasks_restrict_its_cells_and_leave_old_hashes_alone(tmp_path: Path):
    from harness.plan import plan_cells

    cfg = load_config(SMOKE, ["attacks.0.tasks=[harmful]"])
    assert {c.task_role for c in plan_cells(cfg, tmp_path / "run").cells} == {"harmful"}
    everywhere = load_config(SMOKE)
    assert {c.task_role for c in plan_cells(everywhere, tmp_path / "run").cells} == {"harmful", "desired"}
    assert "tasks" not in everywhere.model_dump()["attacks"][0]  # unset: the hash of configs written before it
    assert cfg.content_hash() != everywhere.content_hash()
    with pytest.raises(UserError, match=r"'finetune' tasks \['desired'\] are not in tasks.attacked"):
        load_config(SMOKE, ["tasks.attacked=[harmful]", "attacks.0.tasks=[desired]"])


def test_attack_budget_outside_the_experiment_is_refused():
    with pytest.raises(UserError, match=r"'finetune' budgets \[45\] are not among"):
        load_config(SMOKE, ["attacks.0.budgets=[45]"])
