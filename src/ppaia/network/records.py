"""Signed, expiring DHT records: where a peer listens (`PeerRecord`) and who provides a topic
(`ProviderRecord`).

The stock Kademlia package stores one anonymous value per key, so any node could overwrite or forge
it. Here every value is a *record set*: records signed by the peer they describe, each with an expiry,
merged per signer (the newest `issued` wins). Storing nodes and readers verify every record, so a
forged or stale record is refused by the first and ignored by the second.

**Nobody wins by dating a claim.** A record may lie at most `MAX_CLOCK_SKEW` seconds in a reader's
future, and a record's `issued` time orders only that signer's own records (a newer one replaces an
older one). Storing nodes keep the signers of a key in the order their claims *arrived* (`in_order`),
so which claimant came first is something the storing nodes witnessed, not something a signature says.

Encoding is u-msgpack (already rpcudp's wire format; never pickle). A record's signature covers its
exact `body` bytes, which start with a domain tag so a DHT signature can never be replayed as a
signature of anything else the same key signs. A value must fit in one rpcudp request, so
`MAX_VALUE_BYTES` is 8,192 bytes minus the `store` call's framing.
"""

from __future__ import annotations

import dataclasses
import functools
import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Self

import umsgpack

from ppaia.network.errors import NetworkError
from ppaia.network.identity import Identity, peer_id_of, verify_signature

__all__ = [
    "MAX_PROVIDERS",
    "MAX_VALUE_BYTES",
    "PeerRecord",
    "ProviderRecord",
    "Record",
    "RecordError",
    "RecordTooLarge",
    "decode_record",
    "decode_records",
    "encode_records",
    "freshest",
    "in_order",
    "peer_key",
    "providers_key",
    "valid_records",
]

DOMAIN = "ppaia/dht/1"
PEER_PREFIX = "peer:"
PROVIDERS_PREFIX = "providers:"
MAX_REQUEST_BYTES = 8192  # rpcudp refuses to send a request whose packed [name, args] is larger
_STORE_FRAMING = len(umsgpack.packb(["store", [bytes(20), bytes(20), bytes(256)]])) - 256
MAX_VALUE_BYTES = MAX_REQUEST_BYTES - _STORE_FRAMING  # 8,137: the largest value a `store` RPC carries
MAX_PROVIDERS = 20  # signers a storing node keeps per key, the earliest to arrive
MAX_TTL = 86_400.0  # a record may not claim to live longer than a day
# Seconds a record's `issued` may lie in the reader's future. NTP keeps hosts within milliseconds and
# even a clock left unsynchronised for days drifts by a few seconds, while every second allowed here is
# a second an attacker's claim can look "newer" than an honest one issued at the same moment.
MAX_CLOCK_SKEW = 5.0
_BODY_FIELDS = 9


class RecordError(NetworkError):
    """A record or record set that is malformed, forged, expired or stored under the wrong key."""


class RecordTooLarge(RecordError):
    """A value that would not fit in one rpcudp `store` request."""


def peer_key(peer_id: str) -> str:
    """The DHT key of a peer's `PeerRecord` (`peer:<40 hex>`); ValueError for a malformed peer id."""
    if not isinstance(peer_id, str) or len(peer_id) != 40 or not set(peer_id) <= set(string.hexdigits):
        raise ValueError(f"a peer id is 40 hex characters, got {peer_id!r}")
    return PEER_PREFIX + peer_id.lower()


def providers_key(topic: str) -> str:
    """The DHT key under which the providers of `topic` (a model CID, a swarm name...) are listed."""
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"a topic is a non-empty string, got {topic!r}")
    return PROVIDERS_PREFIX + topic


