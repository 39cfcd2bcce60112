"""Real swarms of ``ppaia peer`` processes on 127.0.0.1.

``ppaia launch`` reproduces ``ppaia run``; a crashed peer resumes from its checkpoint while the others go
on without it; a lying peer is caught reply by reply, banned, and cannot touch the honest peers' models
or stop their servers. Every test starts its own processes and kills what is left in a ``finally``;
every wait is bounded.
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
import secrets
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from in_process import run_peers
from statuses import status_of
from typer.testing import CliRunner

import ppaia
from ppaia import codec
from ppaia.cli.main import app
from ppaia.network.addressbook import index_topic
from ppaia.network.checkpoint import Checkpoint, round_file
from ppaia.network.content import cid_of
from ppaia.network.dht import PeerDHT
from ppaia.network.errors import ProtocolError
from ppaia.network.identity import Identity
from ppaia.network.status import PeerStatus
from ppaia.network.swarm import HOST, Swarm, free_port, free_ports
from ppaia.network.transfer import fetch_status
from ppaia.network.wire import Request, canonical, open_message, read_frame, seal, write_frame
from ppaia.simulation.report import write_outputs

runner = CliRunner()
Statuses = dict[int, PeerStatus | None]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def state_round(swarm: Swarm, index: int) -> int:
    """The last round peer `index` checkpointed."""
    return json.loads((swarm.data_dir(index) / "state.json").read_text())["round"]


def checkpointed(swarm: Swarm, index: int) -> dict[int, dict[str, torch.Tensor]]:
    """Every round's model peer `index` checkpointed, by round (each one must verify)."""
    expected = ppaia.Simulation(swarm.config).setup.layout.expected()
    models, refused = Checkpoint(swarm.data_dir(index), swarm.config, index).rounds(expected)
    assert not refused, refused
    return models


