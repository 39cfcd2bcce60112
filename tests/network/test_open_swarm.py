"""Open swarms on real sockets (127.0.0.1): peers join by name, find partners themselves, come and go.

Peers are hosted in this test's process (:class:`ppaia.network.host.Host`: each its own key, sockets,
data directory and tasks; a peer that leaves is cancelled, which closes its sockets at once as a kill
would). ``tests/cli/test_open_peer.py`` runs the same as ``ppaia peer`` processes.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import random
import time
from pathlib import Path

import numpy as np
import pytest
from open_parts import CONFIG, write_parts

import ppaia
from ppaia.config import ConfigError
from ppaia.experiment import OwnData
from ppaia.network.dht import PeerDHT
from ppaia.network.errors import AgreementError
from ppaia.network.host import Host, HostedPeer
from ppaia.network.identity import Identity
from ppaia.network.openswarm import (
    OpenOptions,
    OpenPeer,
    check_open,
    entry_weights,
    exchange_period,
    members_topic,
    swarm_round,
)
from ppaia.network.peer import PeerOptions
from ppaia.network.records import PeerRecord
from ppaia.network.status import Phase, Stuck
from ppaia.network.swarm import HOST, free_port
from ppaia.network.transfer import ModelServer

SAMPLING = OpenOptions(view=8, shuffle=4, period=0.2)


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> tuple[list[str], str]:
    return write_parts(tmp_path_factory.mktemp("open-data"), 8)


def config(**changes) -> ppaia.ExperimentConfig:
    return ppaia.ExperimentConfig.model_validate(CONFIG | changes)


def metrics(data_dir: Path) -> list[dict[str, str]]:
    path = data_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def rounds_of(data_dir: Path) -> list[int]:
    return [int(row["round"]) for row in metrics(data_dir)]


def test_fedavg_is_refused_with_a_message_and_topology_rules_run_on_an_overlay():
    with pytest.raises(ConfigError, match="rule 'fedavg' has a server, and an open swarm elects none"):
        check_open(config(rule="fedavg"))
    for rule in ("consensus", "p2pl", "trimmed_mean", "clipped_gossip"):  # see test_open_overlay.py
        check_open(config(rule=rule))


async def until(done, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        await asyncio.sleep(0.05)


def spec(root: Path, name: str, data: str, test: str, seed: int | None = None, ports=None) -> HostedPeer:
    ports[name] = ports.get(name) or free_port()
    seeds = () if seed is None else ((HOST, ports[seed]),)
    return HostedPeer(root / name, data, test, (HOST, ports[name]), seeds)


@pytest.mark.slow
def test_peers_join_late_leave_and_come_back_and_every_live_peer_finishes(parts, tmp_path, caplog):
    """5 peers start (the first alone: its status says it has no partners; the next 4 together), 2 join
    once the swarm is past round 3 (through a member other than the first), one leaves past round 6 and
    comes back with its data directory past round 8. Every peer alive at the end finishes; the joiners
    start at the swarm's round from their partners' models and end close to the early peers; nobody's
    mixing waited longer than the timing policy's `wait` for the peer that left."""
    data, test = parts
    cfg = config()
    wait = 4.0

    async def scenario():
        arrived, together = [], asyncio.Event()

        async def door() -> None:  # as a launcher's: the first round's peers are let in together
            arrived.append(None)
            if len(arrived) == 4:
                together.set()
            await together.wait()

        lone = Host(cfg, "open-a", wait=wait, linger=5.0, sampling=SAMPLING)
        host = Host(cfg, "open-a", wait=wait, linger=5.0, sampling=SAMPLING, door=door)
        ports: dict[str, int] = {}
        first = lone.join("p0", spec(tmp_path, "p0", data[0], test, ports=ports))
        await until(lambda: first.stuck is Stuck.NO_PARTNERS, 10, "a lone peer saying it has no partners")
        alone = first.status()
        for i in range(1, 5):  # held until all four are at the door (a loaded machine starts them apart)
            host.join(f"p{i}", spec(tmp_path, f"p{i}", data[i], test, "p0", ports))
        early = [first] + [host.peers[f"p{i}"] for i in range(1, 5)]
        await until(lambda: min(p.progress.round for p in early) > 3, 60, "the swarm past round 3")
        for i in (5, 6):
            host.join(f"p{i}", spec(tmp_path, f"p{i}", data[i], test, "p2", ports))
        await until(lambda: host.peers["p1"].progress.round > 6, 60, "peer 1 past round 6")
        await host.leave("p1")
        left_at = rounds_of(tmp_path / "p1")[-1]
        await until(lambda: first.progress.round > 8, 60, "the swarm past round 8")
        host.join("p1", spec(tmp_path, "p1", data[1], test, "p3", ports))
        outcome = await lone.wait_all(120) | await host.wait_all(120)
        return alone, outcome, left_at, {name: peer.name for name, peer in host.peers.items()}

    caplog.set_level(logging.INFO, logger="ppaia.network.openswarm")
    alone, outcome, left_at, names = asyncio.run(scenario())
    joins = {
        name: [r.getMessage() for r in caplog.records if f"peer {peer} joins at round" in r.getMessage()]
        for name, peer in names.items()
    }
    for joiner in ("p5", "p6"):  # from the members' models, weighted by their trust (learned trust)
        assert len(joins[joiner]) == 1 and joins[joiner][0].endswith("(trust-weighted)"), joins
    # one of the four let in together may find the others a round ahead (a loaded machine): round 2
    assert all(not joins[f"p{i}"] or " joins at round 2:" in joins[f"p{i}"][0] for i in range(1, 5)), joins
    assert alone.stuck is Stuck.NO_PARTNERS and alone.phase is Phase.WAITING and alone.index is None
    assert alone.membership is not None and alone.membership.view == 0
    assert outcome == dict.fromkeys(outcome, None) and len(outcome) == 7, outcome
    final = {name: float(metrics(tmp_path / name)[-1]["accuracy"]) for name in outcome}
    for name in outcome:
        assert rounds_of(tmp_path / name)[-1] == cfg.rounds, name
    for joiner in ("p5", "p6"):
        assert rounds_of(tmp_path / joiner)[0] > 3  # joined at the swarm's round, not round 1
    resumed = rounds_of(tmp_path / "p1")
    assert resumed[0] <= 2 and resumed == sorted(set(resumed))  # no round twice: resumed after left_at
    assert left_at in resumed
    early = np.mean([final[f"p{i}"] for i in range(5)])
    for joiner in ("p5", "p6"):
        assert final[joiner] > early - 0.05, (final, early)
    for name in outcome:
        for row in metrics(tmp_path / name):
            assert float(row["mix_s"]) < wait + 1.5, (name, row)


