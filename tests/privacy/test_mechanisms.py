"""DP mechanisms: clipping, the update-level Gaussian mechanism, DP-SGD's per-sample clipping and noise."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from ppaia import ExperimentConfig
from ppaia.learning import OPTIMIZERS, BatchedTrainer, LocalData, ParamLayout, epoch_order
from ppaia.learning.dropout import dropout_keys
from ppaia.learning.local import PrivateSteps, clip_rows
from ppaia.learning.models import MODELS
from ppaia.privacy import PRIVACY, UpdateDP


def make_trainer(counts, features=6, classes=3, hidden=(8,), batch_size=32, seed=0, x=None, y=None):
    """Random data split into consecutive blocks of `counts` samples, and a trainer over them (SGD, lr 1)."""
    g = torch.Generator().manual_seed(seed)
    n = sum(counts)
    x = torch.randn(n, features, generator=g) if x is None else x
    y = torch.randint(0, classes, (n,), generator=g) if y is None else y
    bounds = np.cumsum((0, *counts))
    data = LocalData.from_parts(x, y, [np.arange(a, b) for a, b in itertools.pairwise(bounds)])
    spec = MODELS.create(f"mlp(hidden={list(hidden)})" if hidden else "logistic")
    model = spec.build((features,), classes)
    trainer = BatchedTrainer(
        model, data, batch_size=batch_size, epochs=1, optimizer=OPTIMIZERS.create("sgd"), lr=1.0, seed=seed
    )
    params = torch.randn(len(counts), ParamLayout.of(model).size, generator=g) * 0.5
    return trainer, params


def one_private_gradient(trainer, params, private):
    """The gradient DP-SGD uses for every peer's first step of round 1."""
    data = trainer.data
    order = epoch_order(data.counts, data.ids, trainer.seed, 1, 0)
    rows = torch.arange(params.shape[0])
    masks = dropout_keys(trainer.seed, 1, 0, 0, data.ids[rows])  # (no dropout here: the keys go unused)
    return trainer._private_gradients(params, rows, data.counts, data.table, order, (1, 0, 0), masks, private)


# --- clipping ------------------------------------------------------------------------------------------


def test_clip_rows_bounds_every_norm_and_leaves_short_rows_unchanged():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(4, 50, 20, generator=g) * torch.rand(4, 50, 1, generator=g) * 3
    clip = 2.0
    norms = values.norm(dim=-1)
    assert (norms > clip).any() and (norms < clip).any()
    clipped = clip_rows(values, clip)
    assert (clipped.norm(dim=-1) <= clip * (1 + 1e-6)).all()
    short = norms <= clip
    assert torch.equal(clipped[short], values[short])
    long = ~short
    torch.testing.assert_close(clipped[long].norm(dim=-1), torch.full((int(long.sum()),), clip))
    # long rows keep their direction
    cosine = F.cosine_similarity(clipped[long], values[long], dim=-1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))
    assert torch.equal(clip_rows(torch.zeros(3, 5), 1.0), torch.zeros(3, 5))


# --- update-level DP ------------------------------------------------------------------------------------


def test_update_dp_sigma_is_the_classical_gaussian_mechanism():
    mechanism = UpdateDP(epsilon=8, delta=1e-5, clip=2)
    assert mechanism.sigma == pytest.approx(2 * math.sqrt(2 * math.log(1.25 / 1e-5)) / 8)
    assert mechanism.sigma == pytest.approx(1.2112, abs=1e-4)
    assert mechanism.noise_multiplier == pytest.approx(mechanism.sigma / 2)
    halved = UpdateDP(epsilon=4, delta=1e-5, clip=2)
    assert halved.sigma == pytest.approx(2 * mechanism.sigma)  # σ ∝ 1/ε
    assert UpdateDP(epsilon=float("inf"), clip=2).sigma == 0.0
    assert PRIVACY.create("update_dp(epsilon=8, clip=2)").sigma == pytest.approx(mechanism.sigma)


def test_update_dp_release_without_noise_clips_each_update_to_c():
    mechanism = UpdateDP(epsilon=float("inf"), clip=2.0)
    g = torch.Generator().manual_seed(1)
    before = torch.randn(6, 30, generator=g)
    update = torch.randn(6, 30, generator=g) * torch.tensor([0.01, 0.1, 0.3, 1.0, 3.0, 10.0]).unsqueeze(1)
    after = before + update
    released = mechanism.release(before, after, 2, torch.arange(6))
    sent = released - before
    assert (sent.norm(dim=1) <= 2.0 * (1 + 1e-5)).all()
    short = update.norm(dim=1) <= 2.0
    assert short.any() and (~short).any()
    torch.testing.assert_close(released[short], after[short])
    torch.testing.assert_close(sent[~short].norm(dim=1), torch.full((int((~short).sum()),), 2.0))


