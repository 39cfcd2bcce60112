"""Run folders for the report's tests, each written once per session by the simulator as `ppaia run`
writes them (without images: a report does not read them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ppaia import ExperimentConfig
from ppaia.simulation import Simulation
from ppaia.simulation.report import write_outputs


def simulate(folder: Path, **options) -> Path:
    config = ExperimentConfig(
        peers=5,
        rounds=3,
        holdout=0.2,
        dataset="synthetic(samples=200, test_samples=50, features=6, classes=3)",
        **options,
    )
    return write_outputs(Simulation(config).run(), folder, plots=False)


@pytest.fixture(scope="session")
def run_folder(tmp_path_factory) -> Path:
    """A learned-trust run of 5 peers, 3 rounds."""
    return simulate(tmp_path_factory.mktemp("run") / "r", rule="learned_trust(partners=2)")


@pytest.fixture(scope="session")
def private_folder(tmp_path_factory) -> Path:
    """A run with a DP budget: the ε each peer spent, per round."""
    return simulate(tmp_path_factory.mktemp("run") / "p", privacy="update_dp(clip=2, epsilon=8)")