@pytest.mark.slow
def test_a_peer_with_an_incompatible_config_is_refused_when_it_joins(parts, tmp_path):
    data, test = parts

    async def scenario():
        host = Host(config(rounds=40), "open-b", wait=10.0, linger=1.0, sampling=SAMPLING)
        ports: dict[str, int] = {}
        for i in range(2):
            host.join(f"p{i}", spec(tmp_path, f"p{i}", data[i], test, None if i == 0 else "p0", ports))
        await until(lambda: host.peers["p1"].progress.round >= 1, 30, "the swarm running")
        odd = Host(config(rounds=40, lr=0.05), "open-b", wait=10.0, sampling=SAMPLING)
        stranger = odd.join("x", spec(tmp_path, "x", data[2], test, "p1", ports))
        (error,) = (await odd.wait_all(30)).values()
        for name in list(host.tasks):
            await host.leave(name)
        return error, stranger

    error, stranger = asyncio.run(scenario())
    assert isinstance(error, AgreementError)
    assert "incompatible with open swarm 'open-b'" in str(error) and "lr: 0.2 there, 0.05 here" in str(error)
    assert stranger.progress.round == 0  # refused before any round
    assert not metrics(tmp_path / "x")


async def hostile_member(identity: Identity, port: int, seed: int) -> tuple[ModelServer, PeerDHT]:
    """A member (a DHT node, and a server on the same port) that answers every view exchange with fresh,
    validly signed records of made-up members (new keys at dead loopback ports, and many keys claiming
    its own address): endless ids."""
    rng = random.Random(seed)

    def answer(sender: str, offer: list[bytes]) -> list[bytes]:
        now = time.time()
        records = [PeerRecord.create(identity, host=HOST, udp_port=port, tcp_port=port, now=now, ttl=60)]
        for n in range(5):
            fake_port = port if n % 2 else rng.randrange(20000, 30000)
            records.append(
                PeerRecord.create(
                    Identity.generate(), host=HOST, udp_port=fake_port, tcp_port=fake_port, now=now, ttl=60
                ).signed
            )
        return [records[0].signed, *records[1:]]

    server = ModelServer(identity, HOST, port, view=answer, max_request_bytes=8192)
    await server.start()
    dht = PeerDHT(identity)
    await dht.start(HOST, port)
    return server, dht


