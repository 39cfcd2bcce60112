"""The dashboard's sources without a browser: a run's records read back round by round (whole, cut
mid-line, or mixed with lines that are not records), a finished folder replayed from its CSV files, a
run followed while its folder is still the hidden staging folder, and peers followed through their
signed statuses: when a silent peer counts as dropped, and what is kept of what a hostile one says."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json

import numpy as np
import pytest
import torch
from dashboard_browser import fake_peers

import ppaia
from ppaia import codec
from ppaia.dashboard.sources import Followed, Liveness, RunSource, SwarmSource, model_spec
from ppaia.dashboard.views import MAX_NODES, State, layout
from ppaia.network.addressbook import index_topic
from ppaia.network.agreement import Agreement
from ppaia.network.dht import PeerDHT
from ppaia.network.errors import Reason
from ppaia.network.identity import Identity
from ppaia.network.status import MAX_LISTED, Latest, PeerStatus, Phase, Traffic
from ppaia.network.swarm import free_port
from ppaia.network.timing import WAIT_ROUNDS
from ppaia.network.transfer import ModelServer
from ppaia.simulation.live import MAX_BLOCKS, RECORD_FILE, RoundRecorder, block_means

TRUST = {
    "peers": 8,
    "rounds": 3,
    "rule": "learned_trust(partners=3)",
    "holdout": 0.2,
    "attack": "sign_flip",
    "attackers": [2, 5],
    "link_up": 0.9,
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """TRUST run with a recorder: its result and its record file (read-only: tests copy it)."""
    folder = tmp_path_factory.mktemp("recorded")
    simulation = ppaia.Simulation(ppaia.ExperimentConfig.model_validate(TRUST))
    recorder = RoundRecorder(folder / RECORD_FILE, simulation)
    result = simulation.run(observe=recorder.record)
    recorder.close(out=folder)
    return result, folder / RECORD_FILE


def test_a_runs_records_give_every_round_as_the_run_computed_it(recorded):
    result, path = recorded
    source = RunSource(path.parent)
    assert source.read() and source.ended
    view = source.view()
    assert (view.round, view.first, view.latest, view.rounds, view.peers_total) == (3, 0, 3, 3, 8)
    assert view.peers.accuracy == pytest.approx(result.peer_accuracy.tolist(), abs=1e-5)
    assert view.peers.loss == pytest.approx(result.peer_loss.tolist(), rel=1e-5)
    assert [view.peers.state[i] for i in (2, 5)] == [State.ATTACKER] * 2
    assert view.curves.round == [0, 1, 2, 3]
    history = [row["acc_mean"] for row in result.history]
    assert view.curves.series["acc_mean"] == pytest.approx(history, abs=1e-5)
    for row in result.history:  # any earlier round: its own per-peer values
        earlier = source.view(row["round"])
        assert sum(earlier.peers.accuracy) / 8 == pytest.approx(row["acc_mean"], abs=1e-5)
    snapshot = result.snapshots["trust"][-1][1].coalesce()
    trust = dict(zip(map(tuple, snapshot.indices().T.tolist()), snapshot.values().tolist(), strict=True))
    assert view.heat is not None and (view.heat.name, view.heat.round, view.heat.blocks) == ("trust", 3, 8)
    assert view.graph.edge_kind == "trust" and len(view.graph.nodes) == 8
    drawn = dict(zip(map(tuple, view.graph.edges), view.graph.weights, strict=True))
    for (i, j), weight in drawn.items():  # the mean of what each end trusts the other with
        both = [trust[pair] for pair in ((i, j), (j, i)) if pair in trust]
        assert weight == pytest.approx(sum(both) / len(both), rel=1e-5)
    assert view.status.startswith("finished")


def test_a_record_cut_mid_line_waits_and_lines_that_are_not_records_are_left_out(tmp_path, recorded):
    _, path = recorded
    lines = path.read_bytes().splitlines(keepends=True)
    garbage = [
        b"not json\n",
        b'{"kind": "round"}\n',  # no round
        b'{"kind": "round", "round": -1}\n',
        b'{"kind": "start", "peers": 0, "rounds": 1, "title": "", "config": ""}\n',
        b'{"kind": "round", "round": 2, "accuracy": [0.5]}\n',  # another number of peers
        b'{"kind": "shell", "command": "rm -rf /"}\n',
        b'{"kind": "round", "round": 1, "accuracy": "' + b"9" * 5000 + b'"}\n',
        b"\xff\xfe\x00\n",
    ]
    folder = tmp_path / "followed"
    folder.mkdir()
    written = folder / RECORD_FILE
    written.write_bytes(lines[0] + lines[1][:40])  # the start, and round 0 cut mid-line
    source = RunSource(folder)
    source.read()
    assert source.timeline.rounds == []
    with open(written, "ab") as handle:
        handle.write(lines[1][40:] + b"".join(garbage) + b"".join(lines[2:]))
    source.read()
    assert source.timeline.rounds == [0, 1, 2, 3] and source.ended
    assert len(source.view().problems) == len(garbage)
    whole = RunSource(path.parent)
    whole.read()
    for round_ in range(4):
        assert source.view(round_).peers == whole.view(round_).peers


def test_a_finished_folder_without_records_is_replayed_from_its_csv_files(tmp_path, recorded):
    result, _ = recorded
    ppaia.write_outputs(result, tmp_path / "run", plots=False)
    source = RunSource(tmp_path / "run")
    assert source.read() and source.ended
    view = source.view()
    assert view.curves.round == [0, 1, 2, 3] and view.peers_total == 8
    assert view.peers.accuracy == pytest.approx(result.peer_accuracy.tolist(), abs=1e-5)
    assert source.view(1).peers.accuracy == [None] * 8  # not in the CSV files: said on the page
    assert any("CSV" in note for note in view.notes)
    assert view.heat is not None and view.heat.round == 3
    assert view.graph is not None and len(view.graph.edges) == 8  # the ring, rebuilt from config.toml
    assert [view.peers.state[i] for i in (2, 5)] == [State.ATTACKER] * 2


def test_a_run_being_written_is_followed_in_its_staging_folder_and_after_it_is_renamed(tmp_path, recorded):
    _, path = recorded
    lines = path.read_bytes().splitlines(keepends=True)
    staging = tmp_path / ".run.x1y2"  # as write_outputs stages `run`
    staging.mkdir()
    (staging / RECORD_FILE).write_bytes(b"".join(lines[:3]))
    source = RunSource(tmp_path / "run")
    assert source.locate() == staging / RECORD_FILE
    source.read()
    assert source.view().latest == 1 and source.view().live
    staging.rename(tmp_path / "run")
    with open(tmp_path / "run" / RECORD_FILE, "ab") as handle:
        handle.write(b"".join(lines[3:]))
    source.read()
    assert source.view().latest == 3 and not source.view().live


def test_matrices_and_graphs_stay_bounded_at_any_number_of_peers():
    n = 10_000
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(0, n, (50_000,), generator=generator).numpy()
    columns = torch.randint(0, n, (50_000,), generator=generator).numpy()
    values = torch.rand(50_000, generator=generator).double().numpy()
    matrix = block_means(rows, columns, values, n)
    assert matrix.blocks == MAX_BLOCKS and len(matrix.values) == MAX_BLOCKS**2 and matrix.pairs is None
    ring = [(i, (i + 1) % n) for i in range(n)]
    drawn = layout(n, ring)
    assert len(drawn.nodes) == MAX_NODES and drawn.notes()
    assert all(u in drawn.place and v in drawn.place for u, v in drawn.links)
    entries: dict[tuple[int, int], list[float]] = {}  # up to MAX_BLOCKS peers: one peer per block
    for i, j, v in zip(rows[:40] % 5, columns[:40] % 5, values[:40], strict=True):
        entries.setdefault((int(i), int(j)), []).append(float(v))
    small = block_means(rows[:40] % 5, columns[:40] % 5, values[:40], 5)
    assert small.blocks == 5 and len(small.pairs) == 40
    for i in range(5):
        for j in range(5):
            mean = sum(entries[i, j]) / len(entries[i, j]) if (i, j) in entries else None
            assert small.values[i * 5 + j] == (pytest.approx(mean, rel=1e-5) if mean is not None else None)


# ---------------------------------------------------------------------------------------------------
# a swarm

CONFIG = ppaia.ExperimentConfig(peers=3, rounds=50)


def status(round_: int, phase: Phase = Phase.MIXING, **fields) -> PeerStatus:
    values = {
        "peer_id": Identity.generate().peer_id,
        "index": 0,
        "round": round_,
        "rounds": 50,
        "step": 0,
        "phase": phase,
        "accuracy": 0.5,
        "loss": 1.0,
        "agreement": Agreement.of(CONFIG),
    }
    return PeerStatus(**values | fields)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("round_s", [0.05, 0.25, 1.0, 4.0, 30.0])
def test_a_silent_peer_is_dropped_after_the_timing_policys_deadline(round_s):
    clock, wait = Clock(), 60.0
    liveness = Liveness(wait=wait, clock=clock)
    peer, finished = Followed(("127.0.0.1", 1), 0), Followed(("127.0.0.1", 2), 1)
    since = clock.now
    assert liveness.bound() == wait  # no round timed yet: the peers' --wait
    for r in range(1, 6):
        liveness.saw(peer, status(r))
        liveness.saw(finished, status(r, Phase.FINISHED if r == 5 else Phase.MIXING))
        clock.now += round_s
    bound = min(wait, max(2.0, WAIT_ROUNDS * round_s))
    assert liveness.bound() == pytest.approx(bound)
    silent_from = clock.now - round_s  # its last answer
    clock.now = silent_from + bound - 0.01
    assert not liveness.dropped(peer, since)
    clock.now = silent_from + bound + 0.01
    assert liveness.dropped(peer, since)
    assert not liveness.dropped(finished, since)  # it said it was done: gone, not dropped
    never = Followed(("127.0.0.1", 3), 2)
    assert liveness.dropped(never, since=clock.now - bound - 0.01)
    assert not liveness.dropped(never, since=clock.now - bound + 0.01)


def test_peers_followed_through_their_statuses_and_what_a_hostile_one_says_is_kept_as_data(tmp_path):
    markup = ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>"]
    forged = dict(status(3, index=2)) | {"peer_id": markup[0]}
    answers = [
        lambda: status(7, index=0, banned=markup, banned_total=2, rejections={Reason.BAD_CID: 3}),
        lambda: status(2, index=1, phase=Phase.TRAINING),
        lambda: PeerStatus.model_construct(**forged),  # refused: not a peer id
    ]
    with fake_peers(answers) as addresses:
        source = SwarmSource([*addresses, ("127.0.0.1", 1)])  # the last: nobody listens there

        async def twice() -> None:
            for _ in range(2):
                await asyncio.gather(*(source.ask(peer) for peer in source.peers))

        asyncio.run(twice())
    view = source.view()
    assert view.peers.id == [0, 1, 2, 3]
    assert view.peers.round == [7, 2, None, None]
    assert view.peers.state[:2] == [State.MIXING, State.BEHIND]  # 5 rounds behind the newest
    assert view.peers.rejections[0] == 3 and view.peers.bans[0] == 2
    assert all(text in view.peers.note[0] for text in markup)  # kept as it came: the page shows text
    assert "last request: bad_status" in view.peers.note[2] and markup[0] not in view.peers.label[2]
    assert "last request: unreachable" in view.peers.note[3]
    assert view.graph is not None and len(view.graph.nodes) == 3  # the ring of the peers' shared config
    assert json.loads(view.config)["peers"] == 3
    assert view.drop_after == 60.0  # no round timed yet


def test_the_other_peers_of_a_swarm_are_found_through_its_dht():
    """Three peers, each serving its status on a port and the DHT on the same UDP port, each providing
    its index's topic; the dashboard is given only the first and follows all three."""

    async def scenario() -> list[int | None]:
        nodes, servers = [], []
        try:
            for i in range(3):
                port = free_port()
                identity = Identity.generate()
                answer = status(i + 1, index=i, peer_id=identity.peer_id)
                servers.append(ModelServer(identity, port=port, status=lambda answer=answer: answer))
                await servers[-1].start()
                dht = PeerDHT(identity, ttl=30.0, rpc_timeout=1.0)
                nodes.append(dht)
                await dht.start("127.0.0.1", port, bootstrap=[("127.0.0.1", servers[0].port)] if i else [])
            for i, (dht, server) in enumerate(zip(nodes, servers, strict=True)):
                await dht.announce(server.port, "127.0.0.1")
                await dht.provide(index_topic("ppaia", i))
            source = SwarmSource([("127.0.0.1", servers[0].port)], discover="ppaia", poll=0.1)
            following = asyncio.create_task(source.follow())
            try:
                for _ in range(100):  # at most 10 s
                    if len(source.peers) == 3 and all(peer.status for peer in source.peers):
                        break
                    await asyncio.sleep(0.1)
            finally:
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await following
            return sorted(peer.status.index for peer in source.peers if peer.status)
        finally:
            for dht in nodes:
                await dht.stop()
            for server in servers:
                await server.stop()

    assert asyncio.run(scenario()) == [0, 1, 2]


