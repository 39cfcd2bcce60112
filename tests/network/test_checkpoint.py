"""Checkpoints: written atomically, resumed only by the peer and config that wrote them, and never loaded
damaged — every truncation, every bit flip, a missing or swapped file, any damage to state.json."""

import json
import logging
import random
import shutil

import pytest
import torch

import ppaia
from ppaia import codec
from ppaia.network.checkpoint import Checkpoint, CheckpointError, LearnerState, round_file

CONFIG = ppaia.ExperimentConfig.model_validate({"peers": 4, "rounds": 3})
TENSORS = {"w": torch.arange(6.0).reshape(2, 3) / 7, "b": torch.tensor([0.5, -1.5])}
EXPECTED = {"w": ((2, 3), torch.float32), "b": ((2,), torch.float32)}
ROUNDS = 3  # rounds 0, 1, 2 saved by `saved`
PEER = 2


def model(round_: int) -> dict[str, torch.Tensor]:
    return {name: tensor + round_ for name, tensor in TENSORS.items()}


def saved(path) -> Checkpoint:
    """Peer 2's checkpoints of rounds 0..2 in `path`."""
    checkpoint = Checkpoint(path, CONFIG, peer=PEER)
    for round_ in range(ROUNDS):
        checkpoint.save(round_, model(round_))
    return checkpoint


def fresh(path) -> Checkpoint:
    """A new reader of `path` (as a restarted peer has: nothing cached)."""
    return Checkpoint(path, CONFIG, peer=PEER)


def same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> bool:
    return got.keys() == want.keys() and all(torch.equal(got[name], want[name]) for name in want)


def test_save_latest_and_all_rounds(tmp_path):
    checkpoint = Checkpoint(tmp_path, CONFIG, peer=2)
    assert checkpoint.latest(EXPECTED) is None
    assert checkpoint.rounds(EXPECTED) == ({}, [])
    saved(tmp_path)
    round_, latest, _ = fresh(tmp_path).latest(EXPECTED)
    assert round_ == ROUNDS - 1 and same(latest, model(ROUNDS - 1))
    models, refused = fresh(tmp_path).rounds(EXPECTED)
    assert not refused and sorted(models) == list(range(ROUNDS))
    assert all(same(models[r], model(r)) for r in range(ROUNDS))
    state = json.loads(checkpoint.state_file.read_text())
    assert sorted(state["sha256"]) == ["0", "1", "2"] and state["round"] == ROUNDS - 1
    assert not [p for p in (tmp_path / "rounds").iterdir() if p.name.startswith(".")]  # no temp files left


def test_a_checkpoint_of_another_peer_or_config_is_refused(tmp_path):
    Checkpoint(tmp_path, CONFIG, peer=2).save(0, TENSORS)
    with pytest.raises(CheckpointError, match="another run"):
        Checkpoint(tmp_path, CONFIG, peer=3).latest(EXPECTED)
    other = CONFIG.model_copy(update={"seed": 5})
    with pytest.raises(CheckpointError, match="another run"):
        Checkpoint(tmp_path, other, peer=2).latest(EXPECTED)
    _, refused = Checkpoint(tmp_path, other, peer=2).rounds(EXPECTED)
    assert len(refused) == 1 and "another run" in str(refused[0])


def test_a_resumed_peer_redoing_rounds_drops_the_later_ones_from_the_state(tmp_path):
    checkpoint = saved(tmp_path)
    checkpoint.save(1, model(7))  # resumed after round 0, redoing round 1
    models, refused = fresh(tmp_path).rounds(EXPECTED)
    assert not refused and sorted(models) == [0, 1] and same(models[1], model(7))


