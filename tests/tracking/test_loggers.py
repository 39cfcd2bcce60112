"""``ppaia run --log tensorboard|mlflow|wandb`` (issue 16, item 7): each tracker's files, written offline
in a temporary working directory, are read back by that tracker's own reader and hold the run's metrics
per round, its config and its output files. A logger whose package is missing is refused up front."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ppaia.cli.main import app
from ppaia.tracking import LOGGERS
from ppaia.tracking.base import flatten

runner = CliRunner()
QUICK = ["--set", "peers=4", "--set", "rounds=3", "--set", "partition=iid"]
ALL = ["--log", "tensorboard", "--log", "mlflow", "--log", "wandb"]
OUTPUTS = {"config.toml", "metrics.csv", "summary.json", "peers.csv"}


class Lab:
    """A working directory with a run recorded by every logger, and one that diverged."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.run = folder / "runs" / "lab"
        self.diverged = folder / "runs" / "blown"

    def metrics(self, run: Path) -> list[dict[str, float]]:
        with open(run / "metrics.csv", newline="") as handle:
            return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]

    def files(self, run: Path) -> set[str]:
        return {path.name for path in run.iterdir() if path.is_file()}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    folder = tmp_path_factory.mktemp("lab")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        for name in (
            "WANDB_API_KEY",
            "WANDB_DIR",
            "WANDB_MODE",
            "MLFLOW_TRACKING_URI",
            "MLFLOW_EXPERIMENT_NAME",
        ):
            patch.delenv(name, raising=False)
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # no login, nothing in ~
            patch.setenv(name, str(folder / ".home" / name.lower()))
        lab = Lab(folder)
        done = runner.invoke(app, ["run", *QUICK, *ALL, "--out", "runs/lab"])
        assert done.exit_code == 0, done.output
        for where in ("tensorboard: ", "mlflow: run ", "wandb: offline run "):
            assert where in done.output
        blown = runner.invoke(
            app,
            ["run", *QUICK, "--set", "lr=1e308", "--log", "mlflow", "--log", "wandb", "--out", "runs/blown"],
        )
        assert blown.exit_code == 3, blown.output
        yield lab


# --------------------------------------------------------------------------------------------------
# TensorBoard: tensorboard's own event reader


