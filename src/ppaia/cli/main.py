"""The ``ppaia`` command line: run or sweep experiments, list what is registered (network commands:
:mod:`ppaia.cli.network`).

Exit codes: 0 done; 2 a user error (config, data, output folder, a run that cannot fit in memory), with a
message naming the field; 3 (`ppaia run`) the run diverged: outputs are written up to the last finite
round and the message names the round and the peers.
"""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import torch.distributed as dist
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ppaia.attacks import ATTACKS
from ppaia.cli.listing import options_text
from ppaia.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    format_validation_error,
    load_config,
    with_plugins,
)
from ppaia.data import DATASETS, PARTITIONERS, DataError, PartitionError
from ppaia.devices import resolve_device
from ppaia.learning import INIT_POLICIES, MODELS, OPTIMIZERS, ModelError
from ppaia.plugins import PluginError, load_plugins
from ppaia.privacy import PRIVACY, PrivacyError
from ppaia.registry import Registry, SpecError
from ppaia.report import write_report
from ppaia.rules import RULES, SYNC_SCHEMES
from ppaia.simulation import RunResult, Simulation
from ppaia.simulation.executors import Backend, BackendError, executor_for
from ppaia.simulation.metrics import LOCAL_PHASE_COLUMNS, METRIC_COLUMNS
from ppaia.simulation.report import OutputError, check_output_dir, write_outputs
from ppaia.simulation.sharded import check_shardable, launched, process_group, sharded_simulation
from ppaia.simulation.sweep import (
    CURVES,
    DEFAULT_METRICS,
    SPEC_FILE,
    SweepFailed,
    SweepSpec,
    cell_label,
    parse_grid_option,
    sweep_with_progress,
)
from ppaia.topology import MIXINGS, TOPOLOGIES, TopologyError
from ppaia.tracking import LOGGERS, TrackingError, open_loggers, record_run

if TYPE_CHECKING:
    from ppaia.cli.dashboard import LiveRun

app = typer.Typer(add_completion=False, no_args_is_help=True, help="PPAIA: serverless federated learning.")
console = Console()
errors = Console(stderr=True)

USER_ERRORS = (
    ValidationError,
    ConfigError,
    SpecError,
    DataError,
    PartitionError,
    TopologyError,
    ModelError,
    OutputError,
    PrivacyError,
    PluginError,
    TrackingError,
    BackendError,
)
PluginOption = Annotated[
    list[str] | None,
    typer.Option(
        "--plugin",
        metavar="MODULE",
        help="import this module first (a name, or a .py file): it registers your own rules, datasets, "
        "models, ...; repeatable; recorded in the run's config.toml",
    ),
]
LogOption = Annotated[
    list[str] | None,
    typer.Option(
        "--log",
        metavar="LOGGER",
        help="also record the run in tensorboard, mlflow or wandb (offline; each an extra: pip install "
        "'ppaia[mlflow]'); options as in a config, e.g. \"mlflow(experiment='dp')\"; repeatable",
    ),
]
DashboardOption = Annotated[
    bool,
    typer.Option(
        "--dashboard",
        help="serve a live web page of the run while it runs (127.0.0.1; the URL is printed); see also "
        "`ppaia dashboard`",
    ),
]
DashboardPortOption = Annotated[
    int | None,
    typer.Option(
        "--dashboard-port", min=0, max=65535, help="the dashboard's port (default 8350, else a free one)"
    ),
]
DashboardLingerOption = Annotated[
    float | None,
    typer.Option(
        "--dashboard-linger",
        min=0,
        help="after the run, keep the dashboard serving this many seconds (default: until Ctrl-C)",
    ),
]
DIVERGED = 3  # exit code of a run whose honest peers' parameters or loss stopped being finite
REGISTRIES: tuple[tuple[str, Registry], ...] = (
    ("datasets", DATASETS),
    ("partitioners", PARTITIONERS),
    ("models", MODELS),
    ("init policies", INIT_POLICIES),
    ("optimizers", OPTIMIZERS),
    ("topologies", TOPOLOGIES),
    ("mixing weights", MIXINGS),
    ("cooperation rules", RULES),
    ("sync schemes (flobc's `sync`)", SYNC_SCHEMES),
    ("attacks", ATTACKS),
    ("privacy mechanisms", PRIVACY),
    ("experiment loggers (--log)", LOGGERS),
)


