"""Peer sampling for an open swarm: each peer keeps a bounded, changing random sample of live members.

Nobody holds the member list (a DHT key holds at most 20 providers). Instead each peer keeps a *view*
of at most `size` members and refreshes it by Cyclon-style view exchanges (Voulgaris et al., 2005) over
the signed wire messages: every `period` seconds it contacts the member it has verified least recently,
sends it its own fresh ``peer:`` record and up to `shuffle` - 1 members of its view, and gets as many back
(:func:`ppaia.network.transfer.exchange_view`; the server side is :meth:`Sampler.answer`). Partners for a
round are drawn at random from the view (:meth:`View.sample`).

**Only what the member itself signed, only what answered.** A view entry travels as the member's own
signed ``peer:`` record (:class:`PeerRecord`), so nobody can forge one, move one to another address, or
extend its life. A record someone else passes on only makes its member a *candidate*: it enters the view
proper (is *verified*) once this peer has exchanged views with it at its address under its key, and only
verified members are passed on or chosen as partners. So a hostile member that advertises forged,
endless or made-up member lists (many claimed ids pointing nowhere) gains nothing beyond:

- a bad record (forged, malformed, future-dated) refuses the whole offer, ``bad_record``: a strike;
- a list longer than :data:`MAX_OFFER` is not a message (``malformed``): a strike;
- made-up members fill at most `size` candidate slots, chosen at random on overflow so a flood cannot
  push an honest newcomer out for sure; each costs one failed exchange and is dropped; none ever
  reaches a view or a round;
- a host other than the shared loopback ones holds at most a quarter of a view (as in the DHT).

**Dead members drop out within a bounded time.** A verified member is contacted again at the latest
after every other member of the view (`size` × `period` seconds); one that does not answer is dropped,
and so is one a round could not reach (:meth:`View.drop`). A member that comes back rejoins through any
exchange.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ppaia.network.dht import Address
from ppaia.network.errors import ProtocolError, Reason
from ppaia.network.identity import Identity
from ppaia.network.records import PeerRecord, RecordError, decode_record
from ppaia.network.strikes import Strikes
from ppaia.network.transfer import exchange_view
from ppaia.network.upkeep import Upkeep
from ppaia.network.wire import MAX_OFFER

__all__ = ["Entry", "Sampler", "View", "verified_records"]

log = logging.getLogger(__name__)

HOST_SHARE = 4  # one host (outside the shared loopback addresses) holds at most size // 4 of a view


@dataclass
class Entry:
    """A member as this peer knows it: its own signed record, and when it last answered (None: a
    candidate, not yet verified)."""

    record: PeerRecord
    verified: float | None = None

    @property
    def address(self) -> Address:
        return self.record.host, self.record.tcp_port


def verified_records(data: Iterable[bytes], now: float) -> list[PeerRecord]:
    """The ``peer:`` records in `data` that are live at `now`; expired ones are dropped (an honest
    peer may pass on a record that expires on the way). ProtocolError ``bad_record`` if any is not a
    peer record its own key signed (forged, malformed, future-dated, another kind)."""
    records = []
    for raw in data:
        try:
            record = decode_record(raw)
            if not isinstance(record, PeerRecord):
                raise RecordError(f"a {record.key[:40]!r} record is not a member's peer record")
            if record.expires <= now:
                continue
            record.check(now)
        except RecordError as err:
            raise ProtocolError(Reason.BAD_RECORD, f"a member record that does not verify: {err}") from None
        records.append(record)
    return records


class View:
    """A bounded sample of the swarm's members: at most `size` verified members and `size` candidates.

    `shared_hosts` (loopback in a local swarm, where every peer has the same address) are exempt from the
    per-host share. `rng` draws partners and the records offered (seeded in tests).
    """

    def __init__(
        self,
        me: str,
        *,
        size: int = 16,
        shuffle: int = 6,
        shared_hosts: frozenset[str] = frozenset(),
        rng: random.Random | None = None,
    ) -> None:
        if size < 1 or not 1 <= shuffle <= MAX_OFFER:
            raise ValueError(f"need size >= 1 and 1 <= shuffle <= {MAX_OFFER}")
        self.me = me
        self.size = size
        self.shuffle = shuffle
        self.shared_hosts = shared_hosts
        self.rng = rng or random.Random()
        self.members: dict[str, Entry] = {}  # verified
        self.candidates: dict[str, Entry] = {}

    def __len__(self) -> int:
        return len(self.members)

    def ids(self) -> list[str]:
        return sorted(self.members)

    def address(self, peer_id: str) -> Address | None:
        """Where member `peer_id` serves (verified or candidate), if this view knows it."""
        entry = self.members.get(peer_id) or self.candidates.get(peer_id)
        return None if entry is None else entry.address

    def sample(self, k: int, usable: Callable[[str], bool] = lambda _: True) -> list[str]:
        """Up to `k` verified members, chosen at random among the `usable` ones."""
        pool = [peer_id for peer_id in sorted(self.members) if usable(peer_id)]
        return self.rng.sample(pool, min(k, len(pool)))

    def offer(self, own: PeerRecord, to: str | None = None) -> tuple[list[PeerRecord], list[str]]:
        """What to send in an exchange (with `to`): this peer's own record and up to `shuffle` - 1 random
        verified members (not `to`); and the ids sent, which the answer may replace (Cyclon)."""
        others = [peer_id for peer_id in sorted(self.members) if peer_id != to]
        sent = self.rng.sample(others, min(self.shuffle - 1, len(others)))
        return [own, *(self.members[peer_id].record for peer_id in sent)], sent

    def oldest(self) -> str | None:
        """The verified member heard from least recently: the next one to exchange with."""
        if not self.members:
            return None
        return min(self.members, key=lambda peer_id: (self.members[peer_id].verified or 0.0, peer_id))

    def candidate(self) -> str | None:
        """A random candidate to verify, if any."""
        return self.rng.choice(sorted(self.candidates)) if self.candidates else None

    def learn(self, records: Iterable[PeerRecord], replace: Iterable[str] = ()) -> None:
        """Take `records` (verified signatures) as candidates, or as fresher records of members; a full
        candidate list gives up a random one first among the ids in `replace`, else any."""
        replaceable = [peer_id for peer_id in replace if peer_id in self.candidates]
        for record in records:
            peer_id = record.peer_id
            if peer_id == self.me:
                continue
            known = self.members.get(peer_id)
            if known is not None:
                if record.issued > known.record.issued and self._fits(record, peer_id):
                    known.record = record
                continue
            held = self.candidates.get(peer_id)
            if held is not None:
                if record.issued > held.record.issued:
                    held.record = record
                continue
            if len(self.candidates) >= self.size:
                victim = replaceable.pop() if replaceable else self.rng.choice(sorted(self.candidates))
                del self.candidates[victim]
            self.candidates[peer_id] = Entry(record)

    def verify(self, record: PeerRecord, now: float, replace: Iterable[str] = ()) -> bool:
        """Member `record.peer_id` answered at its record's address: into the view (giving up one of
        the ids in `replace` sent to it, else the oldest, when full); whether it is in now."""
        peer_id = record.peer_id
        if peer_id == self.me:
            return False
        self.candidates.pop(peer_id, None)
        known = self.members.get(peer_id)
        if known is None and not self._fits(record, peer_id):
            return False
        if known is None and len(self.members) >= self.size:
            gone = [i for i in replace if i in self.members] or [self.oldest()]
            del self.members[gone[0]]
        self.members[peer_id] = Entry(record, now)
        return True

    def drop(self, peer_id: str) -> None:
        """Member `peer_id` did not answer (or is banned): out of the view and the candidates."""
        self.members.pop(peer_id, None)
        self.candidates.pop(peer_id, None)

    def _fits(self, record: PeerRecord, peer_id: str) -> bool:
        """Whether `record` may enter the view: one member per address, and a host's share bounded."""
        others = [entry for key, entry in self.members.items() if key != peer_id]
        if any(entry.address == (record.host, record.tcp_port) for entry in others):
            return False
        if record.host in self.shared_hosts:
            return True
        return sum(entry.record.host == record.host for entry in others) < max(1, self.size // HOST_SHARE)


class Sampler(Upkeep):
    """Keeps `view` fresh by exchanges every `period` seconds (see the module docstring).

    `own_record` makes this peer's current signed record; `seeds` are addresses to start from (a
    ``--bootstrap`` peer: its key is learned from its answer); `strikes` counts and strikes bad
    answers; `usable(peer_id)` says whether a member may be used at all (not banned). ``sent`` and
    ``received`` count the exchanges' message bytes (membership traffic), ``exchanges`` the exchanges.
    """

    def __init__(
        self,
        identity: Identity,
        view: View,
        own_record: Callable[[], PeerRecord],
        strikes: Strikes,
        *,
        seeds: tuple[Address, ...] = (),
        period: float = 1.0,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.view = view
        self.own_record = own_record
        self.strikes = strikes
        self.seeds = seeds
        self.period = period
        self.timeout = timeout
        self.clock = clock
        self.sent = self.received = self.exchanges = 0
        self.rng = view.rng
        self.what = "peer sampling"

    def answer(self, sender: str, offer: list[bytes]) -> list[bytes]:
        """The server side of an exchange: take `sender`'s offer as candidates, answer with this peer's
        own record and a random part of the view (which the offer may replace)."""
        records = verified_records(offer, self.clock())
        self.received += sum(map(len, offer))
        mine, sent = self.view.offer(self.own_record(), sender)
        self.view.learn((r for r in records if not self.strikes.is_banned(r.peer_id)), sent)
        data = [record.signed for record in mine]
        self.sent += sum(map(len, data))
        return data

    async def exchange(self, address: Address, peer_id: str | None) -> bool:
        """One exchange with the member at `address` (`peer_id`, if known: else a seed); whether it
        answered validly. It is then verified, and what it sent becomes candidates."""
        mine, sent = self.view.offer(self.own_record(), peer_id)
        data = [record.signed for record in mine]
        try:
            sender, answer = await exchange_view(
                *address, identity=self.identity, offer=data, timeout=self.timeout, expect_sender=peer_id
            )
            self.sent += sum(map(len, data))
            self.received += sum(map(len, answer))
            self.exchanges += 1
            records = verified_records(answer, self.clock())
        except ProtocolError as err:
            if peer_id is not None:
                self.view.drop(peer_id)
                self.strikes.reject(-1, peer_id, err, "view")
            return False
        own = [record for record in records if record.peer_id == sender]
        if not own or self.strikes.is_banned(sender):  # a member answers with its own record first
            if peer_id is not None:
                self.view.drop(peer_id)
            return False
        self.view.verify(own[0], self.clock(), sent)
        self.view.learn(r for r in records if r.peer_id != sender and not self.strikes.is_banned(r.peer_id))
        return True

    async def tick(self) -> None:
        """One round of upkeep: the seeds while the view is empty, the oldest member, one candidate."""
        view = self.view
        if not view.members:
            await asyncio.gather(*(self.exchange(seed, None) for seed in self.seeds))
        oldest = view.oldest()
        if oldest is not None:
            await self.exchange(view.members[oldest].address, oldest)
        candidate = view.candidate()
        if candidate is not None:
            await self.exchange(view.candidates[candidate].address, candidate)
