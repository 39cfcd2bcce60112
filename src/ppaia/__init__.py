"""PPAIA ("Papaya"): serverless federated learning — peers train locally and cooperate without a server.

The ledger (an EVM contract recording model hashes, votes and scores) is the subpackage ``ppaia.ledger``;
real networked peers (DHT discovery, signed model exchange) are ``ppaia.network``.

Quick use::

    import ppaia
    result = ppaia.run({"peers": 32, "rule": "gossip", "topology": "torus"})
    print(result.final["acc_mean"])
"""

from ppaia.attacks import ATTACKS
from ppaia.config import ConfigError, ExperimentConfig, apply_overrides, load_config
from ppaia.data import (
    DATASETS,
    PARTITIONERS,
    DataError,
    Dataset,
    PartitionError,
    data_source,
    label_histogram,
)
from ppaia.experiment import OwnData, Setup
from ppaia.learning import INIT_POLICIES, MODELS, OPTIMIZERS, ModelError, ParamLayout
from ppaia.privacy import PRIVACY
from ppaia.registry import Component, Registry, SpecError
from ppaia.rules import RULES, CooperationRule, RoundContext, RoundPlan, apply_plan, apply_step_per_peer
from ppaia.simulation import ReferenceSimulation, RunResult, Simulation, run
from ppaia.simulation.report import write_outputs
from ppaia.simulation.sweep import SweepResult, sweep, sweep_runs
from ppaia.topology import MIXINGS, TOPOLOGIES, Mixing, PeerGraph, TopologyError, build_graph, mixing_step

__version__ = "0.1.0"

__all__ = [
    "ATTACKS",
    "DATASETS",
    "INIT_POLICIES",
    "MIXINGS",
    "MODELS",
    "OPTIMIZERS",
    "PARTITIONERS",
    "PRIVACY",
    "RULES",
    "TOPOLOGIES",
    "Component",
    "ConfigError",
    "CooperationRule",
    "DataError",
    "Dataset",
    "ExperimentConfig",
    "Mixing",
    "ModelError",
    "OwnData",
    "ParamLayout",
    "PartitionError",
    "PeerGraph",
    "ReferenceSimulation",
    "Registry",
    "RoundContext",
    "RoundPlan",
    "RunResult",
    "Setup",
    "Simulation",
    "SpecError",
    "SweepResult",
    "TopologyError",
    "apply_overrides",
    "apply_plan",
    "apply_step_per_peer",
    "build_graph",
    "data_source",
    "label_histogram",
    "load_config",
    "mixing_step",
    "run",
    "sweep",
    "sweep_runs",
    "write_outputs",
]