@pytest.mark.slow
def test_a_hostile_member_advertising_endless_made_up_members_does_not_stop_honest_peers(parts, tmp_path):
    """Every honest peer bootstraps through the hostile member first: its views fill with candidates
    that never answer, which never become partners; the honest peers still find each other and train
    with partners in (almost) every round (a peer slow to start joins at the others' round)."""
    data, test = parts
    cfg = config(rounds=8)

    async def scenario():
        attacker_port = free_port()
        bad = Identity.generate()
        attacker, node = await hostile_member(bad, attacker_port, 0)
        host = Host(cfg, "open-c", wait=6.0, linger=2.0, sampling=SAMPLING)
        ports: dict[str, int] = {}
        try:
            for i in range(4):
                ports[f"p{i}"] = free_port()
                seeds = ((HOST, attacker_port),) + (() if i == 0 else ((HOST, ports["p0"]),))
                host.join(
                    f"p{i}", HostedPeer(tmp_path / f"p{i}", data[i], test, (HOST, ports[f"p{i}"]), seeds)
                )
            flooded = 0  # made-up members seen as candidates while the swarm ran
            limit = time.monotonic() + 120
            while any(not task.done() for task in host.tasks.values()) and time.monotonic() < limit:
                flooded = max(flooded, sum(len(peer.view.candidates) for peer in host.peers.values()))
                await asyncio.sleep(0.1)
            outcome = await host.wait_all(120)
        finally:
            await attacker.stop()
            await node.stop()
        honest = {peer.identity.peer_id for peer in host.peers.values()}
        return outcome, {name: peer.view for name, peer in host.peers.items()}, honest, bad.peer_id, flooded

    outcome, views, honest, bad, flooded = asyncio.run(scenario())
    assert flooded > 0
    assert outcome == dict.fromkeys(outcome, None) and len(outcome) == 4, outcome
    for name, view in views.items():
        assert len(view.members) <= SAMPLING.view and len(view.candidates) <= SAMPLING.view
        assert set(view.members) <= honest | {bad}  # no made-up member ever entered a view
        rows = metrics(tmp_path / name)
        # a peer that joins after the others completed a round adopts their models and goes on from there
        first = int(rows[0]["round"])
        assert [int(row["round"]) for row in rows] == list(range(first, cfg.rounds + 1)) and first <= 3
        with_partners = sum(int(row["received"]) > 0 for row in rows)
        assert with_partners >= len(rows) - 1, (name, rows)


def test_an_open_peer_builds_from_its_own_data_and_agrees_without_peers_or_topology(parts, tmp_path):
    data, test = parts
    a = OpenPeer(config(), PeerOptions(index=0, data_dir=tmp_path / "a"), OwnData.load(data[0], test, 3))
    b = OpenPeer(
        config(peers=50, topology="ring"),
        PeerOptions(index=0, data_dir=tmp_path / "b"),
        OwnData.load(data[1], test, 3),
    )
    assert a.agreement.digest == b.agreement.digest  # N and the topology are nobody's to agree on
    assert a.agreement.shared["swarm"] == "open" and "peers" not in a.agreement.shared
    c = OpenPeer(
        config(lr=0.1), PeerOptions(index=0, data_dir=tmp_path / "c"), OwnData.load(data[2], test, 3)
    )
    assert [d.field for d in a.agreement.differences(c.agreement)] == ["lr"]


MEMBERS = [f"{k:040x}" for k in range(5)]


def honest_rows(rng: random.Random, voters: int, shunned: str) -> list[dict[str, float]]:
    """`voters` members' trust rows over the others (learned trust's: weights in [0, 1]), `shunned` not
    among them; each gives `shunned` a tenth of what it gives the rest at most."""
    rows = []
    for me in [member for member in MEMBERS if member != shunned][:voters]:
        row = {p: rng.uniform(0.1, 1.0) for p in MEMBERS if p != me}
        row[shunned] = rng.uniform(0.0, 0.01)
        rows.append(row)
    return rows


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [{}, {}],  # gossip keeps no trust
        [{"f" * 40: 0.9}],  # a row naming none of the models
        [dict.fromkeys(MEMBERS, 0.0)],  # a row giving them all 0
        [{}, {}, {}, {MEMBERS[0]: 1.0}],  # a row naming one: no opinion about the others
    ],
)
def test_a_joiner_weighs_evenly_when_no_member_holds_one_model_above_another(rows):
    assert entry_weights(MEMBERS, rows).tolist() == pytest.approx([0.2] * 5)


