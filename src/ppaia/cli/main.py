"""The ``ppaia`` command line: run or sweep experiments, list what is registered (network commands:
:mod:`ppaia.cli.network`).

Exit codes: 0 done; 2 a user error (config, data, output folder, a run that cannot fit in memory), with a
message naming the field; 3 (`ppaia run`) the run diverged: outputs are written up to the last finite
round and the message names the round and the peers.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Annotated, get_origin

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ppaia.attacks import ATTACKS
from ppaia.config import ConfigError, ExperimentConfig, apply_overrides, format_validation_error, load_config
from ppaia.data import DATASETS, PARTITIONERS, DataError, PartitionError
from ppaia.learning import INIT_POLICIES, MODELS, OPTIMIZERS, ModelError
from ppaia.privacy import PRIVACY, PrivacyError
from ppaia.registry import Registry, SpecError
from ppaia.rules import RULES, SYNC_SCHEMES
from ppaia.simulation import RunResult, Simulation
from ppaia.simulation.metrics import LOCAL_PHASE_COLUMNS, METRIC_COLUMNS
from ppaia.simulation.report import OutputError, check_output_dir, write_outputs
from ppaia.simulation.sweep import DEFAULT_METRICS, parse_grid_option, sweep_runs, sweep_with_progress
from ppaia.topology import MIXINGS, TOPOLOGIES, TopologyError

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
)
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
)


def fail(err: Exception) -> typer.Exit:
    """Report a user error (bad config, data, output folder) and exit with code 2."""
    message = format_validation_error(err) if isinstance(err, ValidationError) else str(err)
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)  # one line, unbroken
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
) -> None:
    """Simulate an experiment and write config.toml, metrics.csv, summary.json, peers.csv and plots.

    Exits with 2 on a bad config (naming the field), and with 3 if the run diverges (NaN or inf in an
    honest peer's parameters or loss): it then stops, writes its outputs up to the last finite round and
    records the round and peers where it started under `diverged` in summary.json.
    """
    try:
        cfg = load_config(config, overrides or [])
        out = out or default_out(cfg)
        check_output_dir(out)
        simulation = Simulation(cfg)
    except USER_ERRORS as err:
        raise fail(err) from None

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

        result = simulation.run(on_round)
    write_outputs(result, out)
    console.print(summary_table(result, out))
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
    seeds: Annotated[int, typer.Option(min=1, help="seeds per grid cell (0, 1, ...)")] = 3,
    overrides: Annotated[list[str] | None, typer.Option("--set", "-s", help="override a base field")] = None,
    metric: Annotated[str, typer.Option(help="metric shown in the printed table")] = "acc_mean",
    out: Annotated[
        Path | None, typer.Option(help="output folder (new or empty); default runs/sweep-<time>")
    ] = None,
) -> None:
    """Run a grid of config values × seeds; write sweep.csv (mean ± std per cell) and runs.csv.

    A run that diverges does not stop the sweep: runs.csv marks it `diverged` (with its round), and its
    cell's `diverged` column counts it; the cell's mean ± std are over the seeds that completed.
    """
    try:
        base = apply_overrides(load_config(config).to_table() if config else {}, overrides or [])
        axes = dict(parse_grid_option(option) for option in grid or [])
        out = out or Path("runs") / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
        check_output_dir(out)
        if metric not in METRIC_COLUMNS + LOCAL_PHASE_COLUMNS:
            raise ConfigError(
                f"--metric {metric!r}: not a metric; choose from {', '.join(METRIC_COLUMNS[1:])}"
            )
        metrics = tuple(dict.fromkeys((*DEFAULT_METRICS, metric)))
        result = sweep_with_progress(sweep_runs(base, axes, list(range(seeds))), metrics, console=console)
    except USER_ERRORS as err:
        raise fail(err) from None
    result.write(out)
    table = Table(title=f"{metric}: mean ± std over {seeds} seeds · {out}")
    for key in result.keys:
        table.add_column(key)
    table.add_column(metric, justify="right")
    for cell in result.cells:
        value = (
            f"{cell[f'{metric}_mean']:.4f} ± {cell[f'{metric}_std']:.4f}" if f"{metric}_mean" in cell else "-"
        )
        if cell["diverged"]:
            value += f" ({cell['diverged']} of {cell['seeds']} seeds diverged)"
        table.add_row(*(str(cell[key]) for key in result.keys), value)
    console.print(table)


def _options(cls: type) -> str:
    parts = []
    for name, field in cls.model_fields.items():
        plain = isinstance(field.annotation, type) and get_origin(field.annotation) is None
        kind = field.annotation.__name__ if plain else str(field.annotation).replace("typing.", "")
        default = "required" if field.is_required() else repr(field.default)
        parts.append(f"{name}: {kind} = {default}")
    return ", ".join(parts)


@app.command("list")
def list_components() -> None:
    """Print every registered dataset, partitioner, model, topology, mixing rule and cooperation rule."""
    for title, registry in REGISTRIES:
        table = Table(title=title, title_justify="left", expand=True)
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("options")
        table.add_column("what it does")
        for name, cls in registry:
            table.add_row(name, _options(cls), (inspect.getdoc(cls) or "").splitlines()[0])
        console.print(table)


from ppaia.cli import network  # noqa: E402, F401  (registers peer, launch and status on `app`)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
