"""A peer's checkpoints: its model after every round (safetensors) and a small JSON state.

Layout of a peer's data directory::

    identity.key                    Ed25519 private key (0600)
    rounds/round-00012.safetensors  the model after round 12 (round 0: the initial model)
    state.json                      {"round": 12, "peer": 3, "peers": 8, "config": "<sha-256 of the config>",
                                     "sha256": {"0": "<sha-256 of round-00000.safetensors>", ..., "12": ...}}

Every file is written to a temporary name in the same folder and renamed into place — the round file
first, then the state that records its hash — so a peer killed at any moment leaves the previous
checkpoint intact and never a half-written one. The round files are also the run's record: ``ppaia
launch`` evaluates them to write the same outputs as ``ppaia run``.

**Integrity.** A round file is used only if its bytes hash to the SHA-256 that ``state.json`` records for
its round; then it is decoded with the codec's checks (names, shapes, dtypes, finite values; never
pickle). The hash catches what decoding cannot: a flipped bit that leaves a finite value, another round's
file in its place. A damaged file (truncated, altered, missing, swapped) is refused with a
:class:`CheckpointError` naming it, and

- a resuming peer falls back to the newest round whose file verifies (logging each one refused) and
  records that fallback: an intact older checkpoint of its own costs only the rounds after it, which it
  redoes or skips by catching up, where starting afresh would throw away the whole run;
- the launcher uses every round that verifies and reports the others (:meth:`Checkpoint.rounds`).

A ``state.json`` that is not valid JSON of exactly that schema is refused outright: without it no file
can be verified, nor is it known whose checkpoint the folder holds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ppaia import codec
from ppaia.config import ExperimentConfig

__all__ = ["Checkpoint", "CheckpointError", "CheckpointState", "config_digest", "round_file"]

log = logging.getLogger(__name__)

MAX_ROUND = 2**31 - 1
Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Round = Annotated[int, Field(ge=0, le=MAX_ROUND)]


class CheckpointError(ValueError):
    """A data directory that belongs to another run or peer, or holds a damaged checkpoint."""


class CheckpointState(BaseModel):
    """The contents of ``state.json``: whose checkpoint this is, its last round, and the SHA-256 of the
    file of every round it holds (at least the last)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    round: Round
    peer: Round
    peers: Annotated[int, Field(ge=1, le=MAX_ROUND)]
    config: Digest
    sha256: dict[Round, Digest]

    @model_validator(mode="after")
    def _last_round_recorded(self) -> CheckpointState:
        if max(self.sha256, default=-1) != self.round:
            raise ValueError(f"the hashes recorded do not end with the last round, {self.round}")
        return self


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


def _summary(err: ValidationError) -> str:
    """The first problems pydantic found, one line, without echoing the (possibly huge) input."""
    parts = [f"{'.'.join(map(str, e['loc'])) or 'the file'}: {e['msg']}" for e in err.errors()[:3]]
    return "; ".join(parts)


