"""Checkpoints: written atomically, resumed only by the peer and config that wrote them."""

import pytest
import torch

import ppaia
from ppaia.network.checkpoint import Checkpoint, CheckpointError, read_rounds, round_file

CONFIG = ppaia.ExperimentConfig.model_validate({"peers": 4, "rounds": 3})
TENSORS = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
EXPECTED = {"w": ((2, 3), torch.float32), "b": ((2,), torch.float32)}


def test_save_latest_and_all_rounds(tmp_path):
    checkpoint = Checkpoint(tmp_path, CONFIG, peer=2)
    assert checkpoint.latest(EXPECTED) is None
    checkpoint.save(0, TENSORS)
    checkpoint.save(1, {name: t + 1 for name, t in TENSORS.items()})
    round_, model = checkpoint.latest(EXPECTED)
    assert round_ == 1 and torch.equal(model["b"], torch.full((2,), 2.0))
    assert sorted(read_rounds(tmp_path, EXPECTED)) == [0, 1]
    assert not [p for p in (tmp_path / "rounds").iterdir() if p.name.startswith(".")]  # no temp files left


def test_a_checkpoint_of_another_peer_or_config_is_refused(tmp_path):
    Checkpoint(tmp_path, CONFIG, peer=2).save(0, TENSORS)
    with pytest.raises(CheckpointError, match="another run"):
        Checkpoint(tmp_path, CONFIG, peer=3).latest(EXPECTED)
    other = CONFIG.model_copy(update={"seed": 5})
    with pytest.raises(CheckpointError, match="another run"):
        Checkpoint(tmp_path, other, peer=2).latest(EXPECTED)


def test_damaged_checkpoints_are_reported_not_loaded(tmp_path):
    checkpoint = Checkpoint(tmp_path, CONFIG, peer=0)
    checkpoint.save(0, TENSORS)
    round_file(tmp_path, 0).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="round-00000"):
        checkpoint.latest(EXPECTED)
    checkpoint.save(0, {"w": torch.zeros(3, 2), "b": torch.ones(2)})  # the wrong shape
    with pytest.raises(CheckpointError, match="shape"):
        checkpoint.latest(EXPECTED)
    checkpoint.state_file.write_text("{broken")
    with pytest.raises(CheckpointError, match="not a checkpoint state"):
        checkpoint.latest(EXPECTED)
