"""Byzantine attacks: who attacks, what they send, and how the simulator applies them."""

import pytest
import torch

import ppaia
from ppaia.attacks import ATTACKS, Adversary, AttackRound, choose_attackers

BASE = {"peers": 10, "rounds": 3, "partition": "iid", "model": "mlp(hidden=[16])"}


def round_of(trained, held=None, past=(), round_=1, peers=None):
    held = torch.zeros_like(trained) if held is None else held
    peers = torch.arange(len(trained)) if peers is None else peers
    initial = torch.full_like(trained, 7.0)
    return AttackRound(round_, peers, trained, held, initial, past, key=0)


def test_attackers_are_a_seeded_share_of_peers():
    mask = choose_attackers(20, 0.3, seed=4)
    assert mask.sum() == 6
    assert torch.equal(mask, choose_attackers(20, 0.3, seed=4))
    assert not torch.equal(mask, choose_attackers(20, 0.3, seed=5))
    assert choose_attackers(20, 0.0, seed=4).sum() == 0


def test_sign_flip_and_gaussian_messages():
    trained = torch.randn(3, 1000)
    torch.testing.assert_close(ATTACKS.create("sign_flip(scale=2)").message(round_of(trained)), -2 * trained)
    noise = ATTACKS.create("gaussian(sigma=3)").message(round_of(trained))
    assert noise.std().item() == pytest.approx(3, rel=0.05) and abs(noise.mean().item()) < 0.2


def test_noisy_peers_add_noise_graded_by_their_id():
    trained = torch.randn(3, 20000)
    sent = ATTACKS.create("noisy(scale=0.5)").message(round_of(trained))
    assert (sent - trained).std().item() == pytest.approx(0.5, rel=0.05)
    graded = ATTACKS.create("noisy(scale=0.5, graded=true)").message(
        round_of(trained, peers=torch.tensor([0, 2, 5]))
    )
    spread = (graded - trained).std(dim=1)
    assert spread[0] == 0 and spread[1:].tolist() == pytest.approx([1.0, 2.5], rel=0.05)


def test_attackers_can_be_listed_by_peer_id():
    assert choose_attackers(6, [1, 4], seed=0).tolist() == [False, True, False, False, True, False]
    config = ppaia.ExperimentConfig.model_validate({**BASE, "attack": "noisy", "attackers": [0, 3]})
    result = ppaia.run(config.model_copy(update={"rounds": 1}))
    assert result.attackers.nonzero().flatten().tolist() == [0, 3]
    for bad in ([3, 3], [10], list(range(10))):
        with pytest.raises(ValueError, match="attackers"):
            ppaia.ExperimentConfig.model_validate({**BASE, "attack": "noisy", "attackers": bad})


def test_free_rider_sends_back_what_it_held_and_does_not_train():
    attack = ATTACKS.create("free_rider")
    held = torch.randn(2, 5)
    assert torch.equal(attack.message(round_of(torch.randn(2, 5), held)), held)
    adversary = Adversary(attack, torch.tensor([True, False, True]), torch.zeros(2, 5), seed=0)
    assert adversary.trainers(None).tolist() == [False, True, False]
    assert adversary.trainers(torch.tensor([True, True, False])).tolist() == [False, True, False]


def test_stale_resends_the_model_of_age_rounds_ago():
    adversary = Adversary(
        ATTACKS.create("stale(age=2)"), torch.tensor([True, False]), torch.full((1, 3), 7.0), 0
    )
    sent = []
    for round_ in range(1, 5):
        params = torch.full((2, 3), float(round_))  # the attacker's trained model is `round_`
        sent.append(adversary.send(params, params[:1].clone(), round_)[0, 0].item())
    assert sent == [7.0, 7.0, 1.0, 2.0]  # its initial model until two rounds have passed


def test_label_flip_relabels_only_the_attackers_samples_and_changes_every_label():
    adversary = Adversary(ATTACKS.create("label_flip"), torch.tensor([True]), torch.zeros(1, 1), seed=3)
    labels = torch.arange(10).repeat(3)
    own = torch.arange(0, 15)
    poisoned = adversary.poison(labels, own, 10)
    assert torch.equal(poisoned[15:], labels[15:])
    assert (poisoned[own] != labels[own]).all()
    shift = (poisoned[own] - labels[own]) % 10
    assert shift.unique().numel() == 1  # one permutation of the classes


