"""What the peers of a swarm must agree on, and how a peer finds out that a partner does not.

Each peer builds its part of the experiment from its own config. A peer started with another seed gets
another split and another test set; one with another learning rate or model trains something else; and
mixing with it silently spoils both runs. So every peer carries its *shared config* — the fields of the
config the whole swarm must agree on — and the SHA-256 of its canonical JSON (its digest) in its status
(:class:`ppaia.network.status.PeerStatus`). A peer asks a partner's status when it first finds it (at
each address it finds it at) and again whenever it asks later, and refuses a partner whose digest
differs: it never fetches its models, and it logs the fields that differ, with both values
(:meth:`Agreement.differences`). The shared config travels with the digest so that the refusal can name
the fields, and a status whose digest is not that of its own shared config is refused as malformed.

**Per-peer fields** (not compared; :data:`PER_PEER`): ``privacy`` (each peer's own mechanism and
budget), ``attack`` and ``attackers`` (what a misbehaving process does is its own business), ``ewc`` (a
regulariser of its own local training), the ``eval_*`` fields (when and how it measures itself),
``plugins`` (where its own code is found; the rule or model it registers is compared by name and
options), ``churn`` (a launcher's or the simulator's join/leave schedule) and ``device`` (where it
computes). A peer that brings its own data also keeps ``dataset``, ``partition`` and ``min_samples`` to
itself (:data:`OWN_DATA`): the model's tensor check still refuses a partner whose model differs. A
rule's *local options* (:attr:`CooperationRule.local_options`: for learned trust its fitting steps,
learning rate and prior) only change how a peer weighs what it received, so they are per-peer too: a DP
peer may run learned trust without fitting it (``steps = 0``) among peers that do.
Everything else — peers, rounds, seed, model, init, rule, topology, mixing, optimizer, lr, batch size,
local epochs, holdout, tasks, ... — is shared, new fields included, so that a field added to the config
later is compared unless it is declared per-peer here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Annotated, Any, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ppaia.config import ExperimentConfig

__all__ = [
    "OPEN_SWARM",
    "OWN_DATA",
    "PER_PEER",
    "Agreement",
    "Difference",
    "describe",
    "digest_of",
    "shared_config",
]

# `plugins`: where a peer's code lives (paths differ between machines); what it registers is compared
# `churn`: when a launcher or the simulator starts and stops peers, not what a peer computes
PER_PEER = frozenset(
    {
        "privacy",
        "attack",
        "attackers",
        "ewc",
        "eval_every",
        "eval_local_phase",
        "eval_peers",
        "plugins",
        "churn",
        "device",  # where a peer computes (cpu or a GPU) is its own business
    }
)
OWN_DATA = frozenset({"dataset", "partition", "min_samples"})
# an open swarm has no member list: its size and topology are nobody's to agree on (partners are sampled)
OPEN_SWARM = frozenset({"peers", "topology", "allow_disconnected"})


def _json(value: Any) -> str:
    """`value` in canonical JSON: one spelling per value, so 1 and 1.0 (or true and 1) differ."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def shared_config(
    config: ExperimentConfig, *, own_data: bool = False, open_swarm: bool = False
) -> dict[str, Any]:
    """The fields of `config` the swarm must agree on (see the module docstring), as JSON data; an open
    swarm's peer (`open_swarm`) does not compare :data:`OPEN_SWARM` and says it is one (``swarm``)."""
    private = PER_PEER | (OWN_DATA if own_data else frozenset()) | (OPEN_SWARM if open_swarm else frozenset())
    # path options by file name: each peer's files lie in folders of its own (ppaia.paths)
    shared = {name: value for name, value in config.to_table(portable=True).items() if name not in private}
    local = config.rule.local_options
    shared["rule"] = {name: value for name, value in shared["rule"].items() if name not in local}
    if open_swarm:
        shared["swarm"] = "open"
    return shared


def digest_of(shared: Mapping[str, Any]) -> str:
    """The SHA-256 (hex) of the canonical JSON of a shared config."""
    return hashlib.sha256(_json(shared).encode()).hexdigest()


class Difference(NamedTuple):
    """A shared field on which two peers differ: its dotted name, this peer's value and the partner's
    (None where one of them lacks the field)."""

    field: str
    mine: Any
    theirs: Any


def _differences(mine: Mapping[str, Any], theirs: Mapping[str, Any], prefix: str) -> list[Difference]:
    found = []
    for name in sorted(set(mine) | set(theirs)):
        a, b = mine.get(name), theirs.get(name)
        if _json(a) == _json(b):
            continue
        if isinstance(a, dict) and isinstance(b, dict) and a.get("name") == b.get("name"):
            found += _differences(a, b, f"{prefix}{name}.")  # the same component: name its options
        else:
            found.append(Difference(f"{prefix}{name}", a, b))
    return found


def describe(differences: list[Difference], limit: int = 60) -> str:
    """``seed: 1 there, 0 here; lr: ...``: a component by its name, any other value in JSON cut to `limit`
    characters."""

    def shown(value: Any) -> str:
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            value = value["name"]
        text = "(none)" if value is None else _json(value)
        return text if len(text) <= limit else text[: limit - 3] + "..."

    return "; ".join(f"{d.field}: {shown(d.theirs)} there, {shown(d.mine)} here" for d in differences)


class Agreement(BaseModel):
    """A peer's shared config and its digest, as its status carries them. Validated on receipt: a
    digest that is not that of the shared config beside it is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    digest: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    shared: dict[str, Any]

    @model_validator(mode="after")
    def _digest_matches(self) -> Self:
        if digest_of(self.shared) != self.digest:
            raise ValueError("the digest is not the SHA-256 of the shared config beside it")
        return self

    @classmethod
    def of(
        cls,
        config: ExperimentConfig,
        *,
        own_data: bool = False,
        data: Mapping[str, Any] | None = None,
        open_swarm: bool = False,
    ) -> Agreement:
        """This peer's agreement for `config` (`own_data`: it trains on data of its own, and `data` says
        what its data must share with the others', e.g. the input shape and the number of classes;
        `open_swarm`: it joined by swarm name, see :data:`OPEN_SWARM`)."""
        shared = shared_config(config, own_data=own_data, open_swarm=open_swarm)
        if data is not None:
            shared["data"] = dict(data)
        return cls(digest=digest_of(shared), shared=shared)

    def differences(self, other: Agreement) -> list[Difference]:
        """The shared fields on which `other` differs from this one (none if the digests match); a
        field whose component differs by name is named whole, otherwise its differing options are."""
        if other.digest == self.digest:
            return []
        return _differences(self.shared, other.shared, "")