@pytest.mark.slow
def test_tensorboard_events_read_back_by_tensorboards_reader(lab) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    events = list((lab.run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    reader = EventAccumulator(str(events[0]), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    reader.Reload()
    rows = lab.metrics(lab.run)
    columns = [key for key in rows[0] if key != "round"]
    assert sorted(reader.Tags()["scalars"]) == sorted(columns)
    for column in columns:
        logged = [(event.step, event.value) for event in reader.Scalars(column)]
        assert logged == [(int(row["round"]), pytest.approx(row[column], rel=1e-6)) for row in rows]
    texts = {
        tag.split("/")[0]: tensor_util.make_ndarray(reader.Tensors(tag)[0].tensor_proto).item().decode()
        for tag in reader.Tags()["tensors"]
    }
    assert texts["config"] == f"```toml\n{(lab.run / 'config.toml').read_text()}\n```"
    assert json.loads(texts["summary"].removeprefix("```json\n").removesuffix("\n```")) == json.loads(
        (lab.run / "summary.json").read_text()
    )
    plots = {path.stem for path in lab.run.glob("*.png")}
    assert plots and set(reader.Tags()["images"]) == plots
    assert reader.Tags()["histograms"] == ["peer_accuracy"]


# --------------------------------------------------------------------------------------------------
# MLflow: MlflowClient on the local store MLflow chose in the working directory


def _mlflow_run(lab: Lab, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{lab.folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ppaia")
    (found,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    return client, found


@pytest.mark.slow
def test_mlflow_run_read_back_by_mlflows_client(lab) -> None:
    client, run = _mlflow_run(lab, "lab")
    assert run.info.status == "FINISHED"
    config = tomllib.loads((lab.run / "config.toml").read_text())
    assert run.data.params["topology.name"] == "ring" and run.data.params["peers"] == "4"
    assert set(run.data.params) == {key for key, _ in flatten(config)}
    rows = lab.metrics(lab.run)
    for column in (key for key in rows[0] if key != "round"):
        history = client.get_metric_history(run.info.run_id, column)
        logged = sorted((metric.step, metric.value) for metric in history)
        assert logged == [(int(row["round"]), pytest.approx(row[column], rel=1e-9)) for row in rows]
    artifacts = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert artifacts == lab.files(lab.run) and artifacts >= OUTPUTS
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(lab.folder / "mlruns")
    provenance = json.loads((lab.run / "summary.json").read_text())["provenance"]
    assert run.data.tags["mlflow.source.git.commit"] == provenance["git"]["commit"]
    assert run.data.tags["ppaia.out"] == str(lab.run)


@pytest.mark.slow
def test_mlflow_marks_a_diverged_run_failed(lab) -> None:
    _, run = _mlflow_run(lab, "blown")
    assert run.info.status == "FAILED" and run.data.tags["ppaia.diverged"] == "True"


# --------------------------------------------------------------------------------------------------
# Weights & Biases: its own reader of an offline run's transaction log, `wandb leet inspect --json`


def _wandb_records(lab: Lab, name: str) -> list[dict]:
    for folder in sorted((lab.folder / "wandb").glob("offline-run-*")):
        command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(folder)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
        records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        if next(r["run"] for r in records if r["type"] == "run")["display_name"] == name:
            return records
    raise AssertionError(f"no offline W&B run named {name!r}")


@pytest.mark.slow
def test_wandb_offline_run_read_back_by_wandbs_reader(lab) -> None:
    records = _wandb_records(lab, "lab")
    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["telemetry"]["feature"]["offline"] is True
    config = {k: v for k, v in run["config"]["update"].items() if k != "_wandb"}
    assert config == tomllib.loads((lab.run / "config.toml").read_text())
    history = [r["history"] for r in records if r["type"] == "history"]
    rows = lab.metrics(lab.run)
    assert [int(h["step"].get("num", 0)) for h in history] == [int(row["round"]) for row in rows]
    for logged, row in zip(history, rows, strict=True):
        for column, value in row.items():
            if column != "round":
                assert logged["item"][column] == pytest.approx(value, rel=1e-9), column
    (artifact,) = (r["artifact"] for r in records if r["type"] == "artifact")
    assert artifact["type"] == "ppaia-run" and artifact["name"] == "lab"
    assert {entry["path"] for entry in artifact["manifest"]["contents"]} == lab.files(lab.run)
    assert next(r["exit"] for r in records if r["type"] == "exit").get("exit_code", 0) == 0


@pytest.mark.slow
def test_wandb_ends_a_diverged_run_with_exit_code_1(lab) -> None:
    records = _wandb_records(lab, "blown")
    assert next(r["exit"] for r in records if r["type"] == "exit")["exit_code"] == 1


# --------------------------------------------------------------------------------------------------
# Refusals, before anything runs


@pytest.mark.parametrize("name", LOGGERS.names())
def test_a_logger_whose_package_is_missing_is_refused_naming_the_extra(tmp_path, monkeypatch, name) -> None:
    logger = LOGGERS.get(name)
    for package in logger.packages:
        monkeypatch.setitem(sys.modules, package, None)  # what Python's import system sees as absent
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", *QUICK, "--log", name, "--out", "run"])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert f"--log {name}: needs {', '.join(logger.packages)}" in message
    assert f"pip install 'ppaia[{logger.extra}]'" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("telepathy", "unknown logger 'telepathy'"),
        ("mlflow(colour=1)", "colour"),
        ("wandb(mode='cloud')", "mode"),
    ],
)
def test_a_wrong_logger_spec_is_refused_naming_it(tmp_path, monkeypatch, spec, named) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", *QUICK, "--log", spec, "--out", "run"])
    assert result.exit_code == 2 and named in result.output
    assert not (tmp_path / "run").exists()
