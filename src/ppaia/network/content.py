"""Content ids: a model's bytes are named by their CIDv1 (raw codec, SHA2-256), as IPFS names a raw block.

A CID is self-verifying: whoever holds one can check any bytes claimed to be its content. Content ids
travel as base32 strings ("bafkrei..."); :func:`parse_cid` accepts exactly that one kind of CID, so a
remote peer cannot make us hash with another function or trust a truncated digest.
"""

from __future__ import annotations

import base64
import hashlib

from multiformats import CID

from ppaia.network.errors import ProtocolError, Reason

__all__ = ["MAX_CID_CHARS", "check_content", "cid_of", "parse_cid"]

RAW_CODEC = "raw"  # multicodec 0x55
HASH = "sha2-256"  # multihash 0x12
DIGEST_BYTES = 32
PREFIX = bytes([0x01, 0x55, 0x12, DIGEST_BYTES])  # version 1, raw, sha2-256, digest length
MAX_CID_CHARS = 128  # a base32 CIDv1 of a 32-byte digest has 59 characters


def _cid(digest: bytes) -> str:
    # multibase "b" (base32, lower case, no padding) written directly: multiformats' CID objects check
    # their arguments' types at run time, which costs more than hashing a small message
    return "b" + base64.b32encode(PREFIX + digest).decode("ascii").lower().rstrip("=")


def cid_of(data: bytes) -> str:
    """The CIDv1 (raw, sha2-256) of `data`, in base32."""
    return _cid(hashlib.sha256(data).digest())


def parse_cid(text: object) -> str:
    """`text` as a canonical base32 string if it is a raw sha2-256 CIDv1; else ProtocolError "bad_cid"."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_CID_CHARS:
        raise ProtocolError(Reason.BAD_CID, f"not a CID string: {str(text)[:MAX_CID_CHARS]!r}")
    try:
        cid = CID.decode(text)
        version, codec, hashfun, digest = cid.version, cid.codec.name, cid.hashfun.name, cid.raw_digest
    except Exception as err:  # multiformats raises many types (KeyError, ValueError, ...) for garbage
        raise ProtocolError(Reason.BAD_CID, f"unparsable CID {text!r}: {type(err).__name__}") from None
    if version != 1 or codec != RAW_CODEC or hashfun != HASH or len(digest) != DIGEST_BYTES:
        raise ProtocolError(
            Reason.BAD_CID, f"CID {text!r} is v{version}/{codec}/{hashfun}; only v1/raw/sha2-256 is accepted"
        )
    return _cid(digest)


def check_content(cid: str, data: bytes) -> None:
    """Raise ProtocolError "wrong_cid" unless `data` is the content that `cid` names."""
    actual = cid_of(data)
    if actual != cid:
        raise ProtocolError(Reason.WRONG_CID, f"content hashes to {actual}, not to the announced {cid}")