# ---------------------------------------------------------------------------------------------------
# a swarm's traffic, trust and consensus distance: the fields a simulation fills

SWARM = ppaia.ExperimentConfig(peers=4, rounds=50, topology="ring")
SPEC = model_spec(SWARM)


def peer_status(identity: Identity, index: int, server: ModelServer | None = None, **fields) -> PeerStatus:
    """Peer `index`'s status in round 4, having completed round 3 (its server's newest version)."""
    latest = None if server is None else Latest.of(server.latest)
    return status(4, index=index, peer_id=identity.peer_id, latest=latest, completed=latest, **fields)


async def ask_all(source: SwarmSource) -> None:
    """Ask every peer `source` follows for its status once."""
    async with asyncio.timeout(10):
        await asyncio.gather(*(source.ask(peer) for peer in source.peers))


def heat_cells(heat) -> np.ndarray:
    """The heat-map's cells as values (NaN: no value), blocks × blocks."""
    cells = np.frombuffer(base64.b64decode(heat.data), dtype=np.uint8).astype(float)
    values = heat.low + cells / 254 * (heat.high - heat.low)
    return np.where(cells == 255, np.nan, values).reshape(heat.blocks, heat.blocks)


def test_a_swarms_bytes_trust_and_consensus_distance_fill_the_fields_a_simulation_fills():
    """Four peers serving their round-3 models: three honest, one whose model is not the swarm's
    (left out of the distance, which the note counts). Each reports its trust in its ring neighbours
    (and in a peer nobody follows) and the bytes it fetched from them."""
    ids = [Identity.generate() for _ in range(4)]
    generator = torch.Generator().manual_seed(0)
    params = torch.randn(4, SPEC.layout.size, generator=generator)
    trust = {
        (i, j): round(0.1 + 0.05 * i + 0.01 * j, 6) for i in range(4) for j in ((i + 1) % 4, (i - 1) % 4)
    }
    fetched = {(i, j): 1000 * (i + 1) + 10 * j for i, j in trust}
    stranger = Identity.generate().peer_id

    def answer(i: int, server: ModelServer) -> PeerStatus:
        partners = [j for k, j in trust if k == i]
        received = {ids[j].peer_id: fetched[i, j] for j in partners}
        return peer_status(
            ids[i],
            i,
            server,
            trust={ids[j].peer_id: trust[i, j] for j in partners} | {stranger: 0.5},
            traffic=Traffic(sent=7, received=sum(received.values()), received_from=received),
        )

    async def scenario():
        servers = []
        try:
            for i in range(4):
                server = ModelServer(ids[i])
                tensors = SPEC.layout.unflatten(params[i])
                if i == 3:  # another model: its tensors are not the swarm's
                    tensors = {"weight": params[i, :10].reshape(2, 5)}
                server.publish(3, 1, tensors)
                server.status = lambda i=i, server=server: answer(i, server)
                await server.start()
                servers.append(server)
            source = SwarmSource([("127.0.0.1", server.port) for server in servers], config=SWARM)
            await asyncio.gather(*(source.ask(peer) for peer in source.peers))
            source.consensus.start(source._measurable(), lambda: None)
            await source.consensus.task
            return source.view(), [server.served_bytes for server in servers]
        finally:
            for server in servers:
                await server.stop()

    view, served = asyncio.run(scenario())
    honest = params[:3].double()
    distance = (honest - honest.mean(0)).square().sum(1).mean().item()
    assert view.curves.round == [3, 4]
    assert view.curves.series["consensus_distance"] == [pytest.approx(distance, rel=1e-9), None]
    assert any("round 3: over 3 of 4 peers" in note for note in view.notes)
    assert served[:3] == [len(codec.encode(SPEC.layout.unflatten(params[i]))) for i in range(3)]
    assert view.curves.series["bytes_cumulative"] == [0, sum(fetched.values())]
    assert view.peers.extra["MB received"] == [
        pytest.approx(sum(v for (i, _), v in fetched.items() if i == k) / 1e6) for k in range(4)
    ]
    assert view.peers.extra["MB sent"] == [7e-6] * 4
    assert view.heat is not None and (view.heat.name, view.heat.size, view.heat.blocks) == ("trust", 4, 4)
    cells, step = heat_cells(view.heat), (view.heat.high - view.heat.low) / 254
    for i in range(4):
        for j in range(4):
            assert (
                cells[i, j] == pytest.approx(trust[i, j], abs=step)
                if (i, j) in trust
                else np.isnan(cells[i, j])
            )
    assert any("4 entries name partners not followed here" in note for note in view.notes)
    graph = view.graph
    assert graph.edge_kind == "trust"
    drawn = dict(zip(map(tuple, graph.edges), graph.weights, strict=True))
    assert drawn == {(i, j): pytest.approx((trust[i, j] + trust[j, i]) / 2) for i, j in trust if i < j}


