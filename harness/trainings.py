"""The run's defense trainings: every (defense, seed) a cell still needs, submitted to Ray at once as tasks with the
config's resources, so a cluster trains them side by side wherever a node has room.

The driver asks, without waiting, which trainings have begun and which have ended (`poll`): the trial workers start
once every training has begun (`wait_until_all_begun`), since a worker holds its resources for the whole run and a
training still waiting for a node (a GPU) the workers then held would wait forever; and a defense's cells are
searched as soon as its own training ends, while the others' go on (`harness.cells.CellJobs`).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray

from harness.config import ExperimentConfig
from harness.console import StepBar
from harness.progress import POLL_S, BoardReporter, ProgressBoard
from harness.resources import on_this_node

if TYPE_CHECKING:
    from harness.data.prepare import PreparedData
    from harness.defend import DefendedWeights

TrainingKey = tuple[str, int]  # (defense cell name, training seed)


@dataclass(frozen=True)
class Trained:
    """A defense training's outcome on the driver: what the cache holds, and the weights in Ray's object store."""

    weights: DefendedWeights
    state: Any  # ObjectRef of the state dict, from the training's node


class Trainings:
    """The trainings of `keys`, submitted when made. Their steps move bars on the driver's display (`progress`);
    each is reported on one line as it ends. A training that raises stops the run, as it is raised by `poll`."""

    def __init__(self, cfg: ExperimentConfig, keys: list[TrainingKey], prepared: PreparedData, progress: Any):
        from harness.defend import defense_task, make_defense
        from harness.resources import task_options

        self._progress = progress
        # Its own board: the cells' searches read theirs (`harness.flight`) while trainings still run.
        self._board = ProgressBoard.options(scheduling_strategy=on_this_node()).remote()
        task = ray.remote(num_returns=2, **task_options(cfg.defense_training.resources))(defense_task)
        train_split = ray.put(prepared.defense_train)  # once in the object store, not once per training submitted
        self._names: dict[str, TrainingKey] = {f"{name}/{seed}": (name, seed) for name, seed in keys}
        self._bars: dict[str, StepBar] = {}
        self._pending: dict[Any, tuple[str, Any]] = {}  # weights ref -> (board key, state ref)
        for key, (defense_name, defense_seed) in self._names.items():
            spec = next(d for d in cfg.defenses if d.cell_name == defense_name)
            self._bars[key] = StepBar(progress, f"defense {defense_name} (seed {defense_seed})",
                                      make_defense(spec, "config").total_steps())
            weights, state = task.remote(cfg, spec, train_split, prepared.fingerprint, defense_seed,
                                         BoardReporter(self._board, key))
            self._pending[weights] = (key, state)
        self._begun: set[str] = set()
        self._ended: deque[tuple[TrainingKey, Trained]] = deque()  # ended, not yet taken

    @property
    def all_ended(self) -> bool:
        return not self._pending

    @property
    def all_begun(self) -> bool:
        return all(key in self._begun for key, _ in self._pending.values())

    def poll(self, timeout: float = 0.0) -> None:
        """Move the bars, note the trainings that began, and collect those that ended, waiting at most `timeout`
        seconds for one to end."""
        if not self._pending:
            # Nothing left to end, and nothing asked of the board: the search loop calls this at every turn.
            time.sleep(timeout)  # the caller waits on something else (a worker's start)
            return
        ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        for key, report in ray.get(self._board.take_all.remote()).items():
            self._bars[key](*report)
        if not self.all_begun:
            self._begun |= ray.get(self._board.begun_keys.remote())
        ended, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0)
        for ref in ended:
            key, state = self._pending.pop(ref)
            weights: DefendedWeights = ray.get(ref)
            self._bars[key].finish()
            defense_name, defense_seed = self._names[key]
            how = "cached" if weights.cached else f"trained in {weights.train_seconds:.0f}s"
            self._progress.console.print(f"defense {defense_name} (seed {defense_seed}): {how} ({weights.path})")
            self._ended.append((self._names[key], Trained(weights, state)))

    @property
    def ended_waiting(self) -> bool:
        """Some ended trainings are not taken yet (`take_ended`)."""
        return bool(self._ended)

    def wait_until_all_begun(self) -> None:
        while not self.all_begun:
            self.poll(POLL_S)

    def take_ended(self) -> tuple[TrainingKey, Trained] | None:
        """The next training that ended, in the order they did, or None if none is waiting to be taken."""
        return self._ended.popleft() if self._ended else None

    def close(self) -> None:
        ray.kill(self._board)
