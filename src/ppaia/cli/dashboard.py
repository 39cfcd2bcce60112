"""``ppaia dashboard``: the live web page of a run folder or of running peers; and the dashboards that
``ppaia run --dashboard`` and ``ppaia launch --dashboard`` serve while they run (:mod:`ppaia.dashboard`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated

import typer

from ppaia.cli.main import USER_ERRORS, app, console, fail
from ppaia.config import load_config
from ppaia.dashboard import DEFAULT_PORT, Dashboard, DashboardError, RunSource, Source, SwarmSource
from ppaia.network.dht import parse_address
from ppaia.network.errors import NetworkError
from ppaia.simulation import RunResult, Simulation
from ppaia.simulation.live import RECORD_FILE, RecordFileError, RoundRecorder
from ppaia.simulation.report import staging_dir

__all__ = ["LiveRun", "dashboard", "linger", "serve"]


def serve(
    source: Source, port: int | None = None, host: str = "127.0.0.1", public: bool = False
) -> Dashboard:
    """Start serving `source`'s dashboard and print its URL; exit 2 with the reason if it cannot. Port
    None: DEFAULT_PORT, or any free port if that one is taken (another dashboard)."""
    try:
        try:
            board = Dashboard(source, host=host, port=DEFAULT_PORT if port is None else port, public=public)
            url = board.start()
        except DashboardError:
            if port is not None:
                raise
            board = Dashboard(source, host=host, port=0, public=public)
            url = board.start()
    except DashboardError as err:
        raise fail(err) from None
    console.print(f"dashboard: {url}", highlight=False, soft_wrap=True)
    return board


def linger(board: Dashboard, seconds: float | None) -> None:
    """Keep serving `seconds` more (None: until Ctrl-C), then stop."""
    if seconds is None or seconds > 0:
        until = "Ctrl-C" if seconds is None else f"{seconds:g} s"
        console.print(f"the dashboard keeps serving at {board.url} ({until} to stop)", highlight=False)
    deadline = None if seconds is None else time.monotonic() + seconds
    try:
        while board.serving() and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()


class LiveRun:
    """``ppaia run --dashboard``: the run's records (:class:`RoundRecorder`) go into its staging folder
    (renamed to the output folder at the end), and a dashboard follows them from the start."""

    def __init__(self, simulation: Simulation, out: Path, port: int | None) -> None:
        self.staging = staging_dir(out)
        self.out = out
        try:
            self.recorder = RoundRecorder(self.staging / RECORD_FILE, simulation)
            self.board = serve(RunSource(self.staging), port)
        except BaseException:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise

    def finish(self, result: RunResult) -> None:
        """The run ended with `result`: record its end (before its outputs are written)."""
        diverged = None if result.divergence is None else result.divergence.message()
        self.recorder.close(diverged, self.out)

    def abandon(self) -> None:
        """The run failed or was interrupted: stop serving and remove what it wrote."""
        self.board.stop()
        self.recorder.close()
        shutil.rmtree(self.staging, ignore_errors=True)


def _addresses(peers: list[str]) -> list[tuple[str, int]]:
    try:
        return [parse_address(text) for text in peers]
    except NetworkError as err:
        raise fail(err) from None


@app.command("dashboard")
def dashboard(
    run_dir: Annotated[
        Path | None,
        typer.Argument(
            help="a run folder: finished (replayed, with a round slider), or being written by `ppaia run "
            "--dashboard` (followed live)"
        ),
    ] = None,
    peers: Annotated[
        list[str] | None,
        typer.Option(help="HOST:PORT of a running peer to follow through its signed status; repeatable"),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="with --peers: the swarm's config (its topology and attackers are shown)"),
    ] = None,
    swarm: Annotated[
        str, typer.Option(help="with --peers: the swarm's name (the peers' --swarm), to find the others")
    ] = "ppaia",
    discover: Annotated[
        bool,
        typer.Option(help="with --peers: also follow the other peers of the swarm, found through its DHT"),
    ] = True,
    wait: Annotated[
        float,
        typer.Option(
            help="with --peers: the peers' --wait; a silent peer is dropped after the timing policy's "
            "deadline (4 median round times, between 2 s and this)"
        ),
    ] = 60.0,
    host: Annotated[str, typer.Option(help="address to serve on (another than 127.0.0.1 needs --public)")] = (
        "127.0.0.1"
    ),
    port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help=f"port to serve on (default {DEFAULT_PORT}, else a free one; 0: any)"
        ),
    ] = None,
    public: Annotated[
        bool,
        typer.Option(
            "--public", help="allow serving on a non-loopback --host: other machines can see the run"
        ),
    ] = False,
    seconds: Annotated[
        float | None, typer.Option("--for", help="stop after this many seconds (default: at Ctrl-C)")
    ] = None,
) -> None:
    """Serve a live web page of a run folder or of running peers: topology, per-peer table, curves,
    trust heat-map, ledger events. It binds 127.0.0.1 unless --host and --public say otherwise."""
    if (run_dir is None) == (not peers):
        raise fail(ValueError("give either a RUN_DIR or --peers HOST:PORT ..., not both or neither"))
    source: Source
    if run_dir is not None:
        if config is not None:
            raise fail(ValueError("--config goes with --peers (a run folder holds its own config)"))
        source = RunSource(run_dir)
        if not run_dir.is_dir() and source.locate() is None:
            raise fail(RecordFileError(f"{run_dir}: no such run folder, and no run writing it"))
        if run_dir.is_dir() and source.locate() is None and not (run_dir / "metrics.csv").is_file():
            raise fail(RecordFileError(f"{run_dir}: not a run folder (no {RECORD_FILE}, no metrics.csv)"))
    else:
        try:
            known = None if config is None else load_config(config)
        except USER_ERRORS as err:
            raise fail(err) from None
        followed = _addresses(peers or [])
        source = SwarmSource(followed, known, wait=wait, discover=swarm if discover else None)
    board = serve(source, port, host, public)
    linger(board, seconds)