def test_without_trust_a_swarms_links_are_weighted_by_the_bytes_fetched_over_them_both_ways():
    ids = [Identity.generate() for _ in range(3)]
    fetched = {(0, 1): 300, (1, 0): 200, (1, 2): 50}  # (receiver, sender): bytes

    def answer(i: int) -> PeerStatus:
        received = {ids[j].peer_id: b for (k, j), b in fetched.items() if k == i}
        return peer_status(
            ids[i], i, traffic=Traffic(received=sum(received.values()) + 5, received_from=received)
        )

    with fake_peers([lambda i=i: answer(i) for i in range(3)], ids) as addresses:
        source = SwarmSource(addresses)  # no config: the distance cannot be computed
        asyncio.run(ask_all(source))
    view = source.view()
    assert view.heat is None and view.graph.edge_kind == "traffic"
    drawn = dict(zip(map(tuple, view.graph.edges), view.graph.weights, strict=True))
    assert drawn == {(0, 1): 500, (1, 2): 50, (0, 2): 0}  # the ring of 3: every pair a link
    assert view.curves.series["bytes_cumulative"] == [sum(fetched.values()) + 15]
    assert "consensus_distance" not in view.curves.series
    assert any("consensus distance" in note and "not computed" in note for note in view.notes)


def hostile_traffic_and_trust(peer_id: str) -> list[dict]:
    """Statuses that misreport traffic or trust: each must be refused, whatever else is in them."""
    other = "b" * 40
    many = {f"{k:040x}": 0.01 for k in range(MAX_LISTED + 1)}
    return [
        {"trust": {other: 1.5}},
        {"trust": {other: -0.01}},
        {"trust": {other: None}},
        {"trust": {other: "0.5"}},
        {"trust": {"<script>alert(1)</script>": 0.5}},
        {"trust": many},
        {"trust": {peer_id: 0.5}},  # in itself
        {"traffic": {"sent": -1, "received": 0, "received_from": {}}},
        {"traffic": {"sent": 0, "received": 10, "received_from": {other: 11}}},
        {"traffic": {"sent": 0, "received": 2**63, "received_from": {}}},
        {"traffic": {"sent": 0, "received": 10**6, "received_from": dict.fromkeys(many, 1)}},
        {"traffic": {"sent": 1.5, "received": 0, "received_from": {}}},
        {"completed": {"round": 9, "step": 0, "cid": "x", "size": 0}},  # newer than its newest
    ]


