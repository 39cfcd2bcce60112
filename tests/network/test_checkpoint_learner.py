"""A checkpoint's learner state (the rule's trust keyed by peer id, the accountant's spent privacy):
saved with a round, resumed after a restart, integrity-checked like the round files, and every damaged
or hostile learner file refused with CheckpointError — truncations, bit flips, swaps, oversize files and,
with a matching hash, JSON that is not exactly the schema. Checkpoints from before it still load."""

import hashlib
import json
import logging
import random

import pytest
import torch

import ppaia
from ppaia.network import checkpoint as checkpoint_module
from ppaia.network.checkpoint import (
    MAX_LEARNER_BYTES,
    Checkpoint,
    CheckpointError,
    LearnerState,
    learner_file,
)
from ppaia.privacy import PRIVACY, PrivateTraining
from ppaia.rules import RULES

CONFIG = ppaia.ExperimentConfig.model_validate({"peers": 4, "rounds": 3})
EXPECTED = {"w": ((2, 3), torch.float32)}
PEER = 2
IDS = [hashlib.sha256(bytes([i])).hexdigest()[:40] for i in range(4)]
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")


def model(round_: int) -> dict[str, torch.Tensor]:
    return {"w": torch.arange(6.0).reshape(2, 3) / 7 + round_}


def private_training() -> PrivateTraining:
    """A networked peer's privacy: one row, its own data."""
    mechanism = PRIVACY.create("dp_sgd(noise_multiplier=1.1)")
    return PrivateTraining(mechanism, torch.tensor([50]), batch_size=8, epochs=1, rounds=3, seed=0)


def learner(round_: int) -> LearnerState:
    """What peer 2 has learned after `round_` rounds: trust in two partners, the privacy it spent."""
    private = private_training()
    for _ in range(round_):
        private.spend(torch.tensor([True]))
    trust = {IDS[0]: 0.1 + round_ / 10, IDS[3]: 1 / 3}
    return LearnerState(rule=trust, privacy=private.state_dict())


def saved(path, rounds: int = 3) -> Checkpoint:
    checkpoint = Checkpoint(path, CONFIG, peer=PEER)
    for round_ in range(rounds):
        checkpoint.save(round_, model(round_), learner(round_))
    return checkpoint


def fresh(path) -> Checkpoint:
    return Checkpoint(path, CONFIG, peer=PEER)


def record(path, round_: int, data: bytes) -> None:
    """A hostile writer: `data` as round `round_`'s learner file, with its hash recorded in the state."""
    learner_file(path, round_).write_bytes(data)
    state = json.loads((path / "state.json").read_text())
    state["learner"][str(round_)] = hashlib.sha256(data).hexdigest()
    (path / "state.json").write_text(json.dumps(state))


def test_a_restarted_peer_gets_back_its_trust_by_partner_id_and_its_spent_privacy(tmp_path):
    rule = RULES.create("learned_trust")
    rule.load_peer_state(PEER, IDS, {IDS[0]: 0.75, IDS[1]: 0.0, IDS[3]: 0.125})
    private = private_training()
    for _ in range(5):
        private.spend(torch.tensor([True]))
    state = LearnerState(rule=rule.peer_state(PEER, IDS), privacy=private.state_dict())
    Checkpoint(tmp_path, CONFIG, peer=PEER).save(4, model(4), state)

    round_, weights, resumed = fresh(tmp_path).latest(EXPECTED)
    assert round_ == 4 and torch.equal(weights["w"], model(4)["w"]) and resumed == state
    restarted_rule, restarted_privacy = RULES.create("learned_trust"), private_training()
    restarted_rule.load_peer_state(PEER, IDS, resumed.rule)
    restarted_privacy.load_state_dict(resumed.privacy)
    assert restarted_rule.peer_state(PEER, IDS) == rule.peer_state(PEER, IDS)
    assert torch.equal(restarted_rule.state_dict()["trust"], rule.state_dict()["trust"])
    assert torch.equal(restarted_privacy.epsilon(), private.epsilon())  # the ε it had, bit for bit


def test_every_rounds_learner_state_is_kept_and_verified(tmp_path):
    saved(tmp_path)
    checkpoint = fresh(tmp_path)
    assert [checkpoint.load_learner(r) for r in range(3)] == [learner(r) for r in range(3)]
    assert checkpoint.latest(EXPECTED).learner == learner(2)
    state = json.loads(checkpoint.state_file.read_text())
    assert sorted(state["learner"]) == ["0", "1", "2"]
    files = sorted(p.name for p in (tmp_path / "rounds").iterdir())
    assert files == [
        f"{kind}-0000{r}.{ext}"
        for kind, ext in (("learner", "json"), ("round", "safetensors"))
        for r in range(3)
    ]