@pytest.mark.parametrize("learner", [False, True], ids=["model only", "with learner state"])
@pytest.mark.parametrize("temporaries", [False, True], ids=["renamed", "not yet renamed"])
def test_a_peer_killed_between_a_rounds_files_and_its_state_resumes_without_them(
    tmp_path, learner, temporaries
):
    """Killed after round 3's files were written (or while they were) but before the state pointed at
    them: it resumes after round 2, and nothing of round 3 is left to sit unrecorded in the run's record
    once it skips that round. Every file the state records stays."""
    saved(tmp_path)
    killed = fresh(tmp_path)
    recorded = sorted(path.name for path in (tmp_path / "rounds").iterdir())
    state = killed.state_file.read_bytes()
    lost = LearnerState(rule={"ab" * 20: 0.5}) if learner else None
    killed.save(ROUNDS, model(ROUNDS), lost)
    killed.state_file.write_bytes(state)  # as if killed before the state was replaced
    if temporaries:  # killed mid-write: the temporary files of the round and of the state
        for name in (
            f"rounds/.round-{ROUNDS:05d}.safetensors.x1y2",
            f"rounds/.learner-{ROUNDS:05d}.json.z3",
            ".state.json.q9",
        ):
            (tmp_path / name).write_bytes(b"partial")
    round_, latest, _ = fresh(tmp_path).latest(EXPECTED)
    assert round_ == ROUNDS - 1 and same(latest, model(ROUNDS - 1))
    assert sorted(path.name for path in (tmp_path / "rounds").iterdir()) == recorded
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rounds", "state.json"]
    models, refused = fresh(tmp_path).rounds(EXPECTED)
    assert not refused and sorted(models) == list(range(ROUNDS))


# ---------------------------------------------------------------------------------------------------
# damaged round files


def regions(data: bytes) -> dict[str, int]:
    """A cut point inside each region of a safetensors file: length prefix, JSON header, data."""
    header_end = 8 + int.from_bytes(data[:8], "little")
    return {
        "empty": 0,
        "length prefix": 5,
        "header start": 9,
        "header end": header_end - 1,
        "header/data boundary": header_end,
        "data": (header_end + len(data)) // 2,
        "last byte": len(data) - 1,
    }


def test_every_truncation_of_a_round_file_is_refused_naming_it(tmp_path):
    checkpoint = saved(tmp_path)
    path = round_file(tmp_path, 1)
    data = path.read_bytes()
    for length in range(len(data)):  # every proper prefix, so every region of the file
        path.write_bytes(data[:length])
        with pytest.raises(CheckpointError, match=r"round-00001\.safetensors: damaged"):
            checkpoint.load(1, EXPECTED)
    path.write_bytes(data + b"\x00")  # and one byte too many
    with pytest.raises(CheckpointError, match=r"round-00001\.safetensors: damaged"):
        checkpoint.load(1, EXPECTED)


@pytest.mark.parametrize("region", list(regions(codec.encode(TENSORS))))
def test_a_peer_with_a_truncated_latest_round_falls_back_to_the_round_before(tmp_path, caplog, region):
    saved(tmp_path)
    path = round_file(tmp_path, ROUNDS - 1)
    data = path.read_bytes()
    path.write_bytes(data[: regions(data)[region]])
    with caplog.at_level(logging.WARNING, logger="ppaia.network.checkpoint"):
        round_, latest, _ = fresh(tmp_path).latest(EXPECTED)
    assert round_ == ROUNDS - 2 and same(latest, model(ROUNDS - 2))
    assert path.name in caplog.text and "falls back to its checkpoint of round 1" in caplog.text
    # the fallback is recorded: the next reader starts from round 1 without a warning
    assert fresh(tmp_path).rounds(EXPECTED)[1] == []
    assert json.loads(fresh(tmp_path).state_file.read_text())["round"] == ROUNDS - 2


