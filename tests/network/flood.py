"""Hostile TCP clients in a process of their own, for the denial-of-service tests (test helper).

Standard library only, so it starts in a blink and shares neither the interpreter lock nor the event loop
of the server under attack. Run as ``python flood.py`` with one line of JSON on stdin:

- ``port``: the server's port on 127.0.0.1;
- ``attack``: a name in :data:`ATTACKS`;
- ``sources``: the IPv4 addresses to connect from (127.0.0.2 and up are loopback too on Linux);
- ``per_source``: connections each source keeps trying to hold;
- ``seconds``: how long the flood lasts at most; it ends earlier when stdin closes;
- ``frames``: hex request frames (length prefix included) for the attacks that send one, used in turn.

Each connection slot reconnects as soon as the server has ended its connection. On exit it prints a JSON
object: connections opened and connection attempts that failed.
"""

import asyncio
import contextlib
import itertools
import json
import socket
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

ESTABLISHED = 1  # tcpi_state in Linux's TCP_INFO
POLL = 0.05  # seconds between checks of a held connection
RECEIVE_BUFFER = 4096  # a small window: a client that does not read stops the server's sending soon


def established(sock: socket.socket) -> bool:
    """Whether the server has not ended the connection yet (no FIN or RST received)."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == ESTABLISHED
    except OSError:
        return False


async def hold(sock: socket.socket, until: float) -> None:
    """Keep the connection, saying and reading nothing, until the server ends it or the flood ends."""
    loop = asyncio.get_running_loop()
    while loop.time() < until and established(sock):
        await asyncio.sleep(POLL)


async def idle(sock: socket.socket, frame: bytes, until: float) -> None:
    await hold(sock, until)


async def prefix(sock: socket.socket, frame: bytes, until: float) -> None:
    """Three bytes of a length prefix, then nothing."""
    sock.send(frame[:3])
    await hold(sock, until)


async def half_frame(sock: socket.socket, frame: bytes, until: float) -> None:
    """Half of a valid request, then nothing."""
    sock.send(frame[: len(frame) // 2])
    await hold(sock, until)


async def slowloris(sock: socket.socket, frame: bytes, until: float) -> None:
    """A valid request, ten bytes a second."""
    loop = asyncio.get_running_loop()
    for offset in range(len(frame)):
        if loop.time() >= until or not established(sock):
            return
        sock.send(frame[offset : offset + 1])
        await asyncio.sleep(0.1)
    await hold(sock, until)


async def never_read(sock: socket.socket, frame: bytes, until: float) -> None:
    """A valid request; the reply is never read."""
    sock.send(frame)
    await hold(sock, until)


async def slow_read(sock: socket.socket, frame: bytes, until: float) -> None:
    """A valid request; the reply is read 32 bytes at a time, ten times a second."""
    loop = asyncio.get_running_loop()
    sock.send(frame)
    while loop.time() < until and established(sock):
        try:
            if not sock.recv(32):
                return
        except BlockingIOError:
            pass
        await asyncio.sleep(0.1)


Attack = Callable[[socket.socket, bytes, float], Awaitable[None]]
ATTACKS: dict[str, Attack] = {
    attack.__name__: attack for attack in (idle, prefix, half_frame, slowloris, never_read, slow_read)
}


async def slot(
    port: int, source: str, attack: Attack, frames: Iterator[bytes], until: float, counts: Counter
) -> None:
    """One connection at a time from `source`, a new one whenever the last has ended."""
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        sock = socket.socket()
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        try:
            sock.bind((source, 0))
            async with asyncio.timeout(1.0):
                await loop.sock_connect(sock, ("127.0.0.1", port))
            counts["connections"] += 1
            await attack(sock, next(frames), until)
        except (OSError, TimeoutError):
            counts["failed"] += 1
        finally:
            sock.close()
        await asyncio.sleep(0.02)


async def flood() -> Counter:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    order = json.loads(await stdin.readline())
    closed = asyncio.create_task(stdin.read())  # the caller's "stop": stdin ends
    until = loop.time() + order["seconds"]
    frames = itertools.cycle([bytes.fromhex(frame) for frame in order["frames"]] or [b"\x00\x00\x01\x00"])
    counts: Counter = Counter()
    attack = ATTACKS[order["attack"]]
    slots = asyncio.gather(
        *(
            slot(order["port"], source, attack, frames, until, counts)
            for source in order["sources"]
            for _ in range(order["per_source"])
        )
    )
    await asyncio.wait([slots, closed], return_when=asyncio.FIRST_COMPLETED)
    slots.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await slots
    return counts


if __name__ == "__main__":
    print(json.dumps(asyncio.run(flood())))
