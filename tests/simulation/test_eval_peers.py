"""`eval_peers`: evaluated rounds estimated from a seeded random draw of peers, with standard errors that
match the estimate's spread, the last round exact, training untouched."""

from __future__ import annotations

import io
import math
import re

import pydantic
import pytest
import torch
from rich.console import Console

from ppaia import ExperimentConfig, ReferenceSimulation, Simulation
from ppaia.cli.main import summary_table
from ppaia.simulation.metrics import (
    SAMPLING_COLUMNS,
    evaluated_peers,
    metrics_row,
    sampling_error,
    standard_error,
)

RUN = {
    "peers": 30,
    "rounds": 4,
    "model": "mlp(hidden=[16])",
    "init": "independent",
    "attack": "sign_flip",
    "attackers": 0.2,
    "eval_peers": 8,
}


def config(**changes) -> ExperimentConfig:
    return ExperimentConfig.model_validate(RUN | changes)


def test_each_round_but_the_last_draws_eval_peers_peers_from_the_seed_and_the_round_alone():
    cfg = config(rounds=12)
    masks = [evaluated_peers(cfg, cfg.peers, round_) for round_ in range(12)]
    assert all(mask.dtype == torch.bool and int(mask.sum()) == 8 for mask in masks)
    assert len({tuple(mask.nonzero().flatten().tolist()) for mask in masks}) == 12  # a fresh draw each round
    assert all(torch.equal(mask, evaluated_peers(config(rounds=12), 30, r)) for r, mask in enumerate(masks))
    assert not torch.equal(masks[3], evaluated_peers(config(rounds=12, seed=1), 30, 3))
    assert evaluated_peers(cfg, 30, 12) is None  # the last round is exact
    assert evaluated_peers(config(eval_peers=None), 30, 1) is None
    assert evaluated_peers(config(eval_peers=30), 30, 1) is None
    assert evaluated_peers(config(eval_peers=31), 30, 1) is None


def test_every_peer_is_as_likely_to_be_drawn():
    cfg = config(peers=20, eval_peers=5, rounds=1000)
    counts = sum(evaluated_peers(cfg, cfg.peers, round_).long() for round_ in range(400))
    assert int(counts.sum()) == 2000
    # 100 expected per peer, binomial std 8.7: ±40 is beyond 4.5 std
    assert counts.min() > 60 and counts.max() < 140, counts


@pytest.mark.parametrize("k", [2, 10, 60, 150])
def test_the_standard_error_is_the_spread_of_the_estimate_over_draws(k):
    """s² is unbiased for a finite population's variance under draws without replacement, so the mean
    squared standard error equals the variance of the sampled mean (without the finite-population factor
    it would be 4× too large at k = 150 of 200)."""
    g = torch.Generator().manual_seed(k)
    population = torch.rand(200, generator=g).pow(6) * 5 + torch.rand(200, generator=g)  # skewed
    means, errors = [], []
    for _ in range(3000):
        drawn = population[torch.randperm(200, generator=g)[:k]]
        means.append(drawn.double().mean().item())
        errors.append(standard_error(drawn, 200))
    spread = torch.tensor(means).std().item()
    assert torch.tensor(errors).square().mean().sqrt().item() == pytest.approx(spread, rel=0.06)
    unbiased = pytest.approx(population.double().mean().item(), abs=4 * spread / 3000**0.5)
    assert torch.tensor(means).mean().item() == unbiased


def test_the_standard_error_of_every_peer_is_zero_and_of_one_peer_unknown():
    values = torch.rand(9)
    assert standard_error(values, 9) == 0.0
    assert math.isnan(standard_error(values[:1], 9))


def test_a_draw_without_an_honest_peer_gives_nan_honest_columns_not_a_crash():
    accuracy, loss = torch.rand(6), torch.rand(6)
    honest = torch.tensor([True, True, False, False, True, True])
    drawn = torch.tensor([False, False, True, True, False, False])
    row = metrics_row(1, accuracy, loss, torch.randn(6, 4), honest, 0, 0, 0.0, drawn)
    assert row["acc_mean"] == pytest.approx(accuracy[2:4].mean().item())
    assert math.isnan(row["honest_acc_mean"]) and math.isnan(row["honest_loss_mean"])
    errors = sampling_error(accuracy, loss, honest, drawn)
    assert errors["peers_evaluated"] == 2 and math.isnan(errors["honest_acc_mean_se"])


