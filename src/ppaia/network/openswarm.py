"""An open swarm: peers join by swarm name, find their partners themselves, and come and go.

``ppaia peer --swarm NAME --data SPEC --bootstrap HOST:PORT`` starts a peer that knows neither how many
peers there are nor an index of its own: its identity is its key. It joins the DHT and the swarm's
peer sampling (:mod:`ppaia.network.sampling`) through any member, and each round picks its partners at
random among the live members in its view. What an :class:`OpenPeer` changes from a replay-mode
:class:`~ppaia.network.peer.Peer` (whose round loop, timing policy, strikes, checkpoints and status it
keeps):

- **Agreement at join.** The shared config (model, rule, optimizer, rounds, ..., but not ``peers`` nor the
  topology: :data:`~ppaia.network.agreement.OPEN_SWARM`) is checked against every member it meets. A peer
  whose config is incompatible with every member it found is refused when it joins
  (:class:`AgreementError` naming the fields, exit 2), before any round.
- **Rules.** Rules whose partners may be anyone (:data:`OPEN_RULES`) pick them from the view each round:
  ``learned_trust`` pulls from k random live members (its ``partners``) and weighs them by its trust,
  ``gossip`` averages with one random live member, as its pairwise averaging does, and ``isolated``
  trains alone. Rules on a topology (consensus, P2PL, the robust neighbourhood rules) run on an overlay
  the peers build from their views (:mod:`ppaia.network.overlay`: a few links per peer that both ends
  agreed to, mixing weights from the degrees they announce); the swarm agrees on its degree. FedAvg (it
  has a server; no member is elected) is refused with a message (:func:`check_open`).
- **Partners by position.** The round loop works on integer positions: position 0 is the peer itself,
  and each member met gets the next position for the life of the process (:class:`Roster`). Learned
  trust is keyed by peer id in checkpoints, so a restarted peer gets its trust back whatever positions
  its partners have then.
- **Join at round r.** A peer that starts afresh asks its members' statuses and, if they have completed
  rounds, fetches and verifies each one's newest completed model, starts from their mean weighted by
  the members' trust in each other as their statuses list it (:func:`entry_weights`; learned trust:
  a model the swarm distrusts counts little; gossip: the plain mean) and continues at the round after
  the newest of them. A restarted peer (its data directory) resumes its checkpoint,
  key and rule state, and catches up the same way when its partners have moved on: then its own rule
  combines their models with its own (learned trust: by its trust).
- **Held at the door.** A peer given a `door` (a launcher following a join schedule) bootstraps into the
  DHT and publishes its address, then waits for the door to open before it serves and lists itself as
  a member: its start-up (seconds on a loaded machine, while a swarm of small models runs rounds in a
  fraction of one) is behind it when its scheduled round comes. Until then the members see what they
  would of a peer that is down: a restarted one, held, is not mistaken for a live peer that makes no
  progress. Let in, it lists itself, and meets the members by view exchanges meanwhile if that
  store is slow. Its launcher also gives the members a `release`: a finished member lingers until it
  says every peer it let in has joined (within `linger`), so that one let in near the end, or after
  it, finds members to start from.
- **Saying why.** A peer that cannot make progress says why in its status (:class:`Stuck`: no partners,
  all banned, all refused, catching up, waiting for partners) and logs it once per change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from ppaia.config import ConfigError, ExperimentConfig
from ppaia.experiment import OwnData
from ppaia.network.agreement import Agreement, describe
from ppaia.network.dht import Address
from ppaia.network.errors import AgreementError, ProtocolError
from ppaia.network.identity import Identity
from ppaia.network.learner import StepRole, check_supported
from ppaia.network.overlay import Overlay, overlay_degree, overlay_roles
from ppaia.network.peer import LOOPBACK, Peer, PeerOptions
from ppaia.network.progress import RoundRecord, record_round
from ppaia.network.records import PeerRecord
from ppaia.network.sampling import Sampler, View
from ppaia.network.status import MAX_LISTED, Membership, PeerStatus, Phase, Stuck
from ppaia.network.transfer import NotReady
from ppaia.network.wire import MAX_OFFER
from ppaia.topology import TOPOLOGIES
from ppaia.topology.mixing import Mixing

__all__ = [
    "OPEN_RULES",
    "OpenOptions",
    "OpenPeer",
    "Roster",
    "check_open",
    "entry_weights",
    "exchange_period",
    "members_topic",
    "on_overlay",
    "open_row",
    "swarm_round",
]

log = logging.getLogger(__name__)

OPEN_RULES = frozenset({"learned_trust", "gossip", "isolated"})
RECORD_TTL = 300.0  # seconds a member record handed around in view exchanges stays valid
STATUS_WAIT = 5.0  # seconds a joining peer waits for a member's status before asking again
EXCHANGE_WAIT = 5.0  # seconds a view exchange may take (peers hosted many to a process answer slower)
SETTLE = 3.0  # periods of upkeep without a new or lost link after which an overlay short of links trains
EXCHANGES_PER_ROUND = 2.0  # view upkeep ticks a round, once a peer has timed its rounds
EXCHANGE_RANGE = (0.25, 10.0)  # ... every this many `period`s at the least and at the most


def exchange_period(period: float, pace: float | None) -> float:
    """Seconds between a peer's view upkeep ticks: `period` until it has timed a round of its own
    (`pace`: its median round time), then :data:`EXCHANGES_PER_ROUND` a round, within
    :data:`EXCHANGE_RANGE` times `period`. The view serves the rounds (a few partners each): kept per
    round, it is as fresh in rounds on a busy machine or in a large swarm as on an idle one, and
    membership bytes per round do not grow with the round's length."""
    if pace is None:
        return period
    low, high = EXCHANGE_RANGE
    return min(max(pace / EXCHANGES_PER_ROUND, low * period), high * period)


