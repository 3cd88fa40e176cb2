"""Reliability with real processes: a `sdm run` killed with SIGKILL and resumed, a second driver on the same output
folder, failing trials injected into a real Ray run, and a killed `sdm defend`.

Runs are shrunk with --set (one defense, the harmful task) so that each real run takes well under a minute.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from harness.atomic import TMP_MARK
from harness.config import FaultInjection, load_config
from harness.defend import train_defense
from harness.lock import HOLDER_FILE
from harness.results import read_cells, read_trials
from harness.runner import _prepare_data
from harness.workers import injected_fault
from tests.conftest import SMOKE, sdm_command

SMALL = ["--set", "defenses=[{name: random-init}]", "--set", "tasks.attacked=[harmful]"]


def sdm(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*sdm_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def start(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([*sdm_command(), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the process ended (status {process.returncode}) before {what}: "
                                 f"{process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def descendants(pid: int) -> dict[int, str]:
    """The live processes under `pid` (a driver's Ray instance: GCS, raylet, and the raylet's workers and agents),
    with their command lines."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(proc.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return {p: text(Path(f"/proc/{p}/cmdline")).replace("\0", " ") for p in found}


def alive(pids: Iterable[int]) -> set[int]:
    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    return {pid for pid in pids if running(pid)}


def text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # replaced while we looked
        return ""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trial_key(row: dict) -> tuple:
    return row["cell_id"], row["phase"], row["trial_id"]


# -- kill -9 and --resume ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("kill")
    out = work / "run"
    args = ["run", str(SMOKE), "--out", str(out), *SMALL]
    first_cell, second_cell = (f"random-init__finetune__gender__b{b}__s0" for b in (30, 60))
    # Tune saves a search's state every 10 s by default; every second lets the kill land after a saved trial.
    driver = start(*args, cwd=work, env={"TUNE_GLOBAL_CHECKPOINT_S": "1"})

    # A second driver on the same folder is refused, naming the first.
    wait_for(lambda: (out / HOLDER_FILE).exists(), driver, "the first run took the lock")
    second = sdm(*args, cwd=work)

    # Kill once the first cell is written and the second cell's search has saved a finished trial.
    def second_cell_saved() -> bool:
        states = (out / "tune" / second_cell).glob("experiment_state-*.json")
        return (out / "cells" / f"{first_cell}.parquet").exists() and any("TERMINATED" in text(s) for s in states)

    wait_for(second_cell_saved, driver, "the second cell saved a finished trial")
    ray_processes = descendants(driver.pid)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    first_cell_file = out / "cells" / f"{first_cell}.parquet"
    before = {
        "first_cell": digest(first_cell_file),
        "first_trials": pq.read_table(next((out / "trials").rglob("budget=30/*/trials.parquet"))).to_pylist(),
        "cells": sorted(p.name for p in (out / "cells").glob("*.parquet")),
        "finished_trials": sorted(p.parent.name for p in (out / "tune" / second_cell).glob("*/result.json")
                                  if text(p).strip()),
    }
    # Ray's two agents first try to report the raylet's death to the (dead) GCS and give up after about a minute;
    # everything else (GCS, raylet, the workers holding memory) goes at once.
    core = [p for p, cmd in ray_processes.items() if "Agent" not in cmd]
    deadline = time.monotonic() + 15
    while alive(core) and time.monotonic() < deadline:
        time.sleep(0.5)
    lingering = alive(core)

    # What a kill in the middle of a Parquet write leaves behind.
    leftovers = [out / "cells" / f"{TMP_MARK}{second_cell}.parquet.x1", out / "trials" / f"{TMP_MARK}trials.parquet.x2"]
    for path in leftovers:
        path.write_bytes(b"half a parquet file")

    resumed = sdm(*args, "--resume", cwd=work)
    deadline = time.monotonic() + 150
    while alive(ray_processes) and time.monotonic() < deadline:
        time.sleep(1)
    return {"out": out, "second": second, "driver_pid": driver.pid, "before": before,
            "ray_processes": ray_processes, "lingering": lingering,
            "resumed": resumed, "leftovers": leftovers, "cells": (first_cell, second_cell)}


def test_a_second_driver_is_refused_naming_the_lock_holder(killed_and_resumed):
    second, pid = killed_and_resumed["second"], killed_and_resumed["driver_pid"]
    assert second.returncode == 2, second.stderr
    line = second.stderr.strip()
    assert "\n" not in line and "another sdm run is using it" in line and f"pid {pid} on host" in line, line


def test_a_killed_driver_leaves_no_ray_processes(killed_and_resumed):
    processes = killed_and_resumed["ray_processes"]
    assert any("gcs_server" in c for c in processes.values()) and any("raylet" in c for c in processes.values())
    assert any("ray::" in c and "Agent" not in c for c in processes.values())  # workers
    assert killed_and_resumed["lingering"] == set(), {p: processes[p] for p in killed_and_resumed["lingering"]}
    assert alive(processes) == set()


