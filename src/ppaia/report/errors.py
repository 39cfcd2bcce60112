"""The report's one error type."""

from __future__ import annotations

__all__ = ["ReportError"]


class ReportError(ValueError):
    """A folder that cannot be reported: not a run or sweep folder, or a file in it that does not parse as
    the one ppaia writes (the message names the file, and the line where there is one)."""
