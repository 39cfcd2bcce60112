"""FLoBC's committee recorded on the ledger: hashes, votes, acceptance, scores and releases agree."""

import pytest

from ppaia.codec import encode
from ppaia.experiment import Setup
from ppaia.ledger import Ledger, LedgerError, content_hash, from_fixed, run_flobc_on_ledger

CONFIG = {
    "peers": 8,
    "rounds": 3,
    "rule": "flobc(validators=3, stragglers=1, slowdown=2)",
    "holdout": 0.2,
    "partition": "iid",
    "attack": "noisy(scale=0.3, graded=true)",
    "attackers": [3, 4],
    "seed": 1,
}


def test_every_release_is_recorded_and_matches_the_simulation():
    run = run_flobc_on_ledger(CONFIG)
    ledger, result = run.ledger, run.result
    assert [r.round for r in run.releases] == [0, 1, 2, 3]
    assert [r.version for r in run.releases] == [1, 2, 3, 4] and ledger.latest_version().version == 4
    # the last released hash is that of every peer's final model (all hold the global model)
    assert ledger.latest_version().model_hash == run.releases[-1].model_hash
    assert (result.params == result.params[-1]).all()
    # release 2 carries the straggler's (trainer 4's) stale update: 5 updates, 4 in the others
    assert [len(r.update_ids) for r in run.releases[1:]] == [4, 5, 4]
    for release in run.releases[1:]:
        for update_id, accepted in zip(release.update_ids, release.accepted, strict=True):
            update = ledger.update(update_id)
            assert update.round == release.round and update.accepted == accepted
            assert (update.valid_votes >= ledger.quorum()) == accepted
    # the noisiest trainer's update is rejected by the committee and its score on chain falls
    scores = [from_fixed(ledger.score(trainer)) for trainer in run.trainers]
    assert scores[4] < scores[0] and abs(sum(scores) - 1) < 1e-5
    assert not any(run.releases[2].accepted[4:])


def test_hashes_name_the_released_models():
    run = run_flobc_on_ledger({**CONFIG, "rounds": 1})
    layout = Setup.batch(run.result.config).layout
    for release, model in ((run.releases[0], run.initial), (run.releases[1], run.result.params[0])):
        assert release.model_hash == content_hash(encode(layout.unflatten(model)))
        assert run.ledger.version(release.version).model_hash == release.model_hash


def test_refuses_other_rules_and_small_nodes():
    with pytest.raises(ValueError, match="records FLoBC runs"):
        run_flobc_on_ledger({**CONFIG, "rule": "fedavg", "attack": None, "attackers": 0.0})
    with pytest.raises(LedgerError, match="accounts"):
        run_flobc_on_ledger(CONFIG, Ledger.in_process(accounts=5))