def swarm_round(completed: Sequence[int]) -> int:
    """The round the swarm is in, from its members' last completed rounds: one after the newest round two
    of them completed (one member claiming a later one moves nothing; with one member, its own), 1 when
    none has completed a round. A fresh peer joins at it; ``ppaia launch --open`` follows its schedule
    by it, so a peer let in at round R finds members that completed R − 1."""
    rounds = sorted(completed)
    return (rounds[-2] if len(rounds) > 1 else rounds[-1] if rounds else 0) + 1


def members_topic(swarm: str) -> str:
    """The DHT topic a member of open swarm `swarm` provides (at most 20 are listed: a start, not a list)."""
    return f"{swarm}/members"


def check_open(config: ExperimentConfig) -> None:
    """ConfigError naming what of `config` an open swarm cannot run."""
    rule = config.rule.name
    if rule == "fedavg":
        raise ConfigError(
            "rule 'fedavg' has a server, and an open swarm elects none: use learned_trust or gossip, "
            "which pick random live partners"
        )
    check_supported(config)
    if on_overlay(config):
        overlay_degree(config)
    if config.privacy is not None or config.attack is not None:
        raise ConfigError(
            "privacy and attack are keyed by a peer's index, which a peer of an open swarm does not have: "
            "run them with --partition i/N"
        )


def on_overlay(config: ExperimentConfig) -> bool:
    """Whether `config`'s rule mixes over a topology, which an open swarm builds as an overlay (consensus,
    P2PL, the robust neighbourhood rules), rather than over partners sampled from the view."""
    return config.rule.uses_topology and config.rule.name not in OPEN_RULES


def partners_of(config: ExperimentConfig) -> int:
    """How many partners a peer pulls from each round: learned trust's k, one for gossip, none alone."""
    if config.rule.name == "learned_trust":
        return config.rule.partners
    return 1 if config.rule.name == "gossip" else 0


def open_row(config: ExperimentConfig, partners: list[int]) -> Mixing:
    """This peer's (position 0) row over itself and `partners` (positions): learned trust's weights are
    learned in its combine (NaN here), gossip averages uniformly (½ each with its one partner)."""
    senders = torch.tensor([0, *sorted(partners)])
    n = len(senders)
    fill = float("nan") if config.rule.name == "learned_trust" else 1.0 / n
    weights = torch.full((n,), fill, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.long)
    return Mixing(torch.zeros(n, dtype=torch.long), torch.arange(n), weights, 1, zero, zero, senders)