@dataclass
class Checkpoint:
    """Reads and writes one peer's checkpoints in its data directory."""

    data_dir: Path
    config: ExperimentConfig
    peer: int
    _sha256: dict[int, str] | None = field(default=None, init=False, repr=False)  # round -> file hash

    @property
    def state_file(self) -> Path:
        return Path(self.data_dir) / "state.json"

    def save(self, round_: int, model: dict[str, torch.Tensor] | bytes) -> None:
        """Record the model after `round_` (tensors, or their safetensors bytes), then the state that
        points at it and records its hash. Later rounds recorded before (a resumed peer redoing them)
        are dropped from the state."""
        data = model if isinstance(model, bytes) else codec.encode(model)
        hashes = {r: digest for r, digest in self._hashes().items() if r < round_}
        hashes[round_] = hashlib.sha256(data).hexdigest()
        _write_atomically(round_file(self.data_dir, round_), data)
        self._write_state(round_, hashes)

    def latest(self, expected: codec.Expected) -> tuple[int, dict[str, torch.Tensor]] | None:
        """(round, model) of the newest checkpoint whose file verifies; None for a fresh data directory.

        A damaged newest file is logged and the round before tried, and so on; the state is then
        rewritten to end with the round returned. CheckpointError if the directory belongs to another
        run or peer, its state is damaged, or no round file verifies."""
        state = self._state()
        if state is None:
            return None
        refused = []
        for round_ in sorted(state.sha256, reverse=True):
            try:
                model = self.load(round_, expected)
            except CheckpointError as err:
                log.warning("peer %d: %s; trying the round before", self.peer, err)
                refused.append(str(err))
                continue
            if round_ != state.round:
                log.warning("peer %d: falls back to its checkpoint of round %d", self.peer, round_)
                self._write_state(round_, {r: h for r, h in state.sha256.items() if r <= round_})
            return round_, model
        raise CheckpointError(f"{self.data_dir}: no round file verifies: {'; '.join(refused)}")

    def load(self, round_: int, expected: codec.Expected) -> dict[str, torch.Tensor]:
        """The model after `round_` if its file hashes to the recorded SHA-256 and decodes to exactly
        the `expected` finite model; CheckpointError naming the file otherwise."""
        path = round_file(self.data_dir, round_)
        digest = self._hashes().get(round_)
        if digest is None:
            raise CheckpointError(f"{path}: {self.state_file.name} records no hash for round {round_}")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing") from None
        except OSError as err:
            raise CheckpointError(f"{path}: unreadable ({err.strerror or err})") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise CheckpointError(
                f"{path}: damaged ({len(data)} bytes that do not hash to the SHA-256 "
                f"{self.state_file.name} records for round {round_})"
            )
        try:
            return codec.decode(data, expected)
        except codec.BlobError as err:
            raise CheckpointError(f"{path}: {err}") from None

    def rounds(
        self, expected: codec.Expected
    ) -> tuple[dict[int, dict[str, torch.Tensor]], list[CheckpointError]]:
        """Every recorded round whose file verifies, by round, and an error for each one refused (or a
        single one for the whole directory if its state is damaged, foreign, or lost while round files
        remain): the launcher's view of a finished or dead peer."""
        try:
            state = self._state()
        except CheckpointError as err:
            return {}, [err]
        if state is None:
            files = sorted((Path(self.data_dir) / "rounds").glob("round-*.safetensors"))
            lost = CheckpointError(
                f"{self.state_file}: missing, so {len(files)} round files cannot be verified"
            )
            return {}, [lost] if files else []
        models, refused = {}, []
        for round_ in sorted(state.sha256):
            try:
                models[round_] = self.load(round_, expected)
            except CheckpointError as err:
                refused.append(err)
        return models, refused

    def _hashes(self) -> dict[int, str]:
        """round -> SHA-256 of its file, as recorded (read from the state once; empty when fresh)."""
        if self._sha256 is None:
            state = self._state()
            self._sha256 = {} if state is None else dict(state.sha256)
        return self._sha256

    def _state(self) -> CheckpointState | None:
        """The validated state of this peer's run; None if there is none; CheckpointError if it is
        damaged or belongs to another run or peer."""
        try:
            text = self.state_file.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise CheckpointError(f"{self.state_file}: unreadable ({err.strerror or err})") from None
        try:
            state = CheckpointState.model_validate_json(text)
        except ValidationError as err:
            raise CheckpointError(f"{self.state_file}: not a checkpoint state ({_summary(err)})") from None
        if (state.peer, state.peers, state.config) != (
            self.peer,
            self.config.peers,
            config_digest(self.config),
        ):
            raise CheckpointError(
                f"{self.data_dir} holds peer {state.peer}/{state.peers} of another run or config; "
                "use a fresh --data-dir (or the config it was started with)"
            )
        self._sha256 = dict(state.sha256)
        return state

    def _write_state(self, round_: int, hashes: dict[int, str]) -> None:
        state = CheckpointState(
            round=round_,
            peer=self.peer,
            peers=self.config.peers,
            config=config_digest(self.config),
            sha256=hashes,
        )
        _write_atomically(self.state_file, (state.model_dump_json() + "\n").encode())
        self._sha256 = dict(hashes)
