"""Dropout in the batched engine, and the models it cannot batch.

A model with torch.nn's dropout layers trains from the CLI; its masks are keyed per peer, so a peer
computed alone, among other peers or by the per-peer reference executor gets the batch's numbers for its
row, with and without DP-SGD; a seed gives the same masks and another seed others; and a model the
engine cannot batch (randomness outside those layers, Python reading tensor values, dynamic shapes,
side effects, buffers) is refused at set-up with exit code 2 and one line naming it.
"""

import itertools
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import ppaia
from ppaia.cli.main import app
from ppaia.experiment import Setup
from ppaia.learning import OPTIMIZERS, BatchedTrainer, LocalData, ParamLayout, local
from ppaia.learning.dropout import DropoutKey, KeyedDropout, dropout_keys, keyed_dropout
from ppaia.learning.local import PrivateSteps
from ppaia.simulation import ReferenceSimulation, Simulation

# the user's file: written to a folder of its own for the CLI, run here as well
MODELS_PY = textwrap.dedent(
    """
    import math

    from torch import nn


    def make_dropout(input_shape, n_classes):
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), 32),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(32, 32),
            nn.SELU(),
            nn.AlphaDropout(0.2),
            nn.Linear(32, n_classes),
        )


    def make_cnn(input_shape, n_classes):
        channels, height, width = input_shape
        return nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1),
            nn.ReLU(),
            nn.Dropout2d(0.2),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(8 * (height // 2) * (width // 2), n_classes),
        )
    """
)
USER_MODELS: dict = {}
exec(MODELS_PY, USER_MODELS)  # the factories of the user's file, run here too

# ---------------------------------------------------------------- the CLI, as the user ran it


def cli_folder(tmp_path):
    (tmp_path / "mymodels.py").write_text(MODELS_PY)
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


@pytest.mark.slow
@pytest.mark.parametrize("factory", ["make_dropout", "make_cnn"])
def test_a_model_with_dropout_trains_from_the_cli(tmp_path, factory):
    env = cli_folder(tmp_path)
    command = [sys.executable, "-m", "ppaia.cli.main", "run", "--set", f"model=mymodels:{factory}"]
    command += ["--set", "peers=4", "--set", "rounds=3", "--set", "partition=iid", "--out", "run"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["acc_mean"] > 0.3  # ten classes: chance is 0.1


# --------------------------------------------------------------- the layer


def test_keyed_dropout_drops_and_scales_in_training_and_is_the_identity_otherwise():
    source = DropoutKey()
    layer = KeyedDropout(0.5, source)
    x = torch.ones(4, 25_000)
    assert torch.equal(layer(x), x)  # no key: evaluation
    with source(torch.tensor(12345)):
        out = layer(x)
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - 0.5) < 0.01  # 100,000 draws: σ ≈ 0.0016
    assert torch.equal(out[out != 0], torch.full_like(out[out != 0], 2.0))
    with source(torch.tensor(12345)):
        assert torch.equal(layer(x), out)  # the key decides
    with source(torch.tensor(54321)):
        assert not torch.equal(layer(x), out)
    with source(torch.tensor(12345)):
        first, second = layer(x), layer(x)
    assert torch.equal(first, out) and not torch.equal(second, out)  # each call of a pass its own mask
    for p, expected in ((0.0, x), (1.0, torch.zeros_like(x))):
        with source(torch.tensor(1)):
            assert torch.equal(KeyedDropout(p, source)(x), expected)


def test_channel_and_alpha_dropout_follow_torch():
    source = DropoutKey()
    x = torch.randn(64, 16, 5, 5, generator=torch.Generator().manual_seed(0))
    with source(torch.tensor(7)):
        out = KeyedDropout(0.5, source, channels=True)(x)
    zeroed = (out == 0).flatten(2).all(2)  # whole channels zeroed, the rest scaled by 2
    assert 0.4 < zeroed.float().mean() < 0.6
    torch.testing.assert_close(out[~zeroed], 2 * x[~zeroed])
    p, alpha = 0.2, 1.7580993408473766
    a = 1 / math.sqrt((alpha**2 * p + 1) * (1 - p))
    normal = torch.randn(200_000, generator=torch.Generator().manual_seed(1))
    with source(torch.tensor(8)):
        out = KeyedDropout(p, source, alpha=True)(normal)
    kept = torch.isclose(out, a * normal + alpha * a * p, atol=1e-6)
    assert torch.allclose(out[~kept], torch.tensor(-alpha * a + alpha * a * p))  # torch's dropped value
    assert abs((~kept).float().mean() - p) < 0.01
    reference = nn.AlphaDropout(p)(normal)  # keeps zero mean and unit variance, as torch's does
    assert abs(out.mean() - reference.mean()) < 0.01 and abs(out.std() - reference.std()) < 0.01


