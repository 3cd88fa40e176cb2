"""Reliability with real processes: failing trials injected into a real Ray run, a `sdm run` killed with SIGKILL and
resumed, a second driver on the same output folder, and a killed `sdm defend`.

The `sdm run` tests share one scenario of three real runs, shrunk with --set to one defense and the harmful task.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from harness.atomic import TMP_MARK
from harness.config import FaultInjection
from harness.configfile import load_config
from harness.defend import train_defense
from harness.lock import HOLDER_FILE
from harness.results import read_cells, read_trials
from harness.data.prepare import prepare_data
from harness.plan import plan_cells
from harness.workers import injected_fault
from tests.conftest import SMOKE, sdm_command

def sdm(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*sdm_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def start(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A driver in the background. Its stderr goes to a file (read with `stderr_of`), not a pipe: a driver that
    prints more than a pipe holds (Ray's reports of a lost node, say) would block on it until the test timed out."""
    fd, path = tempfile.mkstemp(prefix="sdm-driver-", suffix=".stderr")
    atexit.register(os.unlink, path)
    try:
        process = subprocess.Popen([*sdm_command(), *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=fd,
                                   env={**os.environ, **(env or {})})
    finally:
        os.close(fd)
    process.stderr_path = path
    return process


def stderr_of(process: subprocess.Popen) -> str:
    """What a driver from `start` has written to stderr so far."""
    return Path(process.stderr_path).read_text(errors="replace")


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str, timeout: float = 400,
             poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the process ended (status {process.returncode}) before {what}: "
                                 f"{stderr_of(process)[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}: {stderr_of(process)[-3000:]}")
        time.sleep(poll)


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


# -- one scenario: a run with injected faults, a retry killed with SIGKILL, its --resume -------------------------------
FAULTS = {"fraction": 0.5, "kind": ["exception", "nan", "crash"]}
# One defense, the harmful task, budgets 30 and 60: two cells of four search trials (no plateau stop) and two reruns.
ARGS = ["--set", "defenses=[{name: random-init}]", "--set", "tasks.attacked=[harmful]",
        "--set", "search.num_samples=4", "--set", "search.plateau_patience=4", "--set", "search.max_failures=1"]
CELLS = [f"random-init__finetune__gender__b{b}__s0" for b in (30, 60)]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """1. a run with fault injection: some trials fail, one cell fails (exit 1); 2. the next run's plan; 3. the same
    run without faults, which retries the failed cell, killed with SIGKILL once that cell's search saved a finished
    trial (a second driver is refused meanwhile); 4. --resume, which restores that search and completes the run."""
    work = tmp_path_factory.mktemp("scenario")
    out = work / "run"
    args = ["run", str(SMOKE), "--out", str(out), *ARGS]
    got: dict = {"out": out}

    got["faulty"] = sdm(*args, "--set", f"search.fault_injection={json.dumps(FAULTS)}", cwd=work,
                        env={"RAY_DEDUP_LOGS": "0"})
    cells = read_cells(out).to_pylist()
    got["after_faults"] = {
        "cells": cells,
        "trials": read_trials(out).to_pylist(),
        "leaderboard": pq.read_table(out / "leaderboard" / "leaderboard.parquet").to_pylist(),
        "files": {p.name: digest(p) for p in (out / "cells").glob("*.parquet")},
    }
    failed = [c["cell_id"] for c in cells if c["status"] == "failed"]
    assert len(failed) == 1, f"the fault pattern must fail one cell of two (failed: {failed}); adjust FAULTS"
    got["retried"] = retried = failed[0]
    got["plan"] = plan_cells(load_config(SMOKE, [*ARGS[1::2], f"output={out}"]), out)

    # Tune saves a search's state every 10 s by default; every second lets the kill land after a saved trial.
    driver = start(*args, cwd=work, env={"TUNE_GLOBAL_CHECKPOINT_S": "1"})
    wait_for(lambda: (out / HOLDER_FILE).exists(), driver, "the run took the lock")
    got["second"] = sdm(*args, cwd=work)

    def a_trial_finished() -> bool:
        return any(text(p).strip() for p in (out / "tune" / retried).glob("*/result.json"))

    def saved_a_finished_trial() -> bool:
        return any("TERMINATED" in text(s) for s in (out / "tune" / retried).glob("experiment_state-*.json"))

    # A search of tiny trials ends seconds after its first trial does, too soon to catch reliably. Freezing the attack
    # workers once a trial has reported (a hung node) holds the driver there however fast this machine trains: no
    # other trial or rerun can end, so the cell cannot be recorded and its search state stays until the kill.
    wait_for(a_trial_finished, driver, "a trial of the retried cell's search finished", poll=0.05)
    frozen = [p for p, cmd in descendants(driver.pid).items() if cmd.startswith("ray::AttackWorker")]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    got["frozen"] = frozen
    wait_for(saved_a_finished_trial, driver, "the retried cell's search saved a finished trial")
    got["ray_processes"] = descendants(driver.pid)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    for pid in alive(frozen):  # thawed, they notice their raylet is gone and exit like the rest
        os.kill(pid, signal.SIGCONT)
    got["driver_pid"] = driver.pid
    got["finished_before_kill"] = {p.parent.name for p in (out / "tune" / retried).glob("*/result.json")
                                   if text(p).strip()}
    # Ray's two agents first try to report the raylet's death to the (dead) GCS and give up after about a minute, and
    # so does a worker process that has not finished starting (`setup_worker.py`, or `default_worker.py` before it
    # registers and takes its `ray::` title: it runs nothing yet and holds no model); everything else (GCS, raylet,
    # the workers holding memory) goes at once. All of them are gone by the end of the scenario
    # (`test_a_killed_driver_leaves_no_ray_processes`).
    starting = ("Agent", "setup_worker.py", "default_worker.py")
    core = [p for p, cmd in got["ray_processes"].items() if not any(mark in cmd for mark in starting)]
    deadline = time.monotonic() + 15
    while alive(core) and time.monotonic() < deadline:
        time.sleep(0.5)
    got["lingering"] = alive(core)

    # What a kill in the middle of a Parquet write leaves behind.
    got["leftovers"] = [out / "cells" / f"{TMP_MARK}{retried}.parquet.x1",
                        out / "trials" / f"{TMP_MARK}trials.parquet.x2"]
    for path in got["leftovers"]:
        path.write_bytes(b"half a parquet file")

    got["resumed"] = sdm(*args, "--resume", cwd=work)
    deadline = time.monotonic() + 300
    while alive(got["ray_processes"]) and time.monotonic() < deadline:
        time.sleep(1)
    return got