def fail(err: Exception) -> typer.Exit:
    """Report a user error (bad config, data, output folder) and exit with code 2."""
    message = format_validation_error(err) if isinstance(err, ValidationError) else str(err)
    # one line, unbroken; escaped: a message's own brackets (pip install 'ppaia[mlflow]') are not markup
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def default_out(config: ExperimentConfig) -> Path:
    stem = Path("runs") / f"{config.rule.name}-{config.peers}p-{time.strftime('%Y%m%d-%H%M%S')}"
    out, suffix = stem, 1
    while out.exists():
        out, suffix = stem.with_name(f"{stem.name}-{suffix}"), suffix + 1
    return out


def summary_table(result: RunResult, out: Path, timing: list[tuple[str, str]] | None = None) -> Table:
    """The run's final metrics; `timing`: the rows about time, if not the simulator's (the network
    runtime measures other spans)."""
    final = result.final
    table = Table(title=f"{result.config.rule.label()} · {result.params.shape[0]} peers · {out}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("rounds", f"{int(final['round'])}"),
        ("test accuracy mean", f"{final['acc_mean']:.4f}"),
        ("test accuracy min – max", f"{final['acc_min']:.4f} – {final['acc_max']:.4f}"),
        ("test accuracy std", f"{final['acc_std']:.4f}"),
        ("test loss mean", f"{final['loss_mean']:.4f}"),
        ("consensus distance", f"{final['consensus_distance']:.3g}"),
        ("bytes sent (total)", f"{int(final['bytes_cumulative']):,}"),
        *(
            timing
            or [
                ("wall seconds (training)", f"{final['wall_s']:.2f}"),
                ("set-up seconds", f"{result.setup_s:.2f}"),
            ]
        ),
    ]
    sampled = result.config.eval_peers
    if sampled is not None and sampled < result.params.shape[0]:
        rows.insert(1, ("peers evaluated per round", f"{sampled:,} drawn (the last round: all)"))
    for name, value in rows:
        table.add_row(name, value)
    return table


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Argument(help="experiment TOML file; the built-in default if omitted")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="override a field: key=value or field.option=value"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="output folder (new or empty); default runs/<rule>-<N>p-<time>")
    ] = None,
    plugin: PluginOption = None,
    log: LogOption = None,
    dashboard: DashboardOption = False,
    dashboard_port: DashboardPortOption = None,
    dashboard_linger: DashboardLingerOption = None,
    ranks: Annotated[
        int | None,
        typer.Option(
            "--ranks",
            min=1,
            help="shard the peers over this many processes on this machine (torchrun; Gloo on CPU, NCCL "
            "with device=cuda): the same outputs as one process; across machines start `torchrun ... -m "
            "ppaia run` on each (see the README)",
        ),
    ] = None,
) -> None:
    """Simulate an experiment and write config.toml, metrics.csv, summary.json, peers.csv, plots and
    report.html (everything in one file that opens offline; see `ppaia report`).

    Started by torchrun with several ranks (or with --ranks), each rank holds a block of the peers and
    rank 0 writes the outputs.

    With --dashboard it also serves a live web page of the run and writes rounds.jsonl (each round's
    per-peer values, which the page and `ppaia dashboard RUN_DIR` replay).

    Exits with 2 on a bad config (naming the field), and with 3 if the run diverges (NaN or inf in an
    honest peer's parameters or loss): it then stops, writes its outputs up to the last finite round and
    records the round and peers where it started under `diverged` in summary.json.
    """
    if ranks is not None and ranks > 1 and not launched():
        _launch_ranks(ranks, config, overrides or [], out, plugin or [], log or [], dashboard)
        return
    group = ExitStack()
    try:
        cfg = load_config(config, overrides or [], plugin)
        loggers = open_loggers(log or [])
        out = out or default_out(cfg)
        if launched():  # one of torchrun's ranks: rank 0 writes; a rank that fails stops them all
            if dashboard:
                raise ConfigError("--dashboard: not with several ranks; run in one process to watch it")
            group.enter_context(process_group(resolve_device(cfg.device)))
            if dist.get_rank() == 0:
                check_output_dir(out)
            simulation = sharded_simulation(cfg)  # every rank refuses a bad config alike
        else:
            check_output_dir(out)
            simulation = Simulation(cfg)
    except USER_ERRORS as err:
        group.close()
        raise fail(err) from None
    with group:
        if not simulation.axis.root:  # another rank's block: it takes part in every collective
            simulation.run()
            return
        result, live = _run_with_progress(simulation, cfg, out, dashboard, dashboard_port)
    _finish_run(result, live, out, loggers, dashboard_linger)


