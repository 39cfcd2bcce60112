"""The peer-batched simulator, its reference executor, and run outputs."""

from ppaia.simulation.engine import METRIC_COLUMNS, RunResult, Simulation, run
from ppaia.simulation.reference import ReferenceSimulation

__all__ = ["METRIC_COLUMNS", "ReferenceSimulation", "RunResult", "Simulation", "run"]
