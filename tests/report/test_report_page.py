"""The report's HTML: whatever a string in the data holds (a config value, a command line, a peer id), the
data block parses back to exactly the document and nothing in it can end the block; the page runs only
its own scripts (their hashes in the Content-Security-Policy) and may fetch nothing."""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import random
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ppaia.report import collect, render
from ppaia.report.page import SCRIPTS, STYLES, TEMPLATE

FRAGMENTS = [
    "</script>",
    "</SCRIPT >",
    "</script",
    "<script>window.pwned=1</script>",
    "<!--",
    "-->",
    "<![CDATA[",
    "]]>",
    "</style>",
    '<img src=x onerror="window.pwned=2">',
    "&lt;",
    "&",
    "'",
    '"',
    "\\",
    "\u2028",
    "\u2029",
    "\x00",
    "😀",
    "<!--ppaia:data-->",
]


def hostile_strings(count: int = 60, seed: int = 14) -> list[str]:
    """Each fragment alone, then seeded random concatenations of them with plain text."""
    rng = random.Random(seed)
    mixed = [
        "".join(rng.choice([*FRAGMENTS, "a", " ", "peer"]) for _ in range(rng.randint(2, 8)))
        for _ in range(count)
    ]
    return [*FRAGMENTS, *mixed]


class Scripts(HTMLParser):
    """The page's <script> elements as a browser tokenises them, and its meta policy."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.policy = ""
        self._open: dict[str, str | None] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self._open, self.scripts = dict(attrs), [*self.scripts, (dict(attrs), "")]
        elif tag == "meta" and dict(attrs).get("http-equiv") == "Content-Security-Policy":
            self.policy = dict(attrs)["content"] or ""

    def handle_data(self, data):
        if self._open is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._open = None


def parse(page: str) -> Scripts:
    parser = Scripts()
    parser.feed(page)
    parser.close()
    return parser


@pytest.mark.parametrize("text", hostile_strings())
def test_any_string_in_the_data_stays_data(run_folder, text):
    report = collect([run_folder])
    run = report.runs[0]
    peers = run.peers.model_copy(
        update={"label": [text] * len(run.peers.label), "note": [text] * len(run.peers.note)}
    )
    run = run.model_copy(
        update={"name": text, "config_toml": text, "summary": {**run.summary, text: [text]}, "peers": peers}
    )
    report = report.model_copy(update={"title": text, "sources": [text], "runs": [run]})
    page = render(report)
    parsed = parse(page)
    data = [body for attrs, body in parsed.scripts if attrs.get("type") == "application/json"]
    assert len(data) == 1 and "<" not in data[0]
    assert json.loads(data[0]) == json.loads(report.model_dump_json())
    assert len(parsed.scripts) == len(SCRIPTS) + 1  # nothing in the data opened another script


def test_only_the_reports_own_scripts_may_run_and_nothing_may_be_fetched(run_folder):
    parsed = parse(render(collect([run_folder])))
    policy = dict(part.strip().split(" ", 1) for part in parsed.policy.split(";"))
    assert policy["default-src"] == "'none'"  # no fetch, image, font, frame or connection of any kind
    code = [body for attrs, body in parsed.scripts if "type" not in attrs]
    hashes = {
        f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'" for body in code
    }
    assert set(policy["script-src"].split()) == hashes and len(code) == len(SCRIPTS)
    assert not any("src" in attrs for attrs, _ in parsed.scripts)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", render(collect([run_folder])))


def test_every_file_the_page_inlines_is_installed_with_the_package():
    """A wheel holds only the package data pyproject.toml names: each inlined file must match it."""
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["ppaia.dashboard"]
    for name in (*SCRIPTS, *STYLES, TEMPLATE):
        assert any(fnmatch.fnmatch(f"static/{name}", pattern) for pattern in patterns), name
