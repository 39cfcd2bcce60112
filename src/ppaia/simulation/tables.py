"""A sweep's results table, one row per grid cell and a column per metric, in Markdown and LaTeX.

Each value is the mean over the cell's completed seeds ± the half-width of its 95% confidence interval
(Student's t, :mod:`ppaia.simulation.stats`); the ``n`` column says over how many seeds. A cell with one
completed seed shows its mean alone (no interval can be estimated from one value), a cell whose seeds all
diverged shows a dash, and a ``diverged`` column appears when any seed diverged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["CAPTION", "latex_table", "markdown_table", "table_rows"]

MISSING = "–"  # a metric no seed of the cell completed

CAPTION = (
    "Mean ± half-width of the 95% confidence interval (Student's t, n − 1 degrees of freedom) over the n "
    "completed seeds of each cell; no interval where n = 1."
)
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


Entry = str | tuple[str, ...]  # text (a label, a count, a dash) or numbers: (mean,) or (mean, half-width)


def table_rows(
    keys: Sequence[str], metrics: Sequence[str], cells: Sequence[Mapping[str, Any]]
) -> tuple[list[str], list[list[Entry]]]:
    """Header and rows; numbers in %.4g. Cells as :func:`ppaia.simulation.sweep.summarise` makes them, or
    as read back from ``sweep.csv`` (strings; an empty string for a value that is not there)."""
    diverged = any(int(cell["diverged"]) for cell in cells)
    header = [*keys, "n", *metrics, *(["diverged"] if diverged else [])]
    rows = []
    for cell in cells:
        row: list[Entry] = [str(cell.get(key, "")) for key in keys]
        row.append(str(int(cell["seeds"]) - int(cell["diverged"])))
        for metric in metrics:
            mean, half = _value(cell, f"{metric}_mean"), _value(cell, f"{metric}_ci95")
            if math.isnan(mean):
                row.append(MISSING)
            else:
                row.append((f"{mean:.4g}",) if math.isnan(half) else (f"{mean:.4g}", f"{half:.4g}"))
        if diverged:
            row.append(f"{cell['diverged']} of {cell['seeds']}")
        rows.append(row)
    return header, rows


def _value(cell: Mapping[str, Any], column: str) -> float:
    """A number of the cell, NaN where there is none (no seed completed; one seed: no interval)."""
    value = cell.get(column, "")
    return math.nan if value == "" else float(value)


def markdown_table(keys: Sequence[str], metrics: Sequence[str], cells: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table with the caption above it."""
    header, rows = table_rows(keys, metrics, cells)

    def line(entries: Sequence[Entry]) -> str:
        texts = (entry if isinstance(entry, str) else " ± ".join(entry) for entry in entries)
        return "| " + " | ".join(text.replace("|", r"\|") for text in texts) + " |"

    aligns = ["---"] * len(keys) + ["---:"] * (len(header) - len(keys))
    return "\n".join([CAPTION, "", line(header), line(aligns), *map(line, rows)]) + "\n"


def latex_table(keys: Sequence[str], metrics: Sequence[str], cells: Sequence[Mapping[str, Any]]) -> str:
    """A ``table`` with a booktabs ``tabular`` (``\\usepackage{booktabs}``) and the caption."""
    header, rows = table_rows(keys, metrics, cells)
    columns = "l" * len(keys) + "r" * (len(header) - len(keys))
    caption = _escape(CAPTION).replace("±", r"$\pm$").replace("n − 1", "$n-1$")
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{caption}}}",
        r"\label{tab:sweep}",
        rf"\begin{{tabular}}{{{columns}}}",
        r"\toprule",
        " & ".join(map(_escape, header)) + r" \\",
        r"\midrule",
        *(" & ".join(map(_latex_entry, row)) + r" \\" for row in rows),
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def _latex_entry(entry: Entry) -> str:
    if isinstance(entry, str):
        return "--" if entry == MISSING else _escape(entry)
    return "$" + r" \pm ".join(map(_latex_number, entry)) + "$"


def _latex_number(number: str) -> str:
    """``1.235e+06`` as ``1.235\\times10^{6}`` (numbers are set in math mode)."""
    match = re.fullmatch(r"(-?[\d.]+)e([+-])0*(\d+)", number)
    if not match:
        return number
    mantissa, sign, exponent = match.groups()
    return rf"{mantissa}\times10^{{{'-' if sign == '-' else ''}{exponent}}}"


def _escape(text: str) -> str:
    """Text with LaTeX's special characters escaped (cell labels may hold any of them)."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)