def test_attackers_need_an_attack_and_no_attackers_is_a_clean_run():
    with pytest.raises(ValueError, match="attack"):
        ppaia.ExperimentConfig(attackers=0.2)
    clean = ppaia.run(BASE | {"rounds": 1})
    zero = ppaia.run(BASE | {"rounds": 1, "attack": "gaussian", "attackers": 0.0})
    assert zero.attackers.sum() == 0 and torch.equal(zero.params, clean.params)


def test_honest_metrics_leave_attackers_out():
    result = ppaia.run(
        BASE | {"rule": "consensus", "topology": "complete", "attack": "gaussian", "attackers": 0.3}
    )
    honest = ~result.attackers
    assert result.attackers.sum() == 3
    final = result.final
    assert final["honest_acc_mean"] == pytest.approx(result.peer_accuracy[honest].mean().item())
    assert final["honest_acc_min"] == pytest.approx(result.peer_accuracy[honest].min().item())
    clean = ppaia.run(BASE | {"rule": "consensus", "topology": "complete"}).final
    assert clean["honest_acc_mean"] == clean["acc_mean"]


def test_noise_collapses_consensus_but_not_the_median():
    base = BASE | {"rounds": 10, "lr": 0.2, "topology": "complete"}
    attacked = base | {"attack": "gaussian(sigma=5)", "attackers": 0.3}
    clean = ppaia.run(base | {"rule": "median"}).final["honest_acc_mean"]
    consensus = ppaia.run(attacked | {"rule": "consensus"}).final["honest_acc_mean"]
    median = ppaia.run(attacked | {"rule": "median"}).final["honest_acc_mean"]
    assert clean > 0.8 and consensus < 0.3
    assert median > clean - 0.05


def test_a_run_needs_at_least_one_honest_peer():
    with pytest.raises(ValueError, match="attackers"):
        ppaia.ExperimentConfig(peers=2, attack="sign_flip", attackers=0.75)
    with pytest.raises(ValueError, match="attackers"):
        ppaia.ExperimentConfig(rule="centralized", attack="sign_flip", attackers=0.2)


@pytest.mark.parametrize(
    "attack", ["stale(age=2)", "free_rider", "gaussian", "sign_flip", "label_flip", "alie(z=2)"]
)
def test_running_a_simulation_twice_gives_the_same_numbers(attack):
    simulation = ppaia.Simulation(
        ppaia.ExperimentConfig(**BASE | {"rounds": 4, "attack": attack, "attackers": 0.3})
    )
    first, second = simulation.run(), simulation.run()
    assert torch.equal(first.params, second.params)


@pytest.mark.parametrize("z", [0.25, 1.0, 4.0])
def test_alie_sends_what_it_held_moved_against_its_update_by_z_update_lengths(z):
    randomness = torch.Generator().manual_seed(17)
    held = torch.randn(5, 300, generator=randomness)
    update = torch.randn(5, 300, generator=randomness) * torch.logspace(-3, 1, 5)[:, None]
    sent = ATTACKS.create(f"alie(z={z})").message(round_of(held + update, held))
    torch.testing.assert_close((sent - held).norm(dim=1), z * update.norm(dim=1))
    cosine = torch.nn.functional.cosine_similarity(sent - held, update, dim=1)
    torch.testing.assert_close(cosine, torch.full((5,), -1.0))


@pytest.mark.parametrize("spec", ATTACKS.names())
def test_an_attacker_sends_the_same_alone_as_among_several(spec):
    """A networked attacker knows only its own state: its message may not depend on the other rows."""
    randomness = torch.Generator().manual_seed(5)
    peers = torch.tensor([1, 4, 6, 9])
    trained, held = torch.randn(2, 4, 50, generator=randomness)
    past = tuple(torch.randn(4, 50, generator=randomness) for _ in range(5))
    attack = ATTACKS.create(spec)
    together = attack.message(round_of(trained, held, past, round_=7, peers=peers))
    for k in range(4):
        row = slice(k, k + 1)
        alone = attack.message(round_of(trained[row], held[row], tuple(p[row] for p in past), 7, peers[row]))
        torch.testing.assert_close(alone, together[row], rtol=0, atol=0)


@pytest.mark.slow
def test_alie_drags_consensus_down_but_not_the_median():
    base = BASE | {"rounds": 10, "lr": 0.2, "topology": "complete"}
    attacked = base | {"attack": "alie(z=3)", "attackers": 0.3}
    clean = ppaia.run(base | {"rule": "consensus"}).final["honest_acc_mean"]
    consensus = ppaia.run(attacked | {"rule": "consensus"}).final["honest_acc_mean"]
    median = ppaia.run(attacked | {"rule": "median"}).final["honest_acc_mean"]
    assert clean > 0.8 and consensus < 0.4
    assert median > clean - 0.1
