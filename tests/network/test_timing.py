"""The peer loop's timing policy on live local servers: waiting, staleness, giving up, bans."""

import asyncio
import contextlib
import csv
import logging
import re
import struct
import time
from collections import Counter

import pytest
import torch
from in_process import run_peers
from statuses import serving, status_of

import ppaia
from ppaia import codec
from ppaia.network.checkpoint import Checkpoint
from ppaia.network.content import cid_of
from ppaia.network.errors import ProtocolError
from ppaia.network.identity import Identity
from ppaia.network.peer import Peer, PeerOptions
from ppaia.network.swarm import free_port
from ppaia.network.transfer import ModelServer
from ppaia.network.wire import open_message, read_frame, seal, write_frame

CONFIG = ppaia.ExperimentConfig.model_validate({"peers": 3, "rounds": 4, "model": "logistic"})


def make_peer(tmp_path, **options) -> Peer:
    return Peer(CONFIG, PeerOptions(index=0, data_dir=tmp_path, **options), Identity.generate())


async def with_neighbour(peer: Peer, body):
    """Run `body(server)` with peer 1 served by a local ModelServer that `peer` resolves directly."""
    server = serving(ModelServer(Identity.generate()), CONFIG, 1)
    await server.start()
    address = ("127.0.0.1", server.port)

    async def resolve(index, timeout=5.0):
        peer.book.pinned[index] = server.identity.peer_id
        return address

    peer.book.address = resolve
    try:
        return await body(server)
    finally:
        await server.stop()


def model(peer: Peer, value: float):
    return {name: t.detach().clone().fill_(value) for name, t in peer.learner.tensors().items()}


def test_synchronous_waits_for_the_version_and_restarts_while_the_sender_progresses(tmp_path):
    peer = make_peer(tmp_path, wait=0.6)

    async def body(server):
        async def sender():  # progresses every 0.4 s: the 0.6 s wait must keep restarting
            for step in range(4):
                server.publish(1, step, model(peer, step))
                await asyncio.sleep(0.4)
            server.publish(2, 0, model(peer, 9.0))

        task = asyncio.create_task(sender())
        started = time.monotonic()
        fetched, stale = await peer._fetch(1, 2, 0)
        await task
        return fetched, stale, time.monotonic() - started

    fetched, stale, took = asyncio.run(with_neighbour(peer, body))
    assert fetched is not None and not stale and float(fetched[0]) == 9.0
    assert took > 1.2  # longer than one `wait`: each new version of the sender restarted it


def test_asynchronous_takes_a_recent_stale_model_but_not_an_old_one_or_for_a_broadcast(tmp_path):
    peer = make_peer(tmp_path, synchronous=False, deadline=0.3, max_staleness=2)

    async def body(server):
        server.publish(2, 1, model(peer, 2.0))
        recent = await peer._fetch(1, 4, 0)  # two rounds behind: used, marked stale
        too_old = await peer._fetch(1, 5, 0)  # three rounds behind: left out
        broadcast = await peer._fetch(1, 4, 0, substitute=False)
        return recent, too_old, broadcast

    (recent, stale), (too_old, _), (broadcast, _) = asyncio.run(with_neighbour(peer, body))
    assert stale and float(recent[0]) == 2.0
    assert too_old is None and broadcast is None


