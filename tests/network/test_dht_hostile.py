"""Hostile DHT nodes (issue 10, items 2 and 4): malformed datagrams, poisoned answers, eclipse and Sybil.

Honest nodes are real `PeerDHT`s on 127.0.0.1; hostile ones are bare UDP sockets on 127.0.0.2.. that
speak rpcudp's framing (kind byte, 20-byte message id, msgpack body) and say whatever the test wants.
Identities, ids and choices come from fixed seeds. Every run is bounded by `asyncio.wait_for`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
import umsgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kademlia.node import Node
from kademlia.utils import digest
from test_dht import TTL, FakeClock, run

from ppaia.network.dht import (
    LOOKUP_QUERIES_PER_K,
    LOOKUP_ROUNDS,
    ExactRoutingTable,
    NodeCrawl,
    PeerDHT,
    Refusal,
    contact,
)
from ppaia.network.errors import ProtocolError
from ppaia.network.identity import Identity
from ppaia.network.records import peer_key

RPC_TIMEOUT = 0.4
Answer = Callable[[str, list], object]  # (rpc name, args) -> reply; None: stay silent


def seeded_identity(seed: str) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed.encode()).digest()))


class Raw(asyncio.DatagramProtocol):
    """A hostile DHT node: one UDP socket that answers requests with `answer(name, args)` and keeps the
    responses it receives."""

    def __init__(self, answer: Answer, rng: random.Random) -> None:
        self.answer = answer
        self.rng = rng
        self.responses: list[object] = []

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:
        self.transport = transport
        self.address = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if data[:1] == b"\x01":
            self.responses.append(umsgpack.unpackb(data[21:]))
            return
        name, args = umsgpack.unpackb(data[21:])
        reply = self.answer(name, args)
        if reply is not None:
            self.transport.sendto(b"\x01" + data[1:21] + umsgpack.packb(reply), addr)

    def send(self, port: int, body: bytes, kind: bytes = b"\x00") -> None:
        """One datagram to 127.0.0.1:`port`: `kind`, a message id, then `body` as it is."""
        self.transport.sendto(kind + self.rng.randbytes(20) + body, ("127.0.0.1", port))

    def call(self, port: int, name: object, args: object) -> None:
        self.send(port, umsgpack.packb([name, args]))


async def raw(host: str, rng: random.Random, answer: Answer = lambda name, args: None) -> Raw:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(lambda: Raw(answer, rng), local_addr=(host, 0))
    return protocol


@contextlib.asynccontextmanager
async def network(count: int, seed: str, *, ksize: int = 4) -> AsyncIterator[list[PeerDHT]]:
    """`count` honest nodes with seeded identities; each joins through the first two."""
    clock, nodes = FakeClock(), []
    try:
        for index in range(count):
            node = PeerDHT(
                seeded_identity(f"{seed}/{index}"), ttl=TTL, clock=clock, ksize=ksize, rpc_timeout=RPC_TIMEOUT
            )
            seeds = [("127.0.0.1", other.port) for other in nodes[:2]]
            nodes.append(node)
            await node.start("127.0.0.1", 0, bootstrap=seeds)
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


def table(node: PeerDHT) -> list[Node]:
    return list(node._server.protocol.router.contacts())


def near(key: bytes, rng: random.Random, prefix_bits: int = 24) -> bytes:
    """A made-up id sharing its first `prefix_bits` bits with `key`."""
    return (int.from_bytes(key, "big") ^ rng.getrandbits(160 - prefix_bits)).to_bytes(20, "big")


async def success(nodes: list[PeerDHT], rng: random.Random, per_node: int) -> float:
    """The share of `find_peer` lookups, `per_node` from each node for random others, that return the
    right address. Each lookup is bounded by the crawl's own limits (plus slack for a busy loop)."""
    found = total = 0
    for index, node in enumerate(nodes):
        for other in rng.sample([o for o in range(len(nodes)) if o != index], per_node):
            total += 1
            bound = 2 * LOOKUP_ROUNDS * RPC_TIMEOUT + 5
            record = await asyncio.wait_for(node.find_peer(nodes[other].peer_id), bound)
            found += record is not None and record.udp_port == nodes[other].port
    return found / total


