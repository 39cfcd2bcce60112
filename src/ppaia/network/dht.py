"""Peer discovery over a Kademlia DHT: `PeerDHT` publishes and finds signed `PeerRecord`s and
`ProviderRecord`s (see `ppaia.network.records`).

Built on the `kademlia` package, pinned at 2.2.3 because this module replaces parts of it:

* one value per key, trusted blindly → `RecordStorage` keeps a merged set of signed records per key
  and `RecordProtocol.rpc_store` refuses anything else; `RecordCrawl` returns the valid records every
  node near the key holds (the stock `ValueSpiderCrawl`, crawling.py:101-125, stops at the first
  answers and keeps the most common value);
* values over rpcudp's 8 KiB request limit cannot be sent → records are small, sets are capped and a
  too-large record is refused on publish with `RecordTooLarge`;
* `TableTraverser` (routing.py:103-120) stops as soon as the buckets on its right run out, skipping
  every bucket on its left, and `find_neighbors` (routing.py:185-195) stops at the first k nodes in
  bucket order → `ExactRoutingTable.find_neighbors` ranks every known node by XOR distance;
* `Server.set_digest` (network.py:183) raises ValueError on `max([])` when every contacted node is
  gone, and (network.py:188) reports success even when every store failed → `_Server.set_digest`;
* `welcome_if_new` (protocol.py:103) hashes the already-hashed key again, so it hands stored values
  to the wrong new nodes → fixed in `RecordProtocol.welcome_if_new`.

**Hostile nodes.** Stock 2.2.3 believes whatever a datagram says. Here:

* every id, host and port a datagram carries is checked (`contact`) before it is used, and a malformed
  datagram, request or answer is refused, counted by `Refusal` and logged, never raised into a task;
* an answer with a malformed contact loses that contact, not the answerer; an answer keeps at most
  k contacts (an honest node sends k);
* the routing table holds one id per IP:port, refuses an id it already holds at another address, and
  gives one IP at most `1/HOST_SHARE` of a bucket (`ExactRoutingTable.refusal`); a contact is removed
  only when the address it failed at is the one the table holds. A node's id enters the table only as
  claimed by the node itself (it sent an RPC, or answered a ping): a contact learned from someone
  else's answer is pinged for its id first (`RecordProtocol.identify`);
* a lookup applies the same limits to its candidates, prefers the ids its routing table already holds
  for an address, and stops after `LOOKUP_ROUNDS` rounds or `LOOKUP_QUERIES_PER_K · k` queries, so it
  ends within `LOOKUP_ROUNDS · rpc_timeout` seconds whatever the answers say (`BoundedCrawl`).

Nothing here proves that an id belongs to a key: a node can still choose its own id. What the limits
bound is how many ids one address, and one IP, can place around a key.

Peers that go silent disappear: every record expires after `ttl` seconds and each peer re-signs and
republishes its own records every `ttl / 3`. Expiry uses an injectable clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import chain

import umsgpack
from kademlia.network import Server
from kademlia.node import Node, NodeHeap
from kademlia.protocol import KademliaProtocol
from kademlia.routing import KBucket, RoutingTable
from kademlia.storage import IStorage
from kademlia.utils import digest

from ppaia.network.errors import AddressError, ListenError, NetworkError, ProtocolError, format_address
from ppaia.network.identity import Identity
from ppaia.network.records import (
    MAX_PROVIDERS,
    PeerRecord,
    ProviderRecord,
    Record,
    RecordError,
    decode_records,
    encode_records,
    freshest,
    in_order,
    peer_key,
    providers_key,
    valid_records,
)

__all__ = [
    "HOST_SHARE",
    "LOOKUP_QUERIES_PER_K",
    "LOOKUP_ROUNDS",
    "SHARED_HOSTS",
    "BoundedCrawl",
    "DHTError",
    "ExactRoutingTable",
    "NodeCrawl",
    "PeerDHT",
    "Providers",
    "RecordCrawl",
    "RecordProtocol",
    "RecordStorage",
    "Refusal",
    "contact",
    "parse_address",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Address = tuple[str, int]

ID_BYTES = 20  # Kademlia node ids and keys are SHA-1 sized
HOST_SHARE = 4  # one IP may fill at most a 1/HOST_SHARE share (at least one slot) of a bucket or lookup
SHARED_HOSTS = frozenset({"127.0.0.1", "::1"})  # every local process sends from these: no per-IP limit
LOOKUP_ROUNDS = 12  # an honest lookup needs a few rounds (about log2 of the network's size / k)
LOOKUP_QUERIES_PER_K = 5  # ... and queries a few k nodes; this bounds what hostile answers can add
MAX_IDENTIFYING = 32  # pings in flight to learn the ids of contacts met in others' answers
LOG_EVERY = 60.0  # seconds between log lines for the same refusal reason from the same host
_RPC_ARITY = {"ping": 1, "store": 3, "find_node": 2, "find_value": 2, "stun": 0}  # arguments after sender
_REQUEST, _RESPONSE = b"\x00", b"\x01"  # rpcudp framing: kind byte, 20-byte message id, msgpack body
_MAX_HOST_CHARS = 64  # the longest IPv6 literal with a scope id is well under this


class DHTError(NetworkError):
    """The DHT was used before `start`, or a record could not be built (no known address)."""


class BootstrapError(NetworkError):
    """No bootstrap seed answered in time: a wrong address, or no peer running there."""


class Refusal(StrEnum):
    """Why (part of) what a DHT node sent was ignored; counted in `PeerDHT.refusals`."""

    MALFORMED = "malformed"  # not an rpcudp datagram, an unknown RPC, wrong arguments, a non-list answer
    BAD_ID = "bad_id"  # a node id or key that is not 20 bytes, or a node claiming this node's id
    BAD_HOST = "bad_host"  # not an IP address a datagram can be sent to
    BAD_PORT = "bad_port"  # not an integer from 1 to 65535
    BAD_RECORD = "bad_record"  # a store of anything but a valid record set for the key
    OVERSIZED = "oversized"  # an answer listing more than k contacts: only the k closest are kept
    ADDRESS_TAKEN = "address_taken"  # another id already lives at that IP:port
    ID_ELSEWHERE = "id_elsewhere"  # the id is already known at another IP:port
    HOST_FULL = "host_full"  # the IP already holds its share of a bucket or of a lookup's candidates


# Refusals that only an ill-formed or hostile sender causes (logged); the others are admission policy.
_HOSTILE = frozenset(
    {Refusal.MALFORMED, Refusal.BAD_ID, Refusal.BAD_HOST, Refusal.BAD_PORT, Refusal.BAD_RECORD}
)


def parse_address(text: str, *, any_port: bool = False) -> Address:
    """`"host:port"` (or `"[v6]:port"`) as `(host, port)`; AddressError saying what is wrong.

    Port 0 is accepted only with `any_port` (an address to listen on: any free port); an address to
    reach, such as a bootstrap seed, needs a real port.
    """
    host, colon, port_text = str(text).strip().rpartition(":")
    if not colon or not host:
        raise AddressError(f"expected host:port, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise AddressError(f"write an IPv6 address in brackets, like [::1]:4000, got {text!r}")
    lowest = 0 if any_port else 1
    if not port_text.isdigit() or not lowest <= int(port_text) < 65536:
        allowed = "0 (any free port)" if any_port else "1"
        raise AddressError(f"port must be a number from {allowed} to 65535, got {port_text!r} in {text!r}")
    return host, int(port_text)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def contact(node_id: object, host: object, port: object, family: int | None = None) -> Node:
    """A `Node` for an untrusted (id, host, port) triple; ProtocolError with a `Refusal` reason if any
    part is malformed.

    The host must be an IP literal (sending to a name would block the event loop on DNS) that a
    datagram can go to: not unspecified, multicast or broadcast, and of the socket's `family` when
    given. It is returned in canonical form, so one address has one spelling.
    """
    if type(node_id) is not bytes or len(node_id) != ID_BYTES:
        raise ProtocolError(Refusal.BAD_ID, f"node id {_shown(node_id)} is not {ID_BYTES} bytes")
    if type(port) is not int or not 0 < port < 65536:
        raise ProtocolError(Refusal.BAD_PORT, f"port {_shown(port)} is not an integer from 1 to 65535")
    if type(host) is not str or len(host) > _MAX_HOST_CHARS:
        raise ProtocolError(Refusal.BAD_HOST, f"host {_shown(host)} is not an IP address")
    return Node(node_id, _sendable(host, family), port)


@functools.lru_cache(maxsize=4096)  # the same few hosts come back in every answer
def _sendable(host: str, family: int | None) -> str:
    """`host` in canonical form if it is an IP address a datagram can go to (see `contact`)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ProtocolError(Refusal.BAD_HOST, f"host {_shown(host)} is not an IP address") from None
    wrong_family = family is not None and family != (socket.AF_INET if ip.version == 4 else socket.AF_INET6)
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255") or wrong_family:
        raise ProtocolError(Refusal.BAD_HOST, f"host {host} cannot be sent a datagram from here")
    return str(ip)


