"""`ppaia report` reading run folders: what a run wrote reaches the report unchanged, a rule's matrix
(learned trust) as the dashboard's block heat-map with a bounded number of rounds, and any file that is
not as ppaia writes it is a ReportError naming the file — never a crash or a half-drawn report."""

from __future__ import annotations

import base64
import csv
import itertools
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ppaia.cli.main import app
from ppaia.report import ReportError, collect
from ppaia.report.folders import HEAT_MAP_BUDGET
from ppaia.simulation.live import MAX_BLOCKS

UNKNOWN = 255
PEERS = 5  # as conftest.simulate runs them
PEERS = 5


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_run_folder_reaches_the_report_as_written(run_folder):
    report = collect([run_folder])
    assert report.comparison is None and len(report.runs) == 1
    run = report.runs[0]
    metrics = rows(run_folder / "metrics.csv")
    assert run.metrics["round"] == [float(row["round"]) for row in metrics]
    assert run.metrics["acc_mean"] == [float(row["acc_mean"]) for row in metrics]
    assert run.config_toml == (run_folder / "config.toml").read_text()
    assert run.summary["acc_mean"] == json.loads((run_folder / "summary.json").read_text())["acc_mean"]
    assert "learned_trust(partners=2" in run.described and f"{PEERS} peers" in run.described
    peers = rows(run_folder / "peers.csv")
    assert run.peers.label == [row["peer"] for row in peers]
    assert run.peers.accuracy == [float(row["accuracy"]) for row in peers]
    assert run.peers.samples == [int(row["samples"]) for row in peers]
    histogram = [name for name in peers[0] if name.startswith("class_")]
    assert histogram and all(
        run.peers.extra[name] == [float(row[name]) for row in peers] for name in histogram
    )
    assert set(run.peers.state) == {"finished"} and run.peers.round == [3] * PEERS


def test_attackers_are_marked_in_the_peer_table(run_folder, tmp_path):
    folder = shutil.copytree(run_folder, tmp_path / "r")
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "attackers": [1, 3]}))
    peers = collect([folder]).runs[0].peers
    assert [peer for peer, state in enumerate(peers.state) if state == "attacker"] == [1, 3]


def test_each_peers_last_epsilon_is_in_the_peer_table(private_folder):
    run = collect([private_folder]).runs[0]
    series = rows(private_folder / "epsilon.csv")
    last = max(int(row["round"]) for row in series)
    spent = {int(row["peer"]): float(row["epsilon"]) for row in series if int(row["round"]) == last}
    assert run.peers.epsilon == [spent[peer] for peer in range(PEERS)] and "epsilon" not in run.peers.extra
    assert "epsilon_max" in run.metrics


def test_learned_trust_is_a_heat_map_of_exactly_the_pairs_that_met(run_folder):
    (heat_map,) = collect([run_folder]).runs[0].heat_maps
    trust = rows(run_folder / "trust.csv")
    recorded = sorted({int(row["round"]) for row in trust})
    assert heat_map.name == "trust" and heat_map.recorded == len(recorded)
    assert [heat.round for heat in heat_map.heats] == recorded
    for heat in heat_map.heats:
        cells = base64.b64decode(heat.data)
        assert heat.blocks == heat.size == PEERS and len(cells) == PEERS * PEERS
        pairs = {
            (int(r["peer"]), int(r["partner"])): float(r["trust"])
            for r in trust
            if int(r["round"]) == heat.round
        }
        known = {(i, j) for i in range(PEERS) for j in range(PEERS) if cells[i * PEERS + j] != UNKNOWN}
        assert known == set(pairs)
        top = max(pairs, key=pairs.get)
        assert cells[top[0] * PEERS + top[1]] == UNKNOWN - 1 and heat.high == pytest.approx(pairs[top])


