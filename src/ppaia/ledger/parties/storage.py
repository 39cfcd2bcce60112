"""Models peer to peer by content address: the IPFS role of the ledger systems, on the network runtime.

Every ledger party runs a :class:`BlobPeer`: a :class:`~ppaia.network.transfer.ModelServer` that serves
the blobs it holds, and a :class:`~ppaia.network.dht.PeerDHT` on which it lists itself as a provider of
each (a :class:`~ppaia.network.records.ProviderRecord` under the blob's CID). To fetch a blob named by
the SHA-256 digest the ledger recorded, a party looks up its providers and asks them in a random order
(seeded by its own id) until one hands over the verified bytes; it then serves the blob itself and says
so on the DHT, so a popular model is not fetched from its author alone, as in a torrent.

**Addressing.** The transfer protocol names what it serves by a (round, step) pair of 40-bit integers.
A blob's pair is the first 80 bits of its digest (:func:`blob_key`), so the existing signed, paced,
bounded transfer carries blobs unchanged; the whole CID is then checked: the server's signed header
names the CID of the body it sends, :func:`~ppaia.network.transfer.fetch_model` verifies the body
against it, and :meth:`BlobPeer.get` accepts it only if that CID is the one the ledger recorded. A
sender whose bytes are not the recorded ones (another blob, or a non-canonical encoding of the right
tensors) is refused with ``wrong_cid`` and struck; after repeated strikes it is banned, and its blobs
are no longer asked for. Verified bytes are what the party re-serves, byte for byte.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from multiformats import CID, multihash

from ppaia import codec
from ppaia.ledger.client import content_hash
from ppaia.network.content import cid_of
from ppaia.network.dht import PeerDHT, parse_address
from ppaia.network.errors import NetworkError, ProtocolError, Reason
from ppaia.network.identity import Identity
from ppaia.network.strikes import Strikes
from ppaia.network.transfer import BanList, ModelServer, ModelVersion, NotReady, fetch_model

__all__ = ["BlobPeer", "BlobServer", "BlobUnavailable", "Fetch", "blob_key", "cid_of_digest"]

log = logging.getLogger(__name__)

LOCAL_HOSTS = frozenset({"127.0.0.1", "::1"})  # co-located parties share these addresses: no strikes
KEY_BYTES = 5  # 40 bits per half of a blob's (round, step) key


class BlobUnavailable(NetworkError):
    """No provider handed over a blob's verified bytes (none listed, all failed or refused)."""


def blob_key(digest: bytes) -> tuple[int, int]:
    """The (round, step) under which a blob with SHA-256 `digest` is served: its first 80 bits."""
    if len(digest) != 32:
        raise ValueError(f"a blob digest has 32 bytes, not {len(digest)}")
    return int.from_bytes(digest[:KEY_BYTES]), int.from_bytes(digest[KEY_BYTES : 2 * KEY_BYTES])


def cid_of_digest(digest: bytes) -> str:
    """The CID (raw, sha2-256, base32) of the content whose SHA-256 is `digest`: the DHT topic."""
    return str(CID("base32", 1, "raw", multihash.wrap(bytes(digest), "sha2-256")))


class BlobServer(ModelServer):
    """A :class:`ModelServer` that serves any number of blobs under their :func:`blob_key`, in no order.

    The base server keeps a peer's last few versions, each newer than the one before; a blob store keeps
    every blob it took in, and their keys are hashes. Only :meth:`add` differs.
    """

    def add(self, version: ModelVersion) -> ModelVersion:
        self._versions[(version.round, version.step)] = version
        return version


@dataclass(frozen=True)
class Fetch:
    """One blob fetched: from which provider, how many bytes, how long it took (seconds)."""

    digest: str  # hex
    provider: str  # peer id
    size: int
    seconds: float


@dataclass
class BlobStats:
    """What a party moved: its fetches (by provider) and the refusals of what providers sent."""

    fetches: list[Fetch] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)  # by reason
    unavailable: int = 0


