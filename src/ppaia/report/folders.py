"""A run folder (as ``ppaia run``, ``ppaia launch`` or a sweep writes it) read into the report's
:class:`~ppaia.report.document.Run`.

The folder's files are data, never code: its config is read as TOML, not validated (validating would
import the plugins it names, i.e. run its author's code), and every string in it reaches the page as
text. A file that does not parse as ppaia writes it is a :class:`ReportError` naming the file (and the
line), never a half-drawn report. A rule's peer × partner matrix (e.g. learned trust) is kept as the
live dashboard draws it (:class:`ppaia.dashboard.views.Heat`: at most 200 × 200 block means, one byte
each), at all its recorded rounds or, beyond :data:`HEAT_MAP_BUDGET` bytes, at evenly spaced ones that
include the last.
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ppaia.dashboard.views import PeerRows, State, heat_of
from ppaia.report.document import HeatMap, Run, displayable
from ppaia.report.errors import ReportError
from ppaia.simulation.live import MAX_BLOCKS, Value, block_means
from ppaia.simulation.sweep import read_run

__all__ = ["HEAT_MAP_BUDGET", "RunFolder", "describe_table", "read_run_folder"]

HEAT_MAP_BUDGET = 1 << 20  # cells (bytes) kept per matrix over all its kept rounds: ~26 rounds at 200+ peers
OWN_FILES = {"metrics.csv", "peers.csv"}  # any other CSV may be a rule's per-round state (a snapshot)
PEER_FIELDS = {"peer", "samples", "accuracy", "loss"}  # peers.csv columns with a place in the table


@dataclass(frozen=True)
class RunFolder:
    """A run folder read: what a comparison needs (config table, summary, per-round history) and the
    run's part of the report."""

    config: dict[str, Any]
    summary: dict[str, Any]
    history: list[dict[str, float]]
    document: Run


def read_run_folder(path: Path, name: str) -> RunFolder:
    """Read the run folder `path`, named `name` in the report."""
    if not path.is_dir():
        raise ReportError(f"{path}: not a folder")
    if not (path / "summary.json").is_file():
        raise ReportError(f"{path}: not a run folder (no summary.json)")
    done = read_run(path)
    if done is None:
        raise ReportError(f"{path}: summary.json or metrics.csv is not a run's (unreadable, or no rounds)")
    summary, history = done
    config_text = _text(path / "config.toml")
    try:
        config = tomllib.loads(config_text)
    except tomllib.TOMLDecodeError as err:
        raise ReportError(f"{path / 'config.toml'}: not valid TOML ({err})") from None
    header, peer_rows = _peer_csv(path / "peers.csv", summary)
    last_values: dict[str, list[Value]] = {}
    heat_maps = []
    for file in sorted(path.glob("*.csv")):
        if file.name in OWN_FILES:
            continue
        if not _is_snapshot(_header(file)):
            continue  # not a rule's state (a file a user or another tool put there)
        snapshot, rows = _csv(file)
        if len(snapshot) == 3:
            last_values[snapshot[2]] = _last_values(rows, len(peer_rows), file)
        else:
            heat_maps.append(_heat_map(snapshot[3], rows, len(peer_rows), file))
    columns = dict.fromkeys(key for row in history for key in row)
    document = Run(
        name=name,
        described=describe_table(config),
        config_toml=config_text,
        summary=displayable(summary),
        metrics={column: [_finite(row.get(column)) for row in history] for column in columns},
        peers=_peer_table(header, peer_rows, summary, last_values),
        heat_maps=heat_maps,
    )
    return RunFolder(config, summary, history, document)


def describe_table(config: dict[str, Any]) -> str:
    """What a resolved config (as a TOML table) ran: dataset, partition, rule with their options, peers,
    and the attack if any; the words of ``ppaia.simulation.report.describe`` without validating."""
    parts = [spec_label(config[field]) for field in ("dataset", "partition", "rule") if field in config]
    if "peers" in config:
        parts.append(f"{config['peers']} peers")
    if config.get("attack") is not None:
        share = config.get("attackers")
        on = f"{share:.0%} of peers" if isinstance(share, float) else f"peers {share}"
        parts.append(f"attack {spec_label(config['attack'])} on {on}")
    return " · ".join(parts)


