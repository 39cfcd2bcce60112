"""A networked peer: train, publish, fetch the neighbours' models, apply the rule, checkpoint, repeat.

One asyncio process per peer. It serves its models over TCP (:class:`ModelServer`), announces itself and
the swarm index it plays (topic ``<swarm>/peer/<i>``) in the Kademlia DHT, and runs the rounds of the
config it was given — the same rule code as the simulator (:class:`PeerLearner`).

**Versions.** In round r the model entering mixing step s is version (r, s); (r, S) is the round's
result for a rule with S steps. A peer publishes each version as soon as it has it and fetches exactly
the versions of the senders in its own row of the step. A broadcast step (one result for several peers:
FedAvg's server average) is computed by the smallest peer id the result goes to (peer 0 for FedAvg), and
the others fetch its version (r, s + 1). A peer keeps serving its newest versions within a memory budget
(at least 4, at most 256).

**Timing policy.** No global barrier: every peer proceeds as soon as it has what it needs. (A peer only
waits, at start, until it can find every other peer in the DHT, at most `wait`: in either mode a peer
not yet started would otherwise be taken for an absent one, and the first peer would run alone.)

- ``synchronous`` (default): a peer waits for each sender's exact version. With every model received the
  numbers are the simulator's. It gives up on a sender (left out of the step, :meth:`Mixing.restricted`:
  its weight goes to the peer's own model) that
  - has not answered at all for a *deadline* derived from the swarm's pace: ``WAIT_ROUNDS`` times the
    median of this peer's recent round times, at least `min_wait`, at most `wait` (`wait` itself until a
    round has been timed) — a crashed or unreachable sender costs about that, not a fixed minute; or
  - answers, but its newest version has not moved for `wait` seconds (hung). A sender that answers is
    alive and usually only waiting for its own senders, which the deadline bounds: cutting it off
    sooner would leave out a live peer and break the guarantee above.
- asynchronous: each step waits at most `deadline` seconds; a sender that has not reached the version by
  then contributes its newest model if it is at most `max_staleness` rounds old — with its ordinary
  weight — and is left out otherwise. A broadcast result is never replaced by a stale model.
- Either way, a sender already past the version asked for will never serve it: it is left out at once.
- **Absent senders.** A sender whose wait ran out is *absent*: it is not waited for again until it shows
  progress. Meanwhile it is left out of each step at once (asynchronous: its stale model is used if
  recent enough) while its status is asked in the background, one request at a time. Once the status
  reports a newest version other than the one it had when it went absent — it restarted and
  published, or was only slow — it is back from the next step on and waited for as before. So a dead
  peer costs its neighbours one deadline, once, and nobody a wait after that: the wait no longer
  cascades through the swarm round after round.

**Bad input.** Every received model is checked (signature, sender, nonce, version, size, CID, tensor
names/shapes/dtypes, NaN/Inf) before use. A failure that is the sender's doing is logged, counted by
reason and strikes the sender, which is banned for a while after repeated strikes (its models are not
used, its requests refused). That includes a sender that starts a reply and then trickles it (slow
drip, ``slow_sender``): within a download, each slice of the reply must arrive within half the
download's time (at most the transport's pace window). A sender that is unreachable, never starts a
reply in time, or whose address now answers with another key is only looked up again: that happens to
honest peers that crashed or moved.

**Identity of indices.** With a members list (``--members``, written by ``ppaia launch``) index j is
played by the key the list names and nobody else. Without one, the peer pins index j to the first
claimant the DHT's storing nodes agree on (a strict majority of them received its claim first), and
while they disagree it pins nobody; a claim's issue time never decides. Once pinned, index j is found
through its peer's own ``peer:`` record, so later claimants of j are never followed. A restarted peer
keeps its id (its key is in its data directory), so it is recognised again.

**Checkpoints** after every round (:class:`Checkpoint`); a restarted peer resumes after the last one,
or catches up with the others' newest completed round if they have all moved on (:meth:`_catch_up`).
Learned rule state (the trust matrix) restarts from its initial value after a restart.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import statistics
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ppaia import codec
from ppaia.config import ExperimentConfig
from ppaia.network.checkpoint import Checkpoint
from ppaia.network.dht import Address, PeerDHT
from ppaia.network.errors import ProtocolError
from ppaia.network.identity import Identity
from ppaia.network.learner import PeerLearner, StepRole
from ppaia.network.members import initial_pins
from ppaia.network.transfer import (
    DEFAULT_PACE,
    BanList,
    ModelServer,
    ModelVersion,
    NotReady,
    Pace,
    Reason,
    fetch_model,
    fetch_status,
)

__all__ = ["Peer", "PeerOptions", "index_topic"]

log = logging.getLogger(__name__)

# The sender may be gone (or moved): look it up again, no strike. Every other reason is a strike, among
# them Reason.SLOW_SENDER: a reply that started, then trickled.
UNREACHABLE = frozenset({Reason.UNREACHABLE, Reason.TIMEOUT, "closed"})
WAIT_ROUNDS = 4.0  # synchronous deadline for a silent sender: this many median round times
ROUND_HISTORY = 16  # recent round times the deadline is derived from
LOOPBACK = frozenset({"127.0.0.1", "::1"})
SERVED_BYTES = 256 << 20  # memory for the model versions a peer keeps serving

Version = tuple[int, int]  # (round, step)


def index_topic(swarm: str, index: int) -> str:
    """The DHT topic a peer provides to say "I play index `index` in swarm `swarm`"."""
    return f"{swarm}/peer/{index}"


def _version(value: object) -> Version | None:
    """A (round, step) a remote peer reported — a pair of non-negative integers, or a status's
    {"round", "step", ...} — or None for anything else."""
    if isinstance(value, dict):
        value = (value.get("round"), value.get("step"))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        round_, step = value
        if all(type(x) is int and x >= 0 for x in (round_, step)):
            return round_, step
    return None


@dataclass(frozen=True)
class PeerOptions:
    """How one peer joins and runs (the experiment itself is the config)."""

    index: int
    data_dir: Path
    listen: Address = ("127.0.0.1", 0)
    bootstrap: tuple[Address, ...] = ()
    swarm: str = "ppaia"
    synchronous: bool = True
    wait: float = 60.0  # synchronous: the most seconds to wait for a sender (see the timing policy)
    min_wait: float = 2.0  # synchronous: the least seconds to wait for a sender that does not answer
    deadline: float = 2.0  # asynchronous: seconds a step waits for its senders
    max_staleness: int = 2  # asynchronous: rounds a substitute model may lag behind
    linger: float = 30.0  # after the last round: seconds to keep serving until every peer is done
    dht_ttl: float = 30.0
    max_model_bytes: int = 256 << 20  # a cap on top of the model's own encoded size
    members: tuple[str, ...] = ()  # the peer id of each index (a closed swarm); () pins first holders


@dataclass
class _Progress:
    round: int = 0
    phase: str = "starting"
    accuracy: float | None = None
    missing: int = 0
    stale: int = 0
    rejections: Counter = field(default_factory=Counter)


class Peer:
    """One peer process's state and main loop (see the module docstring)."""

    def __init__(
        self, config: ExperimentConfig, options: PeerOptions, identity: Identity | None = None
    ) -> None:
        self.config = config
        self.options = options
        self.identity = identity or Identity.load_or_create(options.data_dir)
        self.learner = PeerLearner(config, options.index)
        self.expected = self.learner.layout.expected()
        encoded = len(codec.encode(self.learner.tensors()))  # every honest model has exactly this size
        self.max_bytes = min(encoded + 4096, options.max_model_bytes)
        self.checkpoint = Checkpoint(Path(options.data_dir), config, options.index)
        self.bans = BanList()
        self.progress = _Progress()
        self.server = ModelServer(
            self.identity,
            options.listen[0],
            options.listen[1],
            keep=max(4, min(256, SERVED_BYTES // encoded)),  # versions kept for slower neighbours
            status=self.status,
            bans=self.bans,
            shared_addresses=LOOPBACK,  # in a local swarm every peer has the same address
        )
        self.dht = PeerDHT(self.identity, ttl=options.dht_ttl, rpc_timeout=2.0)
        # swarm index -> peer id: the members list, or each index's agreed first holder once seen
        self._pinned = initial_pins(options.members, config.peers, options.index, self.identity.peer_id)
        self._disputed: dict[int, frozenset[str]] = {}  # unpinned index -> its claimants, last logged
        self._addresses: dict[int, Address] = {}
        self._lookups: dict[int, asyncio.Future] = {}  # DHT lookups still running, by swarm index
        self._round_times: deque[float] = deque(maxlen=ROUND_HISTORY)  # seconds, this peer's latest rounds
        self._absent: dict[int, Version | None] = {}  # sender -> its newest version when it went absent
        self._probes: dict[int, asyncio.Task[Version | None]] = {}  # status requests to absent senders

    def status(self) -> dict:
        """What ``ppaia status`` and the launcher see."""
        p = self.progress
        return {
            "peer": self.options.index,
            "peer_id": self.identity.peer_id,
            "round": p.round,
            "rounds": self.config.rounds,
            "phase": p.phase,
            "accuracy": p.accuracy,
            "missing": p.missing,
            "stale": p.stale,
            "rejections": dict(p.rejections + self.server.rejections),
            "banned": sorted(self.bans.banned()),
        }

    async def run(self) -> None:
        """Join the swarm, run every remaining round, then linger until the others are done."""
        await self.server.start()
        host = self.options.listen[0]
        await self.dht.start(host, self.options.listen[1] or 0)
        try:
            await self._join(host)
            await self._rendezvous()
            await self._rounds()
            self.progress.phase = "done"
            await self._linger()
        finally:
            for probe in self._probes.values():
                probe.cancel()
            await self.dht.stop()
            await self.server.stop()

    async def _join(self, host: str) -> None:
        """Bootstrap into the DHT (retrying while the seeds start) and announce this peer's index."""
        for attempt in range(50):
            if not self.options.bootstrap or await self.dht.bootstrap(self.options.bootstrap):
                break
            await asyncio.sleep(min(0.1 * (attempt + 1), 1.0))
        else:
            raise ConnectionError(f"no bootstrap peer answered: {self.options.bootstrap}")
        await self.dht.announce(self.server.port, host)
        await self.dht.provide(index_topic(self.options.swarm, self.options.index))

    async def _rendezvous(self) -> None:
        """Look every other peer up in the DHT (up to `wait` seconds in all), so that peers started a
        little later are not mistaken for absent ones in the first round."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.options.wait
        missing = set(range(self.config.peers)) - {self.options.index}
        while missing and loop.time() < until:
            for index in sorted(missing):
                if await self._address(index, max(until - loop.time(), 0.05)) is not None:
                    missing.discard(index)
            if missing:
                await asyncio.sleep(0.1)
        if missing:
            log.warning(
                "peer %d: peers %s are not in the DHT yet; starting anyway",
                self.options.index,
                sorted(missing),
            )

    async def _rounds(self) -> None:
        learner = self.learner
        resumed = self.checkpoint.latest(self.expected)
        first = 1
        if resumed is not None:
            first = resumed[0] + 1
            learner.params = learner.layout.join(resumed[1])
            log.info("peer %d resumes after round %d", self.options.index, resumed[0])
            first = await self._catch_up(first)
        else:
            self.checkpoint.save(0, learner.tensors())
        for round_ in range(first, self.config.rounds + 1):
            self.progress.round = round_
            started = time.perf_counter()
            ctx = learner.context(round_)
            trains, roles = learner.roles(ctx)
            self.progress.phase = "train"
            if trains:
                await asyncio.to_thread(learner.train, round_)
            trained = time.perf_counter()
            self.progress.phase = "mix"
            received = missing = stale = 0
            for step, role in enumerate(roles):
                await self._publish(round_, step)
                got, lost, old = await self._step(round_, step, role, ctx)
                received, missing, stale = received + got, missing + lost, stale + old
            final = await self._publish(round_, len(roles))
            mixed = time.perf_counter()
            await asyncio.to_thread(self.checkpoint.save, round_, final.data)  # the bytes just served
            if self.config.evaluates(round_):
                self.progress.accuracy = (await asyncio.to_thread(learner.evaluate))[0]
            self.progress.missing += missing
            self.progress.stale += stale
            self._log_round(round_, trained - started, mixed - trained, received, missing, stale)
            self._round_times.append(time.perf_counter() - started)

    async def _catch_up(self, first: int) -> int:
        """The round a resumed peer continues from. If every peer that answers has completed round
        R ≥ `first` meanwhile, none will serve it the versions of those rounds again: it adopts the mean
        of their round-R results (each fetched and verified) and continues with round R + 1. Peers that
        do not answer (dead, or not started) are not waited for."""
        others = [i for i in range(self.config.peers) if i != self.options.index]
        statuses = await asyncio.gather(*(self._status(i) for i in others))
        alive = {
            i: info["latest"]["round"]
            for i, info in zip(others, statuses, strict=True)
            if info and info.get("latest")
        }
        if not alive:
            return first
        target = min(alive.values()) - 1  # a round every answering peer has completed
        if target < first:
            return first
        steps = len(self.learner.roles(self.learner.context(target))[1])
        models = []
        for index in alive:
            address = await self._address(index, 2.0)
            if address is None:
                continue
            try:
                models.append(await self._download(address, self._pinned.get(index), target, steps, 5.0))
            except (NotReady, ProtocolError) as err:
                log.info(
                    "peer %d: no round-%d model from peer %d to catch up: %s",
                    self.options.index,
                    target,
                    index,
                    err,
                )
        if not models:
            return first
        self.learner.params = torch.stack(models).mean(0)
        await asyncio.to_thread(self.checkpoint.save, target, self.learner.tensors())
        log.info(
            "peer %d catches up: skips rounds %d..%d, adopting the mean of %d peers' round-%d models",
            self.options.index, first, target, len(models), target,
        )  # fmt: skip
        return target + 1

    async def _status(self, index: int, timeout: float = 2.0) -> dict | None:
        """Peer `index`'s status (signed by its pinned id), or None if it cannot be found or does not
        answer within `timeout` seconds (each, for the lookup and the request)."""
        address = await self._address(index, timeout)
        if address is None:
            return None
        try:
            return await fetch_status(
                *address, identity=self.identity, timeout=timeout, expect_sender=self._pinned.get(index)
            )
        except ProtocolError as err:
            if err.reason in UNREACHABLE or err.reason == "wrong_sender":
                self._addresses.pop(index, None)  # gone or moved: look it up again next time
            return None

    async def _publish(self, round_: int, step: int) -> ModelVersion:
        """Serve this peer's current model as version (round, step) (encoded off the event loop)."""
        version = await asyncio.to_thread(ModelVersion.encode, round_, step, self.learner.tensors())
        return self.server.add(version)

    async def _step(self, round_: int, step: int, role: StepRole, ctx) -> tuple[int, int, int]:
        """Run this peer's part of one mixing step; (models received, senders left out, stale used)."""
        learner = self.learner
        if role.server is not None:  # a broadcast step: fetch the server's result, never a stale one
            model, _ = await self._fetch(role.server, round_, step + 1, substitute=False)
            if model is not None:
                learner.params = model
            return int(model is not None), int(model is None), 0
        if role.row is None:
            return 0, 0, 0
        others = [j for j in role.senders if j != self.options.index]
        fetched = await asyncio.gather(*(self._fetch(j, round_, step) for j in others))
        received = {j: model for j, (model, _) in zip(others, fetched, strict=True) if model is not None}
        learner.params = await asyncio.to_thread(learner.combine, role.row, received, ctx)
        stale = sum(is_stale for model, is_stale in fetched if model is not None)
        return len(received), len(others) - len(received), stale

    async def _fetch(
        self, index: int, round_: int, step: int, substitute: bool = True
    ) -> tuple[torch.Tensor | None, bool]:
        """Peer `index`'s version (round, step) per the timing policy: (model or None, whether stale).

        An absent sender is not waited for until it has shown progress (:meth:`_returned`). Otherwise
        wait (:meth:`_wait`); a wait that runs out makes the sender absent. Asynchronous (and
        `substitute`): a sender's recent newest version stands in for the one it does not have.
        """
        if index in self._absent and not self._returned(index):
            latest = self._absent[index]
            log.info(
                "peer %d: peer %d is absent (newest version %s); left out without waiting",
                self.options.index, index, latest,
            )  # fmt: skip
            return await self._substitute(index, round_, latest, substitute)
        model, latest, ran_out = await self._wait(index, round_, step)
        if model is not None:
            return model, False
        if ran_out:
            self._absent[index] = latest
            log.warning(
                "peer %d: no version %s from peer %d in time; left out until it progresses",
                self.options.index, (round_, step), index,
            )  # fmt: skip
        return await self._substitute(index, round_, latest, substitute)

    def _deadline(self) -> float:
        """Seconds to wait for a sender that does not answer (the whole step's wait, asynchronous)."""
        options = self.options
        if not options.synchronous:
            return options.deadline
        if not self._round_times:  # the first round: no pace known yet, and peers start unevenly
            return options.wait
        pace = WAIT_ROUNDS * statistics.median(self._round_times)
        return min(options.wait, max(options.min_wait, pace))

    async def _wait(
        self, index: int, round_: int, step: int
    ) -> tuple[torch.Tensor | None, Version | None, bool]:
        """Poll peer `index` for version (round, step), with back-off: (the model or None, the sender's
        newest version as last reported, whether the wait ran out).

        Synchronous: give up once the sender has not answered for :meth:`_deadline` seconds, or its
        newest version has not moved for `wait` seconds. Asynchronous: give up after `deadline`. A
        sender already past the version, or banned, is given up on at once.
        """
        options = self.options
        loop = asyncio.get_running_loop()
        deadline = self._deadline()
        stuck = options.wait if options.synchronous else deadline
        heard = moved = loop.time()  # the sender's last answer, and its last progress (synchronous)
        latest: Version | None = None
        pause = 0.01
        while (until := min(heard + deadline, moved + stuck)) > loop.time():
            address = await self._address(index, until - loop.time())
            peer_id = self._pinned.get(index)
            if peer_id is not None and self.bans.is_banned(peer_id):
                return None, latest, False
            if address is not None:
                try:
                    model = await self._download(address, peer_id, round_, step, 2 * deadline)
                    return model, (round_, step), False
                except NotReady as err:
                    reported = _version(err.latest)
                    if reported is not None and reported > (round_, step):
                        return None, reported, False
                    if options.synchronous:  # alive, and maybe progressing: keep waiting
                        heard = loop.time()
                        if reported != latest:
                            moved = heard
                    latest = reported
                except ProtocolError as err:
                    self._reject(index, peer_id, err)
            await asyncio.sleep(max(min(pause, until - loop.time()), 0))
            pause = min(pause * 1.5, 0.25)
        return None, latest, True

    def _returned(self, index: int) -> bool:
        """Whether absent peer `index` has shown progress: its status, asked in the background (one
        request at a time, started here, so no step waits for it), reported a newest version other than
        the one it had when it went absent. An answer counts from the step after the one that asked."""
        probe = self._probes.pop(index, None)
        if probe is not None and not probe.done():
            self._probes[index] = probe  # still asking
            return False
        latest = None
        if probe is not None and not probe.cancelled():
            if probe.exception() is not None:
                log.warning(
                    "peer %d: asking peer %d failed: %r", self.options.index, index, probe.exception()
                )
            else:
                latest = probe.result()
        if latest is not None and latest != self._absent[index]:
            del self._absent[index]
            log.info("peer %d: peer %d is back (newest version %s)", self.options.index, index, latest)
            return True
        self._probes[index] = asyncio.create_task(self._probe(index))
        return False

    async def _probe(self, index: int) -> Version | None:
        """Peer `index`'s newest version, from a status request; None if it does not answer (or has
        none)."""
        info = await self._status(index, self._deadline())
        return None if info is None else _version(info.get("latest"))

    async def _substitute(
        self, index: int, round_: int, latest: Version | None, substitute: bool
    ) -> tuple[torch.Tensor | None, bool]:
        """Asynchronous, if `substitute`: the sender's newest version `latest` instead, if it is at most
        `max_staleness` rounds old: (model, True). Otherwise (None, False): the sender is left out."""
        options = self.options
        usable = (
            substitute
            and not options.synchronous
            and latest is not None
            and latest[0] >= round_ - options.max_staleness
        )
        address = await self._address(index, options.deadline) if usable else None
        peer_id = self._pinned.get(index)
        if address is None or latest is None or (peer_id is not None and self.bans.is_banned(peer_id)):
            return None, False
        try:
            model = await self._download(address, peer_id, latest[0], latest[1], max(options.deadline, 1.0))
        except (NotReady, ProtocolError) as err:
            log.warning("peer %d: stale substitute from peer %d failed: %s", options.index, index, err)
            return None, False
        return model, True

    async def _download(
        self, address: Address, peer_id: str | None, round_: int, step: int, timeout: float
    ) -> torch.Tensor:
        """Fetch and verify a model within `timeout` seconds; the reply must start, and then keep
        coming at the transfer's minimum rate, within half of that (at most the default pace window):
        a sender that trickles is cut off as ``slow_sender`` before the timeout, and struck."""
        timeout = max(timeout, 0.5)
        fetched = await fetch_model(
            address[0],
            address[1],
            identity=self.identity,
            round=round_,
            step=step,
            expected=self.expected,
            max_bytes=self.max_bytes,
            timeout=timeout,
            expect_sender=peer_id,
            pace=Pace(DEFAULT_PACE.min_rate, min(timeout / 2, DEFAULT_PACE.window)),
        )
        return self.learner.layout.join(fetched.tensors)

    def _reject(self, index: int, peer_id: str | None, err: ProtocolError) -> None:
        if err.reason in UNREACHABLE or err.reason == "wrong_sender":
            # gone, restarted elsewhere, or someone else now answers on that address: look it up again
            self._addresses.pop(index, None)
            if err.reason == "wrong_sender":
                self.progress.rejections[err.reason] += 1
            return
        self.progress.rejections[err.reason] += 1
        log.warning(
            "peer %d: rejected a model from peer %d (%s): %s", self.options.index, index, err.reason, err
        )
        if peer_id is not None and self.bans.strike(peer_id, err.reason):
            log.warning("peer %d: peer %d (%s) is banned", self.options.index, index, peer_id)

    async def _address(self, index: int, timeout: float = 5.0) -> Address | None:
        """Where peer `index` serves, from the DHT (see `_locate`); None if not found within `timeout`
        seconds. A lookup that outlasts the timeout goes on in the background and the next call for
        the same index waits for it instead of starting another."""
        if index in self._addresses:
            return self._addresses[index]
        lookup = self._lookups.get(index)
        if lookup is None:
            lookup = self._lookups[index] = asyncio.ensure_future(self._locate(index))
        try:
            address = await asyncio.wait_for(asyncio.shield(lookup), max(timeout, 0.05))
        except TimeoutError:
            return None
        except Exception as err:  # a hostile or broken DHT answer must not stop the peer
            log.warning("peer %d: DHT lookup of peer %d failed: %r", self.options.index, index, err)
            return None
        finally:
            if lookup.done():  # consumed (or failed): the next call starts a fresh lookup
                self._lookups.pop(index, None)
        if address is not None:
            self._addresses[index] = address
        return address

    async def _locate(self, index: int) -> Address | None:
        """Peer `index`'s address. A pinned index (members list, or pinned before) is found through
        its peer's own `peer:` record, which no other key can publish. Otherwise the index is pinned to
        the provider of its topic that a strict majority of the storing nodes hold first; nobody is
        pinned while they disagree, and no claim wins by how it is dated."""
        pinned = self._pinned.get(index)
        if pinned is not None:
            record = await self.dht.find_peer(pinned)
            return None if record is None else (record.host, record.tcp_port)
        providers = await self.dht.lookup_providers(index_topic(self.options.swarm, index))
        first = providers.first
        if first is None:
            claimants = frozenset(record.peer_id for record in providers.records)
            if len(claimants) > 1 and self._disputed.get(index) != claimants:  # log each new dispute once
                self._disputed[index] = claimants
                log.warning(
                    "peer %d: %d keys claim index %d and the DHT does not agree which came first (%s); "
                    "not pinning it yet",
                    self.options.index, len(providers.records), index, dict(providers.firsts),
                )  # fmt: skip
            return None
        self._pinned[index] = first.peer_id
        others = [record.peer_id for record in providers.records if record.peer_id != first.peer_id]
        if others:
            log.warning(
                "peer %d: pinned index %d to %s, its first holder; ignoring later claims by %s",
                self.options.index, index, first.peer_id, others,
            )  # fmt: skip
        return first.host, first.tcp_port

    async def _linger(self) -> None:
        """Keep serving until every other peer reports done or fails to answer 3 times in a row, within
        `linger` seconds."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.options.linger
        failures = dict.fromkeys(set(range(self.config.peers)) - {self.options.index}, 0)
        while failures and loop.time() < until:
            for index in sorted(failures):
                address = await self._address(index, 1.0)
                try:
                    if address is None:
                        raise ProtocolError("unreachable", f"peer {index} is not in the DHT")
                    info = await fetch_status(*address, identity=self.identity, timeout=1.0)
                except ProtocolError:
                    self._addresses.pop(index, None)
                    failures[index] += 1
                    if failures[index] >= 3:
                        del failures[index]  # gone: nobody left to serve there
                    continue
                failures[index] = 0
                if info.get("phase") == "done":
                    del failures[index]
            await asyncio.sleep(0.2)

    def _log_round(
        self, round_: int, train_s: float, mix_s: float, received: int, missing: int, stale: int
    ) -> None:
        """Append the round's timings and exchanges to the peer's metrics.csv (the benchmarks read it)."""
        path = Path(self.options.data_dir) / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["round", "accuracy", "train_s", "mix_s", "received", "missing", "stale"])
            accuracy = "" if self.progress.accuracy is None else f"{self.progress.accuracy:.6f}"
            writer.writerow([round_, accuracy, f"{train_s:.6f}", f"{mix_s:.6f}", received, missing, stale])