@dataclass(frozen=True, kw_only=True)
class _AddressRecord:
    """Fields and checks shared by both record kinds: who signed, where it listens, how long it holds."""

    peer_id: str
    public_key: bytes
    host: str
    udp_port: int
    tcp_port: int
    issued: float
    expires: float
    signature: bytes = b""

    @property
    def key(self) -> str:
        """The DHT key this record is stored under."""
        raise NotImplementedError

    @classmethod
    def _create(cls, identity: Identity, *, now: float, ttl: float, **fields: object) -> Self:
        unsigned = cls(
            peer_id=identity.peer_id,
            public_key=identity.public_key,
            issued=float(now),
            expires=float(now) + float(ttl),
            **fields,
        )
        record = dataclasses.replace(unsigned, signature=identity.sign(unsigned.body))
        record.check(now)
        return record

    @functools.cached_property
    def body(self) -> bytes:
        """The exact bytes the signature covers (computed once: records are immutable)."""
        return umsgpack.packb(
            [
                DOMAIN,
                self.key,
                self.peer_id,
                self.public_key,
                self.host,
                self.udp_port,
                self.tcp_port,
                self.issued,
                self.expires,
            ]
        )

    @functools.cached_property
    def signed(self) -> bytes:
        """The record with its signature, as stored in the DHT (see `decode_record`)."""
        return umsgpack.packb([self.body, self.signature])

    def check(self, now: float) -> None:
        """Raise RecordError unless the record is well signed by its peer and live at unix time `now`."""
        if self.peer_id != peer_id_of(self.public_key):
            raise RecordError(f"{self.key}: peer id {self.peer_id} does not belong to the record's key")
        if not self.host or not 0 < self.udp_port < 65536 or not 0 < self.tcp_port < 65536:
            raise RecordError(
                f"{self.key}: bad address {self.host!r} udp {self.udp_port} tcp {self.tcp_port}"
            )
        if not self.issued < self.expires <= self.issued + MAX_TTL:
            raise RecordError(
                f"{self.key}: lifetime {self.expires - self.issued:.0f} s is not in (0, {MAX_TTL:.0f}]"
            )
        if self.issued > now + MAX_CLOCK_SKEW:
            raise RecordError(f"{self.key}: issued {self.issued - now:.0f} s in the future")
        if self.expires <= now:
            raise RecordError(f"{self.key}: expired {now - self.expires:.0f} s ago")
        if not verify_signature(self.public_key, self.signature, self.body):
            raise RecordError(f"{self.key}: bad signature from {self.peer_id}")

    def verify(self, now: float) -> bool:
        """Whether `check(now)` passes."""
        try:
            self.check(now)
        except RecordError:
            return False
        return True


@dataclass(frozen=True, kw_only=True)
class PeerRecord(_AddressRecord):
    """Where peer `peer_id` listens: its DHT (UDP) port and its transfer (TCP) port on `host`."""

    @property
    def key(self) -> str:
        """`peer:<peer_id>`."""
        return peer_key(self.peer_id)

    @classmethod
    def create(
        cls, identity: Identity, *, host: str, udp_port: int, tcp_port: int, now: float, ttl: float
    ) -> PeerRecord:
        """`identity`'s signed record, issued at `now` and valid for `ttl` seconds."""
        return cls._create(identity, now=now, ttl=ttl, host=host, udp_port=udp_port, tcp_port=tcp_port)


@dataclass(frozen=True, kw_only=True)
class ProviderRecord(_AddressRecord):
    """Peer `peer_id` provides `topic` and can be reached at the record's address."""

    topic: str

    @property
    def key(self) -> str:
        """`providers:<topic>`."""
        return providers_key(self.topic)

    @classmethod
    def create(
        cls,
        identity: Identity,
        *,
        topic: str,
        host: str,
        udp_port: int,
        tcp_port: int,
        now: float,
        ttl: float,
    ) -> ProviderRecord:
        """`identity`'s signed claim to provide `topic`, issued at `now` and valid for `ttl` seconds."""
        return cls._create(
            identity, now=now, ttl=ttl, topic=topic, host=host, udp_port=udp_port, tcp_port=tcp_port
        )


Record = PeerRecord | ProviderRecord

_FIELD_TYPES = (str, str, str, bytes, str, int, int, float, float)


