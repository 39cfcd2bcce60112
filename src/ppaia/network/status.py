"""A peer's status: what ``ppaia status``, ``ppaia launch`` and the other peers see of it.

The wire carries it as the JSON object of a signed ``status`` reply (:func:`PeerStatus.to_wire`); a
status received from anyone is validated against :class:`PeerStatus` (:func:`PeerStatus.from_wire`), and
anything else is a :class:`ProtocolError` ``bad_status``, which strikes the sender like any bad input.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ppaia.network.agreement import Agreement
from ppaia.network.errors import ProtocolError, Reason
from ppaia.network.wire import MAX_MODEL_BYTES, MAX_VERSION, Cid, PeerId

if TYPE_CHECKING:
    from ppaia.network.transfer import ModelVersion

__all__ = ["MAX_LISTED", "Latest", "PeerStatus", "Phase"]

MAX_LISTED = 64  # banned keys, or refused partners, a status lists at most: a status must stay small
Count = Annotated[int, Field(ge=0, le=MAX_VERSION)]
BanKey = Annotated[str, Field(min_length=1, max_length=64)]  # a peer id, an address or an IPv6 /64


class Phase(StrEnum):
    """What a peer is doing."""

    STARTING = "starting"  # building its share of the experiment, joining the DHT
    WAITING = "waiting"  # before its first round: finding the other peers and checking their configs
    TRAINING = "training"  # local training of round `round`
    MIXING = "mixing"  # mixing step `step` of round `round`: publishing, fetching, combining
    FINISHED = "finished"  # every round done; still serving (lingering) until the others are done


class Latest(BaseModel):
    """The newest model version a peer serves."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    round: Count
    step: Count
    cid: Cid
    size: Annotated[int, Field(ge=0, le=MAX_MODEL_BYTES)]

    @classmethod
    def of(cls, version: ModelVersion | None) -> Latest | None:
        """The summary of a served `version` (None for none)."""
        if version is None:
            return None
        return cls(round=version.round, step=version.step, cid=version.cid, size=version.size)


class PeerStatus(BaseModel):
    """One peer's status. `index` is the swarm index it plays (None for a peer without one);
    `accuracy` and `loss` are those of its last evaluation (None before the first, or if not finite);
    `epsilon` the privacy budget it has spent (None without differential privacy). `missing` and
    `stale` count the senders left out and the stale models used, over all rounds; `rejections` its
    refusals by reason (its own and its server's); `banned` the first :data:`MAX_LISTED` of the peer
    ids and addresses it bans now, `banned_total` how many it bans; `refused` the (first
    :data:`MAX_LISTED`) indices of the partners it refuses because they run another config; `latest`
    its newest served version; `agreement` its shared config (:mod:`ppaia.network.agreement`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    peer_id: PeerId
    index: Count | None
    round: Count
    rounds: Annotated[int, Field(ge=1, le=MAX_VERSION)]
    step: Count
    phase: Phase
    accuracy: float | None
    loss: float | None
    epsilon: Annotated[float, Field(ge=0)] | None = None
    missing: Count = 0
    stale: Count = 0
    rejections: dict[Reason, Count] = Field(default_factory=dict)
    banned: Annotated[list[BanKey], Field(max_length=MAX_LISTED)] = Field(default_factory=list)
    banned_total: Count = 0
    refused: Annotated[list[Count], Field(max_length=MAX_LISTED)] = Field(default_factory=list)
    latest: Latest | None = None
    agreement: Agreement

    def to_wire(self) -> dict[str, Any]:
        """The JSON object a ``status`` reply carries (a value that is not finite travels as null)."""
        return json.loads(self.model_dump_json())

    @classmethod
    def from_wire(cls, info: Mapping[str, Any]) -> PeerStatus:
        """The status in a received ``status`` reply; ProtocolError ``bad_status`` if it is not one."""
        try:
            return cls.model_validate_json(json.dumps(info))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"])[:80] or "status"
            raise ProtocolError(
                Reason.BAD_STATUS, f"a status with bad field {where}: {first['msg'][:200]}"
            ) from None
