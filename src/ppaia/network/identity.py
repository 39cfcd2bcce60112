"""A peer's identity: an Ed25519 key pair kept in its data directory; the peer id derives from the key.

The peer id is the first 20 bytes of SHA-256 of the raw public key (40 hex characters). Being 160 bits,
it is also the peer's Kademlia node id, so nobody can claim a DHT position without the matching key.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from ppaia.network.errors import NetworkError

__all__ = ["KEY_FILE", "Identity", "IdentityError", "peer_id_of", "verify_signature"]

KEY_FILE = "identity.key"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


class IdentityError(NetworkError):
    """A key file that is unreadable, malformed or readable by other users."""


def peer_id_of(public_key: bytes) -> str:
    """The peer id (40 hex characters) that belongs to a raw 32-byte Ed25519 public key."""
    return hashlib.sha256(bytes(public_key)).digest()[:20].hex()


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Whether `signature` is `public_key`'s Ed25519 signature of `data` (False for malformed input)."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), bytes(data))
    except (InvalidSignature, ValueError):
        return False
    return True


class Identity:
    """An Ed25519 private key with its public key and peer id."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key: bytes = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.peer_id: str = peer_id_of(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        """A fresh identity held in memory only (tests, throw-away peers)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, data_dir: str | Path) -> Identity:
        """The identity stored in `data_dir`, created there (file mode 0600) on first start."""
        path = Path(data_dir) / KEY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls._load(path)
        identity = cls.generate()
        with os.fdopen(descriptor, "wb") as file:
            file.write(identity._private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
        return identity

    @classmethod
    def _load(cls, path: Path) -> Identity:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise IdentityError(f"{path}: key file has mode {mode:o}; others must not read it (use 0600)")
        raw = path.read_bytes()
        if len(raw) != 32:
            raise IdentityError(f"{path}: expected a 32-byte Ed25519 private key, found {len(raw)} bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @property
    def node_id(self) -> bytes:
        """The 20-byte Kademlia node id (the peer id as bytes)."""
        return bytes.fromhex(self.peer_id)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `data`."""
        return self._private_key.sign(bytes(data))
