"""A peer's checkpoints: its model after every round (safetensors), its learner state, a small JSON state.

Layout of a peer's data directory::

    identity.key                    Ed25519 private key (0600)
    rounds/round-00012.safetensors  the model after round 12 (round 0: the initial model)
    rounds/learner-00012.json       the learner state after round 12 (optional): the rule's state keyed
                                    by partner peer id, the privacy accountant's (:class:`LearnerState`)
    state.json                      {"round": 12, "peer": 3, "peers": 8, "config": "<sha-256 of the config>",
                                     "sha256": {"0": "<sha-256 of round-00000.safetensors>", ..., "12": ...},
                                     "learner": {"12": "<sha-256 of learner-00012.json>", ...}}

``learner`` is absent from a state written without learner states (as before they existed); such a
checkpoint loads as it always did, with no learner state.

Every file is written to a temporary name in the same folder and renamed into place — the round's files
first, then the state that records their hashes — so a peer killed at any moment leaves the previous
checkpoint intact and never a half-written one. What such a kill leaves besides (a temporary file, the
files of a round whose state was never written) is deleted when the peer resumes. The round files are
also the run's record: ``ppaia launch`` evaluates them to write the same outputs as ``ppaia run``.

**Integrity.** A round file is used only if its bytes hash to the SHA-256 that ``state.json`` records for
its round; then it is decoded with the codec's checks (names, shapes, dtypes, finite values; never
pickle). The hash catches what decoding cannot: a flipped bit that leaves a finite value, another round's
file in its place. A damaged file (truncated, altered, missing, swapped) is refused with a
:class:`CheckpointError` naming it, and

- a resuming peer falls back to the newest round whose file verifies (logging each one refused) and
  records that fallback: an intact older checkpoint of its own costs only the rounds after it, which it
  redoes or skips by catching up, where starting afresh would throw away the whole run;
- the launcher uses every round that verifies and reports the others (:meth:`Checkpoint.rounds`).

A learner state is verified the same way (hash first, then strict JSON of exactly the
:class:`LearnerState` schema, at most :data:`MAX_LEARNER_BYTES`, never pickle). It describes the peer's
history — the trust it has learned, the privacy it has spent — rather than its model, so a resuming
peer takes the newest one that verifies even when its model falls back to an older round: the ε it
reports then still counts every round it trained (a damaged newest learner state is logged, and the one
before taken, as for models).

A ``state.json`` that is not valid JSON of exactly that schema is refused outright: without it no file
can be verified, nor is it known whose checkpoint the folder holds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, ValidationError, model_validator

from ppaia import codec, strict_json
from ppaia.config import ExperimentConfig
from ppaia.network.errors import NetworkError
from ppaia.privacy.accountant import PrivacyState

__all__ = [
    "MAX_LEARNER_BYTES",
    "Checkpoint",
    "CheckpointError",
    "CheckpointState",
    "LearnerState",
    "Resumed",
    "config_digest",
    "learner_file",
    "round_file",
]

log = logging.getLogger(__name__)

MAX_ROUND = 2**31 - 1
Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Round = Annotated[int, Field(ge=0, le=MAX_ROUND)]
PeerId = Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]
MAX_LEARNER_BYTES = 16 << 20  # a learner state's file: a trust row of ~250,000 partners, or privacy history
LEARNER_DEPTH = 6  # {"privacy": {"accountant": {"history": [[[noise, rate, steps]]]}}}: its deepest nesting


class CheckpointError(NetworkError):
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
    learner: dict[Round, Digest] = Field(default_factory=dict)  # of the rounds saved with a learner state

    @model_validator(mode="after")
    def _last_round_recorded(self) -> CheckpointState:
        if max(self.sha256, default=-1) != self.round:
            raise ValueError(f"the hashes recorded do not end with the last round, {self.round}")
        return self


class LearnerState(BaseModel):
    """What a peer has learned besides its model, saved with a round: its rule's state keyed by partner
    peer id (:meth:`~ppaia.rules.CooperationRule.peer_state`) and its privacy accountant's
    (:meth:`~ppaia.privacy.PrivateTraining.state_dict`; None without privacy). Load them back with
    ``rule.load_peer_state(peer, ids, state.rule)`` and ``training.load_state_dict(state.privacy)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: dict[PeerId, Annotated[StrictFloat, Field(allow_inf_nan=False)]] = Field(default_factory=dict)
    privacy: PrivacyState | None = None


