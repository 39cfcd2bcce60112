"""Cooperation rules, each registered by name in :data:`RULES`."""

# importing the rule modules registers them
from ppaia.rules import centralized, centred, consensus, fedavg, flobc, gossip, isolated, p2pl, robust, trust  # noqa: F401
from ppaia.rules.base import (
    RULES,
    CooperationRule,
    RoundContext,
    RoundPlan,
    RuleStateError,
    apply_plan,
    apply_step_per_peer,
)
from ppaia.rules.sync import SYNC_SCHEMES

__all__ = [
    "RULES",
    "SYNC_SCHEMES",
    "CooperationRule",
    "RoundContext",
    "RoundPlan",
    "RuleStateError",
    "apply_plan",
    "apply_step_per_peer",
]
