"""A FLoBC validator process: judge every update on its own data, vote, propose the aggregate.

Per round r, on the wall clock:

1. **Barrier.** Wait until every registered trainer submitted a round-r update, or the first vote on
   one of them is on chain (another validator closed the barrier), or the sync scheme's wait passed (BSP
   and BAP: the timeout; SSP: its period, extended by period · missing / T:
   :mod:`~ppaia.ledger.parties.rules`). The first vote closes the round for everyone: the contributors
   are the updates submitted before it, each trainer's latest (a BAP resubmission supersedes its
   earlier ones: :func:`~ppaia.ledger.parties.rules.contributors_of`).
2. **Vote.** Fetch each contributor's blob by its recorded hash (any provider; refused and the sender
   struck if the bytes do not match), rebase it onto the current model (θ + (θᵢ − θ_b) from the release
   b it trained from, as the simulator), score it on this validator's held-out data and vote valid iff
   its accuracy is at least ``decay`` × this validator's accuracy of θ. An update whose blob no provider
   hands over, or whose base was not released before it, is voted invalid with score 0.
3. **Propose.** Wait until every registered validator voted on every contributor, or the timeout (a
   silent validator costs each round one timeout, no more). Compute the scores and the aggregate from
   the chain (:func:`~ppaia.ledger.parties.rules.flobc_rounds`), serve it, and propose its hash with
   this validator's accuracy of it. A quorum of equal hashes releases it.
4. **Adopt and record.** Once round r is released (else :class:`~ppaia.ledger.parties.party.Halted`:
   the quorum cannot be reached, the run stops at the last release), continue from the released model
   (fetched if it is not the one computed here). The validator that proposed first in the round
   records every trainer's new reward-penalty score with ``set_score`` where it changed.

Round 0 releases the initial model the same way. Misbehaviours for tests: ``against`` votes every
update invalid with score 0 (it proposes honestly); ``silent`` never votes nor proposes.
"""

from __future__ import annotations

import torch

from ppaia.codec import encode
from ppaia.ledger.client import LedgerError, content_hash, to_fixed
from ppaia.ledger.parties.chain import LedgerState, Release, UpdateRecord
from ppaia.ledger.parties.party import Behaviour, Halted, Party, PartyOptions
from ppaia.ledger.parties.rules import aggregate, barrier_period, closed, contributors_of, flobc_rounds
from ppaia.ledger.parties.storage import BlobUnavailable
from ppaia.rules.flobc import FLoBC

__all__ = ["Validator"]