def test_update_dp_release_adds_gaussian_noise_of_std_sigma():
    mechanism = UpdateDP(epsilon=8, delta=1e-5, clip=2.0)
    g = torch.Generator().manual_seed(3)
    before = torch.randn(4, 50_000, generator=g)
    after = before + torch.randn(4, 50_000, generator=g) * 0.05  # norm ≈ 11 > C: clipped
    released = mechanism.release(before, after, 4, torch.arange(4))
    noise = released - before - clip_rows(after - before, 2.0)
    assert noise.std().item() == pytest.approx(mechanism.sigma, rel=0.02)
    assert abs(noise.mean().item()) < 0.02
    for row in noise:  # every peer gets its own noise of the same scale
        assert row.std().item() == pytest.approx(mechanism.sigma, rel=0.03)
    assert not torch.equal(noise[0], noise[1])


# --- DP-SGD ----------------------------------------------------------------------------------------------


def per_sample_gradients(trainer, params, peer):
    """Plain autograd, one sample at a time, on a module holding the peer's parameters."""
    layout = ParamLayout.of(trainer.model)
    module = layout.load(MODELS.create("mlp(hidden=[8])").build((6,), 3), params[peer])
    grads = []
    for i in trainer.data.peer_samples(peer).tolist():
        module.zero_grad()
        F.cross_entropy(module(trainer.data.x[i : i + 1]), trainer.data.y[i : i + 1]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in module.parameters()]))
    return torch.stack(grads)


def test_dp_sgd_gradient_is_the_mean_of_per_sample_gradients_each_clipped_to_c():
    counts = (5, 9, 12)
    trainer, start = make_trainer(counts, batch_size=12)  # one batch of all its samples per peer
    reference = [per_sample_gradients(trainer, start, peer) for peer in range(3)]
    norms = torch.cat([r.norm(dim=1) for r in reference])
    clip = norms.median().item()  # half the samples are clipped, half are not
    assert (norms > clip * 1.01).sum() >= 5 and (norms < clip * 0.99).sum() >= 5

    private = PrivateSteps(clip, torch.zeros(3), "shuffle", seed=0)
    trained = trainer.train(start.clone(), 1, private=private)
    used = start - trained  # SGD with lr 1, one step: the gradient itself
    for peer, count in enumerate(counts):
        expected = clip_rows(reference[peer], clip).sum(0) / count
        torch.testing.assert_close(used[peer], expected, rtol=1e-4, atol=1e-6)

    # the trainer's own (vmapped) per-sample gradients are autograd's, and clipped they are all within C
    samples = trainer.data.table[:, :12].clamp(max=trainer.data.x.shape[0] - 1)
    keys, places = dropout_keys(trainer.seed, 1, 0, 0, trainer.data.ids), torch.arange(samples.shape[1])
    batched = trainer._sample_grads(start, trainer.data.x[samples], trainer.data.y[samples], keys, places)
    for peer, count in enumerate(counts):
        torch.testing.assert_close(batched[peer, :count], reference[peer], rtol=1e-4, atol=1e-6)
    assert (clip_rows(batched, clip).norm(dim=-1) <= clip * (1 + 1e-5)).all()


