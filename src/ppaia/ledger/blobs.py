"""Content-addressed model storage: the off-chain half of "models on IPFS, their hashes on Ethereum".

The ledger records only 32-byte digests; the models themselves live in a blob store and are named by
the SHA-256 of their bytes (:func:`ppaia.ledger.content_hash`). :class:`BlobStore` is an in-memory
stand-in for IPFS: like an IPFS node it hands out content by its hash, and like a careful IPFS client it
re-hashes whatever it returns, so a blob altered after it was stored is refused rather than trained on.
(IPFS names content by a multihash CID over a chunked DAG rather than a plain SHA-256 of the bytes; the
guarantee used here — content verified against the name the ledger recorded — is the same.)

Models travel as safetensors, encoded and checked by :mod:`ppaia.codec`. This in-memory store serves the
single-process flows and their tests; the ledger systems as separate processes move blobs peer to peer over
the network runtime instead (:mod:`ppaia.ledger.parties.storage`).
"""

from __future__ import annotations

from ppaia.codec import BlobError
from ppaia.ledger.client import content_hash

__all__ = ["BlobStore"]


class BlobStore:
    """In-memory content-addressed store (a stand-in for IPFS): blobs named by their SHA-256."""

    def __init__(self) -> None:
        self._blobs: dict[bytes, bytes] = {}

    def put(self, data: bytes) -> bytes:
        """Store `data`; returns its content hash, the name to record on the ledger."""
        data = bytes(data)
        digest = content_hash(data)
        self._blobs[digest] = data
        return digest

    def get(self, digest: bytes) -> bytes:
        """The blob named `digest`, verified against it (BlobError if missing or altered)."""
        try:
            data = self._blobs[bytes(digest)]
        except KeyError:
            raise BlobError(f"no blob {bytes(digest).hex()} in the store") from None
        actual = content_hash(data)
        if actual != digest:
            raise BlobError(
                f"blob {bytes(digest).hex()} fails verification: its content hashes to {actual.hex()}"
            )
        return data

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, bytes | bytearray) and bytes(digest) in self._blobs

    def __len__(self) -> int:
        return len(self._blobs)
