"""A peer's status: what ``ppaia status``, ``ppaia launch`` and the other peers see of it.

The wire carries it as the JSON object of a signed ``status`` reply (:func:`PeerStatus.to_wire`); a
status received from anyone is validated against :class:`PeerStatus` (:func:`PeerStatus.from_wire`), and
anything else is a :class:`ProtocolError` ``bad_status``, which strikes the sender like any bad input.

Besides its progress, a status says what a dashboard needs to draw a swarm as it draws a simulation: the
model bytes the peer moved (:class:`Traffic`, with the bytes it fetched from each partner: links by
traffic), the trust it learned in each partner (learned trust's row, keyed by partner peer id: the trust
heat-map), and the version that ended its last completed round (which a dashboard fetches from every peer
to compute the consensus distance). Every list and map in it is capped at :data:`MAX_LISTED` entries, so
that a status stays small whatever the size of the swarm.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ppaia.network.agreement import Agreement
from ppaia.network.errors import ProtocolError, Reason
from ppaia.network.wire import MAX_MODEL_BYTES, MAX_VERSION, Cid, PeerId

if TYPE_CHECKING:
    from ppaia.network.transfer import ModelVersion

__all__ = [
    "MAX_LISTED",
    "Latest",
    "Membership",
    "PeerStatus",
    "Phase",
    "Stuck",
    "Traffic",
    "heaviest",
    "trust_row",
]

MAX_LISTED = 64  # banned keys, refused partners, partners by traffic or trust a status lists at most
MAX_BYTES = 2**62  # bound for a byte count
Count = Annotated[int, Field(ge=0, le=MAX_VERSION)]
Bytes = Annotated[int, Field(ge=0, le=MAX_BYTES)]
BanKey = Annotated[str, Field(min_length=1, max_length=64)]  # a peer id, an address or an IPv6 /64
MAX_PACE = 86_400.0  # seconds a round may say it takes (a day)
Weight = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]  # a trust weight
V = TypeVar("V", int, float)


def heaviest(values: Mapping[str, V]) -> dict[str, V]:
    """The :data:`MAX_LISTED` entries of `values` with the largest values (ties: the smaller key)."""
    return dict(sorted(values.items(), key=lambda item: (-item[1], item[0]))[:MAX_LISTED])


def trust_row(state: Mapping[str, float]) -> dict[str, float]:
    """A learner's per-partner state (:meth:`CooperationRule.peer_state`: learned trust's row, partner
    peer id -> Tᵢₚ) as a status lists it: the most trusted :data:`MAX_LISTED` partners, each weight
    clipped to [0, 1] (only the faithful prototype's unprojected trust ever leaves it)."""
    return heaviest({partner: min(max(float(value), 0.0), 1.0) for partner, value in state.items()})


class Phase(StrEnum):
    """What a peer is doing."""

    STARTING = "starting"  # building its share of the experiment, joining the DHT
    WAITING = "waiting"  # before its first round: finding the other peers and checking their configs
    TRAINING = "training"  # local training of round `round`
    MIXING = "mixing"  # mixing step `step` of round `round`: publishing, fetching, combining
    FINISHED = "finished"  # every round done; still serving (lingering) until the others are done


class Stuck(StrEnum):
    """Why a peer of an open swarm is not making progress right now (None in a status: it is)."""

    NO_PARTNERS = "no_partners"  # its view holds no live member that runs its config
    ALL_BANNED = "all_banned"  # every member it found is banned
    ALL_REFUSED = "all_refused"  # every member it found runs another config
    CATCHING_UP = "catching_up"  # behind its partners: fetching their newest models to start from there
    JOINING = "joining"  # before its first round: finding members that run its config, and their round
    WAITING_FOR_PARTNERS = "waiting_for_partners"  # its partners have not reached its round yet


class Membership(BaseModel):
    """An open swarm peer's view of the members (:mod:`ppaia.network.sampling`): how many it holds
    verified and as candidates, its view exchanges, and their bytes (membership traffic, not models).
    A peer of a topology rule also says its overlay degree (:mod:`ppaia.network.overlay`; None: it runs
    no overlay) and the mixing weight each of its overlay neighbours had in its last round's row
    (by peer id)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    view: Count = 0
    candidates: Count = 0
    exchanges: Count = 0
    sent: Bytes = 0
    received: Bytes = 0
    degree: Count | None = None
    links: Annotated[dict[PeerId, Weight], Field(max_length=MAX_LISTED)] = Field(default_factory=dict)


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


class Traffic(BaseModel):
    """The model bytes a peer moved since it started, counted as model bodies (the safetensors bytes of
    a version: frames, headers, statuses and DHT messages are not counted): `sent`, the bodies its
    server handed over in full (to partners, and to anyone else who asked, e.g. a dashboard);
    `received`, those it fetched and verified; `received_from`, the latter by sender peer id (the
    :data:`MAX_LISTED` senders it fetched most from)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    sent: Bytes = 0
    received: Bytes = 0
    received_from: Annotated[dict[PeerId, Bytes], Field(max_length=MAX_LISTED)] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _parts_within_the_whole(self) -> Self:
        if sum(self.received_from.values()) > self.received:
            raise ValueError("more bytes received from the senders listed than received in all")
        return self


class PeerStatus(BaseModel):
    """One peer's status. `index` is the swarm index it plays (None for a peer without one);
    `accuracy` and `loss` are those of its last evaluation (None before the first, or if not finite);
    `epsilon` the privacy budget it has spent (None without differential privacy). `missing` and
    `stale` count the senders left out and the stale models used, over all rounds; `rejections` its
    refusals by reason (its own and its server's); `banned` the first :data:`MAX_LISTED` of the peer
    ids and addresses it bans now, `banned_total` how many it bans; `refused` the (first
    :data:`MAX_LISTED`) indices of the partners it refuses because they run another config; `latest`
    its newest served version; `completed` the version that ended its last completed round (None before
    the first); `traffic` the model bytes it moved; `trust` its rule's learned weight per partner peer
    id (learned trust: its trust row, at most :data:`MAX_LISTED` partners, the most trusted; empty for
    rules that learn none); `agreement` its shared config (:mod:`ppaia.network.agreement`); in an open
    swarm, `stuck` says why it is not making progress (None: it is) and `membership` its view; `pace`
    the median seconds of its recent rounds (None before its first), which a peer joining the swarm
    starts its deadlines from (:meth:`ppaia.network.timing.Timing.assume`)."""

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
    completed: Latest | None = None
    traffic: Traffic = Traffic()
    trust: Annotated[dict[PeerId, Weight], Field(max_length=MAX_LISTED)] = Field(default_factory=dict)
    agreement: Agreement
    stuck: Stuck | None = None  # an open swarm peer: why it cannot make progress now
    membership: Membership | None = None  # an open swarm peer: its sample of the members
    pace: Annotated[float, Field(ge=0, le=MAX_PACE, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.peer_id in self.trust:
            raise ValueError("a peer's trust in itself (learned trust has none)")
        done, latest = self.completed, self.latest
        if done is not None and (latest is None or (done.round, done.step) > (latest.round, latest.step)):
            raise ValueError("a completed round's version newer than the newest version served")
        return self

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
