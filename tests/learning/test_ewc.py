"""EWC: the batched diagonal Fisher equals a per-sample autograd loop; the penalty gradient is right."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ppaia.learning import ewc
from ppaia.learning.ewc import draw_fisher_samples, ewc_gradient, fisher_diagonal, sampled_label
from ppaia.learning.layout import ParamLayout
from ppaia.learning.local import LocalData
from ppaia.learning.models import MODELS

INPUT, CLASSES = (2, 3), 4  # 2-D inputs: the model's Flatten must see a batch dimension


def build():
    return MODELS.create("mlp(hidden=[5])").build(INPUT, CLASSES)


def setup(sizes=(7, 0, 1, 12)):
    g = torch.Generator().manual_seed(0)
    n = sum(sizes)
    x, y = torch.randn(n, *INPUT, generator=g), torch.randint(0, CLASSES, (n,), generator=g)
    bounds = np.cumsum((0, *sizes))
    data = LocalData.from_parts(x, y, [np.arange(a, b) for a, b in itertools.pairwise(bounds)])
    model = build()
    params = torch.randn(len(sizes), ParamLayout.of(model).size, generator=g)
    return model, data, params


def reference_fisher(model, params, data, peers, samples, mode, seed):
    """Per peer, per sample: plain autograd on a module copy, with the same draws as the batched code."""
    ids, uniforms = draw_fisher_samples(data, peers, samples, seed)
    layout = ParamLayout.of(model)
    rows = []
    for row, peer in enumerate(peers.tolist()):
        total = torch.zeros(layout.size)
        if data.counts[peer] > 0:
            assert set(ids[row].tolist()) <= set(data.peer_samples(peer).tolist())
            module = layout.load(build(), params[peer])
            for k, i in enumerate(ids[row].tolist()):
                logits = module(data.x[i : i + 1])[0]
                label = sampled_label(logits, uniforms[row, k]) if mode == "sampled" else data.y[i]
                module.zero_grad()
                logits.log_softmax(-1)[label].backward()
                total += torch.cat([p.grad.reshape(-1) for p in module.parameters()]) ** 2
        rows.append(total / samples)
    return torch.stack(rows)


@pytest.mark.parametrize("mode", ["empirical", "sampled"])
def test_fisher_equals_a_per_sample_autograd_loop(mode):
    model, data, params = setup()
    peers = torch.tensor([3, 1, 0, 2])
    batched = fisher_diagonal(model, params, data, peers, samples=9, mode=mode, key=5)
    expected = reference_fisher(model, params, data, peers, 9, mode, seed=5)
    assert batched.shape == (4, ParamLayout.of(model).size)
    torch.testing.assert_close(batched, expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(batched[1], torch.zeros_like(batched[1]))  # peer 1 has no samples
    assert (batched[[0, 2, 3]].sum(1) > 0).all()


def test_sampled_fisher_approaches_the_exact_expected_fisher():
    model = MODELS.create("logistic").build((3,), 3)
    layout = ParamLayout.of(model)
    g = torch.Generator().manual_seed(1)
    data = LocalData.from_parts(torch.randn(1, 3, generator=g), torch.tensor([0]), [np.array([0])])
    params = torch.randn(1, layout.size, generator=g)
    module = layout.load(MODELS.create("logistic").build((3,), 3), params[0])
    log_probs = module(data.x)[0].log_softmax(-1)
    exact = torch.zeros(layout.size)  # sum over classes c of p(c|x) * (d log p(c|x) / d theta)^2
    for c in range(3):
        grads = torch.autograd.grad(log_probs[c], list(module.parameters()), retain_graph=True)
        exact += log_probs[c].exp().detach() * torch.cat([gr.reshape(-1) for gr in grads]) ** 2
    estimate = fisher_diagonal(model, params, data, torch.tensor([0]), samples=20_000, mode="sampled", key=1)[
        0
    ]
    assert (estimate >= 0).all()
    torch.testing.assert_close(estimate, exact, rtol=0.03, atol=1e-5)
    empirical = fisher_diagonal(model, params, data, torch.tensor([0]), samples=1, mode="empirical", key=2)
    assert not torch.allclose(empirical[0], exact, rtol=0.03, atol=1e-5)  # the test can tell them apart


def test_chunking_gives_the_same_fisher(monkeypatch):
    model, data, params = setup()
    peers = torch.arange(4)

    def run():
        return fisher_diagonal(model, params, data, peers, samples=10, mode="sampled", key=2)

    whole = run()
    per_sample = ParamLayout.of(model).size + ewc.activation_size(model, INPUT)
    for budget in (3 * per_sample, 25 * per_sample, 1):  # sample chunks of 3; 2 peers x 10; 1 x 1
        monkeypatch.setattr(ewc, "ELEMENT_BUDGET", budget)
        torch.testing.assert_close(run(), whole, rtol=1e-5, atol=1e-7)


def test_peers_without_samples_get_zero_fisher():
    model, data, params = setup()
    out = fisher_diagonal(model, params, data, torch.tensor([1]), samples=5, mode="empirical", key=0)
    assert torch.equal(out, torch.zeros(1, params.shape[1]))
    empty = LocalData.from_parts(data.x[:0], data.y[:0], [np.array([], dtype=np.int64)] * 2)
    out = fisher_diagonal(model, params[:2], empty, torch.arange(2), samples=5, mode="sampled", key=0)
    assert torch.equal(out, torch.zeros(2, params.shape[1]))


def test_fisher_is_determined_by_the_key_and_accepts_a_mask():
    model, data, params = setup()
    ids = torch.tensor([0, 2, 3])

    def run(seed, peers=ids):
        return fisher_diagonal(
            model,
            params,
            data,
            peers,
            samples=6,
            mode="sampled",
            key=seed,
        )

    assert torch.equal(run(4), run(4))
    assert not torch.equal(run(4), run(5))
    assert torch.equal(run(4, torch.tensor([True, False, True, True])), run(4))


def test_sampled_labels_follow_the_model_distribution():
    logits = torch.tensor([0.0, 1.0, -1.0, 2.0])
    labels = sampled_label(logits.expand(50_000, 4), torch.rand(50_000, generator=torch.Generator()))
    frequencies = torch.bincount(labels, minlength=4).float() / 50_000
    torch.testing.assert_close(frequencies, logits.softmax(-1), atol=0.01, rtol=0)


def test_bad_arguments_are_refused():
    model, data, params = setup()
    with pytest.raises(ValueError, match="mode"):
        fisher_diagonal(model, params, data, torch.arange(4), samples=2, mode="true", key=0)
    with pytest.raises(ValueError, match="samples"):
        fisher_diagonal(model, params, data, torch.arange(4), samples=0, mode="sampled", key=0)


def test_ewc_gradient_is_the_gradient_of_the_penalty():
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(3, 8, generator=g, requires_grad=True)
    fisher, anchor = torch.rand(3, 8, generator=g), torch.randn(3, 8, generator=g)
    penalty = 0.7 / 2 * (fisher * (theta - anchor) ** 2).sum()
    (expected,) = torch.autograd.grad(penalty, theta)
    torch.testing.assert_close(ewc_gradient(theta.detach(), fisher, anchor, 0.7), expected)
    assert F.mse_loss(ewc_gradient(anchor, fisher, anchor, 5.0), torch.zeros(3, 8)) == 0