# ---------------------------------------------------------------------------------------------------
# item 2: every id, host and port is checked before use

LENGTHS = [n for n in range(41) if n != 20]
BAD_IDS = [
    *(bytes(n) for n in LENGTHS),
    bytes(1000),
    "a" * 20,
    "00" * 20,
    0,
    2**63,
    -1,
    None,
    True,
    1.5,
    [1] * 20,
    {"id": b"x"},
]
BAD_PORTS = [0, 65536, -1, 2**64 - 1, -(2**63), "4000", 4000.0, True, False, None, [4000], b"\x0f\xa0"]
BAD_HOSTS = [
    "",
    "localhost",
    "seed.example.org",
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "239.255.255.250",
    "ff02::1",
    "255.255.255.255",
    "1.2.3",
    "1.2.3.4.5",
    "256.1.1.1",
    "01.2.3.4",
    " 127.0.0.1",
    "127.0.0.1\x00",
    "127.0.0.1:4000",
    "h" * 10_000,
    b"127.0.0.1",
    2130706433,
    None,
    ["127.0.0.1"],
]
ID = bytes(range(20))


@pytest.mark.parametrize("node_id", BAD_IDS, ids=repr)
def test_contact_refuses_every_malformed_id(node_id):
    with pytest.raises(ProtocolError) as caught:
        contact(node_id, "127.0.0.1", 4000)
    assert caught.value.reason == Refusal.BAD_ID


@pytest.mark.parametrize("port", BAD_PORTS, ids=repr)
def test_contact_refuses_every_malformed_port(port):
    with pytest.raises(ProtocolError) as caught:
        contact(ID, "127.0.0.1", port)
    assert caught.value.reason == Refusal.BAD_PORT


@pytest.mark.parametrize("host", BAD_HOSTS, ids=lambda host: repr(host)[:40])
def test_contact_refuses_every_host_a_datagram_cannot_go_to(host):
    with pytest.raises(ProtocolError) as caught:
        contact(ID, host, 4000)
    assert caught.value.reason == Refusal.BAD_HOST


def test_contact_accepts_addresses_in_one_spelling_and_of_the_sockets_family():
    assert tuple(contact(ID, "127.0.0.1", 1)) == (ID, "127.0.0.1", 1)
    assert contact(ID, "0:0::1", 65535).ip == "::1"  # one address, one spelling
    assert contact(ID, "FE80::1", 4000).ip == "fe80::1"
    for host, family in (("::1", socket.AF_INET), ("127.0.0.1", socket.AF_INET6)):
        with pytest.raises(ProtocolError, match="cannot be sent"):
            contact(ID, host, 4000, family)


def framing_garbage(rng: random.Random) -> list[bytes]:
    """Bodies (after kind and message id) that are no rpcudp request at all."""
    valid = umsgpack.packb(["ping", [ID]])
    return [
        b"",
        b"\xc1",  # a msgpack code that is never used
        valid[:-3],  # truncated
        b"\x91" * 5000 + b"\xc0",  # nesting deep enough to exhaust the decoder's recursion
        b"\xd4\x01\x00",  # an extension type
        *(rng.randbytes(rng.randrange(1, 200)) for _ in range(30)),
    ]


def malformed_requests() -> list[object]:
    """Decodable messages that are not a request a node should act on."""
    return [
        "ping",
        ["ping"],
        ["ping", [ID], "extra"],
        ["ping", ID],
        ["ping", {"id": ID}],
        ["ping", []],
        ["ping", [ID, ID]],
        ["store", [ID, ID]],
        ["find_node", [ID]],
        ["find_value", [ID, ID, ID]],
        ["stun", [ID]],
        ["shutdown", [ID]],
        ["_accept_request", [ID]],  # a private method's name is no RPC
        [5, [ID]],
        [b"ping", [ID]],
        [["ping"], [ID]],  # an unhashable name
        [None, []],
    ]


