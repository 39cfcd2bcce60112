"""Self-centred rules from decentralized Byzantine learning: a peer judges what it hears by its own model.

A robust aggregate (median, Krum: :mod:`ppaia.rules.robust`) looks for the centre of a neighbourhood and
fails once attackers hold enough of it, which on a sparse graph takes only one or two neighbours. The
rules here centre on the receiver instead: every neighbour's model enters as its difference x_j − x_i
from the receiver's own model x_i, which the rule bounds (:class:`ClippedGossip`) or accepts only when
small (:class:`Balance`). Whatever a neighbour sends, it moves the receiver by a bounded amount.

Both run one step per round over the links that are up — the step of one round of ``consensus``, with
its mixing weights W, so they send the same models — and are written once over the rows of that step
(:class:`CentredView`: the receiver's own model and its partners' differences, in chunks of rows so that
rows × M × D stays bounded). The simulator calls them for all peers at once, a networked peer for its
own row over the models that arrived.

A model that is not finite, or whose difference from the receiver's is not (an overflow), counts as not
received: it gets no weight, which stays with the receiver, and enters no arithmetic. A receiver whose
own model is not finite keeps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import Field

from ppaia.rules.base import RULES, CooperationRule, RoundContext, RoundPlan, row_chunks
from ppaia.topology.mixing import Mixing, Neighbourhoods, mixing_step

__all__ = ["Balance", "CentredRule", "CentredView", "ClippedGossip", "adaptive_radius", "centred_clip"]


@dataclass(frozen=True)
class CentredView:
    """A step's rows seen from each receiver: its own model [R, D] and its partners' differences from it.

    `diffs` [R, M, D] are x_j − x_i for the partners (zero elsewhere: padding, the receiver's own slot,
    and any model that is not finite); `distances` [R, M] their norms (float64); `partner` [R, M] marks
    the neighbours that count; `weights` [R, M] are the step's mixing weights.
    """

    own: torch.Tensor
    diffs: torch.Tensor
    distances: torch.Tensor
    partner: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def of(cls, hood: Neighbourhoods, receivers: torch.Tensor) -> CentredView:
        """The view of neighbourhoods `hood` whose row r is received by peer `receivers[r]` (ids, from
        the plan: on the host)."""
        device = hood.values.device
        own_slot = hood.mask & (hood.ids == receivers.to(device)[:, None])
        if not bool(own_slot.any(1).all()):
            raise ValueError("a self-centred rule needs each receiver's own model among the step's senders")
        own = hood.values[torch.arange(len(receivers), device=device), own_slot.long().argmax(1)]
        diffs = hood.values - own[:, None]
        partner = hood.mask & ~own_slot & diffs.isfinite().all(-1)
        diffs = torch.where(partner[..., None], diffs, 0.0)
        distances = torch.linalg.vector_norm(diffs, dim=-1, dtype=torch.float64)  # no overflow in float32
        return cls(own, diffs, distances, partner, hood.weights)


def centred_clip(
    diffs: torch.Tensor, radius: torch.Tensor, distances: torch.Tensor | None = None
) -> torch.Tensor:
    """CLIP(z, τ) = min(1, τ/‖z‖)·z of each difference: `diffs` [R, M, D] (finite), `radius` [R, 1].

    `distances` [R, M] are the diffs' norms when already known. A difference within the radius is
    returned exactly as it is (scale 1), so an unclipped step is plain averaging.
    """
    if distances is None:
        distances = torch.linalg.vector_norm(diffs, dim=-1, dtype=torch.float64)
    radius = radius.to(distances.dtype)
    scale = torch.where(distances > radius, radius / distances, 1.0)
    return diffs * scale.to(diffs.dtype)[..., None]


def adaptive_radius(
    distances: torch.Tensor, weights: torch.Tensor, partner_mask: torch.Tensor, delta: float
) -> torch.Tensor:
    """Each row's clipping radius [R]: the farthest partners carrying at most a `delta` share of the
    partners' total weight lie beyond it, all others within it.

    Partners are taken from the farthest inwards while their cumulative weight stays within `delta` of
    the row's partner weight; the radius is the distance of the farthest partner left (0 for a row
    without partners). With ``delta = 0`` nobody is beyond the radius; with equal weights and
    ``delta = 0.3``, one of 4 to 6 neighbours is (the farthest: the authors' reference code clips at the
    second-largest distance). Ties in distance resolve alike in any order, since the radius is a
    distance, and a partner at exactly the radius is not clipped.
    """
    weight = torch.where(partner_mask, weights.to(torch.float64), 0.0)
    far = distances.to(torch.float64).masked_fill(~partner_mask, -math.inf)
    order = far.argsort(dim=1, descending=True, stable=True)
    budget = delta * weight.sum(1, keepdim=True) * (1 + 1e-12)  # 0.3 · 10/10 may round below 3/10
    beyond = weight.gather(1, order).cumsum(1) <= budget
    kept = partner_mask.gather(1, order) & ~beyond
    return far.gather(1, order).masked_fill(~kept, -math.inf).amax(1).clamp(min=0)


class CentredRule(CooperationRule):
    """Base of the self-centred rules: consensus's step per round, each row from a :class:`CentredView`.

    Subclasses implement :meth:`update`. Their options only change how a peer weighs what it received
    (the plan is consensus's), so peers of a swarm need not agree on them.
    """

    chunk_elements: ClassVar[int] = 2**25

    def plan(self, ctx: RoundContext) -> RoundPlan:
        return RoundPlan(steps=[mixing_step(ctx.mixing, ctx.live_graph(), ctx.n_samples)])

    def combine(self, params: torch.Tensor, step: Mixing, ctx: RoundContext) -> torch.Tensor:
        receivers = step.receiver_ids()
        out = []
        for rows in row_chunks(step, params.shape[1], self.chunk_elements):
            out.append(self.update(CentredView.of(step.gather(params, rows), receivers[rows]), ctx))
        return torch.cat(out) if out else params.new_zeros(0, params.shape[1])

    def update(self, view: CentredView, ctx: RoundContext) -> torch.Tensor:
        """Each receiver's new model [R, D] from its view of the step."""
        raise NotImplementedError


@RULES.register("clipped_gossip")
class ClippedGossip(CentredRule):
    """ClippedGossip: x_i ← x_i + Σ_j W_ij · CLIP(x_j − x_i, τ_i), with an adaptive radius τ_i.

    He, Karimireddy and Jaggi, "Byzantine-robust decentralized learning via ClippedGossip" (2022,
    arXiv:2202.01545), the gossip form of self-centred clipping. Each neighbour's pull on the receiver
    is at most W_ij·τ_i whatever it sends, so the attackers' total pull is bounded by their weight times
    τ_i, while honest neighbours within τ_i are averaged as consensus averages them.

    The radius is `tau` if set. Otherwise it is chosen from the neighbourhood (:func:`adaptive_radius`):
    the farthest neighbours carrying at most a `delta` share of the neighbours' weight are clipped to
    the distance of the nearest of the others. The paper's theory sets τ_i from the honest neighbours'
    expected distances, which a peer cannot know; the authors' reference code (epfml/byzantine-robust-
    decentralized-optimizer, SelfCenteredClipping) uses the second-largest neighbour distance,
    i.e. clip the farthest neighbour. `delta` generalises that to a share of the weight: with Metropolis
    weights on a regular graph (equal weights) of degree 4–6 and the default 0.3 it clips exactly the
    farthest, as the reference does; on degree 2–3 it clips none, on degree 7–9 two. ``delta = 0``
    clips nobody: the rule is then consensus (up to rounding). Where the attackers hold more than
    `delta` of a neighbourhood, the radius is set by an attacker's distance and bounds little.

    Differences from the paper: one gossip step per round after the local training of every rule here
    (the paper's local step has momentum); a model that is not finite gets no weight (the reference code
    also drops a difference whose norm is NaN).
    """

    tau: float | None = Field(default=None, gt=0, description="fixed clipping radius (None: adaptive)")
    delta: float = Field(
        default=0.3, ge=0, lt=1, description="share of the neighbours' weight clipped by the adaptive radius"
    )

    local_options: ClassVar[frozenset[str]] = frozenset({"tau", "delta"})

    def update(self, view: CentredView, ctx: RoundContext) -> torch.Tensor:
        if self.tau is None:
            radius = adaptive_radius(view.distances, view.weights, view.partner, self.delta)
        else:
            radius = torch.full((view.own.shape[0],), self.tau, dtype=torch.float64, device=view.own.device)
        clipped = centred_clip(view.diffs, radius[:, None], view.distances)
        return view.own + torch.einsum("rm,rmd->rd", view.weights.to(view.own.dtype), clipped)


@RULES.register("balance")
class Balance(CentredRule):
    """BALANCE: accept x_j if ‖x_i − x_j‖ ≤ γ·exp(−κ·λ(t))·‖x_i‖; x_i ← α·x_i + (1 − α)·mean(accepted).

    Fang, Zhang, Hairi, Khanduri, Liu, Lu, Liu and Gong, "Byzantine-Robust Decentralized Federated
    Learning" (ACM CCS 2024, arXiv:2406.10416). A peer uses its own model as the reference: a neighbour
    is accepted only within a distance proportional to the peer's own model's norm, a bound that
    tightens as λ(t) = t/T grows over the run, and the accepted models are averaged with equal weights
    (the step's mixing weights only say who hears whom). A peer that accepts nobody keeps its model.

    Defaults: κ = 1 and α = 0.5, as in the paper's experiments and the implementations we found;
    γ = 0.3, which we take to be the paper's default (third-party implementations use 0.7 and 2.0).

    Differences from the paper: a rule does not know how long its run is, so T is the option `horizon`
    — None (the default) means no decay (κ·λ = 0) — and λ(t) = min(t/T, 1) stops tightening after
    round T; the round's local training comes before the combination, as for every rule here; a model
    that is not finite is never accepted.
    """

    gamma: float = Field(default=0.3, gt=0, description="acceptance radius as a share of ‖x_i‖")
    kappa: float = Field(default=1.0, ge=0, description="how fast the radius shrinks over the run")
    alpha: float = Field(default=0.5, ge=0, le=1, description="weight a peer keeps on its own model")
    horizon: int | None = Field(default=None, ge=1, description="T, the rounds over which λ(t) = t/T")

    local_options: ClassVar[frozenset[str]] = frozenset({"gamma", "kappa", "alpha", "horizon"})

    def radius_share(self, round_: int) -> float:
        """γ·exp(−κ·λ(t)): the acceptance radius in round `round_` as a share of the peer's model norm."""
        progress = 0.0 if self.horizon is None else min(round_ / self.horizon, 1.0)
        return self.gamma * math.exp(-self.kappa * progress)

    def update(self, view: CentredView, ctx: RoundContext) -> torch.Tensor:
        norm = torch.linalg.vector_norm(view.own, dim=-1, dtype=torch.float64)
        accepted = view.partner & (view.distances <= self.radius_share(ctx.round) * norm[:, None])
        total = torch.einsum("rm,rmd->rd", accepted.to(view.own.dtype), view.diffs)
        count = accepted.sum(1, keepdim=True).clamp(min=1).to(view.own.dtype)
        return view.own + (1 - self.alpha) * total / count