def test_resume_takes_over_the_dead_drivers_lock_and_completes(killed_and_resumed):
    resumed, pid = killed_and_resumed["resumed"], killed_and_resumed["driver_pid"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"taking over the lock of a run that stopped without releasing it: pid {pid}" in resumed.stderr
    assert "1 cells run, 1 already finished" in resumed.stderr
    assert not (killed_and_resumed["out"] / HOLDER_FILE).exists()


def test_resume_keeps_finished_cells_and_writes_every_cell_and_trial_once(killed_and_resumed):
    out, before = killed_and_resumed["out"], killed_and_resumed["before"]
    first_cell, second_cell = killed_and_resumed["cells"]
    assert before["cells"] == [f"{first_cell}.parquet"]
    # The cell finished before the kill is not recomputed: its files are byte for byte what the first driver wrote.
    assert digest(out / "cells" / f"{first_cell}.parquet") == before["first_cell"]
    trials = read_trials(out).to_pylist()
    first_rows = [{k: v for k, v in r.items() if k not in ("defense", "attack", "task", "budget", "seed")}
                  for r in trials if r["cell_id"] == first_cell]
    assert sorted(first_rows, key=trial_key) == sorted(before["first_trials"], key=trial_key)

    cells = read_cells(out).to_pylist()
    assert sorted(c["cell_id"] for c in cells) == [first_cell, second_cell]
    assert {c["status"] for c in cells} == {"ok"}
    assert pq.read_table(out / "cells.parquet").num_rows == 2
    keys = [trial_key(r) for r in trials]
    assert len(keys) == len(set(keys)), [k for k, n in Counter(keys).items() if n > 1]
    for cell in cells:
        rows = [r for r in trials if r["cell_id"] == cell["cell_id"]]
        search = [r for r in rows if r["phase"] == "search"]
        assert 1 <= len(search) <= 3 and sum(r["phase"] == "rerun" for r in rows) == 2
        assert cell["n_trials"] == len(search)
        # No configuration was searched twice (a restart of a restored trial must not add a row).
        assert len({r["hyperparameters"] for r in search}) == len(search)
    # The interrupted cell's search was restored, not started over: trials finished before the kill are kept.
    second_ids = {r["trial_id"] for r in trials if r["cell_id"] == second_cell and r["phase"] == "search"}
    assert before["finished_trials"] and set(before["finished_trials"]) <= second_ids


def test_leftovers_of_an_interrupted_write_are_cleaned_up(killed_and_resumed):
    assert not any(path.exists() for path in killed_and_resumed["leftovers"])
    assert not list(killed_and_resumed["out"].rglob(f"{TMP_MARK}*"))


# -- failing trials --------------------------------------------------------------------------------------------------
FAULTS = {"fraction": 0.5, "kind": ["exception", "nan", "crash"]}
FAULT_RUN = [*SMALL, "--set", "search.num_samples=4", "--set", "search.plateau_patience=4",
             "--set", "search.max_failures=1"]


@pytest.fixture(scope="module")
def faulty_then_clean(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("faults")
    out = work / "run"
    args = ["run", str(SMOKE), "--out", str(out), *FAULT_RUN]
    faulty = sdm(*args, "--set", f"search.fault_injection={json.dumps(FAULTS)}", cwd=work,
                 env={"RAY_DEDUP_LOGS": "0"})
    after_faults = {
        "cells": read_cells(out).to_pylist(),
        "trials": read_trials(out).to_pylist(),
        "leaderboard": pq.read_table(out / "leaderboard" / "leaderboard.parquet").to_pylist(),
        "files": {p.name: digest(p) for p in (out / "cells").glob("*.parquet")},
    }
    clean = sdm(*args, cwd=work)
    return {"out": out, "faulty": faulty, "after_faults": after_faults, "clean": clean}


def test_injected_faults_fail_exactly_the_chosen_trials_with_their_error(faulty_then_clean):
    faults = FaultInjection(**FAULTS)
    trials = faulty_then_clean["after_faults"]["trials"]
    kinds = Counter()
    for row in trials:
        fault = injected_fault(faults, row["trial_seed"])
        kinds[fault] += 1
        if fault is None:
            assert row["status"] in ("ok", "stopped"), row
            continue
        assert row["status"] == "error" and row["val_accuracy"] is None and row["test_accuracy"] is None, row
        expected = {"exception": "InjectedFault: injected exception", "nan": "reported val_accuracy nan",
                    "crash": "ActorDiedError"}[fault]
        assert expected in row["error"], row["error"]
    # The fault pattern is a deterministic function of the trial seeds; this config must exercise every kind.
    assert {"exception", "nan", "crash", None} <= set(kinds), kinds


def test_failed_trials_are_retried_before_they_are_recorded(faulty_then_clean):
    """Each attempt of an `exception` trial is logged by the worker with its seed: max_failures=1 means two."""
    faults = FaultInjection(**FAULTS)
    stderr = faulty_then_clean["faulty"].stderr
    failing = [r for r in faulty_then_clean["after_faults"]["trials"]
               if injected_fault(faults, r["trial_seed"]) == "exception"]
    assert failing
    for row in failing:
        attempts = stderr.count(f"injecting a fault (exception) into the trial with seed {row['trial_seed']}")
        assert attempts == 2, (row["trial_seed"], attempts)


def test_cells_without_a_result_are_failed_never_aggregated_and_exit_1(faulty_then_clean):
    faulty, cells = faulty_then_clean["faulty"], faulty_then_clean["after_faults"]["cells"]
    failed = sorted(c["cell_id"] for c in cells if c["status"] == "failed")
    assert failed, "the fault pattern must fail at least one cell"
    assert faulty.returncode == 1, faulty.stderr[-3000:]
    last = faulty.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {len(failed)} cell(s) failed: ") and all(c in last for c in failed), last
    for cell in cells:
        if cell["status"] == "failed":
            assert cell["test_accuracy"] is None
    # One seed per budget: a budget whose cell failed has no result in the leaderboard, only its failure.
    board = [r for r in faulty_then_clean["after_faults"]["leaderboard"] if r["attack"] == "finetune"]
    failed_budgets = {c["budget"] for c in cells if c["status"] == "failed"}
    assert {r["budget"] for r in board} == {30, 60}
    for row in board:
        if row["budget"] in failed_budgets:
            assert row["status"] == "failed" and row["test_accuracy_mean"] is None and row["n_failed_cells"] == 1
        else:
            assert row["status"] == "ok" and row["test_accuracy_mean"] is not None and row["n_failed_cells"] == 0


def test_a_later_run_retries_failed_cells_only_and_replaces_their_rows(faulty_then_clean):
    clean, out = faulty_then_clean["clean"], faulty_then_clean["out"]
    before = faulty_then_clean["after_faults"]
    assert clean.returncode == 0, clean.stderr[-3000:]
    cells = read_cells(out).to_pylist()
    assert {c["status"] for c in cells} == {"ok"} and len(cells) == len(before["cells"])
    for old in before["cells"]:
        unchanged = digest(out / "cells" / f"{old['cell_id']}.parquet") == before["files"][f"{old['cell_id']}.parquet"]
        assert unchanged == (old["status"] == "ok"), old["cell_id"]
    trials = read_trials(out).to_pylist()
    keys = [trial_key(r) for r in trials]
    assert len(keys) == len(set(keys))
    retried = {c["cell_id"] for c in before["cells"] if c["status"] == "failed"}
    assert not any(r["status"] == "error" for r in trials if r["cell_id"] in retried)
    kept = [r for r in before["trials"] if r["cell_id"] not in retried]
    assert sorted(map(trial_key, kept)) == sorted(trial_key(r) for r in trials if r["cell_id"] not in retried)


# -- a killed defense training ------------------------------------------------------------------------------------------
MLAC = {"name": "mlac", "params": {"steps": 10, "inner_steps": 2, "batch_size": 8, "inner_batch_sizes": [8]}}


def test_a_killed_sdm_defend_resumes_from_its_checkpoint_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["defenses"] = [MLAC]
    raw["defense_training"] = {"checkpoint_every": 2}
    config = tmp_path / "mlac.yaml"
    config.write_text(yaml.safe_dump(raw))
    args = ["defend", str(config), "--defense", "mlac"]

    killed_cache = tmp_path / "killed"
    driver = start(*args, cwd=tmp_path, env={"SDM_CACHE_DIR": str(killed_cache)})
    pointer = killed_cache / "defenses" / ".work"

    def checkpointed() -> bool:
        found = list(pointer.glob("*/checkpoint.json"))
        return bool(found) and json.loads(found[0].read_text())["step"] >= 4

    wait_for(checkpointed, driver, "a checkpoint at step 4")
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    step = json.loads(next(pointer.glob("*/checkpoint.json")).read_text())["step"]
    assert step < MLAC["params"]["steps"], "the training finished before the kill; make it longer"

    resumed = sdm(*args, cwd=tmp_path, env={"SDM_CACHE_DIR": str(killed_cache)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    weights = Path(resumed.stdout.strip().splitlines()[-1])
    meta = json.loads((weights.parent / "defense.json").read_text())
    assert meta["resumed_from_step"] >= step
    assert not list(pointer.glob("*/checkpoint*"))  # the work folder goes once the weights are published

    # The same training without an interruption (in this process) ends at the very same weights.
    monkeypatch.setenv("SDM_CACHE_DIR", str(tmp_path / "straight"))
    cfg = load_config(config)
    prepared = _prepare_data(cfg)
    straight = train_defense(cfg, cfg.defenses[0], prepared.train, prepared.fingerprint, 0)
    assert not straight.cached
    assert json.loads((straight.path.parent / "defense.json").read_text())["resumed_from_step"] is None
    assert meta["weights_fingerprint"] == straight.fingerprint