class Signed:
    """A status as a hostile peer's server signs it: exactly `info`, whatever it is."""

    def __init__(self, info: dict) -> None:
        self.info = info

    def to_wire(self) -> dict:
        return self.info


def test_hostile_traffic_or_trust_in_a_status_is_refused_and_shown_as_bad_status():
    honest = Identity.generate()
    trusted = {"c" * 40: 0.25}
    answers = [lambda: peer_status(honest, 0, trust=trusted)]
    for k, fields in enumerate(hostile_traffic_and_trust("a" * 40)):
        wire = status(4, index=k + 1, peer_id="a" * 40).to_wire() | fields
        answers.append(lambda wire=wire: Signed(wire))
    with fake_peers(answers) as addresses:
        source = SwarmSource(addresses)
        asyncio.run(ask_all(source))
    view = source.view()
    assert view.peers.round == [4] + [None] * (len(answers) - 1)
    assert all("last request: bad_status" in note for note in view.peers.note[1:])
    assert view.heat is None  # the one honest trust entry names a peer nobody follows
    assert view.peers.extra["MB received"] == [0] + [None] * (len(answers) - 1)


def test_a_round_whose_models_do_not_come_is_not_measured_and_the_page_says_why():
    """Two peers serving models that are not the swarm's (another model; or a version other than the
    one they said ended their round): no distance, and the refusals are named."""
    ids = [Identity.generate() for _ in range(2)]

    async def scenario():
        servers = []
        try:
            for i, identity in enumerate(ids):
                server = ModelServer(identity)
                tensors = (
                    {"weight": torch.zeros(2, 5)}
                    if i == 0
                    else SPEC.layout.unflatten(torch.zeros(SPEC.layout.size))
                )
                server.publish(3, 1 if i == 0 else 2, tensors)  # peer 1 serves (3, 2), not (3, 1)
                completed = Latest(round=3, step=1, cid="x", size=1)
                server.status = lambda i=i, server=server, completed=completed: status(
                    4, index=i, peer_id=ids[i].peer_id, latest=Latest.of(server.latest), completed=completed
                )
                await server.start()
                servers.append(server)
            source = SwarmSource([("127.0.0.1", server.port) for server in servers], config=SWARM)
            await ask_all(source)
            source.consensus.start(source._measurable(), lambda: None)
            await source.consensus.task
            return source.view()
        finally:
            for server in servers:
                await server.stop()

    view = asyncio.run(scenario())
    assert "consensus_distance" not in view.curves.series
    assert any(
        "round 3: not computed: 0 of 2 models came (bad_tensors ×1, not_ready ×1)" in n for n in view.notes
    )


