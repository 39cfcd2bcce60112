"""The registry contract on an in-process EVM: artifact freshness, roles, quorums, releases, reverts."""

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ppaia.ledger import (
    SCORE_SCALE,
    Ledger,
    LedgerError,
    Update,
    Version,
    content_hash,
    from_fixed,
    to_fixed,
)
from ppaia.ledger.compile import ARTIFACT, compile_contract, dumps

H1, H2 = content_hash(b"model one"), content_hash(b"model two")


@contextmanager
def reverts(message: str) -> Iterator[None]:
    """The block raises LedgerError (a ValueError) whose message is exactly the contract's `message`."""
    with pytest.raises(ValueError) as caught:
        yield
    assert type(caught.value) is LedgerError and str(caught.value) == message


@pytest.fixture
def ledger() -> Ledger:
    return Ledger.in_process()


@pytest.fixture
def roles(ledger: Ledger) -> tuple[str, list[str], list[str]]:
    """Owner, 4 validators (quorum 3) and 2 trainers, registered."""
    owner, *others = ledger.accounts
    validators, trainers = others[:4], others[4:6]
    for v in validators:
        ledger.register_validator(v, sender=owner)
    for t in trainers:
        ledger.register_trainer(t, sender=owner)
    return owner, validators, trainers


def test_committed_artifact_is_a_fresh_compile():
    assert ARTIFACT.read_text() == dumps(compile_contract()), "run `python -m ppaia.ledger.compile`"


def test_deployer_owns_and_score_scale_matches_contract(ledger):
    assert ledger.owner() == ledger.accounts[0]
    assert ledger.contract.functions.SCORE_SCALE().call() == SCORE_SCALE == 10**6


def test_attach_to_deployed_contract(ledger, roles):
    _, validators, _ = roles
    same = Ledger.on(ledger.w3, ledger.address)
    assert same.is_validator(validators[0]) and same.quorum() == 3
    with pytest.raises(LedgerError, match="no contract at"):
        Ledger.on(ledger.w3, ledger.accounts[0])


def test_only_owner_registers(ledger):
    owner, other, target = ledger.accounts[:3]
    with reverts("not owner"):
        ledger.register_trainer(target, sender=other)
    with reverts("not owner"):
        ledger.register_validator(target, sender=other)
    assert not ledger.is_trainer(target) and not ledger.is_validator(target)
    ledger.register_trainer(target, sender=owner)
    assert ledger.is_trainer(target)


def test_an_account_cannot_be_both_or_registered_twice(ledger):
    owner, trainer, validator = ledger.accounts[:3]
    ledger.register_trainer(trainer, sender=owner)
    ledger.register_validator(validator, sender=owner)
    with reverts("already a trainer"):
        ledger.register_validator(trainer, sender=owner)
    with reverts("already a validator"):
        ledger.register_trainer(validator, sender=owner)
    with reverts("already a trainer"):
        ledger.register_trainer(trainer, sender=owner)
    with reverts("already a validator"):
        ledger.register_validator(validator, sender=owner)
    assert ledger.quorum() == 1  # V = 1: the repeated registration was not counted