class BlobPeer:
    """One party's content-addressed blob store on the network: serve, provide, find, fetch, verify.

    `expected` is the model every blob decodes to (the ledger's blobs are all models of one layout);
    `max_bytes` bounds what a provider may announce. Start it with :meth:`start` (seeds: ``host:port``
    of DHT nodes already running; none for the first party) and :meth:`stop` it at the end.
    """

    def __init__(
        self,
        identity: Identity,
        expected: codec.Expected,
        *,
        host: str = "127.0.0.1",
        max_bytes: int = 64 << 20,
        timeout: float = 10.0,
        dht_ttl: float = 60.0,
        rpc_timeout: float = 2.0,
    ) -> None:
        self.identity = identity
        self.expected = expected
        self.host = host
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.bans = BanList(max_strikes=1)  # a provider that sent bytes other than the recorded ones
        self.strikes = Strikes(0, self.bans)
        self.server = BlobServer(identity, host, 0, bans=self.bans, shared_addresses=LOCAL_HOSTS)
        self.dht = PeerDHT(identity, ttl=dht_ttl, rpc_timeout=rpc_timeout)
        self.stats = BlobStats()
        self._blobs: dict[bytes, bytes] = {}
        self._order = random.Random(identity.peer_id)  # which provider to ask first: spread the load

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def dht_address(self) -> str:
        """``host:port`` of this party's DHT node: a seed for the parties that start after it."""
        return f"{self.host}:{self.dht.port}"

    async def start(self, seeds: Sequence[str] = (), *, dht_port: int = 0, join_within: float = 30.0) -> None:
        """Serve on a free TCP port, join the DHT through `seeds` (retried while they start), and
        announce where this party listens."""
        await self.server.start()
        await self.dht.start(self.host, dht_port)
        if seeds:
            addresses = [parse_address(seed) for seed in seeds]
            deadline = time.monotonic() + join_within
            while not await self.dht.bootstrap(addresses):
                if time.monotonic() > deadline:
                    await self.dht.wait_joined(addresses, 0)  # raises BootstrapError naming the seeds
                await asyncio.sleep(0.2)
        await self.dht.announce(self.server.port, self.host)

    async def stop(self) -> None:
        await self.dht.stop()
        await self.server.stop()

    def holds(self, digest: bytes) -> bool:
        return bytes(digest) in self._blobs

    async def put(self, data: bytes, *, serve_as: bytes | None = None) -> bytes:
        """Hold, serve and provide the model blob `data`; returns its digest (what goes on chain).

        `serve_as` is for tests of misbehaving parties only: serve `data` under another digest's key and
        provide that digest, as a party that records one hash and serves other bytes does."""
        data = bytes(data)
        tensors = codec.decode(data, self.expected)  # only models of the run's layout are served
        digest = content_hash(data)
        named = digest if serve_as is None else bytes(serve_as)
        round_, step = blob_key(named)
        self.server.add(ModelVersion(round_, step, cid_of(data), data, codec.tensor_spec(tensors)))
        self._blobs[named] = data
        await self.dht.provide(cid_of_digest(named))
        return named

    async def get(self, digest: bytes) -> bytes:
        """The blob whose SHA-256 is `digest`, verified, from this store or from a provider; then served
        and provided by this party too. BlobUnavailable if no provider hands over the right bytes."""
        digest = bytes(digest)
        if digest in self._blobs:
            return self._blobs[digest]
        cid = cid_of_digest(digest)
        providers = [p for p in await self.dht.find_providers(cid) if p.peer_id != self.peer_id]
        self._order.shuffle(providers)
        round_, step = blob_key(digest)
        for provider in providers:
            if self.strikes.is_banned(provider.peer_id):
                continue
            started = time.perf_counter()
            try:
                fetched = await fetch_model(
                    provider.host,
                    provider.tcp_port,
                    identity=self.identity,
                    round=round_,
                    step=step,
                    expected=self.expected,
                    max_bytes=self.max_bytes,
                    timeout=self.timeout,
                    expect_sender=provider.peer_id,
                )
                if fetched.cid != cid:
                    raise ProtocolError(
                        Reason.WRONG_CID, f"sent {fetched.cid} for {cid}, the content the ledger recorded"
                    )
                data = codec.encode(fetched.tensors)
                if cid_of(data) != cid:  # the recorded bytes are not the canonical encoding of a model
                    raise ProtocolError(Reason.BAD_TENSORS, f"{cid} is not a model in canonical form")
            except NotReady:
                continue  # its provider record outlived the blob (it restarted): ask the next one
            except ProtocolError as err:
                self.stats.refused[err.reason] += 1
                self.strikes.reject(0, provider.peer_id, err, what=f"blob {cid}")
                continue
            self.stats.fetches.append(
                Fetch(digest.hex(), provider.peer_id, len(data), time.perf_counter() - started)
            )
            await self.put(data)
            return data
        self.stats.unavailable += 1
        raise BlobUnavailable(f"no provider of {cid} handed over its verified bytes ({len(providers)} asked)")