def bad_id_requests(rng: random.Random) -> list[list]:
    """Every RPC carrying a malformed sender id or key (the other arguments valid)."""
    value = umsgpack.packb([])
    requests = []
    for bad in BAD_IDS:
        requests += [
            ["ping", [bad]],
            ["find_node", [bad, rng.randbytes(20)]],
            ["find_value", [bad, rng.randbytes(20)]],
            ["store", [bad, rng.randbytes(20), value]],
            ["find_node", [rng.randbytes(20), bad]],  # a valid sender id, a malformed key
            ["find_value", [rng.randbytes(20), bad]],
            ["store", [rng.randbytes(20), bad, value]],
        ]
    return requests


def test_no_malformed_datagram_is_answered_or_reaches_the_routing_table():
    async def body():
        rng = random.Random(2)
        errors: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        async with network(1, "malformed") as (node,):
            attacker = await raw("127.0.0.2", rng)
            garbage, malformed, bad_ids = framing_garbage(rng), malformed_requests(), bad_id_requests(rng)
            bodies = [*garbage, *(umsgpack.packb(message) for message in malformed)]
            bodies += [umsgpack.packb([name, args]) for name, args in bad_ids]
            for count, data in enumerate(bodies):
                attacker.send(node.port, data)
                if count % 32 == 31:  # let the node drain its socket: the kernel drops what overflows
                    await asyncio.sleep(0.02)
            attacker.send(node.port, umsgpack.packb(["ping", [ID]]), kind=b"\x02")  # unknown kind
            attacker.send(node.port, b"")  # a bare header: too short
            attacker.send(node.port, umsgpack.packb([b"\x00" * 20]), kind=b"\x01")  # an unsolicited answer
            protocol = node._server.protocol
            for sender in (("0.0.0.0", 4000), ("224.0.0.1", 4000), ("127.0.0.1", 0), ("::1", 4000)):
                protocol.datagram_received(b"\x00" + bytes(20) + umsgpack.packb(["ping", [ID]]), sender)
            await asyncio.sleep(0.3)

            assert attacker.responses == [] and table(node) == []
            refused = node.refusals
            assert refused[Refusal.MALFORMED] == len(garbage) + 2 + len(malformed)  # +kind, +too short
            assert refused[Refusal.BAD_ID] == len(bad_ids)
            assert refused[Refusal.BAD_HOST] == 3 and refused[Refusal.BAD_PORT] == 1
            assert errors == []  # no handler raised into the event loop

            attacker.call(node.port, "ping", [ID])  # a well-formed ping is still answered
            await asyncio.sleep(0.2)
            assert attacker.responses == [node._server.node.id]
            assert [tuple(n) for n in table(node)] == [(ID, *attacker.address)]

    run(body())


def contact_family(rng: random.Random, good: list[list]) -> list[object]:
    """An answer's contact list: `good` triples mixed with every kind of malformed entry."""
    bad = [
        *([node_id, "127.0.0.3", 4000] for node_id in BAD_IDS),
        *([rng.randbytes(20), host, 4000] for host in BAD_HOSTS),
        *([rng.randbytes(20), "127.0.0.3", port] for port in BAD_PORTS),
        [rng.randbytes(20), "127.0.0.3"],
        [rng.randbytes(20), "127.0.0.3", 4000, "extra"],
        "127.0.0.3:4000",
        None,
        {"id": rng.randbytes(20)},
    ]
    entries = good + bad
    rng.shuffle(entries)
    return entries


