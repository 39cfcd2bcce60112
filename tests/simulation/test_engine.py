"""The batched engine against the per-peer reference executor, reproducibility, and metrics."""

import pytest
import torch

import ppaia
from ppaia import ExperimentConfig, ModelError, ReferenceSimulation, Simulation
from ppaia.simulation import METRIC_COLUMNS

SMALL = {"peers": 6, "rounds": 3, "model": "mlp(hidden=[16])"}

PARITY_CASES = {
    "consensus-dirichlet-momentum": {"optimizer": "sgd(momentum=0.9)", "partition": "dirichlet(0.5)"},
    "gossip-links-adam-independent": {
        "rule": "gossip",
        "link_up": 0.6,
        "optimizer": "adam",
        "lr": 0.01,
        "init": "independent",
        "topology": "erdos_renyi(p=0.6)",
    },
    "fedavg-fraction-unequal-sizes": {
        "rule": "fedavg(fraction=0.5)",
        "partition": "quantity(0.5)",
        "local_epochs": 2,
        "batch_size": 8,
    },
    "consensus-datasize-torus-cnn": {
        "rule": "consensus(steps=2)",
        "mixing": "data_size",
        "topology": "torus",
        "model": "cnn(channels=[4])",
        "partition": "shards(2)",
    },
    "isolated": {"rule": "isolated"},
    "centralized": {"rule": "centralized", "batch_size": 64},
}


@pytest.mark.parametrize("case", PARITY_CASES)
def test_engine_matches_the_per_peer_reference(case):
    config = ExperimentConfig(**SMALL | PARITY_CASES[case])
    engine = Simulation(config).run()
    reference = ReferenceSimulation(config).run()
    torch.testing.assert_close(engine.params, reference.params, rtol=1e-4, atol=1e-5)
    for ours, theirs in zip(engine.history, reference.history, strict=True):
        assert ours["acc_mean"] == pytest.approx(theirs["acc_mean"], abs=1e-3)
        assert ours["loss_mean"] == pytest.approx(theirs["loss_mean"], rel=1e-4)
        assert ours["bytes_sent"] == theirs["bytes_sent"]


def test_same_config_and_seed_give_the_same_numbers():
    config = ExperimentConfig(**SMALL | {"rule": "gossip", "link_up": 0.5, "partition": "dirichlet(0.3)"})
    first, second = ppaia.run(config), ppaia.run(config)
    strip = [{k: v for k, v in row.items() if k != "wall_s"} for row in first.history]
    assert strip == [{k: v for k, v in row.items() if k != "wall_s"} for row in second.history]
    assert torch.equal(first.params, second.params)
    other = ppaia.run(config.model_copy(update={"seed": 1}))
    assert not torch.equal(first.params, other.params)


def test_history_has_every_metric_each_evaluated_round():
    result = ppaia.run(SMALL | {"rounds": 5, "eval_every": 2})
    assert [row["round"] for row in result.history] == [0, 2, 4, 5]
    for row in result.history:
        assert tuple(row) == METRIC_COLUMNS
        assert 0 <= row["acc_min"] <= row["acc_mean"] <= row["acc_max"] <= 1
        assert row["loss_min"] <= row["loss_mean"] <= row["loss_max"]
    walls = [row["wall_s"] for row in result.history]
    assert walls == sorted(walls)


def test_bytes_count_every_model_sent():
    result = ppaia.run(SMALL | {"rule": "consensus(steps=2)", "topology": "ring"})
    model_bytes = 4 * result.params.shape[1]
    per_round = 2 * 2 * 6 * model_bytes  # 2 steps × 2 directions × 6 links on a ring of 6
    assert [row["bytes_sent"] for row in result.history] == [0, per_round, per_round, per_round]
    assert result.final["bytes_cumulative"] == 3 * per_round
    assert ppaia.run(SMALL | {"rule": "isolated"}).final["bytes_cumulative"] == 0


def test_consensus_distance_is_zero_for_identical_peers_and_shrinks_with_mixing():
    common = ppaia.run(SMALL | {"rounds": 1, "rule": "fedavg"})
    assert common.history[0]["consensus_distance"] == 0.0 and common.final["consensus_distance"] == 0.0
    isolated = ppaia.run(SMALL | {"init": "independent", "rule": "isolated"}).final["consensus_distance"]
    mixed = ppaia.run(SMALL | {"init": "independent", "rule": "consensus(steps=5)", "topology": "complete"})
    assert mixed.final["consensus_distance"] < 0.01 * isolated


def test_cooperation_beats_isolation_on_skewed_data():
    base = {"peers": 10, "rounds": 15, "partition": "shards(2)", "lr": 0.1}
    isolated = ppaia.run(base | {"rule": "isolated"}).final["acc_mean"]
    consensus = ppaia.run(base | {"rule": "consensus(steps=2)", "topology": "complete"}).final["acc_mean"]
    fedavg = ppaia.run(base | {"rule": "fedavg"}).final["acc_mean"]
    assert isolated < 0.4  # two classes per peer
    assert consensus > isolated + 0.3 and fedavg > isolated + 0.3


def test_centralized_is_one_model_on_all_the_data():
    result = ppaia.run(SMALL | {"rule": "centralized", "rounds": 10})
    assert result.params.shape[0] == 1 and int(result.n_samples.sum()) == 1437
    assert result.final["acc_mean"] > 0.85


