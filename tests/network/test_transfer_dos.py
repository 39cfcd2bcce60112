"""Denial of service against model transfer, on real sockets: floods of hostile connections from other
loopback addresses (127.0.x.y, bound as source addresses, in a process of their own: flood.py) while an
honest peer on 127.0.0.1 keeps fetching; and the client's side, a server that drips its reply."""

import asyncio
import contextlib
import json
import os
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ppaia import codec
from ppaia.network.content import cid_of
from ppaia.network.errors import ProtocolError
from ppaia.network.identity import Identity
from ppaia.network.transfer import BanList, ModelServer, Pace, Reason, _address_key, fetch_model
from ppaia.network.wire import Request, open_message, read_frame, seal

HOST = "127.0.0.1"
FLOOD = Path(__file__).with_name("flood.py")
SERVER = Identity.generate()
HONEST = Identity.generate()
# 8 MB: far more than the kernel buffers a client that never reads, so the server really waits on it
MODEL = {"w": torch.randn(2_000_000, generator=torch.Generator().manual_seed(0))}
EXPECTED = codec.expected_of(MODEL)
# Deadlines short enough for a test; the honest peer's address is shared, as in a local swarm.
QUICK = {
    "idle_timeout": 0.3,
    "request_timeout": 0.6,
    "pace": Pace(min_rate=64 << 10, window=0.5),
    "shared_addresses": frozenset({HOST}),
}
RAMP = 0.4  # seconds the flood runs before the honest peer starts fetching
HONEST_SECONDS = 1.2
MIN_FETCHES = 5
MAX_FETCHES = 100


def run(scenario, limit: float = 30.0):
    async def bounded():
        async with asyncio.timeout(limit):
            return await scenario

    return asyncio.run(bounded())


def request_frame(identity: Identity) -> bytes:
    """A valid signed request for MODEL's version (1, 0), length prefix included."""
    request = seal(identity, "request", want="model", round=1, step=0, nonce="ab" * 16)
    return struct.pack(">I", len(request)) + request


async def fetch(port: int, **options) -> None:
    arguments = {
        "identity": HONEST,
        "round": 1,
        "step": 0,
        "expected": EXPECTED,
        "max_bytes": 1 << 30,
        "timeout": 3.0,
    }
    await fetch_model(HOST, port, **(arguments | options))


TURNED_AWAY = frozenset({Reason.UNREACHABLE, Reason.CLOSED})  # what a client sees of "busy" or "evicted"