@pytest.mark.parametrize("seed", range(8))
def test_a_joiner_weighs_the_members_models_by_their_trust_in_each_other_and_a_liar_moves_little(seed):
    rng = random.Random(seed)
    shunned = rng.choice(MEMBERS)
    voters = rng.randint(2, 4)
    rows = honest_rows(rng, voters, shunned)
    weights = entry_weights(MEMBERS, rows)
    assert weights.sum().item() == pytest.approx(1.0) and (weights >= 0).all()
    assert weights[MEMBERS.index(shunned)] < 0.2 / 5  # the swarm keeps away from it: so does the joiner
    # a liar puts its whole vote on the shunned member (and names ids nobody has): one vote of voters + 1
    liar = dict.fromkeys(MEMBERS, 0.0) | {shunned: 1.0} | {f"{k:040x}": 1.0 for k in range(100, 150)}
    lied = entry_weights(MEMBERS, [*rows, liar])
    assert lied[MEMBERS.index(shunned)] <= weights[MEMBERS.index(shunned)] + 1 / (voters + 1) + 1e-12
    # nobody who votes trusts it at all: no weight
    zeroed = [row | {shunned: 0.0} for row in rows]
    assert entry_weights(MEMBERS, zeroed)[MEMBERS.index(shunned)] == 0.0


@pytest.mark.parametrize(
    ("pace", "every"),
    [(None, 1.0), (0.1, 0.25), (0.6, 0.3), (2.0, 1.0), (9.5, 4.75), (86_400.0, 10.0), (0.0, 0.25)],
)
def test_view_upkeep_runs_twice_a_round_within_a_range_of_the_period(pace, every):
    """Before its first round: every `period`; then twice a round, so that membership bytes per round
    do not grow with the round's length (a busier machine, a larger swarm), but never more often than
    a quarter period, nor less than every 10 periods (a peer's rounds of a day)."""
    assert exchange_period(1.0, pace) == every


def test_a_held_peer_serves_nothing_and_is_no_member_until_let_in_then_joins_at_the_swarms_round(
    parts, tmp_path
):
    """A launcher's peer held at the door: in the DHT, but its port refuses connections (it is
    reserved), nobody lists or samples it; once let in, it joins at the swarm's round and finishes."""
    data, test = parts
    cfg = config(rounds=6)

    async def scenario():
        reached, gate = asyncio.Event(), asyncio.Event()

        async def door() -> None:
            reached.set()
            await gate.wait()

        ports: dict[str, int] = {}
        host = Host(cfg, "open-d", wait=10.0, linger=2.0, sampling=SAMPLING)
        held_host = Host(cfg, "open-d", wait=10.0, linger=2.0, sampling=SAMPLING, door=door)
        early = [host.join("p0", spec(tmp_path, "p0", data[0], test, ports=ports))]
        early.append(host.join("p1", spec(tmp_path, "p1", data[1], test, "p0", ports)))
        held = held_host.join("p2", spec(tmp_path, "p2", data[2], test, "p0", ports))
        await asyncio.wait_for(reached.wait(), 20)
        await until(lambda: min(p.progress.round for p in early) >= 3, 30, "the swarm at round 3")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(HOST, ports["p2"])
        providers = await early[0].dht.find_providers(members_topic("open-d"))
        seen = {r.peer_id for r in providers} | {m for p in early for m in p.view.ids()}
        gate.set()
        outcome = await held_host.wait_all(60) | await host.wait_all(60)
        return held.identity.peer_id, seen, outcome

    held_id, seen, outcome = asyncio.run(scenario())
    assert held_id not in seen
    assert outcome == dict.fromkeys(["p0", "p1", "p2"], None), outcome
    assert rounds_of(tmp_path / "p2")[0] >= 3 and rounds_of(tmp_path / "p2")[-1] == 6  # the swarm's round


