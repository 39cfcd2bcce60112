"""Figures outside pyplot, and the sweep's comparison plot (one curve per cell with its confidence band).

Figures are plain :class:`matplotlib.figure.Figure` objects: saving one picks the Agg (or PDF, SVG) canvas
for the file's format at that moment, so nothing here selects a GUI backend or changes the user's pyplot
backend, at import or later.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["Band", "band_plot", "new_figure", "save_figure", "wrap_title"]


def new_figure(size: tuple[float, float]) -> tuple[Figure, Axes]:
    """A figure with one axis, outside pyplot: it needs no GUI backend and leaves the user's alone."""
    figure = Figure(figsize=size)
    return figure, figure.subplots()


def save_figure(figure: Figure, path: Path) -> None:
    """Save in the format of `path`'s suffix (``.png``, ``.pdf``, ``.svg``), the plot's title also as the
    file's ``Title`` metadata, so that a script (or a test) can tell what an image shows."""
    figure.tight_layout()
    titles = [" ".join(axis.get_title().split()) for axis in figure.axes if axis.get_title()]
    figure.savefig(path, dpi=110, metadata={"Title": " | ".join(titles)} if titles else None)


def wrap_title(text: str, width: int = 70) -> str:
    """Long titles (every option of every component) broken into lines that fit the figure."""
    return "\n".join(textwrap.wrap(text, width)) or text


@dataclass(frozen=True)
class Band:
    """A curve and its band: `mean[i] ± half[i]` at `x[i]`; NaN half-widths draw no band there."""

    x: Sequence[float]
    mean: Sequence[float]
    half: Sequence[float]


def band_plot(
    curves: Mapping[str, Band],
    paths: Sequence[Path],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    ylim: tuple[float, float] | None = None,
    log: bool = False,
) -> None:
    """One line per label with a shaded band around it, saved to each of `paths` (e.g. PNG and PDF);
    `log`: a logarithmic y axis."""
    figure, axis = new_figure((6.5, 4.4))
    for label, band in curves.items():
        (line,) = axis.plot(band.x, band.mean, marker="o" if len(band.x) < 12 else None, label=label)
        low = [m - h for m, h in zip(band.mean, band.half, strict=True)]
        high = [m + h for m, h in zip(band.mean, band.half, strict=True)]
        axis.fill_between(band.x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    axis.set(xlabel=xlabel, ylabel=ylabel)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds
    axis.set_title(wrap_title(title), fontsize=9)
    if ylim:
        axis.set_ylim(*ylim)
    if log:
        axis.set_yscale("log")
    axis.legend(fontsize=7)
    for path in paths:
        save_figure(figure, path)