def test_swapping_keeps_the_layout_and_the_users_model():
    model = USER_MODELS["make_cnn"]((1, 8, 8), 10)
    shared = nn.Dropout(0.4)
    model.append(shared)
    model.append(nn.Sequential(shared))  # one layer at two places stays one layer
    layout = ParamLayout.of(model)
    data = LocalData.from_parts(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), [np.arange(2)])
    trainer = BatchedTrainer(
        model, data, batch_size=2, epochs=1, optimizer=OPTIMIZERS.create("sgd"), lr=0.1, seed=0
    )
    assert ParamLayout.of(trainer.model) == layout
    assert isinstance(model[-2], nn.Dropout) and model.training  # the user's model is left as it was
    keyed = [m for m in trainer.model.modules() if isinstance(m, KeyedDropout)]
    assert len(keyed) == 3 and trainer.model[-2] is trainer.model[-1][0]
    assert keyed_dropout(USER_MODELS["make_cnn"]((1, 8, 8), 10)[:2]) is None  # no dropout: no key


# ------------------------------------------------------ a peer's masks are its own

COUNTS = (5, 17, 1, 9, 30, 12)  # unequal: the widest peer sets the batch's width (padding)
N, CLASSES, SHAPE = len(COUNTS), 3, (1, 4, 4)
TRAINING = ["sgd", "dp_sgd_poisson", "dp_sgd_shuffle"]


def world(factory):
    g = torch.Generator().manual_seed(0)
    n = sum(COUNTS)
    x, y = torch.randn(n, *SHAPE, generator=g), torch.randint(0, CLASSES, (n,), generator=g)
    parts = [np.arange(a, b) for a, b in itertools.pairwise(np.cumsum((0, *COUNTS)))]
    model = USER_MODELS[factory](SHAPE, CLASSES)
    params = torch.randn(N, ParamLayout.of(model).size, generator=g) * 0.5
    return x, y, parts, model, params


def train(case, model, x, y, parts, params, peers, *, seed=3, clip=0.5, noise=1.0):
    data = LocalData.from_parts(x, y, [parts[p] for p in peers], torch.tensor(peers))
    trainer = BatchedTrainer(
        model,
        data,
        batch_size=4,
        epochs=2,
        optimizer=OPTIMIZERS.create("sgd(momentum=0.5)"),
        lr=0.1,
        seed=seed,
    )
    private = None
    if case != "sgd":
        private = PrivateSteps(clip, torch.full((len(peers),), noise), case.removeprefix("dp_sgd_"), seed=7)
    return trainer.train(params[peers].clone(), 2, private=private)


@pytest.mark.parametrize("case", TRAINING)
@pytest.mark.parametrize("factory", ["make_dropout", "make_cnn"])
def test_a_peer_draws_its_own_masks_alone_or_batched(monkeypatch, factory, case):
    x, y, parts, model, params = world(factory)
    everyone = list(range(N))
    whole = train(case, model, x, y, parts, params, everyone)
    plain = nn.Sequential(
        *[m for m in model if not isinstance(m, nn.Dropout | nn.AlphaDropout | nn.Dropout2d)]
    )
    assert not torch.allclose(train(case, plain, x, y, parts, params, everyone), whole)  # dropout acted
    found = {
        "peer 1 alone": (1, train(case, model, x, y, parts, params, [1])[0]),
        "peer 4 alone": (4, train(case, model, x, y, parts, params, [4])[0]),
        "peer 4 among [5, 4, 0]": (4, train(case, model, x, y, parts, params, [5, 4, 0])[1]),
    }
    with monkeypatch.context() as patch:
        patch.setattr(local, "ELEMENT_BUDGET", 1)  # chunks of one row
        chunked = train(case, model, x, y, parts, params, everyone)
    found |= {f"peer {peer} in chunks of one row": (peer, chunked[peer]) for peer in everyone}
    for how, (peer, row) in found.items():
        torch.testing.assert_close(row, whole[peer], rtol=1e-5, atol=1e-6, msg=f"{case}: {how}")


@pytest.mark.parametrize("factory", ["make_dropout", "make_cnn"])
def test_dp_sgds_per_sample_passes_draw_the_batch_passes_masks(factory):
    """Noise 0 and a clip no gradient reaches: DP-SGD with shuffled batches is plain SGD, masks included."""
    x, y, parts, model, params = world(factory)
    everyone = list(range(N))
    plain = train("sgd", model, x, y, parts, params, everyone)
    private = train("dp_sgd_shuffle", model, x, y, parts, params, everyone, clip=1e9, noise=0.0)
    torch.testing.assert_close(private, plain, rtol=1e-4, atol=1e-5)


