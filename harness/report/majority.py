"""The majority-class accuracy of each task's test pool: what always answering the most frequent class scores, the
floor a reader holds random-init's accuracy against.

Read from the data the runs measured, never assumed: a run directory's run.json holds its config; the config's
corpus is loaded (from the data cache when it is there) and its test pool carved as the run carved it
(`harness.data.prepare.carve_pools`). A run without run.json (published cells only), whose config no longer
validates, whose data is not on this machine, or whose data changed since (the corpus fingerprint differs from the
cells') tells nothing: the board then shows no majority class rather than a guess.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import ValidationError

from harness.config import ExperimentConfig
from harness.errors import UserError

log = logging.getLogger(__name__)

def test_pool_majority(cfg: ExperimentConfig) -> tuple[str, dict[str, float]]:
    """The config's corpus fingerprint, and label column -> share of its most frequent class in the test pool."""
    from harness.data.loader import load_corpus
    from harness.data.prepare import carve_pools
    from harness.defend import cache_root

    corpus = load_corpus(cfg.data, cache_dir=cache_root(cfg) / "data", write_cache=False)
    pools = carve_pools(cfg, corpus)
    test = corpus.splits[pools.info["test"].split].data
    rows = pools.rows["test"]
    shares = {}
    for column in cfg.data.labels:
        counts = np.bincount(test.column(column).to_numpy()[rows])
        if counts.sum():
            shares[column] = float(counts.max() / counts.sum())
    return corpus.fingerprint, shares


def run_majority(run: Path, data_fingerprint: str) -> dict[str, float]:
    """Label column -> majority-class accuracy of one run's test pool; {} when the run cannot tell (see the module)."""
    from harness.runner import RUN_FILE

    path = Path(run) / RUN_FILE
    if not path.is_file():
        log.info("run '%s': no %s, so no majority-class accuracy", run, RUN_FILE)
        return {}
    try:
        cfg = ExperimentConfig.model_validate(json.loads(path.read_text(encoding="utf-8"))["config"])
        fingerprint, shares = test_pool_majority(cfg)
    except (ValidationError, UserError, KeyError, OSError, ValueError) as exc:
        log.info("run '%s': its data could not be read back (%s), so no majority-class accuracy", run,
                 " ".join(str(exc).split())[:200])
        return {}
    if fingerprint != data_fingerprint:
        log.info("run '%s': its data changed since (fingerprint %s, the cells say %s), so no majority-class "
                 "accuracy", run, fingerprint, data_fingerprint)
        return {}
    return shares


def majority_accuracy(run_dirs: list[Path], cells: pa.Table) -> dict[str, float]:
    """Task -> majority-class accuracy of its test pool, for each task of the cells on which every run agrees (runs
    merged onto one board share their data, but a run may have carved a test pool of another size)."""
    fingerprints = set(cells.column("data_fingerprint").to_pylist())
    if len(fingerprints) != 1:
        return {}  # `merge_runs` refuses this; an aggregate of hand-made cells may not
    [fingerprint] = fingerprints
    per_run = [run_majority(run, str(fingerprint)) for run in run_dirs]
    tasks = sorted(set(cells.column("task").to_pylist()))
    return {task: per_run[0][task] for task in tasks
            if all(task in shares for shares in per_run)
            and all(np.isclose(shares[task], per_run[0][task]) for shares in per_run)}
