"""Experiment set-up: what every executor (simulator, networked peer, ledger party) builds from a config."""

from ppaia.experiment.setup import OwnData, Setup, config_field

__all__ = ["OwnData", "Setup", "config_field"]
