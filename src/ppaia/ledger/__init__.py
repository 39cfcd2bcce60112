"""A FLoBC-style registry of trainers and validators on an EVM: accepted updates and released models.

The contract (Registry.vy) is the ledger; :class:`Ledger` drives it in process or on any JSON-RPC node.
"""

from ppaia.codec import BlobError, decode, encode
from ppaia.ledger.blobs import BlobStore
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
from ppaia.ledger.committee import LedgerRelease, LedgerRun, run_flobc_on_ledger
from ppaia.ledger.flow import FlowError, FlowResult, RoundRecord, run_publisher_flow

__all__ = [
    "SCORE_SCALE",
    "BlobError",
    "BlobStore",
    "FlowError",
    "FlowResult",
    "Ledger",
    "LedgerError",
    "LedgerRelease",
    "LedgerRun",
    "RoundRecord",
    "Update",
    "Version",
    "content_hash",
    "decode",
    "encode",
    "from_fixed",
    "load_artifact",
    "run_flobc_on_ledger",
    "run_publisher_flow",
    "to_fixed",
]
