"""Per-round metrics: the spread of test accuracy and loss over peers, agreement, communication.

With ``eval_peers = k`` an evaluated round (but the last) measures k peers drawn at random, a fresh draw
each round, and its accuracy and loss columns are those of the drawn peers: unbiased estimates of the
means over every peer, with standard errors in ``*_mean_se`` (:data:`SAMPLING_COLUMNS`). Peers not drawn
have NaN as their accuracy and loss in that round. The last round is always exact, so a run's final
numbers (``summary.json``, ``peers.csv``) are too.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ppaia.seeding import Stream, generator

if TYPE_CHECKING:
    from ppaia.config import ExperimentConfig

__all__ = [
    "LOCAL_PHASE_COLUMNS",
    "METRIC_COLUMNS",
    "SAMPLING_COLUMNS",
    "consensus_distance",
    "evaluated_peers",
    "local_phase",
    "metrics_row",
    "nonfinite_peers",
    "sampling_error",
    "spread",
    "standard_error",
]

METRIC_COLUMNS = (
    "round",
    "acc_mean",
    "acc_min",
    "acc_max",
    "acc_std",
    "loss_mean",
    "loss_min",
    "loss_max",
    "loss_std",
    "honest_acc_mean",
    "honest_acc_min",
    "honest_acc_max",
    "honest_loss_mean",
    "consensus_distance",
    "bytes_sent",
    "bytes_cumulative",
    "wall_s",
)
LOCAL_PHASE_COLUMNS = ("local_acc_mean", "local_acc_min", "local_acc_max")
SAMPLING_COLUMNS = ("peers_evaluated", "acc_mean_se", "loss_mean_se", "honest_acc_mean_se")


def spread(name: str, values: torch.Tensor) -> dict[str, float]:
    """Mean, min, max and (population) std of per-peer values (NaN for none: no drawn peer was honest)."""
    if values.numel() == 0:
        return {f"{name}_{stat}": math.nan for stat in ("mean", "min", "max", "std")}
    return {
        f"{name}_mean": values.mean().item(),
        f"{name}_min": values.min().item(),
        f"{name}_max": values.max().item(),
        f"{name}_std": values.std(unbiased=False).item(),
    }


def consensus_distance(params: torch.Tensor, honest: torch.Tensor) -> float:
    """(1/H)·Σᵢ‖θᵢ − θ̄‖² over the honest rows, in float64 (identical models give exactly 0)."""
    wide = params[honest.to(params.device)].double()
    return (wide - wide.mean(0)).square().sum(1).mean().item()


def metrics_row(
    round_: int,
    accuracy: torch.Tensor,
    loss: torch.Tensor,
    params: torch.Tensor,
    honest: torch.Tensor,
    sent: int,
    total: int,
    wall: float,
    evaluated: torch.Tensor | None = None,
    *,
    distance: float | None = None,
) -> dict[str, float]:
    """One row of ``metrics.csv``. Honest-peer columns and the consensus distance leave attackers out.
    `evaluated`: the mask of peers whose accuracy and loss were measured (None: every peer); the accuracy
    and loss columns are over those, the consensus distance over every honest peer. `distance`: the
    consensus distance when computed elsewhere (a sharded run reduces it across ranks); else from
    `params`."""
    if distance is None:
        distance = consensus_distance(params, honest)
    if evaluated is not None:
        accuracy, loss, honest = accuracy[evaluated], loss[evaluated], honest[evaluated]
    good = spread("honest_acc", accuracy[honest])
    return {
        "round": round_,
        **spread("acc", accuracy),
        **spread("loss", loss),
        **{key: good[key] for key in ("honest_acc_mean", "honest_acc_min", "honest_acc_max")},
        "honest_loss_mean": loss[honest].mean().item(),
        "consensus_distance": distance,
        "bytes_sent": sent,
        "bytes_cumulative": total,
        "wall_s": wall,
    }


def evaluated_peers(config: ExperimentConfig, n: int, round_: int) -> torch.Tensor | None:
    """The mask of the models (of `n`: the peers, or 1 for a rule that pools all data) evaluated in round
    `round_`, None for all: `eval_peers` of them drawn uniformly without replacement, from the run's seed
    and the round alone (a stream of its own: the draw shifts no other), in every round but the last."""
    k = config.eval_peers
    if k is None or k >= n or round_ == config.rounds:
        return None
    drawn = torch.randperm(n, generator=generator(config.seed, Stream.EVALUATION, round_))[:k]
    return torch.zeros(n, dtype=torch.bool).index_fill_(0, drawn, True)


def standard_error(values: torch.Tensor, population: int) -> float:
    """Standard error of the mean of `values`, a simple random sample without replacement of `population`
    values: s·√((1 − k/n)/k) for k of n, s the sample standard deviation. 0 when the sample is the whole
    population (the mean is exact); NaN below two values."""
    k = values.numel()
    if k == population:
        return 0.0
    if k < 2:
        return math.nan
    return values.double().std().item() * math.sqrt((1 - k / population) / k)


def sampling_error(
    accuracy: torch.Tensor, loss: torch.Tensor, honest: torch.Tensor, evaluated: torch.Tensor | None
) -> dict[str, float]:
    """The :data:`SAMPLING_COLUMNS` of a round whose peers in `evaluated` (None: all) were measured: how
    many, and the standard errors of ``acc_mean``, ``loss_mean`` and ``honest_acc_mean``. The honest
    peers drawn are a simple random sample of the honest peers, of the size the draw gave."""
    if evaluated is None:
        evaluated = torch.ones_like(honest)
    good = honest & evaluated
    return {
        "peers_evaluated": int(evaluated.sum()),
        "acc_mean_se": standard_error(accuracy[evaluated], honest.numel()),
        "loss_mean_se": standard_error(loss[evaluated], honest.numel()),
        "honest_acc_mean_se": standard_error(accuracy[good], int(honest.sum())),
    }


def local_phase(accuracy: torch.Tensor, honest: torch.Tensor) -> dict[str, float]:
    """Honest peers' accuracy right after local training (before cooperation)."""
    values = spread("local_acc", accuracy[honest])
    return {key: values[key] for key in LOCAL_PHASE_COLUMNS}


def nonfinite_peers(values: torch.Tensor, among: torch.Tensor) -> list[int]:
    """The peers of mask `among` whose row of `values` (``[N, D]`` parameters or ``[N]`` losses) holds NaN
    or ±inf. One sum per row does it: NaN and ±inf never add up to a finite value, so only a row whose sum
    is not finite (or overflowed) gets the elementwise test."""
    sums = values.sum(-1) if values.dim() == 2 else values
    suspects = (~torch.isfinite(sums) & among.to(sums.device)).nonzero().flatten()
    if suspects.numel() == 0:
        return []
    rows = values[suspects].reshape(suspects.numel(), -1)
    return suspects[~torch.isfinite(rows).all(-1)].tolist()
