"""The wire protocol: length-prefixed frames that carry signed JSON messages.

**Frames.** A frame is a 4-byte big-endian length followed by that many bytes. The reader states the
largest frame it accepts and refuses a longer one from its length alone, before reading the body.

**Messages.** A message is a JSON object in canonical form — keys sorted, no spaces, ASCII only, no
NaN — with ``domain`` (:data:`DOMAIN`, the protocol and its version), ``kind``, ``sender`` (peer id),
``key`` (hex Ed25519 public key), the fields of its kind, and ``sig``: the hex signature by ``key`` of
:func:`signed_bytes`. A message is accepted only if its domain is :data:`DOMAIN` (else
``wrong_domain``: another protocol, or a version this peer does not speak), it *is* canonical (so each
statement has exactly one byte form), fits its kind's schema exactly (no extra fields, JSON integers
only where integers are due, every number and list bounded), its ``sender`` is the peer id of its
``key`` and the signature verifies. Anything else raises :class:`ProtocolError`, whatever the bytes.

**Domain separation.** The signed bytes are ``<domain>/<kind>`` and a newline, then the canonical JSON of
every field but ``sig`` — e.g. ``ppaia/wire/1/request\n{"domain":...}``. They start with a fixed tag,
as a DHT record's signed body starts with ``ppaia/dht/1`` (:mod:`ppaia.network.records`), so a
signature made by the same key for a DHT record, for another message kind or for another version of
this protocol can never verify as this message.

**Kinds.** A model version is (round, step): a round may hold several mixing steps.

- ``request`` (client to server) — ``want`` "model" or "status", ``round``, ``step``, ``nonce`` (16 random
  bytes, hex). For "status", round and step are 0.
- ``model`` (reply: transfer header) — ``round``, ``step``, ``cid``, ``size`` (body bytes), ``chunk``
  (largest body frame), ``tensors`` (the model's spec, see :func:`ppaia.codec.tensor_spec`), ``nonce``
  (the request's). The body follows as frames of at most ``chunk`` bytes, ``size`` bytes in all.
- ``not_ready`` (reply) — ``round``, ``step`` (as requested), ``latest`` ([round, step] of the newest
  version the server holds, or null), ``nonce``.
- ``status`` (reply) — ``nonce``, ``info`` (a JSON object of at most :data:`MAX_INFO_BYTES`: the peer's
  status, which the receiver validates as a :class:`ppaia.network.status.PeerStatus`).
- ``view`` (reply to a request that wants "view": an open swarm's view exchange, see
  :mod:`ppaia.network.sampling`) — ``nonce``, ``records``: at most :data:`MAX_OFFER` members' own signed
  ``peer:`` records (hex of :attr:`ppaia.network.records.PeerRecord.signed`). The request carries the
  client's own offer of as many in ``offer`` (empty for the other wants).
- ``link`` (reply to a request that wants "link": an open swarm's overlay, see
  :mod:`ppaia.network.overlay`) — ``nonce``, ``linked`` (whether the server holds the link with the
  client now) and ``degree`` (its overlay degree now, at most :data:`MAX_DEGREE`). The request carries
  ``link``: ``op`` ("propose", "keep" or "drop") and the client's own ``degree``; a proposal also offers
  the client's own signed ``peer:`` record in ``offer``, so the server knows where it serves.

**Replays.** A reply must echo the nonce of the request it answers, so a recorded reply cannot be passed
off as a fresh one.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Collection, Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ppaia import strict_json
from ppaia.network.content import MAX_CID_CHARS, parse_cid
from ppaia.network.errors import ProtocolError, Reason
from ppaia.network.identity import Identity, peer_id_of, verify_signature

__all__ = [
    "DOMAIN",
    "KINDS",
    "MAX_DEGREE",
    "MAX_INFO_BYTES",
    "MAX_OFFER",
    "LinkClaim",
    "LinkReply",
    "Message",
    "ModelHeader",
    "NotReadyReply",
    "ProtocolError",
    "Request",
    "StatusReply",
    "ViewReply",
    "canonical",
    "open_message",
    "read_frame",
    "seal",
    "signed_bytes",
    "write_frame",
]

DOMAIN = "ppaia/wire/1"  # this protocol and its version: in every message, and heading its signed bytes
LENGTH = struct.Struct(">I")
MAX_FRAME = 2**32 - 1
MAX_VERSION = 2**40  # bound for round and step
MAX_MODEL_BYTES = 2**40
MAX_CHUNK = 64 << 20
MAX_TENSORS = 100_000
MAX_RANK = 16
MAX_DIM = 2**40
MAX_INFO_BYTES = 32 << 10
MAX_NESTING = 32  # JSON depth a message may have; deeper input could overflow the C parser's stack
MAX_OFFER = 8  # member records one view exchange carries each way (a Cyclon shuffle's length)
MAX_DEGREE = 64  # overlay links a peer may hold (its degree), as a link message can say it
MAX_RECORD_HEX = 1024  # hex characters of one signed record in a view exchange (a peer record is ~480)


async def read_frame(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    """The next frame's payload; ProtocolError "oversized" (body left unread), "closed" or "truncated"."""
    try:
        prefix = await reader.readexactly(LENGTH.size)
    except asyncio.IncompleteReadError as err:
        if not err.partial:
            raise ProtocolError(Reason.CLOSED, "the stream ended before a frame") from None
        raise ProtocolError(
            Reason.TRUNCATED, f"the stream ended {len(err.partial)} bytes into a length"
        ) from None
    (length,) = LENGTH.unpack(prefix)
    if length > max_bytes:
        raise ProtocolError(Reason.OVERSIZED, f"a frame of {length} bytes exceeds the limit of {max_bytes}")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as err:
        raise ProtocolError(
            Reason.TRUNCATED, f"the stream ended {len(err.partial)} bytes into a frame of {length}"
        ) from None


