"""Where the other peers of a swarm serve, and which key plays each swarm index (pinning).

**Identity of indices.** With a members list (``--members``, written by ``ppaia launch``) index j is
played by the key the list names and nobody else. Without one, index j is pinned to the first claimant
the DHT's storing nodes agree on (a strict majority of them received its claim first), and while they
disagree nobody is pinned; a claim's issue time never decides. Once pinned, index j is found through
its peer's own ``peer:`` record, so later claimants of j are never followed. A restarted peer keeps its
id (its key is in its data directory), so it is recognised again.
"""

from __future__ import annotations

import asyncio
import logging

from ppaia.network.dht import Address, PeerDHT

__all__ = ["AddressBook", "index_topic"]

log = logging.getLogger(__name__)


def index_topic(swarm: str, index: int) -> str:
    """The DHT topic a peer provides to say "I play index `index` in swarm `swarm`"."""
    return f"{swarm}/peer/{index}"


class AddressBook:
    """The addresses of swarm `swarm`'s peers as this peer (index `me`) found them in `dht`, cached
    until :meth:`forget`, and `pinned`: swarm index -> the peer id that plays it (the members list's
    `pins`, then each index's agreed first holder once seen)."""

    def __init__(self, dht: PeerDHT, swarm: str, me: int, pins: dict[int, str]) -> None:
        self.dht = dht
        self.swarm = swarm
        self.me = me
        self.pinned = dict(pins)
        self._disputed: dict[int, frozenset[str]] = {}  # unpinned index -> its claimants, last logged
        self._addresses: dict[int, Address] = {}
        self._lookups: dict[int, asyncio.Future[Address | None]] = {}  # lookups still running, by index

    def forget(self, index: int) -> None:
        """Peer `index` is gone, restarted elsewhere, or someone else answers at its address: look it up
        again next time."""
        self._addresses.pop(index, None)

    async def address(self, index: int, timeout: float = 5.0) -> Address | None:
        """Where peer `index` serves, from the DHT (see `_locate`); None if not found within `timeout`
        seconds. A lookup that outlasts the timeout goes on in the background and the next call for
        the same index waits for it instead of starting another."""
        if index in self._addresses:
            return self._addresses[index]
        lookup = self._lookups.get(index)
        if lookup is None:
            lookup = self._lookups[index] = asyncio.ensure_future(self._locate(index))
        try:
            address = await asyncio.wait_for(asyncio.shield(lookup), max(timeout, 0.05))
        except TimeoutError:
            return None
        except Exception as err:  # a hostile or broken DHT answer must not stop the peer
            log.warning("peer %d: DHT lookup of peer %d failed: %r", self.me, index, err)
            return None
        finally:
            if lookup.done():  # consumed (or failed): the next call starts a fresh lookup
                self._lookups.pop(index, None)
        if address is not None:
            self._addresses[index] = address
        return address

    async def _locate(self, index: int) -> Address | None:
        """Peer `index`'s address. A pinned index (members list, or pinned before) is found through
        its peer's own `peer:` record, which no other key can publish. Otherwise the index is pinned to
        the provider of its topic that a strict majority of the storing nodes hold first; nobody is
        pinned while they disagree, and no claim wins by how it is dated."""
        pinned = self.pinned.get(index)
        if pinned is not None:
            record = await self.dht.find_peer(pinned)
            return None if record is None else (record.host, record.tcp_port)
        providers = await self.dht.lookup_providers(index_topic(self.swarm, index))
        first = providers.first
        if first is None:
            claimants = frozenset(record.peer_id for record in providers.records)
            if len(claimants) > 1 and self._disputed.get(index) != claimants:  # log each new dispute once
                self._disputed[index] = claimants
                log.warning(
                    "peer %d: %d keys claim index %d and the DHT does not agree which came first (%s); "
                    "not pinning it yet",
                    self.me, len(providers.records), index, dict(providers.firsts),
                )  # fmt: skip
            return None
        self.pinned[index] = first.peer_id
        others = [record.peer_id for record in providers.records if record.peer_id != first.peer_id]
        if others:
            log.warning(
                "peer %d: pinned index %d to %s, its first holder; ignoring later claims by %s",
                self.me, index, first.peer_id, others,
            )  # fmt: skip
        return first.host, first.tcp_port