@pytest.mark.slow
def test_a_peer_that_comes_after_the_last_round_ends_with_the_members_newest_models(parts, tmp_path, caplog):
    """Two members finish the last round and linger (a third, on a slow machine, is still training it);
    a peer that joins then runs no round: it ends with the members' newest models (the two's last
    round, the slow one's round before), evaluated and recorded as the last round, and everyone
    finishes."""
    data, test = parts
    cfg = config(rounds=4)

    async def scenario():
        # a worker thread each: the slow peer's training holds its own, as on a machine of its own
        host = Host(cfg, "open-e", wait=2.0, linger=30.0, sampling=SAMPLING, workers=4)
        ports: dict[str, int] = {}
        early = [host.join("p0", spec(tmp_path, "p0", data[0], test, ports=ports))]
        for name in ("p1", "p2"):
            early.append(host.join(name, spec(tmp_path, name, data[int(name[1])], test, "p0", ports)))
        train = early[2].learner.train

        def slow_train(round_: int) -> None:  # its machine: the last round's training takes 8 s
            if round_ == cfg.rounds:
                time.sleep(8.0)
            train(round_)

        early[2].learner.train = slow_train
        done = [tmp_path / "p0", tmp_path / "p1"]
        await until(lambda: all(rounds_of(d)[-1:] == [cfg.rounds] for d in done), 40, "p0 and p1 done")
        assert early[2].progress.phase is not Phase.FINISHED  # still training: the others linger
        late = host.join("p3", spec(tmp_path, "p3", data[3], test, "p1", ports))
        return await host.wait_all(60), late

    caplog.set_level(logging.INFO, logger="ppaia.network.openswarm")
    outcome, late = asyncio.run(scenario())
    assert outcome == dict.fromkeys(["p0", "p1", "p2", "p3"], None), outcome
    ended = [r.getMessage() for r in caplog.records if "came after the last round" in r.getMessage()]
    assert len(ended) == 1 and late.name in ended[0] and "ends with 3 members'" in ended[0], ended
    assert rounds_of(tmp_path / "p3") == [cfg.rounds]  # no round run, the last one recorded
    final = {name: float(metrics(tmp_path / name)[-1]["accuracy"]) for name in outcome}
    assert final["p3"] > min(final["p0"], final["p1"]) - 0.1, final  # the members' models, not its own start
    assert late.progress.phase is Phase.FINISHED and late.progress.round == cfg.rounds


def test_finished_members_linger_until_released_so_a_peer_let_in_after_the_end_starts_from_them(
    parts, tmp_path, caplog
):
    """A launcher's members linger, finished, until it releases them (it does once every peer it let
    in has joined): a peer let in after the last round, whose joining took longer than the swarm's last
    rounds, still finds them and ends with their newest models, instead of finding nobody and running
    the swarm's rounds again alone."""
    data, test = parts
    cfg = config(rounds=3)

    async def scenario():
        released, gate = asyncio.Event(), asyncio.Event()

        async def door() -> None:
            await gate.wait()

        ports: dict[str, int] = {}
        host = Host(cfg, "open-r", wait=5.0, linger=30.0, sampling=SAMPLING, release=released.is_set)
        late_host = Host(cfg, "open-r", wait=5.0, linger=30.0, sampling=SAMPLING, door=door)
        early = [host.join("p0", spec(tmp_path, "p0", data[0], test, ports=ports))]
        early.append(host.join("p1", spec(tmp_path, "p1", data[1], test, "p0", ports)))
        late = late_host.join("p2", spec(tmp_path, "p2", data[2], test, "p0", ports))
        await until(lambda: all(p.progress.phase is Phase.FINISHED for p in early), 30, "p0 and p1 done")
        await asyncio.sleep(2.0)  # unreleased, they would have stopped by now: each sees the other done
        lingering = not any(task.done() for task in host.tasks.values())
        gate.set()
        await until(lambda: late.progress.phase is Phase.FINISHED, 30, "the late peer done")
        released.set()
        return lingering, await host.wait_all(30) | await late_host.wait_all(30), late

    caplog.set_level(logging.INFO, logger="ppaia.network.openswarm")
    lingering, outcome, late = asyncio.run(scenario())
    assert lingering
    assert outcome == dict.fromkeys(["p0", "p1", "p2"], None), outcome
    ended = [r.getMessage() for r in caplog.records if "came after the last round" in r.getMessage()]
    assert len(ended) == 1 and late.name in ended[0] and "ends with 2 members'" in ended[0], ended
    assert rounds_of(tmp_path / "p2") == [cfg.rounds]  # no round run again alone


@pytest.mark.parametrize(
    ("completed", "round_"),
    [([], 1), ([4], 5), ([2, 2], 3), ([1, 2, 3], 3), ([3, 3, 1], 4), ([5, 5, 5, 99], 6), ([0, 7], 1)],
)
def test_the_swarms_round_is_one_after_the_newest_round_two_members_completed(completed, round_):
    """What a fresh peer joins at and ``ppaia launch --open`` follows its schedule by: one member claiming
    a later round (a liar, or one far ahead) moves nothing; stragglers do not hold it back."""
    assert swarm_round(completed) == round_
