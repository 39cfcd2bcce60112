"""How long a peer waits for a sender: deadlines from the swarm's pace, and absent senders.

No global barrier: every peer proceeds as soon as it has what it needs.

- ``synchronous``: a peer waits for each sender's exact version. It gives up on a sender that has not
  answered at all for a *deadline* derived from the swarm's pace — ``WAIT_ROUNDS`` times the median of
  this peer's recent round times, at least `min_wait`, at most `wait` (`wait` itself until a round has
  been timed) — so a crashed or unreachable sender costs about that, not a fixed minute; or that
  answers, but whose newest version has not moved for `wait` seconds (hung). A sender that answers is
  alive and usually only waiting for its own senders, which the deadline bounds: cutting it off sooner
  would leave out a live peer.
- asynchronous: each step waits at most `deadline` seconds; a sender that has not reached the version
  by then contributes its newest model if it is at most `max_staleness` rounds old.

**Absent senders.** A sender whose wait ran out is *absent*: it is not waited for again until it shows
progress. Meanwhile it is left out of each step at once (asynchronous: its stale model is used if
recent enough) while its status is asked in the background, one request at a time. Once the status
reports a newest version other than the one it had when it went absent — it restarted and published,
or was only slow — it is back from the next step on and waited for as before. So a dead peer costs its
neighbours one deadline, once, and nobody a wait after that: the wait does not cascade through the
swarm round after round.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["ROUND_HISTORY", "WAIT_ROUNDS", "Timing", "Version"]

log = logging.getLogger(__name__)

WAIT_ROUNDS = 4.0  # synchronous deadline for a silent sender: this many median round times
ROUND_HISTORY = 16  # recent round times the deadline is derived from

Version = tuple[int, int]  # (round, step)
Probe = Callable[[], Coroutine[Any, Any, Version | None]]  # a sender's newest version, from its status


class Timing:
    """Peer `me`'s timing policy (see the module docstring): its recent round times (`history`,
    seconds), its `absent` senders (index -> newest version when it went absent) and the status
    requests (`probes`) asking them whether they progressed."""

    def __init__(
        self,
        me: int | str,
        *,
        synchronous: bool = True,
        wait: float = 60.0,
        min_wait: float = 2.0,
        deadline: float = 2.0,
        max_staleness: int = 2,
        names: Callable[[int], str] = str,
    ) -> None:
        self.me = me
        self.names = names  # how the log names peer `index` (an open swarm's: by its id)
        self.synchronous = synchronous
        self.wait = wait
        self.min_wait = min_wait
        self.step_deadline = deadline
        self.max_staleness = max_staleness
        self.history: deque[float] = deque(maxlen=ROUND_HISTORY)
        self.assumed: float | None = None  # the members' pace, while this peer has timed no round
        self.absent: dict[int, Version | None] = {}
        self.probes: dict[int, asyncio.Task[Version | None]] = {}

    def record(self, seconds: float) -> None:
        """A round of this peer took `seconds`."""
        self.history.append(seconds)

    def pace(self) -> float | None:
        """The median of this peer's recent round times (None before its first round)."""
        return statistics.median(self.history) if self.history else None

    def assume(self, paces: list[float]) -> None:
        """Joining a swarm in flight: until it has timed a round of its own, take the median of the
        `paces` its members report for its deadlines, so that a partner that died as it joined costs a
        deadline from the swarm's pace, not `wait` (the median: a few lying members move it little,
        and the deadline stays within `min_wait` .. `wait` whatever they say). Only the deadlines use
        it: it is not this peer's own pace (:meth:`pace`)."""
        self.assumed = statistics.median(paces) if paces else None

    def deadline(self) -> float:
        """Seconds to wait for a sender that does not answer (the whole step's wait, asynchronous)."""
        if not self.synchronous:
            return self.step_deadline
        if not self.history and self.assumed is None:  # no pace known yet, and peers start unevenly
            return self.wait
        pace = WAIT_ROUNDS * (statistics.median(self.history) if self.history else self.assumed)
        return min(self.wait, max(self.min_wait, pace))

    def stuck(self) -> float:
        """Seconds a sender that answers may go without progress before it is given up."""
        return self.wait if self.synchronous else self.step_deadline

    def substitutable(self, latest: Version | None, round_: int) -> bool:
        """Whether a sender's newest version `latest` may stand in for its round-`round_` one."""
        return not self.synchronous and latest is not None and latest[0] >= round_ - self.max_staleness

    def went_absent(self, index: int, wanted: Version, latest: Version | None, waited: float) -> None:
        """The wait for peer `index`'s version `wanted` ran out after `waited` seconds; its newest version
        was `latest`."""
        self.absent[index] = latest
        log.warning(
            "peer %s: no version %s from peer %s in time (%.1f s, deadline %.1f s); left out until it "
            "progresses",
            self.me,
            wanted,
            self.names(index),
            waited,
            self.deadline(),
        )

    def skips(self, index: int, probe: Probe) -> bool:
        """Whether peer `index` is absent and has not shown progress: then it is left out without a
        wait, and `probe` asks it in the background (see :meth:`_returned`)."""
        if index not in self.absent or self._returned(index, probe):
            return False
        log.info(
            "peer %s: peer %s is absent (newest version %s); left out without waiting",
            self.me, self.names(index), self.absent[index],
        )  # fmt: skip
        return True

    def _returned(self, index: int, probe: Probe) -> bool:
        """Whether absent peer `index` has shown progress: its status, asked by `probe` in the
        background (one request at a time, started here, so no step waits for it), reported a newest
        version other than the one it had when it went absent. An answer counts from the step after
        the one that asked."""
        asking = self.probes.pop(index, None)
        if asking is not None and not asking.done():
            self.probes[index] = asking  # still asking
            return False
        latest = None
        if asking is not None and not asking.cancelled():
            if asking.exception() is not None:
                log.warning(
                    "peer %s: asking peer %s failed: %r", self.me, self.names(index), asking.exception()
                )
            else:
                latest = asking.result()
        if latest is not None and latest != self.absent[index]:
            del self.absent[index]
            log.info("peer %s: peer %s is back (newest version %s)", self.me, self.names(index), latest)
            return True
        self.probes[index] = asyncio.create_task(probe())
        return False

    def stop(self) -> None:
        """Cancel the status requests still running."""
        for asking in self.probes.values():
            asking.cancel()