async def write_frame(writer: asyncio.StreamWriter, payload: bytes | bytearray | memoryview) -> None:
    """Send `payload` as one frame and wait until the transport's buffer has room again."""
    if len(payload) > MAX_FRAME:
        raise ValueError(f"a frame holds at most {MAX_FRAME} bytes, not {len(payload)}")
    writer.write(LENGTH.pack(len(payload)))
    writer.write(payload)
    await writer.drain()


def canonical(obj: Mapping[str, Any]) -> bytes:
    """The canonical JSON bytes of `obj`: keys sorted, compact, ASCII, no NaN or infinities."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def signed_bytes(unsigned: Mapping[str, Any]) -> bytes:
    """The bytes a message's signature covers: ``<DOMAIN>/<kind>``, a newline, then the canonical JSON of
    `unsigned` (the message without ``sig``). See the module docstring."""
    return f"{DOMAIN}/{unsigned.get('kind')}\n".encode() + canonical(unsigned)


def _small_json(info: dict[str, Any]) -> dict[str, Any]:
    if len(canonical(info)) > MAX_INFO_BYTES:
        raise ValueError(f"status info exceeds {MAX_INFO_BYTES} bytes")
    return info


Version = Annotated[int, Field(ge=0, le=MAX_VERSION)]
Nonce = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
PeerId = Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]
Cid = Annotated[str, Field(min_length=1, max_length=MAX_CID_CHARS)]
Size = Annotated[int, Field(ge=0, le=MAX_MODEL_BYTES)]
TensorName = Annotated[str, Field(min_length=1, max_length=256)]
DTypeName = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,32}$")]
Shape = Annotated[list[Annotated[int, Field(ge=0, le=MAX_DIM)]], Field(max_length=MAX_RANK)]
TensorsSpec = Annotated[dict[TensorName, tuple[DTypeName, Shape]], Field(max_length=MAX_TENSORS)]
RecordHex = Annotated[str, Field(pattern=rf"^(?:[0-9a-f]{{2}}){{1,{MAX_RECORD_HEX // 2}}}$")]
Records = Annotated[list[RecordHex], Field(max_length=MAX_OFFER)]


class Message(BaseModel):
    """A verified message: the fields every kind has. Subclasses add the kind's own fields."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    domain: Literal["ppaia/wire/1"]  # = DOMAIN
    kind: str
    sender: PeerId
    key: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    sig: Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]

    @property
    def public_key(self) -> bytes:
        """The sender's raw 32-byte Ed25519 public key."""
        return bytes.fromhex(self.key)


