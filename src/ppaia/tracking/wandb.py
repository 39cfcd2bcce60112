"""``--log wandb``: a Weights & Biases run, offline by default (extra ``ppaia[wandb]``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from ppaia.tracking.base import LOGGERS, RunLogger, TrackedRun


@LOGGERS.register("wandb")
class WandB(RunLogger):
    """A W&B run, offline by default: ./wandb/offline-run-*, uploaded later by `wandb sync` if you wish."""

    packages: ClassVar[tuple[str, ...]] = ("wandb",)
    extra: ClassVar[str] = "wandb"

    project: str = Field(default="ppaia", min_length=1)
    mode: Literal["offline", "online"] = "offline"

    def record(self, run: TrackedRun) -> str:
        """The config, every metric per round (step = round), the summary's numbers, and the output
        folder as a ``ppaia-run`` artifact (referenced in place, not copied: the outputs never change).
        Offline, nothing leaves the machine and no login is needed; the run lands in ``wandb/`` of the
        working directory (or $WANDB_DIR). A run that diverged ends with exit code 1."""
        import wandb

        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, save_code=False)
        tracked = wandb.init(
            project=self.project,
            name=run.name,
            config=run.config,
            mode=self.mode,
            job_type="ppaia-run",
            settings=settings,
            reinit="create_new",  # a sweep records many runs from one process
        )
        try:
            for row in run.history:
                tracked.log(
                    {key: value for key, value in row.items() if key != "round"}, step=int(row["round"])
                )
            tracked.summary.update(run.scalars())
            artifact = wandb.Artifact(re.sub(r"[^\w.-]", "_", run.name), type="ppaia-run")
            for path in run.files():
                artifact.add_file(str(path), policy="immutable")
            tracked.log_artifact(artifact)
        finally:
            tracked.finish(exit_code=1 if run.diverged else 0)
        folder = Path(tracked.dir).parent
        upload = f"; upload: wandb sync {folder}" if self.mode == "offline" else ""
        return f"wandb: {self.mode} run {folder}{upload}"
