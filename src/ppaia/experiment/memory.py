"""Memory a run needs, counted from its config before anything big is allocated.

Allocating first fails late and badly: torch's allocator raises, numpy raises its own error, and with
Linux's overcommit a huge allocation may even succeed until the first write, when the kernel kills the
process. So the big arrays of a run are counted beforehand: the dataset (before loading it), then every
peer's parameters in the copies a round holds at once, plus one batch's activations (on a model built on
the ``meta`` device, which has shapes but no storage). The counts are lower bounds, so a run refused here
could never have fit; the message names the fields that drive the need.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ppaia.config import ConfigError, ExperimentConfig
from ppaia.learning.layout import ParamLayout
from ppaia.learning.local import activation_size

__all__ = ["Need", "available_memory", "check_fits", "dataset_need", "training_needs"]

FLOAT = 4  # bytes of a float32 value: parameters, gradients, activations
BASE_COPIES = 3  # [N, D] tensors a round surely holds at once: the peers' start, the working copy, gradients
FISHER_DRAW = 20  # bytes per EWC Fisher sample and peer: a float64 position, an int64 id, a float32 uniform
SIGNIFICANT = 0.1  # a part this share of the total or more names its fields in the message


@dataclass(frozen=True)
class Need:
    """One big allocation: the config fields that size it, what it holds, and its bytes."""

    fields: tuple[str, ...]
    what: str
    bytes: int


def available_memory() -> int:
    """Bytes the system can still give this process: Linux's MemAvailable, else all physical memory."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _size(count: int) -> str:
    return f"{count / 2**30:,.3g} GiB"


def check_fits(needs: list[Need], available: int | None = None) -> None:
    """Raise a ConfigError naming the driving fields if `needs` add up to more than is available."""
    total = sum(need.bytes for need in needs)
    available = available_memory() if available is None else available
    if total <= available:
        return
    parts = sorted(needs, key=lambda need: need.bytes, reverse=True)
    fields = dict.fromkeys(f for need in parts if need.bytes >= SIGNIFICANT * total for f in need.fields)
    detail = "; ".join(f"{need.what}: {_size(need.bytes)}" for need in parts if need.bytes)
    raise ConfigError(
        f"{', '.join(fields)}: the run needs at least {_size(total)} of memory but {_size(available)} is "
        f"available ({detail})"
    )


def dataset_need(config: ExperimentConfig) -> Need:
    """The dataset's memory while it loads (0 for fixed files, which are read as they are)."""
    return Need(("dataset",), f"dataset {config.dataset.label()}", config.dataset.load_bytes())


def _sized(build: Callable[[], nn.Module], input_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(parameters, activation values per sample) of the model `build` makes, built on the meta device;
    None when it cannot be built there (a user factory may need real tensors): the real build decides."""
    try:
        with torch.device("meta"):
            model = build()
        return ParamLayout.of(model).size, activation_size(model, input_shape)
    except Exception:  # whatever is wrong, the real build right after this reports it
        return None


def training_needs(
    config: ExperimentConfig,
    build: Callable[[], nn.Module],
    input_shape: tuple[int, ...],
    n_peers: int,
    largest_part: int,
) -> list[Need]:
    """Peers' parameters in BASE_COPIES plus the optimizer's state, one batch's activations, DP-SGD's
    per-sample gradients and EWC's Fisher draws, for a model that `build` makes."""
    sized = _sized(build, input_shape)
    if sized is None:
        return []
    params, per_sample = sized
    state = config.optimizer.init_state(torch.empty(1, params, device="meta")).values()
    copies = BASE_COPIES + sum(1 for tensor in state if tensor.shape[-1] == params)
    batch = min(config.batch_size, largest_part)
    label = config.model.label()
    needs = [
        Need(
            ("model", "peers"),
            f"{n_peers} peers × {params:,} parameters of {label} × {copies} copies",
            n_peers * params * copies * FLOAT,
        ),
        Need(("model", "batch_size"), f"activations of a batch of {batch}", batch * per_sample * FLOAT),
    ]
    if getattr(config.privacy, "record_level", False):
        needs.append(
            Need(
                ("privacy", "batch_size"), f"per-sample gradients of {batch} samples", batch * params * FLOAT
            )
        )
    if config.ewc is not None:
        needs.append(
            Need(
                ("ewc.samples", "peers"),
                f"Fisher draws of {config.ewc.samples:,} samples × {n_peers} peers",
                config.ewc.samples * n_peers * FISHER_DRAW,
            )
        )
    return needs
