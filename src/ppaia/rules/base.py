"""The cooperation-rule API: one algorithm, written once over a leading peer axis.

A rule does two things each round:

* :meth:`CooperationRule.plan` decides, from the topology and the round's randomness, who trains and
  which mixing steps happen (who listens to whom, with which weights);
* :meth:`CooperationRule.combine` computes a step's result from stacked parameters ``[S, D]``.

The simulator calls ``combine`` once per step with every peer's parameters stacked; a single networked
peer calls the very same ``combine`` with its own parameters plus those it received, using its own row of
the step (:meth:`Mixing.for_peer`). :func:`apply_step_per_peer` is that per-peer form, used by the
reference executor and the parity tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ppaia.learning.holdout import PeerLearning
from ppaia.registry import Component, Registry
from ppaia.topology.graphs import PeerGraph
from ppaia.topology.mixing import Mixing, MixingWeights

__all__ = [
    "MAX_PLAN_STEPS",
    "RULES",
    "CooperationRule",
    "RoundContext",
    "RoundPlan",
    "RuleStateError",
    "apply_plan",
    "apply_step_per_peer",
    "checked_tensor",
    "names_text",
    "position_of",
    "row_chunks",
]

SHOWN_CHARS = 40  # characters quoted from a (possibly hostile) name in an error message


class RuleStateError(ValueError):
    """A rule state that cannot be loaded: another rule's or run's, damaged, or hostile."""


@dataclass(frozen=True)
class RoundContext:
    """What a rule may look at when planning a round."""

    round: int
    graph: PeerGraph
    n_samples: torch.Tensor
    mixing: MixingWeights
    link_up: float
    generator: torch.Generator
    learner: PeerLearning | None = None  # the model and each peer's held-out data, for rules that learn

    @property
    def n_peers(self) -> int:
        return self.graph.n

    def live_graph(self) -> PeerGraph:
        """The links that are up this round (each with probability `link_up`)."""
        return self.graph.live(self.link_up, self.generator)


# A round's plan holds each of its mixing steps (gossip: each pairwise averaging) and runs them one by one:
# a count option above this per round could not be held or run (2^63 steps is a MemoryError, 1e8 an hour).
MAX_PLAN_STEPS = 2**20


@dataclass(frozen=True)
class RoundPlan:
    """Who trains this round (None: everybody), the mixing steps in order, and models sent.

    `info` holds extra per-round metrics the rule reports (e.g. ``sim_time`` on a simulated clock); the
    simulator adds them to the round's row of ``metrics.csv``.
    """

    trainers: torch.Tensor | None = None
    steps: list[Mixing] = field(default_factory=list)
    transfers: int | None = None
    info: dict[str, float] = field(default_factory=dict)

    def models_sent(self) -> int:
        """Model transfers this round: as the rule counted them, else one per off-diagonal step entry."""
        if self.transfers is not None:
            return self.transfers
        return sum(step.transfers() for step in self.steps)


class CooperationRule(Component):
    """Base class: override :meth:`plan` (and :meth:`combine` for a non-linear rule)."""

    pooled: ClassVar[bool] = False  # True: all data on one model (the centralized baseline)
    uses_topology: ClassVar[bool] = True  # False: the topology and mixing settings are ignored
    reports_local_phase: ClassVar[bool] = False  # True: also evaluate right after local training
    broadcasts_initial: ClassVar[bool] = False  # True: every peer starts from peer 0's initial model
    # options that only change how a peer weighs what it received: peers need not agree on them
    local_options: ClassVar[frozenset[str]] = frozenset()

    def check(self, n_peers: int) -> None:
        """Raise ValueError (naming the option) if the rule cannot run with `n_peers` peers."""

    def reset(self, n_peers: int, rows: torch.Tensor | None = None) -> None:
        """Forget state learned in an earlier run (called when a run starts). `rows` are the sorted ids
        of the peers this executor plays (None: all of them; a networked peer: itself): state kept per
        receiver is kept for those only, so a peer's memory does not grow with the swarm."""

    def reads_sample_counts(self, mixing: MixingWeights) -> bool:
        """Whether this rule's plans weigh peers by their training-sample counts (with `mixing` as the
        config's mixing weights): a peer with data of its own does not know the others' counts."""
        return self.uses_topology and mixing.name == "data_size"

    def plan(self, ctx: RoundContext) -> RoundPlan:
        """Who trains and which mixing steps run this round."""
        return RoundPlan()

    def prepare(self, params: torch.Tensor, plan: RoundPlan, ctx: RoundContext) -> torch.Tensor:
        """The parameters the peers start this round's local training from (default: their own).

        A rule whose trainers may work from an older model (FLoBC's stale updates) puts it in place here.
        """
        return params

    def snapshot(self) -> dict[str, torch.Tensor]:
        """State worth recording at each evaluated round (e.g. a learned trust matrix), by name."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything the rule has learned so far, as named tensors (copies; {} for a rule that learns
        nothing). With :meth:`load_state_dict` a run stops and continues exactly where it was, as Opacus'
        accountants and torch modules save and restore theirs."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Continue from `state` (a :meth:`state_dict`, taken between rounds). RuleStateError for a state
        this rule could not have saved; the rule is then left as it was."""
        if state:
            raise RuleStateError(f"rule {self.name!r} learns no state; got {names_text(state)}")

    def peer_state(self, peer: int, ids: Sequence[str | None]) -> dict[str, float]:
        """Peer `peer`'s part of the learned state, keyed by the ids of the peers it concerns (`ids[j]` is
        the id of position j, None where not known now): what a networked peer, which plays one row,
        keeps in its checkpoint. Ids rather than positions, so that it loads after a restart in which
        positions changed. {} for a rule that learns nothing."""
        return {}

    def load_peer_state(self, peer: int, ids: Sequence[str | None], state: Mapping[str, float]) -> None:
        """Make `state` (a :meth:`peer_state`) peer `peer`'s part again, with today's positions `ids`.
        RuleStateError for a state this rule could not have saved; the rule is then left as it was."""
        if state:
            raise RuleStateError(f"rule {self.name!r} learns no state; got {names_text(state)}")

    def linear(self) -> bool:
        """Whether :meth:`combine` is the step's weighted sum (true of every rule that keeps the default):
        a run sharded over ranks may then add up each rank's share of a row instead of gathering it."""
        return type(self).combine is CooperationRule.combine

    def combine(self, params: torch.Tensor, step: Mixing, ctx: RoundContext) -> torch.Tensor:
        """The step's result rows from stacked parameters; linear averaging by default.

        `params` are the parameters the step reads (all peers in the simulator, the received ones in a
        single peer: see ``step.sender_ids``); a rule that learns or keeps per-peer state reads the ids of
        the receivers (``step.receiver_ids()``) and senders (``step.sender_peers()``).
        """
        return step.weighted_sum(params)


