"""PPAIA's namesake: DeGroot averaging with k random partners and a trust matrix learned from data.

Each round peer i picks k random partners among its live neighbours and replaces its parameters by
θᵢ ← (1 − Σₚ Tᵢₚ)·θᵢ + Σₚ Tᵢₚ·θₚ. Trust Tᵢₚ persists across rounds and is learned by gradient steps on
the peer's own held-out data: the logit mixture z(x) = (1 − s)·f(x; θᵢ) + Σₚ Tᵢₚ·f(x; θₚ) with
s = Σₚ Tᵢₚ is scored with cross-entropy and only the T's move. By default every trust row stays in
{T ≥ 0, Σ T ≤ 1}, so a partner whose model hurts the peer's held-out loss is pushed to 0.

Why plain fitting isolates a peer on skewed data, and the anchor that stops it. After local training a
peer's own model is close to the best model *for its own classes*, and its held-out data (a handful of
records: 7 on average for 50 peers on digits) has only those classes. Any partner's model, however
useful on the classes this peer lacks, raises that loss, and the loss is nearly linear in T (the models
are close), so the fit ends on a vertex: every partner at 0, the peer alone. The data cannot say what a
partner adds, only whether it agrees. So trust is fitted as a MAP estimate, ``prior`` (λ) pulling it
towards an *anchor* that does not need the data: the weight self-centred clipping would give the
partner, 1/(k+1) if dₚ ≤ r·d₀ and 0 beyond, where dₚ = ‖θₚ − θᵢ‖ and d₀ is the nearest partner's
distance this round: a distance gate, as in self-centred clipping (He, Karimireddy and Jaggi's
ClippedGossip, 2022) and BALANCE (Fang et al., 2024), with a radius r·d₀ that one honest partner sets,
however many attackers the other k − 1 are. Honest partners, which disagree about as much as the nearest
one, keep a consensus-like weight unless the data speaks against them; a far model (noise, a flipped
sign, a scaled model) is anchored at 0 from its first meeting, before its harm shows in the loss, and
only the data can give it trust. (A soft anchor, min(1, r·d₀/dₚ)/(k+1), held a flipped-sign attacker
at a small constant trust whose pull adds up over rounds: 0.858 against 0.869 on the complete graph.)
How hard the prior pulls depends on how much of the task the held-out data can test: its loss speaks
only for the cᵢ classes among peer i's held-out labels, so with ``per_class`` (the default) λᵢ =
``prior`` · C / cᵢ for a C-class model. A peer holding 2 classes of 10 (``shards(k=2)``) pulls 5 times as
hard as one whose held-out data has them all; with a fixed λ its data term wins and it isolates again
(0.462 against consensus's 0.856, 50 peers, random 6-regular graph; λ·C/c: 0.835; see
``docs/byzantine_sparse.md``).

A partner first met starts at its anchor. ``reach = None`` anchors every partner at 1/(k+1) and
``prior = 0`` removes the pull: together they are the unanchored fit, which isolates on skewed data.
``faithful = true`` reproduces the original prototype: lr 1e-4, s treated as a constant (detached), no
projection, no anchor, no pull.

Trust survives a restart: :meth:`LearnedTrust.state_dict` is the whole matrix (the simulator's form) and
:meth:`LearnedTrust.peer_state` one peer's row keyed by its partners' peer ids (a networked peer's form,
valid whatever positions the partners have after the restart).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, PrivateAttr

from ppaia.rules.base import (
    RULES,
    CooperationRule,
    RoundContext,
    RoundPlan,
    RuleStateError,
    checked_tensor,
    names_text,
    position_of,
)
from ppaia.topology.mixing import Mixing, rank_within

__all__ = ["LearnedTrust", "project_capped_simplex"]

MAX_HALVINGS = 30  # backtracking: the step shrinks at most 2^30-fold before a peer keeps its trust


def project_capped_simplex(trust: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row (over `mask`ed entries) onto {t ≥ 0, Σ t ≤ 1}."""
    clipped = trust.clamp(min=0) * mask
    over = clipped.sum(1) > 1
    if not bool(over.any()):
        return clipped
    # rows summing above 1: project onto the simplex Σ t = 1 (sort-based, Duchi et al. 2008)
    values = torch.where(mask, trust, torch.finfo(trust.dtype).min)
    ordered = values.sort(dim=1, descending=True).values
    cumulative = ordered.cumsum(1) - 1
    index = torch.arange(1, trust.shape[1] + 1, dtype=trust.dtype, device=trust.device)
    support = (ordered - cumulative / index > 0) & mask.sort(dim=1, descending=True).values
    count = support.sum(1, keepdim=True).clamp(min=1)
    threshold = cumulative.gather(1, count - 1) / count
    simplex = (trust - threshold).clamp(min=0) * mask
    return torch.where(over.unsqueeze(1), simplex, clipped)


