"""Byzantine peers: attacks registered by name, and the attackers of a run."""

from ppaia.attacks import library  # noqa: F401  (registers the attacks)
from ppaia.attacks.base import ATTACKS, Adversary, Attack, AttackRound, attacker_count, choose_attackers

__all__ = ["ATTACKS", "Adversary", "Attack", "AttackRound", "attacker_count", "choose_attackers"]
