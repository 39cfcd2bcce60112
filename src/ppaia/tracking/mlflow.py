"""``--log mlflow``: an MLflow run in a local store (extra ``ppaia[mlflow]``: mlflow-skinny, and SQLAlchemy
and Alembic for MLflow's local SQLite store)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from pydantic import Field

from ppaia.tracking.base import LOGGERS, RunLogger, TrackedRun

PARAM_LIMIT = 6000  # characters MLflow keeps of a parameter's value


@contextmanager
def _quiet() -> Iterator[None]:
    """MLflow and Alembic log each database migration at INFO on first use; the run's console is ours."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@LOGGERS.register("mlflow")
class MLflow(RunLogger):
    """An MLflow run: config, metrics per round, outputs (local store: ./mlflow.db, ./mlruns)."""

    packages: ClassVar[tuple[str, ...]] = ("mlflow", "sqlalchemy", "alembic")
    extra: ClassVar[str] = "mlflow"

    experiment: str = Field(default="ppaia", min_length=1)
    tracking_uri: str | None = Field(
        default=None, min_length=1
    )  # None: MLflow's own ($MLFLOW_TRACKING_URI, else local)

    def record(self, run: TrackedRun) -> str:
        """One MLflow run named after the run folder: the flattened config as parameters, every metric
        per round (step = round), provenance as tags, every output file as an artifact; a run that
        diverged ends FAILED. Without `tracking_uri`, MLflow's default applies: $MLFLOW_TRACKING_URI, or
        the local store ``mlflow.db`` with artifacts in ``mlruns/`` of the working directory, which
        ``mlflow ui`` started there shows."""
        import mlflow
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient

        with _quiet():
            uri = self.tracking_uri or mlflow.get_tracking_uri()
            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(self.experiment)
            experiment_id = (
                experiment.experiment_id if experiment else client.create_experiment(self.experiment)
            )
            provenance = run.summary.get("provenance") or {}
            tags = {"ppaia.out": str(run.out), "ppaia.command": provenance.get("command", "")}
            if provenance.get("git"):
                tags["mlflow.source.git.commit"] = provenance["git"]["commit"]
            tracked = client.create_run(experiment_id, run_name=run.name, tags=tags)
            run_id = tracked.info.run_id
            now = int(time.time() * 1000)
            metrics = [
                Metric(key, value, now, int(row["round"]))
                for row in run.history
                for key, value in row.items()
                if key != "round"
            ]
            params = [Param(key, value[:PARAM_LIMIT]) for key, value in run.params().items()]
            client.log_batch(
                run_id, metrics=metrics, params=params, tags=[RunTag("ppaia.diverged", str(run.diverged))]
            )
            for path in run.files():
                client.log_artifact(run_id, str(path))
            client.set_terminated(run_id, status="FAILED" if run.diverged else "FINISHED")
        return f"mlflow: run {run_id} in experiment {self.experiment!r} at {uri}"