@functools.lru_cache(maxsize=4096)
def _host(ip: str) -> str:
    """What one host controls: an IPv4 address (also when mapped into IPv6), or an IPv6 /64 (one
    host's usual allocation)."""
    address = ipaddress.ip_address(ip.partition("%")[0])
    if address.version == 4:
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.ip_network(f"{address}/64", strict=False))


@dataclass(frozen=True)
class Admission:
    """Which contacts a set of contacts (a routing table, a lookup's candidates) lets in.

    One id per IP:port and one IP:port per id: the first one held wins, so a node already known cannot
    be displaced by someone repeating its id from elsewhere, and one socket cannot claim many ids. One
    IP (IPv6: one /64) may hold at most `per_host` entries of a bucket or candidate set, except the
    `shared_hosts` every local process shares.
    """

    per_host: int
    shared_hosts: frozenset[str]

    def refusal(
        self, node: Node, by_id: Node | None, by_address: Node | None, same_host: int
    ) -> Refusal | None:
        """Why `node` may not join a set where `by_id` holds its id, `by_address` its IP:port, and
        `same_host` entries its host's share of the space it competes for; None if it may. An entry
        held already under the same id and address is let in again (it counts in `same_host`)."""
        if by_id is not None and not by_id.same_home_as(node):
            return Refusal.ID_ELSEWHERE
        if by_address is not None and by_address.id != node.id:
            return Refusal.ADDRESS_TAKEN
        if by_id is None and node.ip not in self.shared_hosts and same_host >= self.per_host:
            return Refusal.HOST_FULL
        return None


class RecordStorage(IStorage):
    """A node's share of the DHT: per key, the newest live record of each signer, signers in the order
    their records first arrived.

    `merge` accepts only a valid record set for the key (RecordError otherwise) and drops expired
    records; at most `limit` signers are kept per key, the earliest to arrive (`records.in_order`), so a
    stored value always fits in one `store` request and late claimants cannot push out early ones.
    Owners republish their own records, so storing nodes never republish.
    """

    def __init__(self, clock: Clock = time.time, limit: int = MAX_PROVIDERS) -> None:
        self._clock = clock
        self._limit = limit
        self._sets: dict[bytes, list[Record]] = {}

    def merge(self, dkey: bytes, value: object) -> None:
        """Merge the record set `value` into what is held under the 20-byte key digest `dkey`."""
        now = self._clock()
        incoming = decode_records(value)
        live = []
        for record in incoming:
            if digest(record.key) != dkey:
                raise RecordError(f"{record.key[:60]} does not belong under key {bytes(dkey).hex()}")
            try:
                record.check(now)
            except RecordError:
                if record.expires > now:
                    raise
                continue  # expired on the way: drop it, the rest of the set may still be good
            live.append(record)
        kept = in_order(self.records(dkey), live, self._limit)
        if kept:
            self._sets[dkey] = kept

    def records(self, dkey: bytes) -> list[Record]:
        """The live records held under `dkey`, in order of their signers' first arrival."""
        now = self._clock()
        live = [record for record in self._sets.get(dkey, []) if record.expires > now]
        if live:
            self._sets[dkey] = live
        else:
            self._sets.pop(dkey, None)
        return live

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.merge(key, value)

    def __getitem__(self, key: bytes) -> bytes:
        records = self.records(key)
        if not records:
            raise KeyError(key)
        return encode_records(records)

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        """The encoded live record set under `key`, or `default`."""
        records = self.records(key)
        return encode_records(records) if records else default

    def iter_older_than(self, seconds_old: float) -> list[tuple[bytes, bytes]]:
        """Nothing: the stock hourly republish of stored values is replaced by owners republishing."""
        return []

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        pairs = [(dkey, self.get(dkey)) for dkey in list(self._sets)]
        return iter([(dkey, value) for dkey, value in pairs if value is not None])


