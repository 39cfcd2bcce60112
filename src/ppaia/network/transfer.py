"""Model exchange over TCP: a peer serves its recent model versions; other peers fetch and verify them.

One connection carries one exchange: the client sends a signed ``request`` frame, the server answers
with a signed reply (``model`` header and body frames, ``not_ready`` or ``status``) and closes. See
:mod:`ppaia.network.wire` for the frames and messages.

:func:`fetch_model` trusts nothing it has not checked: the header must be signed (by `expect_sender`
when given), echo the request's nonce, name the requested version, announce at most `max_bytes` and
describe exactly the expected tensors — all before a byte of the body is read; the body must hash to
the header's CID and decode to finite tensors of the expected names, shapes and dtypes. It returns the
whole verified model or raises; it never returns part of one. A reply that starts but then arrives
slower than the :class:`Pace` ends as "slow_sender", distinct from a plain "timeout".

:class:`ModelServer` survives its clients: every connection's failure is caught, counted by reason in
``rejections``, logged, and held against the remote address in a :class:`BanList`. Every phase of a
connection has a deadline, and connections are bounded in number, per address and per peer, so that
idle, half-sent, never-read or slowly read connections cannot hold the slots honest peers need (see
the class for the rules and their defaults).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import math
import secrets
import socket
import struct
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import chain
from typing import Any, TypeVar, cast

import torch

from ppaia import codec
from ppaia.network.content import check_content, cid_of
from ppaia.network.errors import ListenError, ProtocolError, Reason
from ppaia.network.identity import Identity
from ppaia.network.status import PeerStatus
from ppaia.network.wire import (
    LENGTH,
    MAX_CHUNK,
    MAX_VERSION,
    LinkClaim,
    LinkReply,
    ModelHeader,
    NotReadyReply,
    Request,
    StatusReply,
    ViewReply,
    open_message,
    seal,
    write_frame,
)

__all__ = [
    "DEFAULT_PACE",
    "BanList",
    "Fetched",
    "LinkHandler",
    "ModelServer",
    "ModelVersion",
    "NotReady",
    "Pace",
    "Reason",
    "ViewHandler",
    "check_header",
    "exchange_view",
    "fetch_model",
    "fetch_status",
    "request_link",
    "verify_body",
]

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 1 << 20
MAX_REPLY_HEADER_BYTES = 1 << 20  # a header's spec grows with the number of tensors
STREAM_LIMIT = 4 << 20  # client read buffer: large enough that a 1 MiB body frame arrives without stalls
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() discards unsent data and resets
IPV6_SITE_PREFIX = 64  # one IPv6 host usually owns a whole /64: limits and strikes count per /64

T = TypeVar("T")
# An open swarm's view exchange, server side: (the client's peer id, the records it offered) -> the
# records to answer with; it raises ProtocolError (``bad_record``) for an offer that holds a bad one.
ViewHandler = Callable[[str, list[bytes]], list[bytes]]
# An open swarm's overlay link, server side: (the client's peer id, its claim, the records it offered) ->
# (whether the server holds the link now, its degree); ProtocolError for a claim it refuses (a strike).
LinkHandler = Callable[[str, LinkClaim, list[bytes]], tuple[bool, int]]


# Rejections that are nobody's fault (or not the remote's): no strike against the remote address.
BLAMELESS = frozenset(
    {Reason.BUSY, Reason.BANNED, Reason.EVICTED, Reason.DISCONNECTED, Reason.INTERNAL, Reason.CLOSED}
)


@dataclass(frozen=True)
class Pace:
    """The slowest transfer either end tolerates: every `window` seconds, a *slice* of at least
    `min_rate` × `window` bytes must move, or the other end is cut off.

    Measured per slice rather than over the whole transfer, so a peer cannot read (or send) fast at
    first and then stall on the credit. The defaults — 16 KiB/s, slices of 80 KiB within 5 s — pass
    any honest link down to about 130 kbit/s, with room for TCP's loss recovery (a stall of 5 s is
    five lost retransmissions in a row), while a stalled or trickling peer holds its connection for
    about one window.
    """

    min_rate: float = 16 << 10  # bytes per second
    window: float = 5.0  # seconds

    def __post_init__(self) -> None:
        if not (self.min_rate > 0 and self.window > 0):
            raise ValueError("a pace needs a positive min_rate and window")

    @property
    def slice_bytes(self) -> int:
        """Bytes that must move within each window."""
        return max(1, math.ceil(self.min_rate * self.window))


DEFAULT_PACE = Pace()


class BanList:
    """Strikes against keys (peer ids or addresses); `max_strikes` of them ban a key for `ban_seconds`.

    Strikes expire `ban_seconds` after the first of them, so rare honest failures never add up to a ban.
    At most `max_entries` keys are remembered; beyond that, expired entries and then the oldest go.
    `clock` (seconds, monotonic) is injectable for tests.
    """

    def __init__(
        self,
        max_strikes: int = 5,
        ban_seconds: float = 600.0,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_strikes < 1 or ban_seconds <= 0 or max_entries < 1:
            raise ValueError("max_strikes, ban_seconds and max_entries must be positive")
        self.max_strikes = max_strikes
        self.ban_seconds = ban_seconds
        self.max_entries = max_entries
        self.clock = clock
        self._strikes: dict[str, tuple[int, float]] = {}  # key -> (strikes, time of the first)
        self._banned_until: dict[str, float] = {}

    def is_banned(self, key: str) -> bool:
        """Whether `key` is banned now."""
        until = self._banned_until.get(key)
        if until is None:
            return False
        if self.clock() < until:
            return True
        del self._banned_until[key]
        return False

    def banned(self) -> list[str]:
        """The keys banned now."""
        return [key for key in list(self._banned_until) if self.is_banned(key)]

    def strike(self, key: str, reason: str) -> bool:
        """Count a strike against `key` for `reason`; True if it bans the key (from now on)."""
        now = self.clock()
        count, since = self._strikes.get(key, (0, now))
        if now - since >= self.ban_seconds:
            count, since = 0, now
        count += 1
        if count < self.max_strikes:
            self._strikes[key] = (count, since)
            self._bound(now)
            return False
        self._strikes.pop(key, None)
        self._banned_until[key] = now + self.ban_seconds
        self._bound(now)
        logger.warning(
            "banned %s for %.0f s after %d strikes (last: %s)", key, self.ban_seconds, count, reason
        )
        return True

    def _bound(self, now: float) -> None:
        for table, expired in (
            (self._strikes, lambda entry: now - entry[1] >= self.ban_seconds),
            (self._banned_until, lambda until: now >= until),
        ):
            if len(table) > self.max_entries:
                for key in [key for key, entry in table.items() if expired(entry)]:
                    del table[key]
            while len(table) > self.max_entries:
                del table[next(iter(table))]


@dataclass(frozen=True)
class ModelVersion:
    """A model version ready to serve: its safetensors bytes, their CID and the model's spec."""

    round: int
    step: int
    cid: str
    data: bytes = field(repr=False)
    tensors: codec.Spec

    @classmethod
    def encode(cls, round: int, step: int, tensors: Mapping[str, torch.Tensor]) -> ModelVersion:
        """Encode `tensors` (CPU work; safe to run in a thread for large models)."""
        data = codec.encode(tensors)
        return cls(round, step, cid_of(data), data, codec.tensor_spec(tensors))

    @property
    def size(self) -> int:
        """The body's length in bytes."""
        return len(self.data)