RULES: Registry[CooperationRule] = Registry("rule")


def names_text(names: Mapping[str, Any] | Sequence[str]) -> str:
    """A few of `names` (clipped: they may come from a hostile file) and how many there are."""
    shown = [repr(str(name)[:SHOWN_CHARS]) for name in list(names)[:5]]
    return f"{', '.join(shown)}{', ...' if len(names) > 5 else ''} ({len(names)} entries)"


def checked_tensor(rule: str, name: str, value: object, dtype: torch.dtype, dim: int) -> torch.Tensor:
    """`value` if it is a dense `dim`-dimensional tensor of `dtype` (what a saved state holds under
    `name`); RuleStateError naming the rule and the entry otherwise."""
    if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
        raise RuleStateError(f"rule {rule!r}: state {name!r} is {type(value).__name__}, not a dense tensor")
    if value.dtype != dtype or value.dim() != dim:
        raise RuleStateError(
            f"rule {rule!r}: state {name!r} is a {value.dim()}-d {value.dtype} tensor, "
            f"expected {dim}-d {dtype}"
        )
    return value.detach().cpu()


def position_of(ids: Sequence[str | None], peer: int) -> dict[str, int]:
    """Each known id's position in `ids`; RuleStateError if an id repeats or `peer` is not a position
    with a known id (a peer knows its own)."""
    if not 0 <= peer < len(ids) or ids[peer] is None:
        raise RuleStateError(f"peer {peer} is not one of the {len(ids)} positions given, with its id")
    positions = {peer_id: j for j, peer_id in enumerate(ids) if peer_id is not None}
    if len(positions) < sum(peer_id is not None for peer_id in ids):
        raise RuleStateError("the peer ids given repeat an id")
    return positions


def row_chunks(step: Mixing, width: int, elements: int) -> list[slice]:
    """The step's result rows cut into consecutive slices so that rows × (widest row) × `width` stays
    under `elements`: what a rule that gathers each row's senders side by side holds at once."""
    widest = int(torch.bincount(step.rows, minlength=step.n_rows).max()) if step.rows.numel() else 1
    chunk = max(1, elements // max(1, widest * width))
    return [slice(start, min(start + chunk, step.n_rows)) for start in range(0, step.n_rows, chunk)]


def apply_plan(
    rule: CooperationRule, plan: RoundPlan, params: torch.Tensor, ctx: RoundContext
) -> torch.Tensor:
    """Batched executor: run the plan's steps for all peers at once."""
    for step in plan.steps:
        params = step.write(params, rule.combine(params, step, ctx))
    return params


def apply_step_per_peer(
    rule: CooperationRule, step: Mixing, models: list[torch.Tensor], ctx: RoundContext
) -> list[torch.Tensor]:
    """Per-peer executor: each peer combines its own row over the models it received.

    `models` holds each peer's flat parameters; the result is a new list (peers the step does not write
    to keep theirs). This is exactly what a networked peer does with the parameters it fetched.
    """
    updated = list(models)
    for peer in range(len(models)):
        own_row = step.for_peer(peer)
        if own_row is not None:
            received = torch.stack([models[s] for s in own_row.sender_ids.tolist()])
            updated[peer] = rule.combine(received, own_row, ctx)[0]
    return updated