def test_every_bit_flip_in_a_round_file_is_refused_even_those_the_decoder_accepts(tmp_path):
    checkpoint = saved(tmp_path)
    path = round_file(tmp_path, 1)
    data = path.read_bytes()
    decodable = 0  # flips that leave a well-formed model of finite values: only the hash tells
    for bit in range(8 * len(data)):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(flipped)
        with pytest.raises(CheckpointError, match=r"round-00001\.safetensors: damaged"):
            checkpoint.load(1, EXPECTED)
        try:
            codec.decode(bytes(flipped), EXPECTED)
            decodable += 1
        except codec.BlobError:
            pass
    assert decodable >= 8 * 4 * 6  # most bits of the 8 float32 values, exponent bits included


def test_an_exponent_flip_that_keeps_values_finite_is_refused(tmp_path):
    """The issue's case: a flipped exponent bit turns a weight into ~1e37 and nothing else notices."""
    checkpoint = saved(tmp_path)
    path = round_file(tmp_path, ROUNDS - 1)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x20  # an exponent bit of the last float32 (little-endian): 2.7 -> 5e19
    values = torch.cat([t.flatten() for t in codec.decode(bytes(data), EXPECTED).values()])
    assert torch.isfinite(values).all() and values.abs().max() > 1e18  # the decoder alone takes it
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="damaged"):
        checkpoint.load(ROUNDS - 1, EXPECTED)
    round_, latest, _ = fresh(tmp_path).latest(EXPECTED)
    assert round_ == ROUNDS - 2 and same(latest, model(ROUNDS - 2))


def test_missing_round_files(tmp_path):
    saved(tmp_path)
    round_file(tmp_path, 1).unlink()  # a hole: the others are still used, the hole is reported
    models, refused = fresh(tmp_path).rounds(EXPECTED)
    assert sorted(models) == [0, 2] and len(refused) == 1
    assert "round-00001.safetensors: missing" in str(refused[0])
    round_file(tmp_path, 2).unlink()  # the newest: fall back to round 0
    assert fresh(tmp_path).latest(EXPECTED)[0] == 0
    shutil.rmtree(tmp_path / "rounds")  # none left: refused, naming the file
    with pytest.raises(CheckpointError, match=r"no round file verifies: .*round-00000\.safetensors: missing"):
        fresh(tmp_path).latest(EXPECTED)


def test_a_round_file_swapped_with_another_rounds_or_peers_is_refused(tmp_path):
    saved(tmp_path)
    shutil.copy(round_file(tmp_path, 0), round_file(tmp_path, 2))  # a well-formed model, the wrong one
    with pytest.raises(CheckpointError, match=r"round-00002\.safetensors: damaged"):
        fresh(tmp_path).load(2, EXPECTED)
    other = tmp_path / "other"
    Checkpoint(other, CONFIG, peer=3).save(1, model(9))
    shutil.copy(round_file(other, 1), round_file(tmp_path, 1))
    models, refused = fresh(tmp_path).rounds(EXPECTED)
    assert sorted(models) == [0] and len(refused) == 2


def test_damage_that_also_fails_decoding_is_refused_before_decoding(tmp_path):
    checkpoint = saved(tmp_path)
    checkpoint.save(3, {"w": torch.zeros(3, 2), "b": torch.ones(2)})  # intact, but the wrong shape
    with pytest.raises(CheckpointError, match=r"round-00003\.safetensors: .*shape"):
        checkpoint.load(3, EXPECTED)
    assert fresh(tmp_path).latest(EXPECTED)[0] == 2  # the peer falls back past it


# ---------------------------------------------------------------------------------------------------
# damaged state.json