def test_dp_sgd_without_clipping_or_noise_is_plain_training():
    trainer, start = make_trainer((7, 20, 13), batch_size=4)
    trainer.epochs = 2
    plain = trainer.train(start.clone(), 3)
    private = trainer.train(start.clone(), 3, private=PrivateSteps(1e9, torch.zeros(3), "shuffle", seed=0))
    torch.testing.assert_close(private, plain, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sampling", ["shuffle", "poisson"])
def test_dp_sgd_noise_has_std_z_times_c_over_the_batch_size(sampling):
    counts, batch_size, clip = (40, 80, 40, 20), 20, 0.5
    trainer, params = make_trainer(counts, features=32, classes=10, hidden=(128,), batch_size=batch_size)
    noise = torch.tensor([0.5, 1.0, 2.0, 0.0])
    clean = one_private_gradient(trainer, params, PrivateSteps(clip, torch.zeros(4), sampling, 0))
    noisy = one_private_gradient(trainer, params, PrivateSteps(clip, noise, sampling, 0))
    added = noisy - clean  # same randomness: same batches, same standard normals
    for peer in range(4):
        expected = noise[peer].item() * clip / batch_size  # each peer has at least B samples
        if expected == 0:
            assert torch.equal(added[peer], torch.zeros_like(added[peer]))
            continue
        assert added[peer].std().item() == pytest.approx(expected, rel=0.05)
        assert abs(added[peer].mean().item()) < 5 * expected / math.sqrt(added.shape[1])


def test_poisson_batches_have_size_b_on_average_and_vary():
    """With x = 0, θ = 0 and every label 0, each per-sample gradient is the same vector (norm ≈ 0.95 < C),
    so the batch size can be read off the gradient of the first bias."""
    counts, batch_size, steps = (100, 100, 60, 5), 20, 300
    n = sum(counts)
    trainer, params = make_trainer(
        counts,
        features=4,
        classes=10,
        hidden=(),
        batch_size=batch_size,
        x=torch.zeros(n, 4),
        y=torch.zeros(n, dtype=torch.long),
    )
    params = torch.zeros_like(params)
    bias = ParamLayout.of(trainer.model).size - 10  # the logistic model's flat layout: weight, then bias
    private = PrivateSteps(1.0, torch.zeros(4), "poisson", seed=0)
    data = trainer.data
    sizes = []
    for step in range(steps):
        keys = (1, 0, step)  # round, epoch, step: a fresh Poisson batch each
        masks = dropout_keys(trainer.seed, *keys, data.ids)
        grads = trainer._private_gradients(
            params, torch.arange(4), data.counts, data.table, None, keys, masks, private
        )
        expected = torch.tensor([batch_size, batch_size, batch_size, 5.0])  # the denominator: rate · n
        sizes.append(-grads[:, bias] * expected / 0.9)
    sizes = torch.stack(sizes)
    assert torch.allclose(sizes, sizes.round(), atol=1e-3)
    big = sizes[:, :3]
    assert big.mean().item() == pytest.approx(batch_size, abs=0.6)
    for peer in range(3):
        assert big[:, peer].mean().item() == pytest.approx(batch_size, abs=1.2)
        assert big[:, peer].std().item() > 2.5  # Binomial(n, B/n): std 4 and 3.7
        assert big[:, peer].min() >= 0 and big[:, peer].max() <= counts[peer]
    assert len(set(big[:, 0].round().tolist())) > 8
    assert torch.equal(sizes[:, 3].round(), torch.full((steps,), 5.0))  # n < B: every sample, every step


def test_dp_sgd_needs_exactly_one_way_to_set_its_noise():
    for spec in ("dp_sgd", "dp_sgd(noise_multiplier=1.0, target_epsilon=2.0)"):
        with pytest.raises(ValidationError, match="exactly one of noise_multiplier and target_epsilon"):
            PRIVACY.create(spec)
    assert PRIVACY.create("dp_sgd(noise_multiplier=1.0)").sampling == "poisson"
    assert PRIVACY.create("dp_sgd(target_epsilon=3)").noise_multiplier is None


def test_one_record_moves_a_dp_sgd_step_by_at_most_2c_over_b():
    """DP-SGD's sensitivity: replacing one record changes one clipped term of the sum, so a noiseless step
    (SGD, lr 1, same batch) moves by at most 2C/B."""
    counts, clip = (20,), 1.0
    trainer, theta = make_trainer(counts, hidden=(), batch_size=20)
    private = PrivateSteps(clip, torch.zeros(1), "shuffle", seed=0)

    def step(x, y):
        data = LocalData(x, y, trainer.data.table, trainer.data.counts, trainer.data.ids)
        trainer.data = data
        return theta - trainer.train(theta.clone(), 1, private=private)

    x, y = trainer.data.x, trainer.data.y
    x_other, y_other = x.clone(), y.clone()
    x_other[0], y_other[0] = 100 * x[0], (y[0] + 1) % 3  # one record replaced by a very different one
    change = (step(x, y) - step(x_other, y_other)).norm().item()
    assert 0 < change <= 2 * clip / 20 * (1 + 1e-5)


def test_dp_sgd_refuses_ewc_whose_fisher_would_leak_raw_records():
    """EWC's Fisher is computed on raw records outside DP-SGD's clipping and noise: one record could move
    a step without bound, so the ε the accountant reports would not hold."""
    with pytest.raises(ValidationError, match="ewc"):
        ExperimentConfig(privacy="dp_sgd(noise_multiplier=1.0)", ewc={"strength": 25})
    assert ExperimentConfig(privacy="update_dp(epsilon=8)", ewc={"strength": 25}).ewc is not None


def test_privacy_refuses_rules_fitted_on_raw_held_out_records():
    with pytest.raises(ValidationError, match="privacy"):
        ExperimentConfig(rule="learned_trust", holdout=0.2, privacy="dp_sgd(noise_multiplier=1.0)")
