"""An open swarm's overlay: a few links per peer that both ends agreed to, for the topology rules.

Consensus, P2PL and the robust neighbourhood rules (median, trimmed mean, Krum, ClippedGossip, ...) mix
over a graph. An open swarm has no member list to build one from, so its peers build one themselves out
of their views (:mod:`ppaia.network.sampling`): each holds at most `degree` links, and a link exists only
while both ends hold it. When every peer finds `degree` partners the overlay is a random
`degree`-regular graph; the swarm agrees on `degree` (:func:`overlay_degree`: the config's
``random_regular`` k, else :data:`DEFAULT_DEGREE`).

**Agreeing on a link**, over the signed ``link`` messages (:func:`ppaia.network.transfer.request_link`;
every message carries its sender's degree: its links, this one included while it holds it):

- a peer with a free slot *proposes* to a random verified member of its view that runs its config,
  offering its own signed ``peer:`` record (so the other end knows where it serves); the other end
  accepts if it has a free slot too, and answers with its degree;
- every `period`, each end *keeps* each of its links: it tells its degree and learns the other's, and
  whether the other end still holds the link; one it does not hold (any more) is dropped;
- a link whose other end does not answer :data:`MISSES` keeps in a row (it left, or its machine went
  away) is dropped, and so is one to a member that is banned or runs another config (it is told:
  *drop*). Free slots are filled from the view again.

**Mixing weights from the degrees announced.** In each round a peer mixes over exactly its links, with
its own degree and each neighbour's as last announced: the rule plans the round on the peer's ego graph
(:func:`ego_graph`, in which every neighbour has the degree it announced) with the simulator's own
code, and the peer takes its row (:func:`overlay_roles`). Metropolis' 1/(1 + max(dᵢ, dⱼ)) then comes out
the same at both ends of a link; while the overlay changes (a join, a departure) two ends may, for a
round, use degrees a keep apart.

**Hostile input** ends in a :class:`ProtocolError`, a strike against the sender's key and a log line:

- a degree out of range (over the swarm's `degree`; 0 for a link held or proposed): ``bad_link``, on
  either side (a request, or an answer);
- an answer that says it still holds a link it was told was dropped: ``bad_link``;
- a keep or drop of a link this peer has told the sender it does not hold: ``bad_link`` (an honest
  peer drops its end when told, so only a peer that insists on a link never agreed to gets here);
- a proposal that does not offer exactly the proposer's own valid record: ``bad_link`` (``bad_record``
  for one that does not verify);
- a proposal repeated within :data:`FLOOD_GAP` of being declined: ``link_flood`` (an honest peer waits
  :data:`RETRY` before it proposes to the same member again).

Whoever proposes, a peer never holds more than `degree` links (slots its own proposals wait for count).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ppaia.config import ConfigError, ExperimentConfig
from ppaia.network.dht import Address
from ppaia.network.errors import ProtocolError, Reason
from ppaia.network.identity import Identity
from ppaia.network.learner import StepRole, step_role
from ppaia.network.records import PeerRecord
from ppaia.network.sampling import View, verified_records
from ppaia.network.strikes import LOOK_AGAIN, Strikes
from ppaia.network.transfer import request_link
from ppaia.network.upkeep import Upkeep
from ppaia.network.wire import MAX_DEGREE, LinkClaim, LinkReply
from ppaia.rules import CooperationRule, RoundContext
from ppaia.topology.graphs import PeerGraph

__all__ = [
    "DEFAULT_DEGREE",
    "FLOOD_GAP",
    "MISSES",
    "RETRY",
    "Link",
    "Overlay",
    "ego_graph",
    "overlay_degree",
    "overlay_roles",
]

log = logging.getLogger(__name__)

DEFAULT_DEGREE = 4  # overlay links per peer when the config's topology is not a random_regular one
MISSES = 2  # keeps in a row a neighbour may leave unanswered before its link is dropped
RETRY = 10.0  # seconds before proposing again to a member that declined or did not answer
FLOOD_GAP = 2.0  # a proposal this soon after the same proposer was declined is a flood
REMEMBERED = 1024  # proposers declined and peers told "no link" that a peer remembers (the oldest go)


def overlay_degree(config: ExperimentConfig) -> int:
    """The links each peer of an open swarm running `config` holds at most: the config's random_regular
    k, else :data:`DEFAULT_DEGREE`; ConfigError over :data:`MAX_DEGREE`."""
    topology = config.topology
    degree = topology.k if topology.name == "random_regular" else DEFAULT_DEGREE
    if degree > MAX_DEGREE:
        raise ConfigError(f"an open swarm's overlay holds at most {MAX_DEGREE} links a peer, not {degree}")
    return degree


def ego_graph(degrees: Sequence[int]) -> PeerGraph:
    """Peer 0 linked to peers 1..n (its neighbours, of degrees `degrees`), each neighbour j linked besides
    to ``degrees[j - 1] - 1`` leaves of its own: a graph in which each of them has the degree it has in
    the overlay, so that a rule's weights from degrees come out for peer 0's row as over the whole
    overlay (the leaves are never senders of that row)."""
    n = len(degrees)
    edges = [(0, j) for j in range(1, n + 1)]
    leaf = n + 1
    for j, degree in enumerate(degrees, start=1):
        edges += [(j, leaf + i) for i in range(degree - 1)]
        leaf += max(degree - 1, 0)
    return PeerGraph(leaf, torch.tensor(edges, dtype=torch.long).reshape(-1, 2).T.contiguous())


def overlay_roles(rule: CooperationRule, ctx: RoundContext, neighbours: Mapping[int, int]) -> list[StepRole]:
    """This peer's (position 0) part in each mixing step of `rule`'s round over its overlay links:
    `neighbours` maps each linked member's position to its announced degree. The rule plans the round
    on the ego graph (:func:`ego_graph`) with its own code, as the simulator plans it over the whole
    graph, and this peer takes its row, whose senders are put back at the members' positions. Links are
    all up (a link that is down shows as a missing sender)."""
    positions = sorted(neighbours)
    graph = ego_graph([neighbours[position] for position in positions])
    local = dataclasses.replace(
        ctx, graph=graph, n_samples=torch.ones(graph.n, dtype=torch.long), link_up=1.0
    )
    where = torch.tensor([0, *positions])  # ego graph index -> position (increasing, so senders stay sorted)
    roles = []
    for step in rule.plan(local).steps:
        row = step_role(step, 0).row
        roles.append(
            StepRole(None if row is None else dataclasses.replace(row, sender_ids=where[row.sender_ids]))
        )
    return roles


@dataclass
class Link:
    """A link this peer holds: where the other end serves, its degree as it last said, keeps it missed."""

    address: Address
    degree: int
    misses: int = 0


class _Recent:
    """Peer ids with when they were noted (monotonic seconds); the oldest beyond :data:`REMEMBERED` go, so
    that a flood of ids cannot grow it."""

    def __init__(self) -> None:
        self.when: OrderedDict[str, float] = OrderedDict()

    def note(self, peer_id: str, now: float) -> None:
        self.when[peer_id] = now
        self.when.move_to_end(peer_id)
        while len(self.when) > REMEMBERED:
            self.when.popitem(last=False)

    def __contains__(self, peer_id: str) -> bool:
        return peer_id in self.when

    def within(self, peer_id: str, now: float, seconds: float) -> bool:
        noted = self.when.get(peer_id)
        return noted is not None and now - noted < seconds


class Overlay(Upkeep):
    """This peer's links (see the module docstring): at most `degree`, proposed to and accepted from
    members of `view`.

    `own_record` makes this peer's current signed record; `usable(peer_id)` says whether a member may
    hold a link now (not banned, not known to run another config); `vet(peer_id)` whether it runs this
    peer's config (asked before proposing; it may ask the member's status). `period` is the upkeep's
    pace, `timeout` a link message's; the log names this peer `label`.
    """

    def __init__(
        self,
        identity: Identity,
        view: View,
        own_record: Callable[[], PeerRecord],
        strikes: Strikes,
        *,
        degree: int,
        usable: Callable[[str], bool],
        vet: Callable[[str], Awaitable[bool]],
        period: float = 1.0,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        label: str = "",
    ) -> None:
        if not 1 <= degree <= MAX_DEGREE:
            raise ValueError(f"need 1 <= degree <= {MAX_DEGREE}")
        self.identity = identity
        self.view = view
        self.own_record = own_record
        self.strikes = strikes
        self.degree = degree
        self.usable = usable
        self.vet = vet
        self.period = period
        self.timeout = timeout
        self.clock = clock
        self.rng = rng or random.Random()
        self.label = label or identity.peer_id[:8]
        self.links: dict[str, Link] = {}
        self.pending: set[str] = set()  # members this peer is proposing to: their slots are reserved
        self.changed = clock()  # when a link was last made or dropped
        self._failed = _Recent()  # members that declined this peer's proposal or did not answer it
        self._declined = _Recent()  # proposers this peer declined
        self._told = _Recent()  # peers told that this peer holds no link with them
        self.what = f"peer {self.label}: overlay upkeep"

    def degrees(self) -> dict[str, int]:
        """Each neighbour's degree as it last said it (this peer's own degree is their count)."""
        return {peer_id: link.degree for peer_id, link in self.links.items()}

    def address(self, peer_id: str) -> Address | None:
        link = self.links.get(peer_id)
        return None if link is None else link.address

    def settled(self, quiet: float) -> bool:
        """Whether every slot is taken, or some are and none changed for `quiet` seconds."""
        full = len(self.links) >= self.degree
        return full or (bool(self.links) and self.clock() - self.changed >= quiet)

    # the server side

    def answer(self, sender: str, claim: LinkClaim, offer: list[bytes]) -> tuple[bool, int]:
        """What this peer answers `sender`'s `claim` (with its `offer` of records): whether it holds the
        link now, and its degree. ProtocolError for a claim it refuses (see the module docstring)."""
        low = 0 if claim.op == "drop" else 1
        high = self.degree - 1 if claim.op == "drop" else self.degree
        if not low <= claim.degree <= high:
            raise ProtocolError(
                Reason.BAD_LINK,
                f"a link {claim.op} claiming degree {claim.degree}, outside {low}..{high} in this swarm",
            )
        if claim.op == "propose":
            return self._proposed(sender, claim.degree, offer), len(self.links)
        link = self.links.get(sender)
        if link is None and sender in self._told:
            raise ProtocolError(
                Reason.BAD_LINK, f"a link {claim.op} from {sender[:8]}, which was told there is no link"
            )
        if claim.op == "drop":
            if link is not None:
                self._forget(sender, "the other end dropped it")
            return False, len(self.links)
        if link is None:  # told so: an honest peer drops its end, and keeps no more
            self._told.note(sender, self.clock())
            return False, len(self.links)
        link.degree, link.misses = claim.degree, 0
        return True, len(self.links)

    def _proposed(self, sender: str, degree: int, offer: list[bytes]) -> bool:
        now = self.clock()
        if self._declined.within(sender, now, FLOOD_GAP):
            raise ProtocolError(
                Reason.LINK_FLOOD, f"a link proposal from {sender[:8]} within {FLOOD_GAP} s of a refusal"
            )
        records = verified_records(offer, time.time())
        if len(records) != 1 or records[0].peer_id != sender:
            raise ProtocolError(Reason.BAD_LINK, "a link proposal offers its proposer's own record, only")
        held = sender in self.links or sender in self.pending
        if not held and (len(self.links) + len(self.pending) >= self.degree or not self.usable(sender)):
            self._declined.note(sender, now)
            return False
        self._link(sender, (records[0].host, records[0].tcp_port), degree)
        self.view.learn(records)  # a candidate, which a view exchange may verify
        return True

    # the client side

    async def tick(self) -> None:
        """One round of upkeep: drop the links to members that may not hold one, keep the others, and
        propose to members of the view for the free slots."""
        for peer_id in [peer_id for peer_id in self.links if not self.usable(peer_id)]:
            await self._drop(peer_id)
        await asyncio.gather(*(self._keep(peer_id) for peer_id in list(self.links)))
        free = self.degree - len(self.links) - len(self.pending)
        if free > 0:
            now = self.clock()
            chosen = self.view.sample(
                free,
                lambda peer_id: (
                    peer_id not in self.links
                    and peer_id not in self.pending
                    and not self._failed.within(peer_id, now, RETRY)
                    and self.usable(peer_id)
                ),
            )
            await asyncio.gather(*(self._propose(peer_id) for peer_id in chosen))

    async def _ask(self, peer_id: str, address: Address, claim: LinkClaim, offer: list[bytes]) -> LinkReply:
        """`claim` to `peer_id`, and its answer, checked; a refused answer is struck and logged (then
        raised, as every ProtocolError)."""
        try:
            reply = await request_link(
                *address,
                identity=self.identity,
                claim=claim,
                offer=offer,
                timeout=self.timeout,
                expect_sender=peer_id,
            )
            low, high = (1, self.degree) if reply.linked else (0, self.degree)
            if not low <= reply.degree <= high:
                raise ProtocolError(
                    Reason.BAD_LINK,
                    f"a link answer claiming degree {reply.degree}, outside {low}..{high} in this swarm",
                )
            if claim.op == "drop" and reply.linked:
                raise ProtocolError(
                    Reason.BAD_LINK, "a link answer holding on to a link it was told was dropped"
                )
        except ProtocolError as err:
            self.strikes.reject(-1, peer_id, err, "link answer")
            raise
        return reply

    async def _propose(self, peer_id: str) -> None:
        self.pending.add(peer_id)
        try:
            address = self.view.address(peer_id)
            if address is None or not await self.vet(peer_id):
                self._failed.note(peer_id, self.clock())
                return
            claim = LinkClaim(op="propose", degree=len(self.links) + 1)
            with contextlib.suppress(ProtocolError):
                reply = await self._ask(peer_id, address, claim, [self.own_record().signed])
                if reply.linked and self.usable(peer_id):
                    self._link(peer_id, address, reply.degree)
                    return
            self._failed.note(peer_id, self.clock())
        finally:
            self.pending.discard(peer_id)

    async def _keep(self, peer_id: str) -> None:
        link = self.links.get(peer_id)
        if link is None:
            return
        link.address = self.view.address(peer_id) or link.address  # it may have moved
        try:
            reply = await self._ask(peer_id, link.address, LinkClaim(op="keep", degree=len(self.links)), [])
        except ProtocolError as err:
            if err.reason not in LOOK_AGAIN:
                self._forget(peer_id, f"its answer was refused ({err.reason})")
            else:
                link.misses += 1
                if link.misses >= MISSES:
                    self._forget(peer_id, f"it did not answer {MISSES} keeps in a row")
            return
        if peer_id not in self.links:
            return
        if not reply.linked:
            self._forget(peer_id, "the other end does not hold it")
            return
        link.degree, link.misses = reply.degree, 0

    async def _drop(self, peer_id: str) -> None:
        """Drop the link to `peer_id` (it may not hold one now) and tell it, if it answers."""
        link = self._forget(peer_id, "it is banned or runs another config")
        if link is not None:
            with contextlib.suppress(ProtocolError):
                await self._ask(peer_id, link.address, LinkClaim(op="drop", degree=len(self.links)), [])

    def _link(self, peer_id: str, address: Address, degree: int) -> None:
        """Hold the link to `peer_id`, serving at `address`, of `degree`."""
        known = self.links.get(peer_id)
        if known is not None:
            known.address, known.degree = address, degree
            return
        self.links[peer_id] = Link(address, degree)
        self.changed = self.clock()
        self._told.when.pop(peer_id, None)
        log.info(
            "peer %s: overlay link with %s (its degree %d, this peer's %d)",
            self.label, peer_id[:8], degree, len(self.links),
        )  # fmt: skip

    def _forget(self, peer_id: str, why: str) -> Link | None:
        link = self.links.pop(peer_id, None)
        if link is not None:
            self.changed = self.clock()
            self._failed.note(peer_id, self.changed)  # its slot goes to another member first
            log.info("peer %s: overlay link with %s dropped: %s", self.label, peer_id[:8], why)
        return link
