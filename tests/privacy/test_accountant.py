"""Per-peer privacy accounting: Opacus' RDP composition per peer, target ε, budgets, and the engine's ε."""

import itertools
import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from pydantic import ValidationError

import ppaia
from ppaia import ExperimentConfig, Simulation
from ppaia.privacy import PeerAccountant, UpdateDP, noise_for_target

DELTA = 1e-5
# Opacus warns when the best RDP order is its largest one (large noise during its search for a target ε)
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")


def opacus_epsilon(*segments: tuple[float, float, int], delta: float = DELTA) -> float:
    """ε of an Opacus RDPAccountant stepped once per step, segment after segment."""
    accountant = RDPAccountant()
    for noise, rate, steps in segments:
        for _ in range(steps):
            accountant.step(noise_multiplier=noise, sample_rate=rate)
    return accountant.get_epsilon(delta)


def spend(accountant: PeerAccountant, peer: int, noise: float, rate: float, steps: int) -> None:
    n = accountant.rdp.shape[0]
    accountant.spend(
        torch.tensor([peer]),
        torch.full((n,), noise, dtype=torch.float64),
        torch.full((n,), rate, dtype=torch.float64),
        torch.full((n,), steps, dtype=torch.long),
    )


def test_peer_epsilon_is_opacus_composition_of_each_peers_own_steps():
    accountant = PeerAccountant(4, DELTA)
    spend(accountant, 0, 1.0, 0.1, 10)
    spend(accountant, 1, 1.0, 0.1, 5)
    spend(accountant, 1, 2.0, 0.05, 7)  # a second segment with other noise and rate
    for steps in (3, 3, 4):  # peer 3: peer 0's steps, spent over three rounds
        spend(accountant, 3, 1.0, 0.1, steps)
    epsilon = accountant.epsilon()
    assert epsilon.dtype == torch.float64 and epsilon.shape == (4,)
    assert epsilon[0].item() == pytest.approx(opacus_epsilon((1.0, 0.1, 10)), rel=1e-9)
    assert epsilon[1].item() == pytest.approx(opacus_epsilon((1.0, 0.1, 5), (2.0, 0.05, 7)), rel=1e-9)
    assert epsilon[2].item() == 0.0  # never trained
    assert epsilon[3].item() == epsilon[0].item()
    np.testing.assert_allclose(accountant.rdp[3], accountant.rdp[0])  # RDP adds up over rounds


def test_epsilon_grows_strictly_with_steps_and_is_infinite_without_noise():
    accountant = PeerAccountant(2, DELTA)
    peers, rate = torch.tensor([0]), torch.full((2,), 0.1, dtype=torch.float64)
    noise = torch.full((2,), 1.2, dtype=torch.float64)
    values = [
        accountant.epsilon_after(peers, noise, rate, torch.full((2,), steps)).item()
        for steps in (1, 3, 10, 30)
    ]
    assert all(a < b for a, b in itertools.pairwise(values)) and values[0] > 0
    assert accountant.epsilon_after(peers, noise, rate, torch.zeros(2, dtype=torch.long)).item() == 0.0
    silent = torch.zeros(2, dtype=torch.float64)
    assert math.isinf(accountant.epsilon_after(peers, silent, rate, torch.ones(2, dtype=torch.long)).item())
    spend(accountant, 1, 0.0, 0.1, 1)
    assert math.isinf(accountant.epsilon()[1].item())
    spend(accountant, 1, 5.0, 0.1, 100)  # noise afterwards does not undo a noiseless step
    assert math.isinf(accountant.epsilon()[1].item())


def test_epsilon_after_records_nothing():
    accountant = PeerAccountant(3, DELTA)
    spend(accountant, 0, 1.0, 0.2, 4)
    before, curves = accountant.epsilon(), accountant.rdp.copy()
    noise = torch.full((3,), 1.0, dtype=torch.float64)
    rate = torch.full((3,), 0.2, dtype=torch.float64)
    ahead = accountant.epsilon_after(torch.tensor([0, 2]), noise, rate, torch.full((3,), 4))
    assert ahead[0].item() == pytest.approx(opacus_epsilon((1.0, 0.2, 8)), rel=1e-9)
    assert ahead[1].item() == pytest.approx(before[0].item(), rel=1e-12)
    assert np.array_equal(accountant.rdp, curves)
    assert torch.equal(accountant.epsilon(), before)


def test_noise_for_target_spends_just_the_target():
    rate, steps = 0.1, 40
    noises = {target: noise_for_target(target, DELTA, rate, steps) for target in (2.0, 4.0)}
    for target, noise in noises.items():
        accountant = PeerAccountant(1, DELTA)
        spend(accountant, 0, noise, rate, steps)
        assert target - 0.05 <= accountant.epsilon().item() <= target
    assert noises[4.0] < noises[2.0]  # a larger budget needs less noise


