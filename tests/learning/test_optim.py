"""Batched optimizers follow torch.optim row by row, and masked rows do not move."""

import pytest
import torch

from ppaia.learning import OPTIMIZERS

SPECS = [
    "sgd",
    "sgd(momentum=0.9)",
    "sgd(momentum=0.9, nesterov=true, weight_decay=0.01)",
    "adam",
    "adam(weight_decay=0.1, beta1=0.8)",
]


@pytest.mark.parametrize("spec", SPECS)
def test_batched_step_matches_torch_optim_per_row_with_masked_steps(spec):
    optimizer = OPTIMIZERS.create(spec)
    g = torch.Generator().manual_seed(0)
    rows, dim, steps, lr = 4, 6, 7, 0.05
    start = torch.randn(rows, dim, generator=g)
    grads = torch.randn(steps, rows, dim, generator=g)
    active = torch.rand(steps, rows, generator=g) > 0.3  # each row skips some steps

    batched = start.clone()
    state = optimizer.init_state(batched)
    for step in range(steps):
        optimizer.step(batched, grads[step].clone(), state, active[step].float().unsqueeze(1), lr)

    for row in range(rows):
        param = torch.nn.Parameter(start[row].clone())
        reference = optimizer.torch_optimizer([param], lr)
        for step in range(steps):
            if active[step, row]:
                param.grad = grads[step, row].clone()
                reference.step()
        torch.testing.assert_close(batched[row], param.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", SPECS)
def test_inactive_rows_keep_parameters_and_state(spec):
    optimizer = OPTIMIZERS.create(spec)
    params = torch.randn(3, 5)
    state = optimizer.init_state(params)
    optimizer.step(params, torch.randn(3, 5), state, torch.ones(3, 1), 0.1)  # build up some state
    before = params.clone(), {k: v.clone() for k, v in state.items()}
    optimizer.step(params, torch.randn(3, 5), state, torch.tensor([[1.0], [0.0], [1.0]]), 0.1)
    assert torch.equal(params[1], before[0][1]) and not torch.equal(params[0], before[0][0])
    for key, value in state.items():
        assert torch.equal(value[1], before[1][key][1])


def test_bad_optimizer_options_are_rejected():
    with pytest.raises(ValueError, match="momentum"):
        OPTIMIZERS.create("sgd(momentum=1.5)")