class ExactRoutingTable(RoutingTable):
    """The stock routing table with exact neighbours and `Admission` rules at its one entrance.

    Neighbours are the k known nodes closest by XOR distance. The stock `TableTraverser` alternates
    left and right of the target's bucket and raises StopIteration as soon as the right side is
    exhausted while it is the left side's turn, so from the rightmost bucket it sees at most two
    buckets; with empty buckets there it returns few or no nodes. A table holds at most 160·k nodes
    (and 5·k replacements per bucket), so ranking or scanning all of them is cheap and exact.

    `add_contact` admits only what `refusal` allows, for live entries and the replacement caches alike
    (a full bucket keeps its old live nodes, pings the least recently seen one at most once at a time,
    and replaces it only if it stays silent); `remove_contact` removes an id only at the address it
    failed at, so naming a known id at a dead address cannot evict it.
    """

    def __init__(
        self,
        protocol: RecordProtocol | None,
        ksize: int,
        node: Node,
        *,
        per_host: int | None = None,
        shared_hosts: frozenset[str] = SHARED_HOSTS,
    ) -> None:
        super().__init__(protocol, ksize, node)
        self.admission = Admission(per_host or max(1, ksize // HOST_SHARE), shared_hosts)
        self._pinging: set[bytes] = set()  # ids of bucket heads being pinged (one ping each at a time)

    def find_neighbors(self, node: Node, k: int | None = None, exclude: Node | None = None) -> list[Node]:
        """The `k` (default ksize) known nodes closest to `node`, bar `node` and `exclude`'s address."""
        self.buckets[self.get_bucket_for(node)].touch_last_updated()
        candidates = (
            neighbor
            for bucket in self.buckets
            for neighbor in bucket.get_nodes()
            if neighbor.id != node.id and (exclude is None or not neighbor.same_home_as(exclude))
        )
        return heapq.nsmallest(k or self.ksize, candidates, key=node.distance_to)

    def contacts(self) -> Iterator[Node]:
        """Every contact held, live or waiting in a replacement cache."""
        for bucket in self.buckets:
            yield from _entries(bucket)

    def holds(self, node: Node) -> bool:
        """Whether `node`'s id is a live entry of the table at `node`'s address."""
        held = self.buckets[self.get_bucket_for(node)][node.id]
        return held is not None and held.same_home_as(node)

    def by_id(self, node_id: bytes) -> Node | None:
        """The contact held (live or as a replacement) under `node_id`."""
        bucket = self.buckets[self.get_bucket_for(Node(node_id))]
        return bucket.nodes.get(node_id) or bucket.replacement_nodes.get(node_id)

    def by_address(self, node: Node) -> Node | None:
        """The contact held (live or as a replacement) at `node`'s IP:port."""
        return next((held for held in self.contacts() if held.same_home_as(node)), None)

    def refusal(self, node: Node) -> Refusal | None:
        """Why `node` may not enter the table (None if it may, or is already there)."""
        if node.id == self.node.id:
            return Refusal.BAD_ID
        by_id = self.by_id(node.id)
        if by_id is not None:  # the usual case (a known node): no scan
            return self.admission.refusal(node, by_id, None, 0)
        bucket = self.buckets[self.get_bucket_for(node)]
        host = _host(node.ip)
        same_host = sum(_host(entry.ip) == host for entry in _entries(bucket))
        return self.admission.refusal(node, None, self.by_address(node), same_host)

    def add_contact(self, node: Node) -> None:
        """Add `node` if admitted (a known one moves to its bucket's tail: it was just seen)."""
        if self.refusal(node) is not None:
            return
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        if bucket.add_node(node):
            return
        if bucket.has_in_range(self.node) or bucket.depth() % 5 != 0:  # paper §4.2, as stock
            self.split_bucket(index)
            self.add_contact(node)
        elif self.protocol is not None and bucket.head().id not in self._pinging:
            head = bucket.head()
            self._pinging.add(head.id)
            self.protocol.spawn(self.protocol.call_ping(head)).add_done_callback(
                lambda _: self._pinging.discard(head.id)
            )

    def remove_contact(self, node: Node) -> None:
        """Forget `node` (it did not answer), but only if the table holds its id at that address."""
        bucket = self.buckets[self.get_bucket_for(node)]
        held = bucket.nodes.get(node.id) or bucket.replacement_nodes.get(node.id)
        if held is not None and held.same_home_as(node):
            bucket.remove_node(node)


def _entries(bucket: KBucket) -> Iterator[Node]:
    yield from bucket.nodes.values()
    yield from bucket.replacement_nodes.values()


class RecordProtocol(KademliaProtocol):
    """Kademlia RPCs over `RecordStorage`, with the exact, guarded routing table and checked datagrams.

    `datagram_received` decodes and dispatches every datagram itself: a malformed one is refused,
    counted in `refusals` and logged (at most once a minute per host and reason), and never reaches a
    handler or the routing table. Handlers check the ids they are given. `find_value` answers carry
    the value *and* the closest nodes, so a lookup keeps descending towards the key after a node that
    holds records answers.
    """

    def __init__(
        self,
        source_node: Node,
        storage: RecordStorage,
        ksize: int,
        rpc_timeout: float,
        *,
        per_host: int | None = None,
        shared_hosts: frozenset[str] = SHARED_HOSTS,
    ) -> None:
        super().__init__(source_node, storage, ksize)
        self.router = ExactRoutingTable(
            self, ksize, source_node, per_host=per_host, shared_hosts=shared_hosts
        )
        self._wait_timeout = rpc_timeout
        self._family: int | None = None
        self._tasks: set[asyncio.Future] = set()
        self._identifying: dict[Address, asyncio.Future] = {}
        self._logged: dict[tuple[str, str], float] = {}
        self.refusals: Counter[str] = Counter()

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:
        super().connection_made(transport)
        self._family = transport.get_extra_info("socket").family

    def spawn(self, coroutine) -> asyncio.Future:
        """Run `coroutine` in the background; `close` cancels it."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- datagrams in ------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, address: tuple) -> None:
        """Answer a request or resolve the call a response answers; refuse anything malformed."""
        try:
            if len(data) < 22 or data[:1] not in (_REQUEST, _RESPONSE):
                raise ProtocolError(Refusal.MALFORMED, f"not an rpcudp datagram ({len(data)} bytes)")
            try:
                message = umsgpack.unpackb(data[21:])
            except Exception as error:  # a third-party decoder fed hostile bytes: any failure is malformed
                raise ProtocolError(Refusal.MALFORMED, f"undecodable datagram: {error!r}") from None
            if data[:1] == _RESPONSE:
                self._accept_response(data[1:21], message, address)
                return
            name, args = self._request(message)
            response = getattr(self, f"rpc_{name}")(address, *args)
        except ProtocolError as error:
            self.refuse(error, address)
            return
        except Exception:  # a bug in a handler must not stop this node answering the others
            log.exception("DHT request from %s:%s failed", address[0], address[1])
            return
        self.transport.sendto(_RESPONSE + data[1:21] + umsgpack.packb(response), address)

    @staticmethod
    def _request(message: object) -> tuple[str, list]:
        if not (isinstance(message, list) and len(message) == 2 and isinstance(message[1], list)):
            raise ProtocolError(Refusal.MALFORMED, f"a request is [name, [args]], got {_shown(message)}")
        name, args = message
        if not isinstance(name, str) or _RPC_ARITY.get(name) != len(args):
            raise ProtocolError(Refusal.MALFORMED, f"no RPC {_shown(name)} taking {len(args)} arguments")
        return name, args

    def _accept_response(self, msg_id: bytes, data: object, address: tuple) -> None:
        waiting = self._outstanding.pop(msg_id, None)
        if waiting is None:  # late (after its timeout) or unsolicited: nothing waits for it
            return
        future, timer = waiting
        timer.cancel()
        if not future.done():
            future.set_result((True, data))

    def refuse(self, error: ProtocolError, address: tuple) -> None:
        """Count a refusal; log it (hostile reasons only, once a minute per host and reason)."""
        self.refusals[error.reason] += 1
        if error.reason not in _HOSTILE:
            log.debug("ignored a contact from %s (%s): %s", address[0], error.reason, error)
            return
        now, slot = time.monotonic(), (str(address[0]), str(error.reason))
        if now - self._logged.get(slot, -LOG_EVERY) >= LOG_EVERY:
            if len(self._logged) >= 4096:
                self._logged.clear()
            self._logged[slot] = now
            log.warning("refused DHT input from %s:%s (%s): %s", address[0], address[1], error.reason, error)

    def _heard_from(self, sender: tuple, nodeid: object) -> Node:
        """The contact that sent a request (its own claim of its id), welcomed into the routing table;
        ProtocolError if malformed. Handlers check their other arguments first."""
        node = contact(nodeid, sender[0], sender[1], self._family)
        self.welcome_if_new(node)
        return node

    @staticmethod
    def _key(key: object) -> bytes:
        if type(key) is not bytes or len(key) != ID_BYTES:
            raise ProtocolError(Refusal.BAD_ID, f"key {_shown(key)} is not {ID_BYTES} bytes")
        return key

    def rpc_ping(self, sender: tuple, nodeid: object) -> bytes:
        """This node's id."""
        self._heard_from(sender, nodeid)
        return self.source_node.id

    def rpc_store(self, sender: tuple, nodeid: object, key: object, value: object) -> bool:
        """Merge a valid record set; refuse (False) garbage, forgeries and records under the wrong key."""
        dkey = self._key(key)
        self._heard_from(sender, nodeid)
        try:
            self.storage.merge(dkey, value)
        except RecordError as error:
            self.refuse(ProtocolError(Refusal.BAD_RECORD, f"refused a store: {error}"), sender)
            return False
        return True

    def rpc_find_node(self, sender: tuple, nodeid: object, key: object) -> list[tuple]:
        """The k known nodes closest to `key`, bar the asker."""
        target = Node(self._key(key))
        source = self._heard_from(sender, nodeid)
        neighbors = self.router.find_neighbors(target, exclude=source)
        return [tuple(node) for node in neighbors]

    def rpc_find_value(self, sender: tuple, nodeid: object, key: object) -> dict | list:
        """The records held under `key` with the closest known nodes, or just the nodes."""
        nodes = self.rpc_find_node(sender, nodeid, key)
        value = self.storage.get(key)
        return nodes if value is None else {"value": value, "nodes": nodes}

    # --- answers to this node's calls --------------------------------------------------------------

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, object]:
        """FIND_NODE: (True, up to k checked contacts), or (False, None) if unanswered or not a list."""
        answered, payload = await self.find_node(
            (node_to_ask.ip, node_to_ask.port), self.source_node.id, node_to_find.id
        )
        nodes = self._contacts(payload, node_to_find, node_to_ask) if answered else None
        return self.handle_call_response((nodes is not None, nodes), node_to_ask)

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, object]:
        """FIND_VALUE: (True, contacts or {value, nodes: contacts}), or (False, None) if unanswered or
        not of that shape."""
        answered, payload = await self.find_value(
            (node_to_ask.ip, node_to_ask.port), self.source_node.id, node_to_find.id
        )
        sane: object = None
        if answered and isinstance(payload, dict):
            nodes = self._contacts(payload.get("nodes", []), node_to_find, node_to_ask)
            if type(payload.get("value")) is bytes and nodes is not None:
                sane = {"value": payload["value"], "nodes": nodes}
        elif answered:
            sane = self._contacts(payload, node_to_find, node_to_ask)
        return self.handle_call_response((sane is not None, sane), node_to_ask)

    def _contacts(self, payload: object, target: Node, answerer: Node) -> list[Node] | None:
        """The well-formed contacts of an answer, at most k, closest to `target` first; None if the
        answer is not a list. Malformed triples are dropped (and counted), not the whole answer: an
        honest node may relay a contact that was malformed before its own table learnt better."""
        if not isinstance(payload, list):
            self.refuse(ProtocolError(Refusal.MALFORMED, f"an answer {_shown(payload)}"), _where(answerer))
            return None
        found: dict[bytes, Node] = {}
        for item in payload:
            try:
                if not isinstance(item, list) or len(item) != 3:
                    raise ProtocolError(
                        Refusal.MALFORMED, f"a contact is [id, host, port], got {_shown(item)}"
                    )
                node = contact(*item, family=self._family)
            except ProtocolError as error:
                self.refuse(error, _where(answerer))
                continue
            found.setdefault(node.id, node)
        if len(found) > self.router.ksize:
            error = ProtocolError(Refusal.OVERSIZED, f"{len(found)} contacts in one answer")
            self.refuse(error, _where(answerer))
        return heapq.nsmallest(self.router.ksize, found.values(), key=target.distance_to)

    def handle_call_response(self, result: tuple[bool, object], node: Node) -> tuple[bool, object]:
        """Forget a contact that did not answer (at that address only); one that answered is refreshed
        if the table holds it there, and otherwise asked for its own id (`identify`), because the id
        it was called by came from someone else's answer."""
        if not result[0]:
            self.router.remove_contact(node)
        elif self.router.holds(node):
            self.router.add_contact(node)
        elif self.router.by_address(node) is None:
            address = (node.ip, node.port)
            if address not in self._identifying and len(self._identifying) < MAX_IDENTIFYING:
                task = self._identifying[address] = self.spawn(self.identify(address))
                task.add_done_callback(lambda _: self._identifying.pop(address, None))
        return result

    async def identify(self, address: Address) -> Node | None:
        """Ping `address` and welcome the node there under the id it claims itself; None if it does
        not answer or answers with a malformed id."""
        answered, node_id = await self.ping(address, self.source_node.id)
        if not answered:
            return None
        try:
            node = contact(node_id, address[0], address[1], self._family)
        except ProtocolError as error:
            self.refuse(error, address)
            return None
        self.welcome_if_new(node)
        return node

    async def settle(self) -> None:
        """Wait for the id checks (`identify`) now in flight, e.g. before reporting a join as done."""
        await asyncio.gather(*self._identifying.values(), return_exceptions=True)

    def welcome_if_new(self, node: Node) -> None:
        """Add a contact that claimed its own id, if the table admits it, and hand it the records it
        is now among the closest to (paper §2.5) once it holds a live slot.

        Stock 2.2.3 does `Node(digest(key))` on keys that are already digests, so it measured
        closeness to the wrong point and handed records to the wrong new nodes; it also handed them to
        nodes that only reached a replacement cache, for every datagram they sent.
        """
        refusal = self.router.refusal(node)
        if refusal is not None:
            self.refuse(ProtocolError(refusal, f"{node} as {node.id.hex()}"), _where(node))
            return
        handoff = []
        if self.router.is_new_node(node):
            for dkey, value in self.storage:
                keynode = Node(dkey)
                neighbors = self.router.find_neighbors(keynode)
                if neighbors:
                    new_node_close = node.distance_to(keynode) < neighbors[-1].distance_to(keynode)
                    this_closest = self.source_node.distance_to(keynode) < neighbors[0].distance_to(keynode)
                if not neighbors or (new_node_close and this_closest):
                    handoff.append((dkey, value))
        self.router.add_contact(node)
        if handoff and self.router.holds(node):
            for dkey, value in handoff:
                self.spawn(self.call_store(node, dkey, value))

    def close(self) -> None:
        """Resolve every pending RPC as unanswered and cancel background work (on stop)."""
        for future, timer in self._outstanding.values():
            timer.cancel()
            if not future.done():
                future.set_result((False, None))
        self._outstanding.clear()
        for task in self._tasks:
            task.cancel()


