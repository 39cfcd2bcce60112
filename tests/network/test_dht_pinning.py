"""Who plays a swarm index (issue 10, item 3): validly signed claims dated in the future or the past
must not take an index over.

Storing nodes keep claims in arrival order and readers pin the claimant a strict majority of them
received first (`Providers.first`); with a members list (`ppaia launch`) a peer follows only the listed
keys. A hostile identity here signs real claims with any date the skew bound allows.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kademlia.node import Node
from kademlia.utils import digest
from test_dht import START, TTL, FakeClock, provider_record, run

import ppaia
from ppaia.network.dht import PeerDHT, Providers, RecordStorage
from ppaia.network.identity import Identity
from ppaia.network.members import MembersError, initial_pins, read_members, write_members
from ppaia.network.peer import Peer, PeerOptions, index_topic
from ppaia.network.records import (
    MAX_CLOCK_SKEW,
    MAX_PROVIDERS,
    ProviderRecord,
    RecordError,
    encode_records,
    valid_records,
)

TOPIC = index_topic("ppaia", 1)
KEY = f"providers:{TOPIC}"


def seeded_identity(seed: str) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed.encode()).digest()))


@pytest.mark.parametrize("ahead", [MAX_CLOCK_SKEW + 0.001, MAX_CLOCK_SKEW + 1, 60.0, 119.0, 3600.0])
def test_claims_dated_beyond_the_clock_skew_are_refused_by_storing_nodes_and_readers(ahead):
    record = provider_record(seeded_identity("future"), TOPIC, now=START + ahead)
    with pytest.raises(RecordError, match="in the future"):
        RecordStorage(FakeClock()).merge(digest(KEY), encode_records([record]))
    assert valid_records(KEY, encode_records([record]), START) == []


@pytest.mark.parametrize("offset", [MAX_CLOCK_SKEW, 1.0, 0.0, -30.0, -TTL + 1])
def test_claims_within_the_skew_or_backdated_but_live_are_valid(offset):
    record = provider_record(seeded_identity("dated"), TOPIC, now=START + offset)
    assert valid_records(KEY, encode_records([record]), START) == [record]


def hostile_claims(count: int, dates: list[float], host: str = "127.0.0.9") -> list[ProviderRecord]:
    """Validly signed claims to play index 1 by `count` hostile keys, dated every way in `dates`."""
    return [
        ProviderRecord.create(
            seeded_identity(f"hostile/{k}"), topic=TOPIC, host=host, udp_port=9, tcp_port=9, now=when, ttl=TTL
        )
        for k in range(count)
        for when in dates
    ]


@contextlib.asynccontextmanager
async def network(count: int, seed: str, clock) -> AsyncIterator[list[PeerDHT]]:
    nodes: list[PeerDHT] = []
    try:
        for index in range(count):
            node = PeerDHT(seeded_identity(f"{seed}/{index}"), ttl=TTL, clock=clock, ksize=4, rpc_timeout=0.4)
            nodes.append(node)
            await node.start("127.0.0.1", 0, bootstrap=[("127.0.0.1", n.port) for n in nodes[:-1][:2]])
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


async def publish(node: PeerDHT, claims: list[ProviderRecord]) -> None:
    """Store each claim on the nodes closest to its key, as its signer's own publish would."""
    for claim in claims:
        await node._server.set_digest(digest(claim.key), encode_records([claim]))


def storing_nodes(nodes: list[PeerDHT]) -> list[PeerDHT]:
    target = Node(digest(KEY))
    return sorted(nodes, key=lambda node: Node(node.identity.node_id).distance_to(target))[:4]


