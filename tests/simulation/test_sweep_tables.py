"""A sweep's statistics (sample std, Student-t 95% CI, n=1) and its Markdown and LaTeX tables, which must
parse whatever a cell's label holds."""

from __future__ import annotations

import csv
import math
import random
import re
import statistics

import pytest
from markdown_it import MarkdownIt

from ppaia.simulation.stats import estimate
from ppaia.simulation.sweep import Status, SweepResult, summarise
from ppaia.simulation.tables import latex_table, markdown_table


def t975(df: int) -> float:
    """Student's t 0.975 quantile in closed form (df 1 and 2), independent of scipy."""
    return {1: math.tan(0.475 * math.pi), 2: 0.95 / math.sqrt(2 * 0.975 * 0.025)}[df]


@pytest.mark.parametrize("n", [2, 3])
def test_estimates_use_the_sample_std_and_a_t_interval(n):
    rng = random.Random(n)
    for _ in range(20):
        values = [rng.uniform(0, 1) for _ in range(n)]
        spread = estimate(values)
        assert spread.n == n and spread.mean == pytest.approx(statistics.fmean(values))
        assert spread.sd == pytest.approx(statistics.stdev(values))
        assert spread.ci95 == pytest.approx(t975(n - 1) * statistics.stdev(values) / math.sqrt(n))


def test_one_value_has_no_spread_rather_than_zero():
    spread = estimate([0.7])
    assert (spread.n, spread.mean) == (1, 0.7) and math.isnan(spread.sd) and math.isnan(spread.ci95)


def finals(label: str, values: dict[int, float | None]) -> list[dict]:
    """Runs of one cell: a value per seed, None for a seed that diverged."""
    return [
        {
            "rule": label,
            "seed": seed,
            "status": Status.COMPLETED,
            "acc_mean": value,
            "bytes_cumulative": 2.5e5,
        }
        if value is not None
        else {"rule": label, "seed": seed, "status": Status.DIVERGED, "diverged_round": 1}
        for seed, value in values.items()
    ]


METRICS = ("acc_mean", "bytes_cumulative")
SPECIAL = [
    "a|b",
    "under_score",
    "50%",
    "a&b",
    "$x$",
    "back\\slash",
    "{braces}",
    "tilde~",
    "hat^",
    "#1",
    "plain",
]


def table_cells(label: str) -> list[dict]:
    runs = (
        finals(label, {0: 0.5, 1: 0.7})
        + finals("single", {0: 0.6})
        + finals("half", {0: 0.4, 1: None})
        + finals("lost", {0: None, 1: None})
    )
    return summarise(["rule"], runs, METRICS)


@pytest.mark.parametrize("label", SPECIAL)
def test_markdown_table_parses_with_one_row_per_cell(label):
    cells = table_cells(label)
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown_table(["rule"], METRICS, cells))
    rows, row = [], None
    for token in tokens:
        if token.type == "tr_open":
            row = []
        elif token.type == "inline" and row is not None:
            row.append(token.content)
        elif token.type == "tr_close":
            rows.append(row)
            row = None
    header, body = rows[0], rows[1:]
    assert header == ["rule", "n", *METRICS, "diverged"]
    assert [line[:2] for line in body] == [
        [label, "2"],  # a "|" in a label does not split its cell
        ["single", "1"],
        ["half", "1"],
        ["lost", "0"],
    ]
    mean, half = cells[0]["acc_mean_mean"], cells[0]["acc_mean_ci95"]
    assert body[0][2] == f"{mean:.4g} ± {half:.4g}" and half == pytest.approx(
        t975(1) * statistics.stdev([0.5, 0.7]) / math.sqrt(2)
    )
    assert body[1][2] == "0.6" and body[2][2] == "0.4"  # n = 1: the mean alone, no "± 0"
    assert body[3][2] == "–" and body[3][-1] == "2 of 2" and body[0][-1] == "0 of 2"


LATEX_ESCAPES = re.compile(r"\\textbackslash\{\}|\\textasciitilde\{\}|\\textasciicircum\{\}|\\[&%$#_{}]")


@pytest.mark.parametrize("label", SPECIAL)
def test_latex_table_has_a_row_per_cell_and_escapes_every_label(label):
    cells = table_cells(label)
    text = latex_table(["rule"], METRICS, cells)
    columns = re.search(r"\\begin\{tabular\}\{([lr]+)\}", text).group(1)
    assert columns == "lrrrr" and text.count(r"\begin{tabular}") == text.count(r"\end{tabular}") == 1
    body = text.split("\\midrule\n")[1].split("\\bottomrule")[0].splitlines()
    assert len(body) == len(cells) == 4
    for line in body:
        assert line.endswith(r" \\")
        entries = line.removesuffix(r" \\").split(" & ")
        assert len(entries) == len(columns)
        assert not re.search(r"[&%$#_{}~^\\]", LATEX_ESCAPES.sub("", entries[0]))  # no bare special left
    first = body[0].removesuffix(r" \\").split(" & ")
    assert first[3] == r"$2.5\times10^{5} \pm 0$"  # equal seeds: an interval of 0, not none
    assert body[1].split(" & ")[2] == "$0.6$" and body[3].split(" & ")[2] == "--"


def test_tables_from_a_sweep_csv_read_back_equal_the_computed_ones(tmp_path):
    keys = ["rule"]
    runs = finals("a_b", {0: 0.5, 1: 0.7, 2: 0.8}) + finals("single", {0: 0.6}) + finals("lost", {0: None})
    result = SweepResult(keys, METRICS, runs, summarise(keys, runs, METRICS))
    result.write(tmp_path)  # no histories: tables and CSVs only
    with open(tmp_path / "sweep.csv", newline="") as handle:
        read = list(csv.DictReader(handle))
    assert markdown_table(keys, METRICS, read) == (tmp_path / "results.md").read_text()
    assert latex_table(keys, METRICS, read) == (tmp_path / "results.tex").read_text()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "results.md",
        "results.tex",
        "runs.csv",
        "sweep.csv",
    ]
