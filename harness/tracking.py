"""Optional experiment tracking: Ray Tune's own MLflow logger callback, one per cell's search.

Off by default. A config's `tracking: {mlflow: {tracking_uri: ...}}` turns it on; each search trial becomes a run of the tracker
(its hyperparameters, every validation check it reported, its final accuracy), tagged with the cell it belongs to,
so a lab's dashboard shows sdm-bench searches beside its other experiments. The Parquet tables stay the record the
leaderboard is built from: tracking is a view, and never enters the config hash.
"""

from __future__ import annotations

from typing import Any

from harness.config import TrackingConfig
from harness.errors import UserError
from harness.plan import Cell


def cell_tags(cell: Cell) -> dict[str, str]:
    """What a tracker run is tagged with: the cell its trial belongs to."""
    return {"cell_id": cell.cell_id, "defense": cell.defense, "attack": cell.attack, "task": cell.task,
            "task_role": cell.task_role, "budget": str(cell.budget), "seed": str(cell.seed)}


def check_tracking(tracking: TrackingConfig, origin: str) -> None:
    """Refuse, before anything runs, a tracker that is not installed or a local store MLflow will not open.

    A server URI (http...) is not contacted here: MLflow's client retries an unreachable server for minutes.
    """
    for package in tracking.missing_packages():
        raise UserError(f"{origin}: tracking.{package} needs the {package} package: pip install 'sdm-bench[tracking]'")
    uri = tracking.mlflow.tracking_uri if tracking.mlflow is not None else None
    if uri is None or uri.startswith(("http:", "https:", "databricks")):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except (MlflowException, OSError, ImportError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{origin}: tracking.mlflow.tracking_uri '{uri}': {first}") from None


def tracking_callbacks(tracking: TrackingConfig, experiment: str, cell: Cell) -> list[Any]:
    """The Tune logger callbacks of one cell's search (none when tracking is off)."""
    callbacks: list[Any] = []
    if tracking.mlflow is not None:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(
            tracking_uri=tracking.mlflow.tracking_uri,
            experiment_name=tracking.mlflow.experiment_name or experiment,
            tags=cell_tags(cell),
            save_artifact=False,
        ))
    return callbacks