# --- in the engine --------------------------------------------------------------------------------------

TINY = {"peers": 6, "rounds": 4, "model": "logistic", "partition": "iid", "rule": "isolated"}


def test_target_epsilon_is_reached_by_every_peer_at_the_last_round():
    result = ppaia.run(TINY | {"rule": "fedavg", "privacy": {"name": "dp_sgd", "target_epsilon": 2.0}})
    peer_epsilon = result.summary()["peer_epsilon"]
    assert len(peer_epsilon) == 6
    assert all(1.9 <= value <= 2.01 for value in peer_epsilon)
    assert result.events == []  # the budget (target + tolerance) is never hit
    rounds = [round_ for round_, _ in result.snapshots["epsilon"]]
    assert rounds == [1, 2, 3, 4]
    assert peer_epsilon == result.snapshots["epsilon"][-1][1].tolist()
    per_round = [values for _, values in result.snapshots["epsilon"]]
    assert all((earlier < later).all() for earlier, later in itertools.pairwise(per_round))
    means = [row["epsilon_mean"] for row in result.history]
    maxima = [row["epsilon_max"] for row in result.history]
    assert means[0] == maxima[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(means))
    assert all(a < b for a, b in itertools.pairwise(maxima))
    assert maxima[-1] == pytest.approx(max(peer_epsilon))
    assert means[-1] == pytest.approx(sum(peer_epsilon) / 6)
    assert "peer_epsilon" not in ppaia.run(TINY | {"rounds": 1}).summary()


def test_peers_stop_training_before_they_exceed_their_budget():
    privacy = {"name": "dp_sgd", "noise_multiplier": 0.5}
    sim = Simulation(ExperimentConfig(**TINY | {"privacy": privacy}))
    training = sim.setup.private_training()
    per_round = [
        PeerAccountant(6, DELTA).epsilon_after(
            torch.arange(6), training.noise, training.rate, rounds * training.steps
        )
        for rounds in (2, 3)
    ]
    assert per_round[0].max() < per_round[1].min()
    budget = (per_round[0].max() + per_round[1].min()).item() / 2  # enough for two rounds, not three

    config = TINY | {"privacy": privacy | {"budget": budget}}
    result = ppaia.run(config)
    assert len(result.events) == 6
    assert all("stops training at round 3" in event for event in result.events)
    epsilon = {round_: values for round_, values in result.snapshots["epsilon"]}
    assert all((values <= budget).all() for values in epsilon.values())
    torch.testing.assert_close(epsilon[2], per_round[0])
    assert torch.equal(epsilon[2], epsilon[3]) and torch.equal(epsilon[3], epsilon[4])
    # the isolated peers' models stay what they were after round 2
    after_two = ppaia.run(config | {"rounds": 2})
    assert torch.equal(result.params, after_two.params)
    assert [row["acc_mean"] for row in result.history[2:]] == [result.history[2]["acc_mean"]] * 3


def test_update_level_epsilon_composes_sublinearly_like_opacus():
    mechanism = UpdateDP(epsilon=8, clip=2)
    result = ppaia.run(TINY | {"peers": 3, "privacy": "update_dp(epsilon=8, clip=2)"})
    one_release = opacus_epsilon((mechanism.noise_multiplier, 1.0, 1))
    for round_, values in result.snapshots["epsilon"]:
        expected = opacus_epsilon((mechanism.noise_multiplier, 1.0, round_))
        torch.testing.assert_close(values, torch.full((3,), expected, dtype=torch.float64))
    final = result.snapshots["epsilon"][-1][1][0].item()
    assert one_release < final < 4 * one_release
    assert final < 0.7 * 4 * one_release


def test_config_rejects_ambiguous_noise_and_target_epsilon_with_tasks():
    for privacy in ({"name": "dp_sgd"}, {"name": "dp_sgd", "noise_multiplier": 1.0, "target_epsilon": 2.0}):
        with pytest.raises(ValidationError, match="exactly one of noise_multiplier and target_epsilon"):
            ExperimentConfig(privacy=privacy)
    with pytest.raises(ValidationError, match=r"privacy\.target_epsilon"):
        ExperimentConfig(rounds=4, tasks=[[0, 1], [2, 3]], privacy="dp_sgd(target_epsilon=2)")
    ExperimentConfig(rounds=4, tasks=[[0, 1], [2, 3]], privacy="dp_sgd(noise_multiplier=1.0)")
