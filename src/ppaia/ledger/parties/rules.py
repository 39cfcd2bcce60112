"""The aggregation rules as computed from the chain: what every validator proposes and the auditor checks.

**FLoBC from on-chain votes.** The simulator's rule (:mod:`ppaia.rules.flobc`) scores candidates with
the fixed-point accuracies (10⁻⁶) a committee records; on the ledger they are the numbers the validators
recorded, so any party can recompute the scores. For round r ≥ 1, as of position `cut` in the chain (its
release, or now for a round still open):

- the *contributors* are round r's updates submitted before the first vote on any of them (or the first
  proposal for round r, if none came in time), each trainer's latest one (BAP: a resubmission supersedes
  the trainer's earlier updates of the round, as the simulator's release takes each trainer's latest
  submission), in trainer registration order: the first vote closes the round's barrier for everyone,
  so every party draws the same set from the chain (a later update of round r is ignored). A
  validator that votes before the barrier closes it early: it cannot get an update accepted or rejected
  alone (the quorum still decides), but it can cut the round short of slower trainers, whose updates
  then reach the next round stale rather than being lost (a trainer submits to the first round still
  open). Not closed by a quorum of voters instead: the set would stay open after the first validators
  voted, each would have to keep voting on late arrivals until the quorum's last voter, and a round
  whose quorum of voters never forms would neither close nor release, which the timeout already
  decides;
- each update names the round whose release it trained from, its *base* b ≤ r − 1 (r − 1: fresh;
  older: stale, a straggler's that missed a barrier). Its update is Δᵢ = θᵢ − θ_b, judged and applied
  as θ_{r−1} + Δᵢ, as the simulator rebases a stale update. A base that was not released before the
  update was submitted makes it invalid: every honest validator votes it so (score 0);
- Sᵢ is the mean score of the votes on update i before `cut` (0 if none); G is the mean score of the
  proposals that released round r − 1 (each validator proposes a model with its accuracy of it, so G
  is the committee's accuracy of the model the round started from; with a quorum below V, that of the
  quorum that released it, where the simulator's is every validator's). Both means are the rule's
  (:func:`~ppaia.rules.flobc.fixed_mean`: the exact sum of the integers, divided once);
- update i is *accepted* iff its UpdateAccepted event came before `cut` (the contract counted a quorum of
  valid votes from registered validators);
- scores as the rule: sᵢ ← max(sᵢ + Sᵢ − G, 0) for the contributors, then normalised over every
  registered trainer (uniform if all are 0); they start at 1/T. Weights: sᵢ over the accepted,
  normalised over them (``faithful``: sᵢ · accepted, unnormalised); ``reward_penalty = false`` keeps
  every score at 1/T;
- the new model is θ_{r−1} + Σ wᵢ (θᵢ − θ_bᵢ) over the accepted updates only, in trainer order, by the
  simulator's own arithmetic (:meth:`FLoBC.apply_updates`), as is the scores' (:meth:`FLoBC.rescore`).

**Sync on the wall clock** (:func:`barrier_period`). A validator's barrier for round r opens when it has
adopted release r − 1 and passes at the first vote on a round-r update, or when every registered trainer
submitted one, or:

- BSP: at the timeout (the simulator's period is simulated time; on the wall clock the barrier waits for
  every trainer, so an honest one on a loaded machine is not left out);
- SSP(period): after `period` wall seconds, or, with m of T trainers missing then, period · m / T
  seconds later, with the updates that arrived by then (the simulator's SSP barrier); a straggler's
  update arrives later for the next open round, stale;
- BAP(quota): as BSP, a release once every trainer submitted (at least once). The contract lets each
  trainer submit up to `quota` updates per round (:func:`quota_of`: the config the parties agree on
  carries it, the owner sets it on the registry before the first update, and every party refuses to
  play on a registry whose quota differs); a trainer that submitted while others are still missing
  retrains at once on the newest release and resubmits, until its quota is used, then waits for the
  next release; the one whose update completes the round waits for the release (the simulator's trainer
  submitting at the release instant trains on the new version). Its latest update counts.

A trainer trains from the newest release b and submits for the first round after it whose barrier has
not closed yet and whose quota it has not used, with base b.

The parties thus compute the simulator's numbers with the simulator's operations: with every update
accepted, BSP or BAP (every resubmission in time) and honest parties, the released models equal the
simulator's bit for bit (tested; the simulator on one thread, as every party process runs, for its
batched training to round as each trainer's alone), and every party computing from the same chain gets
the same bits.

**FedAvg** (the publisher flow): the sample-weighted mean of every client's model, computed with the
FedAvg rule's own server step as the simulator runs it (:func:`fedavg_aggregate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ppaia.experiment import Setup
from ppaia.experiment.local import round_context
from ppaia.ledger.parties.chain import LedgerState, UpdateRecord
from ppaia.rules.base import CooperationRule
from ppaia.rules.flobc import FLoBC, fixed_mean
from ppaia.rules.sync import SSP

__all__ = [
    "RoundOutcome",
    "aggregate",
    "barrier_period",
    "closed",
    "contributors_of",
    "fedavg_aggregate",
    "flobc_rounds",
    "quota_of",
    "reference_score",
]


@dataclass(frozen=True)
class RoundOutcome:
    """Round `round`'s committee outcome as computed from the chain (see the module docstring)."""

    round: int
    cut: int
    contributors: tuple[UpdateRecord, ...]
    trainer_index: tuple[int, ...]
    accepted: tuple[bool, ...]
    mean_scores: tuple[float, ...]
    reference: float
    scores: torch.Tensor  # every registered trainer's score after the round (float64)
    weights: torch.Tensor  # per contributor (float64; 0 for the rejected)

    @property
    def accepted_updates(self) -> list[UpdateRecord]:
        return [u for u, ok in zip(self.contributors, self.accepted, strict=True) if ok]

    @property
    def accepted_weights(self) -> torch.Tensor:
        return self.weights[torch.tensor(self.accepted, dtype=torch.bool)]


