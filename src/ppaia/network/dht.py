"""Peer discovery over a Kademlia DHT: `PeerDHT` publishes and finds signed `PeerRecord`s and
`ProviderRecord`s (see `ppaia.network.records`).

Built on the `kademlia` package, pinned at 2.2.3 because this module replaces parts of it:

* one value per key, trusted blindly → `RecordStorage` keeps a merged set of signed records per key
  and `RecordProtocol.rpc_store` refuses anything else; `RecordCrawl` returns the union of the valid
  records every node near the key holds (the stock `ValueSpiderCrawl`, crawling.py:101-125, stops at
  the first answers and keeps the most common value);
* values over rpcudp's 8 KiB request limit cannot be sent → records are small, sets are capped and a
  too-large record is refused on publish with `RecordTooLarge`;
* `TableTraverser` (routing.py:103-120) stops as soon as the buckets on its right run out, skipping
  every bucket on its left, and `find_neighbors` (routing.py:185-195) stops at the first k nodes in
  bucket order → `ExactRoutingTable.find_neighbors` ranks every known node by XOR distance;
* `Server.set_digest` (network.py:183) raises ValueError on `max([])` when every contacted node is
  gone, and (network.py:188) reports success even when every store failed → `_Server.set_digest`;
* `welcome_if_new` (protocol.py:103) hashes the already-hashed key again, so it hands stored values
  to the wrong new nodes → fixed in `RecordProtocol.welcome_if_new`.

Peers that go silent disappear: every record expires after `ttl` seconds and each peer re-signs and
republishes its own records every `ttl / 3`. Expiry uses an injectable clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence

from kademlia.crawling import NodeSpiderCrawl, SpiderCrawl
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.routing import RoutingTable
from kademlia.storage import IStorage
from kademlia.utils import digest

from ppaia.network.identity import Identity
from ppaia.network.records import (
    MAX_PROVIDERS,
    PeerRecord,
    ProviderRecord,
    Record,
    RecordError,
    capped,
    decode_records,
    encode_records,
    freshest,
    peer_key,
    providers_key,
    valid_records,
)

__all__ = [
    "DHTError",
    "ExactRoutingTable",
    "PeerDHT",
    "RecordCrawl",
    "RecordProtocol",
    "RecordStorage",
    "parse_address",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Address = tuple[str, int]


class DHTError(RuntimeError):
    """The DHT was used before `start`, or a record could not be built (no known address)."""


def parse_address(text: str) -> Address:
    """`"host:port"` (or `"[v6]:port"`) as `(host, port)`; ValueError saying what is wrong."""
    host, colon, port_text = str(text).strip().rpartition(":")
    if not colon or not host:
        raise ValueError(f"expected host:port, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, like [::1]:4000, got {text!r}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port must be a number from 1 to 65535, got {port_text!r} in {text!r}")
    return host, int(port_text)


class RecordStorage(IStorage):
    """A node's share of the DHT: per key, the newest live record of each signer.

    `merge` accepts only a valid record set for the key (RecordError otherwise) and drops expired
    records; at most `limit` records are kept per key, freshest first, so a stored value always fits in
    one `store` request. Owners republish their own records, so storing nodes never republish.
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
        kept = capped([*self.records(dkey), *live], self._limit)
        if kept:
            self._sets[dkey] = kept

    def records(self, dkey: bytes) -> list[Record]:
        """The live records held under `dkey`, newest first."""
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
    """The stock routing table, but neighbours are the k known nodes closest by XOR distance.

    The stock `TableTraverser` alternates left and right of the target's bucket and raises
    StopIteration as soon as the right side is exhausted while it is the left side's turn, so from the
    rightmost bucket it sees at most two buckets; with empty buckets there it returns few or no nodes.
    A table holds at most 160·k nodes, so ranking all of them is cheap and exact.
    """

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


def _node_list(payload: object) -> bool:
    """Whether an untrusted FIND_NODE answer is a list of (20-byte id, host, port) triples."""
    return isinstance(payload, list) and all(
        isinstance(item, list)
        and len(item) == 3
        and isinstance(item[0], bytes)
        and len(item[0]) == 20
        and isinstance(item[1], str)
        and type(item[2]) is int
        and 0 < item[2] < 65536
        for item in payload
    )


