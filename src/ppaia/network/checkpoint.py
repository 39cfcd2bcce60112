"""A peer's checkpoints: its model after every round (safetensors) and a small JSON state.

Layout of a peer's data directory::

    identity.key                  Ed25519 private key (0600)
    rounds/round-00012.safetensors  the model after round 12 (round 0: the initial model)
    state.json                    {"round": 12, "peer": 3, "peers": 8, "config": "<sha-256 of the config>"}

Every file is written to a temporary name in the same folder and renamed into place, so a peer killed
at any moment leaves the previous checkpoint intact and never a half-written one. The round files are
also the run's record: ``ppaia launch`` evaluates them to write the same outputs as ``ppaia run``.
Loading uses safetensors and checks names, shapes, dtypes and finiteness (never pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ppaia import codec
from ppaia.config import ExperimentConfig

__all__ = ["Checkpoint", "CheckpointError", "config_digest", "round_file"]


class CheckpointError(ValueError):
    """A data directory that belongs to another run or peer, or holds a damaged checkpoint."""


def config_digest(config: ExperimentConfig) -> str:
    """SHA-256 of the resolved config: a checkpoint resumes only the run it was written by."""
    return hashlib.sha256(config.to_toml().encode()).hexdigest()


def round_file(data_dir: Path, round_: int) -> Path:
    return Path(data_dir) / "rounds" / f"round-{round_:05d}.safetensors"


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Checkpoint:
    """Reads and writes one peer's checkpoints in its data directory."""

    data_dir: Path
    config: ExperimentConfig
    peer: int

    @property
    def state_file(self) -> Path:
        return Path(self.data_dir) / "state.json"

    def save(self, round_: int, model: dict[str, torch.Tensor] | bytes) -> None:
        """Record the model after `round_` (tensors, or their safetensors bytes), then the state that
        points at it."""
        data = model if isinstance(model, bytes) else codec.encode(model)
        _write_atomically(round_file(self.data_dir, round_), data)
        state = {
            "round": round_,
            "peer": self.peer,
            "peers": self.config.peers,
            "config": config_digest(self.config),
        }
        _write_atomically(self.state_file, (json.dumps(state) + "\n").encode())

    def latest(self, expected: codec.Expected) -> tuple[int, dict[str, torch.Tensor]] | None:
        """(round, model) of the last checkpoint, None for a fresh data directory; CheckpointError if it
        belongs to another run or peer, or its model file is damaged."""
        if not self.state_file.exists():
            return None
        try:
            state = json.loads(self.state_file.read_text())
            round_ = int(state["round"])
            owner = (int(state["peer"]), int(state["peers"]), str(state["config"]))
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{self.state_file}: not a checkpoint state ({err})") from None
        if owner != (self.peer, self.config.peers, config_digest(self.config)):
            raise CheckpointError(
                f"{self.data_dir} holds peer {owner[0]}/{owner[1]} of another run or config; "
                "use a fresh --data-dir (or the config it was started with)"
            )
        path = round_file(self.data_dir, round_)
        try:
            return round_, codec.decode(path.read_bytes(), expected)
        except (OSError, codec.BlobError) as err:
            raise CheckpointError(f"{path}: {err}") from None


def read_rounds(data_dir: Path, expected: codec.Expected) -> dict[int, dict[str, torch.Tensor]]:
    """Every round's model a peer checkpointed, by round (the launcher's view of a finished peer)."""
    models = {}
    for path in sorted((Path(data_dir) / "rounds").glob("round-*.safetensors")):
        models[int(path.stem.removeprefix("round-"))] = codec.decode(path.read_bytes(), expected)
    return models