GOOD = {"round": 1, "peer": PEER, "peers": 4, "config": "0" * 64, "sha256": {"0": "a" * 64, "1": "b" * 64}}
BAD_STATES = {
    "empty": b"",
    "broken": b"{broken",
    "null": b"null",
    "list": b"[]",
    "number": b"12",
    "random bytes": random.Random(0).randbytes(200),
    "not utf-8": b'{"round": "\xff"}',
    "round as text": {"round": "1"},
    "round as float": {"round": 1.0},
    "round as bool": {"round": True},
    "round null": {"round": None},
    "round negative": {"round": -1},
    "round huge": {"round": 2**70},
    "peer as text": {"peer": "2"},
    "peers zero": {"peers": 0},
    "config not hex": {"config": "z" * 64},
    "config short": {"config": "0" * 63},
    "config a number": {"config": 0},
    "hashes a list": {"sha256": ["a" * 64, "b" * 64]},
    "hash upper case": {"sha256": {"0": "a" * 64, "1": "B" * 64}},
    "hash short": {"sha256": {"0": "a" * 64, "1": "b" * 63}},
    "hash null": {"sha256": {"0": "a" * 64, "1": None}},
    "round key not a number": {"sha256": {"zero": "a" * 64, "1": "b" * 64}},
    "negative round key": {"sha256": {"-1": "a" * 64, "1": "b" * 64}},
    "last round's hash missing": {"sha256": {"0": "a" * 64}},
    "a later round's hash": {"sha256": {"0": "a" * 64, "1": "b" * 64, "5": "c" * 64}},
    "no hashes": {"sha256": {}},
    "hashes missing (older format)": {"sha256": ...},
    "round missing": {"round": ...},
    "extra field": {"extra": 1},
    "learner hashes a list": {"learner": ["a" * 64]},
    "learner hashes null": {"learner": None},
    "learner hash short": {"learner": {"1": "c" * 63}},
    "learner hash upper case": {"learner": {"1": "C" * 64}},
    "learner round negative": {"learner": {"-1": "c" * 64}},
    "learner round not a number": {"learner": {"one": "c" * 64}},
    "learner round huge": {"learner": {str(2**40): "c" * 64}},
}


def state_bytes(change) -> bytes:
    if isinstance(change, bytes):
        return change
    state = GOOD | change
    return json.dumps({key: value for key, value in state.items() if value is not ...}).encode()


@pytest.mark.parametrize("name", list(BAD_STATES))
def test_a_damaged_state_is_refused_naming_it(tmp_path, name):
    checkpoint = fresh(tmp_path)
    checkpoint.state_file.write_bytes(state_bytes(BAD_STATES[name]))
    with pytest.raises(CheckpointError, match=r"state\.json: not a checkpoint state"):
        checkpoint.latest(EXPECTED)
    models, refused = fresh(tmp_path).rounds(EXPECTED)  # the launcher: reported, not raised
    assert models == {} and len(refused) == 1 and "state.json" in str(refused[0])


def test_a_lost_state_with_round_files_left_is_reported_to_the_launcher(tmp_path):
    checkpoint = saved(tmp_path)
    checkpoint.state_file.unlink()
    models, refused = fresh(tmp_path).rounds(EXPECTED)
    assert models == {} and "state.json: missing, so 3 round files cannot be verified" in str(refused[0])
    assert fresh(tmp_path).latest(EXPECTED) is None  # a peer starts afresh (as after a crash before it)


def test_every_truncation_or_bit_flip_of_the_state_is_refused_or_harmless(tmp_path):
    """Whatever one bit flip does to state.json, the peer either refuses it or loads a model it really
    saved for that round (a flip in JSON whitespace, or one that the hashes then catch)."""
    checkpoint = saved(tmp_path)
    text = checkpoint.state_file.read_bytes()
    for length in range(len(text) - 1):  # every prefix short of the whole (the last byte is a newline)
        checkpoint.state_file.write_bytes(text[:length])
        with pytest.raises(CheckpointError, match=r"state\.json"):
            fresh(tmp_path).latest(EXPECTED)
    for bit in range(8 * len(text)):
        flipped = bytearray(text)
        flipped[bit // 8] ^= 1 << (bit % 8)
        checkpoint.state_file.write_bytes(flipped)
        try:
            loaded = fresh(tmp_path).latest(EXPECTED)
        except CheckpointError:
            continue
        assert loaded is not None and same(loaded[1], model(loaded[0])), bit
