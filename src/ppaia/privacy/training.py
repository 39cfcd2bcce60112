"""A privacy mechanism at work in one run: per-peer noise, budget, accounting (rows = peers)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import ValidationError

from ppaia.learning.local import PrivateSteps, poisson_rate, steps_per_epoch
from ppaia.privacy.accountant import (
    PeerAccountant,
    PrivacyState,
    epsilon_spent,
    noise_for_target,
    state_problems,
    target_tolerance,
)
from ppaia.privacy.mechanisms import DPSGD, NOISE_RANGE, PrivacyError, PrivacyMechanism, UpdateDP
from ppaia.seeding import Stream, derive_seed

__all__ = ["PrivateTraining"]

log = logging.getLogger("ppaia.privacy")


class PrivateTraining:
    """Chooses each peer's noise, keeps peers within their ε budget, and records what they spend."""

    def __init__(
        self,
        mechanism: PrivacyMechanism,
        counts: torch.Tensor,
        *,
        batch_size: int,
        epochs: int,
        rounds: int,
        seed: int,
        ids: torch.Tensor | None = None,
    ) -> None:
        """Row k of `counts` and of every peer mask is peer ``ids[k]`` (k when None), its noise's key."""
        self.mechanism, self.seed = mechanism, seed
        self.ids = torch.arange(counts.numel()) if ids is None else ids
        self.batch_size, self.epochs = batch_size, epochs
        self.accountant = PeerAccountant(counts.numel(), mechanism.delta)
        self.stopped: dict[int, int] = {}
        self.events: list[str] = []
        self.budget = mechanism.budget
        self.use_counts(counts)
        if isinstance(mechanism, DPSGD) and mechanism.target_epsilon is not None:
            target = mechanism.target_epsilon
            self.noise = torch.tensor(
                [
                    self._noise_for(target, float(r), int(s) * rounds)
                    for r, s in zip(self.rate, self.steps, strict=True)
                ],
                dtype=torch.float64,
            )
            self.budget = min(self.budget or float("inf"), target + target_tolerance(target))

    def _noise_for(self, target: float, rate: float, steps: int) -> float:
        """The noise multiplier that spends `target` over a peer's whole run, if one in NOISE_RANGE does."""
        delta = self.mechanism.delta
        low, high = NOISE_RANGE
        least, most = epsilon_spent(high, rate, steps, delta), epsilon_spent(low, rate, steps, delta)
        if not least <= target <= most:
            raise PrivacyError(
                f"privacy.target_epsilon={target:g}: {steps} steps at sampling rate {rate:.3g} spend ε "
                f"from {least:.3g} (noise multiplier {high:g}) to {most:.3g} ({low:g}); choose a target in "
                "that range"
            )
        return noise_for_target(target, delta, rate, steps)

    def use_counts(self, counts: torch.Tensor) -> None:
        """Per-peer sampling rate and steps per round for the data each peer trains on now."""
        if isinstance(self.mechanism, UpdateDP):  # one release of the whole update per round
            self.rate = torch.ones(counts.numel(), dtype=torch.float64)
            self.steps = torch.ones(counts.numel(), dtype=torch.long)
            self.noise = torch.full((counts.numel(),), self.mechanism.noise_multiplier, dtype=torch.float64)
            return
        self.rate = poisson_rate(counts, self.batch_size)
        self.steps = self.epochs * steps_per_epoch(counts, self.batch_size)
        if self.mechanism.noise_multiplier is not None:
            self.noise = torch.full((counts.numel(),), self.mechanism.noise_multiplier, dtype=torch.float64)

    def allowed(self, trainers: torch.Tensor, round_: int) -> torch.Tensor:
        """The trainers whose ε stays within budget after this round; the others stop for good."""
        trainers = trainers.clone()
        for peer in self.stopped:
            trainers[peer] = False
        if self.budget is None:
            return trainers
        peers = trainers.nonzero().flatten()
        after = self.accountant.epsilon_after(peers, self.noise, self.rate, self.steps)
        for peer, epsilon in zip(peers.tolist(), after.tolist(), strict=True):
            if epsilon > self.budget:
                trainers[peer] = False
                self.stopped[peer] = round_
                message = (
                    f"peer {peer} stops training at round {round_}: ε would reach {epsilon:.3g} "
                    f"> budget {self.budget:.3g}"
                )
                self.events.append(message)
                log.info(message)
        return trainers

    @property
    def releases_updates(self) -> bool:
        """Update-level DP: the parameters before the local phase are needed to release the update."""
        return isinstance(self.mechanism, UpdateDP)

    def private_steps(self) -> PrivateSteps | None:
        """DP-SGD's per-step clipping and noise for the trainer (None for update-level DP)."""
        mechanism = self.mechanism
        if not isinstance(mechanism, DPSGD):
            return None
        return PrivateSteps(mechanism.clip, self.noise.float(), mechanism.sampling, self.seed)

    def release(self, before: torch.Tensor, after: torch.Tensor, trainers: torch.Tensor, round_: int):
        """Update-level DP: what the trainers publish after their local phase (in place in `after`)."""
        if isinstance(self.mechanism, UpdateDP) and bool(trainers.any()):
            key = derive_seed(self.seed, Stream.PRIVACY, round_, 1)
            rows = trainers.to(after.device)  # `trainers` and the ids are the host's bookkeeping
            after[rows] = self.mechanism.release(before[rows], after[rows], key, self.ids[trainers])
        return after

    def spend(self, trainers: torch.Tensor) -> None:
        self.accountant.spend(trainers.nonzero().flatten(), self.noise, self.rate, self.steps)

    def epsilon(self) -> torch.Tensor:
        return self.accountant.epsilon()

    def state_dict(self) -> dict[str, Any]:
        """What every peer has spent (the accountant's history) and the round each stopped at its budget
        (None while it trains), JSON-ready: a restarted peer loads it to report the ε it had and to stay
        stopped (:class:`~ppaia.privacy.accountant.PrivacyState`)."""
        stopped = [self.stopped.get(peer) for peer in range(len(self.accountant.history))]
        return {"accountant": self.accountant.state_dict(), "stopped": stopped}

    def load_state_dict(self, state: Mapping[str, Any] | PrivacyState) -> None:
        """Continue from `state` (from :meth:`state_dict`); PrivacyError, nothing changed, for a state
        this run could not have saved (see :meth:`PeerAccountant.load_state_dict`)."""
        try:
            checked = PrivacyState.model_validate(state)
        except ValidationError as err:
            raise PrivacyError(f"not a privacy state ({state_problems(err)})") from None
        if len(checked.stopped) != len(checked.accountant.history):
            raise PrivacyError(
                f"a privacy state with {len(checked.stopped)} peers' stops and "
                f"{len(checked.accountant.history)} peers' histories"
            )
        self.accountant.load_state_dict(checked.accountant)
        self.stopped = {peer: round_ for peer, round_ in enumerate(checked.stopped) if round_ is not None}