class Phase(StrEnum):
    """Where a server connection stands: before a valid signed request is in (anyone at all) or after."""

    REQUEST = "request"
    REPLY = "reply"


@dataclass(eq=False)
class _Connection:
    """One client connection as the server's admission control sees it."""

    task: asyncio.Task[Any]
    host: str  # the remote address, for the log
    key: str  # what limits and strikes count against (see _address_key)
    shared: bool  # from one of the server's shared addresses: no per-address limits, no strikes
    opened: float  # loop time
    phase: Phase = Phase.REQUEST
    peer: str | None = None  # the authenticated peer id, from Phase.REPLY on
    waiting_since: float | None = None  # loop time the reply began waiting for the client to take a slice


def _canonical(host: str) -> str:
    """`host` in one spelling per address: IPv4-mapped IPv6 as IPv4, IPv6 compressed, no zone."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _close(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    """End a connection: with a TCP reset if part of a reply may still be queued, since a close, even
    asyncio's abort(), would keep it in the kernel, and the socket with it, for as long as the client
    does not read; else with a plain close."""
    if not reset:
        writer.close()
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    writer.transport.abort()


def _address_key(host: str, shared: frozenset[str]) -> tuple[str, bool]:
    """What limits and strikes count against for a client at `host`, and whether it is a shared address.

    An IPv6 address counts as its /64: one host usually owns a whole /64, so counting single addresses
    would limit nobody there.
    """
    address = _canonical(host)
    if address in shared:
        return address, True
    if ":" in address:  # IPv6 (a canonical IPv4 address or host name has no colon)
        return str(ipaddress.ip_network(f"{address}/{IPV6_SITE_PREFIX}", strict=False)), False
    return address, False


class ModelServer:
    """Serves this peer's last `keep` model versions and its status to other peers, over TCP.

    `status` returns the peer's :class:`PeerStatus`, the answer to status requests (a server without
    one refuses them as "unexpected_kind"); `view`, likewise, answers an open swarm's view exchanges
    (:data:`ViewHandler`; a bad offer strikes the client's peer id too), and `link` its overlay's link
    requests (:data:`LinkHandler`; a refused claim strikes the client's peer id too). `bans` may be
    shared with the peer loop, which can strike peer ids whose models fail verification; the server then
    refuses their requests.

    **Deadlines** (all counted as :class:`Reason` strikes against the client's address):
    the first byte of the request within `idle_timeout` of connecting (5 s: "idle"), the whole request
    within `request_timeout` (10 s: "slow_request"; a request is at most `max_request_bytes`), and the
    reply taken by the client at `pace` or faster (each 80 KiB within 5 s: "slow_reader"). Progress
    is what the client takes: the transport buffers nothing, so a reply waits on the client, and a
    client that stops reading is cut one window after the kernel's buffers are full.

    **Admission.** At most `max_connections` (64) in all. Before its request is in (unauthenticated),
    one address may hold `max_pending_per_address` (4) connections; after, `max_serving_per_address`
    (8), and one peer id `max_serving_per_peer` (4); more is "crowded", a strike. When every slot is
    taken, a newcomer evicts an unauthenticated connection — from the address holding most
    connections, then the oldest ("evicted", no strike: an honest request is in within a round trip,
    so it is rarely the one evicted) — else a reply that has waited on its client for half a window,
    i.e. a client reading under twice the minimum rate ("slow_reader"). Failing both, it waits for a
    slot, up to half a window after connecting, and is refused ("busy") if none comes. At most
    `max_connections` newcomers wait; one more evicts a waiting one, chosen as above ("evicted").
    Idle or half-sent connections therefore never keep an honest request out, and clients that stop
    reading only for half a window at a time.

    **Shared addresses.** `shared_addresses` are the addresses co-located honest peers connect from
    (127.0.0.1 and ::1 in a local swarm, where banning the address would ban every peer): exactly
    those, not a range. They get no per-address limits and no strikes; everything else still applies.
    IPv6 addresses outside them count per /64.

    ``served`` counts replies by kind ("model", "not_ready", "status"), ``served_bytes`` the model bodies
    handed over in full (bytes of the safetensors blobs, not of frames); ``rejections`` counts failed
    connections by reason: a wire ProtocolError reason or a :class:`Reason`. Every rejection is
    logged: "internal" (a bug) with its traceback, the refusals of a banned address (cheap, and as
    many as it cares to send) at debug level only, since its ban was logged.
    """

    def __init__(
        self,
        identity: Identity,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        chunk: int = DEFAULT_CHUNK,
        keep: int = 4,
        max_request_bytes: int = 4096,
        status: Callable[[], PeerStatus] | None = None,
        view: ViewHandler | None = None,
        link: LinkHandler | None = None,
        bans: BanList | None = None,
        max_connections: int = 64,
        max_pending_per_address: int = 4,
        max_serving_per_address: int = 8,
        max_serving_per_peer: int = 4,
        shared_addresses: frozenset[str] = frozenset(),
        idle_timeout: float = 5.0,
        request_timeout: float = 10.0,
        pace: Pace = DEFAULT_PACE,
    ) -> None:
        limits = (
            keep,
            max_connections,
            max_pending_per_address,
            max_serving_per_address,
            max_serving_per_peer,
        )
        if not 1 <= chunk <= MAX_CHUNK or min(limits) < 1:
            raise ValueError(f"need 1 <= chunk <= {MAX_CHUNK}, and keep and every connection limit >= 1")
        if not (idle_timeout > 0 and request_timeout > 0):
            raise ValueError("idle_timeout and request_timeout must be positive")
        self.identity = identity
        self.host = host
        self.chunk = chunk
        self.keep = keep
        self.max_request_bytes = max_request_bytes
        self.status = status
        self.view = view
        self.link = link
        self.bans = bans if bans is not None else BanList()
        self.max_connections = max_connections
        self.max_pending_per_address = max_pending_per_address
        self.max_serving_per_address = max_serving_per_address
        self.max_serving_per_peer = max_serving_per_peer
        self.shared_addresses = frozenset(map(_canonical, shared_addresses))
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.pace = pace
        self.rejections: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.served_bytes = 0
        self._port = port
        self._versions: OrderedDict[tuple[int, int], ModelVersion] = OrderedDict()
        self._server: asyncio.Server | None = None
        self._reserved: socket.socket | None = None  # bound, not listening: see reserve()
        self._connections: dict[asyncio.Task[Any], _Connection] = {}  # those holding a slot
        self._waiting: dict[asyncio.Task[Any], _Connection] = {}  # newcomers waiting for a slot
        self._left = asyncio.Event()  # set when a connection leaves its slot (then replaced)

    @property
    def port(self) -> int:
        """The port served on (the one chosen by the system once started with port 0)."""
        return self._port

    @property
    def latest(self) -> ModelVersion | None:
        """The newest version published, if any."""
        return next(reversed(self._versions.values()), None)

    def publish(self, round: int, step: int, tensors: Mapping[str, torch.Tensor]) -> ModelVersion:
        """Encode `tensors` as version (round, step) and serve it; see :meth:`add`."""
        return self.add(ModelVersion.encode(round, step, tensors))

    def add(self, version: ModelVersion) -> ModelVersion:
        """Serve `version`, which must be newer than the latest; the oldest beyond `keep` are dropped."""
        key = (version.round, version.step)
        if not (0 <= version.round <= MAX_VERSION and 0 <= version.step <= MAX_VERSION):
            raise ValueError(f"version {key} out of range")
        latest = self.latest
        if latest is not None and key <= (latest.round, latest.step):
            raise ValueError(f"version {key} is not newer than the latest, {(latest.round, latest.step)}")
        self._versions[key] = version
        while len(self._versions) > self.keep:
            self._versions.popitem(last=False)
        return version

    def reserve(self) -> None:
        """Bind host:port now without listening, until :meth:`start`: a connection is refused, as by a
        peer that is down, and no other socket (an outgoing connection's ephemeral port) takes the
        port meanwhile. ListenError if it cannot."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._port))
        except OSError as err:
            sock.close()
            raise ListenError("TCP", self.host, self._port, err) from err
        self._reserved = sock
        self._port = sock.getsockname()[1]

    async def start(self) -> None:
        """Listen on host:port (port 0: a free port, then available as :attr:`port`), or on the socket
        :meth:`reserve` bound; ListenError if it cannot."""
        self._left = asyncio.Event()  # bound to the loop it is first awaited in: this one
        reserved, self._reserved = self._reserved, None
        try:
            if reserved is not None:
                self._server = await asyncio.start_server(self._serve, sock=reserved)
            else:
                self._server = await asyncio.start_server(self._serve, self.host, self._port)
        except OSError as err:  # taken, not this machine's address, ...: say where, in one line
            raise ListenError("TCP", self.host, self._port, err) from err
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening (or release the port :meth:`reserve` bound) and end the connections in
        progress."""
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
        if self._server is None:
            return
        self._server.close()
        connections = set(self._connections) | set(self._waiting)
        for task in connections:
            task.cancel()
        if connections:
            await asyncio.wait(connections, timeout=5.0)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> ModelServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if peer else "unknown"
        key, shared = _address_key(host, self.shared_addresses)
        if self.bans.is_banned(key):  # refused quietly and cheaply: the ban was logged when it began
            self.rejections[Reason.BANNED] += 1
            logger.debug("refused connection from banned address %s", host)
            _close(writer, reset=False)
            return
        task = cast(asyncio.Task[Any], asyncio.current_task())  # a connection handler runs in a task
        conn = _Connection(task, host, key, shared, asyncio.get_running_loop().time())
        try:
            await self._admit(conn)
            request = await self._read_request(reader, conn.opened)
            self._authenticate(conn, request)
            writer.transport.set_write_buffer_limits(0)  # drain() waits for the client: see the pace
            self.served[await self._reply(conn, writer, request)] += 1
        except Exception as err:  # whatever a client does, the server goes on serving the others
            self._reject(conn, err)
            _close(writer, reset=conn.phase is Phase.REPLY)
        except asyncio.CancelledError:  # stop(), or evicted (counted then): the connection just ends
            _close(writer, reset=conn.phase is Phase.REPLY)
        else:  # the reply is all in the kernel: the socket is released at once
            _close(writer, reset=False)
        finally:
            if self._connections.pop(task, None) is not None:  # a slot is free: wake those waiting for one
                self._left.set()
                self._left = asyncio.Event()

    async def _admit(self, conn: _Connection) -> None:
        """Take `conn` in. When every slot is taken, evict another for it or wait for one (at most half a
        pace window after it connected); ProtocolError if it may not come in."""
        if not conn.shared:
            slots = (c for c in self._connections.values() if c.phase is Phase.REQUEST)
            pending = sum(c.key == conn.key for c in chain(slots, self._waiting.values()))
            if pending >= self.max_pending_per_address:
                raise ProtocolError(Reason.CROWDED, f"{pending} requests from {conn.key} already pending")
        loop = asyncio.get_running_loop()
        deadline = conn.opened + self.pace.window / 2
        while len(self._connections) >= self.max_connections:
            wait = min(self._evict_for(conn), deadline - loop.time())
            if wait == -math.inf:  # evicted one: the slot is free
                break
            if wait <= 0:
                raise ProtocolError(Reason.BUSY, f"{len(self._connections)} connections, none evictable")
            if len(self._waiting) >= self.max_connections:
                victim = self._most_crowded(self._waiting.values())
                self._evict(
                    self._waiting,
                    victim,
                    ProtocolError(Reason.EVICTED, f"still waiting for a slot; for {conn.host}"),
                )
            self._waiting[conn.task] = conn
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._left.wait()
            finally:
                self._waiting.pop(conn.task, None)
        self._connections[conn.task] = conn

    def _evict_for(self, newcomer: _Connection) -> float:
        """Evict a connection for `newcomer` (see the class docstring) and return -inf; or else return
        the seconds until one may be evicted (inf: none for now)."""
        connections = self._connections.values()
        pending = [c for c in connections if c.phase is Phase.REQUEST]
        if pending:
            victim = self._most_crowded(pending)
            self._evict(
                self._connections,
                victim,
                ProtocolError(Reason.EVICTED, f"no request yet; for {newcomer.host}"),
            )
            return -math.inf
        waiting = [c for c in connections if c.waiting_since is not None]
        victim = min(waiting, key=lambda c: cast(float, c.waiting_since), default=None)
        if victim is None:
            return math.inf
        wait = cast(float, victim.waiting_since) + self.pace.window / 2 - asyncio.get_running_loop().time()
        if wait > 0:
            return wait
        why = f"reading under twice the minimum rate while the server is full; evicted for {newcomer.host}"
        self._evict(self._connections, victim, ProtocolError(Reason.SLOW_READER, why))
        return -math.inf

    def _most_crowded(self, candidates: Iterable[_Connection]) -> _Connection:
        """Of unauthenticated `candidates`, the one from the address holding most connections (a shared
        address counts as one per connection), then the oldest."""
        held = Counter(
            c.key for c in chain(self._connections.values(), self._waiting.values()) if not c.shared
        )
        return max(candidates, key=lambda c: (0 if c.shared else held[c.key], -c.opened))

    def _evict(
        self, registry: dict[asyncio.Task[Any], _Connection], victim: _Connection, error: ProtocolError
    ) -> None:
        """End `victim` (holding a slot, or waiting for one, as `registry` says) for `error`."""
        del registry[victim.task]
        self._reject(victim, error)
        victim.task.cancel()

    async def _read_request(self, reader: asyncio.StreamReader, opened: float) -> Request:
        """The request, its first byte within `idle_timeout` and all of it within `request_timeout`."""
        first = await _first_byte(reader, opened + min(self.idle_timeout, self.request_timeout), Reason.IDLE)
        receive = functools.partial(
            _receive, reader, deadline=opened + self.request_timeout, reason=Reason.SLOW_REQUEST
        )
        return cast(
            Request,
            open_message(await _read_frame(receive, self.max_request_bytes, first), kinds=("request",)),
        )

    def _authenticate(self, conn: _Connection, request: Request) -> None:
        """Move `conn` to Phase.REPLY for `request`'s signer, within the per-address and per-peer limits."""
        if self.bans.is_banned(request.sender):
            raise ProtocolError(Reason.BANNED, f"peer {request.sender} is banned")
        serving = [c for c in self._connections.values() if c.phase is Phase.REPLY]
        if not conn.shared and sum(c.key == conn.key for c in serving) >= self.max_serving_per_address:
            raise ProtocolError(
                Reason.CROWDED, f"{self.max_serving_per_address} replies to {conn.key} already"
            )
        if sum(c.peer == request.sender for c in serving) >= self.max_serving_per_peer:
            raise ProtocolError(
                Reason.CROWDED, f"{self.max_serving_per_peer} replies to peer {request.sender} already"
            )
        conn.phase, conn.peer = Phase.REPLY, request.sender

    async def _reply(self, conn: _Connection, writer: asyncio.StreamWriter, request: Request) -> str:
        """Answer `request`; returns the kind of the reply."""
        latest = self.latest
        if request.want == "status":
            if self.status is None:
                raise ProtocolError(Reason.UNEXPECTED_KIND, "this server answers no status requests")
            info = self.status().to_wire()
            await self._send(conn, writer, seal(self.identity, "status", nonce=request.nonce, info=info))
            return "status"
        if request.want == "view":
            if self.view is None:
                raise ProtocolError(Reason.UNEXPECTED_KIND, "this server answers no view exchanges")
            try:
                records = self.view(request.sender, [bytes.fromhex(record) for record in request.offer])
            except ProtocolError:
                self.bans.strike(request.sender, Reason.BAD_RECORD)  # its key signed the bad offer
                raise
            reply = seal(self.identity, "view", nonce=request.nonce, records=[r.hex() for r in records])
            await self._send(conn, writer, reply)
            return "view"
        if request.want == "link":
            if self.link is None or request.link is None:
                raise ProtocolError(Reason.UNEXPECTED_KIND, "this server answers no overlay link requests")
            offer = [bytes.fromhex(record) for record in request.offer]
            try:
                linked, degree = self.link(request.sender, request.link, offer)
            except ProtocolError as err:
                self.bans.strike(request.sender, err.reason)  # its key signed the refused claim
                raise
            reply = seal(self.identity, "link", nonce=request.nonce, linked=linked, degree=degree)
            await self._send(conn, writer, reply)
            return "link"
        version = self._versions.get((request.round, request.step))
        if version is None:
            reply = seal(
                self.identity,
                "not_ready",
                round=request.round,
                step=request.step,
                latest=None if latest is None else (latest.round, latest.step),
                nonce=request.nonce,
            )
            await self._send(conn, writer, reply)
            return "not_ready"
        header = seal(
            self.identity,
            "model",
            round=version.round,
            step=version.step,
            cid=version.cid,
            size=version.size,
            chunk=self.chunk,
            tensors=version.tensors,
            nonce=request.nonce,
        )
        await self._send(conn, writer, header)
        body = memoryview(version.data)
        for offset in range(0, version.size, self.chunk):
            await self._send(conn, writer, body[offset : offset + self.chunk])
        self.served_bytes += version.size
        return "model"

    async def _send(
        self, conn: _Connection, writer: asyncio.StreamWriter, payload: bytes | memoryview
    ) -> None:
        """One frame, in slices of the pace; the client must take each within a window ("slow_reader")."""
        loop = asyncio.get_running_loop()
        view = memoryview(payload)
        step = self.pace.slice_bytes
        writer.write(LENGTH.pack(len(view)))
        for offset in range(0, max(len(view), 1), step):
            writer.write(view[offset : offset + step])
            conn.waiting_since = loop.time()
            try:
                async with asyncio.timeout(self.pace.window):
                    await writer.drain()
            except TimeoutError:
                raise ProtocolError(
                    Reason.SLOW_READER, f"the client took under {step} bytes in {self.pace.window} s"
                ) from None
            conn.waiting_since = None

    def _reject(self, conn: _Connection, err: Exception) -> None:
        """Count, log and (unless blameless or shared) strike the failure `err` of `conn`."""
        if isinstance(err, ProtocolError):
            reason = err.reason
        elif isinstance(err, OSError):
            reason = Reason.DISCONNECTED
        else:
            reason = Reason.INTERNAL
        self.rejections[reason] += 1
        if reason == Reason.INTERNAL:
            logger.error("connection from %s failed inside the server", conn.host, exc_info=err)
        else:
            logger.warning("rejected connection from %s: %s (%s)", conn.host, reason, err)
        if reason not in BLAMELESS and not conn.shared:
            self.bans.strike(conn.key, reason)


@dataclass(frozen=True)
class Fetched:
    """A model fetched from a peer and verified: signed header, CID, names, shapes, dtypes, finiteness;
    `size` is its body's length in bytes (what moved, less the frames)."""

    sender: str
    public_key: bytes
    round: int
    step: int
    cid: str
    size: int
    tensors: dict[str, torch.Tensor] = field(repr=False)


class NotReady(Exception):
    """The peer answered (signed) that it does not hold the requested version; `latest` is its newest.

    Not a ProtocolError: the peer behaved correctly, so the caller should not strike it.
    """

    def __init__(self, sender: str, round: int, step: int, latest: tuple[int, int] | None) -> None:
        super().__init__(f"peer {sender} does not hold version {(round, step)}; its latest is {latest}")
        self.sender = sender
        self.round = round
        self.step = step
        self.latest = latest


def check_header(
    reply: ModelHeader | NotReadyReply,
    *,
    nonce: str,
    round: int,
    step: int,
    expected: codec.Expected,
    max_bytes: int,
    expect_sender: str | None = None,
) -> ModelHeader:
    """`reply` if it is the header of the transfer asked for; NotReady, or ProtocolError with a reason."""
    if expect_sender is not None and reply.sender != expect_sender:
        raise ProtocolError(Reason.WRONG_SENDER, f"reply signed by {reply.sender}, not by {expect_sender}")
    if reply.nonce != nonce:
        raise ProtocolError(Reason.REPLAY, f"reply from {reply.sender} answers another request (nonce)")
    if (reply.round, reply.step) != (round, step):
        raise ProtocolError(
            Reason.WRONG_VERSION,
            f"reply from {reply.sender} is about {(reply.round, reply.step)}, not {(round, step)}",
        )
    if isinstance(reply, NotReadyReply):
        raise NotReady(reply.sender, round, step, reply.latest)
    if reply.size > max_bytes:
        raise ProtocolError(
            Reason.OVERSIZED, f"model of {reply.size} bytes from {reply.sender}; limit {max_bytes}"
        )
    try:
        codec.check_spec(reply.tensors, expected)
    except codec.BlobError as err:
        raise ProtocolError(Reason.BAD_TENSORS, f"model from {reply.sender}: {err}") from None
    return reply


def verify_body(cid: str, data: bytes, expected: codec.Expected) -> dict[str, torch.Tensor]:
    """The tensors in `data` if it is the content `cid` and exactly the `expected` finite model."""
    check_content(cid, data)
    try:
        return codec.decode(data, expected)
    except codec.BlobError as err:
        raise ProtocolError(Reason.BAD_TENSORS, str(err)) from None


async def _first_byte(reader: asyncio.StreamReader, deadline: float, reason: Reason) -> bytes:
    """The stream's next byte by loop time `deadline`, else ProtocolError `reason`; "closed" at its end."""
    try:
        async with asyncio.timeout_at(deadline):
            first = await reader.read(1)
    except TimeoutError:
        raise ProtocolError(reason, "not a byte within the deadline") from None
    if not first:
        raise ProtocolError(Reason.CLOSED, "the stream ended before a frame")
    return first


async def _receive(reader: asyncio.StreamReader, n: int, *, deadline: float, reason: Reason) -> bytes:
    """Exactly `n` bytes by loop time `deadline`, else ProtocolError `reason`; "truncated" at the end."""
    try:
        async with asyncio.timeout_at(deadline):
            return await reader.readexactly(n)
    except TimeoutError:
        raise ProtocolError(reason, f"{n} bytes did not come in time") from None
    except asyncio.IncompleteReadError as err:
        raise ProtocolError(
            Reason.TRUNCATED, f"the stream ended {len(err.partial)} bytes short of {n}"
        ) from None


async def _read_frame(receive: Callable[[int], Awaitable[bytes]], max_bytes: int, head: bytes = b"") -> bytes:
    """A frame as :func:`ppaia.network.wire.read_frame` reads it (refused from its length alone if over
    `max_bytes`), its bytes after `head` (a start already read) taken through `receive`, which sets
    their deadlines."""
    (length,) = LENGTH.unpack(head + await receive(LENGTH.size - len(head)))
    if length > max_bytes:
        raise ProtocolError(Reason.OVERSIZED, f"a frame of {length} bytes exceeds the limit of {max_bytes}")
    return await receive(length)


class _Reply:
    """A reply stream read at a :class:`Pace`. Not a byte within a window is "timeout" (the peer may be
    hung or gone); a reply that started and then moves slower than the pace is "slow_sender"."""

    def __init__(self, reader: asyncio.StreamReader, pace: Pace) -> None:
        self.reader = reader
        self.pace = pace

    async def receive(self, n: int) -> bytes:
        """`n` bytes, each slice of the pace within a window."""
        loop = asyncio.get_running_loop()
        step = self.pace.slice_bytes
        parts = [
            await _receive(
                self.reader,
                min(step, n - offset),
                deadline=loop.time() + self.pace.window,
                reason=Reason.SLOW_SENDER,
            )
            for offset in range(0, n, step)
        ]
        return b"".join(parts)

    async def first_frame(self, max_bytes: int) -> bytes:
        """The reply's first frame (its header)."""
        deadline = asyncio.get_running_loop().time() + self.pace.window
        return await _read_frame(
            self.receive, max_bytes, await _first_byte(self.reader, deadline, Reason.TIMEOUT)
        )

    async def body(self, size: int, chunk: int) -> bytes:
        """`size` bytes of body in frames of at most `chunk` bytes."""
        parts: list[bytes] = []
        received = 0
        while received < size:
            part = await _read_frame(self.receive, min(chunk, size - received))
            if not part:
                raise ProtocolError(Reason.MALFORMED, "an empty body frame")
            parts.append(part)
            received += len(part)
        return b"".join(parts)


async def _exchange(
    host: str,
    port: int,
    request: bytes,
    timeout: float,
    pace: Pace,
    answer: Callable[[_Reply], Awaitable[T]],
) -> T:
    """Send `request` to host:port and return `answer(reply)`, all within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=STREAM_LIMIT)
            try:
                await write_frame(writer, request)
                return await answer(_Reply(reader, pace))
            finally:
                writer.close()
    except TimeoutError:  # before OSError, of which it is a subclass
        raise ProtocolError(Reason.TIMEOUT, f"{host}:{port} did not complete within {timeout} s") from None
    except OSError as err:
        raise ProtocolError(Reason.UNREACHABLE, f"{host}:{port}: {err}") from None


async def fetch_model(
    host: str,
    port: int,
    *,
    identity: Identity,
    round: int,
    step: int,
    expected: codec.Expected,
    max_bytes: int,
    timeout: float,
    expect_sender: str | None = None,
    max_header_bytes: int = MAX_REPLY_HEADER_BYTES,
    pace: Pace = DEFAULT_PACE,
) -> Fetched:
    """Fetch version (round, step) from host:port and verify it fully (see the module docstring).

    Raises :class:`NotReady` if the peer does not hold the version, and ProtocolError (reason
    "timeout", "slow_sender", "unreachable", "wrong_sender", "replay", "wrong_version", "oversized",
    "bad_tensors", "wrong_cid", "truncated", ...) for every other failure; see :class:`Reason`.
    """
    nonce = secrets.token_hex(16)
    request = seal(identity, "request", want="model", round=round, step=step, nonce=nonce)

    async def answer(incoming: _Reply) -> Fetched:
        reply = open_message(await incoming.first_frame(max_header_bytes), kinds=("model", "not_ready"))
        header = check_header(
            cast(ModelHeader | NotReadyReply, reply),
            nonce=nonce,
            round=round,
            step=step,
            expected=expected,
            max_bytes=max_bytes,
            expect_sender=expect_sender,
        )
        body = await incoming.body(header.size, header.chunk)
        tensors = await asyncio.to_thread(verify_body, header.cid, body, expected)
        return Fetched(
            header.sender, header.public_key, header.round, header.step, header.cid, header.size, tensors
        )

    return await _exchange(host, port, request, timeout, pace, answer)


async def fetch_status(
    host: str,
    port: int,
    *,
    identity: Identity,
    timeout: float,
    expect_sender: str | None = None,
    max_bytes: int = 64 << 10,
    pace: Pace = DEFAULT_PACE,
) -> PeerStatus:
    """The status of the peer at host:port, signed (by `expect_sender` when given) and valid: ProtocolError
    otherwise (``bad_status`` for a signed reply that is not a :class:`PeerStatus`)."""
    nonce = secrets.token_hex(16)
    request = seal(identity, "request", want="status", round=0, step=0, nonce=nonce)

    async def answer(incoming: _Reply) -> PeerStatus:
        reply = cast(StatusReply, open_message(await incoming.first_frame(max_bytes), kinds=("status",)))
        if expect_sender is not None and reply.sender != expect_sender:
            raise ProtocolError(
                Reason.WRONG_SENDER, f"status signed by {reply.sender}, not by {expect_sender}"
            )
        if reply.nonce != nonce:
            raise ProtocolError(Reason.REPLAY, f"status from {reply.sender} answers another request (nonce)")
        status = PeerStatus.from_wire(reply.info)
        if status.peer_id != reply.sender:  # a peer speaks for itself: it cannot pass for another
            raise ProtocolError(
                Reason.WRONG_SENDER, f"status signed by {reply.sender} claims peer id {status.peer_id}"
            )
        return status

    return await _exchange(host, port, request, timeout, pace, answer)


async def exchange_view(
    host: str,
    port: int,
    *,
    identity: Identity,
    offer: list[bytes],
    timeout: float,
    expect_sender: str | None = None,
    max_bytes: int = 64 << 10,
    pace: Pace = DEFAULT_PACE,
) -> tuple[str, list[bytes]]:
    """One view exchange with the peer at host:port: send `offer` (signed member records), return the
    answering peer's id and the records it sent back (not yet verified: see
    :mod:`ppaia.network.sampling`). ProtocolError for a reply that is not a signed ``view`` answering
    this request (by `expect_sender` when given)."""
    nonce = secrets.token_hex(16)
    request = seal(
        identity, "request", want="view", round=0, step=0, nonce=nonce, offer=[r.hex() for r in offer]
    )

    async def answer(incoming: _Reply) -> tuple[str, list[bytes]]:
        reply = cast(ViewReply, open_message(await incoming.first_frame(max_bytes), kinds=("view",)))
        if expect_sender is not None and reply.sender != expect_sender:
            raise ProtocolError(Reason.WRONG_SENDER, f"view signed by {reply.sender}, not by {expect_sender}")
        if reply.nonce != nonce:
            raise ProtocolError(Reason.REPLAY, f"view from {reply.sender} answers another request (nonce)")
        return reply.sender, [bytes.fromhex(record) for record in reply.records]

    return await _exchange(host, port, request, timeout, pace, answer)


async def request_link(
    host: str,
    port: int,
    *,
    identity: Identity,
    claim: LinkClaim,
    offer: list[bytes],
    timeout: float,
    expect_sender: str,
    max_bytes: int = 4096,
    pace: Pace = DEFAULT_PACE,
) -> LinkReply:
    """Say `claim` about this peer's overlay link to `expect_sender` at host:port (a proposal offers this
    peer's own signed record in `offer`); its answer, signed by it and answering this request:
    ProtocolError otherwise (see :mod:`ppaia.network.overlay` for what the answer may say)."""
    nonce = secrets.token_hex(16)
    request = seal(
        identity,
        "request",
        want="link",
        round=0,
        step=0,
        nonce=nonce,
        offer=[record.hex() for record in offer],
        link=claim.model_dump(),
    )

    async def answer(incoming: _Reply) -> LinkReply:
        reply = cast(LinkReply, open_message(await incoming.first_frame(max_bytes), kinds=("link",)))
        if reply.sender != expect_sender:
            raise ProtocolError(Reason.WRONG_SENDER, f"link signed by {reply.sender}, not by {expect_sender}")
        if reply.nonce != nonce:
            raise ProtocolError(Reason.REPLAY, f"link from {reply.sender} answers another request (nonce)")
        return reply

    return await _exchange(host, port, request, timeout, pace, answer)