def _where(node: Node) -> Address:
    return (node.ip, node.port)


class Candidates(NodeHeap):
    """A lookup's candidate nodes, closest first, under the routing table's `Admission` rules: one id per
    IP:port, an IP's share of the set, and for an id or address the routing table already holds, the
    table's pairing (claimed by the node itself) wins over what an answer says."""

    def __init__(self, target: Node, maxsize: int, protocol: RecordProtocol) -> None:
        super().__init__(target, maxsize)
        self.protocol = protocol
        known = list(protocol.router.contacts())  # a snapshot: the table may change during the lookup
        self._known_ids = {node.id: node for node in known}
        self._known_addresses = {_where(node): node for node in known}
        self._index()

    def _index(self) -> None:
        entries = [node for _, node in self.heap]
        self._ids = {node.id: node for node in entries}
        self._addresses = {_where(node): node for node in entries}
        self._hosts = Counter(_host(node.ip) for node in entries)

    def __contains__(self, node: Node) -> bool:
        return node.id in self._ids

    def push(self, nodes: Node | list[Node]) -> None:
        router = self.protocol.router
        admission = router.admission
        for node in nodes if isinstance(nodes, list) else [nodes]:
            if node.id == router.node.id or node in self:
                continue
            address = _where(node)
            refusal = admission.refusal(
                node,
                self._known_ids.get(node.id),
                self._addresses.get(address) or self._known_addresses.get(address),
                self._hosts[_host(node.ip)],
            )
            if refusal is not None:
                self.protocol.refuse(ProtocolError(refusal, f"lookup candidate {node}"), address)
                continue
            heapq.heappush(self.heap, (self.node.distance_to(node), node))
            self._ids[node.id] = self._addresses[address] = node
            self._hosts[_host(node.ip)] += 1

    def remove(self, peers: Iterable[bytes]) -> None:
        super().remove(peers)
        self._index()


