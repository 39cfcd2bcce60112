"""Differential privacy for local training: what each mechanism protects, and its noise.

* ``update_dp`` — update-level Gaussian mechanism (what the gossip + DP tutorial used): after its local
  phase a peer clips its round update Δ = θ_after − θ_before to ℓ2 norm C and adds N(0, σ²) to every
  coordinate, σ = C·√(2 ln(1.25/δ))/ε per release (the classical Gaussian mechanism). It protects the
  peer's *whole update of one round*: neighbours cannot tell whether the peer's data set was replaced by
  any other. One release per round.
* ``dp_sgd`` — record-level DP-SGD: per-sample gradients are clipped to C, summed, and Gaussian noise
  of standard deviation z·C is added at every step. It protects each *single training record*: the
  models a peer sends reveal little about whether any one record was in its data.

Both are accounted with Opacus' RDP accountant (see :mod:`ppaia.privacy.accountant`).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from ppaia.learning.local import clip_rows
from ppaia.registry import Component, Registry
from ppaia.seeding import peer_normal

__all__ = ["DPSGD", "NOISE_RANGE", "PRIVACY", "PrivacyError", "PrivacyMechanism", "UpdateDP", "accountable"]

# Noise multipliers z the RDP accountant (Opacus' analysis) computes finitely and quickly at every sampling
# rate: below ~1e-150 its series divides by z² = 0 or never ends, above ~1e154 z² overflows, and past ~1e4
# the series at rate 0.5 takes seconds per step. Outside this range a run says nothing: z < 1e-6 already
# gives ε > 1e11 per step, and beyond z = 1e3 ε sits at the (ε, δ) conversion's floor (~0.0035 at δ = 1e-5).
NOISE_RANGE = (1e-6, 1e3)


class PrivacyError(ValueError):
    """Privacy settings the accountant cannot account for; the message names the option."""


ACCOUNTABLE = f"the accountant handles 0 (no noise) or {NOISE_RANGE[0]:g} to {NOISE_RANGE[1]:g}"


def accountable(noise: float) -> bool:
    """Whether the accountant can account for noise multiplier `noise`: 0 or within :data:`NOISE_RANGE`."""
    return noise == 0 or NOISE_RANGE[0] <= noise <= NOISE_RANGE[1]


class PrivacyMechanism(Component):
    """A differential-privacy mechanism applied to every peer's local training."""

    record_level: ClassVar[bool]
    delta: float = Field(default=1e-5, gt=0, lt=1, description="δ of every (ε, δ) guarantee")
    budget: float | None = Field(default=None, gt=0, description="ε a peer may spend; then it stops training")


PRIVACY: Registry[PrivacyMechanism] = Registry("privacy mechanism")


@PRIVACY.register("update_dp")
class UpdateDP(PrivacyMechanism):
    """Update-level Gaussian mechanism: clip each round's update to C, add N(0, σ²), σ from (ε, δ)."""

    record_level: ClassVar[bool] = False
    clip: float = Field(default=2.0, gt=0, description="ℓ2 bound C of a round's update")
    epsilon: float = Field(
        default=8.0, gt=0, allow_inf_nan=True, description="ε per release (inf: clip only)"
    )

    @model_validator(mode="after")
    def _accountable(self) -> UpdateDP:
        if not accountable(self.noise_multiplier):
            raise PrivacyError(
                f"epsilon={self.epsilon:g} (delta={self.delta:g}) needs noise multiplier "
                f"{self.noise_multiplier:.3g}; {ACCOUNTABLE}"
            )
        return self

    @property
    def sigma(self) -> float:
        """σ = C·√(2 ln(1.25/δ)) / ε (0 when ε is infinite)."""
        return (
            0.0
            if math.isinf(self.epsilon)
            else self.clip * math.sqrt(2 * math.log(1.25 / self.delta)) / self.epsilon
        )

    @property
    def noise_multiplier(self) -> float:
        return self.sigma / self.clip

    def release(
        self, before: torch.Tensor, after: torch.Tensor, key: int, peers: torch.Tensor
    ) -> torch.Tensor:
        """The parameters each row publishes: before + clip(after − before) + N(0, σ²).

        Row k is peer ``peers[k]``; its noise is its own counter-based stream under `key`
        (:func:`ppaia.seeding.peer_normal`), the same whichever peers release with it: drawn on the host,
        as every keyed draw is, so a seed gives the same noise on any device.
        """
        update = clip_rows(after - before, self.clip)
        if self.sigma:
            noise = peer_normal(key, peers, update.shape[1], update.dtype).to(update.device)
            update = update + self.sigma * noise
        return before + update


@PRIVACY.register("dp_sgd")
class DPSGD(PrivacyMechanism):
    """Record-level DP-SGD: per-sample gradients clipped to C, Gaussian noise z·C at every step."""

    record_level: ClassVar[bool] = True
    clip: float = Field(default=1.0, gt=0, description="ℓ2 bound C of each per-sample gradient")
    noise_multiplier: float | None = Field(default=None, ge=0, description="z; or give target_epsilon")
    target_epsilon: float | None = Field(default=None, gt=0, description="pick z up front for the whole run")
    sampling: Literal["poisson", "shuffle"] = Field(default="poisson", description="how batches are drawn")

    @model_validator(mode="after")
    def _one_way_to_set_noise(self) -> DPSGD:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier and target_epsilon")
        if self.noise_multiplier is not None and not accountable(self.noise_multiplier):
            raise PrivacyError(f"noise_multiplier={self.noise_multiplier:g}: {ACCOUNTABLE}")
        return self