def test_the_same_seed_draws_the_same_masks_and_another_seed_others():
    x, y, parts, model, params = world("make_dropout")
    first, again = (train("sgd", model, x, y, parts, params, [1, 4]) for _ in range(2))
    assert torch.equal(first, again)
    assert torch.equal(train("sgd", model.eval(), x, y, parts, params, [1, 4]), first)  # trains in train mode
    assert not torch.allclose(train("sgd", model, x, y, parts, params, [1, 4], seed=4), first)
    ids = torch.arange(N)
    keys = dropout_keys(3, 2, 0, 0, ids)
    assert keys.unique().numel() == N  # a key per peer...
    for other in ((4, 2, 0, 0), (3, 3, 0, 0), (3, 2, 1, 0), (3, 2, 0, 1)):  # ...per seed, round, epoch, step
        assert not (dropout_keys(*other, ids) == keys).any()
    assert torch.equal(dropout_keys(3, 2, 0, 0, ids[[4, 1]]), keys[[4, 1]])


# ------------------------------------------- the simulator, its peers and the reference


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "dropout_models.py").write_text(MODELS_PY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "dropout_models", raising=False)


@pytest.mark.usefixtures("user_models")
@pytest.mark.parametrize("factory", ["make_dropout", "make_cnn"])
def test_the_engine_matches_the_reference_and_each_peers_slice(factory):
    config = ppaia.ExperimentConfig(
        peers=4,
        rounds=2,
        dataset="digits(test_fraction=0.75)",
        model=f"dropout_models:{factory}",
        partition="dirichlet(0.5)",
        batch_size=16,
    )
    engine, reference = Simulation(config).run(), ReferenceSimulation(config).run()
    torch.testing.assert_close(engine.params, reference.params, rtol=1e-4, atol=1e-5)
    assert engine.final["acc_mean"] == pytest.approx(reference.final["acc_mean"], abs=1e-3)
    batch = Setup.batch(config)
    whole = batch.trainer.train(batch.params.clone(), 1)
    for peer in (0, 3):  # a networked peer trains its row alone
        part = Setup.peer(config, peer)
        torch.testing.assert_close(part.trainer.train(part.params.clone(), 1)[0], whole[peer])


# ------------------------------------------------------------------------------ refusals

REFUSED_PY = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Net(nn.Module):
        def __init__(self, forward):
            super().__init__()
            self.linear, self.body = nn.Linear(64, 10), forward

        def forward(self, x):
            return self.linear(self.body(self, x.flatten(1)))


    functional_dropout = lambda: Net(lambda self, x: F.dropout(x, 0.5, training=self.training))
    noise = lambda: Net(lambda self, x: x + 0.1 * torch.randn_like(x))
    bernoulli = lambda: Net(lambda self, x: x * torch.bernoulli(torch.full_like(x, 0.5)))
    branch = lambda: Net(lambda self, x: x if x.sum() > 0 else -x)
    item = lambda: Net(lambda self, x: x * x.abs().max().item())
    mask_index = lambda: Net(lambda self, x: x - x[x > 0].sum())
    captured = lambda: (lambda total: Net(lambda self, x: x + total.add_(x.mean(0))))(torch.zeros(64))
    numpy = lambda: Net(lambda self, x: torch.as_tensor(x.detach().numpy()))
    in_place_input = lambda: Net(lambda self, x: x.mul_(2))
    batch_norm = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.BatchNorm1d(10))
    """
)
REFUSED = {
    "functional_dropout": "draws random numbers in forward()",
    "noise": "draws random numbers in forward()",
    "bernoulli": "draws random numbers in forward()",
    "branch": "reads tensor values in Python",
    "item": "reads tensor values in Python",
    "mask_index": "output shape depends on the values",
    "captured": "updates in place a tensor from outside forward()",
    "numpy": "leaves torch",
    "in_place_input": "changes its input in place",
    "batch_norm": "has buffers",
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_model_the_engine_cannot_batch_is_refused_naming_it(tmp_path, monkeypatch, case):
    (tmp_path / "refused.py").write_text(REFUSED_PY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "refused", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["run", "--set", f"model=refused:{case}", "--set", "peers=2", "--out", "o"]
    )
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"model import(target=refused:{case})" in message and REFUSED[case] in message
    if case not in ("batch_norm", "in_place_input"):  # refused on what torch raised: where it did
        assert f"{tmp_path / 'refused.py'}:" in message
    assert not (tmp_path / "o").exists()


@pytest.mark.usefixtures("user_models")
def test_dp_sgd_runs_a_model_with_dropout():
    """Set-up probes DP-SGD's per-sample passes too (a vmap in a vmap): keyed dropout passes."""
    config = ppaia.ExperimentConfig(
        peers=2,
        rounds=1,
        dataset="digits(test_fraction=0.8)",
        model="dropout_models:make_cnn",
        privacy="dp_sgd(noise_multiplier=1.0)",
    )
    result = ppaia.run(config)
    assert torch.isfinite(result.params).all() and result.final["round"] == 1


@pytest.mark.slow
def test_the_cli_refuses_in_one_line_with_exit_code_2(tmp_path):
    (tmp_path / "refused.py").write_text(REFUSED_PY)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    command = [
        sys.executable,
        "-m",
        "ppaia.cli.main",
        "run",
        "--set",
        "model=refused:noise",
        "--set",
        "peers=2",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "refused:noise" in done.stderr, done.stderr