class BoundedCrawl:
    """An iterative Kademlia lookup (the stock `SpiderCrawl._find`) that hostile answers cannot inflate
    or prolong: candidates pass `Candidates`' rules, every answer has already been cut to k checked
    contacts (`RecordProtocol._contacts`), and the lookup stops after `LOOKUP_ROUNDS` rounds or
    `LOOKUP_QUERIES_PER_K · k` queries. Each round waits at most the RPC timeout, so a lookup ends
    within `LOOKUP_ROUNDS · rpc_timeout` seconds.

    As in stock, a round queries α uncontacted candidates among the k closest, or all of them when the
    k closest did not change; the lookup ends when all k closest have answered (or been dropped).
    """

    def __init__(
        self, protocol: RecordProtocol, node: Node, peers: list[Node], ksize: int, alpha: int
    ) -> None:
        self.protocol = protocol
        self.node = node
        self.ksize = ksize
        self.alpha = alpha
        self.nearest = Candidates(node, ksize, protocol)
        self.nearest.push(peers)
        self.queries = self.rounds = 0

    async def _crawl(self, rpcmethod: Callable) -> None:
        last_ids: list[bytes] | None = None
        while self.rounds < LOOKUP_ROUNDS:
            waiting = self.nearest.get_uncontacted()
            budget = LOOKUP_QUERIES_PER_K * self.ksize - self.queries
            if not waiting or budget <= 0 or self._done():
                return
            self.rounds += 1
            ids = self.nearest.get_ids()
            batch = waiting[: min(len(waiting) if ids == last_ids else self.alpha, budget)]
            last_ids = ids
            for peer in batch:
                self.nearest.mark_contacted(peer)
            self.queries += len(batch)
            answers = await asyncio.gather(*(rpcmethod(peer, self.node) for peer in batch))
            silent = []
            for peer, (answered, payload) in zip(batch, answers, strict=True):
                if answered:
                    self.nearest.push(self._absorb(payload))
                else:
                    silent.append(peer.id)
            self.nearest.remove(silent)

    def _absorb(self, payload: object) -> list[Node]:
        """The contacts of an answer (subclasses also take what else it carries)."""
        return payload

    def _done(self) -> bool:
        return False


