"""The peer axis as one process holds it: which peers' rows are here, and how per-peer values meet.

The simulator's loop (:class:`ppaia.simulation.engine.Simulation`) is written once against this
interface. :class:`PeerAxis` is the single process that holds every peer, so every method is the
identity (or the computation as it always was); :class:`ppaia.simulation.sharded.ShardedAxis` holds a
block of peers per rank and implements the same methods with ``torch.distributed`` collectives, so the
same loop runs sharded.

Which values cross: each round's cooperation (:meth:`apply_plan`: the rows a mixing step reads from
other ranks), and per evaluated round a few numbers per peer (accuracy, loss, flags) plus sums for the
consensus distance. Training and the rule's plan never cross: every rank draws the plan itself from the
shared seed, and every per-peer draw is keyed by the peer's global id.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ppaia.rules import CooperationRule, RoundContext, RoundPlan, apply_plan
from ppaia.simulation.metrics import consensus_distance

__all__ = ["PeerAxis"]


class PeerAxis:
    """Every peer in this process: per-row values are already every peer's."""

    @property
    def rows(self) -> range | None:
        """The ids of the peers whose rows this process holds (None: all of them)."""
        return None

    @property
    def root(self) -> bool:
        """Whether this process writes the run's outputs."""
        return True

    def local(self, mask: torch.Tensor) -> torch.Tensor:
        """A mask over every peer, cut to this process's rows."""
        return mask

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """This process's rows of `values` ([rows, ...]) made every peer's ([N, ...]), on every process."""
        return values

    def collect(self, values: torch.Tensor) -> torch.Tensor:
        """As :meth:`gather`, but only the root gets every peer's rows (the others keep their own): for
        the final parameters, which would not fit on every process at once."""
        return values

    def peers(self, rows: Sequence[int]) -> list[int]:
        """The ids of every process's `rows` (row indices local to each), sorted: what a collective
        check (divergence) agrees on."""
        return list(rows)

    def texts(self, lines: list[str]) -> list[str]:
        """Every process's `lines` (e.g. privacy events), in peer order."""
        return lines

    def state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A rule's snapshot and the privacy spent (per row, or sparse over every peer), every peer's."""
        return state

    def consensus_distance(self, params: torch.Tensor, honest: torch.Tensor) -> float:
        """(1/H)·Σᵢ‖θᵢ − θ̄‖² over the honest peers; `params` and `honest` are this process's rows."""
        return consensus_distance(params, honest)

    def apply_plan(
        self, rule: CooperationRule, plan: RoundPlan, params: torch.Tensor, ctx: RoundContext
    ) -> torch.Tensor:
        """The round's mixing steps over this process's rows."""
        return apply_plan(rule, plan, params, ctx)
