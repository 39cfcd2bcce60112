"""The peer DHT: signed, expiring, multi-provider records over real UDP sockets on 127.0.0.1.

Every network test runs its nodes in one event loop, bounded by `asyncio.wait_for`. Nodes use k = 4 so
records live on a few nodes and lookups really have to route; RPCs time out after 0.4 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator

import pytest
from kademlia.crawling import ValueSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node
from kademlia.routing import RoutingTable
from kademlia.utils import digest

from ppaia.network.dht import DHTError, ExactRoutingTable, PeerDHT, RecordStorage, parse_address
from ppaia.network.errors import AddressError
from ppaia.network.identity import Identity
from ppaia.network.records import (
    MAX_CLOCK_SKEW,
    MAX_PROVIDERS,
    MAX_VALUE_BYTES,
    PeerRecord,
    ProviderRecord,
    RecordError,
    RecordTooLarge,
    decode_record,
    decode_records,
    encode_records,
    valid_records,
)

TTL = 60.0
START = 1_700_000_000.0


class FakeClock:
    """Unix time that only moves when a test says so."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def run(coroutine, timeout: float = 25.0):
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


@contextlib.asynccontextmanager
async def network(count: int, clock: FakeClock, *, seeds: int = 2, **options) -> AsyncIterator[list[PeerDHT]]:
    """`count` started nodes; every node after the first bootstraps from the first `seeds` nodes."""
    nodes: list[PeerDHT] = []
    try:
        for _ in range(count):
            node = PeerDHT(Identity.generate(), ttl=TTL, clock=clock, ksize=4, rpc_timeout=0.4, **options)
            seed_addresses = [("127.0.0.1", seed.port) for seed in nodes[:seeds]]
            nodes.append(node)
            await node.start("127.0.0.1", 0, bootstrap=seed_addresses)
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


def peer_record(identity: Identity, *, now: float = START, host: str = "10.0.0.1", **extra) -> PeerRecord:
    return PeerRecord.create(identity, host=host, udp_port=4000, tcp_port=5000, now=now, ttl=TTL, **extra)


def provider_record(identity: Identity, topic: str, *, now: float = START, host: str = "10.0.0.1"):
    return ProviderRecord.create(
        identity, topic=topic, host=host, udp_port=4000, tcp_port=5000, now=now, ttl=TTL
    )


def forged(record: PeerRecord, **changes) -> PeerRecord:
    """`record` with fields changed but the original signature kept."""
    return dataclasses.replace(record, **changes)


def test_parse_address_accepts_host_port_and_explains_mistakes():
    assert parse_address("127.0.0.1:4000") == ("127.0.0.1", 4000)
    assert parse_address(" seed.example.org:65535 ") == ("seed.example.org", 65535)
    assert parse_address("[::1]:4000") == ("::1", 4000)
    for text, complaint in [
        ("127.0.0.1", "host:port"),
        (":4000", "host:port"),
        ("seed:http", "port must be a number"),
        ("seed:0", "port must be a number"),
        ("seed:70000", "port must be a number"),
        ("::1:4000", "brackets"),
    ]:
        with pytest.raises(AddressError, match=complaint):
            parse_address(text)


def test_records_round_trip_and_every_tampering_is_caught():
    me, other = Identity.generate(), Identity.generate()
    record = peer_record(me)
    assert decode_record(record.signed) == record and record.verify(START)
    assert record.key == f"peer:{me.peer_id}"
    topic = provider_record(me, "model:bafy123")
    assert decode_record(topic.signed) == topic and topic.key == "providers:model:bafy123"

    problems = {
        "bad signature": forged(record, host="6.6.6.6"),
        "does not belong": forged(record, public_key=other.public_key),
        "expired": record,
    }
    for complaint, bad in problems.items():
        with pytest.raises(RecordError, match=complaint):
            bad.check(START + TTL + 1 if complaint == "expired" else START)
    with pytest.raises(RecordError, match="future"):
        record.check(START - 3600)
    for junk in (b"", b"\xc1", b"\x92\xa1x\xa1y", record.signed[:-3]):
        with pytest.raises(RecordError):
            decode_record(junk)