def test_checkpoints_without_learner_state_load_as_before(tmp_path):
    checkpoint = Checkpoint(tmp_path, CONFIG, peer=PEER)
    for round_ in range(2):
        checkpoint.save(round_, model(round_))
    assert "learner" not in json.loads(checkpoint.state_file.read_text())  # the format before it existed
    resumed = fresh(tmp_path).latest(EXPECTED)
    assert resumed.round == 1 and resumed.learner is None and fresh(tmp_path).load_learner(1) is None
    checkpoint.save(2, model(2), learner(2))  # a peer that starts saving it
    assert fresh(tmp_path).latest(EXPECTED).learner == learner(2)


def test_a_peer_that_redoes_rounds_drops_their_later_learner_states(tmp_path):
    checkpoint = saved(tmp_path)
    checkpoint.save(1, model(1), learner(7))
    assert sorted(json.loads(checkpoint.state_file.read_text())["learner"]) == ["0", "1"]
    assert fresh(tmp_path).latest(EXPECTED).learner == learner(7)


def test_a_damaged_newest_model_falls_back_but_keeps_the_newest_learner_state(tmp_path, caplog):
    """Trust learned and privacy spent in round 2 happened, whatever became of round 2's model file."""
    saved(tmp_path)
    path = checkpoint_module.round_file(tmp_path, 2)
    path.write_bytes(path.read_bytes()[:-1])
    with caplog.at_level(logging.WARNING, logger="ppaia.network.checkpoint"):
        round_, _, resumed = fresh(tmp_path).latest(EXPECTED)
    assert round_ == 1 and resumed == learner(2)
    assert "falls back to its checkpoint of round 1" in caplog.text
    again = fresh(tmp_path)  # the fallback is recorded, the newer learner state kept until overwritten
    assert again.latest(EXPECTED)[::2] == (1, learner(2))
    again.save(2, model(2), learner(9))
    assert fresh(tmp_path).latest(EXPECTED)[::2] == (2, learner(9))


def test_a_damaged_newest_learner_state_falls_back_to_the_one_before(tmp_path, caplog):
    saved(tmp_path)
    path = learner_file(tmp_path, 2)
    path.write_bytes(path.read_bytes().replace(b"0.3", b"0.9"))
    with caplog.at_level(logging.WARNING, logger="ppaia.network.checkpoint"):
        round_, _, resumed = fresh(tmp_path).latest(EXPECTED)
    assert round_ == 2 and resumed == learner(1)
    assert "learner-00002.json: damaged" in caplog.text
    assert "resumes with its learner state of round 1" in caplog.text
    for round_ in (0, 1):
        learner_file(tmp_path, round_).unlink()
    with pytest.raises(CheckpointError, match=r"no learner state verifies: .*learner-00002\.json: damaged"):
        fresh(tmp_path).latest(EXPECTED)


def test_every_truncation_and_a_bit_flip_in_every_byte_of_a_learner_file_are_refused(tmp_path):
    checkpoint = saved(tmp_path)
    path = learner_file(tmp_path, 1)
    data = path.read_bytes()
    damaged = [data[:length] for length in range(len(data))] + [data + b" "]
    for byte in range(len(data)):  # a flip in every byte, of each bit in turn (the hash sees them all)
        flipped = bytearray(data)
        flipped[byte] ^= 1 << (byte % 8)
        damaged.append(bytes(flipped))
    for content in damaged:
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=r"learner-00001\.json: damaged"):
            checkpoint.load_learner(1)


def test_a_missing_or_swapped_learner_file_is_refused(tmp_path):
    checkpoint = saved(tmp_path)
    learner_file(tmp_path, 0).write_bytes(learner_file(tmp_path, 2).read_bytes())  # well-formed, wrong one
    with pytest.raises(CheckpointError, match=r"learner-00000\.json: damaged"):
        checkpoint.load_learner(0)
    learner_file(tmp_path, 1).unlink()
    with pytest.raises(CheckpointError, match=r"learner-00001\.json: missing"):
        checkpoint.load_learner(1)


def test_an_oversize_learner_file_is_refused_without_reading_it_whole(tmp_path):
    saved(tmp_path)
    huge = b'{"rule": {}, "privacy": null' + b" " * MAX_LEARNER_BYTES + b"}"  # valid JSON, hash recorded
    record(tmp_path, 2, huge)
    with pytest.raises(CheckpointError, match=rf"learner-00002\.json: over the {MAX_LEARNER_BYTES} bytes"):
        fresh(tmp_path).load_learner(2)
    assert fresh(tmp_path).latest(EXPECTED).learner == learner(1)