def _launch_ranks(
    ranks: int,
    config: Path | None,
    overrides: list[str],
    out: Path | None,
    plugins: list[str],
    log: list[str],
    dashboard: bool,
) -> None:
    """`ppaia run --ranks R`: check what one process can, then start the same command on R ranks with
    torchrun (one machine, a free port) and exit as rank 0 did: 3 if the run diverged."""
    try:
        cfg = load_config(config, overrides, plugins)
        check_shardable(cfg, ranks)
        resolve_device(cfg.device)
        if dashboard:
            raise ConfigError("--dashboard: not with --ranks; run in one process to watch it")
        out = (out or default_out(cfg)).absolute()
        check_output_dir(out)
    except USER_ERRORS as err:
        raise fail(err) from None
    argv = [*([] if config is None else [str(config)]), "--out", str(out)]
    for flag, values in (("--set", overrides), ("--plugin", plugins), ("--log", log)):
        argv += [part for value in values for part in (flag, value)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    code = subprocess.run([*launcher, "-m", "ppaia", "run", *argv], check=False).returncode
    summary = out / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("diverged") is not None:
        raise typer.Exit(code=DIVERGED)
    if code != 0:
        errors.print(f"[bold red]error:[/] the ranks stopped (torchrun exit code {code})", highlight=False)
        raise typer.Exit(code=code)


def _run_with_progress(
    simulation: Simulation, cfg: ExperimentConfig, out: Path, dashboard: bool, dashboard_port: int | None
) -> tuple[RunResult, LiveRun | None]:
    """Run with a progress bar (and the dashboard), and write the outputs."""
    from ppaia.cli.dashboard import LiveRun  # registered below, after `app`

    live = LiveRun(simulation, out, dashboard_port) if dashboard else None

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("acc {task.fields[acc]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{cfg.rule.name} · {simulation.n_peers} peers", total=cfg.rounds, acc="-")

        def on_round(_round: int, row: dict[str, float] | None) -> None:
            fields = {"acc": f"{row['acc_mean']:.3f}"} if row else {}
            progress.update(task, advance=1, **fields)

        try:
            result = simulation.run(on_round, observe=None if live is None else live.recorder.record)
        except BaseException:
            if live is not None:
                live.abandon()
            raise
    if live is not None:
        live.finish(result)
    write_outputs(result, out, None if live is None else live.staging)
    return result, live


def _finish_run(
    result: RunResult, live: LiveRun | None, out: Path, loggers: list, dashboard_linger: float | None
) -> None:
    """Print the summary and the report's path, record the run in the loggers, let the dashboard linger,
    and exit 3 if the run diverged."""
    from ppaia.cli.dashboard import linger

    console.print(summary_table(result, out))
    console.print(f"report: {write_report([out])}", highlight=False, soft_wrap=True)
    try:
        for where in record_run(loggers, out):
            console.print(where, highlight=False, soft_wrap=True)
    except TrackingError as err:
        raise fail(err) from None
    if live is not None:
        linger(live.board, dashboard_linger)
    if result.divergence is not None:
        errors.print(f"[bold red]error:[/] {result.divergence.message()}; outputs in {out}", highlight=False)
        raise typer.Exit(code=DIVERGED)


@app.command("sweep")
def sweep_command(
    config: Annotated[
        Path | None, typer.Argument(help="base experiment TOML; the built-in default if omitted")
    ] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option("--grid", "-g", help="key=v1,v2,... (or a TOML list); repeat for a grid"),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(min=1, help="seeds per grid cell (0, 1, ...); default 3")
    ] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", "-s", help="override a base field")] = None,
    metric: Annotated[
        str | None,
        typer.Option(help="metric shown in the printed table, tabulated and plotted; default acc_mean"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="output folder (new or empty); default runs/sweep-<time>")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="finish the interrupted sweep in this folder: run only the runs it lacks"),
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option("--from", help="run the sweep of this folder (or its sweep.toml) again, into --out"),
    ] = None,
    plots: Annotated[
        bool, typer.Option(help="draw each run's plots and the comparison plots (tables are always written)")
    ] = True,
    plugin: PluginOption = None,
    backend: Annotated[
        Backend, typer.Option(help="where the runs run: here one after another, or as Ray tasks")
    ] = Backend.LOCAL,
    address: Annotated[
        str | None,
        typer.Option(
            metavar="ADDR",
            help="Ray: the cluster's head (HOST:PORT, ray://HOST:PORT or auto); default: start a local one",
        ),
    ] = None,
    cpus_per_run: Annotated[
        int | None, typer.Option(min=1, help="Ray: CPUs (and torch threads) each run gets; default 1")
    ] = None,
) -> None:
    """Run a grid of config values × seeds, keeping every run; summarise each cell over its seeds.

    The output folder gets: sweep.toml (the sweep's spec: base config, grid, seeds, metrics); runs/<cell>/
    seed-<k>/, each run's folder as `ppaia run` writes it, written as soon as that run ends; runs.csv (every
    run's final metrics); sweep.csv (per cell: mean, sample std and 95% CI half-width of each metric);
    results.md and results.tex (mean ± 95% CI and n per cell); honest_acc_mean, honest_loss_mean and the
    --metric as .png and .pdf (one curve per cell against rounds: mean over seeds, 95% confidence band);
    report.html (all of it and every run, interactive, in one file that opens offline: `ppaia report`).

    `--resume DIR` finishes an interrupted sweep from DIR/sweep.toml: complete runs are read back, missing
    or partial ones run. `--from DIR --out NEW` runs DIR's sweep again into NEW. Both take the whole spec
    from the folder, so neither accepts CONFIG, --grid, --set, --seeds or --metric. `--no-plots` leaves
    out every image, for sweeps whose runs take less time than drawing them.

    A run that diverges does not stop the sweep: runs.csv marks it `diverged` (with its round), and its
    cell's `diverged` column counts it; the cell's statistics are over the seeds that completed.

    `--backend ray` runs each run as a task on the Ray cluster at `--address` (a local one, started and
    stopped with the sweep, without it); the folder and its numbers are the local sweep's. A run that
    raises does not stop the others: each failed run is named (cell, seed, error), the sweep exits with 2
    without its tables, and `--resume DIR` runs only the failed and missing runs.
    """
    running = False  # whether a failure comes from a run (not from the options), after others completed
    try:
        load_plugins(plugin or [])  # before the configs that name what they register
        if resume or source:
            spec, out = _stored_sweep(resume, source, out, given=[config, grid, overrides, seeds, metric])
        else:
            metric = metric or "acc_mean"
            if metric not in METRIC_COLUMNS + LOCAL_PHASE_COLUMNS:
                raise ConfigError(
                    f"--metric {metric!r}: not a metric; choose from {', '.join(METRIC_COLUMNS[1:])}"
                )
            spec = SweepSpec(
                base=with_plugins(
                    apply_overrides(load_config(config).to_table() if config else {}, overrides or []),
                    plugin or [],
                ),
                grid=dict(parse_grid_option(option) for option in grid or []),
                seeds=list(range(seeds or 3)),
                metrics=list(dict.fromkeys((*DEFAULT_METRICS, metric))),
                metric=metric,
            )
            out = out or _default_sweep_out()
            check_output_dir(out)
        runs = spec.runs()  # every config validated before anything runs or is written
        executor = executor_for(backend, address, cpus_per_run)  # Ray installed, its address answering
        fresh, running = (None if resume else spec), True  # a fresh spec is saved with its first run
        result = sweep_with_progress(
            runs, tuple(spec.metrics), console=console, out=out, spec=fresh, plots=plots, executor=executor
        )
    except (*USER_ERRORS, SweepFailed) as err:
        stop = _failed_runs(err) if isinstance(err, SweepFailed) else fail(err)
        if running and out is not None and (out / SPEC_FILE).is_file():
            note = f"the runs that completed are kept: `ppaia sweep --resume {out}` runs the rest"
            errors.print(note, highlight=False, soft_wrap=True)
        raise stop from None
    result.write(out, curves=(*CURVES, spec.metric) if plots else ())
    table = Table(title=f"{spec.metric}: mean ± 95% CI over the n seeds that completed · {out}")
    for key in result.keys:
        table.add_column(key)
    table.add_column("n", justify="right")
    table.add_column(spec.metric, justify="right")
    for cell in result.cells:
        mean, half = cell.get(f"{spec.metric}_mean"), cell.get(f"{spec.metric}_ci95")
        value = "-" if mean is None else f"{mean:.4f}" + ("" if math.isnan(half) else f" ± {half:.4f}")
        if cell["diverged"]:
            value += f" ({cell['diverged']} of {cell['seeds']} seeds diverged)"
        table.add_row(*(str(cell[key]) for key in result.keys), str(cell["seeds"] - cell["diverged"]), value)
    console.print(table)
    console.print(f"report: {write_report([out])}", highlight=False, soft_wrap=True)


