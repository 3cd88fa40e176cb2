"""A stand-in trial for `benchmarks/simulated_cluster.py`: sleeps as long as its configuration says instead of
training, then reports an accuracy that is a smooth function of its configuration (so TPE has something to climb).

Named in a config as `benchmarks.sleep_attack:Sleep`; used by that benchmark only, never registered. With
`SDM_BENCH_SLEEP_LOG` set to a folder, each trial appends when it slept (start and end, epoch seconds) to its process's file.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from harness.plugins import Attack, AttackContext, AttackOutcome
from harness.space import IntRange, Space, Uniform

SLEEP_LOG = "SDM_BENCH_SLEEP_LOG"


class SleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seconds_per_step: float = Field(0.01, gt=0, description="a trial sleeps steps x this")


class Sleep(Attack):
    Params = SleepParams

    def default_space(self) -> Space:
        return {"steps": IntRange(low=100, high=300), "x": Uniform(low=0.0, high=1.0)}

    def run(self, ctx: AttackContext, config: dict[str, Any], seed: int, score_test: bool) -> AttackOutcome:
        steps = int(config["steps"])
        started = time.time()
        time.sleep(steps * self.params.seconds_per_step)
        if os.environ.get(SLEEP_LOG):
            with open(Path(os.environ[SLEEP_LOG]) / f"{os.getpid()}.log", "a") as log:
                log.write(f"{started} {time.time()}\n")
        # Best near x = 0.7, a little noise by seed: the same for the same configuration and seed.
        accuracy = 0.5 + 0.4 * math.exp(-((config["x"] - 0.7) ** 2) / 0.05) + (seed % 97) / 97 * 0.01
        return AttackOutcome(val_accuracy=accuracy, test_accuracy=accuracy if score_test else None,
                             steps_run=steps, best_step=steps)
