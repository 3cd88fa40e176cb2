"""`sdm run --dry-run` offline: the paper's config (real hub ids, no network) is checked as far as this machine can,
says in one line what it could not check, never asks the hub, and prices the run; the cost model's parts."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from harness.configfile import load_config
from harness.cost import MEASURED, asha_steps, encoder_share, estimate_cost, steps_quantiles
from harness.plan import REPLAYS, plan_cells, validate_plugins
from harness.space import Choice, Fixed, IntRange
from tests.conftest import ROOT, SMOKE, sdm_command

PAPER = ROOT / "configs" / "paper.yaml"


def offline_sdm(*args: str, cwd) -> tuple[subprocess.CompletedProcess, float]:
    """The CLI with none of the hub's offline switches set: the dry run must set them itself."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                             "TRANSFORMERS_OFFLINE")}
    started = time.perf_counter()
    result = subprocess.run([*sdm_command(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return result, time.perf_counter() - started


def test_paper_dry_run_works_offline_and_prices_the_run(tmp_path):
    out = tmp_path / "run"
    result, seconds = offline_sdm("run", str(PAPER), "--dry-run", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout + result.stderr
    assert "Retrying" not in text and "WARNING" not in text and "Traceback" not in text
    assert seconds < 120  # no hub retries (they took 26 s and more)
    [unchecked] = [line for line in result.stdout.splitlines() if line.startswith("could not check offline:")]
    assert "data.source 'LabHC/bias_in_bios' (a hub id" in unchecked
    assert "model.source 'google/bert_uncased_L-2_H-128_A-2' (a hub id)" in unchecked
    assert "defense_training.resources.gpu 1 (this machine has" in unchecked or os.environ.get("CUDA_VISIBLE_DEVICES")
    assert "192 cells to run, at most 12672 trials (50 search + 15 reruns + 1 replay per cell)" in result.stdout
    # 192 cells x 65 trials x 550 steps (the paper's 100..1000), half of them full fine-tuning at 16 x 64 -> 28 x 200
    assert "finetune: 192 cells, at most 12,672 trials, 6,969,600 trial-steps (550 steps a trial)" in result.stdout
    [cost] = [line for line in result.stdout.splitlines() if line.startswith("cost: ")]
    assert "6,969,600 trial-steps" in cost and " h of compute on this machine" in cost
    assert "encoder steps at" in cost and "rows of checks and features at" in cost and MEASURED["bf16"].source in cost
    assert "defense training not included (900,000 steps to train)" in result.stdout
    assert not out.exists()


def test_dry_run_json_is_one_document_on_stdout(tmp_path):
    result, _ = offline_sdm("run", str(PAPER), "--dry-run", "--json", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    plan = json.loads(result.stdout)  # stdout holds the document and nothing else
    assert plan["cells_to_run"] == len(plan["cells"]) == 192 and plan["max_trials"] == 12672
    assert {c["status"] for c in plan["cells"]} == {"to run"}
    assert any("hub id" in item for item in plan["not_checked"]) and "config" in plan["checked"]
    cost = plan["cost"]
    assert cost["trial_steps"] == pytest.approx(192 * 66 * 550)  # 50 search, 15 reruns, 1 replay
    assert cost["priced_steps"] == pytest.approx(cost["trial_steps"] / 2)  # finetune's probe mode is not priced
    assert cost["hours"] > 0 and cost["step"]["source"] == MEASURED["bf16"].source


def test_a_local_config_is_checked_whole(tmp_path):
    result, _ = offline_sdm("run", str(SMOKE), "--dry-run", "--out", str(tmp_path / "dry"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "could not check" not in result.stdout
    [checked] = [line for line in result.stdout.splitlines() if line.startswith("checked: ")]
    assert "data (files, pools, budget samples)" in checked and "base model" in checked and "resources" in checked


def test_json_without_dry_run_is_refused(tmp_path):
    result, _ = offline_sdm("run", str(SMOKE), "--json", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip() == \
        "error: --json goes with --dry-run (a run writes its results as tables)"


def test_steps_quantiles_follow_the_space():
    assert steps_quantiles(Fixed(value=40)) == [40.0]
    assert steps_quantiles(Choice(values=[10, 30])) == [10.0, 30.0]
    draws = steps_quantiles(IntRange(low=100, high=1000))
    assert sum(draws) / len(draws) == pytest.approx(550)
    log_draws = steps_quantiles(IntRange(low=10, high=1000, log=True))
    assert sorted(log_draws)[len(log_draws) // 2] == pytest.approx(100, rel=0.05)  # the median of a log range


def test_asha_steps_by_hand():
    # Rungs at 100 and 300 (max_t 400), factor 3: a 400-step trial runs 100, then 200 more with 1/3, then 100 more
    # with 1/9.
    assert asha_steps(400, 100, 3, 400) == pytest.approx(100 + 200 / 3 + 100 / 9)
    assert asha_steps(50, 100, 3, 400) == 50  # ends before the first rung
    assert asha_steps(200, 100, 3, 400) == pytest.approx(100 + 100 / 3)


def test_asha_lowers_the_estimate_and_probe_trials_are_not_priced():
    plain = load_config(ROOT / "configs" / "reproduce.yaml", ["search.asha=null"])
    cut = load_config(ROOT / "configs" / "reproduce.yaml")
    assert cut.search.asha is not None
    costs = {}
    for name, cfg in (("plain", plain), ("asha", cut)):
        attacks = validate_plugins(cfg, name)
        costs[name] = estimate_cost(cfg, plan_cells(cfg, ROOT / "no-such-run"), attacks, "bf16", cores=2)
    assert costs["asha"].trial_steps < costs["plain"].trial_steps
    by_attack = {a.attack: a for a in costs["asha"].attacks}
    assert by_attack["probe"].encoder_share == 0 and by_attack["probe"].priced_steps == 0
    assert 0 < by_attack["finetune"].search_steps < by_attack["finetune"].mean_steps


def test_the_plan_says_how_many_defense_trainings_and_cells_run_at_once(tmp_path):
    # smoke: 2 defenses x 1 seed; one CPU each on a 2-core machine trains both at once, two CPUs each one at a time
    for resources, cores, gpus, expected in (("{cpu: 1}", 2, 0, 2), ("{cpu: 2}", 2, 0, 1), ("{cpu: 1, gpu: 1}", 8, 1, 1),
                                              ("{cpu: 1, gpu: 1}", 8, 0, 0)):
        cfg = load_config(SMOKE, [f"defense_training.resources={resources}"])
        cost = estimate_cost(cfg, plan_cells(cfg, ROOT / "no-such-run"), validate_plugins(cfg, "smoke"), "fp32",
                             cores=cores, gpus=gpus)
        assert (cost.trainings, cost.trainings_at_once) == (2, expected), resources
    # smoke: 8 cells, 2 trials a cell at once; 2 cores hold 2 workers, which one cell fills, plus one in flight
    for overrides, cores, expected in (([], 2, (2, 2)), ([], 8, (8, 5)), (["search.max_concurrent=1"], 2, (2, 3)),
                                       (["cluster.cells_at_once=1"], 8, (2, 1))):
        cfg = load_config(SMOKE, overrides)
        cost = estimate_cost(cfg, plan_cells(cfg, ROOT / "no-such-run"), validate_plugins(cfg, "smoke"), "fp32",
                             cores=cores)
        assert (cost.parallel, cost.cells_at_once) == expected, (overrides, cores)
    result, _ = offline_sdm("run", str(SMOKE), "--dry-run", "--set", "defense_training.resources={cpu: 1}",
                            "--out", str(tmp_path / "dry"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected_line = ("at once on this machine: 2 of 2 defense trainings (defense_training.resources {cpu: 1, gpu: 0} "
                     "each), then 2 cells at a time sharing 2 trial workers (2 trials a cell at once)")
    assert expected_line in result.stdout, result.stdout


def test_encoder_share_of_the_built_in_attacks():
    from harness.registry import ATTACKS

    def share(name: str, space: dict | None = None) -> float:
        return encoder_share(ATTACKS.get(name).from_spec({}, space or {}, "test"))

    assert share("probe") == 0
    assert share("finetune") == 0.5
    assert share("finetune", {"mode": {"type": "fixed", "value": "full"}}) == 1
    assert share("top-k") == 1


def test_a_step_is_priced_affine_in_its_rows_as_measured():
    # The two batch sizes measured on one machine (docs/reproduce.md): a batch of 8 costs more than half of 16.
    for precision, (b8, b16) in (("bf16", (0.31, 0.56)), ("fp32", (0.60, 1.10))):
        step = MEASURED[precision]
        assert step.step_seconds(8, 64) == pytest.approx(b8) and step.step_seconds(16, 64) == pytest.approx(b16)
        assert step.step_seconds(8, 64) > step.step_seconds(16, 64) / 2
    assert MEASURED["bf16"].forward_seconds(300, 64) == pytest.approx(3.3)
    assert MEASURED["fp32"].forward_seconds(300, 64) == pytest.approx(6.1, rel=0.01)


def estimate(config: str, overrides: list[str] | None = None):
    cfg = load_config(ROOT / "configs" / config, overrides or [])
    return cfg, estimate_cost(cfg, plan_cells(cfg, ROOT / "no-such-run"), validate_plugins(cfg, config), "bf16",
                              cores=2)


def test_checks_are_priced_and_a_rerun_also_scores_test():
    cfg, cost = estimate("reproduce.yaml")
    finetune = {a.attack: a for a in cost.attacks}["finetune"]
    step = MEASURED["bf16"]
    # 50-100 steps, checks every 50: a rerun checks twice (validation and test rows), then scores test once more, and
    # so does the replay of the selected trial; under ASHA (grace 50, factor 3) a search trial checks once, and a
    # third of them a second time.
    search_checks, rerun_checks, scored = 1 + 1 / 3, 2, cfg.search.reruns + REPLAYS
    rows = (cfg.search.num_samples * search_checks * 300 + scored * (rerun_checks * (300 + 600) + 600))
    assert finetune.checked_rows == pytest.approx(finetune.cells * rows, rel=0.01)
    per_cell_steps = cfg.search.num_samples * finetune.search_steps + scored * finetune.mean_steps
    assert finetune.seconds == pytest.approx(
        finetune.cells * (per_cell_steps * step.step_seconds(8, 64) + step.forward_seconds(rows, 64)), rel=0.01)
    probe = {a.attack: a for a in cost.attacks}["probe"]
    assert probe.seconds == 0 and probe.checked_rows == 0  # a head on cached features: its checks cost nothing
    # The features: per defended model (4 defenses x 3 seeds) validation and test once, each task's largest sample.
    assert cost.feature_rows == 12 * (300 + 600 + 200 + 100)
    _, unchecked = estimate("reproduce.yaml", ["search.eval_every=0", "search.asha=null"])
    _, plain = estimate("reproduce.yaml", ["search.asha=null"])
    assert unchecked.hours < plain.hours  # one check a trial, at its end, against one every 50 steps


def test_benign_first_pays_its_benign_phase_in_every_trial():
    cfg, cost = estimate("reproduce-strong-attacks.yaml")
    attacks = {a.attack: a for a in cost.attacks}
    benign, reinit = attacks["benign-first"], attacks["reinit-top"]
    assert (benign.phases, benign.phase_steps) == (("benign_steps",), pytest.approx(150, rel=0.01))
    assert (reinit.phases, reinit.phase_steps) == ((), 0)
    trials = cfg.search.num_samples + cfg.search.reruns + REPLAYS
    # ASHA cuts the harmful phase only: every trial runs its benign steps in full.
    assert benign.trial_steps - reinit.trial_steps == pytest.approx(benign.cells * trials * 150, rel=0.01)
    assert benign.seconds > reinit.seconds