def test_storage_refuses_garbage_forgeries_and_records_under_a_foreign_key():
    clock = FakeClock()
    storage = RecordStorage(clock)
    alice, bob = Identity.generate(), Identity.generate()
    genuine = peer_record(alice)
    key = digest(genuine.key)

    storage[key] = encode_records([genuine])
    assert storage.records(key) == [genuine]
    for value in (
        b"garbage",
        12345,
        encode_records([forged(genuine, host="6.6.6.6", issued=START + 5)]),  # alice's fields, bad signature
        encode_records([genuine, forged(genuine, tcp_port=1)]),  # one forgery spoils the whole set
    ):
        with pytest.raises(RecordError):
            storage.merge(key, value)
    with pytest.raises(
        RecordError, match="does not belong under"
    ):  # bob's valid record sent under alice's key
        storage.merge(key, encode_records([peer_record(bob)]))
    assert storage.records(key) == [genuine]

    clock.now = START + 10
    newer = peer_record(alice, now=START + 10, host="10.0.0.2")
    storage.merge(key, encode_records([newer]))
    storage.merge(key, encode_records([genuine]))  # a replay of the older record changes nothing
    assert storage.records(key) == [newer]

    clock.now = START + 10 + TTL
    assert storage.records(key) == [] and storage.get(key) is None and list(storage) == []
    storage.merge(key, encode_records([newer]))  # arrived expired: dropped, not an error
    assert storage.records(key) == []


def test_storage_keeps_the_earliest_providers_however_their_claims_are_dated():
    """Issue 10: storing nodes used to keep the freshest providers, so future-dated claims pushed the
    honest ones out. Now the signers that arrived first keep their places; dates order a signer's own
    records only."""
    storage = RecordStorage(FakeClock())
    topic = "swarm:mnist"
    key = digest(f"providers:{topic}")
    offsets = [(-7 * i) % 50 - 45 for i in range(MAX_PROVIDERS + 10)]  # backdated up to 45 s, ahead up to 4 s
    signers = [Identity.generate() for _ in offsets]
    providers = [
        provider_record(signer, topic, now=START + dt) for signer, dt in zip(signers, offsets, strict=True)
    ]
    for record in providers:
        storage.merge(key, encode_records([record]))
    assert storage.records(key) == providers[:MAX_PROVIDERS]  # arrival order, whatever the dates
    assert len(storage.get(key)) <= MAX_VALUE_BYTES

    late = provider_record(Identity.generate(), topic, now=START + MAX_CLOCK_SKEW)
    renewed = provider_record(signers[0], topic, now=START + 1, host="10.0.0.9")
    storage.merge(key, encode_records([late, renewed]))
    assert storage.records(key) == [renewed, *providers[1:MAX_PROVIDERS]]  # renewed in place; late is out

    bulky = RecordStorage(FakeClock())
    arrived = [provider_record(Identity.generate(), topic, now=START - i, host="h" * 900) for i in range(20)]
    for record in arrived:
        bulky.merge(key, encode_records([record]))
    kept = bulky.records(key)
    assert 1 < len(kept) < MAX_PROVIDERS and kept == arrived[: len(kept)]  # trimmed by size, earliest kept
    assert len(bulky.get(key)) <= MAX_VALUE_BYTES


def test_stock_traversal_stops_early_on_an_empty_bucket_and_ours_ranks_every_node():
    me = Node(b"\xff" * 20)  # our own bucket ends up empty once the low half of the id space splits
    contacts = [Node(bytes([prefix]) + bytes(19), f"10.0.0.{prefix}", 4000) for prefix in (0x00, 0x01, 0x40)]
    stock, exact = RoutingTable(None, 2, me), ExactRoutingTable(None, 2, me)
    for table in (stock, exact):
        for contact in contacts:
            table.add_contact(contact)
    assert [len(bucket) for bucket in stock.buckets] == [2, 1, 0]
    for target in (me, Node(b"\x80" + bytes(19))):
        expected = sorted(contacts, key=target.distance_to)[:2]
        assert [n.id for n in exact.find_neighbors(target)] == [n.id for n in expected]
        assert len(stock.find_neighbors(target)) == 1  # stock 2.2.3: knows 3 nodes, returns 1 of the 2 asked


