"""Valid peer statuses for servers that stand in for peers in tests (test helper)."""

from __future__ import annotations

from typing import Any

import ppaia
from ppaia.network.agreement import Agreement
from ppaia.network.identity import Identity
from ppaia.network.status import Latest, PeerStatus, Phase
from ppaia.network.transfer import ModelServer


def status_of(
    identity: Identity,
    config: ppaia.ExperimentConfig,
    index: int,
    server: ModelServer | None = None,
    **fields: Any,
) -> PeerStatus:
    """Peer `index`'s status, running `config`, serving on `server` (its newest version), with `fields`."""
    defaults: dict[str, Any] = {
        "peer_id": identity.peer_id,
        "index": index,
        "round": 0 if server is None or server.latest is None else server.latest.round,
        "rounds": config.rounds,
        "step": 0,
        "phase": Phase.MIXING,
        "accuracy": None,
        "loss": None,
        "latest": None if server is None else Latest.of(server.latest),
        "agreement": Agreement.of(config),
    }
    return PeerStatus(**defaults | fields)


def serving(server: ModelServer, config: ppaia.ExperimentConfig, index: int) -> ModelServer:
    """`server`, answering status requests as peer `index` running `config` (its status follows what it
    serves)."""
    server.status = lambda: status_of(server.identity, config, index, server)
    return server
