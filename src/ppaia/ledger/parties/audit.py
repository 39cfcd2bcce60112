"""Audit a ledger run from the chain and the blobs alone: anyone can check what the committee did.

:func:`audit` reads every registry event and fetches the blobs it names by their hashes (from any
provider, verified), then checks, in chain order, and stops at the first discrepancy
(:class:`AuditError`):

- every vote, proposal and score came from an account registered as a validator before it;
- the registry's quota of updates per trainer and round is the config's, and no trainer exceeded it in
  any round (BAP's resubmissions: :func:`~ppaia.ledger.parties.rules.quota_of`);
- every accepted update had a quorum of valid votes, and every release a quorum of proposals of its
  hash, from registered validators, before it;
- round 0 released the config's initial model;
- every released model is bit-identical to the aggregate recomputed from the fetched blobs: for FLoBC
  the score-weighted aggregate of the updates the quorum accepted, each rebased from the release it
  trained from, which must have come before it (:mod:`ppaia.ledger.parties.rules`), for the publisher
  flow the FedAvg of every client's accepted update;
- (FLoBC) every score set on chain is the reward-penalty score recomputed from the on-chain votes as of
  the last release before it.

It returns one :class:`AuditRow` per release: the summary table ``ppaia ledger audit`` prints.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import torch

from ppaia.codec import decode, encode
from ppaia.config import ExperimentConfig
from ppaia.experiment import Setup
from ppaia.ledger.client import LedgerError, content_hash, from_fixed, to_fixed
from ppaia.ledger.parties.chain import LedgerState
from ppaia.ledger.parties.rules import RoundOutcome, aggregate, fedavg_aggregate, flobc_rounds, quota_of
from ppaia.rules.flobc import FLoBC

__all__ = ["AuditError", "AuditRow", "Auditor", "audit"]

Fetch = Callable[[bytes], Awaitable[bytes]]


class AuditError(LedgerError):
    """The first discrepancy between the chain, the blobs and the rule."""


@dataclass(frozen=True)
class AuditRow:
    """One verified release: its round, version, model hash, accepted and rejected updates, and the
    trainers' scores after it (FLoBC; empty for the publisher flow)."""

    round: int
    version: int
    digest: bytes
    accepted: int
    rejected: int
    scores: tuple[float, ...] = ()


def _check_senders(state: LedgerState) -> None:
    events = [("vote", v.validator, v.seq) for u in state.updates.values() for v in u.votes]
    events += [("proposal", p.validator, p.seq) for p in state.proposals]
    events += [("score", s.validator, s.seq) for s in state.score_sets]
    for what, sender, seq in sorted(events, key=lambda e: e[2]):
        if sender not in state.validators_at(seq):
            raise AuditError(f"a {what} (event {seq}) from {sender}, which is not a registered validator")


def _check_quota(state: LedgerState, quota: int) -> None:
    if state.quota != quota:
        raise AuditError(
            f"the registry's quota is {state.quota} updates per trainer and round; the config's {quota}"
        )
    counts = Counter((u.trainer, u.round) for u in state.updates.values())
    for (trainer, round_), count in sorted(counts.items(), key=lambda item: item[0][1]):
        if count > quota:
            raise AuditError(
                f"trainer {trainer} submitted {count} updates in round {round_}; the quota is {quota}"
            )


def _check_quorums(state: LedgerState) -> None:
    for update in sorted(state.updates.values(), key=lambda u: u.id):
        if update.accepted_at is None:
            continue
        at = update.accepted_at
        voters = {v.validator for v in update.votes_before(at + 1) if v.valid}
        quorum = state.quorum(len(state.validators_at(at)))
        if len(voters) < quorum:
            raise AuditError(
                f"update {update.id} accepted with {len(voters)} valid votes; the quorum is {quorum}"
            )
    for release in state.releases:
        supporters = {
            p.validator
            for p in state.proposals_of(release.round)
            if p.digest == release.digest and p.seq < release.seq
        }
        quorum = state.quorum(len(state.validators_at(release.seq)))
        if len(supporters) < quorum:
            raise AuditError(
                f"version {release.version} (round {release.round}) released with {len(supporters)} "
                f"proposals; the quorum is {quorum}"
            )