class Resumed(NamedTuple):
    """Where a peer resumes: the newest round whose model verifies, that model, and the newest learner
    state that verifies (None if none was saved; it may be of a later round than the model)."""

    round: int
    model: dict[str, torch.Tensor]
    learner: LearnerState | None


def config_digest(config: ExperimentConfig) -> str:
    """SHA-256 of the resolved config: a checkpoint resumes only the run it was written by."""
    return hashlib.sha256(config.to_toml().encode()).hexdigest()


def round_file(data_dir: Path, round_: int) -> Path:
    return Path(data_dir) / "rounds" / f"round-{round_:05d}.safetensors"


def learner_file(data_dir: Path, round_: int) -> Path:
    return Path(data_dir) / "rounds" / f"learner-{round_:05d}.json"


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
    label: str = ""  # how the log names the peer (an open swarm's: by its id); its index if empty
    _recorded: CheckpointState | None = field(default=None, init=False, repr=False)  # the state, once read

    @property
    def named(self) -> str:
        """How the log names the peer."""
        return self.label or str(self.peer)

    @property
    def state_file(self) -> Path:
        return Path(self.data_dir) / "state.json"

    def save(
        self, round_: int, model: dict[str, torch.Tensor] | bytes, learner: LearnerState | None = None
    ) -> None:
        """Record the model after `round_` (tensors, or their safetensors bytes) and, if given, the
        learner state, then the state that points at them and records their hashes. Later rounds
        recorded before (a resumed peer redoing them) are dropped from the state. CheckpointError,
        nothing written, for a learner state over :data:`MAX_LEARNER_BYTES` (it could not be loaded)."""
        data = model if isinstance(model, bytes) else codec.encode(model)
        models, learners = self._hashes()
        hashes = {r: digest for r, digest in models.items() if r < round_}
        hashes[round_] = hashlib.sha256(data).hexdigest()
        learners = {r: digest for r, digest in learners.items() if r < round_}
        text = None if learner is None else learner.model_dump_json().encode()
        if text is not None:
            if len(text) > MAX_LEARNER_BYTES:
                raise CheckpointError(
                    f"{learner_file(self.data_dir, round_)}: a learner state of {len(text)} bytes, over "
                    f"the {MAX_LEARNER_BYTES} a checkpoint may hold"
                )
            learners[round_] = hashlib.sha256(text).hexdigest()
        _write_atomically(round_file(self.data_dir, round_), data)
        if text is not None:
            _write_atomically(learner_file(self.data_dir, round_), text)
        self._write_state(round_, hashes, learners)

    def latest(self, expected: codec.Expected) -> Resumed | None:
        """The newest checkpoint whose round file verifies, with the newest learner state that verifies
        (see :class:`Resumed`); None for a fresh data directory.

        A damaged newest file is logged and the round before tried, and so on; the state is then
        rewritten to end with the round returned (keeping the hashes of newer learner states, until the
        peer saves that round again). CheckpointError if the directory belongs to another run or peer,
        its state is damaged, or no round file, or no recorded learner state, verifies."""
        state = self._state()
        if state is None:
            return None
        self._discard_unrecorded(state)
        learner = self._newest_learner(state)
        refused = []
        for round_ in sorted(state.sha256, reverse=True):
            try:
                model = self.load(round_, expected)
            except CheckpointError as err:
                log.warning("peer %s: %s; trying the round before", self.named, err)
                refused.append(str(err))
                continue
            if round_ != state.round:
                log.warning("peer %s: falls back to its checkpoint of round %d", self.named, round_)
                self._write_state(
                    round_, {r: h for r, h in state.sha256.items() if r <= round_}, state.learner
                )
            return Resumed(round_, model, learner)
        raise CheckpointError(f"{self.data_dir}: no round file verifies: {'; '.join(refused)}")

    def _discard_unrecorded(self, state: CheckpointState) -> None:
        """Delete what a peer killed while saving left behind: temporary files, and the files of rounds
        after the last one recorded that the state does not record (written, but the state that would
        have pointed at them never was). A resumed peer redoes or skips those rounds; left in place, a
        skipped round's file would sit in the run's record unrecorded."""
        folder = Path(self.data_dir) / "rounds"
        for path in [*folder.glob(".*"), *Path(self.data_dir).glob(f".{self.state_file.name}.*")]:
            log.info("peer %s: removes %s, left by a save that did not finish", self.named, path)
            path.unlink(missing_ok=True)
        recorded = {"round": state.sha256, "learner": state.learner}
        for path in folder.glob("*-*"):
            match = re.fullmatch(r"(round|learner)-(\d+)\.(safetensors|json)", path.name)
            if match is None or int(match[2]) <= state.round or int(match[2]) in recorded[match[1]]:
                continue
            log.info("peer %s: removes %s, saved but never recorded", self.named, path)
            path.unlink(missing_ok=True)

    def _newest_learner(self, state: CheckpointState) -> LearnerState | None:
        """The newest recorded learner state that verifies (logging each one refused); None if none was
        recorded; CheckpointError if none verifies."""
        refused = []
        for round_ in sorted(state.learner, reverse=True):
            try:
                learner = self.load_learner(round_)
            except CheckpointError as err:
                log.warning("peer %s: %s; trying the round before", self.named, err)
                refused.append(str(err))
                continue
            if refused:
                log.warning(
                    "peer %s: resumes with its learner state of round %d: trust learned and privacy spent "
                    "after it are not in it",
                    self.named,
                    round_,
                )
            return learner
        if refused:
            raise CheckpointError(f"{self.data_dir}: no learner state verifies: {'; '.join(refused)}")
        return None

    def load(self, round_: int, expected: codec.Expected) -> dict[str, torch.Tensor]:
        """The model after `round_` if its file hashes to the recorded SHA-256 and decodes to exactly
        the `expected` finite model; CheckpointError naming the file otherwise."""
        path = round_file(self.data_dir, round_)
        digest = self._hashes()[0].get(round_)
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

    def load_learner(self, round_: int) -> LearnerState | None:
        """The learner state saved with `round_` (None if that round was saved without one), if its file
        is at most :data:`MAX_LEARNER_BYTES`, hashes to the recorded SHA-256 and is strict JSON of the
        :class:`LearnerState` schema; CheckpointError naming the file otherwise."""
        path = learner_file(self.data_dir, round_)
        digest = self._hashes()[1].get(round_)
        if digest is None:
            return None
        try:
            with path.open("rb") as file:
                data = file.read(MAX_LEARNER_BYTES + 1)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing") from None
        except OSError as err:
            raise CheckpointError(f"{path}: unreadable ({err.strerror or err})") from None
        if len(data) > MAX_LEARNER_BYTES:
            raise CheckpointError(f"{path}: over the {MAX_LEARNER_BYTES} bytes a learner state may have")
        if hashlib.sha256(data).hexdigest() != digest:
            raise CheckpointError(
                f"{path}: damaged ({len(data)} bytes that do not hash to the SHA-256 "
                f"{self.state_file.name} records for round {round_})"
            )
        try:
            return LearnerState.model_validate(strict_json.loads(data.decode("utf-8"), LEARNER_DEPTH))
        except ValidationError as err:
            raise CheckpointError(f"{path}: not a learner state ({_summary(err)})") from None
        except ValueError as err:  # not UTF-8, not JSON, too deep
            raise CheckpointError(f"{path}: not a learner state (not JSON: {str(err)[:200]})") from None

    def _hashes(self) -> tuple[dict[int, str], dict[int, str]]:
        """round -> SHA-256 of its model file, and of its learner file, as recorded (read from the state
        once; empty when fresh)."""
        if self._recorded is None:
            self._recorded = self._state()
        return ({}, {}) if self._recorded is None else (self._recorded.sha256, self._recorded.learner)

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
        self._recorded = state
        return state

    def _write_state(self, round_: int, hashes: dict[int, str], learners: dict[int, str]) -> None:
        state = CheckpointState(
            round=round_,
            peer=self.peer,
            peers=self.config.peers,
            config=config_digest(self.config),
            sha256=hashes,
            learner=learners,
        )
        # a state without learner states is written as before they existed (no "learner" field)
        _write_atomically(self.state_file, (state.model_dump_json(exclude_defaults=True) + "\n").encode())
        self._recorded = state