def test_many_peers_on_synthetic_data():
    result = ppaia.run(
        {
            "peers": 2000,
            "rounds": 2,
            "dataset": "synthetic(samples=20000, test_samples=200)",
            "partition": "iid",
            "rule": "gossip",
            "topology": "random_regular(4)",
        }
    )
    assert result.params.shape[0] == 2000 and result.final["acc_mean"] > result.history[0]["acc_mean"]


def test_models_with_buffers_are_refused(tmp_path, monkeypatch):
    (tmp_path / "bn_model.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 10))\n"
    )
    monkeypatch.syspath_prepend(tmp_path)
    with pytest.raises(ModelError, match="BatchNorm"):
        Simulation(ExperimentConfig(**SMALL | {"model": "bn_model:build"}))


@pytest.mark.parametrize(
    ("module", "body", "expected"),
    [
        ("narrow", "return nn.Sequential(nn.Flatten(), nn.Linear(3, 10))", "fails on inputs of shape"),
        ("negative", "return nn.Linear(-1, 10)", "cannot be built"),
        ("overflowing", "raise OverflowError('too big')", "cannot be built"),
    ],
)
def test_a_model_that_cannot_be_built_or_run_is_a_model_error(tmp_path, monkeypatch, module, body, expected):
    (tmp_path / f"{module}.py").write_text(f"from torch import nn\ndef build():\n    {body}\n")
    monkeypatch.syspath_prepend(tmp_path)
    with pytest.raises(ModelError, match=rf"^model import\(target={module}:build\): {expected}"):
        Simulation(ExperimentConfig(**SMALL | {"model": f"{module}:build"}))


PARITY_CASES_BYZANTINE = {
    "consensus-sign-flip": {"rule": "consensus", "attack": "sign_flip", "attackers": 0.34},
    "median-gaussian-complete": {
        "rule": "median",
        "topology": "complete",
        "attack": "gaussian",
        "attackers": 0.34,
    },
    "learned-trust-holdout": {"rule": "learned_trust(partners=2)", "topology": "complete", "holdout": 0.2},
    "fedavg-krum-free-riders": {
        "rule": "fedavg(aggregator='krum(f=1)')",
        "attack": "free_rider",
        "attackers": 0.34,
    },
    "p2pl-max-norm-stale": {
        "rule": "p2pl(steps=2)",
        "init": "max_norm",
        "attack": "stale(age=1)",
        "attackers": 0.34,
    },
    "trimmed-label-flip": {
        "rule": "trimmed_mean(0.2)",
        "topology": "complete",
        "attack": "label_flip",
        "attackers": 0.34,
    },
}


@pytest.mark.parametrize("case", PARITY_CASES_BYZANTINE)
def test_engine_matches_the_reference_with_attacks_and_learning_rules(case):
    config = ExperimentConfig(**SMALL | PARITY_CASES_BYZANTINE[case])
    engine, reference = Simulation(config).run(), ReferenceSimulation(config).run()
    torch.testing.assert_close(engine.params, reference.params, rtol=1e-4, atol=1e-5)
    assert engine.final["honest_acc_mean"] == pytest.approx(reference.final["honest_acc_mean"], abs=1e-3)


def test_accuracy_after_the_local_phase_is_reported_when_asked():
    p2pl = ppaia.run(SMALL | {"rule": "p2pl"})
    assert all("local_acc_mean" in row for row in p2pl.history)
    assert p2pl.history[0]["local_acc_mean"] == p2pl.history[0]["honest_acc_mean"]
    assert "local_acc_mean" not in ppaia.run(SMALL).final
    assert "local_acc_max" in ppaia.run(SMALL | {"eval_local_phase": True}).final


def test_holdout_keeps_part_of_each_peers_data_out_of_training():
    full = ppaia.run(SMALL | {"rounds": 1})
    held = ppaia.run(SMALL | {"rounds": 1, "holdout": 0.25})
    assert (held.n_samples < full.n_samples).all()
    assert held.n_samples.sum() == pytest.approx(0.75 * full.n_samples.sum(), abs=6)


def test_max_norm_initialization_cost_is_counted_at_round_zero():
    result = ppaia.run(SMALL | {"init": "max_norm", "rule": "consensus", "topology": "ring"})
    summary = result.summary()
    assert summary["init_steps"] == 3  # a ring of 6 peers: the largest model travels 3 hops
    assert result.history[0]["bytes_sent"] == summary["init_bytes"] > 0
    assert result.history[0]["consensus_distance"] == 0.0


def test_learned_trust_needs_held_out_data_unless_faithful():
    with pytest.raises(ValueError, match="holdout"):
        ExperimentConfig(rule="learned_trust")
    assert ExperimentConfig(rule="learned_trust(faithful=true)").holdout == 0


def test_simulations_built_from_one_config_do_not_share_rule_state():
    config = ExperimentConfig(**SMALL | {"rule": "learned_trust", "topology": "complete", "holdout": 0.2})
    first, second = Simulation(config), Simulation(config)
    assert first.rule is not second.rule and first.rule is not config.rule
    torch.testing.assert_close(first.run().params, second.run().params)
