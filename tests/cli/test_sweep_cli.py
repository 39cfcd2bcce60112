"""`ppaia sweep` as a researcher meets it, from a working directory of their own: every run kept in its own
folder exactly as `ppaia run` writes it, the sweep's spec with it, resumed after a kill and re-run from its
folder with the same numbers, comparison plots and Markdown / LaTeX tables with the sample std and CI."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
from PIL import Image
from typer.testing import CliRunner

from ppaia.cli.main import app

CONFIG = """
peers = 4
rounds = 2
partition = "iid"
dataset = "synthetic(samples=64, test_samples=32, features=4, classes=3)"
"""
GRID = ["--grid", "rule=isolated,gossip", "--seeds", "2"]
TIMING = {"wall_s", "setup_s", "provenance"}  # what differs between two runs of the same config


def ppaia(*arguments: str):
    return CliRunner().invoke(app, list(arguments), terminal_width=200)


def table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def complete(out: Path) -> list[Path]:
    return sorted(path.parent for path in out.glob("runs/*/seed-*/summary.json"))


def assert_same_run(a: Path, b: Path) -> None:
    """Two run folders of one config and seed hold the same files and numbers (time and provenance aside;
    `ppaia run` adds its report.html, which a sweep writes once for all its runs)."""
    assert {p.name for p in a.iterdir()} == {p.name for p in b.iterdir()} - {"report.html"}
    for name in ("config.toml", "peers.csv"):
        assert (a / name).read_text() == (b / name).read_text(), name
    strip = [{k: v for k, v in row.items() if k not in TIMING} for row in table(a / "metrics.csv")]
    assert strip == [{k: v for k, v in row.items() if k not in TIMING} for row in table(b / "metrics.csv")]
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in (a, b)]
    assert [{k: v for k, v in s.items() if k not in TIMING} for s in summaries] == [
        {k: v for k, v in summaries[1].items() if k not in TIMING}
    ] * 2


def assert_image(path: Path, title_has: tuple[str, ...] = ()) -> None:
    if path.suffix == ".pdf":
        data = path.read_bytes()
        assert data.startswith(b"%PDF-") and b"%%EOF" in data[-64:], path
        return
    with Image.open(path) as image:
        image.verify()  # the chunks' checksums
    with Image.open(path) as image:
        image.load()  # the pixels decode
        assert image.format == "PNG" and min(image.size) > 100, path
        title = image.text.get("Title", "")
    for text in title_has:
        assert text in title, (path, text, title)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("exp.toml").write_text(CONFIG)
    return tmp_path


@pytest.mark.slow
def test_a_sweep_keeps_every_run_as_ppaia_run_writes_it_with_plots_and_tables(workdir):
    result = ppaia("sweep", "exp.toml", *GRID, "--out", "s")
    assert result.exit_code == 0, result.output
    out = Path("s")
    runs = table(out / "runs.csv")
    assert [(run["rule"], run["seed"]) for run in runs] == [
        ("isolated", "0"),
        ("isolated", "1"),
        ("gossip", "0"),
        ("gossip", "1"),
    ]
    assert complete(out) == sorted(out / run["folder"] for run in runs)

    # the last run of the sweep (after three others in the same process) equals `ppaia run` of its cell
    last = runs[-1]
    assert (
        ppaia("run", "exp.toml", "--set", "rule=gossip", "--set", "seed=1", "--out", "alone").exit_code == 0
    )
    assert_same_run(out / last["folder"], Path("alone"))
    assert float(last["acc_mean"]) == json.loads(Path("alone/summary.json").read_text())["acc_mean"]

    # per cell: the sample standard deviation and the t interval (1 degree of freedom) of its two seeds
    cells = {cell["rule"]: cell for cell in table(out / "sweep.csv")}
    for rule, cell in cells.items():
        values = [float(run["acc_mean"]) for run in runs if run["rule"] == rule]
        assert float(cell["acc_mean_std"]) == pytest.approx(statistics.stdev(values))
        half = math.tan(0.475 * math.pi) * statistics.stdev(values) / math.sqrt(2)
        assert float(cell["acc_mean_ci95"]) == pytest.approx(half)
        assert f"{float(cell['acc_mean_mean']):.4f} ± {half:.4f}" in result.output

    markdown = (out / "results.md").read_text()
    for rule, cell in cells.items():
        mean, half = float(cell["acc_mean_mean"]), float(cell["acc_mean_ci95"])
        assert re.search(rf"^\| {rule} \| 2 \| {re.escape(f'{mean:.4g} ± {half:.4g}')} \|", markdown, re.M)
    latex = (out / "results.tex").read_text()
    rows = latex.split("\\midrule\n")[1].split("\\bottomrule")[0].splitlines()
    assert [row.split(" & ")[:2] for row in rows] == [["isolated", "2"], ["gossip", "2"]]

    # comparison plots: one curve per cell; the title names what every run shares, not the varied rule
    for metric in ("honest_acc_mean", "honest_loss_mean", "acc_mean"):
        assert_image(out / f"{metric}.png", title_has=("synthetic(", "iid", "4 peers", "95% CI"))
        assert "gossip" not in Image.open(out / f"{metric}.png").text["Title"]
        assert_image(out / f"{metric}.pdf")
    assert_image(out / last["folder"] / "loss.png", title_has=("synthetic(", "iid", "gossip", "4 peers"))

    spec = (out / "sweep.toml").read_text()
    assert "[grid]" in spec and "isolated" in spec and "seeds" in spec and "rounds = 2" in spec


def test_a_single_seed_reports_n_1_and_no_interval(workdir):
    result = ppaia("sweep", "exp.toml", "--grid", "lr=0.05", "--seeds", "1", "--no-plots", "--out", "s")
    assert result.exit_code == 0, result.output
    (cell,) = table(Path("s/sweep.csv"))
    assert math.isnan(float(cell["acc_mean_std"])) and math.isnan(float(cell["acc_mean_ci95"]))
    assert re.search(r"^\| 0\.05 \| 1 \| [\d.]+ \|", Path("s/results.md").read_text(), re.M)  # no "±"
    assert not list(Path("s").rglob("*.png")) and not list(Path("s").rglob("*.pdf"))


@pytest.mark.slow
def test_a_killed_sweep_resumes_running_only_what_it_lacks_and_reruns_from_its_folder(workdir):
    # plots are left out: they are the same code as the first test's, and here they would only add time
    command = [sys.executable, "-m", "ppaia.cli.main", "sweep", "exp.toml", *GRID, "--no-plots", "--out", "s"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out, deadline = Path("s"), time.monotonic() + 180
    try:
        while not complete(out) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=30)
    kept = complete(out)
    assert 1 <= len(kept) < 4, stderr.decode()  # killed after its first run, before its last
    assert (out / "sweep.toml").is_file()
    stamps = {folder: os.stat(folder / "summary.json").st_mtime_ns for folder in kept}

    # what a kill can also leave: a run folder without its summary, a half-written staging folder
    partial = out / "runs/001-rule=gossip/seed-1"  # the last run, never complete here
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "config.toml").write_text("half-written")
    (partial.parent / ".seed-1.stale").mkdir()

    result = ppaia("sweep", "--resume", "s", "--no-plots")
    assert result.exit_code == 0, result.output
    assert len(complete(out)) == 4 and not list(out.glob("runs/*/.seed-*"))
    assert {folder: os.stat(folder / "summary.json").st_mtime_ns for folder in kept} == stamps  # not rerun

    # the folder alone re-runs the whole sweep: the same numbers, run by run and in every table
    again = ppaia("sweep", "--from", "s", "--out", "again", "--no-plots")
    assert again.exit_code == 0, again.output
    for name in ("runs.csv", "sweep.csv", "results.md", "results.tex"):
        assert Path("s", name).read_text() == Path("again", name).read_text(), name
    for folder in complete(out):
        assert_same_run(folder, Path("again") / folder.relative_to(out))


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--resume", "s", "--grid", "lr=0.1"], "--resume takes the whole sweep"),
        (["--resume", "s", "--seeds", "5"], "--resume takes the whole sweep"),
        (["--from", "s", "exp.toml", "--out", "new"], "--from takes the whole sweep"),
        (["--resume", "s", "--out", "new"], "leave out --out"),
        (["--resume", "s", "--from", "s"], "choose one"),
        (["--resume", "elsewhere"], "not a sweep folder"),
        (["--from", "s", "--out", "s"], "not empty"),
        (["--resume", "broken.toml"], "broken.toml"),
    ],
)
def test_resume_and_from_refuse_anything_but_a_sweep_folder_in_one_line(workdir, arguments, named):
    Path("s").mkdir()
    Path("s/sweep.toml").write_text('seeds = [0]\nmetrics = ["acc_mean"]\nmetric = "acc_mean"\n')
    Path("elsewhere").mkdir()
    Path("broken.toml").write_text("seeds = [\n")
    result = ppaia("sweep", *arguments)
    assert result.exit_code == 2 and named in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in Path("s").iterdir()) == ["sweep.toml"] and not Path("new").exists()


def test_a_failing_run_stops_the_sweep_keeping_what_completed(workdir):
    # a dataset folder that does not exist: only the run's set-up finds it
    first = ppaia("sweep", "exp.toml", "--set", 'dataset=mnist(path="nowhere")', "--seeds", "1", "--out", "a")
    assert first.exit_code == 2 and "nowhere" in first.output
    assert not Path("a").exists()  # its first run failed: nothing is left behind

    # a split that the second cell's set-up finds impossible (64 samples in 400 shards)
    later = ["--grid", "partition=iid,shards(100)", "--seeds", "1", "--no-plots", "--out", "b"]
    second = ppaia("sweep", "exp.toml", *later)
    assert (
        second.exit_code == 2 and "partition" in second.output and "ppaia sweep --resume b" in second.output
    )
    assert [folder.parent.name for folder in complete(Path("b"))] == ["000-partition=iid"]
    assert (Path("b") / "sweep.toml").is_file()


TAMPERED = [  # what a run folder's files may hold instead of a run's: each makes the run partial
    ("summary.json", b"[]"),
    ("summary.json", b'{"diverged": 3}'),
    ("summary.json", b'{"diverged": {"round": "x"}}'),
    ("summary.json", b"\xff\xfe not UTF-8"),
    ("summary.json", b"[" * 100_000),
    ("metrics.csv", b""),
    ("metrics.csv", b"acc_mean\n0.5\n"),
]


def test_run_folders_whose_files_do_not_parse_are_run_again(workdir):
    quick = ["--set", "rounds=1", "--seeds", str(len(TAMPERED)), "--no-plots"]
    assert ppaia("sweep", "exp.toml", *quick, "--out", "s").exit_code == 0
    tables = {name: Path("s", name).read_text() for name in ("runs.csv", "sweep.csv", "results.md")}
    folders = complete(Path("s"))
    for (name, content), folder in zip(TAMPERED, folders, strict=True):
        (folder / name).write_bytes(content)
    result = ppaia("sweep", "--resume", "s", "--no-plots")
    assert result.exit_code == 0, result.output
    assert {name: Path("s", name).read_text() for name in tables} == tables
    for folder in folders:
        assert isinstance(json.loads((folder / "summary.json").read_text()), dict)
        assert table(folder / "metrics.csv")[0]["round"] == "0"


VALID_SPEC = {"seeds": [0], "metrics": ["acc_mean"], "metric": "acc_mean", "base": {"rounds": 1}, "grid": {}}
WRONG = {  # per field of sweep.toml, values of the wrong type or out of range
    "seeds": ["x", 1, 1.5, True, [], [-1], [1.5], ["0"], {"a": 1}, [2**40]],
    "metrics": ["acc_mean", 1, [], [1], {"a": 1}],
    "metric": [1, [], "loss_mean"],
    "base": ["x", 1, [], {"peers": 0}, {"rule": "no_such_rule"}, {"lr": "fast"}, {"surprise": 1}],
    "grid": ["x", 1, [], {"lr": []}, {"lr": 0.1}, {"lr": [-1.0]}, {"nope.x": [1]}, {"peers": [0]}],
    "extra": [1],
}
HOSTILE = [
    (f"{field}={value!r}", {**VALID_SPEC, field: value})
    for field, values in WRONG.items()
    for value in values
]


@pytest.mark.parametrize(("case", "spec"), HOSTILE, ids=[case for case, _ in HOSTILE])
def test_a_hostile_sweep_toml_is_refused_in_one_line_before_anything_runs(workdir, case, spec):
    Path("s").mkdir()
    Path("s/sweep.toml").write_text(tomli_w.dumps(spec))
    result = ppaia("sweep", "--resume", "s")
    assert result.exit_code == 2 and result.output.startswith("error: "), result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert [p.name for p in Path("s").iterdir()] == ["sweep.toml"]


@pytest.mark.parametrize(
    "content", [b"\xff\xfe\x00garbage", b"seeds = [\n", b"", b"[[seeds]]\n", b"seeds = [0]\nseeds = [1]\n"]
)
def test_a_sweep_toml_that_is_not_toml_or_not_a_file_is_refused(workdir, content):
    Path("s").mkdir()
    Path("s/sweep.toml").write_bytes(content)
    Path("d/sweep.toml").mkdir(parents=True)  # a folder where the file should be
    for folder in ("s", "d"):
        result = ppaia("sweep", "--resume", folder)
        assert result.exit_code == 2 and result.output.startswith("error: "), result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
