"""Every peer's cumulative (ε, δ), composed with Opacus' RDP accountant (not our own arithmetic)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

from ppaia.privacy.mechanisms import ACCOUNTABLE, PrivacyError, accountable

__all__ = [
    "MAX_STEPS",
    "ORDERS",
    "AccountantState",
    "PeerAccountant",
    "PrivacyState",
    "epsilon_from_rdp",
    "epsilon_spent",
    "noise_for_target",
    "rdp_per_step",
    "state_problems",
    "target_tolerance",
]

# Opacus' default RDP orders stop at 63; small noise multipliers (update-level DP at large ε) need higher ones
# Opacus is imported where it is used: `import opacus` takes ~1.3 s (most of `import ppaia`), which every
# command and every peer process would otherwise pay without using privacy.
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 96, 128, 192, 256, 384, 512, 1024]
TARGET_TOLERANCE = 0.01  # Opacus' search for a target ε stops within this much of it (absolute) ...
RELATIVE_TOLERANCE = 1e-4  # ... or this share of a large target: 0.01 of ε = 1e8 would take ~60 halvings
MAX_STEPS = 2**53  # steps one history entry may count: beyond, a float64 no longer holds every count


@cache
def rdp_per_step(noise: float, rate: float) -> np.ndarray:
    """Rényi DP of one subsampled Gaussian step at every order (Opacus' analysis); RDP adds up over steps."""
    from opacus.accountants.analysis.rdp import compute_rdp

    if noise == 0:
        return np.full(len(ORDERS), np.inf)
    return np.asarray(compute_rdp(q=rate, noise_multiplier=noise, steps=1, orders=ORDERS), dtype=np.float64)


def epsilon_from_rdp(rdp: np.ndarray, delta: float) -> float:
    """ε of an RDP curve over ORDERS at δ (Opacus' conversion); 0 for no steps, inf for no noise."""
    if not rdp.any():
        return 0.0
    if np.isinf(rdp).all():
        return float("inf")
    from opacus.accountants.analysis.rdp import get_privacy_spent

    return float(get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)[0])


def epsilon_spent(noise: float, rate: float, steps: int, delta: float) -> float:
    """ε after `steps` subsampled Gaussian steps at (noise, rate)."""
    return epsilon_from_rdp(steps * rdp_per_step(noise, rate), delta)


def _accountable_noise(noise: float) -> float:
    if not accountable(noise):
        raise ValueError(f"noise multiplier {noise:g}: {ACCOUNTABLE}")
    return noise


Noise = Annotated[StrictFloat, Field(allow_inf_nan=False), AfterValidator(_accountable_noise)]
Rate = Annotated[StrictFloat, Field(gt=0, le=1, allow_inf_nan=False)]
Steps = Annotated[StrictInt, Field(ge=1, le=MAX_STEPS)]
Round = Annotated[StrictInt, Field(ge=1, le=2**31 - 1)]


class AccountantState(BaseModel):
    """:meth:`PeerAccountant.state_dict`, checked: per peer, its history of (noise multiplier, sampling
    rate, steps), each (noise, rate) once — as Opacus' accountants keep ``history`` — and the δ of its ε."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mechanism: Literal["rdp"]
    delta: Annotated[StrictFloat, Field(gt=0, lt=1, allow_inf_nan=False)]
    history: list[list[tuple[Noise, Rate, Steps]]]


class PrivacyState(BaseModel):
    """:meth:`PrivateTraining.state_dict`, checked: the accountant's state and, per peer, the round it
    stopped training at its budget (None while it trains)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accountant: AccountantState
    stopped: list[Round | None]


