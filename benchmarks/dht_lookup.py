"""DHT lookup latency: 100 in-process `PeerDHT` nodes on 127.0.0.1, one event loop, real UDP sockets.

Every node bootstraps from one of two seeds and announces itself; then 200 `find_peer` lookups, each
from a random node for a random other peer, run one after another. Prints set-up time, the median, p95
and max lookup latency and the success rate (a lookup succeeds when it returns the right peer's
address); then the same for `find_providers` of a topic that 10 peers provide.

Latency here is protocol and Python overhead only (loopback, no packet loss); all nodes share one
core's event loop, so it is an upper bound on per-node CPU cost rather than a network measurement.

    python benchmarks/dht_lookup.py
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import time
from collections.abc import Awaitable, Callable

from ppaia.network.dht import PeerDHT
from ppaia.network.identity import Identity

NODES = 100
LOOKUPS = 200
PROVIDERS = 10
PROVIDER_LOOKUPS = 50
TOPIC = "model:bench"


async def timed(lookups: int, lookup: Callable[[], Awaitable[bool]]) -> tuple[list[float], int]:
    """Milliseconds of each of `lookups` sequential calls, and how many returned True."""
    latencies, successes = [], 0
    for _ in range(lookups):
        tick = time.perf_counter()
        successes += await lookup()
        latencies.append((time.perf_counter() - tick) * 1000)
    return latencies, successes


def report(name: str, latencies: list[float], successes: int) -> None:
    ordered, count = sorted(latencies), len(latencies)
    p95 = ordered[round(0.95 * (count - 1))]
    print(
        f"{name}: {count} lookups · median {statistics.median(ordered):.2f} ms · p95 {p95:.2f} ms · "
        f"max {ordered[-1]:.2f} ms · success {successes}/{count} ({100 * successes / count:.1f}%)"
    )


async def main() -> None:
    logging.disable(logging.WARNING)  # rpcudp/kademlia log every RPC at INFO and up
    rng = random.Random(0)
    nodes = [PeerDHT(Identity.generate()) for _ in range(NODES)]
    try:
        tick = time.perf_counter()
        for index, node in enumerate(nodes):
            seed = nodes[index % 2 if index >= 2 else 0]  # two seeds; the first node has nobody to join
            await node.start("127.0.0.1", 0, bootstrap=[("127.0.0.1", seed.port)] if index else ())
        joined = time.perf_counter() - tick
        announced = await asyncio.gather(*(node.announce(tcp_port=9000 + i) for i, node in enumerate(nodes)))
        setup = time.perf_counter() - tick
        print(
            f"{NODES} nodes: joined in {joined:.2f} s, set-up with announcements {setup:.2f} s "
            f"({sum(announced)}/{NODES} announcements stored remotely); "
            f"routing tables hold {statistics.mean(n.neighbor_count for n in nodes):.1f} contacts on average"
        )

        async def find_peer() -> bool:
            asker, wanted = rng.sample(range(NODES), 2)
            record = await nodes[asker].find_peer(nodes[wanted].peer_id)
            return record is not None and (record.udp_port, record.tcp_port) == (
                nodes[wanted].port,
                9000 + wanted,
            )

        report("find_peer", *await timed(LOOKUPS, find_peer))

        await asyncio.gather(*(node.provide(TOPIC) for node in rng.sample(nodes, PROVIDERS)))

        async def find_providers() -> bool:
            return len(await rng.choice(nodes).find_providers(TOPIC)) == PROVIDERS

        report(f"find_providers ({PROVIDERS} providers)", *await timed(PROVIDER_LOOKUPS, find_providers))
    finally:
        for node in nodes:
            await node.stop()


if __name__ == "__main__":
    asyncio.run(main())