class RecordProtocol(KademliaProtocol):
    """Kademlia RPCs over `RecordStorage`, with the exact routing table and sanity-checked answers.

    `find_value` answers carry the value *and* the closest nodes, so a lookup keeps descending
    towards the key after a node that holds records answers.
    """

    def __init__(self, source_node: Node, storage: RecordStorage, ksize: int, rpc_timeout: float) -> None:
        super().__init__(source_node, storage, ksize)
        self.router = ExactRoutingTable(self, ksize, source_node)
        self._wait_timeout = rpc_timeout
        self._tasks: set[asyncio.Task] = set()

    def rpc_store(self, sender: Address, nodeid: object, key: object, value: object) -> bool:
        """Merge a valid record set; refuse (False) garbage, forgeries and records under the wrong key."""
        if not (
            isinstance(nodeid, bytes) and len(nodeid) == 20 and isinstance(key, bytes) and len(key) == 20
        ):
            return False
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        try:
            self.storage.merge(key, value)
        except RecordError as error:
            log.warning("refused a store from %s:%s: %s", sender[0], sender[1], error)
            return False
        return True

    def rpc_find_value(self, sender: Address, nodeid: bytes, key: bytes) -> dict | list:
        """The records held under `key` with the closest known nodes, or just the nodes."""
        nodes = self.rpc_find_node(sender, nodeid, key)
        value = self.storage.get(key)
        return nodes if value is None else {"value": value, "nodes": nodes}

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, object]:
        """FIND_NODE; an answer that is not a node list counts as no answer."""
        result = await self.find_node(
            (node_to_ask.ip, node_to_ask.port), self.source_node.id, node_to_find.id
        )
        sane = result if result[0] and _node_list(result[1]) else (False, None)
        return self.handle_call_response(sane, node_to_ask)

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, object]:
        """FIND_VALUE; an answer that is neither a node list nor {value, nodes} counts as no answer."""
        result = await self.find_value(
            (node_to_ask.ip, node_to_ask.port), self.source_node.id, node_to_find.id
        )
        answered, payload = result
        if isinstance(payload, dict):
            sane = isinstance(payload.get("value"), bytes) and _node_list(payload.get("nodes", []))
        else:
            sane = _node_list(payload)
        return self.handle_call_response(result if answered and sane else (False, None), node_to_ask)

    def welcome_if_new(self, node: Node) -> None:
        """Add a new contact and hand it the records it is now among the closest to (paper §2.5).

        Stock 2.2.3 does `Node(digest(key))` on keys that are already digests, so it measured
        closeness to the wrong point and handed records to the wrong new nodes.
        """
        if not self.router.is_new_node(node):
            return
        for dkey, value in self.storage:
            keynode = Node(dkey)
            neighbors = self.router.find_neighbors(keynode)
            if neighbors:
                new_node_close = node.distance_to(keynode) < neighbors[-1].distance_to(keynode)
                this_closest = self.source_node.distance_to(keynode) < neighbors[0].distance_to(keynode)
            if not neighbors or (new_node_close and this_closest):
                task = asyncio.ensure_future(self.call_store(node, dkey, value))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self.router.add_contact(node)

    def close(self) -> None:
        """Resolve every pending RPC as unanswered and cancel background stores (on stop)."""
        for future, timer in self._outstanding.values():
            timer.cancel()
            if not future.done():
                future.set_result((False, None))
        self._outstanding.clear()
        for task in self._tasks:
            task.cancel()


