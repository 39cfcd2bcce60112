"""Continual learning: data arrives in tasks, EWC anchors against forgetting, per-task metrics."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ppaia.registry import fits_int64

__all__ = ["EWCSettings", "TaskSchedule", "forgetting"]


class EWCSettings(BaseModel):
    """Elastic Weight Consolidation: local loss + (strength/2)·Σⱼ Fⱼ(θⱼ − θ*ⱼ)²."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    _fits_int64 = field_validator("*")(fits_int64)

    strength: float = Field(default=25.0, ge=0, description="λ (the original used 25)")
    samples: int = Field(
        default=200, ge=1, description="S samples per Fisher estimate (the original used 200)"
    )
    fisher: Literal["sampled", "empirical"] = Field(
        default="sampled", description="labels drawn from the model's predictions, or the true labels"
    )
    anchor: Literal["round", "task"] = Field(
        default="round",
        description="θ*: the model at the start of each round, or at the end of the last task",
    )


class TaskSchedule:
    """Which classes each peer trains on in each round: `tasks` split the rounds evenly, in order."""

    def __init__(self, tasks: list[list[int]] | None, rounds: int) -> None:
        self.tasks = tasks or []
        self.rounds = rounds

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def task_of(self, round_: int) -> int:
        """The task trained in `round_` (1-based rounds; 0 when there are no tasks)."""
        if not self.tasks:
            return 0
        return min(len(self.tasks) - 1, (max(round_, 1) - 1) * len(self.tasks) // self.rounds)

    def starts_task(self, round_: int) -> bool:
        return round_ > 1 and self.task_of(round_) != self.task_of(round_ - 1)

    def restrict(self, parts: list[np.ndarray], labels: np.ndarray, task: int) -> list[np.ndarray]:
        """Each peer's samples whose label belongs to `task`."""
        return [part[np.isin(labels[part], self.tasks[task])] for part in parts]

    def test_masks(self, labels: torch.Tensor) -> list[torch.Tensor]:
        """For each task, which test samples belong to it."""
        return [torch.isin(labels, torch.tensor(task)) for task in self.tasks]


def forgetting(history: list[dict[str, float]], current_task: int) -> float:
    """Mean over finished tasks of (best accuracy seen on the task − accuracy on it now); 0 before any."""
    if current_task == 0 or not history:
        return 0.0
    drops = []
    for task in range(current_task):
        column = f"task{task}_acc"
        drops.append(max(row[column] for row in history) - history[-1][column])
    return float(np.mean(drops))