def state_problems(err: ValidationError) -> str:
    """The first problems pydantic found in a state, one line, without echoing the (maybe huge) input."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'the state'}: {e['msg']}" for e in err.errors()[:3])


def _rdp(history: Mapping[tuple[float, float], int]) -> np.ndarray:
    """A peer's RDP curve: the sum of steps × one step's RDP over its history (RDP composes additively),
    in a fixed order, so equal histories give bit-identical curves and hence equal ε."""
    rdp = np.zeros(len(ORDERS))
    for (noise, rate), steps in sorted(history.items()):
        rdp += steps * rdp_per_step(noise, rate)
    return rdp


class PeerAccountant:
    """Each peer's history of (noise multiplier, sampling rate) → steps, and the RDP curve over ORDERS it
    adds up to; ε by Opacus' RDP → (ε, δ) conversion.

    This is what Opacus' RDPAccountant computes for the same history (its RDP is the sum over the
    history), kept per peer. Being the history, not a running sum, a :meth:`state_dict` restores every
    curve bit for bit and can be checked: it holds only steps the accountant could have recorded.
    """

    def __init__(self, n_peers: int, delta: float) -> None:
        self.delta = delta
        self.history: list[dict[tuple[float, float], int]] = [{} for _ in range(n_peers)]
        self.rdp = np.zeros((n_peers, len(ORDERS)))
        self._spent: torch.Tensor | None = None  # ε of every peer, until the next spend

    def _epsilon(self, rdp: np.ndarray) -> float:
        return epsilon_from_rdp(rdp, self.delta)

    def _after(
        self, peer: int, noise: torch.Tensor, rate: torch.Tensor, steps: torch.Tensor
    ) -> dict[tuple[float, float], int]:
        """Peer `peer`'s history after `steps[peer]` more steps at (noise[peer], rate[peer])."""
        history = dict(self.history[peer])
        if int(steps[peer]) > 0:
            key = (float(noise[peer]), float(rate[peer]))
            history[key] = history.get(key, 0) + int(steps[peer])
        return history

    def epsilon(self) -> torch.Tensor:
        """Each peer's ε so far."""
        if self._spent is None:
            self._spent = torch.tensor([self._epsilon(row) for row in self.rdp], dtype=torch.float64)
        return self._spent.clone()

    def epsilon_after(
        self, peers: torch.Tensor, noise: torch.Tensor, rate: torch.Tensor, steps: torch.Tensor
    ) -> torch.Tensor:
        """Each listed peer's ε if it took `steps` more steps at (noise, rate); nothing is recorded."""
        after = [self._epsilon(_rdp(self._after(p, noise, rate, steps))) for p in peers.tolist()]
        return torch.tensor(after, dtype=torch.float64)

    def spend(
        self, peers: torch.Tensor, noise: torch.Tensor, rate: torch.Tensor, steps: torch.Tensor
    ) -> None:
        """Record `steps[p]` steps at (noise[p], rate[p]) for every listed peer p."""
        for peer in peers.tolist():
            self.history[peer] = self._after(peer, noise, rate, steps)
            self.rdp[peer] = _rdp(self.history[peer])
            self._spent = None

    def state_dict(self) -> dict[str, Any]:
        """``{"mechanism": "rdp", "delta": δ, "history": per peer [(noise, rate, steps), ...]}``: all it
        needs to recompute every ε (JSON-ready)."""
        history = [[(noise, rate, steps) for (noise, rate), steps in sorted(h.items())] for h in self.history]
        return {"mechanism": "rdp", "delta": self.delta, "history": history}

    def load_state_dict(self, state: Mapping[str, Any] | AccountantState) -> None:
        """Continue from `state` (from :meth:`state_dict`). PrivacyError, the accountant unchanged, for a
        state it could not have saved: another δ or number of peers, a (noise, rate) listed twice for a
        peer, or an entry outside what it accounts for (see :class:`AccountantState`)."""
        try:
            checked = AccountantState.model_validate(state)
        except ValidationError as err:
            raise PrivacyError(f"not an accountant state ({state_problems(err)})") from None
        if checked.delta != self.delta or len(checked.history) != len(self.history):
            raise PrivacyError(
                f"an accountant state of {len(checked.history)} peers at δ = {checked.delta:g}, but this "
                f"accountant has {len(self.history)} at δ = {self.delta:g}"
            )
        history = [{(noise, rate): steps for noise, rate, steps in entries} for entries in checked.history]
        repeated = [p for p, entries in enumerate(checked.history) if len(history[p]) < len(entries)]
        if repeated:
            raise PrivacyError(f"an accountant state lists a (noise, rate) twice for peer {repeated[0]}")
        self.history = history
        self.rdp = np.stack([_rdp(h) for h in history]) if history else np.zeros((0, len(ORDERS)))
        self._spent = None


@cache
def noise_for_target(target_epsilon: float, delta: float, rate: float, steps: int) -> float:
    """The noise multiplier that spends `target_epsilon` in `steps` steps at `rate` (Opacus' search).

    The target must be reachable (see :meth:`PrivateTraining` which checks it): Opacus' bisection otherwise
    gives up ("budget too low") or, for a target beyond any noise, descends to z ≈ 0 where its series
    divides by zero or never ends."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=rate,
            steps=steps,
            accountant="rdp",
            epsilon_tolerance=target_tolerance(target_epsilon),
            alphas=ORDERS,
        )
    )


def target_tolerance(target_epsilon: float) -> float:
    """How far below a target ε the noise search may stop (the ε it spends is at most the target)."""
    return max(TARGET_TOLERANCE, RELATIVE_TOLERANCE * target_epsilon)
