"""Peers' shares of a config's dataset as files of their own, for runs whose peers bring their own data.

A local open swarm (``ppaia launch --open``) and a ledger system (``ppaia ledger launch``) start peers that
each read only their own data file. Writing peer i's share of the simulator's split
(:func:`~ppaia.experiment.setup.parts_of`) into it keeps such a run equal to the simulator's:
:meth:`Setup.own <ppaia.experiment.setup.Setup.own>` on that file rebuilds exactly peer i's slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import overload

import numpy as np
import torch

from ppaia.config import ConfigError, ExperimentConfig
from ppaia.experiment.setup import parts_of

__all__ = ["write_shares"]


@overload
def write_shares(
    config: ExperimentConfig, shares: Sequence[tuple[int, Path]], test: Path
) -> tuple[list[str], str]: ...
@overload
def write_shares(
    config: ExperimentConfig, shares: Sequence[tuple[int, Path]], test: Path | None
) -> tuple[list[str], str | None]: ...


def write_shares(
    config: ExperimentConfig, shares: Sequence[tuple[int, Path]], test: Path | None
) -> tuple[list[str], str | None]:
    """Write each ``(peer, folder)`` of `shares`: peer's share of the config's split as
    ``folder/data.npz``, and the config's test set to `test` unless it is None. Returns the ``npz`` data
    specs (in `shares`' order) and the test spec (None without `test`). The number of classes is written
    into the specs, so a share lacking a class still builds the run's model."""
    if config.rule.pooled:
        raise ConfigError(f"rule {config.rule.name!r} pools all data on one model; it has no peers")
    dataset = config.dataset.load(config.seed)
    classes = dataset.n_classes
    test_spec = None
    if test is not None:
        test.parent.mkdir(parents=True, exist_ok=True)
        np.savez(test, x=dataset.x_test.numpy(), y=dataset.y_test.numpy())
        test_spec = f"npz(path={str(test)!r}, classes={classes})"
    parts, _, _ = parts_of(config, dataset, None, None)
    specs = []
    for peer, folder in shares:
        index = torch.as_tensor(parts[peer], dtype=torch.long)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "data.npz"
        np.savez(path, x=dataset.x_train[index].numpy(), y=dataset.y_train[index].numpy())
        specs.append(f"npz(path={str(path)!r}, classes={classes})")
    return specs, test_spec
