"""Baselines: no cooperation at all, and all data pooled on one model."""

from __future__ import annotations

from typing import ClassVar

from ppaia.rules.base import RULES, CooperationRule


@RULES.register("isolated")
class Isolated(CooperationRule):
    """No cooperation: every peer trains only on its own data (the lower baseline)."""

    uses_topology: ClassVar[bool] = False


@RULES.register("centralized")
class Centralized(CooperationRule):
    """All peers' data pooled on a single model (the upper baseline)."""

    pooled: ClassVar[bool] = True
    uses_topology: ClassVar[bool] = False
