"""FLoBC: trainers and validators, validation-gated updates, reward-penalty scores, BSP/SSP/BAP sync.

FLoBC ("A Decentralized Blockchain-Based Federated Learning Framework", arXiv 2112.11873, IEEE BCCA
2022) reduced to what changes the models: the last `validators` peers (ids N−V..N−1) are validators, all
others (ids 0..T−1) trainers. Every engine round is one model release (version r) of the `sync` scheme
(:mod:`ppaia.rules.sync`), which decides on a simulated clock when the release happens and which trainers
contribute, each from the version it started training on (trainer i needs `compute` simulated seconds per
update; the last `stragglers` trainers need `slowdown` times longer). A contributor trains from its base
version θ_b and uploads θ'ᵢ; its update Δᵢ = θ'ᵢ − θ_b is *rebased* onto the current global model θ, so
a stale update is judged and applied as θ + Δᵢ. Each validator v scores every candidate θ + Δᵢ and θ itself
on its own held-out data (accuracy), S[v, i] and g[v], and finds update i valid iff S[v, i] ≥ decay · g[v].
An update is accepted iff at least ⌊2V/3⌋ + 1 validators find it valid. Each contributor's score moves by
the mean accuracy gain of its candidate, sᵢ ← max(sᵢ + (meanᵥ S[v, i] − meanᵥ g[v]), 0); the scores of
all registered trainers are then normalised to sum 1 (uniform if all are 0). The means are of the
accuracies as a ledger records them, in fixed point (:func:`to_fixed`, 10⁻⁶; :func:`fixed_mean`): the
numbers a committee can put on a chain, from which the ledger parties (:mod:`ppaia.ledger.parties`)
recompute the scores. The new global model, which every peer receives, is

    θ ← θ + Σ_{i accepted} wᵢ · Δᵢ,  wᵢ = sᵢ / Σ_{j accepted} sⱼ

so a rejected update does not shrink the step (no accepted update, or no score mass on the accepted ones:
θ stays). ``faithful = true`` follows the original instead: decay is 0 (every update is valid) and
wᵢ = sᵢ, normalised over all registered trainers, so a missing or rejected trainer shrinks the step.
Updates with NaN/Inf entries are always rejected (in both modes) and score 0 accuracy.
``reward_penalty = false`` keeps every score at 1/T, so accepted updates are simply averaged.

The aggregation is a fixed sequence of float operations over the committee's inputs in peer-id order, so
every validator computing it gets bit-identical parameters and hence the same model hash (tested); the
ledger parties run the same operations (:meth:`FLoBC.rescore`, :meth:`FLoBC.apply_updates`), so a ledger
run whose every update is accepted releases the simulator's models bit for bit.
Validators never train and hold the global model, which the rule takes from the first validator (an
attacking validator therefore corrupts it: FLoBC trusts its validator committee). Scores start at 1/T
for the T trainers; the original reset every score to 1/N whenever a peer registered. A release counts
the scheme's uploads (BAP resubmissions included) plus N downloads of the new global model. The rule keeps
every released global model (stale updates need their base): memory grows by one model per round.
Its :meth:`FLoBC.state_dict` holds the scores and those models, so a run continues after a restart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import Field, PrivateAttr, field_validator

from ppaia.registry import SpecError
from ppaia.rules.base import (
    RULES,
    CooperationRule,
    RoundContext,
    RoundPlan,
    RuleStateError,
    checked_tensor,
    names_text,
)
from ppaia.rules.sync import SYNC_SCHEMES, Release, SyncScheme
from ppaia.topology.mixing import Mixing

__all__ = ["SCORE_SCALE", "CommitteeRound", "FLoBC", "fixed_mean", "to_fixed"]

VERSION_NAME = re.compile(r"version\.(0|[1-9][0-9]{0,9})")  # a released model's name in a state
SCORE_SUM_TOLERANCE = 1e-6  # the trainers' scores are normalised to sum 1
SCORE_SCALE = 10**6  # a ledger's fixed point: 1.0 is recorded as 10**6 (the registry contract's SCORE_SCALE)


def to_fixed(values: torch.Tensor | float) -> torch.Tensor:
    """Accuracies or scores as a ledger records them: int64 multiples of 1 / SCORE_SCALE, the nearest
    (ties to even, as Python's ``round``), computed in float64. The one quantisation of the simulator's
    FLoBC and the ledger (:func:`ppaia.ledger.client.to_fixed`)."""
    return torch.round(torch.as_tensor(values, dtype=torch.float64) * SCORE_SCALE).long()


def fixed_mean(fixed: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The mean of fixed-point values along `dim`, as float64 (0 over none): the integers' exact sum
    divided once, so the result does not depend on the order or grouping in which a party reads them."""
    count = max(fixed.shape[dim], 1)
    return fixed.sum(dim).double() / (count * SCORE_SCALE)


@dataclass(frozen=True)
class CommitteeRound:
    """What the validator committee saw and decided in one release (what goes on a ledger).

    `candidates` are the contributors' rebased models θ + Δᵢ ([T_r, D], rows in `trainers` order);
    `accuracy[v, i]` is validator v's score of candidate i and `votes[v, i]` its verdict.
    """

    round: int
    trainers: torch.Tensor
    base_versions: torch.Tensor
    validators: torch.Tensor
    candidates: torch.Tensor
    accuracy: torch.Tensor
    reference: torch.Tensor
    votes: torch.Tensor
    accepted: torch.Tensor
    scores: torch.Tensor
    weights: torch.Tensor
    model: torch.Tensor


@RULES.register("flobc")
class FLoBC(CooperationRule):
    """FLoBC: validators gate the trainers' updates; accepted ones are weighted by learned scores."""

    uses_topology: ClassVar[bool] = False
    broadcasts_initial: ClassVar[bool] = True  # the server's initial model is everyone's

    validators: int = Field(default=3, ge=1, description="V validators: the last V peers")
    decay: float = Field(default=0.9, ge=0, le=1, description="valid iff accuracy ≥ decay · global's")
    faithful: bool = Field(
        default=False, description="original: decay 0, weights normalised over all trainers"
    )
    reward_penalty: bool = Field(default=True, description="false: scores stay uniform (plain mean)")
    sync: str = Field(default="bsp", description="release schedule: bsp(period), ssp(period), bap(quota)")
    compute: float = Field(
        default=1.0, gt=0, allow_inf_nan=False, description="simulated seconds per local update"
    )
    stragglers: int = Field(default=0, ge=0, description="the last S trainers are stragglers")
    slowdown: float = Field(
        default=3.0, ge=1, allow_inf_nan=False, description="a straggler's compute time multiplier"
    )

    _scores: torch.Tensor = PrivateAttr(default_factory=lambda: torch.empty(0, dtype=torch.float64))
    _start: torch.Tensor = PrivateAttr(default_factory=lambda: torch.empty(0, dtype=torch.float64))
    _round: int | None = PrivateAttr(default=None)
    _releases: list[Release] = PrivateAttr(default_factory=list)
    _versions: dict[int, torch.Tensor] = PrivateAttr(default_factory=dict)
    _last: CommitteeRound | None = PrivateAttr(default=None)

    @field_validator("sync")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        try:
            return SYNC_SCHEMES.create(value).label()
        except SpecError as err:
            raise ValueError(str(err)) from None

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

    def scheme(self) -> SyncScheme:
        return SYNC_SCHEMES.create(self.sync)

    def check(self, n_peers: int) -> None:
        if self.validators >= n_peers:
            raise ValueError(
                f"validators: need at least one trainer ({self.validators} validators among {n_peers} peers)"
            )
        if self.stragglers > n_peers - self.validators:
            raise ValueError(
                f"stragglers: {self.stragglers} stragglers among {n_peers - self.validators} trainers"
            )

    def roles(self, n_peers: int) -> torch.Tensor:
        """True for the trainers (ids 0..N−V−1), False for the validators (the last V peers)."""
        self.check(n_peers)
        return torch.arange(n_peers) < n_peers - self.validators

    def compute_times(self, n_peers: int) -> list[float]:
        """Each trainer's simulated seconds per update: `compute`, times `slowdown` for the last S."""
        trainers = n_peers - self.validators
        return [
            self.compute * (self.slowdown if i >= trainers - self.stragglers else 1.0)
            for i in range(trainers)
        ]

    def reset(self, n_peers: int, rows: torch.Tensor | None = None) -> None:
        trainers = self.roles(n_peers)
        scores = torch.full((n_peers,), float("nan"), dtype=torch.float64)
        self._scores = scores.masked_fill_(trainers, 1.0 / int(trainers.sum()))  # 1/T in float64
        self._start = self._scores.clone()
        self._round = None
        self._releases, self._versions, self._last = [], {}, None

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Each trainer's score (NaN for validators), and the last release's committee outcome per peer:
        `approvals` the validators that voted for its update and `accepted` 1 or 0 (both NaN for a peer
        that sent none): what a ledger records of a release, and the dashboard lists as its events."""
        n, last = self._scores.numel(), self._last
        approvals = torch.full((n,), float("nan"), dtype=torch.float64)
        accepted = approvals.clone()
        if last is not None:
            approvals[last.trainers] = last.votes.sum(0).double()
            accepted[last.trainers] = last.accepted.double()
        return {"score": self._scores.clone(), "approvals": approvals, "accepted": accepted}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``score``: each trainer's score over peer ids (0 for validators, which have none: every value is
        finite, as the safetensors codec requires); ``version.<r>``: every released global model, which
        later stale updates may need as their base."""
        versions = {f"version.{r}": model.clone() for r, model in self._versions.items()}
        return {"score": self._scores.nan_to_num(nan=0.0), **versions}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Scores and released models back (from :meth:`state_dict`; of the size :meth:`reset` gave, if
        called). The last release's committee record (:attr:`last_round`) starts empty again.

        Refused: other names, dtypes or shapes, scores that are not those of this many trainers and
        validators (finite, ≥ 0, summing to 1; 0 for validators), and models that are not finite."""
        if "score" not in state:
            raise RuleStateError(f"rule {self.name!r}: a state without 'score' ({names_text(state)})")
        scores = checked_tensor(self.name, "score", state["score"], torch.float64, 1)
        n = scores.numel()
        if self._scores.numel() and n != self._scores.numel():
            raise RuleStateError(
                f"rule {self.name!r}: scores of {n} peers, but this run has {self._scores.numel()}"
            )
        try:
            roles = self.roles(n)
        except ValueError as err:
            raise RuleStateError(f"rule {self.name!r}: scores of {n} peers: {err}") from None
        trainers = scores[roles]
        if not (
            bool((scores[~roles] == 0).all())
            and bool(trainers.isfinite().all())
            and bool((trainers >= 0).all())
            and abs(trainers.sum().item() - 1) <= SCORE_SUM_TOLERANCE
        ):
            raise RuleStateError(
                f"rule {self.name!r}: scores that are not {n - self.validators} trainers' (finite, ≥ 0, "
                f"summing to 1) followed by {self.validators} validators' (0)"
            )
        self._versions = self._checked_versions({name: v for name, v in state.items() if name != "score"})
        scores = torch.where(roles, scores, float("nan"))
        self._scores, self._start, self._round, self._last = scores, scores.clone(), None, None

    def _checked_versions(self, state: Mapping[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        """The released models in `state`, by version: one flat float shape and dtype, finite values."""
        unknown = [name for name in state if not (isinstance(name, str) and VERSION_NAME.fullmatch(name))]
        if unknown:
            raise RuleStateError(f"rule {self.name!r}: unknown state entries {names_text(unknown)}")
        versions: dict[int, torch.Tensor] = {}
        for name, value in state.items():
            first = next(iter(versions.values()), None)
            dtype = first.dtype if first is not None else getattr(value, "dtype", torch.float32)
            model = checked_tensor(self.name, name, value, dtype, 1)
            if not model.is_floating_point() or (first is not None and model.shape != first.shape):
                raise RuleStateError(f"rule {self.name!r}: {name!r} is not a model like the others")
            if not bool(model.isfinite().all()):
                raise RuleStateError(f"rule {self.name!r}: {name!r} holds values that are not finite")
            versions[int(name.removeprefix("version."))] = model.clone()
        return versions

    def peer_state(self, peer: int, ids: Sequence[str | None]) -> dict[str, float]:
        """Refused: FLoBC's state is the committee's (every validator holds the same scores and models),
        not one peer's; it runs in the simulator and on the ledger, which keep it with :meth:`state_dict`."""
        raise RuleStateError(f"rule {self.name!r} keeps the committee's state, not a peer's: use state_dict")

    @property
    def scores(self) -> torch.Tensor:
        """Each trainer's current score over peer ids (NaN for validators)."""
        return self._scores.clone()

    @property
    def last_round(self) -> CommitteeRound | None:
        """The committee's inputs and decisions in the last release (None before the first)."""
        return self._last

    @property
    def last_accepted(self) -> torch.Tensor:
        """Per peer id: whether its update was accepted in the last release (False if it sent none)."""
        last, n = self._last, self._scores.numel()
        accepted = torch.zeros(n, dtype=torch.bool)
        return accepted if last is None else accepted.index_put_((last.trainers,), last.accepted)

    @property
    def last_weights(self) -> torch.Tensor:
        """Per peer id: its aggregation weight in the last release (0 if it sent none or was rejected)."""
        last, n = self._last, self._scores.numel()
        weights = torch.zeros(n, dtype=torch.float64)
        return weights if last is None else weights.index_put_((last.trainers,), last.weights)

    def rescore(
        self, start: torch.Tensor, contributors: torch.Tensor, gain: torch.Tensor, accepted: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One release's reward-penalty step (the module docstring), the one arithmetic the simulator and
        every ledger party use, so that they compute the same bits.

        `start` holds every registered trainer's score before the release (float64, [T]); `contributors`
        are the contributing trainers' indices into it, `gain` their candidates' mean accuracy gain and
        `accepted` their verdicts. Returns every trainer's score after the release and the contributors'
        aggregation weights."""
        scores = start.clone()
        if self.reward_penalty:
            scores[contributors] = (start[contributors] + gain).clamp(min=0)
        total = scores.sum()
        scores = scores / total if bool(total > 0) else torch.full_like(scores, 1 / scores.numel())
        own = scores[contributors]
        if self.faithful:
            return scores, own * accepted
        mass = (own * accepted).sum()
        return scores, own * accepted / mass if bool(mass > 0) else torch.zeros_like(own)

    @staticmethod
    def apply_updates(model: torch.Tensor, deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """θ + Σ wᵢ Δᵢ over the accepted updates only (`deltas` [A, D] in trainer order, `weights` [A]
        float64, cast to the model's dtype); θ itself (a copy) if none was accepted. The one float
        arithmetic of a release, the simulator's and every ledger party's: a party holds the accepted
        updates alone, so a rejected update's zero weight must not enter the sum here either."""
        if not deltas.shape[0]:
            return model.clone()
        return model + torch.einsum("t,td->d", weights.to(deltas.device, model.dtype), deltas)

    def _base_model(self, version: int, round_: int, global_model: torch.Tensor) -> torch.Tensor:
        """The global model of `version`, which a contributor of round `round_` trained from."""
        if version == round_ - 1:
            return global_model
        if version not in self._versions:
            raise ValueError(f"flobc: round {round_} has an update from version {version}, which is unknown")
        return self._versions[version]

    def release(self, ctx: RoundContext) -> Release:
        """Round r's release (version r) of the sync schedule, computed ahead in blocks."""
        if len(self._releases) < ctx.round:
            count = max(ctx.round, 2 * len(self._releases), 16)
            self._releases = self.scheme().schedule(self.compute_times(ctx.n_peers), count)
        return self._releases[ctx.round - 1]

    def plan(self, ctx: RoundContext) -> RoundPlan:
        """This release's contributors train; one committee row over their and the validators' models
        is broadcast to every peer."""
        n, roles = ctx.n_peers, self.roles(ctx.n_peers)
        release = self.release(ctx)
        contributors = torch.tensor([c.trainer for c in release.contributions])
        members = torch.cat([contributors, (~roles).nonzero().flatten()])
        every = torch.arange(n)
        weights = torch.full((members.numel(),), float("nan"), dtype=torch.float64)  # decided in combine
        committee = Mixing(torch.zeros_like(members), members, weights, 1, every, torch.zeros_like(every))
        trainers = torch.zeros(n, dtype=torch.bool).index_fill_(0, contributors, True)
        staleness = list(release.staleness.values())
        info = {
            "sim_time": release.time,
            "contributors": len(staleness),
            "staleness_mean": sum(staleness) / len(staleness),
        }
        return RoundPlan(trainers=trainers, steps=[committee], transfers=release.uploads + n, info=info)

    def prepare(self, params: torch.Tensor, plan: RoundPlan, ctx: RoundContext) -> torch.Tensor:
        """Record the current global model as version r − 1; each contributor starts from its base."""
        roles = self.roles(ctx.n_peers)
        self._versions[ctx.round - 1] = params[int(roles.sum())].clone()  # the first validator holds it
        for contribution in self.release(ctx).contributions:
            params[contribution.trainer] = self._versions[contribution.base_version]
        return params

    def combine(self, params: torch.Tensor, step: Mixing, ctx: RoundContext) -> torch.Tensor:
        """Validate each rebased update, update the scores and form the new global model."""
        if ctx.learner is None:
            raise ValueError("flobc needs the peers' held-out data (RoundContext.learner)")
        n = ctx.n_peers
        roles = self.roles(n)
        if self._scores.numel() != n:
            self.reset(n)
        if self._round != ctx.round:  # per-peer form: every receiver recomputes the round from its start
            self._start, self._round = self._scores.clone(), ctx.round
        hood = step.gather(params)
        ids, values = hood.ids[0][hood.mask[0]].cpu(), hood.values[0][hood.mask[0]]  # ids: host bookkeeping
        is_trainer = roles[ids]
        validator_ids = ids[~is_trainer]
        if validator_ids.numel() != self.validators or not bool(is_trainer.any()):
            raise ValueError("flobc: the committee step must carry every validator's and a trainer's model")
        trainer_ids, trained = ids[is_trainer], values[is_trainer]
        global_model = values[~is_trainer][0]
        base_of = {c.trainer: c.base_version for c in self.release(ctx).contributions}
        bases = torch.tensor([base_of.get(i, ctx.round - 1) for i in trainer_ids.tolist()])
        base_models = torch.stack([self._base_model(b, ctx.round, global_model) for b in bases.tolist()])
        deltas = trained - base_models.to(trained.dtype)
        finite = deltas.isfinite().all(-1)
        deltas = torch.where(finite.unsqueeze(-1), deltas, 0.0)
        candidates = global_model + deltas

        # each validator scores every candidate and the global model on its own held-out data
        models = torch.cat([candidates, global_model.unsqueeze(0)])
        accuracy = ctx.learner.accuracy(models.expand(validator_ids.numel(), *models.shape), validator_ids)
        # the committee's verdicts are bookkeeping on the host, with the scores: [V, T + 1] values come back
        accuracy, finite = accuracy.cpu(), finite.cpu()
        scored, reference = accuracy[:, :-1] * finite, accuracy[:, -1]

        votes = (scored >= self.threshold * reference.unsqueeze(1)) & finite
        accepted = votes.sum(0) >= self.quorum

        # reward-penalty from the accuracies as a ledger records them (the parties read them from the
        # chain and run the same rescore); the trainers are peers 0..T-1
        scores_all = self._start.clone()
        trainers = int(roles.sum())
        gain = fixed_mean(to_fixed(scored)) - fixed_mean(to_fixed(reference))
        scores_all[:trainers], weights = self.rescore(self._start[:trainers], trainer_ids, gain, accepted)
        scores = scores_all[trainer_ids]
        self._scores = scores_all

        model = self.apply_updates(global_model, deltas[accepted.to(deltas.device)], weights[accepted])
        self._last = CommitteeRound(
            ctx.round,
            trainer_ids,
            bases,
            validator_ids,
            candidates,
            scored,
            reference,
            votes,
            accepted,
            scores,
            weights,
            model,
        )
        return model.unsqueeze(0)
