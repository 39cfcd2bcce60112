"""The aggregation rules as computed from the chain: what every validator proposes and the auditor checks.

**FLoBC from on-chain votes.** The simulator's rule (:mod:`ppaia.rules.flobc`) scores candidates with
exact float accuracies; on the ledger the same quantities are the fixed-point numbers the validators
recorded, so any party can recompute them. For round r ≥ 1, as of position `cut` in the chain (its
release, or now for a round still open):

- the *contributors* are round r's updates submitted before the first vote on any of them, in trainer
  registration order: the first vote closes the round's barrier for everyone, so every party draws the
  same set from the chain (a later update of round r is ignored). A validator that votes before the
  barrier closes it early: it cannot get an update accepted or rejected alone (the quorum still decides),
  but it can cut the round short of slower trainers; closing the barrier by a quorum would need a
  contract function for it;
- Sᵢ is the mean score of the votes on update i before `cut` (0 if none); G is the mean score of the
  proposals that released round r − 1 (each validator proposes a model with its accuracy of it, so G
  is the committee's accuracy of the model the round started from);
- update i is *accepted* iff its UpdateAccepted event came before `cut` (the contract counted a quorum of
  valid votes from registered validators);
- scores as the rule: sᵢ ← max(sᵢ + Sᵢ − G, 0) for the contributors, then normalised over every
  registered trainer (uniform if all are 0); they start at 1/T. Weights: sᵢ over the accepted,
  normalised over them (``faithful``: sᵢ · accepted, unnormalised); ``reward_penalty = false`` keeps
  every score at 1/T;
- the new model is θ_{r−1} + Σ wᵢ (θᵢ − θ_{r−1}) over the accepted updates only, in trainer order, with
  the same float operations as the simulator (an einsum in the model's dtype).

The fixed-point rounding (10⁻⁶) of scores is the one difference from the simulator's arithmetic; with
every update accepted the released models equal the simulator's to within float rounding (tested), and
every party computing from the same chain gets the same bits.

**FedAvg** (the publisher flow): the sample-weighted mean of every client's model, computed with the
FedAvg rule's own server step as the simulator runs it (:func:`fedavg_aggregate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ppaia.experiment import Setup
from ppaia.experiment.local import round_context
from ppaia.ledger.client import SCORE_SCALE
from ppaia.ledger.parties.chain import LedgerState, UpdateRecord
from ppaia.rules.flobc import FLoBC

__all__ = [
    "RoundOutcome",
    "aggregate",
    "contributors_of",
    "fedavg_aggregate",
    "flobc_rounds",
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


def contributors_of(state: LedgerState, round_: int, cut: int | None = None) -> list[UpdateRecord]:
    """Round `round_`'s updates submitted before the first vote on any of them (before `cut`, default
    now, if there was none)."""
    updates = state.updates_of(round_)
    close = min((vote.seq for u in updates for vote in u.votes), default=state.seq if cut is None else cut)
    return [u for u in updates if u.seq < close]


def _mean(values: Sequence[int]) -> float:
    return sum(values) / len(values) if values else 0.0


def reference_score(state: LedgerState, round_: int) -> float:
    """G for round `round_`: the mean score of the proposals that released round `round_` − 1."""
    release = state.release_of(round_ - 1)
    if release is None:
        raise ValueError(f"round {round_ - 1} was not released")
    scores = [
        p.score for p in state.proposals_of(round_ - 1) if p.digest == release.digest and p.seq < release.seq
    ]
    return sum(scores) / len(scores) / SCORE_SCALE


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
        mean_scores = torch.tensor(means, dtype=torch.float64) / SCORE_SCALE
        reference = reference_score(state, round_)
        start = scores
        scores = start.clone()
        if rule.reward_penalty and len(contributors):
            scores[idx] = (start[idx] + (mean_scores - reference)).clamp(min=0)
        total = scores.sum()
        scores = scores / total if bool(total > 0) else torch.full_like(scores, 1.0 / n_trainers)
        own = scores[idx]
        if rule.faithful:
            weights = own * accepted
        else:
            mass = (own * accepted).sum()
            weights = own * accepted / mass if bool(mass > 0) else torch.zeros_like(own)
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


def aggregate(base: torch.Tensor, trained: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """θ + Σ wᵢ (θᵢ − θ) over the accepted updates `trained` (flat, in trainer order) with `weights`."""
    if not len(trained):
        return base.clone()
    deltas = torch.stack(list(trained)) - base
    return base + torch.einsum("t,td->d", weights.to(base.dtype), deltas)


def fedavg_aggregate(view: Setup, round_: int, models: Sequence[torch.Tensor]) -> torch.Tensor:
    """The FedAvg server's step over every client's model (client order), as the simulator runs it."""
    fedavg = view.rule
    ctx = round_context(view, round_)
    row = fedavg.plan(ctx).steps[0].for_peer(0)
    return fedavg.combine(torch.stack([models[int(i)] for i in row.sender_ids]), row, ctx)[0]
