"""What a peer's status says besides its progress: the model bytes it moved, its trust in each partner,
and the version that ended its last completed round. Bounded whatever the swarm's size, validated on
receipt (the hostile family is in test_agreement.py), and filled in by real peers as they run: a
dashboard following them computes the very consensus distance their checkpoints give."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from statuses import status_of

import ppaia
from ppaia.dashboard.sources import SwarmSource
from ppaia.network.content import MAX_CID_CHARS
from ppaia.network.errors import ProtocolError, Reason
from ppaia.network.identity import Identity
from ppaia.network.status import MAX_BYTES, MAX_LISTED, Latest, PeerStatus, Traffic, trust_row
from ppaia.network.swarm import HOST, Swarm
from ppaia.network.transfer import ModelServer, fetch_status
from ppaia.network.wire import MAX_INFO_BYTES, MAX_VERSION, canonical

CONFIG = ppaia.ExperimentConfig(peers=3, rounds=4)


def ids(n: int, start: int = 0) -> list[str]:
    return [f"{k:040x}" for k in range(start, start + n)]


def test_the_largest_status_an_honest_peer_can_send_leaves_room_for_its_shared_config():
    """Every list and map at its cap, every number at its longest: the status less its shared config
    takes at most half of what a status reply may carry."""
    longest = Latest(round=MAX_VERSION, step=MAX_VERSION, cid="b" * MAX_CID_CHARS, size=MAX_VERSION)
    status = status_of(
        Identity.generate(),
        CONFIG,
        MAX_VERSION,
        round=MAX_VERSION,
        step=MAX_VERSION,
        accuracy=0.123456789012345678,
        loss=1.23456789012345678e300,
        epsilon=1.23456789012345678e300,
        missing=MAX_VERSION,
        stale=MAX_VERSION,
        rejections=dict.fromkeys(Reason, MAX_VERSION),
        banned=["f" * 64] * MAX_LISTED,
        banned_total=MAX_VERSION,
        refused=[MAX_VERSION] * MAX_LISTED,
        latest=longest,
        completed=longest,
        traffic=Traffic(
            sent=MAX_BYTES, received=MAX_BYTES, received_from=dict.fromkeys(ids(MAX_LISTED), 2**56)
        ),
        trust=dict.fromkeys(ids(MAX_LISTED, 1000), 0.12345678901234568),
    )
    wire = status.to_wire()
    assert PeerStatus.from_wire(wire) == status
    shared = len(canonical(wire["agreement"]))
    assert len(canonical(wire)) - shared <= MAX_INFO_BYTES // 2, (len(canonical(wire)), shared)


def test_a_status_lists_the_most_trusted_partners_within_the_unit_interval():
    """Learned trust's row as a status lists it: at most MAX_LISTED partners, the most trusted first
    (ties by id), each weight in [0, 1] (the faithful prototype's unprojected trust is clipped)."""
    partners = ids(3 * MAX_LISTED)
    row = {partner: (k % 97) / 90 - 0.05 for k, partner in enumerate(partners)}  # -0.05 … 1.02
    listed = trust_row(row)
    assert len(listed) == MAX_LISTED and all(0.0 <= weight <= 1.0 for weight in listed.values())
    kept = sorted(row, key=lambda partner: (-min(row[partner], 1.0), partner))[:MAX_LISTED]
    assert list(listed) == kept
    assert trust_row({}) == {} and trust_row({partners[0]: 0.25}) == {partners[0]: 0.25}
    assert (
        PeerStatus.from_wire(status_of(Identity.generate(), CONFIG, 0, trust=listed).to_wire()).trust
        == listed
    )


# ---------------------------------------------------------------------------------------------------
# real peers


@pytest.mark.slow
def test_real_peers_report_their_traffic_and_trust_and_a_dashboard_measures_their_consensus_distance(
    tmp_path,
):
    """Three `ppaia peer` processes running learned trust. While they run, each status lists what the
    peer fetched, from whom, and whom it trusts; a dashboard following them fetches their models after
    a round and computes the consensus distance their checkpoints give for it."""
    config = ppaia.ExperimentConfig(
        peers=3, rounds=12, rule="learned_trust(partners=2)", holdout=0.2, topology="complete"
    )
    swarm = Swarm(config, tmp_path)

    async def follow() -> tuple[dict[int, PeerStatus], SwarmSource]:
        source = SwarmSource([(HOST, port) for port in swarm.ports], config=config, poll=0.1)
        following = asyncio.create_task(source.follow())
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                statuses = {p.position: p.status for p in source.peers if p.status is not None}
                done = [s.completed.round for s in statuses.values() if s.completed is not None]
                if len(done) == 3 and min(done) >= 2 and source.consensus.measured:
                    return statuses, source
                await asyncio.sleep(0.1)
            raise AssertionError(f"no round measured within 90 s: {source.consensus.why_not}")
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following

    try:
        swarm.start()
        statuses, source = asyncio.run(follow())
        assert swarm.wait(timeout=90) == dict.fromkeys(range(3), 0)
    finally:
        swarm.stop()
    members = {status.peer_id for status in statuses.values()}
    for status in statuses.values():
        others = members - {status.peer_id}
        size = status.completed.size  # every model of the swarm has this many bytes
        traffic = status.traffic
        assert set(traffic.received_from) == others  # complete graph, 2 partners of 2: both, every round
        assert sum(traffic.received_from.values()) == traffic.received
        assert all(
            got % size == 0 and got >= status.completed.round * size for got in traffic.received_from.values()
        )
        assert traffic.sent % size == 0 and traffic.sent >= status.completed.round * size
        assert set(status.trust) == others and all(0.0 <= weight <= 1.0 for weight in status.trust.values())
        assert status.completed.step == 1  # learned trust mixes in one step
    history = {int(row["round"]): row for row in swarm.result().history}
    for round_, measured in source.consensus.measured.items():
        assert measured.peers == measured.asked == 3
        assert measured.distance == pytest.approx(history[round_]["consensus_distance"], rel=1e-9)
    view = source.view()
    assert view.heat is not None and view.heat.name == "trust" and view.graph.edge_kind == "trust"
    assert view.curves.series["bytes_cumulative"][-1] > 0


@pytest.mark.parametrize("claimed", ["another peer's", "its own"])
def test_a_status_that_claims_another_peers_id_is_refused(claimed):
    """A peer speaks for itself: its signed status must carry its own id, or a dashboard or a partner
    would file what it says under another peer."""
    signer = Identity.generate()
    other = Identity.generate().peer_id if claimed == "another peer's" else signer.peer_id
    server = ModelServer(signer, status=lambda: status_of(signer, CONFIG, 0, peer_id=other))

    async def ask() -> PeerStatus:
        await server.start()
        try:
            return await fetch_status(HOST, server.port, identity=Identity.generate(), timeout=5.0)
        finally:
            await server.stop()

    if claimed == "another peer's":
        with pytest.raises(ProtocolError) as refused:
            asyncio.run(ask())
        assert refused.value.reason == Reason.WRONG_SENDER
    else:
        assert asyncio.run(ask()).peer_id == signer.peer_id
