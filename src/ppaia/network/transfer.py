"""Model exchange over TCP: a peer serves its recent model versions; other peers fetch and verify them.

One connection carries one exchange: the client sends a signed ``request`` frame, the server answers
with a signed reply (``model`` header and body frames, ``not_ready`` or ``status``) and closes. See
:mod:`ppaia.network.wire` for the frames and messages.

:func:`fetch_model` trusts nothing it has not checked: the header must be signed (by `expect_sender`
when given), echo the request's nonce, name the requested version, announce at most `max_bytes` and
describe exactly the expected tensors — all before a byte of the body is read; the body must hash to
the header's CID and decode to finite tensors of the expected names, shapes and dtypes. It returns the
whole verified model or raises; it never returns part of one.

:class:`ModelServer` survives its clients: every connection's failure is caught, counted by reason in
``rejections``, logged, and held against the remote address in a :class:`BanList`; connections are
bounded in number and in time.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import torch

from ppaia import codec
from ppaia.network.content import check_content, cid_of
from ppaia.network.errors import ProtocolError
from ppaia.network.identity import Identity
from ppaia.network.wire import (
    MAX_CHUNK,
    MAX_VERSION,
    ModelHeader,
    NotReadyReply,
    Request,
    StatusReply,
    open_message,
    read_frame,
    seal,
    write_frame,
)

__all__ = [
    "BanList",
    "Fetched",
    "ModelServer",
    "ModelVersion",
    "NotReady",
    "check_header",
    "fetch_model",
    "fetch_status",
    "verify_body",
]

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 1 << 20
MAX_REPLY_HEADER_BYTES = 1 << 20  # a header's spec grows with the number of tensors
STREAM_LIMIT = 4 << 20  # client read buffer: large enough that a 1 MiB body frame arrives without stalls
# Rejections that are nobody's fault (or not the remote's): no strike against the remote address.
BLAMELESS = frozenset({"busy", "banned", "closed", "disconnected", "internal"})

T = TypeVar("T")


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


class ModelServer:
    """Serves this peer's last `keep` model versions and its status to other peers, over TCP.

    `status` returns the JSON object answered to status requests; the server adds ``latest``:
    {round, step, cid, size} of its newest version, or None. `bans` may be shared with the peer loop,
    which can strike peer ids whose models fail verification; the server then refuses their requests.
    A client whose request cannot be authenticated is struck by its address, except for the
    `shared_addresses` (e.g. loopback in a local swarm, where banning the address would ban every peer).

    ``served`` counts replies by kind ("model", "not_ready", "status"); ``rejections`` counts failed
    connections by reason: a :class:`ProtocolError` reason, or "busy" (over `max_connections`),
    "banned", "closed" (left without a request), "timeout" (request not in within `request_timeout`
    or reply not out within `send_timeout`), "disconnected" (the client went away) or "internal" (a
    bug, logged with its traceback). All but busy, banned, closed, disconnected and internal are
    strikes against the remote address.
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
        status: Callable[[], Mapping[str, Any]] | None = None,
        bans: BanList | None = None,
        max_connections: int = 64,
        shared_addresses: frozenset[str] = frozenset(),
        request_timeout: float = 10.0,
        send_timeout: float = 300.0,
    ) -> None:
        if not 1 <= chunk <= MAX_CHUNK or keep < 1 or max_connections < 1:
            raise ValueError(f"need 1 <= chunk <= {MAX_CHUNK}, keep >= 1 and max_connections >= 1")
        self.identity = identity
        self.host = host
        self.chunk = chunk
        self.keep = keep
        self.max_request_bytes = max_request_bytes
        self.status = status
        self.bans = bans if bans is not None else BanList()
        self.max_connections = max_connections
        self.shared_addresses = shared_addresses
        self.request_timeout = request_timeout
        self.send_timeout = send_timeout
        self.rejections: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self._port = port
        self._versions: OrderedDict[tuple[int, int], ModelVersion] = OrderedDict()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

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

    async def start(self) -> None:
        """Listen on host:port (port 0: a free port, then available as :attr:`port`)."""
        self._server = await asyncio.start_server(self._serve, self.host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and end the connections in progress."""
        if self._server is None:
            return
        self._server.close()
        connections = set(self._connections)
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
        address = str(peer[0]) if peer else "unknown"
        task = cast(asyncio.Task[Any], asyncio.current_task())  # a connection handler runs in a task
        self._connections.add(task)
        try:
            if len(self._connections) > self.max_connections:
                raise ProtocolError("busy", f"already {self.max_connections} connections")
            if self.bans.is_banned(address):
                raise ProtocolError("banned", f"address {address} is banned")
            async with asyncio.timeout(self.request_timeout):
                data = await read_frame(reader, self.max_request_bytes)
            request = cast(Request, open_message(data, kinds=("request",)))
            if self.bans.is_banned(request.sender):
                raise ProtocolError("banned", f"peer {request.sender} is banned")
            async with asyncio.timeout(self.send_timeout):
                self.served[await self._reply(writer, request)] += 1
        except Exception as err:  # whatever a client does, the server goes on serving the others
            self._reject(address, err)
        except asyncio.CancelledError:  # stop(): the connection ends with the server; nothing to report
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, request: Request) -> str:
        """Answer `request`; returns the kind of the reply."""
        latest = self.latest
        if request.want == "status":
            info = dict(self.status()) if self.status is not None else {}
            info["latest"] = (
                None
                if latest is None
                else {"round": latest.round, "step": latest.step, "cid": latest.cid, "size": latest.size}
            )
            await write_frame(writer, seal(self.identity, "status", nonce=request.nonce, info=info))
            return "status"
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
            await write_frame(writer, reply)
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
        await write_frame(writer, header)
        body = memoryview(version.data)
        for offset in range(0, version.size, self.chunk):
            await write_frame(writer, body[offset : offset + self.chunk])
        return "model"

    def _reject(self, address: str, err: Exception) -> None:
        if isinstance(err, ProtocolError):
            reason = err.reason
        elif isinstance(err, TimeoutError):  # before OSError, of which it is a subclass
            reason = "timeout"
        elif isinstance(err, OSError):
            reason = "disconnected"
        else:
            reason = "internal"
        self.rejections[reason] += 1
        if reason == "internal":
            logger.error("connection from %s failed inside the server", address, exc_info=err)
        else:
            logger.warning("rejected connection from %s: %s (%s)", address, reason, err)
        if reason not in BLAMELESS and address not in self.shared_addresses:
            self.bans.strike(address, reason)


@dataclass(frozen=True)
class Fetched:
    """A model fetched from a peer and verified: signed header, CID, names, shapes, dtypes, finiteness."""

    sender: str
    public_key: bytes
    round: int
    step: int
    cid: str
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
        raise ProtocolError("wrong_sender", f"reply signed by {reply.sender}, not by {expect_sender}")
    if reply.nonce != nonce:
        raise ProtocolError("replay", f"reply from {reply.sender} answers another request (nonce)")
    if (reply.round, reply.step) != (round, step):
        raise ProtocolError(
            "wrong_version",
            f"reply from {reply.sender} is about {(reply.round, reply.step)}, not {(round, step)}",
        )
    if isinstance(reply, NotReadyReply):
        raise NotReady(reply.sender, round, step, reply.latest)
    if reply.size > max_bytes:
        raise ProtocolError(
            "oversized", f"model of {reply.size} bytes from {reply.sender}; limit {max_bytes}"
        )
    try:
        codec.check_spec(reply.tensors, expected)
    except codec.BlobError as err:
        raise ProtocolError("bad_tensors", f"model from {reply.sender}: {err}") from None
    return reply


def verify_body(cid: str, data: bytes, expected: codec.Expected) -> dict[str, torch.Tensor]:
    """The tensors in `data` if it is the content `cid` and exactly the `expected` finite model."""
    check_content(cid, data)
    try:
        return codec.decode(data, expected)
    except codec.BlobError as err:
        raise ProtocolError("bad_tensors", str(err)) from None


async def _read_body(reader: asyncio.StreamReader, size: int, chunk: int) -> bytes:
    parts: list[bytes] = []
    received = 0
    while received < size:
        part = await read_frame(reader, min(chunk, size - received))
        if not part:
            raise ProtocolError("malformed", "an empty body frame")
        parts.append(part)
        received += len(part)
    return b"".join(parts)


async def _exchange(
    host: str,
    port: int,
    request: bytes,
    timeout: float,
    answer: Callable[[asyncio.StreamReader], Awaitable[T]],
) -> T:
    """Send `request` to host:port and return `answer(reader)`, all within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=STREAM_LIMIT)
            try:
                await write_frame(writer, request)
                return await answer(reader)
            finally:
                writer.close()
    except TimeoutError:  # before OSError, of which it is a subclass
        raise ProtocolError("timeout", f"{host}:{port} did not complete within {timeout} s") from None
    except OSError as err:
        raise ProtocolError("unreachable", f"{host}:{port}: {err}") from None


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
) -> Fetched:
    """Fetch version (round, step) from host:port and verify it fully (see the module docstring).

    Raises :class:`NotReady` if the peer does not hold the version, and ProtocolError (reason
    "timeout", "unreachable", "wrong_sender", "replay", "wrong_version", "oversized", "bad_tensors",
    "wrong_cid", "truncated", ...) for every other failure.
    """
    nonce = secrets.token_hex(16)
    request = seal(identity, "request", want="model", round=round, step=step, nonce=nonce)

    async def answer(reader: asyncio.StreamReader) -> Fetched:
        reply = open_message(await read_frame(reader, max_header_bytes), kinds=("model", "not_ready"))
        header = check_header(
            cast(ModelHeader | NotReadyReply, reply),
            nonce=nonce,
            round=round,
            step=step,
            expected=expected,
            max_bytes=max_bytes,
            expect_sender=expect_sender,
        )
        body = await _read_body(reader, header.size, header.chunk)
        tensors = await asyncio.to_thread(verify_body, header.cid, body, expected)
        return Fetched(header.sender, header.public_key, header.round, header.step, header.cid, tensors)

    return await _exchange(host, port, request, timeout, answer)


async def fetch_status(
    host: str,
    port: int,
    *,
    identity: Identity,
    timeout: float,
    expect_sender: str | None = None,
    max_bytes: int = 64 << 10,
) -> dict[str, Any]:
    """The status object of the peer at host:port (with ``latest``; see :class:`ModelServer`)."""
    nonce = secrets.token_hex(16)
    request = seal(identity, "request", want="status", round=0, step=0, nonce=nonce)

    async def answer(reader: asyncio.StreamReader) -> dict[str, Any]:
        reply = cast(StatusReply, open_message(await read_frame(reader, max_bytes), kinds=("status",)))
        if expect_sender is not None and reply.sender != expect_sender:
            raise ProtocolError("wrong_sender", f"status signed by {reply.sender}, not by {expect_sender}")
        if reply.nonce != nonce:
            raise ProtocolError("replay", f"status from {reply.sender} answers another request (nonce)")
        return reply.info

    return await _exchange(host, port, request, timeout, answer)
