"""A trainer (FLoBC) or client (publisher flow) process: fetch the latest release, train, serve, submit.

Each time a newer version is released on chain, the trainer fetches its blob by hash from whichever
party provides it, trains it on its own data for round r = that release's round + 1 (as the
simulator's peer trains its row), serves the result and records its hash with ``submit_update(r, h)``.
A throttled trainer (``throttle`` seconds per update) is a real straggler: if it misses the round's
barrier its update is left out, and it trains on the newest release next. The run ends for it when the
last round is released, or halts if a release does not come within the timeout.

Misbehaviours for tests: ``noise`` submits random parameters (seeded by peer and round); ``liar`` records
the hash of its trained model and serves other bytes (noise) under it.
"""

from __future__ import annotations

import asyncio
import logging

import torch

from ppaia.codec import encode
from ppaia.ledger.client import content_hash
from ppaia.ledger.parties.party import Behaviour, Party
from ppaia.ledger.parties.storage import BlobUnavailable
from ppaia.seeding import Stream, generator

__all__ = ["Trainer"]

log = logging.getLogger(__name__)


class Trainer(Party):
    role = "trainer"

    def noise(self, like: torch.Tensor, round_: int) -> torch.Tensor:
        """Random parameters of the model's shape, seeded by this party and round."""
        noise = generator(self.config.seed, Stream.ATTACK, self.options.peer, round_)
        return torch.randn(like.shape, generator=noise, dtype=like.dtype)

    def train(self, model: torch.Tensor, round_: int) -> torch.Tensor:
        return self.setup.trainer.train(model.unsqueeze(0).clone(), round_)[0]

    async def play(self) -> None:
        await self.registered(lambda s: s.trainers, self.options.peer)
        last = self.config.rounds
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
            await self.chain(self.ledger.submit_update, round_, digest, sender=self.address)
            trained_for = round_
