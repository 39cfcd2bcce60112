"""The network package's errors: one root class, :class:`NetworkError`, and the reason codes of refusals.

Everything the network code raises for a cause outside the program — input from a peer or a DHT node,
a file in a data directory, an address or file a user gave, a swarm that runs another config — is a
:class:`NetworkError`, so a caller (the CLI) can report it as such while a bug (a plain ``ValueError``,
``TypeError``...) stays a bug with its traceback.
"""

from __future__ import annotations

import os
from enum import StrEnum
from typing import Literal

__all__ = [
    "AddressError",
    "AgreementError",
    "ListenError",
    "NetworkError",
    "ProtocolError",
    "Reason",
    "format_address",
]


class NetworkError(Exception):
    """The root of the network package's errors (see the module docstring)."""


class Reason(StrEnum):
    """Why a message, a transfer, a status or a connection was refused: the ``reason`` of a
    :class:`ProtocolError` (the DHT's own are :class:`ppaia.network.dht.Refusal`). Short stable codes,
    for counting, banning and the log.

    Wire (frames and messages): CLOSED, TRUNCATED, OVERSIZED, MALFORMED, UNKNOWN_KIND, UNEXPECTED_KIND,
    WRONG_DOMAIN, BAD_KEY, BAD_SIGNATURE. Replies: WRONG_SENDER, REPLAY, WRONG_VERSION, BAD_CID,
    WRONG_CID, BAD_TENSORS, BAD_STATUS, BAD_RECORD (an open swarm's view exchange), BAD_LINK and
    LINK_FLOOD (an open swarm's overlay links, :mod:`ppaia.network.overlay`).

    Server side, held against the remote address as a strike: IDLE, SLOW_REQUEST, SLOW_READER,
    CROWDED. Not strikes (capacity, or not the client's doing): BUSY, BANNED, EVICTED, DISCONNECTED,
    INTERNAL, CLOSED. Client side: TIMEOUT (the caller's deadline, or not a byte of reply within a pace
    window: the peer may be hung or gone), SLOW_SENDER (the reply started, then came slower than the
    pace: a deliberate or broken trickle), UNREACHABLE.
    """

    CLOSED = "closed"  # the stream ended before a frame
    TRUNCATED = "truncated"  # the stream ended inside a frame
    OVERSIZED = "oversized"  # a frame, model or header larger than allowed
    MALFORMED = "malformed"  # not canonical JSON, or not the kind's schema
    UNKNOWN_KIND = "unknown_kind"
    UNEXPECTED_KIND = "unexpected_kind"  # a kind that may not come here
    WRONG_DOMAIN = "wrong_domain"  # another protocol's or version's domain tag (see ppaia.network.wire)
    BAD_KEY = "bad_key"  # the sender is not the peer id of the key
    BAD_SIGNATURE = "bad_signature"
    WRONG_SENDER = "wrong_sender"  # signed by another key than the one expected
    REPLAY = "replay"  # a reply to another request (nonce)
    WRONG_VERSION = "wrong_version"  # a model version other than the one asked for
    BAD_CID = "bad_cid"
    WRONG_CID = "wrong_cid"  # content that does not hash to its CID
    BAD_TENSORS = "bad_tensors"  # not exactly the model's finite tensors
    BAD_STATUS = "bad_status"  # a signed status that is not a valid PeerStatus
    BAD_RECORD = "bad_record"  # a member record in a view exchange that is forged, malformed or expired
    BAD_LINK = "bad_link"  # an overlay link message out of range, or about a link never agreed to
    LINK_FLOOD = "link_flood"  # a link proposal repeated right after it was declined
    IDLE = "idle"  # no byte of a request within idle_timeout of connecting
    SLOW_REQUEST = "slow_request"  # the request not complete within request_timeout of connecting
    SLOW_READER = "slow_reader"  # the client took the reply slower than the pace
    CROWDED = "crowded"  # over a per-address or per-peer connection limit
    BUSY = "busy"  # every slot taken, and none could be freed in time
    BANNED = "banned"
    EVICTED = "evicted"  # an unauthenticated connection dropped to make room for a newer one
    DISCONNECTED = "disconnected"
    INTERNAL = "internal"
    TIMEOUT = "timeout"
    SLOW_SENDER = "slow_sender"
    UNREACHABLE = "unreachable"


class ProtocolError(NetworkError):
    """Input from the network that breaks the protocol (or a transfer that failed).

    `reason` is a :class:`Reason` (or, from the DHT, a ``Refusal``): a stable code for counting and
    banning. The message says what exactly was wrong, for the log.
    """

    def __init__(self, reason: StrEnum, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class AddressError(NetworkError):
    """A ``host:port`` a user gave that is not one."""


class AgreementError(NetworkError):
    """This peer runs another config than every peer it met: it cannot train with any of them."""


def format_address(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets (what `ppaia.network.dht.parse_address` reads back)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ListenError(NetworkError):
    """This peer cannot listen where it was told: the port is taken, the host is not this machine's, ...

    `protocol` is "TCP" (models) or "UDP" (the DHT): a peer needs its port free for both.
    """

    def __init__(self, protocol: Literal["TCP", "UDP"], host: str, port: int, cause: OSError) -> None:
        reason = os.strerror(cause.errno).lower() if cause.errno and cause.errno > 0 else str(cause)
        role = "models" if protocol == "TCP" else "the DHT"
        super().__init__(f"cannot listen on {protocol} {format_address(host, port)} ({role}): {reason}")
        self.protocol, self.host, self.port = protocol, host, port
