"""A component's periodic upkeep as one background task: the peer-sampling view exchanges
(:class:`~ppaia.network.sampling.Sampler`) and the overlay's link upkeep
(:class:`~ppaia.network.overlay.Overlay`) each run :meth:`Upkeep.tick` every `period` seconds, jittered
so that peers started together do not talk in lockstep, until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

__all__ = ["Upkeep"]

log = logging.getLogger(__name__)


class Upkeep:
    """Subclasses set `period` and `rng` and implement :meth:`tick`; `what` names the upkeep in the log."""

    period: float
    rng: random.Random
    what = "upkeep"
    _task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bug in upkeep must not end the peer's part in the swarm silently
                log.exception("%s failed; trying again", self.what)
            await asyncio.sleep(self.period * (0.5 + self.rng.random()))
