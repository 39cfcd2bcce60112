"""Batched local training and evaluation equal per-peer training and evaluation."""

import numpy as np
import torch
import torch.nn.functional as F

from ppaia.learning import OPTIMIZERS, BatchedEvaluator, BatchedTrainer, LocalData, ParamLayout, epoch_order
from ppaia.learning.init import INIT_POLICIES
from ppaia.learning.models import MODELS


def test_epoch_order_puts_each_peers_own_positions_first():
    counts = torch.tensor([3, 7, 1, 5])
    ids = torch.arange(4)
    order = epoch_order(counts, ids, seed=1, round_=2, epoch=0)
    assert order.shape == (4, 7)
    for peer, count in enumerate(counts.tolist()):
        assert sorted(order[peer, :count].tolist()) == list(range(count))
    assert torch.equal(order, epoch_order(counts, ids, seed=1, round_=2, epoch=0))
    assert not torch.equal(order, epoch_order(counts, ids, seed=1, round_=2, epoch=1))


def test_unequal_peers_each_do_their_own_epochs_like_a_per_peer_loop():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(120, 6, generator=g), torch.randint(0, 3, (120,), generator=g)
    parts = [np.arange(0, 3), np.arange(3, 60), np.arange(60, 61), np.arange(61, 120)]
    data = LocalData.from_parts(x, y, parts)
    model = MODELS.create("mlp(hidden=[8])").build((6,), 3)
    layout = ParamLayout.of(model)
    optimizer = OPTIMIZERS.create("sgd(momentum=0.5)")
    start = (
        INIT_POLICIES.create("independent")
        .initial_params(lambda: MODELS.create("mlp(hidden=[8])").build((6,), 3), 4, 0, None)
        .params
    )
    trainer = BatchedTrainer(model, data, batch_size=8, epochs=2, optimizer=optimizer, lr=0.1, seed=3)
    batched = trainer.train(start.clone(), round_=1)

    for peer in range(4):
        module = layout.load(MODELS.create("mlp(hidden=[8])").build((6,), 3), start[peer])
        reference = optimizer.torch_optimizer(module.parameters(), 0.1)
        for epoch in range(2):
            order = epoch_order(data.counts, data.ids, 3, 1, epoch)[peer, : data.counts[peer]]
            for batch in data.peer_samples(peer)[order].split(8):
                reference.zero_grad()
                F.cross_entropy(module(x[batch]), y[batch]).backward()
                reference.step()
        torch.testing.assert_close(batched[peer], layout.flatten(module), rtol=1e-5, atol=1e-6)


def test_training_only_the_chosen_peers():
    x, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    data = LocalData.from_parts(x, y, [np.arange(i * 10, (i + 1) * 10) for i in range(4)])
    model = MODELS.create("logistic").build((4,), 2)
    trainer = BatchedTrainer(
        model, data, batch_size=5, epochs=1, optimizer=OPTIMIZERS.create("sgd"), lr=0.1, seed=0
    )
    start = torch.randn(4, ParamLayout.of(model).size)
    out = trainer.train(start.clone(), 1, torch.tensor([True, False, True, False]))
    assert torch.equal(out[1], start[1]) and torch.equal(out[3], start[3])
    assert not torch.equal(out[0], start[0]) and not torch.equal(out[2], start[2])


def test_batched_evaluation_matches_each_model():
    x, y = torch.randn(50, 1, 8, 8), torch.randint(0, 10, (50,))
    model = MODELS.create("cnn(channels=[4])").build((1, 8, 8), 10)
    layout = ParamLayout.of(model)
    params = torch.randn(3, layout.size) * 0.3
    accuracy, loss = BatchedEvaluator(model, x, y)(params)
    for peer in range(3):
        logits = layout.load(model, params[peer])(x)
        assert accuracy[peer].item() == (logits.argmax(1) == y).float().mean().item()
        torch.testing.assert_close(loss[peer], F.cross_entropy(logits, y), rtol=1e-5, atol=1e-6)


def test_init_policies():
    def build():
        return MODELS.create("logistic").build((4,), 2)

    common = INIT_POLICIES.create("common").initial_params(build, 5, seed=1, graph=None).params
    assert torch.equal(common, common[:1].expand(5, -1))
    independent = INIT_POLICIES.create("independent").initial_params(build, 5, seed=1, graph=None).params
    assert all(not torch.equal(independent[0], independent[i]) for i in range(1, 5))
    again = INIT_POLICIES.create("independent").initial_params(build, 5, 1, None).params
    assert torch.equal(independent, again)
    state = torch.get_rng_state()
    INIT_POLICIES.create("common").initial_params(build, 2, seed=9, graph=None)
    assert torch.equal(state, torch.get_rng_state()), "init must not disturb the global RNG"