def decode_record(data: bytes) -> Record:
    """The record encoded by `Record.signed`; RecordError if malformed (the signature is not checked)."""
    try:
        body, signature = umsgpack.unpackb(data)
        fields = umsgpack.unpackb(body)
    except (umsgpack.UnpackException, TypeError, ValueError, RecursionError) as error:  # deep nesting
        raise RecordError(f"undecodable record: {error!r}") from None
    if (
        not isinstance(signature, bytes)
        or not isinstance(fields, list)
        or len(fields) != _BODY_FIELDS
        or any(type(field) is not kind for field, kind in zip(fields, _FIELD_TYPES, strict=True))
        or fields[0] != DOMAIN
    ):
        raise RecordError("malformed record body")
    _, key, peer_id, public_key, host, udp_port, tcp_port, issued, expires = fields
    common = {
        "peer_id": peer_id,
        "public_key": public_key,
        "host": host,
        "udp_port": udp_port,
        "tcp_port": tcp_port,
        "issued": issued,
        "expires": expires,
        "signature": signature,
    }
    record: Record
    if key.startswith(PROVIDERS_PREFIX) and len(key) > len(PROVIDERS_PREFIX):
        record = ProviderRecord(topic=key[len(PROVIDERS_PREFIX) :], **common)
    elif key.startswith(PEER_PREFIX):
        record = PeerRecord(**common)
    else:
        raise RecordError(f"unknown record key {key[:60]!r}")
    try:
        canonical = record.key == key and record.body == body
    except ValueError:  # peer_key() refuses a malformed peer id
        canonical = False
    if not canonical:
        raise RecordError(f"record body does not match its key {key[:60]!r}")
    return record


def encode_records(records: Iterable[Record]) -> bytes:
    """One DHT value holding `records`; RecordTooLarge if it exceeds `MAX_VALUE_BYTES`."""
    records = list(records)
    value = umsgpack.packb([record.signed for record in records])
    if len(value) > MAX_VALUE_BYTES:
        name = records[0].key[:80] if records else "value"
        raise RecordTooLarge(
            f"{name}: {len(value):,} bytes is over the DHT's {MAX_VALUE_BYTES:,}-byte value limit "
            f"(rpcudp refuses requests over {MAX_REQUEST_BYTES:,} bytes); use a shorter host or topic"
        )
    return value


def decode_records(value: object) -> list[Record]:
    """The records of a DHT value; RecordError if it is not a record set (signatures are not checked)."""
    if not isinstance(value, bytes) or len(value) > MAX_VALUE_BYTES:
        raise RecordError("a record set is at most MAX_VALUE_BYTES of bytes")
    try:
        items = umsgpack.unpackb(value)
    except (umsgpack.UnpackException, RecursionError) as error:  # a hostile value may nest arrays deeply
        raise RecordError(f"undecodable record set: {error!r}") from None
    if not isinstance(items, list):
        raise RecordError("a record set is a list")
    return [decode_record(item) for item in items]


def freshest(records: Iterable[Record]) -> list[Record]:
    """The newest record (largest `issued`) per (key, signer), newest first."""
    newest: dict[tuple[str, str], Record] = {}
    for record in records:
        slot = (record.key, record.peer_id)
        if slot not in newest or record.issued > newest[slot].issued:
            newest[slot] = record
    return sorted(newest.values(), key=lambda record: record.issued, reverse=True)


def in_order(held: Iterable[Record], arriving: Iterable[Record], limit: int = MAX_PROVIDERS) -> list[Record]:
    """The record set a storing node keeps after `arriving` records reach it while it holds `held`.

    One record per (key, signer), signers in order of first arrival: a signer already held keeps its
    place and its newest record; a new signer joins at the end, and whoever does not fit (more than
    `limit` signers, or a set over `MAX_VALUE_BYTES`) is cut from the end. So claims that arrive later
    can never push out a claim the node already holds, however they are dated.
    """
    slots: dict[tuple[str, str], Record] = {}
    for record in (*held, *arriving):
        slot = (record.key, record.peer_id)
        if slot not in slots or record.issued > slots[slot].issued:
            slots[slot] = record  # a dict keeps the first insertion's place when a value is replaced
    kept = list(slots.values())[:limit]
    while len(kept) > 1 and len(umsgpack.packb([record.signed for record in kept])) > MAX_VALUE_BYTES:
        kept.pop()
    return kept


def valid_records(key: str, value: object, now: float) -> list[Record]:
    """The records of an untrusted `value` that belong under `key` and verify at `now`; [] if malformed.

    Readers use this on every answer: a node that returns garbage or forgeries just contributes nothing.
    """
    try:
        records = decode_records(value)
    except RecordError:
        return []
    return [record for record in records if record.key == key and record.verify(now)]
