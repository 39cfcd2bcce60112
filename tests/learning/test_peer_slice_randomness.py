"""A peer's random draws are its own: row i of any batch equals peer i computed alone.

A networked peer holds one row (its data, its model) and must get the simulator's numbers for that row.
For each feature a peer runs on its own (plain SGD's data order, DP-SGD's Poisson or shuffled batches and
noise, update-level DP's noise, EWC's Fisher samples, every attack), peer i is computed: with all N rows;
alone, as a 1-row LocalData naming it; among other peers in another order (a different N); with fewer of
the rows training; and in chunks of one row (a tiny element budget). Every variant gives row i's numbers.
"""

import itertools

import numpy as np
import pytest
import torch

from ppaia.attacks import ATTACKS, Adversary
from ppaia.learning import OPTIMIZERS, BatchedTrainer, LocalData, ParamLayout, ewc, local
from ppaia.learning.ewc import draw_fisher_samples, fisher_diagonal
from ppaia.learning.local import PrivateSteps
from ppaia.learning.models import MODELS
from ppaia.privacy import PrivateTraining, UpdateDP

COUNTS = (5, 17, 1, 9, 30, 12)  # unequal: the widest peer sets the table's width
N, FEATURES, CLASSES = len(COUNTS), 6, 3
NOISE = torch.linspace(0.5, 1.5, N)  # DP-SGD noise multiplier of each peer
OTHERS = {1: [5, 1, 0], 4: [2, 4]}  # peer -> another set of rows it is computed among, in another order
TRAINING = ["sgd", "dp_sgd_poisson", "dp_sgd_shuffle"]


def world():
    g = torch.Generator().manual_seed(0)
    n = sum(COUNTS)
    x, y = torch.randn(n, FEATURES, generator=g), torch.randint(0, CLASSES, (n,), generator=g)
    bounds = np.cumsum((0, *COUNTS))
    parts = [np.arange(a, b) for a, b in itertools.pairwise(bounds)]
    model = MODELS.create("mlp(hidden=[8])").build((FEATURES,), CLASSES)
    params = torch.randn(N, ParamLayout.of(model).size, generator=g) * 0.5
    return x, y, parts, model, params


def rows_of(x, y, parts, peers) -> LocalData:
    """The rows of `peers` only, as an executor holding just them has them."""
    return LocalData.from_parts(x, y, [parts[p] for p in peers], torch.tensor(peers))


def train(case, model, data, params, trainers=None):
    trainer = BatchedTrainer(
        model,
        data,
        batch_size=4,
        epochs=2,
        optimizer=OPTIMIZERS.create("sgd(momentum=0.5)"),
        lr=0.1,
        seed=3,
    )
    private = None
    if case != "sgd":
        private = PrivateSteps(0.5, NOISE[data.ids], case.removeprefix("dp_sgd_"), seed=7)
    return trainer.train(params.clone(), 2, trainers, private=private)


def variants(monkeypatch, peer, compute):
    """Peer `peer`'s row as computed alone, among other rows, and row by row; `compute(peers)` gives the
    rows of `peers` (all N when None)."""
    yield "alone", compute([peer])[0]
    others = OTHERS[peer]
    yield f"among {others}", compute(others)[others.index(peer)]
    with monkeypatch.context() as patch:
        patch.setattr(local, "ELEMENT_BUDGET", 1)
        patch.setattr(ewc, "ELEMENT_BUDGET", 1)
        yield "in chunks of one row", compute(None)[peer]


@pytest.mark.parametrize("peer", [1, 4])
@pytest.mark.parametrize("case", TRAINING)
def test_a_peer_trains_alone_as_its_row_of_the_batch(monkeypatch, case, peer):
    x, y, parts, model, params = world()
    everyone = list(range(N))
    whole = train(case, model, rows_of(x, y, parts, everyone), params)
    assert not torch.allclose(whole[peer], params[peer])

    def compute(peers):
        peers = everyone if peers is None else peers
        return train(case, model, rows_of(x, y, parts, peers), params[peers])

    found = list(variants(monkeypatch, peer, compute))
    fewer = torch.zeros(N, dtype=torch.bool)
    fewer[[peer, 0]] = True  # the rule picked fewer trainers this round
    found.append(
        ("with fewer trainers", train(case, model, rows_of(x, y, parts, everyone), params, fewer)[peer])
    )
    for how, row in found:
        torch.testing.assert_close(row, whole[peer], rtol=1e-5, atol=1e-6, msg=f"{case}, peer {peer} {how}")


