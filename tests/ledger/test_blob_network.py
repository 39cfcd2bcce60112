"""Blobs by content address over the network runtime: providers found on the DHT, verified transfer over
real sockets, re-serving by whoever verified a blob, and refusal (with a strike) of any other bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import torch

from ppaia import codec
from ppaia.ledger.client import content_hash
from ppaia.ledger.parties.storage import BlobPeer, BlobUnavailable, blob_key, cid_of_digest
from ppaia.network.content import cid_of
from ppaia.network.identity import Identity
from ppaia.network.transfer import ModelVersion

EXPECTED = {"0.weight": ((3, 4), torch.float32), "0.bias": ((3,), torch.float32)}


def model(seed: int) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    return codec.encode(
        {name: torch.randn(shape, generator=generator) for name, (shape, _) in EXPECTED.items()}
    )


@asynccontextmanager
async def peers(count: int) -> AsyncIterator[list[BlobPeer]]:
    """`count` blob peers on one DHT, the first its seed."""
    started: list[BlobPeer] = []
    try:
        for i in range(count):
            peer = BlobPeer(Identity.generate(), EXPECTED, timeout=5.0)
            await peer.start([started[0].dht_address] if i else [])
            started.append(peer)
        yield started
    finally:
        for peer in started:
            await peer.stop()


def run(coroutine) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 60))


def test_a_blob_is_fetched_by_its_hash_and_served_again_by_whoever_verified_it():
    async def scenario() -> None:
        async with peers(3) as (author, first, second):
            data = model(0)
            digest = await author.put(data)
            assert digest == content_hash(data) and blob_key(digest)[0] < 2**40
            assert await first.get(digest) == data
            assert [f.provider for f in first.stats.fetches] == [author.peer_id]
            await author.stop()  # the author is gone: the blob lives on at the party that verified it
            assert await second.get(digest) == data
            assert [f.provider for f in second.stats.fetches] == [first.peer_id]
            assert first.server.served["model"] == 1

    run(scenario())


def _other_model(digest: bytes, liar: BlobPeer) -> None:
    other = model(1)  # a valid model, but not the recorded one
    liar.server.add(ModelVersion(*blob_key(digest), cid_of(other), other, codec.expected_spec(EXPECTED)))


def _claims_the_recorded_cid(digest: bytes, liar: BlobPeer) -> None:
    other = model(2)  # its header names the recorded content; its body is other bytes
    liar.server.add(
        ModelVersion(*blob_key(digest), cid_of_digest(digest), other, codec.expected_spec(EXPECTED))
    )


def _not_a_model(digest: bytes, liar: BlobPeer) -> None:
    junk = bytes(range(256)) * 2  # announced as the model's tensors, decodes to nothing
    liar.server.add(ModelVersion(*blob_key(digest), cid_of(junk), junk, codec.expected_spec(EXPECTED)))


def _truncated(digest: bytes, liar: BlobPeer) -> None:
    cut = model(0)[:-8]  # the recorded model, short of its last bytes
    liar.server.add(ModelVersion(*blob_key(digest), cid_of(cut), cut, codec.expected_spec(EXPECTED)))


@pytest.mark.parametrize(
    ("serve", "reason"),
    [
        (_other_model, "wrong_cid"),
        (_claims_the_recorded_cid, "wrong_cid"),
        (_not_a_model, "bad_tensors"),
        (_truncated, "bad_tensors"),
    ],
)
def test_bytes_other_than_the_recorded_ones_are_refused_and_their_sender_struck(
    serve: Callable[[bytes, BlobPeer], None], reason: str
):
    async def scenario() -> None:
        async with peers(3) as (liar, fetcher, honest):
            data = model(0)
            digest = content_hash(data)  # what the ledger recorded
            serve(digest, liar)
            await liar.dht.provide(cid_of_digest(digest))
            with pytest.raises(BlobUnavailable):
                await fetcher.get(digest)
            assert fetcher.stats.refused == {reason: 1} and not fetcher.holds(digest)
            assert fetcher.strikes.is_banned(liar.peer_id)
            await honest.put(data)  # an honest provider appears: the liar is not asked again
            assert await fetcher.get(digest) == data
            assert [f.provider for f in fetcher.stats.fetches] == [honest.peer_id]
            assert fetcher.stats.refused == {reason: 1}

    run(scenario())


def test_a_party_serves_as_a_recorded_hash_only_what_hashes_to_it_unless_told_to_lie():
    async def scenario() -> None:
        async with peers(2) as (liar, fetcher):
            honest_bytes, other = model(0), model(1)
            recorded = content_hash(honest_bytes)
            assert await liar.put(other, serve_as=recorded) == recorded  # the misbehaving trainer's way
            with pytest.raises(BlobUnavailable):
                await fetcher.get(recorded)
            assert fetcher.stats.refused == {"wrong_cid": 1}
            with pytest.raises(codec.BlobError):
                await liar.put(b"not a model")  # a party serves only models of the run's layout

    run(scenario())
