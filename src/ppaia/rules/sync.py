"""FLoBC's synchronisation schemes: when model versions are released, and from which trainers' updates.

FLoBC (arXiv 2112.11873) synchronises its trainers in three ways: BSP (bulk-synchronous: a release at every
barrier), SSP (stale-synchronous: a barrier waits a little for missing trainers) and BAP (barrier-less
asynchronous: a release as soon as every trainer has submitted, fast trainers resubmitting meanwhile). This
module only schedules: a pure, deterministic discrete-event simulation on a simulated clock decides when
each version is released and which updates, trained from which version, it aggregates; the FLoBC rule does
the aggregation.

Shared semantics. Trainer i needs ``compute[i]`` simulated seconds per local update. Every trainer starts
training on version 0 (the initial model) at time 0 and submits its update when done. Between two releases
a trainer may submit once (BSP, SSP) or up to ``quota`` times (BAP, retraining on the same version at once);
when its submissions are used up it waits idle. A release aggregates the latest update of every trainer
that submitted since the previous release and creates the next version; every idle trainer then starts
training on it, while a trainer still busy keeps training on its older base version and submits when done,
so its update reaches a later release stale (staleness = version − 1 − base version). A barrier at which
nobody has submitted releases nothing: the model and its version stay, and the barrier passes. At one
instant, submissions come first, then the release, then idle trainers (including those that just submitted)
start training on the newest version; events less than ``TIE`` seconds apart count as simultaneous, so
float rounding in sums of times does not reorder them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field

from ppaia.registry import Component, Registry

__all__ = ["SYNC_SCHEMES", "TIE", "Contribution", "Release", "SyncScheme"]

TIE = 1e-9  # simulated seconds within which two events count as simultaneous


@dataclass(frozen=True)
class Contribution:
    """Trainer ``trainer``'s update, trained from model version ``base_version`` (0: the initial model)."""

    trainer: int
    base_version: int


@dataclass(frozen=True)
class Release:
    """Model version ``version`` (1, 2, ...), released at simulated ``time`` from ``contributions``.

    The contributions are ordered by trainer id, one per trainer. ``uploads`` counts every update received
    since the previous release, superseded BAP resubmissions included: the communication the release cost.
    """

    version: int
    time: float
    contributions: tuple[Contribution, ...]
    uploads: int

    @property
    def staleness(self) -> dict[int, int]:
        """Versions each contributing trainer missed: version − 1 − base version (0: fresh)."""
        return {c.trainer: self.version - 1 - c.base_version for c in self.contributions}


class _Simulation:
    """The trainers on the simulated clock; a scheme advances it and decides when to release."""

    def __init__(self, compute: list[float], submissions: int) -> None:
        self.compute = compute
        self.submissions = submissions  # a trainer's submissions between two releases
        self.time = 0.0  # the last release or barrier
        self.version = 0
        self.base = [0] * len(compute)  # the version each trainer trains from
        self.start = [0.0] * len(compute)
        self.finish = list(compute)  # math.inf while idle
        self.count = [0] * len(compute)  # submissions since the last release
        self.latest: dict[int, Contribution] = {}
        self.uploads = 0
        self.releases: list[Release] = []

    def advance(self, until: float) -> None:
        """Process every submission up to ``until``, in time then trainer order."""
        while (now := min(self.finish)) <= until + TIE:
            i = self.finish.index(now)
            self.latest[i] = Contribution(i, self.base[i])
            self.count[i] += 1
            self.uploads += 1
            if self.count[i] < self.submissions:
                self.base[i], self.start[i], self.finish[i] = self.version, now, now + self.compute[i]
            else:
                self.finish[i] = math.inf

    def release(self, time: float) -> None:
        """Pass a barrier at ``time``: release a version if anyone submitted; idle trainers start on it."""
        self.time = time
        if not self.latest:
            return
        self.version += 1
        contributions = tuple(self.latest[i] for i in sorted(self.latest))
        self.releases.append(Release(self.version, time, contributions, self.uploads))
        self.latest, self.uploads, self.count = {}, 0, [0] * len(self.compute)
        for i, finish in enumerate(self.finish):
            if finish == math.inf or self.start[i] >= time - TIE:  # idle, or just submitted
                self.base[i], self.start[i], self.finish[i] = self.version, time, time + self.compute[i]