def _failed_runs(failed: SweepFailed) -> typer.Exit:
    """Name each failed run of a sweep in one line (with its traceback, unless it is a user error) and
    exit with 2."""
    for run, failure in failed.failures:
        user = isinstance(failure.error, USER_ERRORS)
        if not user:
            errors.print(escape(failure.trace.rstrip()), highlight=False, soft_wrap=True)
        cause = str(failure.error) if user else failure.line()
        where = escape(f"{cell_label(list(run.cell), run.cell)}, seed {run.seed}: {cause}")
        errors.print(f"[bold red]error:[/] run {where}", highlight=False, soft_wrap=True)
    errors.print(f"{failed}; the others completed", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _stored_sweep(
    resume: Path | None, source: Path | None, out: Path | None, given: list[object]
) -> tuple[SweepSpec, Path]:
    """The spec and output folder of `--resume DIR` (DIR itself) or `--from DIR` (`out`, new)."""
    if resume and source:
        raise ConfigError("--resume and --from: choose one")
    if any(given):
        option = "--resume" if resume else "--from"
        raise ConfigError(
            f"{option} takes the whole sweep from the folder's sweep.toml; leave out CONFIG, --grid, --set, "
            "--seeds and --metric"
        )
    if resume:
        if out:
            raise ConfigError("--resume DIR writes into DIR; leave out --out")
        return SweepSpec.load(resume), resume
    spec = SweepSpec.load(source)
    out = out or _default_sweep_out()
    check_output_dir(out)
    return spec, out


def _default_sweep_out() -> Path:
    return Path("runs") / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"


@app.command("list")
def list_components(plugin: PluginOption = None) -> None:
    """Print every registered dataset, partitioner, model, topology, mixing rule and cooperation rule
    (with --plugin, those the modules register too)."""
    try:
        load_plugins(plugin or [])
    except USER_ERRORS as err:
        raise fail(err) from None
    for title, registry in REGISTRIES:
        table = Table(title=title, title_justify="left", expand=True)
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("options")
        table.add_column("what it does")
        for name, cls in registry:
            table.add_row(name, Text(options_text(cls)), (inspect.getdoc(cls) or "").splitlines()[0])
        console.print(table)


from ppaia.cli import dashboard as _dashboard  # noqa: E402, F401  (registers dashboard on `app`)
from ppaia.cli import ledger as _ledger  # noqa: E402, F401  (registers the `ledger` commands on `app`)
from ppaia.cli import network  # noqa: E402, F401  (registers peer, launch and status on `app`)
from ppaia.cli import report as _report  # noqa: E402, F401  (registers report on `app`)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