async def honest_fetch(port: int) -> tuple[str, int]:
    """One model fetched as a peer fetches it: ("ok" or the reason of its last attempt, attempts). A
    connection the full server turned away (it closes it) is tried again, within the fetch's 3 s."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 3.0
    attempts = 0
    while True:
        attempts += 1
        try:
            await fetch(port, timeout=max(end - loop.time(), 0.01))
            return "ok", attempts
        except ProtocolError as err:
            if err.reason not in TURNED_AWAY or loop.time() + 0.05 >= end:
                return str(err.reason), attempts
        await asyncio.sleep(0.05)


async def honest_fetches(port: int) -> list[tuple[str, int]]:
    """Fetch again and again, for HONEST_SECONDS and at least MIN_FETCHES times: each fetch's outcome
    ("ok" or a reason) and its attempts."""
    loop = asyncio.get_running_loop()
    end = loop.time() + HONEST_SECONDS
    outcomes = []
    for _ in range(MAX_FETCHES):
        if loop.time() >= end and len(outcomes) >= MIN_FETCHES:
            break
        outcomes.append(await honest_fetch(port))
        await asyncio.sleep(0.02)
    return outcomes


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass(frozen=True)
class Flood:
    attack: str  # a name in flood.ATTACKS
    sources: int  # source addresses
    per_source: int  # connections each source keeps trying to hold
    named: frozenset[str]  # rejection reasons that must each be counted
    bans: bool = True  # False: strikes are counted but never ban, so limits and deadlines alone must hold


FLOODS = {
    "hundreds of idle connections from one address": Flood(
        "idle", 1, 300, frozenset({Reason.CROWDED, Reason.BANNED})
    ),
    "3-byte length prefixes, 8 addresses x 64": Flood(
        "prefix", 8, 64, frozenset({Reason.CROWDED, Reason.BANNED})
    ),
    "valid requests never read, 64 from one address": Flood(
        "never_read", 1, 64, frozenset({Reason.CROWDED, Reason.BANNED})
    ),
    "idle connections, 16 addresses x 4 (within the limits)": Flood(
        "idle", 16, 4, frozenset({Reason.EVICTED, Reason.IDLE}), bans=False
    ),
    "half requests, 16 addresses x 4": Flood(
        "half_frame", 16, 4, frozenset({Reason.EVICTED, Reason.SLOW_REQUEST}), bans=False
    ),
    "slowloris requests, 16 addresses x 4": Flood(
        "slowloris", 16, 4, frozenset({Reason.EVICTED, Reason.SLOW_REQUEST}), bans=False
    ),
    "valid requests never read, 8 addresses x 8": Flood(
        "never_read", 8, 8, frozenset({Reason.SLOW_READER}), bans=False
    ),
    "valid requests never read, 64 addresses x 1": Flood(
        "never_read", 64, 1, frozenset({Reason.SLOW_READER}), bans=False
    ),
    "replies read 320 bytes a second, 8 addresses x 8": Flood(
        "slow_read", 8, 8, frozenset({Reason.SLOW_READER}), bans=False
    ),
}


@pytest.mark.parametrize("name", FLOODS)
def test_honest_fetches_get_through_a_flood(name: str) -> None:
    flood = FLOODS[name]
    index = list(FLOODS).index(name)  # own source addresses per case: no leftovers from another case
    addresses = [f"127.0.{index + 1}.{i}" for i in range(2, 2 + flood.sources)]
    frames = [request_frame(Identity.generate()).hex() for _ in range(16)]  # attacker keys are free
    bans = BanList() if flood.bans else BanList(max_strikes=10**9)
    baseline = open_fds()

    async def scenario():
        async with ModelServer(SERVER, bans=bans, **QUICK) as server:
            server.publish(1, 0, MODEL)
            order = {
                "port": server.port,
                "attack": flood.attack,
                "sources": addresses,
                "per_source": flood.per_source,
                "seconds": 20,  # at most: it stops when its stdin closes
                "frames": frames,
            }
            attacker = await asyncio.create_subprocess_exec(
                sys.executable, FLOOD, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
            )
            assert attacker.stdin is not None
            attacker.stdin.write(json.dumps(order).encode() + b"\n")
            await asyncio.sleep(RAMP)
            outcomes = await honest_fetches(server.port)
            attacker.stdin.close()  # the flood stops
            counts = json.loads((await attacker.communicate())[0])
            await asyncio.sleep(0.2)
            return outcomes, counts, server.rejections.copy(), len(server._connections)

    outcomes, counts, rejections, left = run(scenario())
    ok = sum(outcome == "ok" for outcome, _ in outcomes)
    summary = f"{Counter(o for o, _ in outcomes)} in {outcomes}; flood {counts}; server {rejections}"
    assert counts["connections"] >= flood.sources * flood.per_source, summary  # the flood did connect
    assert ok >= 0.9 * len(outcomes), summary  # and each fetch got its model within its 3 s
    attempts = sum(tries for _, tries in outcomes)
    assert attempts <= 2 * len(outcomes), summary  # turned away now and then, not as a rule
    assert all(rejections[reason] > 0 for reason in flood.named), summary
    struck = set(bans._strikes) | set(bans.banned())
    assert struck and struck <= set(addresses), summary  # the attackers, never the honest peer
    assert bool(bans.banned()) == flood.bans and not left, summary
    assert open_fds() <= baseline + 8  # cut connections leave no socket behind


def never_reader(port: int, source: str = "127.0.0.2", identity: Identity | None = None) -> socket.socket:
    """A connection that sends a valid request for MODEL and never reads (a tiny receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((source, 0))
    sock.connect((HOST, port))
    sock.sendall(request_frame(identity or Identity.generate()))
    return sock


def ended(sock: socket.socket) -> bool:
    """Whether the server has ended the connection (TCP state no longer ESTABLISHED)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != 1


async def until(condition, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_a_full_server_makes_newcomers_wait_for_a_stalled_reply_then_evicts_it() -> None:
    """One slot. While its reply progresses, a newcomer waits half a window, then is "busy". Once the
    client stops reading, a newcomer evicts it after half a window ("slow_reader"), taking the place of
    another newcomer already waiting ("evicted": one may wait). With nobody waiting for its slot, a
    client that stops reading is cut after a whole window."""
    # slices of 128 KiB; the steady reader below takes one in 0.2 s, so only an event-loop stall of
    # 0.8 s (half a window, less its time) could make it look slow
    pace = Pace(min_rate=64 << 10, window=2.0)

    async def scenario():
        async with ModelServer(
            SERVER, max_connections=1, pace=pace, shared_addresses=frozenset({HOST})
        ) as server:
            server.publish(1, 0, MODEL)
            reading = asyncio.Event()
            reading.set()
            reader, writer = await asyncio.open_connection(HOST, server.port, local_addr=("127.0.0.2", 0))
            writer.write(request_frame(Identity.generate()))

            async def read_steadily() -> None:  # 640 KiB/s: 5 times the rate a slice needs
                while True:
                    await reading.wait()
                    await reader.read(64 << 10)
                    await asyncio.sleep(0.1)

            steady = asyncio.create_task(read_steadily())
            await until(lambda: any(c.peer for c in server._connections.values()))
            tick = time.monotonic()
            with pytest.raises(ProtocolError) as caught:
                await fetch(server.port)
            assert caught.value.reason in {"closed", "unreachable"} and server.rejections == {"busy": 1}
            assert time.monotonic() - tick >= pace.window / 2  # it waited for a slot first

            reading.clear()  # the client stops reading: its reply stalls
            await asyncio.sleep(0.3)  # the kernel's buffers are full
            waiter = never_reader(server.port, "127.0.0.3")
            await until(lambda: len(server._waiting) == 1)
            await fetch(server.port)  # takes the waiter's place, then the stalled reply's slot
            assert server.rejections == {"busy": 1, "evicted": 1, "slow_reader": 1}
            assert server.served == {"model": 1} and ended(waiter)
            steady.cancel()
            writer.close()

            alone = never_reader(server.port, "127.0.0.4")
            tick = time.monotonic()
            await until(lambda: ended(alone))
            assert time.monotonic() - tick >= pace.window and server.rejections["slow_reader"] == 2
            for sock in (waiter, alone):
                sock.close()
            return server.bans

    bans = run(scenario())
    assert not bans.banned()  # one strike each


def test_eviction_takes_unauthenticated_connections_from_the_most_crowded_address_first() -> None:
    async def scenario():
        async with ModelServer(SERVER, max_connections=4, idle_timeout=30, request_timeout=30) as server:
            server.publish(1, 0, {"w": torch.zeros(4)})
            crowd = []
            for source in ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.2"]:
                crowd.append(socket.create_connection((HOST, server.port), source_address=(source, 0)))
                await until(lambda: len(server._connections) == len(crowd))
            fetched = await fetch_model(
                HOST,
                server.port,
                identity=HONEST,
                round=1,
                step=0,
                expected=codec.expected_of({"w": torch.zeros(4)}),
                max_bytes=1 << 20,
                timeout=3.0,
            )
            await until(lambda: ended(crowd[0]))
            assert fetched.round == 1 and server.rejections == {"evicted": 1}
            assert [ended(sock) for sock in crowd] == [True, False, False, False]  # the oldest of the 3
            for sock in crowd:
                sock.close()

    run(scenario())


def test_per_address_and_per_peer_limits_on_authenticated_replies() -> None:
    """Replies in progress: at most 2 per address (then "crowded", a strike) and 1 per peer id, also
    from a shared address (never struck)."""

    async def scenario():
        async with ModelServer(
            SERVER,
            max_serving_per_address=2,
            max_serving_per_peer=1,
            pace=Pace(min_rate=64 << 10, window=5.0),
            shared_addresses=frozenset({HOST}),
        ) as server:
            server.publish(1, 0, MODEL)
            held = [never_reader(server.port, "127.0.0.2") for _ in range(2)]
            await until(lambda: sum(c.peer is not None for c in server._connections.values()) == 2)
            third = never_reader(server.port, "127.0.0.2")
            await until(lambda: ended(third))
            assert server.rejections == {"crowded": 1}

            same_key = Identity.generate()
            held.append(never_reader(server.port, HOST, same_key))
            await until(lambda: sum(c.peer is not None for c in server._connections.values()) == 3)
            twin = never_reader(server.port, HOST, same_key)
            await until(lambda: ended(twin))
            assert server.rejections == {"crowded": 2}
            for sock in [*held, third, twin]:
                sock.close()
            return server.bans

    bans = run(scenario())
    assert bans._strikes.get("127.0.0.2", (0, 0))[0] == 1 and HOST not in bans._strikes


def test_a_client_reading_above_the_minimum_rate_is_served_whole() -> None:
    """A slow but honest reader (about 5x the minimum rate, in bursts) is never cut."""
    model = {"w": torch.randn(256_000, generator=torch.Generator().manual_seed(1))}  # 1 MB

    async def scenario():
        pace = Pace(min_rate=256 << 10, window=0.5)
        async with ModelServer(SERVER, pace=pace, bans=BanList(max_strikes=1)) as server:
            version = server.publish(1, 0, model)
            reader, writer = await asyncio.open_connection(HOST, server.port, local_addr=("127.0.0.2", 0))
            writer.write(request_frame(HONEST))
            received = b""
            while not reader.at_eof():
                received += await reader.read(128 << 10)
                await asyncio.sleep(0.1)
            writer.close()
            assert server.served == {"model": 1} and not server.rejections
            return received, version

    received, version = run(scenario())
    assert len(received) > version.size and received.endswith(version.data[-1000:])


def test_shared_addresses_are_exactly_the_ones_listed() -> None:
    """127.0.0.1 is shared (a local swarm); 127.0.0.2 is not, although loopback too: it is struck and
    banned. Mapped and IPv6 spellings count as one address, an IPv6 host as its /64."""
    shared = frozenset({"127.0.0.1", "::1"})
    assert _address_key("127.0.0.1", shared) == ("127.0.0.1", True)
    assert _address_key("::ffff:127.0.0.1", shared) == ("127.0.0.1", True)
    assert _address_key("0:0::1", shared) == ("::1", True)
    assert _address_key("127.0.0.2", shared) == ("127.0.0.2", False)
    assert _address_key("::ffff:127.0.0.2", shared) == ("127.0.0.2", False)
    assert _address_key("2001:db8::1", shared) == _address_key("2001:db8::ffff:2", shared)
    assert _address_key("2001:db8::1", shared) == ("2001:db8::/64", False)
    assert _address_key("2001:db8:0:1::1", shared)[0] != _address_key("2001:db8::1", shared)[0]
    assert ModelServer(SERVER, shared_addresses=frozenset({"::FFFF:127.0.0.1"})).shared_addresses == {
        "127.0.0.1"
    }

    async def junk(port: int, source: str) -> None:
        reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
        writer.write(b"\x00\x00\x00\x04junk")
        with contextlib.suppress(ConnectionError):  # refused with a reset
            await reader.read()
        writer.close()

    async def scenario():
        bans = BanList(max_strikes=3)
        async with ModelServer(SERVER, bans=bans, shared_addresses=shared) as server:
            for _ in range(3):
                await junk(server.port, "127.0.0.1")
                await junk(server.port, "127.0.0.2")
            return bans.banned(), server.rejections

    banned, rejections = run(scenario())
    assert banned == ["127.0.0.2"] and rejections == {"malformed": 6}


# ---- the client's side: a server that drips its reply


async def drip_server(script) -> tuple[asyncio.Server, int]:
    """A server that answers each request by `script(request, writer)`, then holds the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = open_message(await read_frame(reader, 4096), kinds=("request",))
            assert isinstance(request, Request)
            await script(request, writer)
            await asyncio.sleep(30)
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    return server, server.sockets[0].getsockname()[1]


SMALL = {"w": torch.randn(50_000, generator=torch.Generator().manual_seed(2))}  # 200 KB
SMALL_DATA = codec.encode(SMALL)


def reply_bytes(request: Request, chunk: int = 1 << 16) -> tuple[bytes, int]:
    """The whole honest reply to `request` for SMALL (header frame, then body frames of `chunk` bytes),
    and the length of its header frame."""
    header = seal(
        SERVER,
        "model",
        round=request.round,
        step=request.step,
        cid=cid_of(SMALL_DATA),
        size=len(SMALL_DATA),
        chunk=chunk,
        tensors=codec.tensor_spec(SMALL),
        nonce=request.nonce,
    )
    frames = [header] + [SMALL_DATA[o : o + chunk] for o in range(0, len(SMALL_DATA), chunk)]
    return b"".join(struct.pack(">I", len(frame)) + frame for frame in frames), 4 + len(header)


CLIENT_PACE = Pace(min_rate=64 << 10, window=0.3)  # slices of about 19 KB within 0.3 s

# Where the drip starts (from the reply's length and its header frame's) and its rate in bytes/s.
DRIPS = {
    "from the first byte on": (lambda size, header: 1, 20),
    "from the middle of the header": (lambda size, header: header // 2, 2000),
    "from a body frame's length prefix": (lambda size, header: header + 2, 2000),
    "half the reply at once, then a trickle": (lambda size, header: size // 2, 8000),
    "half the reply, then nothing": (lambda size, header: size // 2, 0),
}


@pytest.mark.parametrize("name", DRIPS)
def test_a_server_that_drips_its_reply_is_slow_sender_not_a_timeout(name: str) -> None:
    """However the drip is placed, and however fast the reply began (no credit for a fast start)."""
    start, rate = DRIPS[name]

    async def drip(request: Request, writer: asyncio.StreamWriter) -> None:
        data, header = reply_bytes(request)
        cut = start(len(data), header)
        writer.write(data[:cut])
        piece = max(1, rate // 20)
        for offset in range(cut, len(data), piece) if rate else ():
            writer.write(data[offset : offset + piece])
            await writer.drain()
            await asyncio.sleep(0.05)

    async def scenario():
        server, port = await drip_server(drip)
        try:
            tick = time.monotonic()
            with pytest.raises(ProtocolError) as caught:
                await fetch(port, expected=codec.expected_of(SMALL), timeout=10.0, pace=CLIENT_PACE)
            return caught.value.reason, time.monotonic() - tick
        finally:
            server.close()

    reason, took = run(scenario())
    assert reason == "slow_sender" and took < 5.0  # well before the caller's own 10 s deadline


def test_a_silent_server_is_a_timeout_and_a_slow_honest_one_is_not_cut() -> None:
    async def silent(request: Request, writer: asyncio.StreamWriter) -> None:
        return None

    async def steady(request: Request, writer: asyncio.StreamWriter) -> None:  # ~4x the minimum rate
        data, _ = reply_bytes(request, chunk=1 << 14)
        for offset in range(0, len(data), 16 << 10):
            writer.write(data[offset : offset + (16 << 10)])
            await writer.drain()
            await asyncio.sleep(0.06)

    async def scenario():
        outcomes = []
        for script in (silent, steady):
            server, port = await drip_server(script)
            try:
                await fetch(port, expected=codec.expected_of(SMALL), timeout=10.0, pace=CLIENT_PACE)
                outcomes.append("ok")
            except ProtocolError as err:
                outcomes.append(err.reason)
            finally:
                server.close()
        return outcomes

    assert run(scenario()) == ["timeout", "ok"]
