"""Cooperation rules, each registered by name in :data:`RULES`."""

from ppaia.rules import centralized, consensus, fedavg, gossip, isolated  # noqa: F401  (registers the rules)
from ppaia.rules.base import RULES, CooperationRule, RoundContext, RoundPlan, apply_plan, apply_step_per_peer

__all__ = ["RULES", "CooperationRule", "RoundContext", "RoundPlan", "apply_plan", "apply_step_per_peer"]