def test_an_answer_loses_its_malformed_contacts_not_its_answerer():
    async def body():
        rng = random.Random(3)
        async with network(3, "answers", ksize=8) as nodes:
            asker, target = nodes[0], Node(rng.randbytes(20))
            good = [[rng.randbytes(20), "127.0.0.3", 5000 + i] for i in range(30)]
            answers = {
                "find_node": contact_family(rng, good),
                "find_value": {"value": b"\x90", "nodes": contact_family(rng, good)},
            }
            liar = await raw("127.0.0.2", rng, lambda name, args: answers.get(name, liar_id))
            liar_id = rng.randbytes(20)
            liar.call(asker.port, "ping", [liar_id])  # the liar enters the asker's table under its own id
            await asyncio.sleep(0.2)
            liar_node = Node(liar_id, *liar.address)
            protocol = asker._server.protocol
            assert protocol.router.holds(liar_node)

            closest = sorted((Node(*triple) for triple in good), key=target.distance_to)[:8]
            answered, nodes_found = await protocol.call_find_node(liar_node, target)
            assert answered and [tuple(n) for n in nodes_found] == [tuple(n) for n in closest]
            answered, payload = await protocol.call_find_value(liar_node, target)
            assert answered and payload["value"] == b"\x90"
            assert [tuple(n) for n in payload["nodes"]] == [tuple(n) for n in closest]
            assert protocol.router.holds(liar_node)  # the answerer keeps its place
            assert asker.refusals[Refusal.OVERSIZED] == 2  # 30 valid contacts, 8 kept

            for junk in ("nodes", 5, None, {"value": 5}, {"value": b"", "nodes": "x"}):
                answers["find_node"] = junk
                assert await protocol.call_find_node(liar_node, target) == (False, None)

    run(body())


def test_lookups_survive_one_malformed_rpc_per_node():
    """Issue 10, item 2: each honest node gets one RPC with a 1-byte (or otherwise malformed) node id
    from a socket that answers everything, so its bogus contact would stay alive. Stock 2.2.3 put it
    in the routing tables and answers carrying it dropped their honest answerers (success fell to
    68-85 % here, 17 % in the issue's larger network); now nothing of it gets in."""

    async def body():
        rng = random.Random(4)
        async with network(30, "bogus", ksize=8) as nodes:
            await asyncio.gather(*(node.announce(tcp_port=7000) for node in nodes))
            bogus = rng.choice([b"\x01", b"", bytes(19), bytes(21)])
            attacker = await raw(
                "127.0.0.2",
                rng,
                lambda name, args: bogus if name == "ping" else (True if name == "store" else []),
            )
            calls = [["ping", [bogus]], ["find_node", [bogus, ID]], ["find_value", [bogus, ID]]]
            for index, node in enumerate(nodes):
                attacker.call(node.port, *calls[index % 3])
            await asyncio.sleep(0.3)
            assert all(attacker.address not in {(n.ip, n.port) for n in table(node)} for node in nodes)
            nodes[0].clock.now += 1  # one clock for all
            await asyncio.gather(*(node.republish() for node in nodes))
            assert await success(nodes, rng, per_node=4) == 1.0

    run(body(), timeout=60)


# ---------------------------------------------------------------------------------------------------
# item 4: eclipse and Sybil


