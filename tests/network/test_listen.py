"""Where a peer cannot listen, or cannot join, it says so in one error naming the place: every kind of
address a server cannot bind (taken, not this machine's, not resolvable), for TCP (models) and UDP (the
DHT); and bootstrap seeds that never answer, within the time given."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from ppaia.network.dht import BootstrapError, PeerDHT
from ppaia.network.errors import ListenError, NetworkError
from ppaia.network.identity import Identity
from ppaia.network.swarm import free_port
from ppaia.network.transfer import ModelServer


async def start(protocol: str, host: str, port: int) -> None:
    """Start (and stop) what a peer listens with: its model server (TCP) or its DHT node (UDP)."""
    if protocol == "TCP":
        server = ModelServer(Identity.generate(), host, port)
        await server.start()
        await server.stop()
    else:
        dht = PeerDHT(Identity.generate())
        await dht.start(host, port)
        await dht.stop()


@pytest.mark.parametrize("protocol", ["TCP", "UDP"])
@pytest.mark.parametrize(
    ("place", "reason"),
    [
        ("taken", "address already in use"),
        ("192.0.2.1", "cannot assign requested address"),  # TEST-NET-1: never a local address
        ("no-such-host.invalid", ""),  # .invalid never resolves (RFC 2606); the resolver says how
    ],
)
def test_an_address_that_cannot_be_listened_on_is_a_listen_error_naming_it(protocol, place, reason):
    kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as holder:
        host, port = "127.0.0.1", free_port()
        if place == "taken":
            holder.bind((host, port))  # another program has the port, for this protocol only
            if protocol == "TCP":
                holder.listen()
        else:
            host = place
        with pytest.raises(ListenError) as error:
            asyncio.run(start(protocol, host, port))
    assert isinstance(error.value, NetworkError)
    assert (error.value.protocol, error.value.host, error.value.port) == (protocol, host, port)
    message = str(error.value)
    assert message.startswith(f"cannot listen on {protocol} {host}:{port} ") and reason in message.lower()
    assert "\n" not in message


@pytest.mark.parametrize("seeds", [1, 3])
def test_seeds_that_never_answer_are_a_bootstrap_error_naming_them_once_the_time_is_up(seeds):
    """Seeds bound but silent (a process that is not a DHT node) and one where nothing listens."""

    async def join() -> tuple[float, BootstrapError]:
        silent = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(seeds - 1)]
        for sock in silent:
            sock.bind(("127.0.0.1", 0))
        addresses = [("127.0.0.1", free_port()), *(sock.getsockname() for sock in silent)]
        dht = PeerDHT(Identity.generate(), rpc_timeout=0.2)
        await dht.start("127.0.0.1", free_port())
        try:
            started = time.monotonic()
            joining = asyncio.ensure_future(dht.bootstrap(addresses))  # a joiner's attempt, in flight
            with pytest.raises(BootstrapError) as error:
                await dht.wait_joined(addresses, within=0.5)
            assert await joining == 0
            return time.monotonic() - started, error.value
        finally:
            await dht.stop()
            for sock in silent:
                sock.close()

    took, error = asyncio.run(join())
    assert took >= 0.5 and str(error).startswith("no bootstrap peer answered within 0.5 s: 127.0.0.1:")
    assert str(error).count("127.0.0.1:") == seeds


def test_a_seed_that_answers_ends_the_wait_at_once():
    async def join() -> None:
        seed, joiner = PeerDHT(Identity.generate()), PeerDHT(Identity.generate())
        await seed.start("127.0.0.1", free_port())
        await joiner.start("127.0.0.1", free_port())
        try:
            address = ("127.0.0.1", seed.port)
            assert await joiner.bootstrap([address]) == 1
            await asyncio.wait_for(joiner.wait_joined([address], within=60), 5)  # no error, no wait
        finally:
            await joiner.stop()
            await seed.stop()

    asyncio.run(join())
