"""A networked peer's learning half reproduces the simulator row by row (no sockets involved)."""

import pytest
import torch
from in_process import run_learners, run_peers

import ppaia
from ppaia.network.learner import PeerLearner, unsupported

BASE = {"peers": 5, "rounds": 3, "partition": "dirichlet(1.0)", "model": "mlp(hidden=[16])", "seed": 2}


@pytest.mark.parametrize(
    "rule",
    [
        "consensus(steps=2)",
        "gossip",
        "fedavg(fraction=0.6)",
        "learned_trust(partners=2)",
        "median",
        "p2pl",
        "clipped_gossip",
        "balance(horizon=3)",
    ],
)
def test_peers_passing_models_reproduce_the_simulator(rule):
    table = {**BASE, "rule": rule, "holdout": 0.2, "topology": "complete"}
    config = ppaia.ExperimentConfig.model_validate(table)
    expected = ppaia.run(config).params
    torch.testing.assert_close(run_peers(config), expected, rtol=1e-4, atol=1e-5)


def test_a_missing_neighbours_weight_goes_to_the_receiver():
    config = ppaia.ExperimentConfig.model_validate({**BASE, "rule": "consensus", "topology": "ring"})
    with_all = run_peers(config)
    without_2 = run_peers(config, drop={2})
    assert torch.isfinite(without_2).all()
    assert not torch.allclose(with_all[1], without_2[1])  # peer 1 lost a neighbour


# Every learning feature on a peer: DP (both mechanisms, noise drawn per peer from the run seed), EWC
# with continual tasks, and attackers, which are peers whose process misbehaves.
FEATURES = {
    "dp_sgd-poisson": {"privacy": "dp_sgd(noise_multiplier=1.0, clip=1.0)"},
    "dp_sgd-shuffle-budget": {"privacy": "dp_sgd(noise_multiplier=0.8, sampling='shuffle', budget=3.0)"},
    "update_dp": {"privacy": "update_dp(epsilon=4.0, clip=2.0)"},
    "ewc-tasks": {"ewc": {"strength": 5.0}, "tasks": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], "rounds": 4},
    "sign_flip": {"attack": "sign_flip", "attackers": [3]},
    "gaussian": {"attack": "gaussian", "attackers": [1, 4]},
    "label_flip": {"attack": "label_flip", "attackers": [0]},
    "alie": {"attack": "alie(z=2)", "attackers": [2, 3]},
}


# learned trust judges on raw held-out records, which a DP peer may not (the config refuses it)
CASES = [
    pytest.param(rule, feature, id=f"{rule.split('(')[0]}-{name}")
    for name, feature in FEATURES.items()
    for rule in ("consensus", "learned_trust(partners=2)")
    if not (rule.startswith("learned_trust") and "privacy" in feature)
]


@pytest.mark.parametrize(("rule", "feature"), CASES)
def test_every_learning_feature_on_a_peer_reproduces_the_simulator(rule, feature):
    table = {**BASE, "rule": rule, "topology": "complete", "holdout": 0.2, **feature}
    config = ppaia.ExperimentConfig.model_validate(table)
    expected = ppaia.run(config)
    learners = run_learners(config)
    torch.testing.assert_close(
        torch.stack([lr.params for lr in learners]), expected.params, rtol=1e-4, atol=1e-5
    )
    if "privacy" in feature:
        spent = torch.tensor([lr.epsilon() for lr in learners])
        torch.testing.assert_close(spent, torch.tensor(expected.summary()["peer_epsilon"]))


def test_a_peer_slice_holds_only_its_own_rows():
    """Set-up builds no N-row tensor for a peer: its data table, parameters and evaluator are its own."""
    config = ppaia.ExperimentConfig.model_validate(
        {**BASE, "peers": 400, "partition": "iid", "min_samples": 1}
    )
    learner = PeerLearner(config, 123)
    setup = learner.setup
    assert setup.ids.tolist() == [123] and setup.params.shape[0] == 1
    assert setup.data.table.shape[0] == 1 and setup.learner.holdout.table.shape[0] == 1
    trusting = PeerLearner(config.model_copy(update={"rule": ppaia.RULES.create("learned_trust")}), 123)
    assert tuple(trusting.rule._trust.shape) == (1, 400)  # its own row of trust, not 400 × 400
    batch = ppaia.Simulation(config).setup
    torch.testing.assert_close(setup.params[0], batch.params[123])
    assert torch.equal(setup.data.peer_samples(0), batch.data.peer_samples(123))


def test_what_a_networked_peer_refuses():
    for change in ({"rule": "centralized"}, {"rule": "flobc", "holdout": 0.2}):
        config = ppaia.ExperimentConfig.model_validate({**BASE, **change})
        assert unsupported(config)
        with pytest.raises(ppaia.ConfigError, match="does not support"):
            PeerLearner(config, 0)
    with pytest.raises(ppaia.ConfigError, match=r"peer index 5 is not in 0\.\.4"):
        PeerLearner(ppaia.ExperimentConfig.model_validate(BASE), 5)


def test_broadcast_steps_are_computed_by_their_smallest_target():
    from ppaia.network.learner import step_role
    from ppaia.topology.mixing import Mixing

    # two result rows: row 0 (senders 1, 2) goes to peers 1 and 3, row 1 (sender 0) to peer 2
    step = Mixing(
        torch.tensor([0, 0, 1]),
        torch.tensor([1, 2, 0]),
        torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64),
        2,
        torch.tensor([1, 3, 2]),
        torch.tensor([0, 0, 1]),
    )
    assert step_role(step, 0).row is None and step_role(step, 0).server is None  # not a target
    server = step_role(step, 1)
    assert server.server is None and server.senders == [1, 2]
    assert step_role(step, 3).row is None and step_role(step, 3).server == 1
    assert step_role(step, 2).senders == [0]


def test_catching_up_weighs_the_others_by_the_rule_not_by_a_plain_mean():
    """A restarted learned-trust peer that missed rounds takes the others' models weighted by the trust
    it resumed with: a partner it distrusts (trust 0) does not move it, whatever that partner sent."""
    config = ppaia.ExperimentConfig.model_validate(
        {**BASE, "rule": "learned_trust(partners=4, steps=0)", "holdout": 0.2, "topology": "complete"}
    )
    ids = [f"{peer:040x}" for peer in range(config.peers)]
    learner = PeerLearner(config, 0)
    learner.rule.load_peer_state(0, ids, {ids[1]: 0.0, ids[2]: 0.5, ids[3]: 0.25, ids[4]: 0.25})
    own = learner.params.clone()
    models = {1: torch.full_like(own, 1e6), 2: own + 1.0, 3: own - 2.0, 4: own + 4.0}
    expected = 0.5 * (own + 1.0) + 0.25 * (own - 2.0) + 0.25 * (own + 4.0)  # own weight 1 - Σ trust = 0
    torch.testing.assert_close(learner.catch_up(models, 3), expected)
    assert not torch.allclose(expected, torch.stack([own, *models.values()]).mean(0))