def test_the_routing_table_keeps_one_id_per_address_and_an_ips_share_of_each_bucket():
    """Seeded random sequences of contacts, many colliding on purpose: after every step, no address
    holds two ids, no id two addresses, no IP beyond its share of a bucket (bar the shared one), and a
    contact is removed only at the address it was held at."""
    rng = random.Random(5)
    me = Node(rng.randbytes(20))
    router = ExactRoutingTable(None, 8, me)
    ids = [rng.randbytes(20) for _ in range(120)]
    host_of = {  # address -> the host it belongs to (an IPv6 /64; an IPv4 address, mapped or not)
        "10.0.0.1": "10.0.0.1",
        "::ffff:10.0.0.1": "10.0.0.1",
        "10.0.0.2": "10.0.0.2",
        "10.0.0.3": "10.0.0.3",
        "2001:db8::1": "2001:db8::/64",
        "2001:db8::2": "2001:db8::/64",
        "2001:db8:0:1::1": "2001:db8:0:1::/64",
    }
    hosts = [*host_of, "127.0.0.1"]  # 127.0.0.1: shared by every local process, no share limit
    held: dict[bytes, tuple[str, int]] = {}
    for _ in range(3000):
        node = Node(rng.choice(ids), rng.choice(hosts), rng.randrange(4000, 4006))
        if rng.random() < 0.2:
            before = router.by_id(node.id)
            router.remove_contact(node)
            if before is not None and not before.same_home_as(node):  # named at another address
                assert router.by_id(node.id) is before
        else:
            router.add_contact(node)
        everyone = list(router.contacts())
        assert len({(n.ip, n.port) for n in everyone}) == len(everyone)
        assert len({n.id for n in everyone}) == len(everyone)
        for n in everyone:  # an id keeps the address it was first held at until removed there
            assert held.setdefault(n.id, (n.ip, n.port)) == (n.ip, n.port)
        held = {n.id: (n.ip, n.port) for n in everyone}
        for bucket in router.buckets:
            entries = [*bucket.nodes.values(), *bucket.replacement_nodes.values()]
            per_host = Counter(host_of[n.ip] for n in entries if n.ip != "127.0.0.1")
            assert max(per_host.values(), default=0) <= router.admission.per_host == 2

    known = next(iter(router.contacts()))
    for impostor in (Node(known.id, "10.9.9.9", 4000), Node(rng.randbytes(20), known.ip, known.port)):
        assert router.refusal(impostor) in (Refusal.ID_ELSEWHERE, Refusal.ADDRESS_TAKEN)
        router.remove_contact(Node(known.id, "10.9.9.9", 4000))  # a dead address does not evict it
        assert known in list(router.contacts())


def test_a_contact_met_in_an_answer_enters_the_table_under_the_id_it_claims_itself():
    async def body():
        rng = random.Random(6)
        async with network(3, "identify", ksize=8) as nodes:
            asker, honest = nodes[0], nodes[2]
            fake = near(honest.identity.node_id, rng, 8)
            answer = [[fake, "127.0.0.1", honest.port], [rng.randbytes(20), "127.0.0.1", 9]]  # 9: nobody
            liar = await raw("127.0.0.2", rng, lambda name, args: answer if name.startswith("find") else ID)
            liar.call(asker.port, "ping", [ID])
            await asyncio.sleep(0.2)
            protocol = asker._server.protocol
            for contact_ in list(table(asker)):  # forget the honest node, so only the liar names it
                if contact_.id == honest.identity.node_id:
                    protocol.router.remove_contact(contact_)
            await NodeCrawl(protocol, Node(fake), [Node(ID, *liar.address)], 8, 3).find()
            await protocol.settle()
            where = {(n.ip, n.port): n.id for n in table(asker)}
            assert where[("127.0.0.1", honest.port)] == honest.identity.node_id  # its own id, not `fake`
            assert fake not in where.values()

    run(body())


def eclipse_answer(rng: random.Random, decoys: list[tuple[str, int]], per_answer: int) -> Answer:
    """Answer find_node / find_value with `per_answer` made-up ids near the key at `decoys` (hostile
    sockets that answer too, honest nodes, dead ports) and claim to have stored every store."""

    def answer(name: str, args: list) -> object:
        if name in ("find_node", "find_value"):
            return [[near(args[1], rng), *rng.choice(decoys)] for _ in range(per_answer)]
        return True if name == "store" else None

    return answer