def test_a_large_matrix_keeps_evenly_spaced_rounds_within_the_budget(run_folder, tmp_path):
    """300 peers (more than the dashboard's 200 blocks a side) over 60 recorded rounds."""
    folder = shutil.copytree(run_folder, tmp_path / "big")
    peers, rounds = 300, 60
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "peers": peers}))
    with open(folder / "peers.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["peer", "samples", "accuracy", "loss"])
        writer.writerows([peer, 10, 0.5, 1.0] for peer in range(peers))
    with open(folder / "trust.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["round", "peer", "partner", "trust"])
        writer.writerows(
            [r, peer, (peer + 1) % peers, 0.1 + r / 100]
            for r in range(1, rounds + 1)
            for peer in range(peers)
        )
    (heat_map,) = collect([folder]).runs[0].heat_maps
    kept = [heat.round for heat in heat_map.heats]
    assert heat_map.recorded == rounds and kept[-1] == rounds and kept[0] == 1
    assert len(kept) == HEAT_MAP_BUDGET // MAX_BLOCKS**2 < rounds
    gaps = {b - a for a, b in itertools.pairwise(kept)}
    assert max(gaps) - min(gaps) <= 1  # evenly spaced
    assert all(heat.blocks == MAX_BLOCKS and heat.size == peers for heat in heat_map.heats)


NESTED = "[" * 100_000 + "]" * 100_000
BROKEN: list[tuple[str, str | bytes]] = [
    ("summary.json", ""),
    ("summary.json", "{"),
    ("summary.json", "[1, 2]"),
    ("summary.json", '{"diverged": 3}'),
    ("summary.json", NESTED),
    ("summary.json", b"\xff\xfe{}"),
    ("metrics.csv", ""),
    ("metrics.csv", "round,acc_mean\n"),
    ("metrics.csv", "acc_mean\n0.5\n"),
    ("config.toml", "peers = = 3"),
    ("config.toml", b"peers = 3\n\xff"),
    ("peers.csv", ""),
    ("peers.csv", "who,samples\n0,3\n"),
    ("peers.csv", "peer,samples\n0\n"),
    ("peers.csv", 'peer,samples\n0,"3\n'),
    ("trust.csv", "round,peer,partner,trust\n1,0,99,0.5\n"),
    ("trust.csv", "round,peer,partner,trust\n1,-1,0,0.5\n"),
    ("trust.csv", "round,peer,partner,trust\n1,a,0,0.5\n"),
    ("trust.csv", "round,peer,partner,trust\n1,0,1,high\n"),
    ("trust.csv", "round,peer,partner,trust\n1e999,0,1,0.5\n"),
    ("trust.csv", "round,peer,partner,trust\n1,0,1\n"),
    ("score.csv", "round,peer,score\n1,5,1.0\n"),
    ("score.csv", "round,peer,score\n1,0,\n"),
]


@pytest.mark.parametrize(("name", "content"), BROKEN, ids=[f"{n}:{str(c)[:24]}" for n, c in BROKEN])
def test_a_file_not_as_ppaia_writes_it_is_an_error_naming_it(run_folder, tmp_path, name, content):
    folder = shutil.copytree(run_folder, tmp_path / "r")
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    expected = "summary.json or metrics.csv" if name in ("summary.json", "metrics.csv") else name
    with pytest.raises(ReportError, match=expected.replace(".", r"\.")):
        collect([folder])
    result = CliRunner().invoke(app, ["report", str(folder)], terminal_width=200)
    assert result.exit_code == 2 and expected in result.output and not (folder / "report.html").exists()


@pytest.mark.parametrize("missing", ["summary.json", "config.toml", "peers.csv"])
def test_a_folder_that_is_not_a_run_is_an_error(run_folder, tmp_path, missing):
    folder = shutil.copytree(run_folder, tmp_path / "r")
    (folder / missing).unlink()
    with pytest.raises(ReportError, match=missing.replace(".", r"\.")):
        collect([folder])
    with pytest.raises(ReportError, match="not a folder"):
        collect([tmp_path / "nowhere"])


def test_a_csv_that_is_not_a_rules_state_is_left_alone(run_folder, tmp_path):
    folder = shutil.copytree(run_folder, tmp_path / "r")
    (folder / "notes.csv").write_text("anything,at,all\n1,2,3,4\n")
    (folder / "binary.csv").write_bytes(b"\xff\x00,\n\x00")
    (folder / "other.csv").write_text("round,peer,a,b,c\n1\n")
    assert [heat_map.name for heat_map in collect([folder]).runs[0].heat_maps] == ["trust"]