def test_the_first_holder_keeps_its_index_against_claims_dated_any_way():
    """Before the fix a claim dated 120 s ahead came first in every lookup, and 20 such keys pushed the
    honest claim out of the storing nodes. Now storing nodes keep claims in arrival order, so whatever
    the dates and however many keys, every reader agrees on the honest first holder."""

    async def body():
        clock = FakeClock()
        async with network(12, "first", clock) as nodes:
            honest, hostile = nodes[0], nodes[1]
            await honest.announce(tcp_port=7000)
            await honest.provide(TOPIC)
            dates = [START + MAX_CLOCK_SKEW, START - TTL / 2, START]  # future, backdated, now
            await publish(hostile, hostile_claims(MAX_PROVIDERS + 5, dates))
            clock.now += 1
            await publish(hostile, hostile_claims(MAX_PROVIDERS + 5, [clock.now + MAX_CLOCK_SKEW]))  # renewed
            await honest.republish()  # the honest peer renews too: it keeps its place
            for reader in nodes[2:]:
                providers = await reader.lookup_providers(TOPIC)
                assert providers.first is not None and providers.first.peer_id == honest.peer_id
                assert providers.records[0].peer_id == honest.peer_id
                assert len(providers.records) > 1  # the hostile claims are there, and lose
            for node in storing_nodes(nodes):
                held = node._storage.records(digest(KEY))
                assert held[0].peer_id == honest.peer_id and len(held) == MAX_PROVIDERS

    run(body(), timeout=60)


def test_storing_nodes_that_disagree_pin_nobody_and_a_claim_before_the_holders_wins():
    """What the rule guarantees without a members list: the claimant a strict majority of the storing
    nodes received first, or nobody. Its limit: a key that claims an index before its honest holder
    ever publishes is that index's first holder (trust on first use), hence members lists."""

    async def body():
        clock = FakeClock()
        async with network(12, "disagree", clock) as nodes:
            stores = storing_nodes(nodes)
            honest, hostile, reader = [node for node in nodes if node not in stores][:3]
            await honest.announce(tcp_port=7000)
            claims = {
                "hostile": encode_records(hostile_claims(1, [START + MAX_CLOCK_SKEW])),
                "honest": encode_records([honest._provider_record(TOPIC)]),
            }
            order = ["hostile", "honest"], ["hostile", "honest"], ["honest", "hostile"], ["honest", "hostile"]
            for node, arrivals in zip(stores, order, strict=True):  # each storing node sees its own order
                where = Node(node.identity.node_id, "127.0.0.1", node.port)
                for name in arrivals:
                    sender = (hostile if name == "hostile" else honest)._server.protocol
                    assert await sender.call_store(where, digest(KEY), claims[name]) == (True, True)
            providers = await reader.lookup_providers(TOPIC)
            assert len(providers.records) == 2 and providers.holders == 4
            assert providers.first is None  # 2 against 2: nobody is pinned

            early = ProviderRecord.create(
                seeded_identity("early"), topic="ppaia/peer/2", host="127.0.0.9", udp_port=9, tcp_port=9,
                now=START, ttl=TTL,
            )  # fmt: skip
            await publish(hostile, [early])  # index 2: claimed before its holder ever published
            await honest.provide("ppaia/peer/2")
            assert (await reader.lookup_providers("ppaia/peer/2")).first.peer_id == early.peer_id

    run(body(), timeout=60)


def test_providers_tally_first_places_never_dates():
    a, b, c = (
        provider_record(seeded_identity(name), TOPIC, now=START + dt)
        for name, dt in [("a", 0), ("b", 4), ("c", -9)]
    )
    providers = Providers.of([[a, b], [a, c, b], [b, a], []])
    assert [r.peer_id for r in providers.records] == [a.peer_id, b.peer_id, c.peer_id]
    assert providers.first == a and providers.holders == 3 and providers.of_peer(c.peer_id) == c
    assert Providers.of([[a, b], [b, a]]).first is None  # a tie is no majority
    assert Providers.of([]).first is None and Providers.of([]).records == []


# ---------------------------------------------------------------------------------------------------
# members lists