def entry_weights(models: Sequence[str], trust_rows: Sequence[Mapping[str, float]]) -> torch.Tensor:
    """How a peer that joins afresh weighs the members' `models` (by peer id) it starts from: by the
    trust the members that answered it hold in them (`trust_rows`, one per member: its status's row,
    learned trust's; empty for gossip), else evenly.

    Every member votes once, its row normalised over the `models`: a model its row does not name
    (a partner it has not met) gets the row's mean over those it names (no opinion), and a row naming
    none, or giving them all 0, is an even vote. So a member lying about its colluder moves that one's
    weight by at most 1/(members), and only trust that members hold low pulls a model down: a model
    every member that met it distrusts gets almost none, as the swarm has learned to keep away."""
    n = len(models)
    votes = torch.zeros(n, dtype=torch.float64)
    for row in trust_rows:
        named = [float(row[peer_id]) for peer_id in models if peer_id in row]
        mean = sum(named) / len(named) if named else 0.0
        given = torch.tensor([float(row.get(peer_id, mean)) for peer_id in models], dtype=torch.float64)
        votes += given / given.sum() if given.sum() > 0 else 1.0 / n
    if not trust_rows:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    return votes / len(trust_rows)


class Roster:
    """Positions for the round loop: 0 is this peer, each member met the next one (never reused)."""

    def __init__(self, me: str) -> None:
        self.ids: list[str] = [me]
        self.positions: dict[str, int] = {me: 0}

    def position(self, peer_id: str) -> int:
        if peer_id not in self.positions:
            self.positions[peer_id] = len(self.ids)
            self.ids.append(peer_id)
        return self.positions[peer_id]


class OpenBook:
    """Where members serve, as an :class:`~ppaia.network.addressbook.AddressBook` says it for the round
    loop: from the view, i.e. each member's own signed record as its last exchange gave it, else from
    the `overlay` link to it (an overlay neighbour may have left a bounded view). Every position is
    pinned to its member's key (in an open swarm a peer's identity is its key). A member in neither is
    not reachable now."""

    def __init__(self, roster: Roster, view: View, overlay: Overlay | None = None) -> None:
        self.roster = roster
        self.view = view
        self.overlay = overlay
        self.pinned: Mapping[int, str] = _Pins(roster)

    def _id(self, index: int) -> str | None:
        return self.roster.ids[index] if 0 < index < len(self.roster.ids) else None

    async def address(self, index: int, timeout: float = 5.0) -> Address | None:
        peer_id = self._id(index)
        if peer_id is None:
            return None
        linked = None if self.overlay is None else self.overlay.address(peer_id)
        return self.view.address(peer_id) or linked

    def forget(self, index: int) -> None:
        """Nothing: a member that did not answer a round's request in time may only be slow (peers
        hosted many to a process answer late under load). The round loop leaves it out as absent, and
        the view's own upkeep drops it if it does not answer an exchange either; a member that moved
        comes back with a fresher record through the exchanges."""


class _Pins(Mapping[int, str]):
    """Position -> member id, read from the roster as it grows."""

    def __init__(self, roster: Roster) -> None:
        self.roster = roster

    def __getitem__(self, index: int) -> str:
        if not 0 <= index < len(self.roster.ids):
            raise KeyError(index)
        return self.roster.ids[index]

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.roster.ids)))

    def __len__(self) -> int:
        return len(self.roster.ids)


@dataclass(frozen=True)
class OpenOptions:
    """How a peer takes part in an open swarm's peer sampling: at most `view` members (and as many
    candidates), `shuffle` records sent per exchange (at most :data:`MAX_OFFER`), one exchange about
    every `period` seconds (then twice a round: :func:`exchange_period`)."""

    view: int = 16
    shuffle: int = 6
    period: float = 1.0

    def __post_init__(self) -> None:
        if self.view < 1 or not 1 <= self.shuffle <= MAX_OFFER or self.period <= 0:
            raise ValueError(f"need view >= 1, 1 <= shuffle <= {MAX_OFFER} and period > 0")


