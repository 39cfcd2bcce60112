"""The divergence check: which peers' parameters or losses are not finite, exactly, at one sum per row."""

from __future__ import annotations

import pytest
import torch

from ppaia.simulation.metrics import nonfinite_peers

BAD = (float("nan"), float("inf"), float("-inf"))


@pytest.mark.parametrize("seed", range(20))
def test_exactly_the_rows_holding_nan_or_inf_are_found(seed):
    g = torch.Generator().manual_seed(seed)
    n, d = int(torch.randint(1, 30, (1,), generator=g)), int(torch.randint(1, 500, (1,), generator=g))
    params = torch.randn(n, d, generator=g) * 10 ** float(torch.randint(-30, 30, (1,), generator=g))
    spoiled = torch.rand(n, generator=g) < 0.3
    for row in spoiled.nonzero().flatten().tolist():
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            column = int(torch.randint(d, (1,), generator=g))
            params[row, column] = BAD[int(torch.randint(len(BAD), (1,), generator=g))]
    among = torch.rand(n, generator=g) < 0.8
    assert nonfinite_peers(params, among) == (spoiled & among).nonzero().flatten().tolist()
    assert (
        nonfinite_peers(params[:, 0], among)
        == (~torch.isfinite(params[:, 0]) & among).nonzero().flatten().tolist()
    )


def test_finite_rows_whose_sum_overflows_are_not_divergence():
    params = torch.full((3, 1000), torch.finfo(torch.float32).max)  # every sum is inf, every value finite
    params[1, 7] = float("nan")
    params[2] *= -1
    assert not torch.isfinite(params.sum(1)).any()
    assert nonfinite_peers(params, torch.ones(3, dtype=torch.bool)) == [1]


def test_nan_and_inf_that_cancel_in_a_sum_are_found():
    params = torch.zeros(2, 4)
    params[0, :2] = torch.tensor([float("inf"), float("-inf")])  # inf + -inf = nan: still not finite
    assert nonfinite_peers(params, torch.ones(2, dtype=torch.bool)) == [0]
