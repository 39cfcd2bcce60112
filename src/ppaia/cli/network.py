"""The network commands: ``ppaia peer`` (one peer), ``ppaia launch`` (a local swarm), ``ppaia status``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from ppaia.cli.main import (
    USER_ERRORS,
    DashboardLingerOption,
    DashboardOption,
    DashboardPortOption,
    PluginOption,
    app,
    console,
    default_out,
    fail,
    summary_table,
)
from ppaia.config import ExperimentConfig, load_config
from ppaia.dashboard import SwarmSource
from ppaia.experiment import OwnData
from ppaia.network.checkpoint import CheckpointError
from ppaia.network.datadir import DataDirError, hold
from ppaia.network.dht import BootstrapError, parse_address
from ppaia.network.errors import AgreementError, ListenError, NetworkError
from ppaia.network.identity import Identity
from ppaia.network.learner import check_supported
from ppaia.network.members import read_members
from ppaia.network.openlaunch import OpenSwarm
from ppaia.network.openswarm import OpenPeer, check_open
from ppaia.network.peer import Peer, PeerOptions
from ppaia.network.status import Phase
from ppaia.network.swarm import HOST, Swarm, free_port
from ppaia.network.transfer import fetch_status
from ppaia.report import write_report
from ppaia.simulation import RunResult
from ppaia.simulation.report import check_output_dir, staging_dir, write_outputs

__all__ = ["launch", "peer", "status"]

# A running peer's user errors (any other error from a running peer is a bug, shown with its traceback).
RUN_ERRORS = (CheckpointError, ListenError, BootstrapError, DataDirError, AgreementError)
NETWORK_ERRORS = (*USER_ERRORS, NetworkError)  # before it runs: config, data, address, key, members, ...
log = logging.getLogger(__name__)


def _partition(text: str) -> tuple[int, int]:
    index, _, total = text.partition("/")
    try:
        i, n = int(index), int(total)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected i/N, e.g. 3/8") from None
    if not 0 <= i < n:
        raise typer.BadParameter(f"{text!r}: need 0 <= i < N")
    return i, n


@app.command()
def peer(
    partition: Annotated[
        str | None,
        typer.Option(
            help="i/N: this peer plays index i of N (replay mode); without it the peer joins the open swarm "
            "--swarm by name, with its own --data"
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="experiment TOML file (the built-in default if omitted)")
    ] = None,
    listen: Annotated[
        str, typer.Option(help="HOST:PORT for models (TCP) and the DHT (UDP); port 0: any free port")
    ] = "127.0.0.1:0",
    bootstrap: Annotated[
        list[str] | None, typer.Option(help="HOST:PORT of a peer already in the swarm")
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="this peer's key, checkpoints and logs")] = Path("peer-data"),
    threads: Annotated[int, typer.Option(help="torch threads (0: torch's default)")] = 0,
    overrides: Annotated[list[str] | None, typer.Option("--set", "-s", help="override a field")] = None,
    asynchronous: Annotated[
        bool, typer.Option("--async", help="bounded waits; stale models allowed")
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            help="seconds to wait for the others at start (and for a --bootstrap peer to answer); "
            "synchronous: per neighbour (less once paced)"
        ),
    ] = 60.0,
    deadline: Annotated[float, typer.Option(help="asynchronous: seconds a mixing step waits")] = 2.0,
    swarm: Annotated[str, typer.Option(help="swarm name (DHT topics)")] = "ppaia",
    members: Annotated[
        Path | None,
        typer.Option(help="TOML file of index = peer id: follow only these keys (ppaia launch writes one)"),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="this peer's own training data instead of partition i of the config's dataset: a .npz or "
            ".csv file, or a dataset spec, e.g. \"csv(path='ward3.csv', label_column='diagnosis')\""
        ),
    ] = None,
    test: Annotated[
        str | None,
        typer.Option(help="with --data: a test set to report accuracy on (else its held-out share)"),
    ] = None,
    attack: Annotated[
        str | None,
        typer.Option(help="misbehave: send what this attack sends (e.g. sign_flip), to test defences"),
    ] = None,
    plugin: PluginOption = None,
) -> None:
    """Run one peer: train on partition i of N (or on its own --data), exchange models, checkpoint.

    Without --partition the peer joins the open swarm named --swarm through any --bootstrap member: it
    needs its own --data, knows no N and no index (its identity is its key), and picks random live
    partners each round; topology rules (consensus, p2pl, median, ...) mix over an overlay of links both
    ends agreed to, at most the config's random_regular k (else 4) a peer; fedavg is refused
    (docs/network.md, "Open swarms")."""
    # force: an imported library (opacus) already called basicConfig at WARNING, which would make this a
    # no-op and drop the peer's INFO lines (resumes, ...); kademlia's INFO is one line per RPC
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("kademlia").setLevel(logging.WARNING)
    index, total = _partition(partition) if partition is not None else (0, None)
    if threads > 0:
        torch.set_num_threads(threads)
    lock = contextlib.ExitStack()  # holds the data directory until this process ends
    try:
        if total is None and (data is None or members is not None or attack is not None):
            raise typer.BadParameter(
                "a peer of an open swarm (no --partition) brings its own --data, and takes neither "
                "--members nor --attack",
                param_hint="--partition",
            )
        mine = [f"attack={attack}", f"attackers=[{index}]"] if attack is not None else []
        sized = [] if total is None else [f"peers={total}"]
        cfg = load_config(config, [*(overrides or []), *sized, *mine], plugin)
        if test is not None and data is None:
            raise typer.BadParameter(
                "only with --data (without, a peer uses the config's test set)", param_hint="--test"
            )
        own = None if data is None else OwnData.load(data, test, cfg.seed)
        host, port = parse_address(listen, any_port=True)
        port = port or free_port(host)  # one number free for both TCP and UDP, printed below
        options = PeerOptions(
            index=index,
            data_dir=data_dir,
            listen=(host, port),
            bootstrap=tuple(parse_address(seed) for seed in bootstrap or []),
            swarm=swarm,
            members=() if members is None or total is None else read_members(members, total),
            synchronous=not asynchronous,
            wait=wait,
            deadline=deadline,
        )
        lock.enter_context(hold(data_dir))  # before the key in it is read
        node = Peer(cfg, options, own=own) if total is not None else OpenPeer(cfg, options, own)
    except NETWORK_ERRORS as err:
        lock.close()
        raise fail(err) from None
    try:
        with lock:
            asyncio.run(node.run())
    except RUN_ERRORS as err:
        raise fail(err) from None


def _progress_table(statuses: dict[int, dict | None], rounds: int, exited: dict[int, int | None]) -> Table:
    table = Table(title=f"swarm · {len(exited)} peers · {rounds} rounds")
    for column in ("peer", "round", "phase", "accuracy", "left out", "rejected", "state"):
        table.add_column(column, justify="right")
    for index in sorted(exited):
        info = statuses.get(index) or {}
        code = exited[index]
        state = "running" if code is None else ("finished" if code == 0 else f"exit {code}")
        accuracy = info.get("accuracy")
        table.add_row(
            str(index),
            str(info.get("round", "-")),
            str(info.get("phase", "-")),
            "-" if accuracy is None else f"{accuracy:.3f}",
            str(info.get("missing", "-")),
            str(sum(info.get("rejections", {}).values())) if info else "-",
            state,
        )
    return table


def _final(
    last: dict[int, dict | None], result: RunResult, codes: dict[int, int], rounds: int
) -> dict[int, dict]:
    """Each peer's row once every peer exited, as the run's results have it (the last status polled may
    predate the peer's last round): its accuracy with its last checkpointed model, and a peer that
    finished did every round."""
    return {
        i: (last.get(i) or {})
        | {"accuracy": float(result.peer_accuracy[i])}
        | ({"round": rounds, "phase": Phase.FINISHED} if code == 0 else {})
        for i, code in codes.items()
    }


@app.command()
def launch(
    config: Annotated[
        Path | None, typer.Option(help="experiment TOML file (the built-in default if omitted)")
    ] = None,
    peers: Annotated[
        int | None, typer.Option(help="number of peer processes (default: the config's)")
    ] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", "-s", help="override a field")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (new or empty)")] = None,
    asynchronous: Annotated[bool, typer.Option("--async", help="peers wait at most --deadline")] = False,
    timeout: Annotated[float, typer.Option(help="seconds before the whole swarm is stopped")] = 1800.0,
    open_swarm: Annotated[
        bool,
        typer.Option(
            "--open",
            help="an open swarm: each peer gets its own data file and joins by name (no N, no index); "
            "the config's churn schedule says when peers join, leave and come back",
        ),
    ] = False,
    per_process: Annotated[
        int, typer.Option(min=1, help="with --open: peers hosted in one process (own keys and sockets)")
    ] = 1,
    plugin: PluginOption = None,
    dashboard: DashboardOption = False,
    dashboard_port: DashboardPortOption = None,
    dashboard_linger: DashboardLingerOption = None,
) -> None:
    """Start a local swarm of peer processes on 127.0.0.1, show live progress, write the run's outputs.
    With --dashboard, also serve a live web page of the peers (followed through their statuses)."""
    try:
        # the peers import the plugins from the config the swarm writes for them (its `plugins`)
        cfg = load_config(config, [*(overrides or []), *([f"peers={peers}"] if peers else [])], plugin)
        check_supported(cfg)
        out = out or default_out(cfg)
        if open_swarm:
            check_output_dir(out)
        else:
            staging = staging_dir(out)
    except NETWORK_ERRORS as err:
        raise fail(err) from None
    if open_swarm:
        _launch_open(cfg, out, per_process)
        return
    from ppaia.cli.dashboard import linger, serve  # here: cli.dashboard imports cli.main, which imports this

    swarm = Swarm(cfg, staging, synchronous=not asynchronous)
    addresses = [(HOST, port) for port in swarm.ports]
    board = serve(SwarmSource(addresses, cfg), dashboard_port) if dashboard else None
    started = time.monotonic()
    swarm.start()
    try:
        last: dict[int, dict | None] = {}
        with Live(console=console, refresh_per_second=4) as live:
            while swarm.running():
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"the swarm did not finish within {timeout:.0f} s")
                statuses = asyncio.run(swarm.statuses())
                last |= {i: info.model_dump(mode="json") for i, info in statuses.items() if info is not None}
                exited = swarm.exit_codes()
                live.update(_progress_table(last, cfg.rounds, exited))
                time.sleep(0.5)
            codes = swarm.wait(timeout=10)
            elapsed = time.monotonic() - started
            result = swarm.result()
            live.update(_progress_table(_final(last, result, codes, cfg.rounds), cfg.rounds, codes))
        if not console.is_terminal:  # Live ends its last frame with a newline only on a terminal
            console.line()
    except BaseException:
        swarm.stop()
        if board is not None:
            board.stop()
        console.print(f"peer logs kept in {staging}/peers")
        raise
    failed = {i: code for i, code in codes.items() if code != 0}
    write_outputs(result, out, staging)
    timing = [
        ("wall seconds (swarm: first start to last exit)", f"{elapsed:.2f}"),
        ("seconds in rounds (slowest peer: train + mix)", f"{result.final['wall_s']:.2f}"),
    ]
    console.print(summary_table(result, out, timing))
    console.print(f"report: {write_report([out])}", highlight=False, soft_wrap=True)
    for index, problems in sorted(swarm.damaged.items()):  # counted with its last model that verifies
        for problem in problems:
            console.print(f"[bold yellow]peer {index}: checkpoint refused:[/] {escape(f'{out}/{problem}')}")
    if failed:
        console.print(f"[bold red]peers that failed:[/] {failed} (logs in {out}/peers/<i>/peer.log)")
    if board is not None:
        linger(board, dashboard_linger)
    if failed or swarm.damaged:
        raise typer.Exit(code=1)


def _launch_open(cfg: ExperimentConfig, out: Path, per_process: int) -> None:
    """``ppaia launch --open``: an open swarm in `out` (see :mod:`ppaia.network.openlaunch`)."""
    try:
        check_open(cfg)
        out.mkdir(parents=True, exist_ok=True)
        swarm = OpenSwarm(cfg, out, per_process=per_process)
    except NETWORK_ERRORS as err:
        raise fail(err) from None
    console.print(
        f"open swarm {swarm.swarm!r}: {cfg.peers} peers in {len(swarm.groups)} processes, logs in {out}"
    )
    started = time.monotonic()
    try:
        events = swarm.run()
    except TimeoutError as err:
        raise fail(err) from None
    for event in events:
        console.print(event, highlight=False)
    final = swarm.final()
    table = Table(title=f"open swarm · {len(final)} peers ran · {time.monotonic() - started:.1f} s")
    for column in ("peer", "last round", "accuracy"):
        table.add_column(column, justify="right")
    for i, row in sorted(final.items()):
        table.add_row(str(i), str(row["round"]), f"{row['accuracy']:.3f}")
    console.print(table)
    console.print(f"summary: {swarm.write_summary()}", highlight=False, soft_wrap=True)
    due = swarm.alive[-1].nonzero().flatten().tolist()  # in the swarm at the end: each must finish
    unfinished = [i for i in due if final.get(i, {"round": 0})["round"] < cfg.rounds]
    if unfinished:
        console.print(f"[bold red]peers that did not finish:[/] {unfinished} (logs in {out}/host-*.log)")
        raise typer.Exit(code=1)


@app.command()
def status(
    address: Annotated[str, typer.Argument(help="HOST:PORT of a running peer")],
    timeout: Annotated[float, typer.Option(help="seconds to wait for the answer")] = 5.0,
) -> None:
    """Ask a running peer for its status (signed; printed as JSON)."""
    try:
        host, port = parse_address(address)
        info = asyncio.run(fetch_status(host, port, identity=Identity.generate(), timeout=timeout))
    except NETWORK_ERRORS as err:
        raise fail(err) from None
    console.print_json(info.model_dump_json())
