"""A trainer (FLoBC) or client (publisher flow) process: fetch the latest release, train, serve, submit.

Each time a newer version is released on chain, the trainer fetches its blob by hash from whichever
party provides it, trains it on its own data (with round b + 1's data order, b that release's round, as
the simulator's peer trains its row), serves the result and records its hash with
``submit_update(r, h, base=b)`` for the first round r after the newest release whose barrier has not
closed yet (and whose quota of updates it has not used): r = b + 1 unless it was too slow. A throttled trainer
(``throttle`` seconds per update) is a real straggler: if it misses round b + 1's barrier its update
reaches a later round stale (based on b), which the validators rebase as the simulator does; then, as
the simulator's trainer, it waits for the next release and trains on it.

BAP's resubmissions (a quota q > 1 of updates per round, :func:`~ppaia.ledger.parties.rules.quota_of`):
a trainer that submitted while other trainers have not submitted yet for that round (its barrier is
still open) retrains at once on the newest release and resubmits, as the simulator's fast trainer,
until it used its quota; the validators take each trainer's latest update of the round. The trainer
whose update completes the round (every trainer submitted: the release is coming) waits for the release
and trains on it, as the simulator's trainer that submits at the release instant. Training is
deterministic in (model, round), so a resubmission from the same release carries the same parameters
as the update it supersedes, in the simulator as here. The run ends for it when the last
round is released (or every round's barrier closed), or halts if a release does not come within the
timeout.

Misbehaviours for tests: ``noise`` submits random parameters (seeded by peer and round); ``liar`` records
the hash of its trained model and serves other bytes (noise) under it.
"""

from __future__ import annotations

import asyncio
import logging

import torch

from ppaia.codec import encode
from ppaia.ledger.client import content_hash
from ppaia.ledger.parties.chain import LedgerState
from ppaia.ledger.parties.party import Behaviour, Party
from ppaia.ledger.parties.rules import closed
from ppaia.ledger.parties.storage import BlobUnavailable
from ppaia.seeding import Stream, generator

__all__ = ["Trainer"]

log = logging.getLogger(__name__)


class Trainer(Party):
    role = "trainer"
    aggregates = False  # the validators (the publisher) weigh its update, it never weighs the others'

    def noise(self, like: torch.Tensor, round_: int) -> torch.Tensor:
        """Random parameters of the model's shape, seeded by this party and round."""
        noise = generator(self.config.seed, Stream.ATTACK, self.options.peer, round_)
        return torch.randn(like.shape, generator=noise, dtype=like.dtype)

    def train(self, model: torch.Tensor, round_: int) -> torch.Tensor:
        return self.setup.trainer.train(model.unsqueeze(0).clone(), round_)[0]

    async def play(self) -> None:
        await self.registered(lambda s: s.trainers, self.options.peer)
        last, quota = self.config.rounds, self.state.quota
        trained_for = 0
        while True:
            release = await self.release_of(trained_for)
            latest = self.state.latest
            if latest is not None and latest.round > release.round:
                release = latest  # a straggler catches up on the newest release
            if release.round >= last:
                return
            round_ = release.round + 1
            try:
                model = await self.fetch(release.digest)
            except BlobUnavailable as err:  # e.g. every provider banned this party: try the next release
                log.warning(
                    "trainer %d: cannot fetch round %d's model: %s", self.options.peer, release.round, err
                )
                trained_for = release.round + 1
                continue
            trained = await self.compute(self.train, model, round_)
            if self.options.throttle:
                await asyncio.sleep(self.options.throttle)
            behaviour = self.options.behaviour
            if behaviour is Behaviour.NOISE:
                trained = self.noise(trained, round_)
            if behaviour is Behaviour.LIAR:
                recorded = content_hash(encode(self.layout.unflatten(trained)))
                digest = await self.publish(self.noise(trained, round_), serve_as=recorded)
            else:
                digest = await self.publish(trained)
            state = await self.refresh()
            newest = state.latest.round if state.latest is not None else release.round
            open_rounds = (
                r
                for r in range(newest + 1, last + 1)
                if not (closed(state, r) or self.used(state, r) >= quota)
            )
            target = next(open_rounds, None)
            if target is None:  # every round's barrier closed while it trained: the run is over
                return
            await self.chain(
                self.ledger.submit_update, target, digest, base=release.round, sender=self.address
            )
            state = await self.refresh()
            waiting = len(state.submitters(target)) < len(state.trainers) and not closed(state, target)
            # BAP: retrain at once on the newest release and resubmit; else idle until the next release
            trained_for = newest if waiting and self.used(state, target) < quota else newest + 1

    def used(self, state: LedgerState, round_: int) -> int:
        """This trainer's updates in round `round_` on chain."""
        return sum(1 for u in state.updates.values() if u.trainer == self.address and u.round == round_)