def test_a_sender_past_the_version_is_left_out_at_once_and_banned_senders_are_skipped(tmp_path):
    peer = make_peer(tmp_path, wait=30.0)

    async def body(server):
        for step in range(6):
            server.publish(3 + step // 2, step % 2, model(peer, step))
        started = time.monotonic()
        gone = await peer._fetch(1, 1, 0)  # dropped from the sender's window: it will never come
        quick = time.monotonic() - started
        for _ in range(peer.strikes.bans.max_strikes):
            peer.strikes.bans.strike(server.identity.peer_id, "test")
        banned = await peer._fetch(1, 5, 1)
        return gone, quick, banned

    (gone, _), quick, (banned, _) = asyncio.run(with_neighbour(peer, body))
    assert gone is None and quick < 5
    assert banned is None


@pytest.mark.parametrize("synchronous", [True, False])
def test_a_silent_sender_times_out(tmp_path, synchronous):
    peer = make_peer(tmp_path, synchronous=synchronous, wait=0.5, deadline=0.5)

    async def body(server):
        started = time.monotonic()
        fetched = await peer._fetch(1, 1, 0)
        return fetched, time.monotonic() - started

    (fetched, _), took = asyncio.run(with_neighbour(peer, body))
    assert fetched is None and 0.4 < took < 3


# ---------------------------------------------------------------------------------------------------
# deadlines from the swarm's pace; absent senders; slow drip


def paced(peer: Peer, round_seconds: float) -> Peer:
    """`peer` as if its last rounds had each taken `round_seconds` (its deadline follows them)."""
    peer.timing.history.extend([round_seconds] * 5)
    return peer


async def step(peer: Peer, index: int, round_: int, step_: int = 0):
    """One step's fetch, then the background status requests it started are let finish (as they would
    between two steps of a real round loop)."""
    fetched = await peer._fetch(index, round_, step_)
    await asyncio.gather(*peer.timing.probes.values())
    return fetched


def test_the_deadline_follows_the_pace_between_min_wait_and_wait(tmp_path):
    peer = make_peer(tmp_path, wait=30.0, min_wait=0.5)
    assert peer.timing.deadline() == 30.0  # no round timed yet: the start-up skew may be large
    assert paced(peer, 1.0).timing.deadline() == pytest.approx(4.0)
    peer.timing.record(500.0)  # one slow round does not move a median
    assert peer.timing.deadline() == pytest.approx(4.0)
    peer.timing.history.clear()
    assert paced(peer, 0.01).timing.deadline() == 0.5  # never under min_wait
    peer.timing.history.clear()
    assert paced(peer, 100.0).timing.deadline() == 30.0  # never over wait
    assert make_peer(tmp_path, synchronous=False, deadline=1.5).timing.deadline() == 1.5


@pytest.mark.parametrize(
    ("paces", "deadline"),
    [
        ([1.0, 1.2, 0.8], 4.0),  # the members' median pace
        ([1.0, 1.0, 1.0, 10_000.0, 86_400.0], 4.0),  # a few lying members move the median little
        ([0.0] * 5, 0.5),  # never under min_wait
        ([86_400.0] * 3, 30.0),  # never over wait
        ([], 30.0),  # nobody says: the first-round wait
    ],
)
def test_a_joiner_starts_its_deadlines_from_the_pace_its_members_report(tmp_path, paces, deadline):
    peer = make_peer(tmp_path, wait=30.0, min_wait=0.5)
    peer.timing.assume(paces)
    assert peer.timing.deadline() == pytest.approx(deadline)
    assert peer.status().pace is None  # the members' pace is not this peer's own
    peer.timing.record(2.0)  # once it has timed a round, its own pace rules
    assert peer.timing.deadline() == pytest.approx(8.0) and peer.status().pace == 2.0


def test_a_dead_sender_costs_one_deadline_then_none_until_it_is_back(tmp_path, caplog):
    peer = paced(make_peer(tmp_path, wait=20.0, min_wait=0.3), 0.05)  # deadline 0.3 s, far below wait

    async def body(server):
        port = server.port
        server.publish(1, 0, model(peer, 1.0))
        assert float((await peer._fetch(1, 1, 0))[0][0]) == 1.0
        await server.stop()  # the sender dies
        took = []
        for round_ in range(2, 7):
            started = time.monotonic()
            fetched, _ = await step(peer, 1, round_)
            took.append(time.monotonic() - started)
            assert fetched is None
        back = serving(ModelServer(server.identity, port=port), CONFIG, 1)  # restarted: same key and port
        await back.start()
        try:
            back.publish(7, 0, model(peer, 7.0))
            back.publish(7, 1, model(peer, 7.5))
            missed, _ = await step(peer, 1, 7, 0)  # its status is asked while this step goes on
            returned, _ = await step(peer, 1, 7, 1)  # and from the next step on it is waited for
        finally:
            await back.stop()
        return took, missed, returned

    with caplog.at_level(logging.INFO, logger="ppaia.network"):
        took, missed, returned = asyncio.run(with_neighbour(peer, body))
    ran_out = re.findall(r"no version \((\d+), 0\) from peer 1 in time", caplog.text)
    skipped = re.findall(r"peer 1 is absent .* left out without waiting", caplog.text)
    assert ran_out == ["2"] and len(skipped) == 5  # one wait ran out; none of the next steps waited
    assert took[0] < 20.0 / 4  # the deadline, not the configured wait
    assert all(t < 20.0 / 4 for t in took[1:])
    assert missed is None and returned is not None and float(returned[0]) == 7.5
    assert "peer 1 is back (newest version (7, 1))" in caplog.text and 1 not in peer.timing.absent


def test_a_stuck_sender_is_asked_once_per_step_until_it_progresses(tmp_path):
    peer = paced(make_peer(tmp_path, wait=0.6, min_wait=0.3), 0.05)

    async def body(server):
        server.publish(1, 0, model(peer, 1.0))  # alive and answering, but never gets further
        first, _ = await step(peer, 1, 2)  # waits `wait` (it answers, so it may be waiting itself)
        before = Counter(server.served)
        later = [await step(peer, 1, round_) for round_ in (3, 4, 5)]
        asked = Counter(server.served) - before
        server.publish(6, 0, model(peer, 6.0))  # it moves on: waited for again, and used
        server.publish(6, 1, model(peer, 6.5))
        missed, _ = await step(peer, 1, 6, 0)
        back, _ = await step(peer, 1, 6, 1)
        return first, later, asked, missed, back

    first, later, asked, missed, back = asyncio.run(with_neighbour(peer, body))
    assert first is None and all(model is None for model, _ in later)
    assert asked == {"status": 3}  # one status request per step, no model request, no polling
    assert missed is None and back is not None and float(back[0]) == 6.5


def test_an_asynchronous_absent_sender_still_gives_its_recent_stale_model_without_waiting(tmp_path):
    peer = make_peer(tmp_path, synchronous=False, deadline=0.3, max_staleness=2)

    async def body(server):
        server.publish(3, 0, model(peer, 3.0))
        first = await step(peer, 1, 4)  # waits the deadline, takes the stale model, marks absent
        before = Counter(server.served)
        second = await step(peer, 1, 5)  # no wait: the same stale model, still recent enough
        asked = Counter(server.served) - before
        third = await step(peer, 1, 6)  # too old now: left out
        return first, second, third, asked

    (first, s1), (second, s2), (third, _), asked = asyncio.run(with_neighbour(peer, body))
    assert s1 and s2 and float(first[0]) == float(second[0]) == 3.0 and third is None
    assert asked == {"status": 1, "model": 1}  # one status, then the stale model itself; no polling


class Dripper:
    """A sender that answers a model request with a correct, signed header and then `behaviour`:
    "drip" sends the body a byte at a time, "stall" sends half of it and stops, "silent" sends nothing
    at all (not even the header). It answers status requests as an honest peer running CONFIG."""

    def __init__(self, peer: Peer, behaviour: str) -> None:
        self.identity = Identity.generate()
        self.behaviour = behaviour
        self.tensors = model(peer, 1.0)
        self.requests = 0

    async def handle(self, reader, writer) -> None:
        try:
            request = open_message(await read_frame(reader, 4096), kinds=("request",))
            if request.want == "status":
                info = status_of(self.identity, CONFIG, 1).to_wire()
                await write_frame(writer, seal(self.identity, "status", nonce=request.nonce, info=info))
                return
            self.requests += 1
            body = codec.encode(self.tensors)
            if self.behaviour == "silent":
                await asyncio.sleep(30)
                return
            header = seal(
                self.identity, "model", round=request.round, step=request.step, cid=cid_of(body),
                size=len(body), chunk=1 << 20, tensors=codec.tensor_spec(self.tensors), nonce=request.nonce,
            )  # fmt: skip
            await write_frame(writer, header)
            writer.write(struct.pack(">I", len(body)))
            if self.behaviour == "stall":
                writer.write(body[: len(body) // 2])
                await writer.drain()
                await asyncio.sleep(30)
            for i in range(len(body)):
                writer.write(body[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ProtocolError, OSError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def played_by(dripper, peer):
    """`dripper` serving on 127.0.0.1 as whichever index `peer` looks up, while the block runs."""
    server = await asyncio.start_server(dripper.handle, "127.0.0.1", 0)
    address = ("127.0.0.1", server.sockets[0].getsockname()[1])

    async def resolve(index, timeout=5.0):
        peer.book.pinned[index] = dripper.identity.peer_id
        return address

    peer.book.address = resolve
    try:
        yield
    finally:
        server.close()


@pytest.mark.parametrize(("behaviour", "struck"), [("drip", True), ("stall", True), ("silent", False)])
def test_a_sender_that_starts_a_reply_and_trickles_it_is_struck_one_that_never_starts_is_not(
    tmp_path, behaviour, struck
):
    peer = paced(make_peer(tmp_path, wait=3.0, min_wait=1.0), 0.05)  # deadline 1 s
    dripper = Dripper(peer, behaviour)

    async def body():
        async with played_by(dripper, peer), asyncio.timeout(20):
            return await peer._fetch(1, 1, 0)

    fetched, _ = asyncio.run(body())
    assert fetched is None and dripper.requests >= 1
    rejections = peer.strikes.rejections
    if struck:  # every request it answered so was a strike
        assert rejections == {"slow_sender": dripper.requests}, rejections
        bans = peer.strikes.bans
        assert not bans.is_banned(dripper.identity.peer_id) or dripper.requests >= bans.max_strikes
    else:  # a sender that never answers may be down: looked up again, not struck
        assert rejections == {}, rejections


def test_a_slow_drip_sender_is_banned_after_repeated_strikes(tmp_path):
    peer = paced(make_peer(tmp_path, wait=3.0, min_wait=1.0), 0.05)
    dripper = Dripper(peer, "drip")

    async def body():
        async with played_by(dripper, peer), asyncio.timeout(60):
            for round_ in range(1, 20):
                peer.timing.absent.clear()  # ask it properly every round, as if it had progressed
                await peer._fetch(1, round_, 0)
                if peer.strikes.bans.is_banned(dripper.identity.peer_id):
                    return round_

    banned_in = asyncio.run(body())
    assert banned_in is not None and dripper.requests == peer.strikes.bans.max_strikes


# ---------------------------------------------------------------------------------------------------
# real peers in one process: a killed peer costs its neighbours one deadline, and is used again once back

SWARM = ppaia.ExperimentConfig.model_validate(
    {
        "peers": 4,
        "rounds": 400,  # a cap: the test ends the run as soon as it has seen what it checks
        "model": "logistic",
        "dataset": "synthetic(samples=400, test_samples=100, features=16)",
        "partition": "iid",
        "topology": "ring",
        "rule": "consensus",
        "eval_every": 1000,
    }
)
WAIT = 10.0  # --wait: what every round after the kill cost before the fix


class LocalSwarm:
    """Real :class:`Peer` objects in this event loop, each with its own sockets on 127.0.0.1."""

    def __init__(self, config: ppaia.ExperimentConfig, root, **options) -> None:
        self.config, self.root, self.options = config, root, options
        self.ports = [free_port() for _ in range(config.peers)]
        self.tasks: dict[int, asyncio.Task] = {}

    async def start(self, index: int) -> None:
        options = PeerOptions(
            index=index,
            data_dir=self.root / str(index),
            listen=("127.0.0.1", self.ports[index]),
            bootstrap=() if index == 0 else (("127.0.0.1", self.ports[0]),),
            **self.options,
        )
        peer = await asyncio.to_thread(Peer, self.config, options)  # builds its learner off the loop
        self.tasks[index] = asyncio.create_task(peer.run())

    async def kill(self, index: int) -> None:
        task = self.tasks.pop(index)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def stop(self) -> None:
        for index in list(self.tasks):
            await self.kill(index)

    def rows(self, index: int) -> list[dict[str, str]]:
        path = self.root / str(index) / "metrics.csv"
        if not path.exists():
            return []
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))

    async def until(self, done, timeout: float) -> None:
        """Poll every 0.05 s until `done()`; fails after `timeout` s (or if a peer task failed)."""
        async with asyncio.timeout(timeout):
            while not done():
                for task in self.tasks.values():
                    if task.done():
                        task.result()  # raises what ended it
                await asyncio.sleep(0.05)


def test_a_killed_peer_costs_its_neighbours_one_deadline_and_is_used_again_once_back(tmp_path, caplog):
    swarm = LocalSwarm(SWARM, tmp_path, wait=WAIT, min_wait=1.5, linger=0.0)
    dead, neighbours = 2, (1, 3)
    marks = {}

    def last_round(i: int) -> int:
        rows = swarm.rows(i)
        return int(rows[-1]["round"]) if rows else 0

    def received_from_both_after(round_: int) -> bool:
        return all(
            any(int(r["round"]) > round_ and r["received"] == "2" for r in swarm.rows(i)) for i in neighbours
        )

    async def scenario() -> None:
        try:
            for i in range(SWARM.peers):
                await swarm.start(i)
            await swarm.until(lambda: all(last_round(i) >= 3 for i in range(SWARM.peers)), timeout=60)
            await swarm.kill(dead)
            marks["killed"] = max(last_round(i) for i in range(SWARM.peers))
            await swarm.until(
                lambda: all(last_round(i) >= marks["killed"] + 6 for i in neighbours), timeout=30
            )
            marks["restarted"] = max(last_round(i) for i in range(SWARM.peers))
            marks["log"] = caplog.text
            await swarm.start(dead)  # same data directory: same key, its checkpoints
            await swarm.until(lambda: received_from_both_after(marks["restarted"]), timeout=60)
        finally:
            await swarm.stop()

    with caplog.at_level(logging.INFO, logger="ppaia.network"):
        asyncio.run(scenario())
    # Before the restart: each neighbour ran out of time for the dead peer exactly once, and never for
    # anyone else (the wait did not cascade to peers that were waiting for a neighbour of the dead one).
    ran_out = Counter(re.findall(r"peer (\d): no version \(\d+, \d\) from peer (\d) in time", marks["log"]))
    assert ran_out == {(str(i), str(dead)): 1 for i in neighbours}, ran_out
    for i in range(SWARM.peers):
        if i == dead:
            continue
        after = [row for row in swarm.rows(i) if marks["killed"] < int(row["round"]) <= marks["restarted"]]
        assert len(after) >= 5
        assert all(float(row["mix_s"]) < WAIT / 2 for row in after), after  # before the fix: >= WAIT each
        if i in neighbours:
            assert all(row["received"] == "1" for row in after[1:])  # left out, without waiting
    assert re.search(rf"peer [13]: peer {dead} is back", caplog.text)  # and used again: see `until`


def test_in_process_peers_with_every_model_received_reproduce_the_peers_run_by_hand(tmp_path):
    """The synchronous guarantee with pace-derived deadlines: nobody is left out of a healthy run, and
    every peer's models are those of the learners run by hand (= the simulator's)."""
    config = SWARM.model_copy(update={"rounds": 6})
    swarm = LocalSwarm(config, tmp_path, wait=WAIT, min_wait=1.5, linger=5.0)

    async def scenario() -> None:
        try:
            for i in range(config.peers):
                await swarm.start(i)
            async with asyncio.timeout(90):
                await asyncio.gather(*swarm.tasks.values())
        finally:
            await swarm.stop()

    asyncio.run(scenario())
    expected = run_peers(config)
    layout = ppaia.Simulation(config).setup.layout
    for i in range(config.peers):
        assert {(row["received"], row["missing"]) for row in swarm.rows(i)} == {("2", "0")}
        checkpoint = Checkpoint(tmp_path / str(i), config, i)
        round_, final, _ = checkpoint.latest(layout.expected())
        assert round_ == config.rounds
        torch.testing.assert_close(layout.join(final), expected[i], rtol=1e-4, atol=1e-5)
