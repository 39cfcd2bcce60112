"""A FLoBC-style registry of trainers and validators on an EVM: accepted updates and released models.

The contract (Registry.vy) is the ledger; :class:`Ledger` drives it in process or on any JSON-RPC node.
"""

from ppaia.ledger.client import (
    SCORE_SCALE,
    Ledger,
    LedgerError,
    Update,
    Version,
    content_hash,
    from_fixed,
    load_artifact,
    to_fixed,
)

__all__ = [
    "SCORE_SCALE",
    "Ledger",
    "LedgerError",
    "Update",
    "Version",
    "content_hash",
    "from_fixed",
    "load_artifact",
    "to_fixed",
]
