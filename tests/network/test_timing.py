"""The peer loop's timing policy on live local servers: waiting, staleness, giving up, bans."""

import asyncio
import time

import pytest

import ppaia
from ppaia.network.identity import Identity
from ppaia.network.peer import Peer, PeerOptions
from ppaia.network.transfer import ModelServer

CONFIG = ppaia.ExperimentConfig.model_validate({"peers": 3, "rounds": 4, "model": "logistic"})


def make_peer(tmp_path, **options) -> Peer:
    return Peer(CONFIG, PeerOptions(index=0, data_dir=tmp_path, **options), Identity.generate())


async def with_neighbour(peer: Peer, body):
    """Run `body(server)` with peer 1 served by a local ModelServer that `peer` resolves directly."""
    server = ModelServer(Identity.generate())
    await server.start()
    address = ("127.0.0.1", server.port)

    async def resolve(index, timeout=5.0):
        peer._pinned[index] = server.identity.peer_id
        return address

    peer._address = resolve
    try:
        return await body(server)
    finally:
        await server.stop()


def model(peer: Peer, value: float):
    return {name: t.detach().clone().fill_(value) for name, t in peer.learner.tensors().items()}


def test_synchronous_waits_for_the_version_and_restarts_while_the_sender_progresses(tmp_path):
    peer = make_peer(tmp_path, wait=0.6)

    async def body(server):
        async def sender():  # progresses every 0.4 s: the 0.6 s wait must keep restarting
            for step in range(4):
                server.publish(1, step, model(peer, step))
                await asyncio.sleep(0.4)
            server.publish(2, 0, model(peer, 9.0))

        task = asyncio.create_task(sender())
        started = time.monotonic()
        fetched, stale = await peer._fetch(1, 2, 0)
        await task
        return fetched, stale, time.monotonic() - started

    fetched, stale, took = asyncio.run(with_neighbour(peer, body))
    assert fetched is not None and not stale and float(fetched[0]) == 9.0
    assert took > 1.2  # longer than one `wait`: each new version of the sender restarted it


def test_asynchronous_takes_a_recent_stale_model_but_not_an_old_one_or_for_a_broadcast(tmp_path):
    peer = make_peer(tmp_path, synchronous=False, deadline=0.3, max_staleness=2)

    async def body(server):
        server.publish(2, 1, model(peer, 2.0))
        recent = await peer._fetch(1, 4, 0)  # two rounds behind: used, marked stale
        too_old = await peer._fetch(1, 5, 0)  # three rounds behind: left out
        broadcast = await peer._fetch(1, 4, 0, substitute=False)
        return recent, too_old, broadcast

    (recent, stale), (too_old, _), (broadcast, _) = asyncio.run(with_neighbour(peer, body))
    assert stale and float(recent[0]) == 2.0
    assert too_old is None and broadcast is None


def test_a_sender_past_the_version_is_left_out_at_once_and_banned_senders_are_skipped(tmp_path):
    peer = make_peer(tmp_path, wait=30.0)

    async def body(server):
        for step in range(6):
            server.publish(3 + step // 2, step % 2, model(peer, step))
        started = time.monotonic()
        gone = await peer._fetch(1, 1, 0)  # dropped from the sender's window: it will never come
        quick = time.monotonic() - started
        for _ in range(peer.bans.max_strikes):
            peer.bans.strike(server.identity.peer_id, "test")
        banned = await peer._fetch(1, 5, 1)
        return gone, quick, banned

    (gone, _), quick, (banned, _) = asyncio.run(with_neighbour(peer, body))
    assert gone is None and quick < 5
    assert banned is None


@pytest.mark.parametrize("synchronous", [True, False])
def test_a_silent_sender_times_out(tmp_path, synchronous):
    peer = make_peer(tmp_path, synchronous=synchronous, wait=0.5, deadline=0.5)

    async def body(server):
        started = time.monotonic()
        fetched = await peer._fetch(1, 1, 0)
        return fetched, time.monotonic() - started

    (fetched, _), took = asyncio.run(with_neighbour(peer, body))
    assert fetched is None and 0.4 < took < 3