def log_tails(root: Path, lines: int = 20) -> str:
    """The end of every peer log under `root`, for assertion messages."""
    parts = []
    for path in sorted(root.glob("**/peer.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {path}\n" + "\n".join(tail))
    return "\n".join(parts)


def poll(swarm: Swarm, done: Callable[[Statuses], bool], timeout: float) -> Statuses:
    """Poll the running peers' statuses every 0.1 s until `done(statuses)`; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = asyncio.run(swarm.statuses(timeout=1.0))
        if done(statuses):
            return statuses
        time.sleep(0.1)
    raise AssertionError(f"condition not reached within {timeout} s\n{log_tails(swarm.root)}")


# ---------------------------------------------------------------------------------------------------
# launch == run, and the peers learn

PARITY_ROUNDS = 8  # digits, 8 peers, iid: the simulator's worst peer is above 0.76 by then
PARITY = [
    *("--set", "rule=consensus", "--set", "topology=ring", "--set", "partition=iid"),
    *("--set", "seed=0", "--set", f"rounds={PARITY_ROUNDS}"),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rule", "attack"),
    [("consensus", "sign_flip"), ("clipped_gossip", "alie(z=2)"), ("balance(horizon=3)", "sign_flip")],
)
def test_launch_runs_privacy_and_an_attacker_as_run_does(tmp_path, rule, attack):
    """`ppaia launch` takes a config with DP and an attacker: peer 2 is an attacker process, every peer
    keeps its own accountant, and the outputs (ε per peer, the attacker) are those of `ppaia run`; the
    self-centred rules too, each peer clipping or gating what it received itself."""
    settings = [
        *("--set", f"rule={rule}", "--set", "topology=complete"),
        *("--set", "privacy=update_dp(epsilon=8.0)", "--set", f"attack={attack}", "--set", "attackers=[2]"),
        *("--set", "partition=iid", "--set", "seed=1", "--set", "rounds=3"),
    ]
    launched, simulated = tmp_path / "launch", tmp_path / "run"
    result = runner.invoke(
        app, ["launch", "--peers", "4", *settings, "--timeout", "150", "--out", str(launched)]
    )
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}\n{log_tails(tmp_path)}"
    result = runner.invoke(app, ["run", "--set", "peers=4", *settings, "--out", str(simulated)])
    assert result.exit_code == 0, result.output
    networked = json.loads((launched / "summary.json").read_text())
    reference = json.loads((simulated / "summary.json").read_text())
    assert networked["attackers"] == reference["attackers"] == [2]
    assert networked["peer_epsilon"] == pytest.approx(reference["peer_epsilon"], rel=1e-5)
    assert networked["peer_accuracy"] == pytest.approx(reference["peer_accuracy"], abs=1e-4)


@pytest.mark.slow
def test_launch_reproduces_run_and_eight_peers_learn(tmp_path):
    launched, simulated = tmp_path / "launch", tmp_path / "run"
    invocation = ["launch", "--peers", "8", *PARITY, "--timeout", "150", "--out", str(launched)]
    result = runner.invoke(app, invocation)  # launch kills its peers itself if anything fails
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}\n{log_tails(tmp_path)}"
    result = runner.invoke(app, ["run", "--set", "peers=8", *PARITY, "--out", str(simulated)])
    assert result.exit_code == 0, result.output

    files = {path.name for path in simulated.iterdir()}
    assert {"metrics.csv", "summary.json", "peers.csv", "accuracy.png"} <= files
    assert {path.name for path in launched.iterdir()} == files | {"peers"}
    for i in range(8):
        assert (launched / "peers" / str(i) / "peer.log").is_file()
        rows = read_csv(launched / "peers" / str(i) / "metrics.csv")  # the peer's own timings
        assert [int(row["round"]) for row in rows] == list(range(1, PARITY_ROUNDS + 1))
        assert {(row["received"], row["missing"]) for row in rows} == {("2", "0")}  # nobody left out

    networked, reference = read_csv(launched / "metrics.csv"), read_csv(simulated / "metrics.csv")
    rounds = [int(row["round"]) for row in networked]
    assert rounds == [int(row["round"]) for row in reference] == list(range(PARITY_ROUNDS + 1))
    for got, want in zip(networked, reference, strict=True):
        for column in ("acc_mean", "acc_min", "acc_max"):
            assert float(got[column]) == pytest.approx(float(want[column]), abs=1e-4), (got["round"], column)

    first, last = networked[0], networked[-1]
    assert float(last["acc_min"]) > 0.7
    assert float(last["acc_mean"]) > float(first["acc_mean"]) + 0.4
    summary = json.loads((launched / "summary.json").read_text())
    assert summary["round"] == PARITY_ROUNDS and len(summary["peer_accuracy"]) == 8
    assert len(read_csv(launched / "peers.csv")) == 8


# ---------------------------------------------------------------------------------------------------
# crash and resume


@pytest.mark.slow
def test_asynchronous_peers_finish_and_learn_without_waiting_for_each_other(tmp_path):
    config = ppaia.ExperimentConfig(peers=4, rounds=10, partition="iid", rule="consensus", topology="ring")
    swarm = Swarm(config, tmp_path, synchronous=False, extra_args=("--deadline", "1"))
    swarm.start()
    try:
        codes = swarm.wait(timeout=120)
    finally:
        swarm.stop()
    assert codes == dict.fromkeys(range(4), 0), log_tails(tmp_path)
    simulated = ppaia.run(config).final["acc_mean"]
    result = swarm.result()
    for i in range(4):
        assert state_round(swarm, i) == config.rounds
        with open(swarm.data_dir(i) / "metrics.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        # after the first round (start-up), models arrive within the deadline
        assert sum(int(row["received"]) for row in rows[1:]) >= len(rows[1:])
    assert result.final["acc_min"] > 0.7 and abs(result.final["acc_mean"] - simulated) < 0.05


@contextmanager
def seed_node() -> Iterator[int]:
    """A DHT node in a thread of its own that outlives the peers (its port): a bootstrap seed through
    which a peer restarted after all the others finished still joins."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    dht, port = PeerDHT(Identity.generate(), ttl=30.0, rpc_timeout=2.0), free_port()
    try:
        asyncio.run_coroutine_threadsafe(dht.start(HOST, port), loop).result(timeout=10)
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(dht.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def kill_and_restart(swarm: Swarm, restarted: int, dead: int) -> tuple[dict[int, int], dict[int, int]]:
    """Start the swarm, kill two peers once every peer is in round 3 or later, restart one of them; wait
    for the end: (exit codes, the last round each killed peer checkpointed)."""
    try:
        swarm.start()
        before = poll(
            swarm,
            lambda statuses: (
                len(statuses) == 6 and all(info and info.round >= 3 for info in statuses.values())
            ),
            timeout=90,
        )
        swarm.kill(restarted)
        swarm.kill(dead)
        assert all(info.round < swarm.config.rounds for info in before.values())  # killed mid-run
        killed_after = {i: state_round(swarm, i) for i in (restarted, dead)}
        assert killed_after[restarted] >= 1

        swarm.start(restarted)  # same data directory: same key, same checkpoints
        back = poll(swarm, lambda statuses: bool(statuses.get(restarted)), timeout=60)
        assert back[restarted].peer_id == before[restarted].peer_id
        return swarm.wait(timeout=90), killed_after
    finally:
        swarm.stop()


@pytest.mark.slow
def test_a_killed_peer_restarts_from_its_checkpoint_while_the_others_go_on(tmp_path):
    config = ppaia.ExperimentConfig(peers=6, rounds=12, partition="iid", rule="consensus", topology="ring")
    restarted, dead = 1, 4  # not peer 0: the others bootstrap from it
    wait = 10.0  # --wait: before pace-derived deadlines and absent senders, every round cost this much
    with seed_node() as seed:  # the restarted peer may come back after the others are done
        swarm = Swarm(config, tmp_path, extra_args=("--wait", str(wait), "--bootstrap", f"{HOST}:{seed}"))
        codes, killed_after = kill_and_restart(swarm, restarted, dead)
    survivors = [i for i in range(6) if i != dead]
    assert codes == {i: 0 for i in survivors} | {dead: -9}, log_tails(tmp_path)
    resumed = re.findall(rf"peer {restarted} resumes after round (\d+)", swarm.log(restarted))
    assert [int(k) for k in resumed] == [killed_after[restarted]]
    for i in survivors:
        assert state_round(swarm, i) == config.rounds
    assert state_round(swarm, dead) == killed_after[dead]
    files = sorted((swarm.data_dir(restarted) / "rounds").glob("round-*.safetensors"))
    rounds_on_disk = [int(path.stem.removeprefix("round-")) for path in files]
    k = killed_after[restarted]
    caught_up = re.findall(rf"peer {restarted} catches up: skips rounds (\d+)\.\.(\d+)", swarm.log(restarted))
    if caught_up:  # the others were ahead: it adopted their round-R models and went on from R + 1
        ((skipped_from, target),) = caught_up
        assert int(skipped_from) == k + 1 and int(target) > k
        assert rounds_on_disk == [*range(k + 1), *range(int(target), config.rounds + 1)]
    else:
        assert rounds_on_disk == list(range(config.rounds + 1))
    for neighbour in (3, 5):  # went on without the dead peer once it had nothing new to give
        rows = read_csv(swarm.data_dir(neighbour) / "metrics.csv")
        later = [row for row in rows if int(row["round"]) > killed_after[dead] + 1]
        assert later and all(int(row["missing"]) >= 1 for row in later)
    for i in (0, 2, 3, 5):  # the kills cost each survivor about one deadline in all, not --wait a round
        rows = read_csv(swarm.data_dir(i) / "metrics.csv")
        later = [float(row["mix_s"]) for row in rows if int(row["round"]) > max(killed_after.values())]
        assert len(later) >= 5 and sum(later) < 3 * wait, (i, later)

    result = swarm.result()
    assert [row["round"] for row in result.history] == list(range(config.rounds + 1))
    layout = ppaia.Simulation(config).setup.layout
    last_model = checkpointed(swarm, dead)[killed_after[dead]]
    assert torch.equal(result.params[dead], layout.join(last_model))  # the dead peer keeps its last model
    assert all(result.peer_accuracy[i] > 0.7 for i in survivors), result.peer_accuracy


def test_a_damaged_checkpoint_is_reported_and_the_other_peers_results_are_written(tmp_path):
    """What ``ppaia launch`` does after its peers exit: one peer's newest round file is truncated, another
    peer's state.json is garbage; both are reported by file, and the run's outputs are still written."""
    config = ppaia.ExperimentConfig(peers=4, rounds=3, model="logistic", topology="ring", rule="consensus")
    swarm = Swarm(config, tmp_path / "swarm")  # no processes: the test writes the peers' checkpoints
    simulation = ppaia.Simulation(config)
    for i in range(config.peers):
        checkpoint = Checkpoint(swarm.data_dir(i), config, i)
        for round_ in range(config.rounds + 1):
            checkpoint.save(round_, simulation.setup.layout.unflatten(simulation.setup.params[i] + round_))
    truncated = round_file(swarm.data_dir(2), config.rounds)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    (swarm.data_dir(3) / "state.json").write_bytes(b"\x00garbage")

    result = swarm.result()
    assert sorted(swarm.damaged) == [2, 3]
    assert swarm.damaged[2] == [
        f"peers/2/rounds/round-{config.rounds:05d}.safetensors: damaged "
        f"({truncated.stat().st_size} bytes that do not hash to the SHA-256 state.json records for round 3)"
    ]
    assert swarm.damaged[3][0].startswith("peers/3/state.json: not a checkpoint state")
    assert [row["round"] for row in result.history] == list(range(config.rounds + 1))
    initial = simulation.setup.params  # untouched: the test only read them
    for i, shift in {0: config.rounds, 1: config.rounds, 2: config.rounds - 1}.items():
        assert torch.equal(result.params[i], initial[i] + shift)  # peer 2: its last round that verifies
    assert torch.equal(result.params[3], initial[3])  # nothing of peer 3 verifies: its initial model
    out = write_outputs(result, tmp_path / "out")
    assert {"metrics.csv", "summary.json", "peers.csv"} <= {path.name for path in out.iterdir()}


# ---------------------------------------------------------------------------------------------------
# a lying peer

LIES = ("wrong_cid", "nan", "shapes", "replay", "oversized", "garbage")
REASON = {  # what an honest peer must answer to each lie
    "wrong_cid": "wrong_cid",
    "nan": "bad_tensors",
    "shapes": "bad_tensors",
    "replay": "replay",
    "oversized": "oversized",
    "garbage": "malformed",
}
SERVER_ATTACKS = ("malformed", "bad_signature", "oversized")
LIAR = 4
STRIKES = 5  # a peer's BanList default: the fifth bad reply bans the sender


class Liar:
    """Swarm index 4 as a liar: listed in the DHT like any peer, but every model it serves is bad, one
    kind of lie after the other (`LIES`). It answers status requests as an honest member would (running
    the swarm's config), so its partners take it on and ask it for models."""

    def __init__(self, config: ppaia.ExperimentConfig, port: int, identity: Identity) -> None:
        self.identity = identity
        self.port = port
        self.config = config
        simulation = ppaia.Simulation(config)
        self.layout = simulation.setup.layout
        self.tensors = simulation.setup.layout.unflatten(simulation.setup.params[LIAR])
        self.served: list[tuple[str, str]] = []  # (requester's peer id, lie) per model request
        self._previous_nonce = secrets.token_hex(16)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = open_message(await read_frame(reader, 4096), kinds=("request",))
                assert isinstance(request, Request)
                if request.want == "status":
                    info = status_of(self.identity, self.config, LIAR).to_wire()
                    await write_frame(writer, seal(self.identity, "status", nonce=request.nonce, info=info))
                    return
                lie = LIES[len(self.served) % len(LIES)]
                self.served.append((request.sender, lie))
                for frame in self.reply(lie, request):
                    await write_frame(writer, frame)
        except (ProtocolError, OSError):  # the client hangs up as soon as it sees the lie
            pass
        finally:
            writer.close()

    def reply(self, lie: str, request: Request) -> list[bytes]:
        body = codec.encode(self.tensors)
        header = {
            "round": request.round,
            "step": request.step,
            "cid": cid_of(body),
            "size": len(body),
            "chunk": 1 << 20,
            "tensors": codec.tensor_spec(self.tensors),
            "nonce": request.nonce,
        }
        previous, self._previous_nonce = self._previous_nonce, request.nonce
        if lie == "wrong_cid":  # the body is another model than the header names
            other = codec.encode({name: tensor + 1 for name, tensor in self.tensors.items()})
            return [seal(self.identity, "model", **header | {"size": len(other)}), other]
        if lie == "nan":  # correct CID, correct spec, NaN inside
            poisoned = {name: tensor.clone() for name, tensor in self.tensors.items()}
            next(iter(poisoned.values())).view(-1)[0] = float("nan")
            data = codec.encode(poisoned)
            return [seal(self.identity, "model", **header | {"cid": cid_of(data), "size": len(data)}), data]
        if lie == "shapes":
            spec = {
                name: (dtype, [*shape[:-1], shape[-1] + 1])
                for name, (dtype, shape) in header["tensors"].items()
            }
            return [seal(self.identity, "model", **header | {"tensors": spec}), body]
        if lie == "replay":  # a header made for the previous request
            return [seal(self.identity, "model", **header | {"nonce": previous}), body]
        if lie == "oversized":
            return [seal(self.identity, "model", **header | {"size": 1 << 40})]
        return [b"\xff\xfe garbage, not a message"]


async def send_raw(port: int, data: bytes) -> bytes:
    """Send `data` to a peer's server and read until it hangs up (bounded)."""
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(data)
            await writer.drain()
            return await reader.read()
        except ConnectionResetError:  # the server hung up before reading all of it
            return b""
        finally:
            writer.close()


async def attack_server(identity: Identity, port: int) -> None:
    """A garbage frame, a request with a forged signature, a length prefix of 4 GiB."""
    garbage = b"\x00\xff not a message"
    await send_raw(port, struct.pack(">I", len(garbage)) + garbage)
    request = json.loads(
        seal(identity, "request", want="model", round=1, step=0, nonce=secrets.token_hex(16))
    )
    request["sig"] = ("0" if request["sig"][0] != "0" else "1") + request["sig"][1:]
    forged = canonical(request)
    await send_raw(port, struct.pack(">I", len(forged)) + forged)
    await send_raw(port, struct.pack(">I", 2**32 - 1) + b"x" * 64)


@pytest.mark.slow
def test_a_lying_peer_is_caught_banned_and_harmless(tmp_path):
    config = ppaia.ExperimentConfig(peers=5, rounds=20, partition="iid", rule="consensus", topology="ring")
    honest = range(4)  # the liar is index 4: the ring makes it a neighbour of peers 3 and 0
    # A banned neighbour costs no wait at all (it is skipped at once); --wait only has to cover the honest
    # peers' start-up skew, and must, since this test wants every honest exchange to happen.
    swarm = Swarm(config, tmp_path, extra_args=("--wait", "10"))
    liar = Liar(config, swarm.ports[LIAR], Identity.load_or_create(swarm.data_dir(LIAR)))
    # ports[4] is free for TCP and UDP: no process of ours uses it. The liar is a member gone bad: it
    # holds the key the swarm's members file lists for index 4 (an outsider's key would be ignored).
    seen: dict[int, list[dict]] = {i: [] for i in honest}
    after_ban: dict[int, object] = {}

    async def attack() -> None:
        """Once both neighbours have banned the liar: attack every honest server, then ask each one."""
        async with asyncio.timeout(60):
            while len(liar.served) < 2 * STRIKES:
                await asyncio.sleep(0.05)
        for i in honest:
            await attack_server(liar.identity, swarm.ports[i])
        for i in honest:
            try:
                after_ban[i] = await fetch_status(HOST, swarm.ports[i], identity=liar.identity, timeout=5.0)
            except ProtocolError as err:
                after_ban[i] = err.reason

    async def scenario() -> None:
        server = await asyncio.start_server(liar.handle, HOST, liar.port)
        dht = PeerDHT(liar.identity, ttl=30.0, rpc_timeout=2.0)
        attacker = None
        try:
            await dht.start(HOST, liar.port)
            async with asyncio.timeout(90):
                while not await dht.bootstrap([(HOST, swarm.ports[0])]):
                    await asyncio.sleep(0.2)
            await dht.announce(liar.port, HOST)
            await dht.provide(index_topic("ppaia", LIAR))
            attacker = asyncio.create_task(attack())
            async with asyncio.timeout(120):
                while swarm.running():
                    for i, info in (await swarm.statuses(timeout=1.0)).items():
                        if info is not None:
                            seen[i].append(info)
                    await asyncio.sleep(0.1)
                await attacker
        finally:
            if attacker is not None:
                attacker.cancel()
            server.close()
            await dht.stop()

    try:
        for i in honest:
            swarm.start(i)
        asyncio.run(scenario())
        codes = swarm.wait(timeout=30)
    finally:
        swarm.stop()
    assert codes == dict.fromkeys(honest, 0), log_tails(tmp_path)
    ids = {i: seen[i][-1].peer_id for i in honest}

    # Each neighbour asked the liar exactly STRIKES times, rejected each lie for the right reason, then
    # banned it and never asked again; peers 1 and 2 never asked (not neighbours).
    assert Counter(sender for sender, _ in liar.served) == {ids[0]: STRIKES, ids[3]: STRIKES}
    assert {lie for _, lie in liar.served} == set(LIES)
    for i in (0, 3):
        log = swarm.log(i)
        reasons = Counter(REASON[lie] for sender, lie in liar.served if sender == ids[i])
        logged = Counter(re.findall(rf"peer {i}: rejected a model from peer {LIAR} \((\w+)\)", log))
        assert logged == reasons, log
        assert f"peer {i}: peer {LIAR} ({liar.identity.peer_id}) is banned" in log
        statuses = [info for info in seen[i] if liar.identity.peer_id in info.banned]
        assert statuses, f"no status of peer {i} showed the ban"
        counted = statuses[-1].rejections  # the peer's rejections and its server's, merged
        assert all(counted.get(reason, 0) >= count for reason, count in reasons.items()), counted
        assert after_ban[i] == "closed"  # its server refuses the banned peer id
        assert re.search(r"rejected connection from 127\.0\.0\.1: banned", log)
    for i in (1, 2):
        assert isinstance(after_ban[i], PeerStatus) and after_ban[i].index == i  # served: it banned nobody
        assert not {"wrong_cid", "bad_tensors", "replay"} & set(seen[i][-1].rejections)

    # Every server counted the raw attacks and kept serving.
    for i in honest:
        log = swarm.log(i)
        for reason in SERVER_ATTACKS:
            assert re.search(rf"rejected connection from 127\.0\.0\.1: {reason}", log), (i, reason)
        assert any(all(info.rejections.get(r, 0) >= 1 for r in SERVER_ATTACKS) for info in seen[i])

    # Nothing of the liar got in: every honest exchange happened, the liar was left out of every round,
    # and the honest models are exactly those of a run where peer 4 never sends anything.
    for i in honest:
        rows = read_csv(swarm.data_dir(i) / "metrics.csv")
        assert [int(row["round"]) for row in rows] == list(range(1, config.rounds + 1))
        neighbour_of_liar = i in (0, 3)
        assert {(row["received"], row["missing"]) for row in rows} == (
            {("1", "1")} if neighbour_of_liar else {("2", "0")}
        )
        assert float(rows[-1]["accuracy"]) > 0.8
        assert state_round(swarm, i) == config.rounds
    expected = run_peers(config, drop={LIAR})
    for i in honest:
        final = liar.layout.join(checkpointed(swarm, i)[config.rounds])
        torch.testing.assert_close(final, expected[i], rtol=1e-4, atol=1e-5)


def test_a_launchers_ports_are_distinct_and_each_free_for_tcp_and_udp():
    """A launcher gives each of its peers a port for both its TCP server and its UDP DHT node: 300 of
    them, all different (the OS may hand out a probed port again), each bindable both ways."""
    ports = free_ports(300)
    assert len(set(ports)) == 300
    for port in ports[:20]:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        ):
            tcp.bind((HOST, port))
            udp.bind((HOST, port))
