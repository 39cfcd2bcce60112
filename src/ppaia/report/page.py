"""A report as one self-contained HTML file: the page's scripts and styles inlined (the dashboard's
vendored chart library and the report's own modules, from ``ppaia/dashboard/static``), the data as JSON in
a ``<script type="application/json">`` block.

Nothing is fetched when the file is viewed. Its Content-Security-Policy allows no network request at all
(``default-src 'none'``), and runs only the scripts written here, each named by its SHA-256: a string in
the data (a config value, a command line, a peer id) can neither end the data block (``<``, ``>`` and
``&`` are written as JSON escapes, so ``</script>`` cannot occur in it) nor, if it could, run.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
from importlib.resources import files
from pathlib import Path

from ppaia.report.document import Report

__all__ = ["SCRIPTS", "STYLES", "embed_json", "render", "write"]

STATIC = files("ppaia") / "dashboard" / "static"  # the dashboard's page files (not its server: no import)
# The dashboard's own page parts (js/: DOM helpers, peer states, curves, per-peer table, heat-map) draw a
# run as the live page does; js/report-bands.js (curves per cell, with bands) and js/report.js are the
# report's own.
SCRIPTS = (
    "vendor/uPlot.iife.min.js",
    "js/dom.js",
    "js/states.js",
    "js/curves.js",
    "js/table.js",
    "js/heatmap.js",
    "js/report-bands.js",
    "js/report.js",
)
STYLES = ("vendor/uPlot.min.css", "dashboard.css", "report.css")
TEMPLATE = "report.html"
_SLOT = re.compile(r"<!--ppaia:(\w+)-->")
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def embed_json(text: str) -> str:
    """JSON `text` safe inside a ``<script>`` element: the characters that could end it or start a
    comment there are written as JSON escapes (they occur only inside JSON strings, so the value is the
    same), and so are the two line separators that some parsers take for line ends."""
    return re.sub("[<>&\u2028\u2029]", lambda match: _JSON_ESCAPES[match.group()], text)


def _static(name: str) -> str:
    text = (STATIC / name).read_text(encoding="utf-8")
    if re.search(r"</(script|style)", text, re.IGNORECASE):
        raise ValueError(f"{name}: holds a closing tag; it cannot be inlined as is")
    return text


def _hash(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


def render(report: Report) -> str:
    """The report's HTML."""
    scripts = [_static(name) for name in SCRIPTS]
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(map(_hash, scripts)),
            "style-src 'unsafe-inline'",  # the chart library sets element styles
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )
    slots = {
        "policy": html.escape(policy),
        "title": html.escape(f"ppaia · {report.title}"),
        "styles": "\n".join(f"<style>{_static(name)}</style>" for name in STYLES),
        "data": embed_json(report.model_dump_json()),
        "scripts": "\n".join(f"<script>{script}</script>" for script in scripts),
    }
    return _SLOT.sub(lambda match: slots[match.group(1)], (STATIC / TEMPLATE).read_text(encoding="utf-8"))


def write(report: Report, out: Path) -> Path:
    """Write the report's HTML to `out` (replaced whole: a reader never sees half a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_name(f".{out.name}.{os.getpid()}")
    try:
        staged.write_text(render(report), encoding="utf-8")
        staged.replace(out)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return out