def test_members_files_round_trip_and_every_mistake_is_named(tmp_path):
    ids = [seeded_identity(f"m{i}").peer_id for i in range(3)]
    path = tmp_path / "members.toml"
    write_members(path, ids)
    assert read_members(path, 3) == tuple(ids)
    upper = tmp_path / "upper.toml"
    upper.write_text(f'[members]\n0 = "{ids[0].upper()}"\n1 = "{ids[1]}"\n2 = "{ids[2]}"\n')
    assert read_members(upper, 3) == tuple(ids)
    cases = {
        "no such file": (tmp_path / "missing.toml", "No such file"),
        "not toml": ("[members\n", "members file"),
        "no table": ('members = "x"\n', r"\[members\] table"),
        "missing index": (f'[members]\n0 = "{ids[0]}"\n1 = "{ids[1]}"\n', r"missing \['2'\]"),
        "extra index": (
            f'[members]\n0 = "{ids[0]}"\n1 = "{ids[1]}"\n2 = "{ids[2]}"\n3 = "{ids[0]}"\n',
            "unexpected",
        ),
        "short id": (f'[members]\n0 = "{ids[0][:-1]}"\n1 = "{ids[1]}"\n2 = "{ids[2]}"\n', "40-hex"),
        "not hex": (f'[members]\n0 = "{"g" * 40}"\n1 = "{ids[1]}"\n2 = "{ids[2]}"\n', "40-hex"),
        "not a string": (f'[members]\n0 = 5\n1 = "{ids[1]}"\n2 = "{ids[2]}"\n', "40-hex"),
        "twice": (f'[members]\n0 = "{ids[0]}"\n1 = "{ids[0]}"\n2 = "{ids[2]}"\n', "two indices"),
    }
    for name, (content, complaint) in cases.items():
        target = content if not isinstance(content, str) else tmp_path / f"{name}.toml"
        if isinstance(content, str):
            target.write_text(content)
        with pytest.raises(MembersError, match=complaint):
            read_members(target, 3)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[members]")
    with pytest.raises(MembersError):
        read_members(binary, 3)

    assert initial_pins((), 3, 0, ids[0]) == {}
    assert initial_pins(tuple(ids), 3, 1, ids[1]) == {0: ids[0], 1: ids[1], 2: ids[2]}
    with pytest.raises(MembersError, match="this peer's key"):
        initial_pins(tuple(ids), 3, 1, ids[0])
    with pytest.raises(MembersError, match="the swarm has 4"):
        initial_pins(tuple(ids), 4, 1, ids[1])


CONFIG = ppaia.ExperimentConfig.model_validate({"peers": 3, "rounds": 1, "model": "logistic"})


@pytest.mark.parametrize("closed", [True, False], ids=["members", "open"])
def test_a_peer_follows_the_listed_key_whatever_claims_come_first(tmp_path, closed):
    """Hostile keys claim index 1 before its holder starts, dated ahead and back. With a members list
    the peer follows the listed key, through that key's own record. Without one it pins the first
    holder the storing nodes agree on, here the hostile key: what `ppaia launch`'s list prevents."""

    async def body():
        member = seeded_identity("member/1")
        me = seeded_identity("member/0")
        members = (me.peer_id, member.peer_id, seeded_identity("member/2").peer_id) if closed else ()
        peer = Peer(CONFIG, PeerOptions(index=0, data_dir=tmp_path, members=members), me)
        async with network(8, f"peer/{closed}", time.time) as nodes:
            now = time.time()
            await publish(nodes[1], hostile_claims(3, [now + MAX_CLOCK_SKEW - 0.5, now - TTL / 2]))
            holder = PeerDHT(member, ttl=TTL, ksize=4, rpc_timeout=0.4)
            await holder.start("127.0.0.1", 0, bootstrap=[("127.0.0.1", nodes[0].port)])
            await peer.dht.start("127.0.0.1", 0, bootstrap=[("127.0.0.1", nodes[0].port)])
            try:
                await holder.announce(tcp_port=7001)
                await holder.provide(TOPIC)
                address = await peer.book.address(1, timeout=5.0)
                if closed:
                    assert address == ("127.0.0.1", 7001) and peer.book.pinned[1] == member.peer_id
                else:
                    assert address == ("127.0.0.9", 9) and peer.book.pinned[1] != member.peer_id
            finally:
                await peer.dht.stop()
                await holder.stop()

    run(body(), timeout=60)