def test_a_learner_state_over_the_limit_is_not_saved(tmp_path, monkeypatch):
    checkpoint = saved(tmp_path)
    before = checkpoint.state_file.read_bytes()
    monkeypatch.setattr(checkpoint_module, "MAX_LEARNER_BYTES", 200)
    many = LearnerState(rule={f"{i:040x}": 0.5 for i in range(4)})
    with pytest.raises(CheckpointError, match=r"learner-00003\.json: a learner state of \d+ bytes"):
        checkpoint.save(3, model(3), many)
    assert checkpoint.state_file.read_bytes() == before
    assert not learner_file(tmp_path, 3).exists() and not checkpoint_module.round_file(tmp_path, 3).exists()


# ---------------------------------------------------------------------------------------------------
# hostile learner files whose hash matches (whoever wrote them also wrote the state)

GOOD = json.loads(learner(2).model_dump_json())
ID = IDS[0]


def privacy(change):
    def changed():
        state = json.loads(json.dumps(GOOD))
        change(state["privacy"])
        return state

    return changed


def setting(path: str, value):
    """GOOD with the privacy field at `path` (keys and indices separated by '/') set to `value`."""

    def change(state):
        *parents, last = [int(part) if part.isdigit() else part for part in path.split("/")]
        for part in parents:
            state = state[part]
        state[last] = value

    return privacy(change)


BAD_LEARNERS = {
    "empty": b"",
    "broken": b'{"rule": {',
    "null": b"null",
    "a list": b"[]",
    "a number": b"12",
    "random bytes": random.Random(0).randbytes(300),
    "not utf-8": b'{"rule": {"\xff": 0.5}}',
    "NaN": b'{"rule": {"%s": NaN}}' % ID.encode(),
    "Infinity": b'{"rule": {"%s": -Infinity}}' % ID.encode(),
    "a number beyond float64": b'{"rule": {"%s": 1e400}}' % ID.encode(),
    "a repeated key": b'{"rule": {}, "rule": {"%s": 0.5}}' % ID.encode(),
    "a repeated peer id": b'{"rule": {"%s": 0.5, "%s": 0.25}}' % (ID.encode(), ID.encode()),
    "nested too deep": b'{"rule": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "an extra field": lambda: GOOD | {"extra": 1},
    "rule a list": lambda: GOOD | {"rule": [[ID, 0.5]]},
    "rule null": lambda: GOOD | {"rule": None},
    "a peer id in upper case": lambda: GOOD | {"rule": {ID.upper(): 0.5}},
    "a peer id too short": lambda: GOOD | {"rule": {ID[:-1]: 0.5}},
    "a peer id not hex": lambda: GOOD | {"rule": {"z" * 40: 0.5}},
    "a peer id empty": lambda: GOOD | {"rule": {"": 0.5}},
    "trust as text": lambda: GOOD | {"rule": {ID: "0.5"}},
    "trust a bool": lambda: GOOD | {"rule": {ID: True}},
    "trust null": lambda: GOOD | {"rule": {ID: None}},
    "trust a list": lambda: GOOD | {"rule": {ID: [0.5]}},
    "privacy a list": lambda: GOOD | {"privacy": []},
    "privacy empty": lambda: GOOD | {"privacy": {}},
    "privacy extra field": privacy(lambda p: p.update(extra=1)),
    "stopped missing": privacy(lambda p: p.pop("stopped")),
    "stopped at round 0": setting("stopped/0", 0),
    "stopped as text": setting("stopped/0", "1"),
    "accountant missing": privacy(lambda p: p.pop("accountant")),
    "mechanism prv": setting("accountant/mechanism", "prv"),
    "delta zero": setting("accountant/delta", 0),
    "delta as text": setting("accountant/delta", "1e-5"),
    "history null": setting("accountant/history", None),
    "entry of two": setting("accountant/history/0/0", [1.1, 0.16]),
    "noise negative": setting("accountant/history/0/0/0", -1.1),
    "noise beyond what is accounted for": setting("accountant/history/0/0/0", 1e6),
    "rate zero": setting("accountant/history/0/0/1", 0),
    "rate above one": setting("accountant/history/0/0/1", 2.0),
    "steps zero": setting("accountant/history/0/0/2", 0),
    "steps a float": setting("accountant/history/0/0/2", 2.5),
    "steps a bool": setting("accountant/history/0/0/2", True),
    "steps huge": setting("accountant/history/0/0/2", 2**64),
}


def content(name: str) -> bytes:
    bad = BAD_LEARNERS[name]
    return bad if isinstance(bad, bytes) else json.dumps(bad()).encode()


@pytest.mark.parametrize("name", list(BAD_LEARNERS))
def test_a_hostile_learner_file_with_a_matching_hash_is_refused_naming_it(tmp_path, name):
    saved(tmp_path)
    record(tmp_path, 2, content(name))
    with pytest.raises(CheckpointError, match=r"learner-00002\.json: not a learner state"):
        fresh(tmp_path).load_learner(2)
    assert fresh(tmp_path).latest(EXPECTED).learner == learner(1)  # a resuming peer falls back past it