def test_every_node_finds_every_other_node():
    async def body():
        clock = FakeClock()
        async with network(16, clock) as nodes:
            for index, node in enumerate(nodes):
                assert await node.announce(tcp_port=7000 + index)
            for node in nodes:
                for index, other in enumerate(nodes):
                    record = await node.find_peer(other.peer_id)
                    assert record is not None, (node.peer_id, other.peer_id)
                    assert (record.peer_id, record.host, record.udp_port, record.tcp_port) == (
                        other.peer_id,
                        "127.0.0.1",
                        other.port,
                        7000 + index,
                    )
            assert await nodes[3].find_peer(Identity.generate().peer_id) is None

    run(body())


def test_ten_providers_of_a_topic_all_reach_a_third_node():
    async def body():
        async with network(16, FakeClock()) as nodes:
            providers = nodes[2:12]
            await asyncio.gather(*(node.announce(tcp_port=7000) for node in providers))
            assert all(await asyncio.gather(*(node.provide("model:bafy-round-7") for node in providers)))
            await nodes[5].provide("swarm:other")  # another topic does not leak in
            found = await nodes[15].find_providers("model:bafy-round-7")
            assert sorted(record.peer_id for record in found) == sorted(node.peer_id for node in providers)
            assert all(record.tcp_port == 7000 and record.host == "127.0.0.1" for record in found)
            assert await nodes[0].find_providers("model:nobody") == []

    run(body())


def test_a_lookup_merges_partial_sets_where_the_stock_crawl_keeps_one_value():
    async def body():
        async with network(16, FakeClock()) as nodes:
            topic, providers = "swarm:partial", nodes[:10]
            await asyncio.gather(*(node.announce(tcp_port=7000) for node in providers))
            await asyncio.gather(*(node.provide(topic) for node in providers))
            dkey = digest(f"providers:{topic}")
            closest = sorted(nodes, key=lambda node: Node(node.identity.node_id).distance_to(Node(dkey)))
            holders = closest[:4]  # the k closest nodes to the key each hold every provider...
            records = sorted(holders[0]._storage.records(dkey), key=lambda record: record.peer_id)
            assert len(records) == 10
            for index, holder in enumerate(closest):  # ...now only a quarter each, as if stores were lost
                holder._storage._sets[dkey] = records[index::4] if index < 4 else []
            reader = closest[-1]

            found = await reader.find_providers(topic)
            assert sorted(record.peer_id for record in found) == sorted(node.peer_id for node in providers)

            protocol, target = reader._server.protocol, Node(dkey)
            nearest = protocol.router.find_neighbors(target)
            stock = await ValueSpiderCrawl(protocol, target, nearest, 4, 3).find()  # the most common value
            assert len(decode_records(stock)) <= 3

    run(body())


def test_forged_records_are_refused_by_storing_nodes_and_ignored_by_readers():
    async def body():
        clock = FakeClock()
        async with network(6, clock) as nodes:
            alice, bob, liar, reader = nodes[0], nodes[1], nodes[2], nodes[3]
            await alice.announce(tcp_port=7000)
            genuine = await reader.find_peer(alice.peer_id)
            assert genuine is not None

            # bob signs a record claiming alice's key, and a tampered copy of alice's own record
            bobs_claim = peer_record(bob.identity, now=START + 1)
            tampered = forged(genuine, host="6.6.6.6", issued=START + 1)
            storing = Node(liar.identity.node_id, "127.0.0.1", liar.port)
            for value in (encode_records([bobs_claim]), encode_records([tampered]), b"junk"):
                answered, accepted = await bob._server.protocol.call_store(
                    storing, digest(genuine.key), value
                )
                assert answered and accepted is False
            assert liar._storage.records(digest(genuine.key)) in ([], [genuine])

            # a storing node that lies: it answers every lookup with forgeries
            lie = encode_records([tampered])
            liar._storage.get = lambda key, default=None: lie
            assert await reader.find_peer(alice.peer_id) == genuine
            assert valid_records(genuine.key, lie, clock()) == []
            assert await reader.find_peer(nodes[4].peer_id) is None  # never announced; only lies exist

    run(body())


def test_a_record_over_the_size_limit_is_refused_on_publish():
    async def body():
        async with network(3, FakeClock()) as nodes:
            node = nodes[1]
            with pytest.raises(RecordTooLarge, match=r"over the DHT's 8,137-byte value limit"):
                await node.announce(tcp_port=7000, host="h" * 9000)
            with pytest.raises(DHTError, match="announce"):
                await node.provide("swarm:x")
            assert await node.announce(tcp_port=7000)
            with pytest.raises(RecordTooLarge, match="providers:ttt"):
                await node.provide("t" * 9000)
            assert await node.republish()  # the refused topic was not adopted
            assert (await nodes[2].find_peer(node.peer_id)).host == "127.0.0.1"

    run(body())