def spec_label(value: Any) -> str:
    """A config value as written in a spec: a component table as ``name(option=value, ...)``."""
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        options = ", ".join(f"{key}={spec_label(item)}" for key, item in value.items() if key != "name")
        return f"{value['name']}({options})" if options else value["name"]
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{file}: missing") from None
    except UnicodeDecodeError as err:
        raise ReportError(f"{file}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ReportError(f"{file}: cannot be read ({err.strerror})") from None


def _header(file: Path) -> list[str]:
    """A CSV file's first row, as far as it reads (to tell whether it is one of ppaia's)."""
    try:
        with open(file, newline="", encoding="utf-8", errors="replace") as handle:
            return next(csv.reader(handle), [])
    except (OSError, csv.Error):
        return []


def _is_snapshot(header: list[str]) -> bool:
    """A rule's per-round state: ``round, peer, <name>`` (a value per peer) or ``round, peer, partner,
    <name>`` (a peer × partner matrix)."""
    return header[:2] == ["round", "peer"] and (
        len(header) == 3 or (len(header) == 4 and header[2] == "partner")
    )


def _csv(file: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows; every row as long as the header."""
    try:
        lines = list(csv.reader(_text(file).splitlines()))
    except csv.Error as err:
        raise ReportError(f"{file}: not CSV ({err})") from None
    if not lines:
        raise ReportError(f"{file}: empty")
    header, rows = lines[0], lines[1:]
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ReportError(f"{file}, line {line}: {len(row)} values under {len(header)} columns")
    return header, rows


def _number(text: str) -> Value:
    """The finite number a text holds, else None."""
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _finite(value: float | None) -> Value:
    return value if value is not None and math.isfinite(value) else None


def _peer_csv(file: Path, summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """peers.csv's header and rows: one row per peer of the run."""
    header, rows = _csv(file)
    if header[:1] != ["peer"]:
        raise ReportError(f"{file}: its first column is not 'peer'")
    peers = summary.get("peers")
    if isinstance(peers, int) and peers != len(rows):
        raise ReportError(f"{file}: {len(rows)} rows for the {peers} peers of summary.json")
    return header, rows


def _peer_table(
    header: list[str], rows: list[list[str]], summary: dict[str, Any], last_values: dict[str, list[Value]]
) -> PeerRows:
    """The dashboard's per-peer table of a finished run: peers.csv (the peer's id as its label, its
    samples, accuracy and loss; its label histogram and any other column as extra columns), the ε each
    peer spent and any other per-peer state of the rule at its last round, and who attacked."""
    columns = {name: [row[k] for row in rows] for k, name in enumerate(header)}
    n = len(rows)
    attackers = summary.get("attackers")
    flagged = {peer for peer in attackers if isinstance(peer, int)} if isinstance(attackers, list) else set()
    final = summary.get("round")
    samples = [_number(text) for text in columns.get("samples", [""] * n)]
    extra = {
        name: [_number(text) for text in texts] for name, texts in columns.items() if name not in PEER_FIELDS
    }
    extra |= {name: values for name, values in last_values.items() if name != "epsilon"}
    return PeerRows(
        id=list(range(n)),
        label=columns["peer"],
        state=[State.ATTACKER if peer in flagged else State.FINISHED for peer in range(n)],
        round=[final if isinstance(final, int) else None] * n,
        accuracy=[_number(text) for text in columns.get("accuracy", [""] * n)],
        loss=[_number(text) for text in columns.get("loss", [""] * n)],
        epsilon=last_values.get("epsilon", [None] * n),
        samples=[None if value is None else int(value) for value in samples],
        rejections=[None] * n,
        bans=[None] * n,
        note=["attacker" if peer in flagged else "" for peer in range(n)],
        extra=extra,
    )


def _numbers(row: list[str], file: Path, line: int, kinds: tuple[type, ...]) -> Iterator[Any]:
    for text, kind in zip(row, kinds, strict=True):
        try:
            yield kind(text)
        except ValueError:
            raise ReportError(f"{file}, line {line}: {text!r} is not {kind.__name__}") from None


def _peer_index(value: int, peers: int, file: Path, line: int) -> int:
    if not 0 <= value < peers:
        raise ReportError(f"{file}, line {line}: peer {value} is not one of the {peers} peers")
    return value


def _last_values(rows: list[list[str]], peers: int, file: Path) -> list[Value]:
    """A per-peer, per-round value (e.g. the ε spent) at each peer's last recorded round."""
    last: dict[int, tuple[int, float]] = {}
    for line, row in enumerate(rows, start=2):
        round_, peer, value = _numbers(row, file, line, (int, int, float))
        _peer_index(peer, peers, file, line)
        if peer not in last or round_ >= last[peer][0]:
            last[peer] = (round_, value)
    return [_finite(last[peer][1]) if peer in last else None for peer in range(peers)]


def _heat_map(name: str, rows: list[list[str]], peers: int, file: Path) -> HeatMap:
    by_round: dict[int, list[tuple[int, int, float]]] = {}
    for line, row in enumerate(rows, start=2):
        round_, peer, partner, value = _numbers(row, file, line, (int, int, int, float))
        entry = (_peer_index(peer, peers, file, line), _peer_index(partner, peers, file, line), value)
        by_round.setdefault(round_, []).append(entry)
    rounds = sorted(by_round)
    blocks = min(peers, MAX_BLOCKS)
    kept = _spread(rounds, max(1, HEAT_MAP_BUDGET // (blocks * blocks)))
    heats = []
    for round_ in kept:
        rows_, columns, values = (np.array(column) for column in zip(*by_round[round_], strict=True))
        heats.append(heat_of(name, round_, block_means(rows_, columns, values.astype(float), peers)))
    return HeatMap(name=name, recorded=len(rounds), heats=heats)


def _spread(rounds: list[int], keep: int) -> list[int]:
    """All `rounds`, or `keep` evenly spaced ones, the last among them."""
    if len(rounds) <= keep:
        return rounds
    if keep == 1:
        return rounds[-1:]
    return sorted({rounds[round((len(rounds) - 1) * i / (keep - 1))] for i in range(keep)})