class Validator(Party):
    role = "validator"

    def __init__(self, options: PartyOptions) -> None:
        super().__init__(options)
        rule = self.config.rule
        if not isinstance(rule, FLoBC):
            raise LedgerError(f"a validator runs FLoBC, not {rule.label()!r}")
        self.rule = rule
        self.period = barrier_period(rule)
        self.models: dict[int, torch.Tensor] = {}  # released models by round: stale updates' bases

    @property
    def trainers(self) -> int:
        """T: the config's peers less its validators."""
        return self.config.peers - self.rule.validators

    def accuracy(self, model: torch.Tensor) -> float:
        """This validator's accuracy of `model` on its own held-out data."""
        return float(self.setup.learner.accuracy(model.view(1, 1, -1), self.setup.ids)[0, 0])

    async def propose(self, round_: int, model: torch.Tensor) -> None:
        digest = await self.publish(model)
        score = to_fixed(await self.compute(self.accuracy, model))
        try:
            await self.chain(self.ledger.propose_model, round_, digest, score, sender=self.address)
        except LedgerError as err:  # a quorum released the round already: nothing to add
            if "already released" not in str(err):
                raise

    async def adopt(self, release: Release, mine: torch.Tensor) -> torch.Tensor:
        """The released model: this validator's own if it is the one released, else fetched."""
        if content_hash(encode(self.layout.unflatten(mine))) == release.digest:
            return mine
        try:
            return await self.fetch(release.digest)
        except BlobUnavailable as err:
            raise Halted(f"round {release.round}'s released model cannot be fetched: {err}") from None

    async def base_of(self, update: UpdateRecord) -> torch.Tensor | None:
        """The released model `update` trained from; None if its base was not released before it."""
        release = self.state.release_of(update.base)
        if release is None or release.seq > update.seq:
            return None
        if update.base not in self.models:
            self.models[update.base] = await self.fetch(release.digest)
        return self.models[update.base]

    async def judge(self, update: UpdateRecord, model: torch.Tensor, reference: float) -> tuple[bool, int]:
        """This validator's verdict on `update` against the current `model`: (valid, fixed-point score)."""
        if self.options.behaviour is Behaviour.AGAINST:
            return False, 0
        try:
            trained = await self.fetch(update.digest)
            base = await self.base_of(update)
        except BlobUnavailable:
            return False, 0
        if base is None:
            return False, 0
        candidate = model + (trained - base)  # rebased onto the current model, as the rule does
        accuracy = await self.compute(self.accuracy, candidate)
        return accuracy >= self.rule.threshold * reference, to_fixed(accuracy)

    def voted(self, update: UpdateRecord) -> bool:
        return any(vote.validator == self.address for vote in update.votes)

    async def vote_round(self, round_: int, model: torch.Tensor) -> None:
        """Vote on every contributor of `round_` this validator has not voted on yet."""
        reference = await self.compute(self.accuracy, model)
        while pending := [u for u in contributors_of(await self.refresh(), round_) if not self.voted(u)]:
            for update in pending:
                valid, score = await self.judge(update, model, reference)
                await self.chain(self.ledger.vote, update.id, valid, score, sender=self.address)

    @staticmethod
    def barrier_passed(state: LedgerState, round_: int) -> bool:
        """Every trainer submitted for `round_` (once or more), or its barrier closed."""
        return len(state.submitters(round_)) >= len(state.trainers) or closed(state, round_)

    async def barrier(self, round_: int) -> None:
        """Wait at `round_`'s barrier (see the module docstring)."""

        def passed(state: LedgerState) -> bool:
            return self.barrier_passed(state, round_)

        if self.period is None:
            await self.wait_for(passed)
        elif not await self.wait_for(passed, self.period):
            trainers = len(self.state.trainers)
            missing = trainers - len(self.state.submitters(round_))
            await self.wait_for(passed, self.period * missing / trainers)

    @staticmethod
    def votes_complete(state: LedgerState, round_: int) -> bool:
        validators = set(state.validators)
        return all(validators <= {v.validator for v in u.votes} for u in contributors_of(state, round_))

    async def record_scores(self, round_: int) -> None:
        """If this validator proposed first in `round_`, set the trainers' scores that changed."""
        proposals = self.state.proposals_of(round_)
        if not proposals or proposals[0].validator != self.address:
            return
        outcome = flobc_rounds(self.state, self.rule)[-1]
        on_chain = {s.trainer: s.score for s in self.state.score_sets}
        for trainer, score in zip(self.state.trainers, outcome.scores.tolist(), strict=True):
            if on_chain.get(trainer) != to_fixed(score):
                await self.chain(self.ledger.set_score, trainer, to_fixed(score), sender=self.address)

    async def play(self) -> None:
        await self.registered(lambda s: s.validators, self.options.peer - self.trainers)
        if self.options.behaviour is Behaviour.SILENT:
            return
        model = self.setup.params[0].clone()  # the initial model: every peer's is peer 0's draw
        if self.state.release_of(0) is None:
            await self.propose(0, model)
        model = self.models[0] = await self.adopt(await self.release_of(0), model)
        for round_ in range(1, self.config.rounds + 1):
            await self.barrier(round_)
            await self.vote_round(round_, model)
            await self.wait_for(lambda s, r=round_: self.votes_complete(s, r))
            await self.vote_round(round_, model)  # contributors another validator saw first
            outcome = flobc_rounds(self.state, self.rule, open_round=round_)[-1]
            try:
                trained = [await self.fetch(u.digest) for u in outcome.accepted_updates]
                bases = [await self.base_of(u) for u in outcome.accepted_updates]
            except BlobUnavailable as err:
                raise Halted(f"round {round_}: an accepted update cannot be fetched: {err}") from None
            known = [base for base in bases if base is not None]
            if len(known) < len(bases):  # a quorum accepted an update this validator cannot rebase
                raise Halted(f"round {round_}: an accepted update's base was not released before it")
            new = aggregate(model, trained, outcome.accepted_weights, known)
            if self.state.release_of(round_) is None:
                await self.propose(round_, new)
            model = self.models[round_] = await self.adopt(await self.release_of(round_), new)
            await self.record_scores(round_)