def test_expired_records_vanish_and_republishing_brings_them_back():
    async def body():
        clock = FakeClock()
        async with network(5, clock) as nodes:
            await nodes[0].announce(tcp_port=7000)
            await nodes[0].provide("swarm:a")
            assert await nodes[4].find_peer(nodes[0].peer_id) is not None
            clock.now += TTL + 1
            assert await nodes[4].find_peer(nodes[0].peer_id) is None
            assert await nodes[4].find_providers("swarm:a") == []
            assert await nodes[0].republish()
            record = await nodes[4].find_peer(nodes[0].peer_id)
            assert record is not None and record.issued == clock.now
            assert [p.peer_id for p in await nodes[4].find_providers("swarm:a")] == [nodes[0].peer_id]

    run(body())


def test_a_stopped_peer_expires_while_the_others_keep_working():
    async def body():
        clock = FakeClock()
        async with network(8, clock) as nodes:
            for node in nodes:
                await node.announce(tcp_port=7000)
            gone, alive = nodes[3], [node for index, node in enumerate(nodes) if index != 3]
            await gone.stop()
            clock.now += TTL / 2
            assert await alive[0].find_peer(gone.peer_id) is not None  # not expired yet
            clock.now += TTL / 2 + 1
            await asyncio.gather(*(node.republish() for node in alive))
            for node in alive:
                assert await node.find_peer(gone.peer_id) is None
                assert all([await node.find_peer(other.peer_id) for other in alive])

    run(body())


def test_the_republish_loop_keeps_records_alive():
    async def body():
        clock = FakeClock()
        async with network(4, clock, republish_every=0.05) as nodes:
            await nodes[1].announce(tcp_port=7000)
            clock.now += TTL - 1
            record = None
            for _ in range(40):  # at most 2 s of real time
                await asyncio.sleep(0.05)
                record = await nodes[3].find_peer(nodes[1].peer_id)
                if record is not None and record.issued == clock.now:
                    break
            assert record is not None and record.issued == clock.now
            clock.now += 2  # the first record has expired by now; the republished one has not
            assert await nodes[3].find_peer(nodes[1].peer_id) is not None

    run(body())


def test_set_with_every_other_peer_gone_keeps_the_record_locally_instead_of_crashing():
    async def body():
        async with network(4, FakeClock()) as nodes:
            me = nodes[0]
            for node in nodes[1:]:
                await node.stop()
            record = peer_record(me.identity)
            with pytest.raises(ValueError, match="empty"):  # stock 2.2.3: max() over no nodes
                await Server.set_digest(me._server, digest(record.key), encode_records([record]))
            for node in nodes[1:]:  # the failed stock call dropped them; know them again
                me._server.protocol.router.add_contact(Node(node.identity.node_id, "127.0.0.1", node.port))
            assert await me.announce(tcp_port=7000) is False
            found = await me.find_peer(me.peer_id)
            assert found is not None and found.tcp_port == 7000
            assert me.neighbor_count == 0  # every silent peer was dropped from the table

    run(body())


def test_bootstrap_reports_how_many_seeds_answered():
    async def body():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))  # a port where nobody answers
            dead = f"127.0.0.1:{silent.getsockname()[1]}"
            async with network(2, FakeClock(), seeds=1) as nodes:
                late = PeerDHT(Identity.generate(), rpc_timeout=0.4)
                try:
                    await late.start("127.0.0.1", 0)
                    assert await late.bootstrap([dead]) == 0
                    assert await late.bootstrap([dead, f"localhost:{nodes[0].port}"]) == 1
                    assert late.neighbor_count == 2
                finally:
                    await late.stop()

    run(body())


def test_deeply_nested_values_are_refused_not_raised():
    from ppaia.network.records import valid_records

    nested = b"\x91" * 3000 + b"\xc0"  # msgpack: 3,000 nested one-element arrays
    assert valid_records("peer:" + "0" * 40, nested, now=0.0) == []
