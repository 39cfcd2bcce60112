"""Per-round metrics: the spread of test accuracy and loss over peers, agreement, communication."""

from __future__ import annotations

import torch

__all__ = ["LOCAL_PHASE_COLUMNS", "METRIC_COLUMNS", "local_phase", "metrics_row", "nonfinite_peers", "spread"]

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


def spread(name: str, values: torch.Tensor) -> dict[str, float]:
    """Mean, min, max and (population) std of per-peer values."""
    return {
        f"{name}_mean": values.mean().item(),
        f"{name}_min": values.min().item(),
        f"{name}_max": values.max().item(),
        f"{name}_std": values.std(unbiased=False).item(),
    }


def metrics_row(
    round_: int,
    accuracy: torch.Tensor,
    loss: torch.Tensor,
    params: torch.Tensor,
    honest: torch.Tensor,
    sent: int,
    total: int,
    wall: float,
) -> dict[str, float]:
    """One row of ``metrics.csv``. Honest-peer columns and the consensus distance leave attackers out."""
    wide = params[honest].double()  # float64: identical peers give exactly 0
    distance = (wide - wide.mean(0)).square().sum(1).mean().item()
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


def local_phase(accuracy: torch.Tensor, honest: torch.Tensor) -> dict[str, float]:
    """Honest peers' accuracy right after local training (before cooperation)."""
    values = spread("local_acc", accuracy[honest])
    return {key: values[key] for key in LOCAL_PHASE_COLUMNS}


def nonfinite_peers(values: torch.Tensor, among: torch.Tensor) -> list[int]:
    """The peers of mask `among` whose row of `values` (``[N, D]`` parameters or ``[N]`` losses) holds NaN
    or ±inf. One sum per row does it: NaN and ±inf never add up to a finite value, so only a row whose sum
    is not finite (or overflowed) gets the elementwise test."""
    sums = values.sum(-1) if values.dim() == 2 else values
    suspects = (~torch.isfinite(sums) & among).nonzero().flatten()
    if suspects.numel() == 0:
        return []
    rows = values[suspects].reshape(suspects.numel(), -1)
    return suspects[~torch.isfinite(rows).all(-1)].tolist()
