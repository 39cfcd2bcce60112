"""Centralized training: the upper baseline."""

from __future__ import annotations

from typing import ClassVar

from ppaia.rules.base import RULES, CooperationRule


@RULES.register("centralized")
class Centralized(CooperationRule):
    """All peers' data pooled on a single model (the upper baseline)."""

    pooled: ClassVar[bool] = True
    uses_topology: ClassVar[bool] = False