def test_three_hostile_nodes_flooding_answers_with_ids_near_the_key_do_not_eclipse_it():
    """Issue 10, item 4: three nodes answer every lookup with 400 made-up ids near the key, pointing at
    the three of them, at honest nodes and at dead ports. Before the fix lookups here succeeded 73-96 %
    and took up to 1.5 s each (the issue: 17-33 %, republishing unfinished after 30 s)."""

    async def body():
        rng = random.Random(7)
        async with network(20, "eclipse") as nodes:
            await asyncio.gather(*(node.announce(tcp_port=7000) for node in nodes))
            decoys = [("127.0.0.1", node.port) for node in nodes[::4]] + [("127.0.0.1", 9)]
            hostile = []
            for h in range(3):
                hostile.append(await raw(f"127.0.0.{2 + h}", rng, eclipse_answer(rng, decoys, 400)))
                decoys.append(hostile[-1].address)
            for attacker in hostile:
                for node in nodes:  # join every routing table, under a real-looking id
                    attacker.call(node.port, "ping", [rng.randbytes(20)])
            await asyncio.sleep(0.3)
            nodes[0].clock.now += 1  # one clock for all
            await asyncio.gather(*(node.republish() for node in nodes))
            assert await success(nodes, rng, per_node=5) >= 0.95

    run(body(), timeout=90)


def test_one_socket_claiming_eighty_ids_next_to_the_keys_cannot_capture_them():
    """Issue 10, item 4 at k = 4: one socket pings every node under 80 ids, four next to each of 20
    peers' keys, and answers lookups with its other ids. Stock 2.2.3 took all 80 into every routing
    table and lookups succeeded 18-34 % here (23-46 % in the issue); now one address holds one id."""

    async def body():
        rng = random.Random(8)
        async with network(20, "sybil") as nodes:
            await asyncio.gather(*(node.announce(tcp_port=7000) for node in nodes))
            keys = [digest(peer_key(node.peer_id)) for node in nodes]
            ids = [(int.from_bytes(key, "big") ^ i).to_bytes(20, "big") for key in keys for i in (1, 2, 3, 4)]

            def answer(name: str, args: list) -> object:
                if name in ("find_node", "find_value"):
                    target = int.from_bytes(args[1], "big")
                    closest = sorted(ids, key=lambda i: int.from_bytes(i, "big") ^ target)[:4]
                    return [[i, *sybil.address] for i in closest]
                return {"ping": ids[0], "store": True}.get(name)

            sybil = await raw("127.0.0.2", rng, answer)
            for node in nodes:
                for sybil_id in ids:
                    sybil.call(node.port, "ping", [sybil_id])
            await asyncio.sleep(0.5)
            for node in nodes:
                assert sum((n.ip, n.port) == sybil.address for n in table(node)) <= 1
            nodes[0].clock.now += 1  # one clock for all
            await asyncio.gather(*(node.republish() for node in nodes))
            assert await success(nodes, rng, per_node=5) >= 0.95

    run(body(), timeout=90)


def test_a_lookup_into_an_endless_hostile_network_stops_within_its_budget():
    """A hydra: 120 hostile sockets; each answer names 4 sockets not named before, under ids closer to
    the key than any before, so every round finds closer 'nodes' at fresh addresses and a lookup
    would never converge. It stops at its query budget, with candidates left."""

    async def body():
        rng = random.Random(9)
        async with network(2, "hydra") as nodes:
            heads: list[Raw] = []
            named = iter(range(10**6))

            def answer(name: str, args: list) -> object:
                if not name.startswith("find"):
                    return ID if name == "ping" else None
                fresh = [next(named) for _ in range(4)]
                return [[near(args[1], rng, 16 + i // 4), *heads[i % len(heads)].address] for i in fresh]

            for h in range(120):
                heads.append(await raw(f"127.0.{1 + h // 100}.{1 + h % 100}", rng, answer))
            protocol = nodes[0]._server.protocol
            target = Node(rng.randbytes(20))
            start = [Node(rng.randbytes(20), *head.address) for head in heads[-4:]]
            crawl = NodeCrawl(protocol, target, start, 4, 3)
            found = await asyncio.wait_for(crawl.find(), 2 * LOOKUP_ROUNDS * RPC_TIMEOUT + 5)
            assert crawl.queries <= LOOKUP_QUERIES_PER_K * 4 and crawl.rounds <= LOOKUP_ROUNDS
            assert crawl.nearest.get_uncontacted()  # it stopped with "closer" nodes still to ask
            assert len(found) <= 4

    run(body())
