"""Experiment tracking: ``--log tensorboard|mlflow|wandb`` records a run in that tracker (see
:mod:`ppaia.tracking.base`). Importing this package imports none of the trackers' packages."""

from ppaia.tracking import mlflow, tensorboard, wandb  # noqa: F401  (register the loggers)
from ppaia.tracking.base import LOGGERS, RunLogger, TrackedRun, TrackingError, open_loggers, record_run

__all__ = ["LOGGERS", "RunLogger", "TrackedRun", "TrackingError", "open_loggers", "record_run"]