def test_eval_peers_below_two_is_refused():
    with pytest.raises(pydantic.ValidationError, match="eval_peers"):
        config(eval_peers=1)


def run_with_views(cfg: ExperimentConfig):
    views = []
    result = Simulation(cfg).run(observe=views.append)
    return result, views


def test_a_sampled_run_measures_the_drawn_peers_exactly_trains_the_same_and_ends_exact():
    sampled, sampled_views = run_with_views(config())
    exact, exact_views = run_with_views(config(eval_peers=None))
    assert sampled.divergence is None  # the peers not drawn (NaN) are not taken for diverged ones
    assert torch.equal(sampled.params, exact.params)  # evaluating fewer peers changes no training
    honest = ~sampled.attackers
    for round_, (ours, theirs) in enumerate(zip(sampled_views, exact_views, strict=True)):
        drawn = evaluated_peers(sampled.config, 30, round_)
        row, full = sampled.history[round_], exact.history[round_]
        assert set(SAMPLING_COLUMNS) <= set(row) and not set(SAMPLING_COLUMNS) & set(full)
        if drawn is None:  # the last round: every peer, exactly
            assert round_ == 4 and row["peers_evaluated"] == 30 and row["acc_mean_se"] == 0.0
            assert {key: row[key] for key in full if key != "wall_s"} == pytest.approx(
                {key: full[key] for key in full if key != "wall_s"}
            )
            continue
        assert row["peers_evaluated"] == 8
        assert torch.equal(ours.accuracy[drawn], theirs.accuracy[drawn])
        torch.testing.assert_close(ours.loss[drawn], theirs.loss[drawn])
        assert ours.accuracy[~drawn].isnan().all() and ours.loss[~drawn].isnan().all()
        assert row["acc_mean"] == pytest.approx(theirs.accuracy[drawn].mean().item())
        assert row["honest_acc_mean"] == pytest.approx(theirs.accuracy[drawn & honest].mean().item())
        assert row["consensus_distance"] == full["consensus_distance"]  # over every honest peer
        assert abs(row["acc_mean"] - full["acc_mean"]) <= 4 * row["acc_mean_se"]
        assert abs(row["loss_mean"] - full["loss_mean"]) <= 4 * row["loss_mean_se"]
    assert torch.equal(sampled.peer_accuracy, exact.peer_accuracy)  # summary.json and peers.csv: exact


def test_the_reference_executor_draws_and_scores_the_same_peers():
    cfg = config(peers=10, rounds=3, eval_peers=4, attack=None, attackers=0.0)
    engine, reference = Simulation(cfg).run(), ReferenceSimulation(cfg).run()
    for ours, theirs in zip(engine.history, reference.history, strict=True):
        assert ours["peers_evaluated"] == theirs["peers_evaluated"]
        assert ours["acc_mean"] == pytest.approx(theirs["acc_mean"], abs=1e-3)
        assert ours["loss_mean"] == pytest.approx(theirs["loss_mean"], rel=1e-4)


def test_a_rule_that_pools_all_data_evaluates_its_one_model_exactly():
    result = Simulation(config(rule="centralized", attack=None, attackers=0.0, rounds=2)).run()
    assert [row["peers_evaluated"] for row in result.history] == [1, 1, 1]
    assert all(row["acc_mean_se"] == 0.0 for row in result.history)


def test_the_run_summary_says_how_many_peers_each_round_evaluated(tmp_path):
    def shown(cfg: ExperimentConfig) -> str:
        console = Console(width=200, record=True, file=io.StringIO())
        console.print(summary_table(Simulation(cfg).run(), tmp_path))
        return console.export_text()

    row = r"peers evaluated per round\s*│\s*4 drawn \(the last round: all\)"
    assert re.search(row, shown(config(peers=10, rounds=2, eval_peers=4)))
    assert "peers evaluated" not in shown(config(peers=10, rounds=2, eval_peers=None))