@pytest.mark.parametrize(("n_validators", "quorum"), [(0, 1), (1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (6, 5)])
def test_quorum_is_two_thirds_plus_one(ledger, n_validators, quorum):
    owner = ledger.accounts[0]
    for v in ledger.accounts[1 : 1 + n_validators]:
        ledger.register_validator(v, sender=owner)
    assert ledger.quorum() == quorum == 2 * n_validators // 3 + 1


def test_roles_are_enforced(ledger, roles):
    owner, (validator, *_), (trainer, _) = roles
    update_id = ledger.submit_update(1, H1, sender=trainer)
    with reverts("not a validator"):
        ledger.vote(update_id, True, 0, sender=trainer)
    with reverts("not a validator"):
        ledger.propose_model(1, H1, 0, sender=trainer)
    with reverts("not a validator"):
        ledger.set_score(trainer, 0, sender=owner)
    for sender in (validator, owner):
        with reverts("not a trainer"):
            ledger.submit_update(1, H2, sender=sender)


def test_one_update_per_trainer_per_round(ledger, roles):
    _, _, (alice, bob) = roles
    assert ledger.quota() == 1
    first = ledger.submit_update(1, H1, sender=alice)
    with reverts("round's quota used"):
        ledger.submit_update(1, H2, sender=alice)
    assert ledger.submit_update(1, H2, sender=bob) == first + 1
    assert ledger.submit_update(2, H2, sender=alice) == first + 2
    assert ledger.update(first) == Update(alice, 1, 0, H1, 0, False)


@pytest.mark.parametrize("quota", [2, 3])
def test_up_to_the_quota_of_updates_per_trainer_and_round(ledger, quota):
    """BAP's resubmissions: the owner sets the quota before any update; no trainer exceeds it in a round."""
    owner, alice, bob = ledger.accounts[:3]
    with reverts("not owner"):
        ledger.set_quota(quota, sender=alice)
    with reverts("quota below 1"):
        ledger.set_quota(0, sender=owner)
    ledger.set_quota(quota, sender=owner)
    for trainer in (alice, bob):
        ledger.register_trainer(trainer, sender=owner)
    ids = [ledger.submit_update(1, H1, sender=alice) for _ in range(quota)]
    assert [ledger.update(i).trainer for i in ids] == [alice] * quota
    with reverts("round's quota used"):
        ledger.submit_update(1, H2, sender=alice)
    assert ledger.submit_update(1, H2, sender=bob) == ids[-1] + 1  # a quota per trainer and round
    assert ledger.submit_update(2, H2, sender=alice) == ids[-1] + 2
    with reverts("updates already submitted"):  # fixed once the run started: one quota for every round
        ledger.set_quota(quota + 1, sender=owner)
    assert ledger.quota() == quota


def test_an_update_names_the_round_it_trained_from_which_precedes_its_round(ledger, roles):
    """Fresh (round - 1) or stale (older): recorded; the round itself or a later one is refused."""
    _, _, (alice, _) = roles
    for round_, base in ((1, 0), (5, 4), (6, 0), (9, 2)):
        update_id = ledger.submit_update(round_, H1, base=base, sender=alice)
        assert ledger.update(update_id).base_round == base
    for later in (7, 8, 2**256 - 1):
        with reverts("base is not before the round"):
            ledger.submit_update(7, H2, base=later, sender=alice)


def test_unknown_update(ledger, roles):
    _, (validator, *_), _ = roles
    for attempt in (
        lambda: ledger.vote(0, True, 0, sender=validator),
        lambda: ledger.is_accepted(0),
        lambda: ledger.update(0),
    ):
        with reverts("unknown update"):
            attempt()


def test_one_vote_per_validator_per_update(ledger, roles):
    _, (validator, *_), (trainer, _) = roles
    update_id = ledger.submit_update(1, H1, sender=trainer)
    ledger.vote(update_id, False, to_fixed(0.0), sender=validator)
    with reverts("already voted"):
        ledger.vote(update_id, True, to_fixed(1.0), sender=validator)
    assert ledger.update(update_id).valid_votes == 0


def test_quorum_of_valid_votes_accepts(ledger, roles):
    _, validators, (trainer, _) = roles
    update_id = ledger.submit_update(1, H1, sender=trainer)
    for v in validators[:2]:
        ledger.vote(update_id, True, to_fixed(0.9), sender=v)
    assert not ledger.is_accepted(update_id)  # 2 of 4 < 3
    ledger.vote(update_id, False, to_fixed(0.1), sender=validators[2])
    assert not ledger.is_accepted(update_id)  # an invalid vote does not count
    ledger.vote(update_id, True, to_fixed(0.9), sender=validators[3])
    assert ledger.is_accepted(update_id)
    assert ledger.update(update_id) == Update(trainer, 1, 0, H1, 3, True)


def test_acceptance_is_final_when_validators_join(ledger, roles):
    owner, validators, (trainer, _) = roles
    update_id = ledger.submit_update(1, H1, sender=trainer)
    for v in validators[:3]:
        ledger.vote(update_id, True, 0, sender=v)
    ledger.register_validator(ledger.accounts[7], sender=owner)
    ledger.register_validator(ledger.accounts[8], sender=owner)
    assert ledger.quorum() == 5 and ledger.is_accepted(update_id)


def test_quorum_of_matching_proposals_releases_a_version(ledger, roles):
    _, validators, _ = roles
    assert ledger.latest_version() == Version(0, bytes(32), 0, 0)
    assert ledger.propose_model(7, H1, to_fixed(0.8), sender=validators[0]) is None
    assert ledger.propose_model(7, H1, to_fixed(0.8), sender=validators[1]) is None
    assert ledger.latest_version().version == 0  # 2 of 4 < 3
    assert ledger.propose_model(7, H1, to_fixed(0.8), sender=validators[2]) == 1
    assert ledger.latest_version() == ledger.version(1) == Version(1, H1, to_fixed(0.8), 7)
    with reverts("round already released"):
        ledger.propose_model(7, H1, to_fixed(0.8), sender=validators[3])
    with reverts("unknown version"):
        ledger.version(2)


def test_released_score_is_the_mean_of_its_supporters_rounded_down(ledger, roles):
    _, validators, _ = roles
    for v, score in zip(validators, (1, 1, 0), strict=False):
        ledger.propose_model(1, H1, score, sender=v)
    assert ledger.latest_version().score == 0  # 2 // 3


def test_disagreeing_proposals_release_nothing(ledger, roles):
    _, validators, _ = roles
    for v, model in zip(validators, (H1, H2, H1, H2), strict=True):
        assert ledger.propose_model(1, model, 0, sender=v) is None
    assert ledger.latest_version().version == 0


def test_one_proposal_per_validator_per_round_and_rounds_release_in_turn(ledger, roles):
    _, validators, _ = roles
    ledger.propose_model(1, H1, 0, sender=validators[0])
    with reverts("already proposed"):
        ledger.propose_model(1, H1, 0, sender=validators[0])
    with reverts("already proposed"):
        ledger.propose_model(1, H2, 0, sender=validators[0])
    for v in validators[1:3]:
        ledger.propose_model(1, H1, 0, sender=v)
    assert [ledger.propose_model(2, H2, 5, sender=v) for v in validators[:3]] == [None, None, 2]
    assert ledger.latest_version() == Version(2, H2, 5, 2)
    assert ledger.version(1) == Version(1, H1, 0, 1)


def test_validators_set_trainer_scores_last_one_wins(ledger, roles):
    owner, (v1, v2, *_), (trainer, _) = roles
    assert ledger.score(trainer) == 0
    ledger.set_score(trainer, to_fixed(0.75), sender=v1)
    ledger.set_score(trainer, to_fixed(0.25), sender=v2)
    assert from_fixed(ledger.score(trainer)) == 0.25
    with reverts("not a trainer"):
        ledger.set_score(owner, 1, sender=v1)


@pytest.mark.parametrize("x", [0.0, 1.0, -1.0, 0.123456, -3.999999, 1e6, 1 / 3])
def test_fixed_point_round_trip(x):
    assert from_fixed(to_fixed(x)) == pytest.approx(x, abs=0.5 / SCORE_SCALE)
    assert to_fixed(from_fixed(to_fixed(x))) == to_fixed(x)


@pytest.mark.parametrize("x", [float("nan"), float("inf"), -float("inf")])
def test_a_score_that_is_not_finite_has_no_fixed_point(x):
    with pytest.raises(ValueError, match="finite"):
        to_fixed(x)


def test_content_hash_is_sha256():
    assert content_hash(b"abc") == hashlib.sha256(b"abc").digest() and len(H1) == 32


def test_scores_outside_zero_to_one_are_refused(ledger, roles):
    """One validator must not block a release (overflowing the score sum) or skew its score."""
    _, (v1, v2, v3, *_), (trainer, _) = roles
    update = ledger.submit_update(1, H1, sender=trainer)
    for score in (-1, SCORE_SCALE + 1, 2**255 - 1):
        with reverts("score out of range"):
            ledger.propose_model(1, H1, score, sender=v1)
        with reverts("score out of range"):
            ledger.vote(update, True, score, sender=v1)
        with reverts("score out of range"):
            ledger.set_score(trainer, score, sender=v1)
    assert [ledger.propose_model(1, H1, SCORE_SCALE, sender=v) for v in (v1, v2, v3)] == [None, None, 1]


def test_rounds_release_in_increasing_order(ledger, roles):
    _, validators, _ = roles
    for v in validators[:3]:
        ledger.propose_model(5, H1, 0, sender=v)
    for round_ in (5, 4):
        with reverts("round already released" if round_ == 5 else "round is not newer"):
            ledger.propose_model(round_, H2, 0, sender=validators[3])
