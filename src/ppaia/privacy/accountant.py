"""Every peer's cumulative (ε, δ), composed with Opacus' RDP accountant (not our own arithmetic)."""

from __future__ import annotations

import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

__all__ = ["PeerAccountant", "noise_for_target"]

History = tuple[tuple[float, float, int], ...]  # (noise multiplier, sample rate, steps), as Opacus keeps it
# Opacus' default RDP orders stop at 63; small noise multipliers (update-level DP at large ε) need higher ones
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 96, 128, 192, 256, 384, 512, 1024]


def _merged(history: History, noise: float, rate: float, steps: int) -> History:
    if steps == 0:
        return history
    if history and history[-1][:2] == (noise, rate):
        return (*history[:-1], (noise, rate, history[-1][2] + steps))
    return (*history, (noise, rate, steps))


class PeerAccountant:
    """One Opacus RDP history per peer; ε is computed by Opacus and cached per distinct history."""

    def __init__(self, n_peers: int, delta: float) -> None:
        self.delta = delta
        self.histories: list[History] = [() for _ in range(n_peers)]
        self._cache: dict[History, float] = {}

    def _epsilon(self, history: History) -> float:
        if not history:
            return 0.0
        if history not in self._cache:
            if any(noise == 0 for noise, _, _ in history):
                self._cache[history] = float("inf")
            else:
                accountant = RDPAccountant()
                accountant.history = list(history)
                self._cache[history] = float(accountant.get_epsilon(self.delta, alphas=ORDERS))
        return self._cache[history]

    def epsilon(self) -> torch.Tensor:
        """Each peer's ε so far."""
        return torch.tensor([self._epsilon(history) for history in self.histories], dtype=torch.float64)

    def epsilon_after(
        self, peers: torch.Tensor, noise: torch.Tensor, rate: torch.Tensor, steps: torch.Tensor
    ):
        """Each listed peer's ε if it took `steps` more steps at (noise, rate); nothing is recorded."""
        return torch.tensor(
            [
                self._epsilon(_merged(self.histories[p], float(noise[p]), float(rate[p]), int(steps[p])))
                for p in peers.tolist()
            ],
            dtype=torch.float64,
        )

    def spend(
        self, peers: torch.Tensor, noise: torch.Tensor, rate: torch.Tensor, steps: torch.Tensor
    ) -> None:
        """Record `steps[p]` steps at (noise[p], rate[p]) for every listed peer p."""
        for p in peers.tolist():
            self.histories[p] = _merged(self.histories[p], float(noise[p]), float(rate[p]), int(steps[p]))


def noise_for_target(target_epsilon: float, delta: float, rate: float, steps: int) -> float:
    """The noise multiplier that spends `target_epsilon` in `steps` steps at `rate` (Opacus' search)."""
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=rate, steps=steps, accountant="rdp"
        )
    )