class NodeCrawl(BoundedCrawl):
    """Find the k nodes closest to a target (`find`: those that answered)."""

    async def find(self) -> list[Node]:
        await self._crawl(self.protocol.call_find_node)
        return [node for node in self.nearest if node.id in self.nearest.contacted]


class RecordCrawl(BoundedCrawl):
    """A value lookup that keeps every storing node's records instead of picking one value.

    It queries the nodes closest to the key until all of the k closest have answered (or failed) and
    returns, per answering node that holds valid records of `key`, those records in the node's order
    (the order their signers reached it). With `first_match` it returns after the round in which the
    first valid record arrived (enough for a single-signer `peer:` key).
    """

    def __init__(
        self,
        protocol: RecordProtocol,
        key: str,
        peers: list[Node],
        ksize: int,
        alpha: int,
        *,
        now: float,
        first_match: bool,
    ) -> None:
        super().__init__(protocol, Node(digest(key)), peers, ksize, alpha)
        self.key = key
        self.now = now
        self.first_match = first_match
        self.holdings: list[list[Record]] = []
        self._checked: dict[bytes, list[Record]] = {}  # nodes near a key often hold the same set

    async def find(self) -> list[list[Record]]:
        """Each answering storing node's valid records of the key, in that node's order."""
        await self._crawl(self.protocol.call_find_value)
        return self.holdings

    def _absorb(self, payload: object) -> list[Node]:
        if not isinstance(payload, dict):
            return payload
        value = payload["value"]
        if value not in self._checked:
            self._checked[value] = valid_records(self.key, value, self.now)
        if self._checked[value]:
            self.holdings.append(self._checked[value])
        return payload["nodes"]

    def _done(self) -> bool:
        return self.first_match and bool(self.holdings)


@dataclass(frozen=True)
class Providers:
    """The providers of a topic as the storing nodes around it hold them.

    records: every live provider, one record per signer (its newest), ordered by `firsts` (then by how
    many storing nodes hold it, then by peer id) — never by issue time, which a signer chooses.
    firsts: per signer, how many storing nodes hold its claim first, i.e. received it before any other
    live claim (storing nodes keep claims in arrival order). holders: storing nodes that answered with
    at least one claim.
    """

    records: list[ProviderRecord]
    firsts: Counter[str]
    holders: int

    @classmethod
    def of(cls, holdings: Sequence[Sequence[Record]]) -> Providers:
        """Tally what each storing node holds (one sequence per node, in its order)."""
        claims = [[record for record in held if isinstance(record, ProviderRecord)] for held in holdings]
        claims = [held for held in claims if held]
        firsts = Counter(held[0].peer_id for held in claims)
        held_by = Counter(peer_id for held in claims for peer_id in {record.peer_id for record in held})
        records = freshest(chain.from_iterable(claims))
        records.sort(key=lambda record: (-firsts[record.peer_id], -held_by[record.peer_id], record.peer_id))
        return cls(records, firsts, len(claims))

    @property
    def first(self) -> ProviderRecord | None:
        """The provider that a strict majority of the storing nodes hold first; None if there is none
        (no claim, or the storing nodes disagree)."""
        if self.records and 2 * self.firsts[self.records[0].peer_id] > self.holders:
            return self.records[0]
        return None

    def of_peer(self, peer_id: str) -> ProviderRecord | None:
        """`peer_id`'s claim, if any storing node holds one."""
        return next((record for record in self.records if record.peer_id == peer_id), None)


