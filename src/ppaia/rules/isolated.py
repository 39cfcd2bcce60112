"""Isolated training: the lower baseline."""

from __future__ import annotations

from typing import ClassVar

from ppaia.rules.base import RULES, CooperationRule


@RULES.register("isolated")
class Isolated(CooperationRule):
    """No cooperation: every peer trains only on its own data (the lower baseline)."""

    uses_topology: ClassVar[bool] = False
