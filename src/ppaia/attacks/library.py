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
        scale = now.peers.to(now.trained.dtype).unsqueeze(1) if self.graded else 1.0
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