@RULES.register("learned_trust")
class LearnedTrust(CooperationRule):
    """PPAIA: DeGroot averaging with k random partners, weighted by trust learned on held-out data."""

    partners: int = Field(default=3, ge=1, description="k partners per peer and round")
    steps: int = Field(default=10, ge=0, description="gradient steps on the trust row per round")
    lr: float | None = Field(default=None, gt=0, description="trust learning rate (0.5; 1e-4 if faithful)")
    faithful: bool = Field(
        default=False, description="original prototype: detached self weight, no projection"
    )
    prior: float | None = Field(
        default=None, ge=0, description="λ of the pull (λ/2)·Σ(T − anchor)² to the anchor (3; 0 if faithful)"
    )
    reach: float | None = Field(
        default=2.0,
        ge=1,
        description="partners within reach × the nearest one's distance are anchored at 1/(k+1), others at 0 "
        "(None: all at 1/(k+1))",
    )

    per_class: bool = Field(
        default=True,
        description="scale λ by C / (classes in the peer's held-out labels): the prior carries the classes "
        "the peer cannot test a partner on",
    )

    local_options: ClassVar[frozenset[str]] = frozenset({"steps", "lr", "prior", "reach", "per_class"})

    # trust of each receiver this executor plays (rows: every peer in the simulator, itself on a peer)
    # in every peer (columns); `_rows` are the receivers' ids, None while they are all peers 0..R-1
    _trust: torch.Tensor = PrivateAttr(default_factory=lambda: torch.empty(0, 0, dtype=torch.float64))
    _rows: torch.Tensor | None = PrivateAttr(default=None)
    # peer -> trust in partners that had no position when its row was last loaded (see load_peer_state)
    _kept: dict[int, dict[str, float]] = PrivateAttr(default_factory=dict)

    @property
    def needs_holdout(self) -> bool:
        """Trust is fitted on held-out data (the faithful prototype used its training data); with
        ``steps = 0`` it is not fitted at all, so no record is read outside training (a DP peer)."""
        return not self.faithful and self.steps > 0

    def reset(self, n_peers: int, rows: torch.Tensor | None = None) -> None:
        self._rows = None if rows is None else rows.clone()
        height = n_peers if rows is None else len(rows)
        self._trust = torch.full((height, n_peers), float("nan"), dtype=torch.float64)
        self._kept = {}

    def _row(self, receivers: torch.Tensor) -> torch.Tensor:
        """The rows of `receivers`' trust (KeyError for a receiver this executor does not play)."""
        if self._rows is None:
            return receivers
        found = torch.searchsorted(self._rows, receivers).clamp(max=max(len(self._rows) - 1, 0))
        if not len(self._rows) or not bool((self._rows[found] == receivers).all()):
            raise KeyError(
                f"trust of receivers {receivers.tolist()}: this executor plays {self._rows.tolist()}"
            )
        return found

    def _dense(self) -> torch.Tensor:
        """Trust as an N × N matrix, rows this executor does not play never met (the simulator's own)."""
        if self._rows is None:
            return self._trust
        full = torch.full((self._trust.shape[1],) * 2, float("nan"), dtype=torch.float64)
        full[self._rows] = self._trust
        return full

    @property
    def strength(self) -> float:
        """λ, the pull towards the anchor: `prior`, else 3 (0 for the faithful prototype, which had none)."""
        if self.prior is not None:
            return self.prior
        return 0.0 if self.faithful else 3.0

    def _strengths(self, y: torch.Tensor, valid: torch.Tensor, classes: int) -> torch.Tensor:
        """Each receiver's λ [R]: `strength`, times C / cᵢ with ``per_class`` (cᵢ: the classes among
        receiver i's held-out labels, C: the model's), since its held-out loss speaks for cᵢ of C classes
        and the prior must carry the rest."""
        strength = torch.full(y.shape[:1], self.strength, dtype=torch.float64, device=y.device)
        if not self.per_class:
            return strength
        seen = (F.one_hot(y.clamp(0, classes - 1), classes) * valid.unsqueeze(-1)).amax(1)
        return strength * classes / seen.sum(1).clamp(min=1)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-4 if self.faithful else 0.5)

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Trust between every pair that has met, as a sparse N × N matrix (memory ∝ pairs met)."""
        trust = self._dense()
        met = trust.isfinite()
        entries = torch.sparse_coo_tensor(met.nonzero().T, trust[met], trust.shape, check_invariants=False)
        return {"trust": entries.coalesce()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``trust``: N × N float64, Tᵢₚ where i has met p and 0 elsewhere; ``met``: N × N bool, where.
        (Partners that :meth:`load_peer_state` keeps aside have no position, so they are not in it.)"""
        trust = self._dense()
        met = trust.isfinite()
        return {"trust": torch.where(met, trust, 0.0), "met": met}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """The whole matrix back (from :meth:`state_dict`; of the size :meth:`reset` gave, if called).

        Refused: other names, dtypes or shapes, trust in oneself, a value where peers have not met, and
        trust that learning could not have produced (not finite; outside [0, 1] unless faithful)."""
        if set(state) != {"trust", "met"}:
            raise RuleStateError(
                f"rule {self.name!r}: a state holds 'trust' and 'met', not {names_text(state)}"
            )
        trust = checked_tensor(self.name, "trust", state["trust"], torch.float64, 2)
        met = checked_tensor(self.name, "met", state["met"], torch.bool, 2)
        size = trust.shape[0]
        if trust.shape != (size, size) or met.shape != trust.shape:
            raise RuleStateError(
                f"rule {self.name!r}: trust {tuple(trust.shape)} and met {tuple(met.shape)} are not one "
                "square shape"
            )
        if self._trust.numel() and size != self._trust.shape[1]:
            raise RuleStateError(
                f"rule {self.name!r}: a state of {size} peers, but this run has {self._trust.shape[1]}"
            )
        if bool(met.diagonal().any()):
            raise RuleStateError(f"rule {self.name!r}: a state with a peer's trust in itself")
        if bool((trust[~met] != 0).any()):
            raise RuleStateError(f"rule {self.name!r}: a state with trust between peers that never met")
        self._check_weights(trust[met])
        self._trust = torch.where(met, trust, float("nan"))
        if self._rows is not None:
            self._trust = self._trust[self._rows]
        self._kept = {}

    def peer_state(self, peer: int, ids: Sequence[str | None]) -> dict[str, float]:
        """Peer `peer`'s trust in every partner it has met, {partner's id: Tᵢₚ}, plus the partners kept
        aside by :meth:`load_peer_state` that it has not met since. A partner met at a position whose id
        is None (not known now) is left out: its trust cannot be keyed."""
        position_of(ids, peer)
        if self._rows is None:
            row = self._trust[peer] if peer < self._trust.shape[0] else self._trust.new_empty(0)
        elif bool((self._rows == peer).any()):
            row = self._trust[self._row(torch.tensor([peer]))[0]]
        else:
            row = self._trust.new_empty(0)
        met = row.isfinite().nonzero().flatten().tolist()
        if met and met[-1] >= len(ids):
            raise RuleStateError(f"peer {peer} has met position {met[-1]}, beyond the {len(ids)} ids given")
        state = dict(self._kept.get(peer, {}))
        state.update({ids[j]: float(row[j]) for j in met if ids[j] is not None})
        return state

    def load_peer_state(self, peer: int, ids: Sequence[str | None], state: Mapping[str, float]) -> None:
        """Make `state` ({partner's id: trust}, from :meth:`peer_state`) row `peer` again, where `ids[j]`
        is the id of position j now; the row's other entries become "never met".

        Partners with no position now are *kept aside*, not dropped: :meth:`peer_state` returns them, so
        they stay in every later checkpoint, and a later call that places them (on a membership change,
        ``load_peer_state(peer, new_ids, peer_state(peer, old_ids))``) brings their trust back. Dropping
        them would let a distrusted partner that is away at the restart come back trusted as a stranger.

        Refused (RuleStateError, the rule unchanged): repeated ids, trust in oneself, and values that
        learning could not have produced (not finite; outside [0, 1] unless faithful)."""
        positions = position_of(ids, peer)
        if not isinstance(state, Mapping):
            raise RuleStateError(
                f"rule {self.name!r}: a peer state is a map of id to trust, not {type(state).__name__}"
            )
        bad = [key for key, value in state.items() if not isinstance(key, str) or not _is_real(value)]
        if bad:
            raise RuleStateError(
                f"rule {self.name!r}: not an id and a number: {bad[0]!r:.60}: {state[bad[0]]!r:.40}"
            )
        if ids[peer] in state:
            raise RuleStateError(f"rule {self.name!r}: a peer state with the peer's trust in itself")
        self._check_weights(torch.tensor([float(value) for value in state.values()], dtype=torch.float64))
        placed = {positions[key]: float(value) for key, value in state.items() if key in positions}
        kept = {key: float(value) for key, value in state.items() if key not in positions}
        self._grow(len(ids))
        row = torch.full((self._trust.shape[1],), float("nan"), dtype=torch.float64)
        row[list(placed)] = torch.tensor(list(placed.values()), dtype=torch.float64)
        self._trust[self._row(torch.tensor([peer]))[0]] = row
        self._kept[peer] = kept

    def _check_weights(self, trust: torch.Tensor) -> None:
        """RuleStateError unless every value is trust that learning could have produced."""
        if not bool(trust.isfinite().all()):
            raise RuleStateError(f"rule {self.name!r}: a state with trust that is not finite")
        if not self.faithful and not bool(((trust >= 0) & (trust <= 1)).all()):
            raise RuleStateError(
                f"rule {self.name!r}: a state with trust outside [0, 1] (values from "
                f"{trust.min().item():.3g} to {trust.max().item():.3g}); only faithful = true leaves it so"
            )

    def plan(self, ctx: RoundContext) -> RoundPlan:
        """Each peer pulls from up to k live neighbours chosen at random."""
        receivers, senders = ctx.live_graph().directed()
        keys = torch.rand(receivers.numel(), generator=ctx.generator, dtype=torch.float64)
        order = torch.argsort(receivers.double() + keys * 0.5, stable=True)  # by receiver, random inside
        receivers, senders = receivers[order], senders[order]
        chosen = rank_within(receivers, ctx.n_peers) < self.partners
        peers = torch.arange(ctx.n_peers)
        rows = torch.cat([receivers[chosen], peers])
        sources = torch.cat([senders[chosen], peers])
        weights = torch.full((rows.numel(),), float("nan"), dtype=torch.float64)  # learned in combine
        return RoundPlan(steps=[Mixing.square(rows, sources, weights, ctx.n_peers)])

    def combine(self, params: torch.Tensor, step: Mixing, ctx: RoundContext) -> torch.Tensor:
        """Learn each receiver's trust in its partners on its held-out data, then mix with it.

        The trust matrix is bookkeeping kept on the host (it grows with the peers met, not with the
        model); the round's rows of it, [R, M], go to the parameters' device to be learned there and
        come back once, learned."""
        if ctx.learner is None:
            raise ValueError("learned_trust needs the peers' data (RoundContext.learner)")
        device = params.device
        receivers = step.receiver_ids()
        hood = step.gather(params)
        ids = hood.ids.cpu()  # the senders' ids index the host's trust matrix (-1: padding)
        finite = hood.values.isfinite().all(-1)  # a model with NaN/Inf gets no trust and no arithmetic
        values = torch.where(finite.unsqueeze(-1), hood.values, 0.0)
        on_device = receivers.to(device).unsqueeze(1)
        partner = hood.mask & (hood.ids != on_device) & finite
        own = hood.mask & (hood.ids == on_device)
        self._grow(int(max(receivers.max(), ids.max())) + 1)
        at = self._row(receivers)
        known = self._trust[at.unsqueeze(1), ids.clamp(min=0)].to(device)
        anchor = self._anchor(values, own, partner)
        start = torch.where(partner & ~known.isnan(), known, anchor) * partner
        trust = self._learn(start, anchor, partner, own, values, receivers, ctx)
        met = (ids >= 0) & (ids != receivers.unsqueeze(1))
        rows, cols = met.nonzero(as_tuple=True)
        self._trust[at[rows], ids[rows, cols]] = trust.cpu()[rows, cols]
        weights = trust + own * (1 - trust.sum(1, keepdim=True))
        return torch.einsum("rm,rmd->rd", weights.to(params.dtype), values)

    def _anchor(self, values: torch.Tensor, own: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        """Each partner's anchor [R, M] (float64): 1/(k+1) within `reach` times the nearest partner's
        distance, 0 beyond (1/(k+1) for all when faithful or `reach` is None; see the module docstring)."""
        first_meeting = torch.where(partner, 1.0 / (self.partners + 1), 0.0).double()
        if self.faithful or self.reach is None:
            return first_meeting
        mine = (own.unsqueeze(-1) * values).sum(1, keepdim=True)
        distance = torch.linalg.vector_norm(values - mine, dim=-1, dtype=torch.float64)  # inf on overflow
        radius = self.reach * distance.masked_fill(~partner, math.inf).amin(1, keepdim=True)
        return torch.where(distance <= radius, first_meeting, 0.0)

    def _grow(self, size: int) -> None:
        """Room for peers 0..size-1: columns, and rows too while this executor plays every peer."""
        if size > self._trust.shape[1]:
            height = size if self._rows is None else self._trust.shape[0]
            grown = torch.full((height, size), float("nan"), dtype=torch.float64)
            grown[: self._trust.shape[0], : self._trust.shape[1]] = self._trust
            self._trust = grown

    def _learn(self, trust, anchor, partner, own, values, receivers, ctx: RoundContext) -> torch.Tensor:
        """Gradient steps on the trust rows; only the T's move, the models stay fixed."""
        if self.steps == 0 or not bool(partner.any()):
            return trust
        x, y, valid = ctx.learner.samples(receivers)
        logits = ctx.learner.logits(values, x).double()  # [R, M, H, C]
        own_logits = (own[..., None, None] * logits).sum(1)  # [R, H, C]
        counts = valid.sum(1).clamp(min=1)
        strength = self._strengths(y, valid, logits.shape[-1])

        def losses(weights: torch.Tensor, detach_share: bool = False) -> torch.Tensor:
            weights = weights * partner
            share = weights.sum(1).detach() if detach_share else weights.sum(1)
            mixture = (1 - share)[:, None, None] * own_logits + torch.einsum("rm,rmhc->rhc", weights, logits)
            each = F.cross_entropy(mixture.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
            pull = 0.5 * strength * ((weights - anchor) * partner).square().sum(1)
            return (each * valid).sum(1) / counts + pull  # one regularised held-out loss per receiver

        def gradient(weights: torch.Tensor) -> torch.Tensor:
            weights = weights.detach().requires_grad_(True)
            return torch.autograd.grad(losses(weights, self.faithful).sum(), weights)[0]

        if self.faithful:  # the prototype: plain fixed-step gradient descent, no projection
            for _ in range(self.steps):
                trust = trust - self.learning_rate * gradient(trust)
            return trust * partner
        # projected gradient descent with a per-peer backtracking step: every accepted step lowers that
        # peer's held-out loss, however large a partner's logits are (noise, flipped signs)
        step_size = trust.new_full((trust.shape[0], 1), self.learning_rate)
        with torch.no_grad():
            current = losses(trust)
        for _ in range(self.steps):
            direction = gradient(trust)
            accepted = torch.zeros(trust.shape[0], dtype=torch.bool, device=trust.device)
            with torch.no_grad():
                for _ in range(MAX_HALVINGS):
                    candidate = project_capped_simplex(trust - step_size * direction, partner)
                    trial = losses(candidate)
                    better = (trial <= current) & ~accepted
                    trust = torch.where(better.unsqueeze(1), candidate, trust)
                    current = torch.where(better, trial, current)
                    accepted |= better
                    if bool(accepted.all()):
                        break
                    step_size = torch.where(accepted.unsqueeze(1), step_size, step_size / 2)
        return trust * partner


def _is_real(value: object) -> bool:
    """A real number (not a bool, not a string): what a trust value must be."""
    return isinstance(value, int | float) and not isinstance(value, bool)