class _Server(Server):
    """`kademlia.Server` with `RecordProtocol`, bounded lookups, a checked bootstrap and a
    `set_digest` that survives an empty network."""

    def __init__(
        self,
        node_id: bytes,
        storage: RecordStorage,
        *,
        ksize: int,
        alpha: int,
        rpc_timeout: float,
        per_host: int | None,
        shared_hosts: frozenset[str],
    ):
        super().__init__(ksize=ksize, alpha=alpha, node_id=node_id, storage=storage)
        self.rpc_timeout = rpc_timeout
        self.per_host = per_host
        self.shared_hosts = shared_hosts

    def _create_protocol(self) -> RecordProtocol:
        return RecordProtocol(
            self.node,
            self.storage,
            self.ksize,
            self.rpc_timeout,
            per_host=self.per_host,
            shared_hosts=self.shared_hosts,
        )

    async def bootstrap_node(self, addr: Address) -> Node | None:
        """The seed at `addr` under the id it claims (stock 2.2.3 built a Node from any answer, which
        raised on a malformed one); None if it does not answer sanely."""
        return await self.protocol.identify(addr)

    async def _refresh_table(self) -> None:
        """Refresh buckets not looked up for an hour (paper §2.3) with bounded lookups."""
        for node_id in self.protocol.get_refresh_ids():
            target = Node(node_id)
            nearest = self.protocol.router.find_neighbors(target, self.alpha)
            await NodeCrawl(self.protocol, target, nearest, self.ksize, self.alpha).find()

    async def set_digest(self, dkey: bytes, value: bytes) -> bool:
        """Store `value` on the k nodes closest to `dkey`; True if at least one of them accepted it.

        When no node answers, the value is kept locally and False returned (stock 2.2.3 raised
        ValueError from `max([])`). Being among the k closest also counts when fewer than k answered.
        """
        target = Node(dkey)
        nodes = []
        nearest = self.protocol.router.find_neighbors(target)
        if nearest:
            nodes = await NodeCrawl(self.protocol, target, nearest, self.ksize, self.alpha).find()
        if not nodes:
            log.warning("no reachable peer to store %s on; kept it locally only", dkey.hex())
            self.storage[dkey] = value
            return False
        farthest = max(node.distance_to(target) for node in nodes)
        if len(nodes) < self.ksize or self.node.distance_to(target) < farthest:
            self.storage[dkey] = value
        results = await asyncio.gather(*(self.protocol.call_store(node, dkey, value) for node in nodes))
        return any(answered and accepted is True for answered, accepted in results)

    def stop(self) -> None:
        """Close the socket and resolve every pending RPC so nothing waits for a timeout."""
        super().stop()
        if self.protocol is not None:
            self.protocol.close()