def test_flobc_releases_are_listed_with_their_committees_votes_and_the_trainers_scores(tmp_path):
    """Each ledger event of a FLoBC run says what its release's committee decided (updates accepted,
    each candidate's votes) and the highest scores after it, as the rule computed them that round."""
    config = {"peers": 8, "rounds": 4, "rule": "flobc(validators=3)", "holdout": 0.2, "partition": "iid"}
    simulation = ppaia.Simulation(ppaia.ExperimentConfig.model_validate(config))
    recorder = RoundRecorder(tmp_path / RECORD_FILE, simulation)
    committees = {}

    def observe(view) -> None:
        recorder.record(view)
        committees[view.round] = simulation.rule.last_round

    simulation.run(observe=observe)
    recorder.close(out=tmp_path)
    source = RunSource(tmp_path)
    source.read()
    events = {event.round: event.text for event in source.view().ledger}
    assert sorted(events) == [1, 2, 3, 4]
    for round_, text in events.items():
        last = committees[round_]
        votes = last.votes.sum(0).tolist()
        accepted = int(last.accepted.sum())
        assert f"{accepted} of {len(votes)} updates accepted" in text
        listed = ", ".join(f"{int(peer)}: {v}" for peer, v in zip(last.trainers.tolist(), votes, strict=True))
        assert f"votes for (peer: validators) {listed}" in text
        best = int(last.scores.argmax())  # scores of the trainers, in `trainers` order
        assert f"highest scores peer {int(last.trainers[best])} " in text