def _closing(state: LedgerState, round_: int) -> int | None:
    """The seq of the event that closed round `round_`'s barrier: the first vote on one of its updates,
    or the first proposal for it (a round none of whose updates came in time has no vote)."""
    votes = [vote.seq for u in state.updates_of(round_) for vote in u.votes]
    return min([*votes, *(p.seq for p in state.proposals_of(round_))], default=None)


def contributors_of(state: LedgerState, round_: int, cut: int | None = None) -> list[UpdateRecord]:
    """Round `round_`'s updates submitted before its barrier closed (before `cut`, default now, if it has
    not closed), each trainer's latest, in trainer order."""
    close = _closing(state, round_)
    close = (state.seq if cut is None else cut) if close is None else close
    latest: dict[str, UpdateRecord] = {}  # a trainer's place is its first update's: trainer order
    for update in state.updates_of(round_):
        if update.seq < close:
            latest[update.trainer] = update
    return list(latest.values())


def closed(state: LedgerState, round_: int) -> bool:
    """Whether round `round_`'s barrier has closed: a vote on one of its updates or a proposal for it is
    on chain."""
    return _closing(state, round_) is not None


def barrier_period(rule: FLoBC) -> float | None:
    """SSP's period, the wall seconds a validator's barrier waits before its extension; None for BSP and
    BAP, whose barrier waits for every trainer (bounded by the timeout)."""
    scheme = rule.scheme()
    return scheme.period if isinstance(scheme, SSP) else None


def quota_of(rule: CooperationRule) -> int:
    """Updates a trainer may submit per round on the registry: FLoBC's sync scheme's submissions between
    releases (BAP: its quota), 1 for any other rule (the publisher flow)."""
    return rule.scheme().submissions if isinstance(rule, FLoBC) else 1


def _mean(values: Sequence[int]) -> float:
    """The mean of on-chain fixed-point scores as the rule takes it (0 over none)."""
    return float(fixed_mean(torch.tensor(values, dtype=torch.long)))


def reference_score(state: LedgerState, round_: int) -> float:
    """G for round `round_`: the mean score of the proposals that released round `round_` − 1."""
    release = state.release_of(round_ - 1)
    if release is None:
        raise ValueError(f"round {round_ - 1} was not released")
    scores = [
        p.score for p in state.proposals_of(round_ - 1) if p.digest == release.digest and p.seq < release.seq
    ]
    return _mean(scores)


def flobc_rounds(state: LedgerState, rule: FLoBC, open_round: int | None = None) -> list[RoundOutcome]:
    """Every released round's outcome in order, then `open_round`'s as of now if it is given."""
    n_trainers = len(state.trainers)
    index = {trainer: i for i, trainer in enumerate(state.trainers)}
    scores = torch.full((n_trainers,), 1.0 / n_trainers, dtype=torch.float64)
    rounds = [(r.round, r.seq) for r in state.releases if r.round >= 1]
    if open_round is not None:
        rounds.append((open_round, state.seq))
    outcomes = []
    for round_, cut in rounds:
        contributors = tuple(contributors_of(state, round_, cut))
        idx = torch.tensor([index[u.trainer] for u in contributors], dtype=torch.long)
        accepted = torch.tensor([u.accepted_before(cut) for u in contributors], dtype=torch.bool)
        means = [_mean([v.score for v in u.votes_before(cut)]) for u in contributors]
        mean_scores = torch.tensor(means, dtype=torch.float64)
        reference = reference_score(state, round_)
        scores, weights = rule.rescore(scores, idx, mean_scores - reference, accepted)
        outcomes.append(
            RoundOutcome(
                round_,
                cut,
                contributors,
                tuple(idx.tolist()),
                tuple(accepted.tolist()),
                tuple(mean_scores.tolist()),
                reference,
                scores,
                weights,
            )
        )
    return outcomes


def aggregate(
    model: torch.Tensor,
    trained: Sequence[torch.Tensor],
    weights: torch.Tensor,
    bases: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """θ + Σ wᵢ (θᵢ − θ_bᵢ) over the accepted updates `trained` (flat, in trainer order) with `weights`,
    each rebased from the model it trained from (`bases`; default θ, every update fresh), with the
    simulator's float operations (:meth:`FLoBC.apply_updates`)."""
    deltas = model.new_empty(0, model.numel())
    if len(trained):
        deltas = torch.stack(list(trained)) - (model if bases is None else torch.stack(list(bases)))
    return FLoBC.apply_updates(model, deltas, weights)


def fedavg_aggregate(view: Setup, round_: int, models: Sequence[torch.Tensor]) -> torch.Tensor:
    """The FedAvg server's step over every client's model (client order), as the simulator runs it."""
    fedavg = view.rule
    ctx = round_context(view, round_)
    row = fedavg.plan(ctx).steps[0].for_peer(0)
    return fedavg.combine(torch.stack([models[int(i)] for i in row.sender_ids]), row, ctx)[0]
