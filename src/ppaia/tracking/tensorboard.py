"""``--log tensorboard``: TensorBoard event files in the run folder (extra ``ppaia[tensorboard]``)."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np

from ppaia.tracking.base import LOGGERS, RunLogger, TrackedRun


def _fenced(text: str, language: str) -> str:
    """Text shown verbatim by TensorBoard's text tab, which renders Markdown."""
    return f"```{language}\n{text}\n```"


@LOGGERS.register("tensorboard")
class TensorBoard(RunLogger):
    """TensorBoard event files in <run>/tensorboard: `tensorboard --logdir runs` compares the runs."""

    packages: ClassVar[tuple[str, ...]] = ("tensorboard",)
    extra: ClassVar[str] = "tensorboard"

    def record(self, run: TrackedRun) -> str:
        """Each metric per round as a scalar (step = round), the config and summary as text, the plots as
        images and the peers' final accuracies as a histogram."""
        from matplotlib.image import imread
        from torch.utils.tensorboard import SummaryWriter

        folder = run.out / "tensorboard"
        with SummaryWriter(log_dir=str(folder)) as writer:
            for row in run.history:
                step = int(row["round"])
                for key, value in row.items():
                    if key != "round":
                        writer.add_scalar(key, value, global_step=step)
            writer.add_text("config", _fenced((run.out / "config.toml").read_text(), "toml"))
            writer.add_text("summary", _fenced(json.dumps(run.summary, indent=2), "json"))
            for image in (path for path in run.files() if path.suffix == ".png"):
                writer.add_image(image.stem, imread(image), dataformats="HWC")
            if run.summary.get("peer_accuracy"):
                writer.add_histogram("peer_accuracy", np.asarray(run.summary["peer_accuracy"]))
        return f"tensorboard: {folder} (view: tensorboard --logdir {run.out.parent})"