class PeerDHT:
    """This peer's handle on the DHT: announce where it listens, say what it provides, find others.

    ttl: seconds a published record stays valid; own records are republished every `republish_every`
    (default ttl / 3) so a peer that goes silent vanishes within ttl. clock: unix time for issuing and
    expiring records (inject a fake one in tests). ksize, alpha: Kademlia's k and α. rpc_timeout:
    seconds to wait for a UDP answer before counting the node as gone (rpcudp's default is 5).
    max_per_host: entries one IP may hold in a bucket or a lookup (default k / `HOST_SHARE`, at least 1);
    shared_hosts: IPs exempt from that limit because every local process shares them.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        ttl: float = 60.0,
        clock: Clock = time.time,
        ksize: int = 20,
        alpha: int = 3,
        rpc_timeout: float = 5.0,
        republish_every: float | None = None,
        max_per_host: int | None = None,
        shared_hosts: frozenset[str] = SHARED_HOSTS,
    ) -> None:
        if ttl <= 0 or rpc_timeout <= 0:
            raise ValueError("ttl and rpc_timeout must be positive")
        if max_per_host is not None and max_per_host < 1:
            raise ValueError("max_per_host must be at least 1")
        self.identity = identity
        self.ttl = ttl
        self.rpc_timeout = rpc_timeout
        self.clock = clock
        self.republish_every = republish_every if republish_every is not None else ttl / 3
        self._storage = RecordStorage(clock)
        self._server = _Server(
            identity.node_id,
            self._storage,
            ksize=ksize,
            alpha=alpha,
            rpc_timeout=rpc_timeout,
            per_host=max_per_host,
            shared_hosts=shared_hosts,
        )
        self._listen_host = ""
        self._address: tuple[str, int] | None = None  # (host, tcp_port) once announced
        self._topics: set[str] = set()
        self._republisher: asyncio.Task | None = None
        self._joined = asyncio.Event()  # set once a bootstrap seed answered

    @property
    def peer_id(self) -> str:
        """This peer's id (also its Kademlia node id, in hex)."""
        return self.identity.peer_id

    @property
    def port(self) -> int:
        """The UDP port the DHT listens on (useful after `start(port=0)`)."""
        return self._protocol().transport.get_extra_info("sockname")[1]

    @property
    def neighbor_count(self) -> int:
        """How many DHT nodes the routing table currently holds."""
        return sum(len(bucket) for bucket in self._protocol().router.buckets)

    @property
    def refusals(self) -> Counter[str]:
        """How often each `Refusal` reason made this node ignore (part of) what another node sent."""
        return self._protocol().refusals

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, bootstrap: Sequence[Address | str] = ()
    ) -> None:
        """Listen on UDP `host:port` (0 picks a free port), then join through the `bootstrap` seeds;
        ListenError if it cannot listen there."""
        if self._server.protocol is not None:
            raise DHTError("a PeerDHT starts once; make a new one to start again")
        try:
            await self._server.listen(port, interface=host)
        except OSError as err:  # the datagram endpoint's own error does not say where
            raise ListenError("UDP", host, port, err) from err
        self._listen_host = host
        self._republisher = asyncio.create_task(self._republish_forever())
        if bootstrap:
            await self.bootstrap(bootstrap)

    async def bootstrap(self, seeds: Sequence[Address | str]) -> int:
        """Join the DHT through `seeds` (`(host, port)` or `"host:port"`); how many of them answered.

        Zero is logged, not raised: a first peer has nobody to join, and the caller may retry later.
        """
        addresses = []
        for seed in seeds:
            host, port = parse_address(seed) if isinstance(seed, str) else seed
            address = await self._resolve(host, int(port))
            if address is not None:
                addresses.append(address)
        contacts = await asyncio.gather(*(self._server.bootstrap_node(address) for address in addresses))
        reached = [node for node in contacts if node is not None and node.id != self._server.node.id]
        if not reached:
            log.warning(
                "no bootstrap seed answered (%s)", ", ".join(f"{h}:{p}" for h, p in addresses) or "none"
            )
            return 0
        self._joined.set()
        protocol = self._protocol()
        await NodeCrawl(protocol, self._server.node, reached, self._server.ksize, self._server.alpha).find()
        await protocol.settle()  # the nodes met on the way are in the table once they confirmed their ids
        return len(reached)

    async def wait_joined(self, seeds: Sequence[Address], within: float) -> None:
        """Return once a `bootstrap` call reached one of `seeds`; BootstrapError naming them if none did
        within `within` seconds. A joiner retries its seeds while they start; this bounds the retrying."""
        try:
            await asyncio.wait_for(self._joined.wait(), within)
        except TimeoutError:
            names = ", ".join(format_address(host, port) for host, port in seeds)
            raise BootstrapError(
                f"no bootstrap peer answered within {within:g} s: {names} (is a peer running there?)"
            ) from None

    async def stop(self) -> None:
        """Stop republishing and close the socket; this peer's records then expire within ttl."""
        if self._republisher is not None:
            self._republisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._republisher
            self._republisher = None
        self._server.stop()

    async def announce(self, tcp_port: int, host: str | None = None) -> bool:
        """Publish (and keep republishing) where this peer listens; True if another node stored it.

        `host` defaults to the DHT's listening address, or, when that is a wildcard, the address a
        neighbour sees this peer's datagrams come from. RecordTooLarge if the record would not fit.
        """
        host = host or await self._own_host()
        self._peer_record(host, tcp_port)  # validate before adopting the address
        self._address = (host, tcp_port)
        return await self.republish()

    async def provide(self, topic: str) -> bool:
        """Publish (and keep republishing) that this peer provides `topic`; needs `announce` first."""
        record = self._provider_record(topic)
        self._topics.add(topic)
        return await self._publish(record)

    async def republish(self) -> bool:
        """Re-sign and publish this peer's records now; True if every one was stored by another node."""
        if self._address is None:
            return False
        host, tcp_port = self._address
        records = [self._peer_record(host, tcp_port)]
        records += [self._provider_record(topic) for topic in sorted(self._topics)]
        return all(await asyncio.gather(*(self._publish(record) for record in records)))

    async def find_peer(self, peer_id: str) -> PeerRecord | None:
        """The freshest valid record of peer `peer_id`, or None if the DHT has no live one."""
        holdings = await self._lookup(peer_key(peer_id), first_match=True)
        records = freshest(chain.from_iterable(holdings))
        return next((record for record in records if isinstance(record, PeerRecord)), None)

    async def find_providers(self, topic: str) -> list[ProviderRecord]:
        """The verified, live providers of `topic`, one per peer, earliest holder first (see
        `lookup_providers`; at most MAX_PROVIDERS per storing node, merged over the nodes around it)."""
        return (await self.lookup_providers(topic)).records

    async def lookup_providers(self, topic: str) -> Providers:
        """The providers of `topic` with, for each, how many storing nodes received its claim first."""
        return Providers.of(await self._lookup(providers_key(topic), first_match=False))

    def _protocol(self) -> RecordProtocol:
        if self._server.protocol is None:
            raise DHTError("start() the DHT first")
        return self._server.protocol

    def _peer_record(self, host: str, tcp_port: int) -> PeerRecord:
        record = PeerRecord.create(
            self.identity, host=host, udp_port=self.port, tcp_port=tcp_port, now=self.clock(), ttl=self.ttl
        )
        encode_records([record])  # RecordTooLarge now rather than on the wire
        return record

    def _provider_record(self, topic: str) -> ProviderRecord:
        if self._address is None:
            raise DHTError("announce() this peer's address before providing a topic")
        host, tcp_port = self._address
        record = ProviderRecord.create(
            self.identity,
            topic=topic,
            host=host,
            udp_port=self.port,
            tcp_port=tcp_port,
            now=self.clock(),
            ttl=self.ttl,
        )
        encode_records([record])
        return record

    async def _publish(self, record: Record) -> bool:
        return await self._server.set_digest(digest(record.key), encode_records([record]))

    async def _lookup(self, key: str, *, first_match: bool) -> list[list[Record]]:
        """What each storing node (this one first) holds under `key`: its valid records, in its order."""
        dkey = digest(key)
        protocol = self._protocol()
        own = self._storage.records(dkey)
        holdings = [own] if own else []
        if not (first_match and own):
            nearest = protocol.router.find_neighbors(Node(dkey))
            if nearest:
                crawl = RecordCrawl(
                    protocol,
                    key,
                    nearest,
                    self._server.ksize,
                    self._server.alpha,
                    now=self.clock(),
                    first_match=first_match,
                )
                holdings += await crawl.find()
        return holdings

    async def _republish_forever(self) -> None:
        while True:
            await asyncio.sleep(self.republish_every)
            try:
                await self.republish()
            except Exception:  # a failed round must not end the loop; the next one may succeed
                log.exception("republishing this peer's DHT records failed")

    async def _resolve(self, host: str, port: int) -> Address | None:
        family = self._protocol().transport.get_extra_info("socket").family
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, family=family, type=socket.SOCK_DGRAM
            )
        except OSError as error:
            log.warning("cannot resolve DHT seed %s:%s: %s", host, port, error)
            return None
        return infos[0][4][0], infos[0][4][1]

    async def _own_host(self) -> str:
        try:
            wildcard = ipaddress.ip_address(self._listen_host).is_unspecified
        except ValueError:  # a host name
            wildcard = False
        if not wildcard:
            return self._listen_host
        protocol = self._protocol()
        for neighbor in protocol.router.find_neighbors(self._server.node, 3):
            answered, seen = await protocol.stun((neighbor.ip, neighbor.port))
            if answered and isinstance(seen, list) and seen and isinstance(seen[0], str):
                return seen[0]
        raise DHTError(
            "cannot tell this peer's address (listening on a wildcard, no neighbour answered); pass host"
        )