def test_injected_faults_fail_exactly_the_chosen_trials_with_their_error(scenario):
    faults = FaultInjection(**FAULTS)
    kinds = Counter()
    for row in scenario["after_faults"]["trials"]:
        fault = injected_fault(faults, row["trial_seed"])
        kinds[fault] += 1
        if fault is None:
            assert row["status"] in ("ok", "stopped"), row
            continue
        assert row["status"] == "error" and row["val_accuracy"] is None and row["test_accuracy"] is None, row
        expected = {"exception": "InjectedFault: injected exception", "nan": "InvalidOutcome: attack 'finetune' "
                    "reported val_accuracy nan", "crash": "ActorDiedError: "}[fault]
        assert row["error"].startswith(expected), row["error"]
    # The fault pattern is a deterministic function of the trial seeds; this config must exercise every kind.
    assert {"exception", "nan", "crash", None} <= set(kinds), kinds


def test_failed_trials_are_retried_before_they_are_recorded(scenario):
    """Each attempt of an `exception` trial is logged by the worker with its seed: max_failures=1 means two."""
    faults = FaultInjection(**FAULTS)
    failing = [r for r in scenario["after_faults"]["trials"] if injected_fault(faults, r["trial_seed"]) == "exception"]
    assert failing
    for row in failing:
        attempts = scenario["faulty"].stderr.count(
            f"injecting a fault (exception) into the trial with seed {row['trial_seed']}"
        )
        assert attempts == 2, (row["trial_seed"], attempts)


def test_cells_without_a_result_are_failed_never_aggregated_and_exit_1(scenario):
    faulty, cells, retried = scenario["faulty"], scenario["after_faults"]["cells"], scenario["retried"]
    assert faulty.returncode == 1, faulty.stderr[-3000:]
    assert faulty.stderr.strip().splitlines()[-1].startswith(f"error: 1 cell(s) failed: {retried} ")
    failed = next(c for c in cells if c["cell_id"] == retried)
    assert failed["test_accuracy"] is None
    # One seed per budget: the failed cell's budget has no result in the leaderboard, only its failure.
    board = [r for r in scenario["after_faults"]["leaderboard"] if r["attack"] == "finetune"]
    assert {r["budget"] for r in board} == {30, 60}
    for row in board:
        if row["budget"] == failed["budget"]:
            assert row["status"] == "failed" and row["test_accuracy_mean"] is None and row["n_failed_cells"] == 1
        else:
            assert row["status"] == "ok" and row["test_accuracy_mean"] is not None and row["n_failed_cells"] == 0


def test_the_next_run_plans_to_retry_the_failed_cell_only(scenario):
    plan = scenario["plan"]
    assert plan.failed == {scenario["retried"]} and plan.finished == set(CELLS) - plan.failed
    assert [c.cell_id for c in plan.todo] == [scenario["retried"]]


def test_a_second_driver_is_refused_naming_the_lock_holder(scenario):
    second, pid = scenario["second"], scenario["driver_pid"]
    assert second.returncode == 2, second.stderr
    line = second.stderr.strip()
    assert "\n" not in line and "another sdm run is using it" in line and f"pid {pid} on host" in line, line


def test_a_killed_driver_leaves_no_ray_processes(scenario):
    processes = scenario["ray_processes"]
    assert any("gcs_server" in c for c in processes.values()) and any("raylet" in c for c in processes.values())
    assert any("ray::" in c and "Agent" not in c for c in processes.values())  # workers
    assert scenario["frozen"] and set(scenario["frozen"]) <= set(processes)  # the attack workers, thawed after
    assert scenario["lingering"] == set(), {p: processes[p] for p in scenario["lingering"]}
    assert alive(processes) == set()


