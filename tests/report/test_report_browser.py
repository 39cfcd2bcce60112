"""`ppaia report` opened in a real headless Chromium with every request but the file itself refused:
a sweep's report shows one curve per grid cell and its results table (equal to results.md / .tex), a
run's report shows its learned trust as a heat-map, and strings from the files stay text. Screenshots
go to each test's tmp_path and to /tmp/ppaia-screens/report-*.png."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ppaia.cli.main import app

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian's chromium is not installed (apt-get install chromium): no browser test",
    ),
]
SCREENS = Path("/tmp/ppaia-screens")
HOSTILE = "</script><script>window.pwned=1</script><img src=x onerror=window.pwned=2>"


def ppaia(*arguments: str):
    result = CliRunner().invoke(app, list(arguments), terminal_width=200)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


class Opened:
    """A report open in a page that may load nothing but the file: every other request is aborted and
    recorded, as is every console error and uncaught exception."""

    def __init__(self, browser, path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.set_default_timeout(10_000)
        self.url = path.resolve().as_uri()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.route("**/*", self._route)
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready=true]", timeout=10_000)

    def _route(self, route) -> None:
        if route.request.url == self.url:
            route.continue_()
        else:
            self.requests.append(route.request.url)
            route.abort()

    def screenshot(self, folder: Path, name: str) -> None:
        self.page.screenshot(path=folder / name, full_page=True)
        SCREENS.mkdir(exist_ok=True)
        shutil.copy(folder / name, SCREENS / name)

    def assert_offline_and_clean(self) -> None:
        assert self.requests == [], "the report asked the network"
        assert self.errors == []


def test_a_sweeps_report_opens_offline_with_one_curve_per_grid_cell(browser, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    swept = ppaia(
        "sweep", "--grid", "rule=consensus,learned_trust", "--set", "peers=4", "--set", "rounds=2",
        "--set", "holdout=0.2", "--seeds", "2", "--no-plots", "--out", "sw",
    )  # fmt: skip
    assert "report: sw/report.html" in swept.output
    assert "report: sw/report.html" in ppaia("report", "sw").output
    opened = Opened(browser, tmp_path / "sw" / "report.html")
    page = opened.page
    cells = ["rule=consensus", "rule=learned_trust"]
    charts = page.locator("#comparison figure.chart")
    assert charts.count() >= 5  # accuracy, loss, consensus distance, bytes, the sweep's metric, the chooser's
    for k in range(charts.count()):
        chart = charts.nth(k)
        assert chart.locator(".legend-item .legend-label").all_inner_texts() == cells
        drawn = page.evaluate(
            "id => ppaia.report.charts[id].plot.series.filter(s => s.ppaia === 'line').map(s => s.label)",
            chart.get_attribute("data-chart"),
        )
        assert drawn == cells
    bands = "ppaia.report.charts['comparison-honest_acc_mean'].plot.series.filter(s => s.ppaia === 'band')"
    assert page.evaluate(f"{bands}.length") == 4  # a band (its high and low) per cell
    body = page.locator("#results-table tbody tr")
    assert body.count() == 2
    assert [body.nth(k).locator("td").first.inner_text() for k in range(2)] == ["consensus", "learned_trust"]
    markdown = page.locator("textarea[data-format=Markdown]").input_value()
    latex = page.locator("textarea[data-format=LaTeX]").input_value()
    assert markdown == (tmp_path / "sw" / "results.md").read_text()
    assert latex == (tmp_path / "sw" / "results.tex").read_text()
    assert page.locator("table.runs tbody tr").count() == 4
    page.locator("table.runs tbody tr").nth(3).locator("button").click()  # learned trust, seed 1
    assert page.locator(".run-view").get_attribute("data-run") == "sw/runs/001-rule=learned_trust/seed-1"
    assert page.locator("figure.heat-map").count() == 1
    opened.screenshot(tmp_path, "report-sweep.png")
    opened.assert_offline_and_clean()


def test_a_runs_report_shows_learned_trust_as_a_heat_map(browser, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = ppaia(
        "run", "--set", "rule=learned_trust(partners=3)", "--set", "holdout=0.2", "--set", "peers=8",
        "--set", "rounds=3", "--out", "r",
    )  # fmt: skip
    assert "report: r/report.html" in run.output
    opened = Opened(browser, tmp_path / "r" / "report.html")
    page = opened.page
    assert page.locator("#comparison").count() == 0
    heat = page.locator("figure.heat-map[data-heat=trust]")
    assert heat.get_attribute("data-round") == "3"
    colours = page.evaluate(
        """() => {
            const canvas = document.querySelector('figure.heat-map canvas');
            const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            const seen = new Set();
            for (let i = 0; i < pixels.length; i += 4) seen.add(pixels.slice(i, i + 3).join());
            return seen.size;
        }"""
    )
    assert colours > 2  # pairs that met in several shades, and the grey of pairs that never did
    heat.locator("input[type=range]").fill("0")
    assert heat.get_attribute("data-round") == "1"
    for chart in ("test accuracy", "consensus distance (1/N)Σ‖θᵢ−θ̄‖²", "bytes sent (cumulative)"):
        assert page.locator(f".curves .chart[data-chart='{chart}']").count() == 1  # the dashboard's curves
    assert page.locator(".chooser:has(figure[data-chart=run-metric]) select").input_value() == "loss_mean"
    table = page.locator(".peer-table table.peers")
    assert table.locator("tbody tr").count() == 8
    table.locator("th[data-key=accuracy]").click()
    shown = [float(text) for text in table.locator("tbody tr td:nth-child(4)").all_inner_texts()]
    assert shown == sorted(shown) and len(set(shown)) > 1
    opened.screenshot(tmp_path, "report-run-trust.png")
    opened.assert_offline_and_clean()


def test_strings_from_the_files_are_shown_as_text(browser, run_folder, tmp_path):
    folder = shutil.copytree(run_folder, tmp_path / "r")
    with open(folder / "config.toml", "a") as handle:
        handle.write(f"note = {json.dumps(HOSTILE)}\n")
    summary = json.loads((folder / "summary.json").read_text())
    summary["provenance"]["command"] = f"ppaia run --set {HOSTILE}"
    (folder / "summary.json").write_text(json.dumps(summary))
    peers = (folder / "peers.csv").read_text().splitlines()
    peers[1] = json.dumps(HOSTILE).replace("\\", "") + peers[1][1:]  # a peer id as a swarm could report it
    (folder / "peers.csv").write_text("\n".join(peers) + "\n")
    ppaia("report", str(folder))
    opened = Opened(browser, folder / "report.html")
    page = opened.page
    assert page.evaluate("window.pwned") is None
    assert HOSTILE in page.locator("details.config pre").inner_text()
    assert HOSTILE in page.locator("pre.command").inner_text()
    assert page.locator("table.peers tbody tr td").first.inner_text() == HOSTILE
    assert page.locator("img").count() == 0
    opened.screenshot(tmp_path, "report-escaping.png")
    opened.assert_offline_and_clean()
