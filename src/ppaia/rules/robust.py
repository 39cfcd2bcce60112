"""Byzantine-robust aggregation: each peer replaces its model by a robust aggregate of what it heard.

A :class:`RobustRule` runs one step per round over the links that are up (the same step as one round of
``consensus``, whose weights are ignored: it only says who hears whom). Each result row is a robust
aggregate of the receiver's own parameters and those of its live neighbours. The aggregate is written
once over a leading row axis, ``aggregate(values [R, M, D], mask [R, M]) -> [R, D]``, where row r holds
``mask[r].sum()`` valid values (neighbourhoods have different sizes; padding is masked out). The
simulator calls it for all peers at once, a networked peer for its own single row; FedAvg reuses it as
a robust server aggregate (``fedavg(aggregator="median")``).

Within a row the values are ordered by sender peer id, so a tie (Krum) goes to the lowest peer id.
A value that is NaN sorts above +inf: the order statistics (median, trimmed mean) treat it as the
largest value, and Krum gives a NaN candidate the worst score.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from ppaia.rules.base import RULES, CooperationRule, RoundContext, RoundPlan, row_chunks
from ppaia.topology.mixing import Mixing, mixing_step

__all__ = ["Krum", "Median", "MultiKrum", "RobustRule", "TrimmedMean", "krum_mean", "krum_scores"]


class RobustRule(CooperationRule):
    """Base of the robust rules: one step per round whose rows are robust aggregates of neighbourhoods.

    Subclasses implement :meth:`aggregate`; :meth:`combine` gathers each row's received values (in
    chunks of rows so that rows × M × D stays under `chunk_elements`) and calls it.
    """

    chunk_elements: ClassVar[int] = 2**25

    def plan(self, ctx: RoundContext) -> RoundPlan:
        return RoundPlan(steps=[mixing_step(ctx.mixing, ctx.live_graph(), ctx.n_samples)])

    def combine(self, params: torch.Tensor, step: Mixing, ctx: RoundContext) -> torch.Tensor:
        out = []
        for rows in row_chunks(step, params.shape[1], self.chunk_elements):
            heard = step.gather(params, rows)
            # order each row's values by sender peer id (padding last): ties resolve the same everywhere
            ids = heard.ids.masked_fill(~heard.mask, torch.iinfo(torch.long).max)
            order = ids.argsort(dim=1, stable=True)
            values = heard.values.gather(1, order[..., None].expand_as(heard.values))
            out.append(self.aggregate(values, heard.mask.gather(1, order)))
        return torch.cat(out) if out else params.new_zeros(0, params.shape[1])

    def aggregate(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Robust aggregate [R, D] of each row's valid values (`values` [R, M, D], `mask` [R, M])."""
        raise NotImplementedError


def _sorted(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's values sorted per coordinate, padding last (as NaN, which sorts above everything)."""
    return values.masked_fill(~mask[..., None], float("nan")).sort(dim=1).values


@RULES.register("median")
class Median(RobustRule):
    """Coordinate-wise median of self and live neighbours (mean of the two middle values for even counts).

    For an even count the two middle values are averaged rather than taking the lower one (as
    torch.median does): the lower median would bias every coordinate downwards, e.g. a leaf of a star,
    which hears two values, would take their minimum.
    """

    def aggregate(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        count = mask.sum(1)[:, None, None].expand(-1, 1, values.shape[2])
        ordered = _sorted(values, mask)
        low, high = ordered.gather(1, (count - 1) // 2), ordered.gather(1, count // 2)
        return (low + (high - low) / 2).squeeze(1)


@RULES.register("trimmed_mean")
class TrimmedMean(RobustRule):
    """Coordinate-wise mean of self and live neighbours after dropping the ⌊beta·n⌋ smallest and largest."""

    beta: float = Field(default=0.2, ge=0, lt=0.5)

    def aggregate(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        count = mask.sum(1)
        trim = torch.floor(count.double() * self.beta + 1e-9).long()  # guard 0.3·10 = 2.999…
        position = torch.arange(mask.shape[1], device=mask.device)
        keep = (position >= trim[:, None]) & (position < (count - trim)[:, None])
        kept = torch.where(keep[..., None], _sorted(values, mask), 0).sum(1)
        return kept / (count - 2 * trim).to(values.dtype)[:, None]


def krum_scores(values: torch.Tensor, mask: torch.Tensor, f: int) -> torch.Tensor:
    """Krum score [R, M] of each candidate: the sum of squared distances to its n − f − 2 nearest others.

    n is the row's number of valid values; at least one neighbour counts when n − f − 2 < 1 (and none
    when n = 1, scoring 0). Padding scores NaN and a candidate whose score is NaN scores +inf, so a
    stable ascending sort ranks the valid candidates first.
    """
    count = mask.sum(1)
    size = mask.shape[1]
    squared = torch.cdist(values, values, compute_mode="donot_use_mm_for_euclid_dist").square()
    pairs = mask[:, :, None] & mask[:, None, :] & ~torch.eye(size, dtype=torch.bool, device=mask.device)
    nearest = squared.masked_fill(~pairs, float("inf")).sort(dim=2).values
    totals = torch.cat([nearest.new_zeros(*nearest.shape[:2], 1), nearest.cumsum(2)], dim=2)
    k = (count - f - 2).clamp(min=1).minimum(count - 1).clamp(min=0)
    scores = totals.gather(2, k[:, None, None].expand(-1, size, 1)).squeeze(2)
    return scores.nan_to_num(nan=float("inf")).masked_fill(~mask, float("nan"))


def krum_mean(values: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor, m: int) -> torch.Tensor:
    """Mean [R, D] of each row's min(m, n) lowest-scoring candidates (ties: the first in the row)."""
    take = min(m, mask.shape[1])
    best = scores.argsort(dim=1, stable=True)[:, :take]
    chosen = values.gather(1, best[..., None].expand(-1, -1, values.shape[2]))
    count = mask.sum(1).clamp(max=m)
    selected = torch.arange(take, device=mask.device)[None, :] < count[:, None]
    return torch.where(selected[..., None], chosen, 0).sum(1) / count.to(values.dtype)[:, None]


@RULES.register("krum")
class Krum(RobustRule):
    """Krum (Blanchard et al. 2017): the received model closest to its n − f − 2 nearest others."""

    f: int = Field(default=1, ge=0)

    def aggregate(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return krum_mean(values, mask, krum_scores(values, mask, self.f), 1)


@RULES.register("multi_krum")
class MultiKrum(RobustRule):
    """Multi-Krum: the mean of the m received models with the best Krum scores (m capped at n)."""

    f: int = Field(default=1, ge=0)
    m: int = Field(default=2, ge=1)

    def aggregate(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return krum_mean(values, mask, krum_scores(values, mask, self.f), self.m)
