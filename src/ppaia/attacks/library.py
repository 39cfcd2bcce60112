"""The registered attacks."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from ppaia.attacks.base import ATTACKS, Attack, AttackRound


@ATTACKS.register("sign_flip")
class SignFlip(Attack):
    """Sends its trained model with the sign flipped and scaled: −scale·θ."""

    scale: float = Field(default=1.0, gt=0)

    def message(self, now: AttackRound) -> torch.Tensor:
        return -self.scale * now.trained


@ATTACKS.register("gaussian")
class Gaussian(Attack):
    """Sends pure noise: every coordinate drawn from N(0, sigma²)."""

    sigma: float = Field(default=1.0, gt=0)

    def message(self, now: AttackRound) -> torch.Tensor:
        return self.sigma * now.normal()


@ATTACKS.register("noisy")
class Noisy(Attack):
    """Sends its trained model plus N(0, s²) noise: s = scale, or scale · (its peer id) when graded."""

    scale: float = Field(default=0.1, ge=0)
    graded: bool = Field(default=False, description="peer i adds noise of scale i·scale")

    def message(self, now: AttackRound) -> torch.Tensor:
        noise = now.normal()
        scale = now.peers.to(now.trained.device, now.trained.dtype).unsqueeze(1) if self.graded else 1.0
        return now.trained + self.scale * scale * noise


@ATTACKS.register("label_flip")
class LabelFlip(Attack):
    """Trains on permuted labels (every class shifted by the same random non-zero offset) and sends that."""

    def relabel(self, labels: torch.Tensor, n_classes: int, randomness: torch.Generator) -> torch.Tensor:
        shift = int(torch.randint(1, n_classes, (1,), generator=randomness))
        return (labels + shift) % n_classes


@ATTACKS.register("free_rider")
class FreeRider(Attack):
    """Does not train; sends back the model it was sent (and kept) last round."""

    trains: ClassVar[bool] = False

    def message(self, now: AttackRound) -> torch.Tensor:
        return now.held


@ATTACKS.register("stale")
class Stale(Attack):
    """Resends an old model: the one it trained `age` rounds ago (its initial model before that)."""

    age: int = Field(default=5, ge=1)

    def memory(self) -> int:
        return self.age

    def message(self, now: AttackRound) -> torch.Tensor:
        return now.past[0] if len(now.past) == self.age else now.initial


@ATTACKS.register("alie")
class LittleIsEnough(Attack):
    """Sends the model it held moved against its own honest update: held − z·(trained − held).

    After "A Little Is Enough: Circumventing Defenses For Distributed Learning" (Baruch, Baruch and
    Goldberg, NeurIPS 2019). Their attackers collude: they pool their honest updates, estimate the
    coordinate-wise mean μ and spread σ of what honest workers send, and all send μ − z·σ, a model
    that order statistics (median, trimmed mean) and distance-based rules (Krum, clipping, distance
    gates) cannot tell from an honest one, yet one that pushes every coordinate the wrong way.

    Here each attacker uses only its own state, because a networked attacker must send exactly what it
    sends in the simulator (no attacker's row may depend on which others exist). It estimates the honest
    spread by its own update Δ = trained − held, whose length is about how far an honest peer's model
    lies from the model it held, and sends held − z·Δ: at distance z·‖Δ‖ from its neighbourhood's last
    consensus (inside a clipping radius or a distance gate that admits honest models, for z ≈ 1) but
    pointing backwards. Differences from the paper: no collusion statistics, a whole-vector reversal
    instead of a per-coordinate shift by σ, and z a free option instead of one derived from the number
    of workers and attackers.
    """

    z: float = Field(default=1.0, gt=0, description="the shift, in lengths of the attacker's own update")

    def message(self, now: AttackRound) -> torch.Tensor:
        return now.held - self.z * (now.trained - now.held)
