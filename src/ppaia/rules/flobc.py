"""FLoBC: trainers and validators, validation-gated updates and reward-penalty score weights.

FLoBC ("A Decentralized Blockchain-Based Federated Learning Framework", arXiv 2112.11873, IEEE BCCA
2022) reduced to what changes the models: the last `validators` peers (ids N−V..N−1) are
validators, all others trainers. Each round every trainer trains from the global model θ and uploads
its model θ'ᵢ; each validator v scores every candidate and θ itself on its own held-out data (accuracy),
S[v, i] and g[v], and finds update i valid iff S[v, i] ≥ decay · g[v]. An update is accepted iff at least
⌊2V/3⌋ + 1 validators find it valid. Each trainer's score moves by the mean accuracy gain of its model,
sᵢ ← max(sᵢ + (meanᵥ S[v, i] − meanᵥ g[v]), 0), and the scores are normalised to sum 1 over the trainers
(uniform if all are 0). The new global model, which every peer receives, is

    θ ← θ + Σ_{i accepted} wᵢ · (θ'ᵢ − θ),  wᵢ = sᵢ / Σ_{j accepted} sⱼ

so a rejected update does not shrink the step (no accepted update, or no score mass on the accepted ones:
θ stays). ``faithful = true`` follows the original instead: decay is 0 (every update is valid) and
wᵢ = sᵢ, normalised over all registered trainers, so a missing or rejected trainer shrinks the step.
Updates with NaN/Inf entries are always rejected (in both modes) and score 0 accuracy.

Only synchronous rounds (BSP) are simulated; the original's SSP and asynchronous schemes are future work.
Validators never train and hold the global model, which the rule takes from the first validator (an
attacking validator therefore corrupts it: FLoBC trusts its validator committee). Scores start at 1/T
for the T trainers; the original reset every score to 1/N whenever a peer registered. A round counts T
uploads (the trainers' models to the validators) and N downloads (the new global model to every peer).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, PrivateAttr

from ppaia.rules.base import RULES, CooperationRule, RoundContext, RoundPlan
from ppaia.topology.mixing import Mixing

__all__ = ["FLoBC"]


@RULES.register("flobc")
class FLoBC(CooperationRule):
    """FLoBC (BSP): validators gate the trainers' updates; accepted ones are weighted by learned scores."""

    uses_topology: ClassVar[bool] = False

    validators: int = Field(default=3, ge=1, description="V validators: the last V peers")
    decay: float = Field(default=0.9, ge=0, le=1, description="valid iff accuracy ≥ decay · global's")
    faithful: bool = Field(
        default=False, description="original: decay 0, weights normalised over all trainers"
    )

    _scores: torch.Tensor = PrivateAttr(default_factory=lambda: torch.empty(0, dtype=torch.float64))
    _start: torch.Tensor = PrivateAttr(default_factory=lambda: torch.empty(0, dtype=torch.float64))
    _round: int | None = PrivateAttr(default=None)
    _accepted: torch.Tensor = PrivateAttr(default_factory=lambda: torch.empty(0, dtype=torch.bool))
    _weights: torch.Tensor = PrivateAttr(default_factory=lambda: torch.empty(0, dtype=torch.float64))

    @property
    def needs_holdout(self) -> bool:
        """Validators score the candidates on their held-out data."""
        return True

    @property
    def threshold(self) -> float:
        """The decay actually used: 0 in faithful mode (every update is valid)."""
        return 0.0 if self.faithful else self.decay

    @property
    def quorum(self) -> int:
        """Validators that must find an update valid for it to be accepted: ⌊2V/3⌋ + 1."""
        return 2 * self.validators // 3 + 1

    def roles(self, n_peers: int) -> torch.Tensor:
        """True for the trainers (ids 0..N−V−1), False for the validators (the last V peers)."""
        if self.validators >= n_peers:
            raise ValueError(
                f"validators: need at least one trainer ({self.validators} validators among {n_peers} peers)"
            )
        return torch.arange(n_peers) < n_peers - self.validators

    def reset(self, n_peers: int) -> None:
        trainers = self.roles(n_peers)
        self._scores = torch.where(trainers, 1.0 / int(trainers.sum()), float("nan")).double()
        self._start = self._scores.clone()
        self._round = None
        self._accepted = torch.zeros(n_peers, dtype=torch.bool)
        self._weights = torch.zeros(n_peers, dtype=torch.float64)

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Each trainer's score (NaN for validators)."""
        return {"score": self._scores.clone()}

    @property
    def scores(self) -> torch.Tensor:
        """Each trainer's current score over peer ids (NaN for validators)."""
        return self._scores.clone()

    @property
    def last_accepted(self) -> torch.Tensor:
        """Whether each peer's update was accepted in the last round (False for validators)."""
        return self._accepted.clone()

    @property
    def last_weights(self) -> torch.Tensor:
        """Each peer's aggregation weight in the last round (0 for validators and rejected updates)."""
        return self._weights.clone()

    def initialize(self, params: torch.Tensor) -> torch.Tensor:
        return params[:1].expand_as(params).clone()

    def plan(self, ctx: RoundContext) -> RoundPlan:
        """The trainers train; one committee row over every peer's model is broadcast to all peers."""
        trainers = self.roles(ctx.n_peers)
        every = torch.arange(ctx.n_peers)
        weights = torch.full((ctx.n_peers,), float("nan"), dtype=torch.float64)  # decided in combine
        committee = Mixing(torch.zeros_like(every), every, weights, 1, every, torch.zeros_like(every))
        return RoundPlan(trainers=trainers, steps=[committee], transfers=int(trainers.sum()) + ctx.n_peers)

    def combine(self, params: torch.Tensor, step: Mixing, ctx: RoundContext) -> torch.Tensor:
        """Validate each trainer's update, update the scores and form the new global model."""
        if ctx.learner is None:
            raise ValueError("flobc needs the peers' held-out data (RoundContext.learner)")
        n = ctx.n_peers
        trainer_role = self.roles(n)
        if self._scores.numel() != n:
            self.reset(n)
        if self._round != ctx.round:  # per-peer form: every receiver recomputes the round from its start
            self._start, self._round = self._scores.clone(), ctx.round
        hood = step.gather(params)
        ids, values = hood.ids[0][hood.mask[0]], hood.values[0][hood.mask[0]]
        is_trainer = trainer_role[ids]
        validator_ids = ids[~is_trainer]
        if validator_ids.numel() != self.validators or not bool(is_trainer.any()):
            raise ValueError("flobc: the committee step must carry every validator's and a trainer's model")
        trainer_ids, candidates = ids[is_trainer], values[is_trainer]
        global_model = values[~is_trainer][0]
        finite = candidates.isfinite().all(-1)
        candidates = torch.where(finite.unsqueeze(-1), candidates, 0.0)

        # each validator scores every candidate and the global model on its own held-out data
        x, y, valid = ctx.learner.samples(validator_ids)
        models = torch.cat([candidates, global_model.unsqueeze(0)])
        logits = ctx.learner.logits(models.expand(validator_ids.numel(), *models.shape), x)  # [V, T+1, H, C]
        hits = (logits.argmax(-1) == y.unsqueeze(1)) & valid.unsqueeze(1)
        accuracy = hits.double().sum(-1) / valid.sum(-1, keepdim=True).clamp(min=1)  # [V, T+1]
        scored, reference = accuracy[:, :-1] * finite, accuracy[:, -1]

        votes = (scored >= self.threshold * reference.unsqueeze(1)) & finite
        accepted = votes.sum(0) >= self.quorum

        start = self._start[trainer_ids]
        scores = (start + (scored.mean(0) - reference.mean())).clamp(min=0)
        total = scores.sum()
        scores = scores / total if bool(total > 0) else torch.full_like(scores, 1 / scores.numel())
        if self.faithful:
            weights = scores * accepted
        else:
            mass = (scores * accepted).sum()
            weights = scores * accepted / mass if bool(mass > 0) else torch.zeros_like(scores)

        self._scores = self._start.clone()
        self._scores[trainer_ids] = scores
        self._accepted = torch.zeros(n, dtype=torch.bool).index_fill_(0, trainer_ids[accepted], True)
        self._weights = torch.zeros(n, dtype=torch.float64).index_copy_(0, trainer_ids, weights)

        update = torch.einsum("t,td->d", weights.to(params.dtype), candidates - global_model)
        return (global_model + update).unsqueeze(0)
