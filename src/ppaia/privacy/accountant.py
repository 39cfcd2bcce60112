"""Every peer's cumulative (ε, δ), composed with Opacus' RDP accountant (not our own arithmetic)."""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

__all__ = [
    "ORDERS",
    "PeerAccountant",
    "epsilon_from_rdp",
    "epsilon_spent",
    "noise_for_target",
    "rdp_per_step",
    "target_tolerance",
]

# Opacus' default RDP orders stop at 63; small noise multipliers (update-level DP at large ε) need higher ones
# Opacus is imported where it is used: `import opacus` takes ~1.3 s (most of `import ppaia`), which every
# command and every peer process would otherwise pay without using privacy.
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 96, 128, 192, 256, 384, 512, 1024]
TARGET_TOLERANCE = 0.01  # Opacus' search for a target ε stops within this much of it (absolute) ...
RELATIVE_TOLERANCE = 1e-4  # ... or this share of a large target: 0.01 of ε = 1e8 would take ~60 halvings


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


class PeerAccountant:
    """Each peer's RDP curve over ORDERS, added up step by step; ε by Opacus' RDP → (ε, δ) conversion.

    This is what Opacus' RDPAccountant computes for a history of steps (its RDP is the sum over the
    history), kept as one vector per peer so a round costs one addition instead of a new analysis.
    """

    def __init__(self, n_peers: int, delta: float) -> None:
        self.delta = delta
        self.rdp = np.zeros((n_peers, len(ORDERS)))
        self._spent: torch.Tensor | None = None  # ε of every peer, until the next spend

    def _epsilon(self, rdp: np.ndarray) -> float:
        return epsilon_from_rdp(rdp, self.delta)

    def _added(
        self, peers: list[int], noise: torch.Tensor, rate: torch.Tensor, steps: torch.Tensor
    ) -> np.ndarray:
        return np.stack([int(steps[p]) * rdp_per_step(float(noise[p]), float(rate[p])) for p in peers])

    def epsilon(self) -> torch.Tensor:
        """Each peer's ε so far."""
        if self._spent is None:
            self._spent = torch.tensor([self._epsilon(row) for row in self.rdp], dtype=torch.float64)
        return self._spent.clone()

    def epsilon_after(
        self, peers: torch.Tensor, noise: torch.Tensor, rate: torch.Tensor, steps: torch.Tensor
    ) -> torch.Tensor:
        """Each listed peer's ε if it took `steps` more steps at (noise, rate); nothing is recorded."""
        ids = peers.tolist()
        if not ids:
            return torch.zeros(0, dtype=torch.float64)
        rows = self.rdp[ids] + self._added(ids, noise, rate, steps)
        return torch.tensor([self._epsilon(row) for row in rows], dtype=torch.float64)

    def spend(
        self, peers: torch.Tensor, noise: torch.Tensor, rate: torch.Tensor, steps: torch.Tensor
    ) -> None:
        """Record `steps[p]` steps at (noise[p], rate[p]) for every listed peer p."""
        ids = peers.tolist()
        if ids:
            self.rdp[ids] += self._added(ids, noise, rate, steps)
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
