"""What a run asks of its Ray cluster, checked against what the cluster has before anything is written.

A run asks for two things, one after the other: defense trainings (`defense_training.resources` each, one at a time),
then a pool of trial workers (`search.resources_per_trial` each). A request no single node can hold would wait
forever (Ray never splits a task or an actor across nodes), so it is refused at once with one line naming it. The
pool is sized to the workers that fit at once, summed node by node (a node holds as many as both its CPUs and its
GPUs allow), and at most what the cells in flight use (`search.max_concurrent` each); it is created after the
trainings, so its workers never hold a GPU a training waits for. On a cluster that autoscales (`cluster.autoscaling`), requests are left to the autoscaler.
"""

from __future__ import annotations

import logging
import math
import socket
from pathlib import Path
from typing import Any

from harness.config import ExperimentConfig, Resources
from harness.errors import UserError

log = logging.getLogger(__name__)


def live_nodes() -> list[dict[str, float]]:
    """The resources of each alive node of the connected Ray cluster."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node["Alive"]]


def per_node(resources: Resources, node: dict[str, float]) -> int | float:
    """How many holders of `resources` one node has room for (unbounded when they ask for nothing)."""
    room = math.inf
    for kind, wanted in (("CPU", resources.cpu), ("GPU", resources.gpu)):
        if wanted > 0:
            # A little slack: Ray counts resources in units of 1e-4, a float division may fall just short.
            room = min(room, math.floor(node.get(kind, 0.0) / wanted + 1e-9))
    return room


def workers_that_fit(resources: Resources, nodes: list[dict[str, float]]) -> int | float:
    return sum(per_node(resources, node) for node in nodes)


def describe(resources: Resources) -> str:
    return f"{{cpu: {resources.cpu:g}, gpu: {resources.gpu:g}}}"


def resource_requests(cfg: ExperimentConfig) -> dict[str, Resources]:
    """Every resource request of a run, by the config field that makes it."""
    return {"search.resources_per_trial": cfg.search.resources_per_trial,
            "defense_training.resources": cfg.defense_training.resources}


def check_requests(cfg: ExperimentConfig, nodes: list[dict[str, float]], where: str, hint: str = "") -> None:
    """Refuse a run whose defense trainings or trial workers fit on no node of the cluster. `where` names the
    cluster ("this machine's Ray instance"); `hint` ends the message (what else the user may mean)."""
    if cfg.cluster.autoscaling:
        return
    for field, resources in resource_requests(cfg).items():
        if any(per_node(resources, node) >= 1 for node in nodes):
            continue
        for kind, wanted in (("cpu", resources.cpu), ("gpu", resources.gpu)):
            most = max((node.get(kind.upper(), 0.0) for node in nodes), default=0.0)
            if wanted > most:
                raise UserError(f"{field}.{kind}: asks for {wanted:g} but no node of {where} has more than "
                                f"{most:g}{hint}")
        raise UserError(f"{field}: {describe(resources)} fits on no single node of {where}{hint}")


def workers_wanted(cfg: ExperimentConfig, cells: int) -> int:
    """Trial workers that would keep `cells` cells' searches busy: `search.max_concurrent` for each cell that can
    be in flight (`cluster.cells_at_once`, else every cell; on an autoscaling cluster, else one)."""
    in_flight = cfg.cluster.cells_at_once or (1 if cfg.cluster.autoscaling else cells)
    return cfg.search.max_concurrent * max(1, min(in_flight, cells))


def cells_at_once(configured: int | None, workers: int, per_cell: int, cells: int) -> int:
    """Cells to keep in flight: the configured number, or one more than the pool's workers fill at `per_cell`
    trials a cell; never more than there are cells to run."""
    wanted = configured if configured is not None else math.ceil(workers / per_cell) + 1
    return max(1, min(wanted, cells))


def pool_size(cfg: ExperimentConfig, nodes: list[dict[str, float]], cells: int) -> int:
    """The trial workers to start for `cells` cells: as many as their searches use at once, or fewer if the
    cluster holds fewer."""
    wanted = workers_wanted(cfg, cells)
    if cfg.cluster.autoscaling:
        return wanted  # workers beyond today's nodes wait for the nodes the autoscaler adds for them
    resources = cfg.search.resources_per_trial
    fit = workers_that_fit(resources, nodes)
    if fit < cfg.search.max_concurrent:
        log.warning("search.max_concurrent %d: the cluster holds %d trial workers of %s at once; a cell's batch of "
                    "trials runs %d at a time", cfg.search.max_concurrent, fit, describe(resources), fit)
    return int(min(wanted, fit))


def task_options(resources: Resources) -> dict[str, Any]:
    """`ray.remote` options of a task holding `resources` (`max_calls` cannot be given to `.options`). A GPU task is
    single-use (`max_calls=1`): its process exits when it ends, and with it its CUDA context and the memory its
    allocator cached, on a GPU Ray has handed to someone else (`.options(num_gpus=...)` alone reuses the process)."""
    return {"num_cpus": resources.cpu, "num_gpus": resources.gpu, "max_calls": 1 if resources.gpu > 0 else 0}


def running_cluster(temp_dir: Path = Path("/tmp/ray")) -> str | None:
    """The address of a Ray cluster started on this machine (`ray start --head`) that answers, as
    `ray.init(address="auto")` would find it; None when there is none."""
    try:
        address = (temp_dir / "ray_current_cluster").read_text().strip()
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=1.0):
            return address
    except (OSError, ValueError):
        return None


def on_this_node() -> Any:
    """A scheduling strategy that keeps an actor on this process's node. The run's own actors (the pool's lender,
    the progress board, the cell searchers) hold no resources and could land anywhere; on a worker node that leaves
    the cluster they would take the whole run with them."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
