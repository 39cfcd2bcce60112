"""DHT lookup success under the attacks of issue 10 (items 2 and 4), on 127.0.0.1, one event loop.

Honest nodes are `PeerDHT`s; attackers are bare UDP sockets on 127.0.0.2.. speaking rpcudp's framing.
After the network forms and every node announces itself, the attack runs, every node republishes, and
each node looks up 5 random others (`find_peer`). Printed per attack and seed: the share of lookups that
return the right address (one still running after 30 s counts as failed), the time republishing took
(or that it was unfinished after 60 s), and the mean and max time of one lookup.

- none: no attacker (n = 50, k = 20).
- bogus: one RPC per node with a malformed node id (1 byte) from a socket that answers everything, so
  its contact stays alive (n = 50, k = 20, the issue's k).
- eclipse: three nodes join every routing table, then answer every lookup with 1,500 made-up ids near
  the key, pointing at themselves, at honest nodes and at dead ports (n = 20, k = 4).
- sybil: one socket pings every node under 80 ids, four next to each of 20 peers' keys, and answers
  lookups with its own ids nearest the key (n = 20, k = 4).

It uses only the API that existed before the fix, so the pre-fix figures come from the same script:

    python benchmarks/dht_hostile.py [attack ...]
    mkdir /tmp/before && git archive <commit before the fix> src | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before/src python benchmarks/dht_hostile.py
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import statistics
import sys
import time
from collections.abc import Callable

import umsgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kademlia.utils import digest

from ppaia.network.dht import PeerDHT
from ppaia.network.identity import Identity
from ppaia.network.records import peer_key

SEEDS = (0, 1, 2)
LOOKUPS_PER_NODE = 5
RPC_TIMEOUT = 2.0  # as a peer's: shorter ones make honest nodes time out while the one loop is busy
REPUBLISH_BOUND = 60.0  # seconds; republishing still unfinished then is reported and the lookups go on
LOOKUP_BOUND = 30.0  # seconds; a lookup still running then counts as failed
START = 1_700_000_000.0
Answer = Callable[[str, list], object]


class Clock:
    now = START

    def __call__(self) -> float:
        return self.now


class Attacker(asyncio.DatagramProtocol):
    """A UDP socket answering rpcudp requests with `answer(name, args)` (None: silence)."""

    def __init__(self, answer: Answer, rng: random.Random) -> None:
        self.answer, self.rng = answer, rng

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:
        self.transport = transport
        self.address = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if data[:1] == b"\x00":
            name, args = umsgpack.unpackb(data[21:])
            reply = self.answer(name, args)
            if reply is not None:
                self.transport.sendto(b"\x01" + data[1:21] + umsgpack.packb(reply), addr)

    async def call(self, port: int, name: str, args: list) -> None:
        self.transport.sendto(
            b"\x00" + self.rng.randbytes(20) + umsgpack.packb([name, args]), ("127.0.0.1", port)
        )
        await asyncio.sleep(0.001)  # pace the burst: a full socket buffer drops datagrams


async def attacker(host: str, rng: random.Random, answer: Answer) -> Attacker:
    _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Attacker(answer, rng), local_addr=(host, 0)
    )
    return protocol


def near(key: bytes, rng: random.Random, prefix_bits: int = 24) -> bytes:
    return (int.from_bytes(key, "big") ^ rng.getrandbits(160 - prefix_bits)).to_bytes(20, "big")


async def bogus(nodes: list[PeerDHT], rng: random.Random, ksize: int) -> list[Attacker]:
    sock = await attacker("127.0.0.2", rng, lambda name, args: {"ping": b"\x01", "store": True}.get(name, []))
    calls = [
        ["ping", [b"\x01"]],
        ["find_node", [b"\x01", rng.randbytes(20)]],
        ["find_value", [b"\x01", rng.randbytes(20)]],
    ]
    for index, node in enumerate(nodes):
        await sock.call(node.port, *calls[index % 3])
    return [sock]


async def eclipse(nodes: list[PeerDHT], rng: random.Random, ksize: int) -> list[Attacker]:
    decoys = [("127.0.0.1", node.port) for node in nodes[::4]] + [("127.0.0.1", 9)]  # 9: nobody there

    def answer(name: str, args: list) -> object:
        if name in ("find_node", "find_value"):
            return [[near(args[1], rng), *rng.choice(decoys)] for _ in range(1500)]
        return True if name == "store" else None

    socks = []
    for h in range(3):
        socks.append(await attacker(f"127.0.0.{2 + h}", rng, answer))
        decoys.append(socks[-1].address)
        for node in nodes:
            await socks[-1].call(node.port, "ping", [rng.randbytes(20)])
    return socks


async def sybil(nodes: list[PeerDHT], rng: random.Random, ksize: int) -> list[Attacker]:
    keys = [digest(peer_key(node.peer_id)) for node in nodes]
    ids = [(int.from_bytes(key, "big") ^ i).to_bytes(20, "big") for key in keys for i in (1, 2, 3, 4)][:80]

    def answer(name: str, args: list) -> object:
        if name in ("find_node", "find_value"):
            target = int.from_bytes(args[1], "big")
            return [
                [i, *sock.address]
                for i in sorted(ids, key=lambda i: int.from_bytes(i, "big") ^ target)[:ksize]
            ]
        return {"ping": ids[0], "store": True}.get(name)

    sock = await attacker("127.0.0.2", rng, answer)
    for node in nodes:
        for sybil_id in ids:
            await sock.call(node.port, "ping", [sybil_id])
    return [sock]


async def nothing(nodes: list[PeerDHT], rng: random.Random, ksize: int) -> list[Attacker]:
    return []


ATTACKS = {
    "none": (nothing, 50, 20),
    "bogus": (bogus, 50, 20),
    "eclipse": (eclipse, 20, 4),
    "sybil": (sybil, 20, 4),
}


async def scenario(name: str, seed: int) -> str:
    attack, count, ksize = ATTACKS[name]
    rng, clock, nodes = random.Random(seed), Clock(), []
    socks: list[Attacker] = []
    try:
        for index in range(count):
            key = hashlib.sha256(f"{seed}/{index}".encode()).digest()
            node = PeerDHT(
                Identity(Ed25519PrivateKey.from_private_bytes(key)), ttl=60, clock=clock, ksize=ksize,
                rpc_timeout=RPC_TIMEOUT,
            )  # fmt: skip
            await node.start("127.0.0.1", 0, bootstrap=[("127.0.0.1", other.port) for other in nodes[:2]])
            nodes.append(node)
        await asyncio.gather(*(node.announce(tcp_port=7000) for node in nodes))
        socks = await attack(nodes, rng, ksize)
        await asyncio.sleep(0.5)
        clock.now += 1
        tick = time.perf_counter()
        republishing = asyncio.gather(*(node.republish() for node in nodes))
        done, _ = await asyncio.wait([republishing], timeout=REPUBLISH_BOUND)
        republish = (
            f"{time.perf_counter() - tick:.1f} s" if done else f"unfinished after {REPUBLISH_BOUND:.0f} s"
        )
        found, took = 0, []
        for index, node in enumerate(nodes):
            for other in rng.sample([o for o in range(count) if o != index], LOOKUPS_PER_NODE):
                tick = time.perf_counter()
                with contextlib.suppress(TimeoutError):
                    record = await asyncio.wait_for(node.find_peer(nodes[other].peer_id), LOOKUP_BOUND)
                    found += record is not None and record.udp_port == nodes[other].port
                took.append(time.perf_counter() - tick)
        republishing.cancel()
        return (
            f"{name:8} seed {seed}: success {found}/{len(took)} ({100 * found / len(took):.0f} %) · "
            f"republish {republish} · lookup mean {1000 * statistics.mean(took):.0f} ms, "
            f"max {1000 * max(took):.0f} ms"
        )
    finally:
        for sock in socks:
            sock.transport.close()
        for node in nodes:
            await node.stop()


async def main(names: list[str]) -> None:
    logging.disable(logging.CRITICAL)  # the attacks make every node log
    for name in names:
        for seed in SEEDS:
            print(await scenario(name, seed), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or list(ATTACKS)))
