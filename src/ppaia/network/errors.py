"""The one error type of the network protocol: anything a remote peer sends that cannot be trusted."""

from __future__ import annotations

__all__ = ["ProtocolError"]


class ProtocolError(ValueError):
    """Input from the network that breaks the protocol (or a transfer that failed).

    `reason` is a short stable code for counting and banning — "oversized", "truncated", "closed",
    "malformed", "unknown_kind", "unexpected_kind", "bad_key", "bad_signature", "wrong_sender",
    "replay", "wrong_version", "bad_cid", "wrong_cid", "bad_tensors", "timeout", "unreachable",
    "busy", "banned" — and the message says what exactly was wrong, for the log.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