@pytest.mark.parametrize("case", TRAINING)
def test_the_peers_own_draws_change_with_the_round(case):
    """The draws are keyed, not fixed: another round (or seed) trains differently."""
    x, y, parts, model, params = world()
    data = rows_of(x, y, parts, [4])
    trainer = BatchedTrainer(
        model, data, batch_size=4, epochs=1, optimizer=OPTIMIZERS.create("sgd"), lr=0.1, seed=3
    )
    private = None if case == "sgd" else PrivateSteps(0.5, NOISE[[4]], case.removeprefix("dp_sgd_"), 7)
    first, second = (trainer.train(params[[4]].clone(), r, private=private) for r in (1, 2))
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("peer", [1, 4])
def test_update_dp_noise_of_a_peer_is_its_own(monkeypatch, peer):
    _, _, _, _, before = world()
    after = before + torch.randn(before.shape, generator=torch.Generator().manual_seed(1))
    counts = torch.tensor(COUNTS)

    def release(peers, trainers=None):
        peers = list(range(N)) if peers is None else peers
        privacy = PrivateTraining(
            UpdateDP(epsilon=4.0, clip=1.0),
            counts[peers],
            batch_size=4,
            epochs=1,
            rounds=3,
            seed=5,
            ids=torch.tensor(peers),
        )
        trainers = torch.ones(len(peers), dtype=torch.bool) if trainers is None else trainers
        return privacy.release(before[peers], after[peers].clone(), trainers, 2)

    whole = release(None)
    fewer = torch.zeros(N, dtype=torch.bool)
    fewer[[peer, 3]] = True
    found = [*variants(monkeypatch, peer, release), ("with fewer trainers", release(None, fewer)[peer])]
    for how, row in found:
        torch.testing.assert_close(row, whole[peer], rtol=1e-6, atol=1e-6, msg=f"peer {peer} {how}")
    assert not torch.allclose(release(None)[peer], after[peer])  # noise was added


@pytest.mark.parametrize("peer", [1, 4])
@pytest.mark.parametrize("mode", ["sampled", "empirical"])
def test_ewc_fisher_of_a_peer_is_its_own(monkeypatch, mode, peer):
    x, y, parts, model, params = world()
    key = 11

    def fisher(peers):
        peers = list(range(N)) if peers is None else peers
        data = rows_of(x, y, parts, peers)
        return fisher_diagonal(
            model, params[peers], data, torch.arange(len(peers)), samples=7, mode=mode, key=key
        )

    whole = fisher(None)
    for how, row in variants(monkeypatch, peer, fisher):
        torch.testing.assert_close(row, whole[peer], rtol=1e-5, atol=1e-7, msg=f"peer {peer} {how}")
    all_rows = rows_of(x, y, parts, list(range(N)))
    ids, uniforms = draw_fisher_samples(all_rows, torch.arange(N), 7, key)
    alone = draw_fisher_samples(rows_of(x, y, parts, [peer]), torch.tensor([0]), 7, key)
    assert torch.equal(alone[0][0], ids[peer]) and torch.equal(alone[1][0], uniforms[peer])


ATTACK_SPECS = [*ATTACKS.names(), "noisy(scale=0.5, graded=true)"]


@pytest.mark.parametrize("spec", ATTACK_SPECS)
def test_an_attacker_sends_alone_what_it_sends_among_attackers(spec):
    """Three rounds (the stale attack remembers), attackers 1, 3 and 4 of N; each alone, with its peer id."""
    _, y, parts, _, params = world()
    attack = ATTACKS.create(spec)
    attackers = torch.zeros(N, dtype=torch.bool)
    attackers[[1, 3, 4]] = True

    def sends(mask, peers, rows):
        adversary = Adversary(attack, mask, rows[mask].clone(), 9, peers)
        out = []
        for round_ in range(1, 4):
            trained = rows + round_  # what training gave this round
            out.append(adversary.send(trained.clone(), rows[mask], round_))
        return out

    whole = sends(attackers, None, params)
    for peer in (1, 4):
        alone = sends(torch.tensor([True]), torch.tensor([peer]), params[[peer]])
        for round_, (mine, theirs) in enumerate(zip(alone, whole, strict=True), 1):
            torch.testing.assert_close(mine[0], theirs[peer], rtol=0, atol=0, msg=f"{spec}, round {round_}")

    own = {p: torch.as_tensor(parts[p]) for p in (1, 3, 4)}
    together = Adversary(attack, attackers, params[attackers], 9).poison(
        y, torch.cat(list(own.values())), CLASSES
    )
    alone = Adversary(attack, torch.tensor([True]), params[[4]], 9, torch.tensor([4])).poison(
        y, own[4], CLASSES
    )
    assert torch.equal(alone[own[4]], together[own[4]])
