"""Peers compare the shared part of their configs when they first talk and refuse a partner that runs
another one, naming the fields; every status a peer receives is validated, and a hostile one is struck."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import pytest
from statuses import status_of

import ppaia
from ppaia.network.agreement import OWN_DATA, PER_PEER, Agreement, describe, digest_of, shared_config
from ppaia.network.identity import Identity
from ppaia.network.peer import Peer, PeerOptions
from ppaia.network.status import MAX_LISTED, PeerStatus, Phase
from ppaia.network.transfer import fetch_status
from ppaia.network.wire import open_message, read_frame, seal, write_frame

BASE = {"peers": 3, "rounds": 4, "model": "logistic", "partition": "iid", "topology": "ring"}
CONFIG = ppaia.ExperimentConfig.model_validate(BASE)

# One change of every shared field, and the dotted field it must be named by.
SHARED_CHANGES = {
    "peers": ({"peers": 4}, "peers"),
    "rounds": ({"rounds": 5}, "rounds"),
    "seed": ({"seed": 1}, "seed"),
    "dataset": ({"dataset": {"name": "digits", "test_fraction": 0.3}}, "dataset.test_fraction"),
    "partition": ({"partition": "dirichlet(0.5)"}, "partition"),
    "min_samples": ({"min_samples": 3}, "min_samples"),
    "holdout": ({"holdout": 0.1}, "holdout"),
    "model": ({"model": "mlp"}, "model"),
    "init": ({"init": "independent"}, "init"),
    "rule": ({"rule": "gossip"}, "rule"),
    "topology": ({"topology": "complete"}, "topology"),
    "allow_disconnected": ({"allow_disconnected": True}, "allow_disconnected"),
    "mixing": ({"mixing": "uniform"}, "mixing"),
    "link_up": ({"link_up": 0.9}, "link_up"),
    "local_epochs": ({"local_epochs": 2}, "local_epochs"),
    "batch_size": ({"batch_size": 16}, "batch_size"),
    "lr": ({"lr": 0.2}, "lr"),
    "optimizer": ({"optimizer": {"name": "sgd", "momentum": 0.9}}, "optimizer.momentum"),
    "tasks": ({"tasks": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]}, "tasks"),
}
PER_PEER_CHANGES = {
    "privacy": {"privacy": "dp_sgd(noise_multiplier=1.0)"},
    "attack": {"attack": "sign_flip", "attackers": [1]},
    "ewc": {"ewc": {"strength": 1.0}},
    "eval_every": {"eval_every": 2},
    "eval_local_phase": {"eval_local_phase": True},
    "eval_peers": {"eval_peers": 2},
    "plugins": {"plugins": ["colorsys"]},  # any importable module: where a peer's code lives is its own
    "churn": {"churn": {"joins": {1: 3}}},  # the launcher's schedule, not what a peer computes
    "device": {"device": "auto"},  # where a peer computes
}


def config(**changes) -> ppaia.ExperimentConfig:
    return ppaia.ExperimentConfig.model_validate(BASE | changes)


def test_every_config_field_is_either_shared_and_compared_or_declared_per_peer():
    """A field added to the config is shared unless declared per-peer; this makes the choice visible."""
    assert set(ppaia.ExperimentConfig.model_fields) == set(SHARED_CHANGES) | PER_PEER | {"attackers"}
    assert set(PER_PEER_CHANGES) | {"attackers"} == PER_PEER


@pytest.mark.parametrize("field", sorted(SHARED_CHANGES))
def test_a_change_of_any_shared_field_changes_the_digest_and_is_named(field):
    changes, named = SHARED_CHANGES[field]
    mine, theirs = Agreement.of(CONFIG), Agreement.of(config(**changes))
    assert mine.digest != theirs.digest
    assert [difference.field for difference in mine.differences(theirs)] == [named]
    assert Agreement.of(config()) == mine  # the digest of equal configs is equal


@pytest.mark.parametrize("field", sorted(PER_PEER_CHANGES))
def test_per_peer_fields_are_not_compared(field):
    assert Agreement.of(config(**PER_PEER_CHANGES[field])) == Agreement.of(CONFIG)


def test_a_peer_with_its_own_data_keeps_its_data_spec_to_itself():
    shared = shared_config(config(seed=1), own_data=True)
    assert not OWN_DATA & set(shared) and shared["seed"] == 1
    other_data = config(dataset={"name": "digits", "test_fraction": 0.5}, partition="dirichlet(0.1)")
    assert Agreement.of(other_data, own_data=True) == Agreement.of(CONFIG, own_data=True)


def test_the_differences_name_every_field_with_both_values():
    mine, theirs = Agreement.of(CONFIG), Agreement.of(config(seed=1, lr=0.2, optimizer="adam"))
    assert [d.field for d in mine.differences(theirs)] == ["lr", "optimizer", "seed"]
    text = describe(mine.differences(theirs))
    assert text == 'lr: 0.2 there, 0.05 here; optimizer: "adam" there, "sgd" here; seed: 1 there, 0 here'


def test_values_that_compare_equal_in_python_but_not_in_json_differ():
    shared = shared_config(CONFIG)
    for field, value in (("seed", 0.0), ("allow_disconnected", 0), ("lr", "0.05")):
        other = shared | {field: value}
        theirs = Agreement(digest=digest_of(other), shared=other)
        assert [d.field for d in Agreement.of(CONFIG).differences(theirs)] == [field]


# ---------------------------------------------------------------------------------------------------
# every status received is validated: a family of hostile statuses


GOOD = status_of(Identity.generate(), CONFIG, 1).to_wire()
SHARED = GOOD["agreement"]["shared"]
INVALID = {
    "peer_id": ["", "A" * 40, "a" * 39, 5, None],
    "index": [-1, "0", 1.0, True, 2**41],
    "round": [-1, "1", None, 1.5, 2**41],
    "rounds": [0, None, "4"],
    "step": [-1, None, False],
    "phase": ["done", "", None, 1, "FINISHED"],
    "accuracy": ["0.5", True, [0.5], {}],
    "loss": ["x", False],
    "epsilon": [-1.0, "x", True],
    "missing": [-1, 0.5, None],
    "stale": [-1, "0"],
    "rejections": [{"made_up": 1}, {"malformed": -1}, {"malformed": 1.0}, [], None],
    "banned": [["x" * 65], [""], ["a" * 40] * (MAX_LISTED + 1), "a" * 40, [1]],
    "banned_total": [-1, None],
    "refused": [[-1], ["0"], [0] * (MAX_LISTED + 1), 0, None],
    "latest": [{"round": 1}, {"round": 1, "step": 0, "cid": "", "size": 0}, 5, {"round": 1, "x": 2}],
    "completed": [{"round": 1, "step": 0, "cid": "x", "size": 0}, {"round": 1}, 5],  # GOOD serves none
    "traffic": [
        None,
        [],
        {"sent": -1},
        {"received": 2**63},
        {"sent": 1.5},
        {"sent": "1"},
        {"received": 5, "received_from": {"b" * 40: 6}},  # more from one sender than in all
        {"received": 5, "received_from": {"B" * 40: 1}},
        {"received": 10**6, "received_from": {f"{k:040x}": 1 for k in range(MAX_LISTED + 1)}},
        {"received": 5, "extra": 1},
    ],
    "trust": [
        None,
        [],
        {"b" * 40: 1.5},
        {"b" * 40: -0.01},
        {"b" * 40: float("nan")},
        {"b" * 40: float("inf")},
        {"b" * 40: None},
        {"b" * 40: "0.5"},
        {"b" * 40: True},
        {"<b>": 0.5},
        {f"{k:040x}": 0.5 for k in range(MAX_LISTED + 1)},
        {GOOD["peer_id"]: 0.5},  # trust in itself
    ],
    "pace": [-1.0, 86_401.0, "1.0", True, "inf", [1.0]],  # a round time: seconds, 0 .. a day
    "agreement": [
        None,
        {},
        {"digest": "0" * 64, "shared": SHARED},  # a digest of something else
        {"digest": GOOD["agreement"]["digest"], "shared": SHARED | {"seed": 7}},  # the shared part altered
        {"digest": digest_of(SHARED), "shared": SHARED, "extra": 1},
        {"digest": digest_of(SHARED).upper(), "shared": SHARED},
    ],
}


def test_a_valid_status_travels_unchanged_and_a_value_that_is_not_finite_as_null():
    status = status_of(Identity.generate(), CONFIG, 2, accuracy=0.75, loss=float("nan"), epsilon=1.5)
    received = PeerStatus.from_wire(status.to_wire())
    assert received == status.model_copy(update={"loss": None}) and received.phase is Phase.MIXING


def hostile_statuses() -> list[tuple[str, dict]]:
    """Each field set to each invalid value, each required field missing, unknown fields added, and
    seeded combinations of several at once."""
    cases = [
        (f"{field}={value!r}"[:60], GOOD | {field: value})
        for field, values in INVALID.items()
        for value in values
    ]
    required = [name for name, info in PeerStatus.model_fields.items() if info.is_required()]
    cases += [(f"no {name}", {k: v for k, v in GOOD.items() if k != name}) for name in required]
    cases += [("unknown field", GOOD | {"latest_model": None}), ("not an object", [])]
    rng = random.Random(5)
    for n in range(20):
        fields = rng.sample(sorted(INVALID), rng.randint(2, 4))
        cases.append((f"combined {n}", GOOD | {field: rng.choice(INVALID[field]) for field in fields}))
    return cases


@pytest.mark.parametrize(
    ("name", "info"), hostile_statuses(), ids=lambda value: value if isinstance(value, str) else ""
)
def test_every_hostile_status_is_refused_as_bad_status(name, info):
    with pytest.raises(ppaia.network.ProtocolError) as caught:
        PeerStatus.from_wire(info)
    assert caught.value.reason == "bad_status"


class StatusServer:
    """A peer's server that answers status requests with `info` (whatever it is) and model requests
    not at all; counts the requests by what they want."""

    def __init__(self, info_of) -> None:
        self.identity = Identity.generate()
        self.info_of = info_of  # () -> the status JSON to sign and send
        self.asked: list[str] = []

    async def handle(self, reader, writer) -> None:
        try:
            request = open_message(await read_frame(reader, 4096), kinds=("request",))
            self.asked.append(request.want)
            if request.want == "status":
                await write_frame(
                    writer, seal(self.identity, "status", nonce=request.nonce, info=self.info_of())
                )
        finally:
            writer.close()


def peer_with(tmp_path, server: StatusServer, port: int, **options) -> Peer:
    """Peer 0 of CONFIG whose partner 1 is `server` on `port` (resolved without a DHT)."""
    peer = Peer(
        CONFIG,
        PeerOptions(index=0, data_dir=tmp_path, wait=1.0, min_wait=0.5, **options),
        Identity.generate(),
    )

    async def resolve(index, timeout=5.0):
        peer.book.pinned[index] = server.identity.peer_id
        return ("127.0.0.1", port)

    peer.book.address = resolve
    return peer


async def serve(server: StatusServer, body):
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    try:
        async with asyncio.timeout(30):
            return await body(listening.sockets[0].getsockname()[1])
    finally:
        listening.close()


def test_a_hostile_status_is_struck_and_its_sender_never_asked_for_a_model(tmp_path):
    cases = [info for _, info in hostile_statuses()[::7]]  # a spread of the family, through the sockets
    server = StatusServer(lambda: cases[len(server.asked) % len(cases)])

    async def body(port):
        peer = peer_with(tmp_path, server, port)
        client = Identity.generate()
        with pytest.raises(ppaia.network.ProtocolError) as caught:
            await fetch_status("127.0.0.1", port, identity=client, timeout=5)
        assert caught.value.reason == "bad_status"
        fetched = await peer._fetch(1, 1, 0)
        return peer, fetched

    peer, (fetched, _) = asyncio.run(serve(server, body))
    assert fetched is None and "model" not in server.asked
    statuses = server.asked.count("status") - 1  # the first was the plain client's
    assert statuses >= 1 and peer.strikes.rejections == {"bad_status": statuses}
    assert peer.strikes.bans.is_banned(server.identity.peer_id) == (statuses >= peer.strikes.bans.max_strikes)


def test_a_partner_running_another_config_is_refused_by_name_and_taken_back_once_it_runs_this_one(
    tmp_path, caplog
):
    runs = {"config": config(seed=1, lr=0.2)}
    server = StatusServer(lambda: status_of(server.identity, runs["config"], 1).to_wire())

    async def body(port):
        peer = peer_with(tmp_path, server, port)
        refused = await peer._fetch(1, 1, 0)
        again = await peer._fetch(1, 1, 0)  # still refused: left out at once, its status asked again
        await asyncio.gather(*peer._rechecks.values())
        still = list(peer.refused)
        runs["config"] = CONFIG  # restarted with the swarm's config
        await peer._fetch(1, 1, 1)  # the answer counts from the next step on
        await asyncio.gather(*peer._rechecks.values())
        return peer, refused, again, still

    with caplog.at_level(logging.INFO, logger="ppaia.network"):
        peer, (refused, _), (again, _), still = asyncio.run(serve(server, body))
    assert refused is None and again is None and still == [1]
    assert "model" not in server.asked and server.asked.count("status") >= 3
    lines = [line for line in caplog.text.splitlines() if "refusing peer 1" in line]
    assert len(lines) == 1, caplog.text  # logged once, not per step
    assert (
        "lr: 0.2 there, 0.05 here; seed: 1 there, 0 here" in lines[0] and "not training with it" in lines[0]
    )
    assert peer.refused == {} and 1 in peer.agreed and "peer 1 now runs this swarm's config" in caplog.text
    assert peer.strikes.rejections == {}  # another config is not hostile: no strike


def test_a_peer_refused_by_every_other_peer_stops_with_an_error_naming_the_fields(tmp_path):
    """... once its partner's status lists it as refused: the partner has seen why it is gone."""
    told = {"refused": []}
    server = StatusServer(lambda: status_of(server.identity, CONFIG, 1, **told).to_wire())
    odd = config(peers=2, seed=1, lr=0.2)
    wait = 20.0

    async def body(port):
        peer = Peer(odd, PeerOptions(index=0, data_dir=tmp_path, wait=wait), Identity.generate())

        async def resolve(index, timeout=5.0):
            return ("127.0.0.1", port)

        async def partner_notices():
            while not peer.refused:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # it goes on waiting while the partner does not list it
            told["refused"] = [0]

        peer.book.address = resolve
        noticing = asyncio.create_task(partner_notices())
        started = time.monotonic()
        with pytest.raises(ppaia.network.errors.AgreementError) as caught:
            await peer._rendezvous()
        await noticing
        return peer, str(caught.value), time.monotonic() - started

    peer, message, took = asyncio.run(serve(server, body))
    assert 1.0 < took < 5.0  # stopped once noticed, long before the notice period or `wait`
    assert peer.progress.phase is Phase.WAITING and peer.status().refused == [1]
    assert "peer 0 runs another config than every peer it found" in message
    assert "peer 1: lr: 0.05 there, 0.2 here; peers: 3 there, 2 here; seed: 0 there, 1 here" in message


def test_peers_with_their_own_data_must_agree_on_inputs_and_classes():
    """A peer whose labels lack a class infers a smaller output layer: refused, naming the field."""
    config = ppaia.ExperimentConfig.model_validate({"peers": 3})
    mine = Agreement.of(config, own_data=True, data={"inputs": [64], "classes": 10})
    theirs = Agreement.of(config, own_data=True, data={"inputs": [64], "classes": 7})
    assert [d.field for d in mine.differences(theirs)] == ["data.classes"]
    assert "data.classes: 7 there, 10 here" in describe(mine.differences(theirs))