def _compute_times(compute: Sequence[float]) -> list[float]:
    """The trainers' compute times as floats, checked to be finite and positive."""
    times = [float(c) for c in compute]
    if not times:
        raise ValueError("compute: need at least one trainer")
    for i, c in enumerate(times):
        if not (math.isfinite(c) and c > 0):
            raise ValueError(f"compute: trainer {i} needs a finite time > 0 per update, got {c}")
    return times


class SyncScheme(Component):
    """When the trainers' updates are released as model versions (semantics: the module docstring)."""

    @property
    def submissions(self) -> int:
        """Updates a trainer may submit between two releases; the latest one is used."""
        return 1

    def schedule(self, compute: Sequence[float], releases: int) -> list[Release]:
        """The first ``releases`` versions when trainer i needs ``compute[i]`` seconds per update."""
        if isinstance(releases, bool) or not isinstance(releases, int) or releases < 1:
            raise ValueError(f"releases: need an integer ≥ 1, got {releases!r}")
        sim = _Simulation(_compute_times(compute), self.submissions)
        while len(sim.releases) < releases:
            self._skip_idle(sim)
            self.step(sim)
        return sim.releases

    def step(self, sim: _Simulation) -> None:
        """Run the simulation to its next barrier or release."""
        raise NotImplementedError

    def idle_step(self) -> float | None:
        """How far one step moves the clock when nobody submits (None: the scheme has no barriers)."""
        return None

    def _skip_idle(self, sim: _Simulation) -> None:
        """Jump over whole steps in which nobody submits (each would release nothing), in one move."""
        span = self.idle_step()
        if span is None or sim.latest:
            return
        skips = math.ceil((min(sim.finish) - sim.time - TIE) / span) - 1
        if skips > 0:
            sim.time += skips * span


SYNC_SCHEMES: Registry[SyncScheme] = Registry("sync scheme")


@SYNC_SCHEMES.register("bsp")
class BSP(SyncScheme):
    """Bulk-synchronous: every `period` seconds, release every update submitted since the last release."""

    period: float = Field(default=1.0, gt=0, allow_inf_nan=False, description="seconds between barriers")

    def idle_step(self) -> float:
        return self.period

    def step(self, sim: _Simulation) -> None:
        barrier = sim.time + self.period
        sim.advance(barrier)
        sim.release(barrier)


@SYNC_SCHEMES.register("ssp")
class SSP(SyncScheme):
    """Stale-synchronous: BSP whose barrier waits once period·missing/T longer if trainers are missing."""

    period: float = Field(default=1.0, gt=0, allow_inf_nan=False, description="seconds between barriers")

    def idle_step(self) -> float:
        return 2 * self.period  # a barrier with every trainer missing, then a full extension

    def step(self, sim: _Simulation) -> None:
        """At the barrier, with m of T trainers not submitted since the last release, release m/T periods
        later with whatever has been submitted by then; the next barrier is one period after that.
        """
        barrier = sim.time + self.period
        sim.advance(barrier)
        missing = len(sim.compute) - len(sim.latest)
        if missing:
            barrier += self.period * missing / len(sim.compute)
            sim.advance(barrier)
        sim.release(barrier)


@SYNC_SCHEMES.register("bap")
class BAP(SyncScheme):
    """Barrier-less: release once every trainer has submitted; fast ones resubmit up to `quota` times."""

    quota: int = Field(default=1, ge=1, description="submissions per trainer between releases")

    @property
    def submissions(self) -> int:
        return self.quota

    def step(self, sim: _Simulation) -> None:
        """Process the next submission instant; release then if every trainer has submitted."""
        now = min(sim.finish)
        sim.advance(now)
        if len(sim.latest) == len(sim.compute):
            sim.release(now)