def _check_scores(state: LedgerState, outcomes: list[RoundOutcome]) -> None:
    index = {trainer: i for i, trainer in enumerate(state.trainers)}
    for score_set in state.score_sets:
        before = [o for o in outcomes if o.cut < score_set.seq]
        expected = before[-1].scores[index[score_set.trainer]].item() if before else 1.0 / len(index)
        if score_set.score != to_fixed(expected):
            raise AuditError(
                f"score {from_fixed(score_set.score)} set for trainer {index[score_set.trainer]} (event "
                f"{score_set.seq}); the rule gives {expected:.6f} from the votes before it"
            )


class Auditor:
    """Audits runs of `config`: builds a validator's (the publisher's) view of it once."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.flobc = isinstance(config.rule, FLoBC)
        n_trainers = config.peers - (config.rule.validators if isinstance(config.rule, FLoBC) else 0)
        self.view = Setup.peer(config, n_trainers if self.flobc else 0)
        self.layout = self.view.layout

    def digest_of(self, flat: torch.Tensor) -> bytes:
        return content_hash(encode(self.layout.unflatten(flat)))

    async def __call__(self, state: LedgerState, fetch: Fetch) -> list[AuditRow]:
        """Check the run on chain (`state`) against the config and the blobs `fetch` returns; the
        summary rows, or AuditError at the first discrepancy."""
        config, view, layout, flobc = self.config, self.view, self.layout, self.flobc
        expected = layout.expected()
        _check_senders(state)
        _check_quota(state, quota_of(config.rule))
        _check_quorums(state)

        async def model(digest: bytes) -> torch.Tensor:
            data = await fetch(digest)
            if content_hash(data) != digest:
                raise AuditError(f"the blob fetched for {digest.hex()} does not hash to it")
            return layout.join(decode(data, expected))

        releases = sorted(state.releases, key=lambda r: r.version)
        if [r.round for r in releases] != list(range(len(releases))):
            raise AuditError(f"released rounds {[r.round for r in releases]} are not 0, 1, 2, ...")
        if not releases:
            return []
        if releases[0].digest != self.digest_of(view.params[0]):
            raise AuditError("round 0 released another model than the config's initial model")
        outcomes = flobc_rounds(state, config.rule) if isinstance(config.rule, FLoBC) else []
        if flobc:
            _check_scores(state, outcomes)
        rows = [AuditRow(0, releases[0].version, releases[0].digest, 0, 0)]
        models = {0: await model(releases[0].digest)}  # the released models by round: the updates' bases
        for release in releases[1:]:
            r = release.round
            base = models[r - 1]
            if flobc:
                outcome = outcomes[r - 1]
                trained = [await model(u.digest) for u in outcome.accepted_updates]
                for update in outcome.accepted_updates:
                    based_on = state.release_of(update.base)
                    if based_on is None or based_on.seq > update.seq:
                        raise AuditError(
                            f"round {r}: update {update.id} was accepted, but its base (round {update.base}) "
                            "was not released before it"
                        )
                bases = [models[u.base] for u in outcome.accepted_updates]
                recomputed = aggregate(base, trained, outcome.accepted_weights, bases)
                accepted, total = len(trained), len(outcome.contributors)
                scores = tuple(outcome.scores.tolist())
            else:
                updates = [u for u in state.updates_of(r) if u.accepted_before(release.seq)]
                if len(updates) != config.peers:
                    raise AuditError(
                        f"round {r}: {len(updates)} accepted updates; FedAvg needs {config.peers}"
                    )
                recomputed = fedavg_aggregate(view, r, [await model(u.digest) for u in updates])
                accepted, total, scores = len(updates), len(state.updates_of(r)), ()
            digest = self.digest_of(recomputed)
            if digest != release.digest:
                raise AuditError(
                    f"version {release.version} (round {r}) is not the aggregate of its accepted updates: "
                    f"released {release.digest.hex()[:16]}, recomputed {digest.hex()[:16]}"
                )
            rows.append(AuditRow(r, release.version, release.digest, accepted, total - accepted, scores))
            models[r] = recomputed
        return rows


async def audit(state: LedgerState, config: ExperimentConfig, fetch: Fetch) -> list[AuditRow]:
    """:class:`Auditor` of `config` run once on `state`."""
    return await Auditor(config)(state, fetch)
