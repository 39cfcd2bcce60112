"""FLoBC's committee on the ledger: each release's update hashes, validators' votes, scores and model hash.

:func:`run_flobc_on_ledger` runs a FLoBC simulation and, after every release r, writes on chain what its
trainers and validators did, each from its own account, in protocol order:

1. every contributing trainer submits ``submit_update(r, h, base=b)``, h = SHA-256 of the safetensors
   bytes of its candidate θ + Δ (its update rebased onto the global model), b the version it trained from;
2. every validator votes on every update: valid or not, with its accuracy of the candidate (fixed point);
   the contract accepts an update at ⌊2V/3⌋ + 1 valid votes, and the run stops with :class:`LedgerError`
   if the contract's verdict ever differs from the rule's;
3. the first validator records the trainers' reward-penalty scores with ``set_score``;
4. every validator proposes the new global model's hash for round r, with its held-out accuracy of that
   model; the quorum of identical hashes releases the version.

The initial model is released as round 0 the same way. In the simulator the aggregate is computed once
and every validator hashes it; that each validator computing it alone gets the same bits is tested in
``tests/rules/test_flobc.py``. Accounts: the owner is ``accounts[0]``, trainer i is ``accounts[1 + i]``,
validator j is ``accounts[1 + T + j]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ppaia.codec import encode
from ppaia.config import ExperimentConfig
from ppaia.ledger.client import Ledger, LedgerError, content_hash, to_fixed
from ppaia.rules.flobc import FLoBC
from ppaia.simulation.engine import RunResult, Simulation

__all__ = ["LedgerRelease", "LedgerRun", "run_flobc_on_ledger"]


@dataclass(frozen=True)
class LedgerRelease:
    """One release as recorded on chain: its update ids, which were accepted, and the version."""

    round: int
    version: int
    model_hash: bytes
    update_ids: tuple[int, ...]
    accepted: tuple[bool, ...]


@dataclass(frozen=True)
class LedgerRun:
    """The simulation's result and initial global model, the ledger it was recorded on, every release."""

    result: RunResult
    initial: torch.Tensor
    ledger: Ledger
    trainers: tuple[str, ...]
    validators: tuple[str, ...]
    releases: tuple[LedgerRelease, ...]


def run_flobc_on_ledger(config: ExperimentConfig | dict, ledger: Ledger | None = None) -> LedgerRun:
    """Run a ``flobc`` experiment and record every release on `ledger` (a fresh in-process EVM if None)."""
    if not isinstance(config, ExperimentConfig):
        config = ExperimentConfig.model_validate(config)
    if not isinstance(config.rule, FLoBC):
        raise ValueError(f"rule: the committee ledger records FLoBC runs, not {config.rule.label()!r}")
    simulation = Simulation(config)  # FLoBC runs in the simulator; this records its releases on chain
    setup = simulation.setup
    rule: FLoBC = simulation.rule
    n = simulation.n_peers
    ledger = Ledger.in_process(accounts=n + 1) if ledger is None else ledger
    trainers, validators = _register(ledger, n, config.rule.validators)
    releases: list[LedgerRelease] = []
    validator_ids = torch.arange(len(trainers), n)

    def model_hash(flat: torch.Tensor) -> bytes:
        return content_hash(encode(setup.layout.unflatten(flat)))

    def held_out_accuracy(model: torch.Tensor) -> list[int]:
        accuracy = setup.learner.accuracy(model.expand(len(validators), 1, -1), validator_ids)[:, 0]
        return [to_fixed(float(a)) for a in accuracy]

    def release(round_: int, model: torch.Tensor, update_ids=(), accepted=()) -> None:
        digest = model_hash(model)
        version = None
        for validator, score in zip(validators, held_out_accuracy(model), strict=True):
            version = ledger.propose_model(round_, digest, score, sender=validator) or version
        if version is None:
            raise LedgerError(f"round {round_}: the validators' proposals released no version")
        releases.append(LedgerRelease(round_, version, digest, tuple(update_ids), tuple(accepted)))

    def record(round_: int, _row) -> None:
        last = rule.last_round
        update_ids = [
            ledger.submit_update(round_, model_hash(candidate), base=int(base), sender=trainers[int(peer)])
            for peer, base, candidate in zip(last.trainers, last.base_versions, last.candidates, strict=True)
        ]
        for v, validator in enumerate(validators):
            for i, update_id in enumerate(update_ids):
                valid = bool(last.votes[v, i])
                ledger.vote(update_id, valid, to_fixed(float(last.accuracy[v, i])), sender=validator)
        on_chain = [ledger.is_accepted(update_id) for update_id in update_ids]
        if on_chain != last.accepted.tolist():
            raise LedgerError(f"round {round_}: the contract accepted {on_chain}, the rule {last.accepted}")
        for peer, score in enumerate(rule.scores[: len(trainers)].tolist()):
            ledger.set_score(trainers[peer], to_fixed(score), sender=validators[0])
        release(round_, last.model, update_ids, on_chain)

    initial = setup.params[len(trainers)].clone()  # the global model the validators start with
    release(0, initial)
    result = simulation.run(record)
    return LedgerRun(result, initial, ledger, trainers, validators, tuple(releases))


def _register(ledger: Ledger, n_peers: int, n_validators: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Register trainer and validator accounts on a fresh contract owned by ``accounts[0]``."""
    accounts = ledger.accounts
    if len(accounts) < n_peers + 1:
        raise LedgerError(f"peers: the node has {len(accounts)} accounts; {n_peers} peers need {n_peers + 1}")
    owner = ledger.owner()
    if owner != accounts[0]:
        raise LedgerError(f"the contract's owner {owner} is not the node's first account")
    if ledger.latest_version().version:
        raise LedgerError("the ledger already holds released versions; record on a fresh contract")
    peers = accounts[1 : n_peers + 1]
    trainers, validators = tuple(peers[: n_peers - n_validators]), tuple(peers[n_peers - n_validators :])
    for account in trainers:
        ledger.register_trainer(account, sender=owner)
    for account in validators:
        ledger.register_validator(account, sender=owner)
    return trainers, validators
