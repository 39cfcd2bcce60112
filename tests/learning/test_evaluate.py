"""The batched evaluator gives what a per-peer loop of argmax and F.cross_entropy gives, on either path
(plain MLPs as batched GEMMs, any other model under vmap), whatever the chunking and the batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ppaia.learning import BatchedEvaluator, ParamLayout
from ppaia.learning import evaluate as evaluate_module
from ppaia.learning.evaluate import dense_layers
from ppaia.learning.models import MODELS


class Wrapped(nn.Sequential):
    """A Sequential subclass: the same layers, not taken for a plain MLP (its forward could differ)."""


def per_peer(model: nn.Module, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """The truth: each peer's model loaded into an nn.Module, argmax and F.cross_entropy."""
    layout, accuracy, loss = ParamLayout.of(model), [], []
    with torch.no_grad():
        for row in params:
            logits = layout.load(model, row)(x)
            accuracy.append((logits.argmax(1) == y).float().mean())
            loss.append(F.cross_entropy(logits, y))
    return torch.stack(accuracy), torch.stack(loss)


def random_mlp(g: torch.Generator) -> tuple[list[nn.Module], tuple[int, ...], int]:
    """Layers of a plain MLP of random depth and widths (0–3 hidden layers, biases or not, perhaps a
    final ReLU), the input shape (a vector, or an image behind a Flatten) and the number of classes."""
    shape = [(6,), (1, 4, 4), (3, 2)][int(torch.randint(3, (1,), generator=g))]
    classes = int(torch.randint(2, 8, (1,), generator=g))
    widths = [
        math.prod(shape),
        *torch.randint(1, 13, (int(torch.randint(4, (1,), generator=g)),), generator=g).tolist(),
    ]
    widths.append(classes)
    layers: list[nn.Module] = [nn.Flatten()] if len(shape) > 1 or torch.rand(1, generator=g) < 0.5 else []
    for index in range(len(widths) - 1):
        layers.append(
            nn.Linear(widths[index], widths[index + 1], bias=bool(torch.rand(1, generator=g) < 0.8))
        )
        if index < len(widths) - 2 or torch.rand(1, generator=g) < 0.2:
            layers.append(nn.ReLU(inplace=bool(torch.rand(1, generator=g) < 0.5)))
    return layers, shape, classes


def random_params(g: torch.Generator, peers: int, size: int) -> torch.Tensor:
    """Rows of widely different scales, an all-zero row (every logit tied: the first class is predicted),
    and rows holding NaN or ±inf (a diverged peer)."""
    scale = 10 ** (torch.rand(peers, 1, generator=g) * 4 - 2)
    params = torch.randn(peers, size, generator=g) * scale
    params[0] = 0.0
    for row, bad in ((1, float("nan")), (2, float("inf")), (3, float("-inf"))):
        params[row, int(torch.randint(size, (1,), generator=g))] = bad
    return params


@pytest.mark.parametrize("seed", range(12))
def test_plain_mlps_and_other_models_both_equal_the_per_peer_loop(seed):
    g = torch.Generator().manual_seed(seed)
    layers, shape, classes = random_mlp(g)
    samples = int(torch.randint(1, 60, (1,), generator=g))
    x, y = torch.randn(samples, *shape, generator=g), torch.randint(0, classes, (samples,), generator=g)
    model, wrapped = nn.Sequential(*layers), Wrapped(*layers)
    params = random_params(g, 9, ParamLayout.of(model).size)
    truth = per_peer(model, params, x, y)
    fast, general = BatchedEvaluator(model, x, y), BatchedEvaluator(wrapped, x, y)
    assert fast.layers is not None and general.layers is None  # the two paths
    for accuracy, loss in (fast(params), general(params)):
        assert torch.equal(accuracy, truth[0])
        torch.testing.assert_close(loss, truth[1], rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("seed", range(4))
def test_a_peers_numbers_do_not_depend_on_the_chunks_or_on_whom_it_is_batched_with(seed, monkeypatch):
    g = torch.Generator().manual_seed(seed)
    model = MODELS.create("mlp(hidden=[16, 8])").build((12,), 5)
    x, y = torch.randn(50, 12, generator=g), torch.randint(0, 5, (50,), generator=g)
    params = torch.randn(11, ParamLayout.of(model).size, generator=g) * 0.5
    evaluator = BatchedEvaluator(model, x, y)
    whole = evaluator(params)
    monkeypatch.setattr(evaluate_module, "TEST_CHUNK", int(torch.randint(4, 20, (1,), generator=g)))
    monkeypatch.setattr(evaluate_module, "CACHE_BUDGET", 1)  # one peer per chunk
    chunked = evaluator(params)
    alone = [evaluator(params[row : row + 1]) for row in range(len(params))]
    for accuracy, loss in (chunked, tuple(torch.cat(parts) for parts in zip(*alone, strict=True))):
        assert torch.equal(accuracy, whole[0])
        torch.testing.assert_close(loss, whole[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "spec, shape, plain",
    [
        ("mlp(hidden=[64])", (64,), True),
        ("mlp(hidden=[8, 4])", (1, 8, 8), True),
        ("logistic", (3, 4), True),
        ("cnn(channels=[4])", (1, 8, 8), False),
    ],
)
def test_the_built_in_mlps_take_the_gemm_path_and_the_cnn_vmap(spec, shape, plain):
    assert (dense_layers(MODELS.create(spec).build(shape, 10), shape) is not None) == plain


@pytest.mark.parametrize(
    "layers, shape",
    [
        ([nn.Linear(4, 3)], (2, 2)),  # no Flatten: nn.Linear would act on the last axis of an image
        ([nn.Flatten(0), nn.Linear(4, 3)], (4,)),  # flattens the batch axis too
        ([nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)], (4,)),
        ([nn.Linear(4, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 3)], (4,)),
        ([nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 3)], (4,)),
        ([nn.ReLU(), nn.Linear(4, 3)], (4,)),
        ([], (4,)),
    ],
)
def test_anything_but_a_plain_mlp_goes_through_vmap(layers, shape):
    assert dense_layers(nn.Sequential(*layers), shape) is None
    assert dense_layers(Wrapped(nn.Linear(4, 3)), (4,)) is None


def test_the_test_set_is_left_as_it_was():
    model = nn.Sequential(nn.Linear(5, 5), nn.ReLU(inplace=True), nn.Linear(5, 2))
    x, y = torch.randn(30, 5), torch.randint(0, 2, (30,))
    before, version = x.clone(), x._version
    BatchedEvaluator(model, x, y)(torch.randn(4, ParamLayout.of(model).size))
    assert x._version == version and torch.equal(x, before)
