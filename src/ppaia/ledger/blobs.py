"""Content-addressed model storage: the off-chain half of "models on IPFS, their hashes on Ethereum".

The ledger records only 32-byte digests; the models themselves live in a blob store and are named by
the SHA-256 of their bytes (:func:`ppaia.ledger.content_hash`). :class:`BlobStore` is an in-memory
stand-in for IPFS: like an IPFS node it hands out content by its hash, and like a careful IPFS client it
re-hashes whatever it returns, so a blob altered after it was stored is refused rather than trained on.
(IPFS names content by a multihash CID over a chunked DAG rather than a plain SHA-256 of the bytes; the
guarantee used here — content verified against the name the ledger recorded — is the same.)

Models travel as safetensors: a flat, code-free format (unlike pickle), so decoding untrusted bytes can
only yield tensors, which :func:`decode` then checks against the expected names, shapes and dtypes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ppaia.ledger.client import content_hash

__all__ = ["BlobError", "BlobStore", "decode", "encode"]

Expected = Mapping[str, tuple[tuple[int, ...] | torch.Size, torch.dtype]]


class BlobError(ValueError):
    """A blob that is missing, does not match its content hash, or is not the expected model."""


def encode(params: Mapping[str, torch.Tensor]) -> bytes:
    """A model's named tensors as safetensors bytes; the same tensors always give the same bytes."""
    tensors = {name: params[name].detach().cpu().contiguous().clone() for name in sorted(params)}
    return save_tensors(tensors)


def decode(data: bytes, expected: Expected) -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes, checked to be exactly `expected` (name -> (shape, dtype)), finite."""
    try:
        tensors = load_tensors(bytes(data))
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise BlobError(f"not a safetensors model: {err}") from None
    unknown = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    if unknown or missing:
        raise BlobError(f"tensor names differ from the model's: unknown {unknown}, missing {missing}")
    for name, (shape, dtype) in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(shape):
            raise BlobError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
        if tensor.dtype != dtype:
            raise BlobError(f"tensor {name!r} has dtype {tensor.dtype}, expected {dtype}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise BlobError(f"tensor {name!r} has non-finite values (NaN or inf)")
    return {name: tensors[name] for name in expected}


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