class LinkClaim(BaseModel):
    """What a client says about its overlay link with the server: `op` on it, and its own degree (links
    held, this one included when it holds or proposes it)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    op: Literal["propose", "keep", "drop"]
    degree: Annotated[int, Field(ge=0, le=MAX_DEGREE)]


class Request(Message):
    """A client's request for a model version, for the server's status, for a view exchange (then
    with the client's `offer` of member records) or about an overlay link (then with its `link`)."""

    kind: Literal["request"]
    want: Literal["model", "status", "view", "link"]
    round: Version
    step: Version
    nonce: Nonce
    offer: Records = []
    link: LinkClaim | None = None


class ModelHeader(Message):
    """The header of a model transfer; `size` bytes of body frames follow it."""

    kind: Literal["model"]
    round: Version
    step: Version
    cid: Cid
    size: Size
    chunk: Annotated[int, Field(ge=1, le=MAX_CHUNK)]
    tensors: TensorsSpec
    nonce: Nonce


class NotReadyReply(Message):
    """The server does not hold the requested version; it tells its newest one (None if it has none)."""

    kind: Literal["not_ready"]
    round: Version
    step: Version
    latest: tuple[Version, Version] | None
    nonce: Nonce


class StatusReply(Message):
    """The server's status: a small JSON object."""

    kind: Literal["status"]
    info: Annotated[dict[str, Any], AfterValidator(_small_json)]
    nonce: Nonce


class ViewReply(Message):
    """The server's side of a view exchange: member records from its view (its own among them)."""

    kind: Literal["view"]
    records: Records
    nonce: Nonce


class LinkReply(Message):
    """The server's answer about an overlay link: whether it holds it now, and its own degree."""

    kind: Literal["link"]
    linked: bool
    degree: Annotated[int, Field(ge=0, le=MAX_DEGREE)]
    nonce: Nonce


KINDS: dict[str, type[Message]] = {
    "request": Request,
    "model": ModelHeader,
    "not_ready": NotReadyReply,
    "status": StatusReply,
    "view": ViewReply,
    "link": LinkReply,
}


def _parse(data: bytes, kinds: Collection[str]) -> tuple[Message, dict[str, Any]]:
    """The message in `data`, schema-checked but not yet authenticated, and its JSON object."""
    try:
        text = bytes(data).decode("utf-8")
        obj = strict_json.loads(text, MAX_NESTING)
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ProtocolError(Reason.MALFORMED, f"not a JSON message: {str(err)[:200]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(Reason.MALFORMED, f"a message is a JSON object, not {type(obj).__name__}")
    domain = obj.get("domain")
    if domain != DOMAIN:
        raise ProtocolError(
            Reason.WRONG_DOMAIN, f"a message of domain {str(domain)[:40]!r}; this peer speaks {DOMAIN!r}"
        )
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ProtocolError(Reason.UNKNOWN_KIND, f"unknown message kind {str(kind)[:40]!r}")
    if kind not in kinds:
        raise ProtocolError(Reason.UNEXPECTED_KIND, f"a {kind!r} message where {sorted(kinds)} may come")
    try:
        is_canonical = canonical(obj) == text.encode()
    except ValueError:  # a number beyond float range parses as inf, which canonical JSON cannot hold
        is_canonical = False
    if not is_canonical:
        raise ProtocolError(Reason.MALFORMED, f"a {kind!r} message not in canonical JSON form")
    try:
        message = KINDS[kind].model_validate_json(text, strict=True)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])[:80]
        problem = f"a {kind!r} message with bad field {where}: {first['msg'][:200]}"
        raise ProtocolError(Reason.MALFORMED, problem) from None
    cid = getattr(message, "cid", None)
    if cid is not None and parse_cid(cid) != cid:
        raise ProtocolError(Reason.BAD_CID, f"CID {cid!r} is not in canonical base32 form")
    return message, obj


def open_message(data: bytes, kinds: Collection[str] = tuple(KINDS)) -> Message:
    """The verified message in `data` (one of `kinds`); ProtocolError for anything else.

    Reasons: "malformed" (not canonical JSON, or not the kind's schema), "wrong_domain" (another
    protocol or version), "unknown_kind", "unexpected_kind" (a kind not in `kinds`), "bad_cid",
    "bad_key" (sender is not the key's peer id), "bad_signature".
    """
    message, obj = _parse(data, kinds)
    if message.sender != peer_id_of(message.public_key):
        raise ProtocolError(
            Reason.BAD_KEY, f"sender {message.sender} is not the peer id of key {message.key}"
        )
    signed = signed_bytes({name: value for name, value in obj.items() if name != "sig"})
    if not verify_signature(message.public_key, bytes.fromhex(message.sig), signed):
        raise ProtocolError(
            Reason.BAD_SIGNATURE, f"a {message.kind!r} message whose signature does not verify"
        )
    return message


def seal(identity: Identity, kind: str, **fields: Any) -> bytes:
    """The canonical signed message of `kind` with `fields`, from `identity` (ValueError if invalid)."""
    if kind not in KINDS:
        raise ValueError(f"unknown message kind {kind!r}")
    if reserved := sorted({"domain", "sender", "key", "sig"} & set(fields)):
        raise ValueError(f"fields {reserved} are filled in by seal")
    unsigned = {
        **fields,
        "domain": DOMAIN,
        "kind": kind,
        "sender": identity.peer_id,
        "key": identity.public_key.hex(),
    }
    try:
        signature = identity.sign(signed_bytes(unsigned))
    except TypeError as err:  # a value JSON cannot hold
        raise ValueError(f"cannot seal this {kind!r} message: {err}") from None
    data = canonical({**unsigned, "sig": signature.hex()})
    try:
        _parse(data, (kind,))
    except ProtocolError as err:
        raise ValueError(f"cannot seal this {kind!r} message: {err}") from None
    return data
