"""A networked peer: train, publish, fetch the neighbours' models, apply the rule, checkpoint, repeat.

One asyncio process per peer. It serves its models over TCP (:class:`ModelServer`), announces itself and
the swarm index it plays (topic ``<swarm>/peer/<i>``) in the Kademlia DHT, and runs the rounds of the
config it was given — the same rule code as the simulator (:class:`PeerLearner`). This module holds the
round loop and the wiring; the policies it applies live beside it:

- :mod:`~ppaia.network.addressbook` — where the other peers serve, and which key plays each index;
- :mod:`~ppaia.network.agreement` — the shared config every partner must run, checked at first contact;
- :mod:`~ppaia.network.timing` — how long to wait for a sender: pace-derived deadlines, absent senders;
- :mod:`~ppaia.network.strikes` — what to do with a bad reply: count, strike, ban;
- :mod:`~ppaia.network.status` and :mod:`~ppaia.network.progress` — its status and its round records.

**Versions.** In round r the model entering mixing step s is version (r, s); (r, S) is the round's
result for a rule with S steps. A peer publishes each version as soon as it has it and fetches exactly
the versions of the senders in its own row of the step. A broadcast step (one result for several peers:
FedAvg's server average) is computed by the smallest peer id the result goes to (peer 0 for FedAvg), and
the others fetch its version (r, s + 1). A peer keeps serving its newest versions within a memory budget
(at least 4, at most 256).

**Start.** A peer waits, at most `wait`, until it has found every other peer in the DHT and seen from its
status that it runs the same shared config; in either timing mode a peer not yet started would otherwise
be taken for an absent one, and the first peer would run alone. A partner that runs another config is
refused (never used, named with the differing fields in the log, listed in the status as ``refused``),
and its status is asked again in the background in case it comes back with this config. A peer that
runs another config than every other peer stops with an :class:`AgreementError` naming the fields, once
they have seen it (each lists it as refused; at most `NOTICE_SECONDS`), so that they leave it out at
once instead of waiting for it as for a dead peer.

**Bad input.** Every received model is checked (signature, sender, nonce, version, size, CID, tensor
names/shapes/dtypes, NaN/Inf) before use, and every status against :class:`PeerStatus`; a failure is
handled by :class:`Strikes`. Within a download, each slice of the reply must arrive within half the
download's time (at most the transport's pace window), or the sender is cut off as ``slow_sender``.

**Checkpoints** after every round (:class:`Checkpoint`); a restarted peer resumes after the last one,
or catches up with the others' newest completed round if they have all moved on (:meth:`_catch_up`).
With each round it saves what it learned besides its model (:class:`LearnerState`): its rule's state keyed
by partner peer id (learned trust: its trust in each partner) and its DP accountant's, so a restarted
peer resumes with the trust it had and the ε it had spent. Catching up combines the others' models
with the peer's own rule (learned trust weighs them by its trust), not by a plain mean.

**Linger.** After its last round a peer keeps serving (phase ``finished``, still answering ``ppaia
status``) until every other peer reports finished or fails to answer 3 times in a row, at most `linger`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ppaia import codec
from ppaia.config import ExperimentConfig
from ppaia.experiment import OwnData
from ppaia.network.addressbook import AddressBook, index_topic
from ppaia.network.agreement import Agreement, Difference, describe
from ppaia.network.checkpoint import Checkpoint
from ppaia.network.dht import Address, BootstrapError, PeerDHT
from ppaia.network.errors import AgreementError, ProtocolError, format_address
from ppaia.network.identity import Identity
from ppaia.network.learner import PeerLearner, StepRole
from ppaia.network.members import initial_pins
from ppaia.network.progress import Progress, RoundRecord, forget_rounds_after, record_round
from ppaia.network.status import (
    MAX_LISTED,
    MAX_PACE,
    Latest,
    PeerStatus,
    Phase,
    Traffic,
    heaviest,
    trust_row,
)
from ppaia.network.strikes import Strikes
from ppaia.network.timing import Timing, Version
from ppaia.network.transfer import (
    DEFAULT_PACE,
    ModelServer,
    ModelVersion,
    NotReady,
    Pace,
    fetch_model,
    fetch_status,
)

__all__ = ["Peer", "PeerOptions"]

log = logging.getLogger(__name__)

LOOPBACK = frozenset({"127.0.0.1", "::1"})
SERVED_BYTES = 256 << 20  # memory for the model versions a peer keeps serving
NOTICE_SECONDS = 10.0  # a refused peer's wait for its partners to see it runs another config (they poll)


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


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class Peer:
    """One peer process's state and main loop (see the module docstring)."""

    def __init__(
        self,
        config: ExperimentConfig,
        options: PeerOptions,
        identity: Identity | None = None,
        own: OwnData | None = None,
    ) -> None:
        self.config = config
        self.options = options
        self.identity = identity or Identity.load_or_create(options.data_dir)
        self.label = self._label()  # how the log names this peer
        self.learner = PeerLearner(config, options.index, own)
        self.expected = self.learner.layout.expected()
        encoded = len(codec.encode(self.learner.tensors()))  # every honest model has exactly this size
        self.max_bytes = min(encoded + 4096, options.max_model_bytes)
        self.checkpoint = Checkpoint(Path(options.data_dir), config, options.index, self.label)
        # peers with their own data agree on what their models are built from: inputs and classes
        facts = (
            None if own is None else {"inputs": list(own.train.input_shape), "classes": own.train.n_classes}
        )
        self.agreement = Agreement.of(config, own_data=own is not None, data=facts)
        self.progress = Progress()
        self.strikes = Strikes(self.label, names=self._partner)
        self.server = ModelServer(
            self.identity,
            options.listen[0],
            options.listen[1],
            keep=max(4, min(256, SERVED_BYTES // encoded)),  # versions kept for slower neighbours
            status=self.status,
            bans=self.strikes.bans,
            shared_addresses=LOOPBACK,  # in a local swarm every peer has the same address
        )
        self.dht = PeerDHT(self.identity, ttl=options.dht_ttl, rpc_timeout=2.0)
        pins = initial_pins(options.members, config.peers, options.index, self.identity.peer_id)
        self.book = AddressBook(self.dht, options.swarm, options.index, pins)
        self.timing = Timing(
            self.label,
            synchronous=options.synchronous,
            wait=options.wait,
            min_wait=options.min_wait,
            deadline=options.deadline,
            max_staleness=options.max_staleness,
            names=self._partner,
        )
        self.agreed: dict[int, Address] = {}  # partner -> the address its agreeing status came from
        self.refused: dict[int, list[Difference]] = {}  # partner -> how the config it runs differs
        self._rechecks: dict[int, asyncio.Task[PeerStatus | None]] = {}  # status requests to refused ones
        # what the status reports besides progress: model bytes fetched per sender id, the version that
        # ended the last completed round, and the trust row as of the last checkpoint (read here, not
        # from the rule, which a worker thread may be updating)
        self.received: Counter[str] = Counter()
        self.completed: ModelVersion | None = None
        self.trust: dict[str, float] = {}
        self.size = f"of {config.peers} peers"  # how the log sizes its swarm

    def _label(self) -> str:
        """How the log names this peer: by the index it plays."""
        return str(self.options.index)

    def _partner(self, index: int) -> str:
        """How the log names partner `index`: by its index."""
        return str(index)

    def status(self) -> PeerStatus:
        """What ``ppaia status``, the launcher and the other peers see."""
        p = self.progress
        banned = sorted(self.strikes.bans.banned())
        return PeerStatus(
            peer_id=self.identity.peer_id,
            index=self.options.index,
            round=p.round,
            rounds=self.config.rounds,
            step=p.step,
            phase=p.phase,
            accuracy=_finite(p.accuracy),
            loss=_finite(p.loss),
            epsilon=_finite(p.epsilon),
            missing=p.missing,
            stale=p.stale,
            rejections=dict(self.strikes.rejections + self.server.rejections),
            banned=banned[:MAX_LISTED],
            banned_total=len(banned),
            refused=sorted(self.refused)[:MAX_LISTED],
            latest=Latest.of(self.server.latest),
            completed=Latest.of(self.completed),
            traffic=Traffic(
                sent=self.server.served_bytes,
                received=self.received.total(),
                received_from=heaviest(self.received),
            ),
            trust=trust_row(self.trust),
            agreement=self.agreement,
            pace=None if (pace := self.timing.pace()) is None else min(pace, MAX_PACE),
        )

    async def run(self) -> None:
        """Join the swarm, run every remaining round, then linger until the others are done."""
        host = self.options.listen[0]
        await self.dht.start(host, self.options.listen[1] or 0)
        try:
            await self._join(host)
            await self._rendezvous()
            await self._rounds()
            self.progress.phase = Phase.FINISHED
            await self._linger()
        finally:
            self.timing.stop()
            for asking in self._rechecks.values():
                asking.cancel()
            await self.dht.stop()
            await self.server.stop()

    async def _join(self, host: str) -> None:
        """Serve, bootstrap into the DHT and announce this peer (:meth:`_serve`, :meth:`_enter_dht`,
        :meth:`_announce`)."""
        await self._serve(host)
        await self._enter_dht()
        await self._announce(host)

    async def _serve(self, host: str) -> None:
        """Start the model server (models and statuses), and say where this peer listens."""
        await self.server.start()
        dht = format_address(host, self.dht.port)
        log.info(
            "peer %s (%s) listens on TCP %s (models) and UDP %s (the DHT): others join it with "
            "--bootstrap %s; swarm %r %s, %d rounds, shared config %s",
            self.label, self.identity.peer_id, format_address(host, self.server.port), dht, dht,
            self.options.swarm, self.size, self.config.rounds, self.agreement.digest[:16],
        )  # fmt: skip

    async def _enter_dht(self) -> None:
        """Bootstrap into the DHT, retrying while the seeds start; BootstrapError naming the seeds if
        none answered within `wait`."""
        seeds = self.options.bootstrap
        if seeds:
            retrying = asyncio.ensure_future(self._bootstrap(seeds))
            try:
                await self.dht.wait_joined(seeds, self.options.wait)
            except BootstrapError:
                retrying.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await retrying
                raise
            await retrying  # a seed answered: the crawl through it ends

    async def _announce(self, host: str) -> None:
        """Announce where this peer serves, and provide its topic (its index in its swarm)."""
        await self.dht.announce(self.server.port, host)
        await self.dht.provide(self._topic())

    def _topic(self) -> str:
        """The DHT topic this peer provides: the index it plays in its swarm."""
        return index_topic(self.options.swarm, self.options.index)

    async def _bootstrap(self, seeds: tuple[Address, ...]) -> None:
        """Ask the seeds until one answers (they may still be starting); :meth:`_enter_dht` bounds it."""
        attempt = 0
        while not await self.dht.bootstrap(seeds):
            attempt += 1
            await asyncio.sleep(min(0.1 * attempt, 1.0))

    async def _rendezvous(self) -> None:
        """Find every other peer and check that it runs this config (up to `wait` seconds in all), so
        that peers started a little later are not mistaken for absent ones in the first round; stop
        with AgreementError if every other peer was found and runs another config."""
        self.progress.phase = Phase.WAITING
        loop = asyncio.get_running_loop()
        until = loop.time() + self.options.wait
        missing = set(range(self.config.peers)) - {self.options.index}
        while missing and loop.time() < until:
            for index in sorted(missing):
                found = await self._address(index, max(until - loop.time(), 0.05))
                if found is not None or index in self.refused:
                    missing.discard(index)
            if missing:
                await asyncio.sleep(0.1)
        if missing:
            log.warning(
                "peer %d: peers %s are not in the DHT yet, or do not answer; starting anyway",
                self.options.index,
                sorted(missing),
            )
        if self.refused and not self.agreed and not missing:
            await self._until_refused()
            others = "; ".join(f"peer {i}: {describe(diff)}" for i, diff in sorted(self.refused.items()))
            raise AgreementError(
                f"peer {self.options.index} runs another config than every peer it found, so it cannot "
                f"train with any of them ({others}); start it with the swarm's config"
            )

    async def _until_refused(self) -> None:
        """Before this peer stops because every other peer runs another config: wait (at most
        `NOTICE_SECONDS`, or `wait`) until each of them lists it as refused in its status, so that they
        leave it out at once, naming the fields, instead of waiting for it as for a dead peer."""
        loop = asyncio.get_running_loop()
        until = loop.time() + min(self.options.wait, NOTICE_SECONDS)
        waiting = set(self.refused)
        while waiting and loop.time() < until:
            for index in sorted(waiting):
                status = await self._status(index, 1.0)
                if status is not None and self.options.index in status.refused:
                    waiting.discard(index)
            await asyncio.sleep(0.1)

    async def _rounds(self) -> None:
        learner, progress = self.learner, self.progress
        resumed = self.checkpoint.latest(self.expected)
        first = 1
        if resumed is not None:
            first = resumed.round + 1
            forget_rounds_after(self.options.data_dir, resumed.round)
            learner.params = learner.layout.join(resumed.model)
            ids = self._partner_ids()
            if resumed.learner is not None:
                learner.load_state(resumed.learner, ids)
                self.trust = resumed.learner.rule
            progress.epsilon = learner.epsilon()
            restored = learner.describe_state(ids)
            log.info("peer %s resumes after round %d%s", self.label, resumed.round, restored)
            first = await self._catch_up(first)
        else:
            self.checkpoint.save(0, learner.tensors())
            first = await self._entry_round(first)
        for round_ in range(first, self.config.rounds + 1):
            progress.round, progress.step = round_, 0
            started = time.perf_counter()
            ctx = learner.context(round_)
            trains, roles = await self._roles(ctx)
            progress.phase = Phase.TRAINING
            if trains:
                await asyncio.to_thread(learner.train, round_)
            progress.epsilon = learner.epsilon()
            trained = time.perf_counter()
            progress.phase = Phase.MIXING
            received = missing = stale = 0
            for step, role in enumerate(roles):
                progress.step = step
                await self._publish(round_, step)
                got, lost, old = await self._step(round_, step, role, ctx)
                received, missing, stale = received + got, missing + lost, stale + old
            final = self.completed = await self._publish(round_, len(roles))
            mixed = time.perf_counter()
            evaluated = self.config.evaluates(round_)
            if evaluated:
                progress.accuracy, progress.loss = await asyncio.to_thread(learner.evaluate)
            progress.missing += missing
            progress.stale += stale
            record = RoundRecord(
                round_, trained - started, mixed - trained, received, missing, stale, evaluated
            )
            record_round(self.options.data_dir, self.label, self.config.rounds, record, progress)
            state = learner.state(self._partner_ids())  # after the round's row: see ppaia.network.progress
            await asyncio.to_thread(self.checkpoint.save, round_, final.data, state)  # the bytes just served
            self.trust = state.rule
            self.timing.record(time.perf_counter() - started)

    async def _entry_round(self, first: int) -> int:
        """The round a peer that starts afresh begins with: the first (an open swarm's peer joins at
        its partners' round: :class:`ppaia.network.openswarm.OpenPeer`)."""
        return first

    async def _roles(self, ctx) -> tuple[bool, list[StepRole]]:
        """Whether this peer trains this round, and its part in each mixing step (its row of the rule's
        plan; an open swarm's peer builds its row from the partners it samples)."""
        return self.learner.roles(ctx)

    async def _catch_up(self, first: int) -> int:
        """The round a resumed peer continues from. If every peer that answers has completed round
        R ≥ `first` meanwhile, none will serve it the versions of those rounds again: it combines their
        round-R results (each fetched and verified) by its own part of the rule's round-R plan
        (:meth:`PeerLearner.catch_up`) and continues with round R + 1. Peers that
        do not answer (dead, or not started) or run another config are not waited for."""
        others = [i for i in range(self.config.peers) if i != self.options.index]
        statuses = await asyncio.gather(*(self._status(i) for i in others))
        alive = {
            i: status.latest.round
            for i, status in zip(others, statuses, strict=True)
            if status is not None and status.latest is not None and i not in self.refused
        }
        if not alive:
            return first
        target = min(alive.values()) - 1  # a round every answering peer has completed
        if target < first:
            return first
        steps = len(self.learner.roles(self.learner.context(target))[1])
        models: dict[int, torch.Tensor] = {}
        for index in alive:
            address = await self._address(index, 2.0)
            if address is None:
                continue
            try:
                pinned = self.book.pinned.get(index)
                models[index] = await self._download(address, pinned, target, steps, 5.0)
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
        self.learner.params = await asyncio.to_thread(self.learner.catch_up, models, target)
        state = self.learner.state(self._partner_ids())
        await asyncio.to_thread(self.checkpoint.save, target, self.learner.tensors(), state)
        self.trust = state.rule
        log.info(
            "peer %d catches up: skips rounds %d..%d, combining %d peers' round-%d models by its rule",
            self.options.index, first, target, len(models), target,
        )  # fmt: skip
        return target + 1

    def _partner_ids(self) -> list[str | None]:
        """The peer id playing each index (None where none is pinned yet), this peer's own included."""
        ids: list[str | None] = [self.book.pinned.get(index) for index in range(self.config.peers)]
        ids[self.options.index] = self.identity.peer_id
        return ids

    async def _status(self, index: int, timeout: float = 2.0) -> PeerStatus | None:
        """Peer `index`'s status (signed by its pinned id, valid, and checked against this peer's shared
        config: see :meth:`_agree`), or None if it cannot be found or does not answer within `timeout`
        seconds (each, for the lookup and the request), or its status is refused (a strike)."""
        address = await self.book.address(index, timeout)
        if address is None:
            return None
        peer_id = self.book.pinned.get(index)
        try:
            status = await fetch_status(
                *address, identity=self.identity, timeout=timeout, expect_sender=peer_id
            )
        except ProtocolError as err:
            if self.strikes.reject(index, peer_id, err, "status"):
                self.book.forget(index)
            return None
        self._agree(index, address, status)
        return status

    def _agree(self, index: int, address: Address, status: PeerStatus) -> bool:
        """Whether peer `index` (at `address`) runs this peer's shared config, as `status` says; a peer
        that does not is refused (left out of every step) until a later status says it does."""
        differences = self.agreement.differences(status.agreement)
        if not differences:
            self.agreed[index] = address
            if self.refused.pop(index, None) is not None:
                log.info("peer %s: peer %s now runs this swarm's config", self.label, self._partner(index))
            return True
        self.agreed.pop(index, None)
        if self.refused.get(index) != differences:  # logged once per difference
            log.warning(
                "peer %s: refusing peer %s (%s): it runs another config (%s); not training with it",
                self.label, self._partner(index), status.peer_id, describe(differences),
            )  # fmt: skip
        self.refused[index] = differences
        return False

    async def _address(self, index: int, timeout: float = 5.0) -> Address | None:
        """Where partner `index` serves, once its status has shown that it runs this config (asked at
        first contact, and whenever it is found at another address); None if it is not found or does
        not answer within `timeout` seconds, or is refused."""
        address = await self.book.address(index, timeout)
        if address is None or self.agreed.get(index) == address:
            return address
        await self._status(index, timeout)
        return address if self.agreed.get(index) == address else None

    def _excluded(self, index: int) -> bool:
        """Whether peer `index` is left out at once: it runs another config, or is banned."""
        return self._refused(index) or self.strikes.is_banned(self.book.pinned.get(index))

    def _refused(self, index: int) -> bool:
        """Whether peer `index` runs another config. Its status is then asked again in the background
        (one request at a time), so a partner restarted with this swarm's config is taken back from the
        next step on."""
        if index not in self.refused:
            return False
        asking = self._rechecks.get(index)
        if asking is None or asking.done():
            self._rechecks[index] = asyncio.create_task(self._status(index, self.timing.deadline()))
        return True

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

        A refused or banned sender is left out at once, an absent one is not waited for until it has
        shown progress (:meth:`Timing.skips`). Otherwise wait (:meth:`_wait`); a wait that runs out
        makes the sender absent. Asynchronous (and `substitute`): a sender's recent newest version
        stands in for the one it does not have.
        """
        if self._excluded(index):
            return None, False
        if self.timing.skips(index, lambda: self._probe(index)):
            return await self._substitute(index, round_, self.timing.absent[index], substitute)
        started = time.monotonic()
        model, latest, ran_out = await self._wait(index, round_, step)
        if model is not None:
            return model, False
        if ran_out:
            self.timing.went_absent(index, (round_, step), latest, time.monotonic() - started)
        return await self._substitute(index, round_, latest, substitute)

    async def _wait(
        self, index: int, round_: int, step: int
    ) -> tuple[torch.Tensor | None, Version | None, bool]:
        """Poll peer `index` for version (round, step), with back-off: (the model or None, the sender's
        newest version as last reported, whether the wait ran out).

        Synchronous: give up once the sender has not answered for :meth:`Timing.deadline` seconds, or
        its newest version has not moved for `wait` seconds. Asynchronous: give up after `deadline`. A
        sender already past the version, banned or refused, is given up on at once.
        """
        timing = self.timing
        loop = asyncio.get_running_loop()
        deadline, stuck = timing.deadline(), timing.stuck()
        heard = moved = loop.time()  # the sender's last answer, and its last progress (synchronous)
        latest: Version | None = None
        pause = 0.01
        while (until := min(heard + deadline, moved + stuck)) > loop.time():
            address = await self._address(index, until - loop.time())
            if self._excluded(index):
                return None, latest, False
            peer_id = self.book.pinned.get(index)
            if address is not None:
                try:
                    model = await self._download(address, peer_id, round_, step, 2 * deadline)
                    return model, (round_, step), False
                except NotReady as err:
                    reported = err.latest
                    if reported is not None and reported > (round_, step):
                        return None, reported, False
                    if timing.synchronous:  # alive, and maybe progressing: keep waiting
                        heard = loop.time()
                        if reported != latest:
                            moved = heard
                    latest = reported
                except ProtocolError as err:
                    if self.strikes.reject(index, peer_id, err):
                        self.book.forget(index)
            await asyncio.sleep(max(min(pause, until - loop.time()), 0))
            pause = min(pause * 1.5, 0.25)
        return None, latest, True

    async def _probe(self, index: int) -> Version | None:
        """Peer `index`'s newest version, from a status request; None if it does not answer (or has
        none)."""
        status = await self._status(index, self.timing.deadline())
        return None if status is None or status.latest is None else (status.latest.round, status.latest.step)

    async def _substitute(
        self, index: int, round_: int, latest: Version | None, substitute: bool
    ) -> tuple[torch.Tensor | None, bool]:
        """Asynchronous, if `substitute`: the sender's newest version `latest` instead, if it is at most
        `max_staleness` rounds old: (model, True). Otherwise (None, False): the sender is left out."""
        options = self.options
        usable = substitute and self.timing.substitutable(latest, round_)
        address = await self._address(index, options.deadline) if usable else None
        if address is None or latest is None or self._excluded(index):
            return None, False
        try:
            model = await self._download(
                address, self.book.pinned.get(index), latest[0], latest[1], max(options.deadline, 1.0)
            )
        except (NotReady, ProtocolError) as err:
            log.warning(
                "peer %s: stale substitute from peer %s failed: %s", self.label, self._partner(index), err
            )
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
        self.received[fetched.sender] += fetched.size
        return self.learner.layout.join(fetched.tensors)

    async def _linger(self) -> None:
        """Keep serving until every other peer reports finished, fails to answer 3 times in a row or is
        refused, within `linger` seconds."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.options.linger
        failures = dict.fromkeys(set(range(self.config.peers)) - {self.options.index}, 0)
        while failures and loop.time() < until:
            for index in sorted(failures):
                status = await self._status(index, 1.0)
                if status is None and index not in self.refused:
                    failures[index] += 1
                    if failures[index] >= 3:
                        del failures[index]  # gone: nobody left to serve there
                    continue
                failures[index] = 0
                if index in self.refused or status.phase is Phase.FINISHED:
                    del failures[index]
            await asyncio.sleep(0.2)