class RecordCrawl(SpiderCrawl):
    """A value lookup that merges records instead of picking one value.

    It queries the nodes closest to the key until all of the k closest have answered (or failed) and
    returns the valid records of `key` from every answer. With `first_match` it returns after the
    round in which the first valid record arrived (enough for a single-signer `peer:` key).
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
        self.found: list[Record] = []
        self._seen: set[bytes] = set()  # values already checked: nodes near a key often hold the same set

    async def find(self) -> list[Record]:
        """The valid records of the key held by the nodes around it (possibly with duplicates)."""
        return await self._find(self.protocol.call_find_value)

    async def _nodes_found(self, responses: dict[bytes, tuple[bool, object]]) -> list[Record]:
        silent = []
        for node_id, (answered, payload) in responses.items():
            if not answered:
                silent.append(node_id)
                continue
            if isinstance(payload, dict):
                if payload["value"] not in self._seen:
                    self._seen.add(payload["value"])
                    self.found.extend(valid_records(self.key, payload["value"], self.now))
                payload = payload.get("nodes", [])
            self.nearest.push([Node(*triple) for triple in payload])
        self.nearest.remove(silent)
        if self.nearest.have_contacted_all() or (self.first_match and self.found):
            return self.found
        return await self.find()


class _Server(Server):
    """`kademlia.Server` with `RecordProtocol` and a `set_digest` that survives an empty network."""

    def __init__(self, node_id: bytes, storage: RecordStorage, *, ksize: int, alpha: int, rpc_timeout: float):
        super().__init__(ksize=ksize, alpha=alpha, node_id=node_id, storage=storage)
        self.rpc_timeout = rpc_timeout

    def _create_protocol(self) -> RecordProtocol:
        return RecordProtocol(self.node, self.storage, self.ksize, self.rpc_timeout)

    async def set_digest(self, dkey: bytes, value: bytes) -> bool:
        """Store `value` on the k nodes closest to `dkey`; True if at least one of them accepted it.

        When no node answers, the value is kept locally and False returned (stock 2.2.3 raised
        ValueError from `max([])`). Being among the k closest also counts when fewer than k answered.
        """
        target = Node(dkey)
        nodes = []
        nearest = self.protocol.router.find_neighbors(target)
        if nearest:
            nodes = await NodeSpiderCrawl(self.protocol, target, nearest, self.ksize, self.alpha).find()
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
    ) -> None:
        if ttl <= 0 or rpc_timeout <= 0:
            raise ValueError("ttl and rpc_timeout must be positive")
        self.identity = identity
        self.ttl = ttl
        self.clock = clock
        self.republish_every = republish_every if republish_every is not None else ttl / 3
        self._storage = RecordStorage(clock)
        self._server = _Server(
            identity.node_id, self._storage, ksize=ksize, alpha=alpha, rpc_timeout=rpc_timeout
        )
        self._listen_host = ""
        self._address: tuple[str, int] | None = None  # (host, tcp_port) once announced
        self._topics: set[str] = set()
        self._republisher: asyncio.Task | None = None

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

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, bootstrap: Sequence[Address | str] = ()
    ) -> None:
        """Listen on UDP `host:port` (0 picks a free port), then join through the `bootstrap` seeds."""
        if self._server.protocol is not None:
            raise DHTError("a PeerDHT starts once; make a new one to start again")
        await self._server.listen(port, interface=host)
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
        await NodeSpiderCrawl(
            self._protocol(), self._server.node, reached, self._server.ksize, self._server.alpha
        ).find()
        return len(reached)

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
        records = await self._lookup(peer_key(peer_id), first_match=True)
        return next((record for record in records if isinstance(record, PeerRecord)), None)

    async def find_providers(self, topic: str) -> list[ProviderRecord]:
        """The verified, live providers of `topic`, one per peer, freshest first (at most MAX_PROVIDERS
        per storing node, merged over the nodes closest to the topic)."""
        records = await self._lookup(providers_key(topic), first_match=False)
        return [record for record in records if isinstance(record, ProviderRecord)]

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

    async def _lookup(self, key: str, *, first_match: bool) -> list[Record]:
        dkey = digest(key)
        protocol = self._protocol()
        now = self.clock()
        found = self._storage.records(dkey)
        if not (first_match and found):
            nearest = protocol.router.find_neighbors(Node(dkey))
            if nearest:
                crawl = RecordCrawl(
                    protocol,
                    key,
                    nearest,
                    self._server.ksize,
                    self._server.alpha,
                    now=now,
                    first_match=first_match,
                )
                found = [*found, *await crawl.find()]
        return freshest(found)

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