def test_resume_takes_over_the_dead_drivers_lock_and_completes(scenario):
    resumed, pid = scenario["resumed"], scenario["driver_pid"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"taking over the lock of a run that stopped without releasing it: pid {pid}" in resumed.stderr
    assert "1 cells run, 1 already finished" in resumed.stderr
    assert not (scenario["out"] / HOLDER_FILE).exists()
    assert not (scenario["out"] / "tune").exists() or not any((scenario["out"] / "tune").iterdir())


def test_resume_keeps_finished_cells_and_writes_every_cell_and_trial_once(scenario):
    out, before, retried = scenario["out"], scenario["after_faults"], scenario["retried"]
    kept = next(c for c in CELLS if c != retried)
    # The cell finished before the kill is not recomputed: its files are byte for byte what the first run wrote.
    assert digest(out / "cells" / f"{kept}.parquet") == before["files"][f"{kept}.parquet"]
    trials = read_trials(out).to_pylist()
    assert sorted(trial_key(r) for r in trials if r["cell_id"] == kept) == sorted(
        trial_key(r) for r in before["trials"] if r["cell_id"] == kept
    )
    cells = read_cells(out).to_pylist()
    assert sorted(c["cell_id"] for c in cells) == CELLS and {c["status"] for c in cells} == {"ok"}
    assert pq.read_table(out / "cells.parquet").num_rows == 2
    keys = [trial_key(r) for r in trials]
    assert len(keys) == len(set(keys)), [k for k, n in Counter(keys).items() if n > 1]
    for cell in cells:
        rows = [r for r in trials if r["cell_id"] == cell["cell_id"]]
        search = [r for r in rows if r["phase"] == "search"]
        assert 1 <= len(search) <= 4 and sum(r["phase"] == "rerun" for r in rows) == 2
        assert cell["n_trials"] == len(search)
        # No configuration was searched twice (a restarted trial of the restored search must not add a row).
        assert len({r["hyperparameters"] for r in search}) == len(search)
    # The failed cell's rows were replaced, not added to: none of its faulty rows is left.
    assert not any(r["status"] == "error" for r in trials if r["cell_id"] == retried)
    # Its interrupted search was restored, not started over: trials finished before the kill are kept.
    retried_ids = {r["trial_id"] for r in trials if r["cell_id"] == retried and r["phase"] == "search"}
    assert scenario["finished_before_kill"] and scenario["finished_before_kill"] <= retried_ids


def test_leftovers_of_an_interrupted_write_are_cleaned_up(scenario):
    assert not any(path.exists() for path in scenario["leftovers"])
    assert not list(scenario["out"].rglob(f"{TMP_MARK}*"))


# -- Ctrl+C ------------------------------------------------------------------------------------------------------------
def test_ctrl_c_during_a_search_stops_the_run_and_records_no_part_of_that_search(tmp_path: Path) -> None:
    """Tune's own SIGINT handler used to end the search it was running quietly: the cell was recorded from the trials
    it had, and the run went on. Now Ctrl+C ends the run (exit 130, one line); --resume completes the cell."""
    out = tmp_path / "run"
    # One cell at a time, so that the signal lands inside the second cell's search after the first is recorded
    # (cells in flight when a driver is killed: tests/test_width.py).
    args = ["run", str(SMOKE), "--out", str(out), *ARGS, "--set", "cluster.cells_at_once=1"]
    driver = start(*args, cwd=tmp_path, env={"TUNE_GLOBAL_CHECKPOINT_S": "1"})
    first, second = (out / "cells" / f"{cell}.parquet" for cell in CELLS)
    wait_for(first.exists, driver, "the first cell's row")
    wait_for((out / "tune" / CELLS[1]).exists, driver, "the second cell's search")
    time.sleep(1)  # inside that search's Tuner.fit
    driver.send_signal(signal.SIGINT)
    try:
        code = driver.wait(timeout=120)
    finally:
        driver.kill()
    stderr = stderr_of(driver)
    assert code == 130, stderr[-3000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("interrupted"), stderr[-3000:]
    assert first.exists() and not second.exists()
    resumed = sdm(*args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    cells = {c["cell_id"]: c for c in read_cells(out).to_pylist()}
    assert set(cells) == set(CELLS) and all(c["status"] == "ok" and c["n_trials"] == 4 for c in cells.values())


# -- a killed defense training -----------------------------------------------------------------------------------------
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

    # Polled often: a tiny model's training steps are milliseconds, and the kill must land before the last one.
    wait_for(checkpointed, driver, "a checkpoint at step 4", poll=0.01)
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
    prepared = prepare_data(cfg)
    straight = train_defense(cfg, cfg.defenses[0], prepared.defense_train, prepared.fingerprint, 0)
    assert not straight.cached
    assert json.loads((straight.path.parent / "defense.json").read_text())["resumed_from_step"] is None
    assert meta["weights_fingerprint"] == straight.fingerprint