class OpenPeer(Peer):
    """A peer of an open swarm (see the module docstring). `config` is the swarm's agreed config; its
    ``peers`` is ignored."""

    def __init__(
        self,
        config: ExperimentConfig,
        options: PeerOptions,
        own: OwnData,
        identity: Identity | None = None,
        sampling: OpenOptions | None = None,
        door: Callable[[], Awaitable[None]] | None = None,
        release: Callable[[], bool] | None = None,
    ) -> None:
        check_open(config)
        self.door = door
        self.release = release
        sampling = sampling or OpenOptions()
        self.swarm_config = config
        # this peer's row alone: its topology is the overlay, so the rule builds none of its own
        alone = {"peers": 1, "topology": TOPOLOGIES.create("complete")}
        super().__init__(config.model_copy(update=alone), replace(options, index=0), identity, own)
        facts = {"inputs": list(own.train.input_shape), "classes": own.train.n_classes}
        degree = overlay_degree(config) if on_overlay(config) else None
        if degree is not None:
            facts["overlay_degree"] = degree  # the swarm agrees on it: it bounds every peer's links
        self.agreement = Agreement.of(config, own_data=True, data=facts, open_swarm=True)
        self.k = partners_of(config)
        self.roster = Roster(self.identity.peer_id)
        self.view = View(
            self.identity.peer_id, size=sampling.view, shuffle=sampling.shuffle, shared_hosts=LOOPBACK
        )
        self.exchanges_every = sampling.period
        self.sampler = Sampler(
            self.identity,
            self.view,
            self._own_record,
            self.strikes,
            seeds=options.bootstrap,
            period=sampling.period,
            timeout=EXCHANGE_WAIT,
        )
        self.server.view = self.sampler.answer
        self.server.max_request_bytes = 8192  # an offer of MAX_OFFER records
        self.overlay = None if degree is None else self._overlay(degree, sampling.period)
        self.book = OpenBook(self.roster, self.view, self.overlay)  # type: ignore[assignment]
        self.row_weights: dict[str, float] = {}  # each overlay neighbour's weight in the last round's row
        self.stuck: Stuck | None = None
        self._placed = 1  # roster positions the rule's state was last placed over (see _roles)
        self._alone = False  # the last round found no partner: the next one does not wait for one
        self.name = self.label  # its id's first 8 hex digits (see _label)
        self.size = "(open: no member list)"

    def _label(self) -> str:
        """An open swarm's peer has no index: the log names it by its id's first 8 hex digits."""
        return self.identity.peer_id[:8]

    def _partner(self, index: int) -> str:
        """Partner `index` (a position in this peer's roster) by its id's first 8 hex digits."""
        return self.roster.ids[index][:8] if 0 <= index < len(self.roster.ids) else f"#{index}"

    def _overlay(self, degree: int, period: float) -> Overlay:
        """The overlay this peer holds its links in, answering link requests through its server."""

        async def vet(peer_id: str) -> bool:  # runs this peer's config (its status is asked at first)
            return await self._address(self.roster.position(peer_id), EXCHANGE_WAIT) is not None

        overlay = Overlay(
            self.identity,
            self.view,
            self._own_record,
            self.strikes,
            degree=degree,
            usable=self._linkable,
            vet=vet,
            period=period,
            timeout=EXCHANGE_WAIT,
            label=self.label,
        )
        self.server.link = overlay.answer
        return overlay

    def _linkable(self, peer_id: str) -> bool:
        """Whether a member may hold an overlay link: not banned, not known to run another config (a
        proposer not met yet gets no roster position: made-up ids must not grow the roster)."""
        index = self.roster.positions.get(peer_id)
        return not self.strikes.is_banned(peer_id) and (index is None or not self._excluded(index))

    def _own_record(self) -> PeerRecord:
        host = self.options.listen[0]
        return PeerRecord.create(
            self.identity,
            host=host,
            udp_port=self.dht.port,
            tcp_port=self.server.port,
            now=time.time(),
            ttl=RECORD_TTL,
        )

    def status(self) -> PeerStatus:
        sampler = self.sampler
        membership = Membership(
            view=len(self.view),
            candidates=len(self.view.candidates),
            exchanges=sampler.exchanges,
            sent=sampler.sent,
            received=sampler.received,
            degree=None if self.overlay is None else len(self.overlay.links),
            links=dict(list(self.row_weights.items())[:MAX_LISTED]),
        )
        return (
            super().status().model_copy(update={"index": None, "stuck": self.stuck, "membership": membership})
        )

    def _say(self, stuck: Stuck | None, detail: str = "") -> None:
        """Set why this peer cannot make progress now, and log each change (but joining: every peer's
        start, said in its status only)."""
        quiet = (None, Stuck.JOINING)
        if stuck != self.stuck and stuck not in quiet:
            log.warning("peer %s: %s%s", self.name, stuck.value.replace("_", " "), detail)
        elif stuck in quiet and self.stuck not in quiet:
            log.info("peer %s: making progress again (was: %s)", self.name, self.stuck.value)
        self.stuck = stuck

    def _topic(self) -> str:
        return members_topic(self.options.swarm)

    async def _list_let_in(self) -> None:
        """A let-in peer's members-topic store. One that outlasts half an RPC timeout waits on dead nodes
        (killed peers'), while a swarm of fast rounds may run to its end: the peer meets the members by
        view exchanges meanwhile, which put it in their views (a finished member lingers for those). Not
        at once: of a first round's peers, let in together, those that met a member first would start
        the swarm without the others."""
        listing = asyncio.ensure_future(self.dht.provide(self._topic()))
        try:
            if not (await asyncio.wait({listing}, timeout=self.dht.rpc_timeout / 2))[0]:
                await self._discover()
            await listing
        finally:
            listing.cancel()  # stopped meanwhile; nothing once it is done

    async def _join(self, host: str) -> None:
        if self.door is None:
            await super()._join(host)  # its announcement provides the members topic: others find it
        else:  # a DHT node others route through; no member, serving nothing yet
            self.server.reserve()  # its port is taken, connections to it refused, until it is let in
            await self._enter_dht()
            # its address now (its port refuses connections, as a peer's that is down): only the
            # members topic is left once it is let in, one DHT store, not two in a row (each can wait
            # out the RPC timeouts of killed peers' nodes: seconds on a loaded machine)
            await self.dht.announce(self.server.port, host)
            log.info("peer %s: held until its launcher lets it in", self.name)
            await self.door()
            await self._serve(host)
            await self._list_let_in()
        partners = (
            f"{self.k} partners a round"
            if self.overlay is None
            else f"overlay of degree {self.overlay.degree}"
        )
        log.info(
            "peer %s (%s) joins open swarm %r (shared config %s; %s, %s)",
            self.name, self.identity.peer_id, self.options.swarm, self.agreement.digest[:16],
            self.config.rule.name, partners,
        )  # fmt: skip
        self.sampler.start()
        if self.overlay is not None:
            self.overlay.start()

    async def _discover(self) -> None:
        """Members from the DHT's members topic, a view's worth of them each met by a view exchange, all
        at once: a start when no seed gave any, and before a fresh peer settles the round it joins at."""
        try:
            providers = await self.dht.find_providers(members_topic(self.options.swarm))
        except Exception as err:  # a hostile or broken DHT answer must not stop the peer
            log.warning("peer %s: members lookup failed: %r", self.name, err)
            return
        known = {self.identity.peer_id, *self.view.members}
        new = [record for record in providers if record.peer_id not in known]
        # a view's worth: a DHT's answer merges what many nodes hold, and a hostile one may list thousands
        await asyncio.gather(
            *(self.sampler.exchange((r.host, r.tcp_port), r.peer_id) for r in new[: self.view.size])
        )

    def _usable(self, peer_id: str) -> bool:
        """Whether a member may be a partner now: not banned, not refused, not absent."""
        index = self.roster.position(peer_id)
        return not self._excluded(index) and index not in self.timing.absent

    def _why_alone(self) -> Stuck:
        members = self.view.ids()
        if not members:
            return Stuck.NO_PARTNERS
        if all(self.strikes.is_banned(peer_id) for peer_id in members):
            return Stuck.ALL_BANNED
        if all(self.roster.position(peer_id) in self.refused for peer_id in members):
            return Stuck.ALL_REFUSED
        return Stuck.NO_PARTNERS

    async def _rendezvous(self) -> None:
        """Wait (at most `wait`) until a member that runs this config is found; stop with
        AgreementError, naming the fields, if every member found runs another one."""
        self.progress.phase = Phase.WAITING
        self._say(Stuck.JOINING)
        loop = asyncio.get_running_loop()
        until = loop.time() + self.options.wait
        looked = 0.0
        while loop.time() < until:
            if not self.view.members and loop.time() - looked > 2.0:
                looked = loop.time()
                await self._discover()
            members = [self.roster.position(peer_id) for peer_id in self.view.ids()]
            asking = min(STATUS_WAIT, max(until - loop.time(), 0.05))  # all at once: none holds up others
            await asyncio.gather(*(self._address(index, asking) for index in members))
            if any(i not in self.refused for i in self.agreed):
                self._say(Stuck.JOINING)  # until it knows its members' round (_adopt)
                await self._settle(until)
                return
            found = {self.roster.position(peer_id) for peer_id in self.view.ids()}
            if self.refused and found <= set(self.refused):
                others = "; ".join(
                    f"peer {self.roster.ids[i][:8]}: {describe(diff)}"
                    for i, diff in sorted(self.refused.items())
                )
                raise AgreementError(
                    f"this peer's config is incompatible with open swarm {self.options.swarm!r}, which "
                    f"runs another one ({others}); start it with the swarm's config"
                )
            self._say(self._why_alone())
            await asyncio.sleep(0.2)
        log.warning("peer %s: no partner found within %g s; starting anyway", self.name, self.options.wait)

    async def _settle(self, until: float) -> None:
        """Before the first round, on an overlay: wait (until `until`) for every slot to be taken or for
        the links to stay the same a while, so that the first rounds mix over the overlay they keep."""
        overlay = self.overlay
        if overlay is None:
            return
        loop = asyncio.get_running_loop()
        while not overlay.settled(SETTLE * overlay.period) and loop.time() < until:
            await asyncio.sleep(0.1)
        log.info("peer %s: %d overlay links to start with", self.name, len(overlay.links))

    def _partners(self) -> list[str]:
        """This round's partners: the usable overlay neighbours, else k random usable members of the view."""
        if self.overlay is not None:
            return [peer_id for peer_id in sorted(self.overlay.links) if self._usable(peer_id)]
        return self.view.sample(self.k, self._usable)

    async def _roles(self, ctx) -> tuple[bool, list[StepRole]]:
        """This round's row: over k random usable members of the view, or over the overlay neighbours,
        waiting up to the timing deadline for one to appear; alone after that, said in the status. Like
        an absent sender, a swarm without partners costs one deadline, once: while it stays alone the
        next rounds do not wait."""
        self.sampler.period = exchange_period(self.exchanges_every, self.timing.pace())
        if self.k == 0 and self.overlay is None:
            return True, [StepRole(open_row(self.config, []))]
        loop = asyncio.get_running_loop()
        until = loop.time() + (0.0 if self._alone else self.timing.deadline())
        while True:
            chosen = self._partners()
            if chosen or loop.time() >= until:
                break
            self._say(self._why_alone())
            await asyncio.sleep(0.1)
        if not chosen and not self._alone:
            log.warning("peer %s: round %d without partners (%s)", self.name, ctx.round, self._why_alone())
        self._alone = not chosen
        self._place()
        self._say(None if chosen else self._why_alone())
        if self.overlay is None:
            return True, [StepRole(open_row(self.config, [self.roster.position(i) for i in chosen]))]
        return True, self._overlay_roles(self.overlay, ctx)

    def _overlay_roles(self, overlay: Overlay, ctx) -> list[StepRole]:
        """The rule's round over every `overlay` link held now (one whose end is banned, refused or
        absent is a missing sender), with the degrees the neighbours announced."""
        degrees = {self.roster.position(peer_id): d for peer_id, d in overlay.degrees().items()}
        roles = overlay_roles(self.learner.rule, ctx, degrees)
        row = roles[0].row if roles else None
        self.row_weights = (
            {}
            if row is None
            else {
                self.roster.ids[int(sender)]: float(weight)
                for sender, weight in zip(row.sender_peers().tolist(), row.weights.tolist(), strict=True)
                if sender != 0
            }
        )
        return roles

    def _place(self) -> None:
        """Give the rule's per-partner state (learned trust, keyed by id) the positions members have
        now: a resumed peer's trust in a member comes back when it meets it again."""
        ids = self._partner_ids()  # positions are never reused, so every met one is among them
        if len(ids) != self._placed:
            rule = self.learner.rule
            rule.load_peer_state(0, ids, rule.peer_state(0, ids))
            self._placed = len(ids)

    async def _step(self, round_: int, step: int, role: StepRole, ctx) -> tuple[int, int, int]:
        self.stuck = Stuck.WAITING_FOR_PARTNERS if role.senders[1:] else self.stuck
        try:
            return await super()._step(round_, step, role, ctx)
        finally:
            if self.stuck is Stuck.WAITING_FOR_PARTNERS:
                self.stuck = None

    def _partner_ids(self) -> list[str | None]:
        return list(self.roster.ids)

    async def _entry_round(self, first: int) -> int:
        return await self._adopt(first, fresh=True)

    async def _catch_up(self, first: int) -> int:
        return await self._adopt(first, fresh=False)

    async def _adopt(self, first: int, *, fresh: bool) -> int:
        """The round to continue from: if members have completed round R ≥ `first`, fetch and verify
        each one's newest completed model and continue at R + 1 from them (afresh: their mean; resumed:
        combined with this peer's own by its rule); else `first`.

        A fresh peer first meets the members the DHT lists: peers let in together (a launcher's
        joiners) find each other first, and from a view of joiners alone, all at round 0, it would take
        the swarm for a new one and start a swarm of its own at round 1."""
        if fresh:
            await self._discover()
        members = [self.roster.position(peer_id) for peer_id in self.view.ids()]
        statuses = await asyncio.gather(*(self._status(i) for i in members))
        answered = {
            i: status
            for i, status in zip(members, statuses, strict=True)
            if status is not None and i not in self.refused and status.rounds == self.config.rounds
        }
        done = {
            i: status.completed
            for i, status in answered.items()
            if status.completed is not None and status.completed.round <= self.config.rounds
        }
        target = swarm_round([v.round for v in done.values()]) - 1
        if target < first:
            self._say(None)
            return first
        self.timing.assume([s.pace for s in answered.values() if s.pace is not None])
        self._say(Stuck.CATCHING_UP, f": members are at round {target}, this peer at {first - 1}")
        models: dict[int, torch.Tensor] = {}
        for index, version in done.items():
            if version.round < target - 1:
                continue  # too far behind to help
            address = await self._address(index, 2.0)
            if address is None:
                continue
            try:
                models[index] = await self._download(
                    address, self.roster.ids[index], version.round, version.step, 5.0
                )
            except (NotReady, ProtocolError) as err:
                log.info(
                    "peer %s: no model from %s to start from: %s", self.name, self.roster.ids[index], err
                )
        if not models:
            self._say(None)
            return first
        learner = self.learner
        if fresh:
            ids = [self.roster.ids[index] for index in models]
            weights = entry_weights(ids, [s.trust for s in answered.values()])
            stacked = torch.stack(list(models.values()))
            learner.params = (weights.to(stacked.dtype)[:, None] * stacked).sum(0)
            how = "trust-weighted" if float(weights.max() - weights.min()) > 0 else "evenly weighted"
        else:
            self._place()
            row = open_row(self.config, list(models))
            learner.params = await asyncio.to_thread(learner.combine, row, models, learner.context(target))
            how = "with its own, by its rule"
        state = learner.state(self._partner_ids())
        await asyncio.to_thread(self.checkpoint.save, target, learner.tensors(), state)
        self.trust = state.rule
        self._say(None)
        if target >= self.config.rounds:
            await self._ends_with(target, len(models))
        else:
            log.info(
                "peer %s %s at round %d: starts from %d members' verified round-%d models (%s)",
                self.name, "joins" if fresh else "catches up", target + 1, len(models), target, how,
            )  # fmt: skip
        return target + 1

    async def _ends_with(self, last: int, received: int) -> None:
        """Joined after the swarm's last round: this peer ends with what it made of the members' newest
        models (`received` of them: the last round's, and any of the round before from a member still
        finishing), evaluated and recorded as its round `last` (not served: a peer later still starts
        from the members that ran the round)."""
        log.info(
            "peer %s came after the last round: ends with %d members' newest models", self.name, received
        )
        progress = self.progress
        progress.round, progress.step = last, 0
        progress.accuracy, progress.loss = await asyncio.to_thread(self.learner.evaluate)
        record = RoundRecord(last, 0.0, 0.0, received, 0, 0, True)
        record_round(self.options.data_dir, self.label, self.config.rounds, record, progress)

    async def _linger(self) -> None:
        """Keep serving until the members in the view report finished or stop answering, and `release`
        (if given) says peers due in have joined, within `linger` seconds."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.options.linger
        while loop.time() < until:
            members = [self.roster.position(peer_id) for peer_id in self.view.ids()]
            statuses = await asyncio.gather(*(self._status(i, 1.0) for i in members))
            done = [
                status is None or status.phase is Phase.FINISHED or index in self.refused
                for index, status in zip(members, statuses, strict=True)
            ]
            if all(done) and (self.release is None or self.release()):
                return
            await asyncio.sleep(0.5)

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            await self.sampler.stop()
            if self.overlay is not None:
                await self.overlay.stop()
