"""summary.json says what produced a run (issue 16, item 8): versions, git commits, date, machine and the
full command — checked on a real `ppaia run` process started from a repository of the user's own."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ppaia
from ppaia.provenance import git_revision

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false"]


def _git(folder: Path, *args: str) -> str:
    return subprocess.run([*GIT, "-C", str(folder), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repository(tmp_path) -> Path:
    """A git repository with one commit, like a researcher's experiment folder."""
    folder = tmp_path / "study"
    folder.mkdir()
    _git(folder, "init", "-q")
    (folder / "notes.txt").write_text("plan\n")
    _git(folder, "add", "notes.txt")
    _git(folder, "commit", "-q", "-m", "start")
    return folder


@pytest.mark.slow  # a real `ppaia run` process: torch's import and a run
def test_a_run_records_what_produced_it(repository) -> None:
    command = [
        sys.executable,
        "-m",
        "ppaia",
        "run",
        "--set",
        "peers=2",
        "--set",
        "rounds=1",
        "--out",
        "my run",
    ]
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    done = subprocess.run(command, cwd=repository, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads((repository / "my run" / "summary.json").read_text())["provenance"]

    assert record["versions"] == {
        "ppaia": importlib.metadata.version("ppaia"),
        "torch": torch.__version__,
        "numpy": __import__("numpy").__version__,
        "python": platform.python_version(),
    }
    date = datetime.datetime.fromisoformat(record["date"])
    assert date.utcoffset() == datetime.timedelta(0)
    assert before <= date <= datetime.datetime.now(datetime.UTC)
    assert shlex.split(record["command"])[1:] == command[3:]  # the process's argv, pasteable
    assert Path(record["working_dir"]) == repository
    assert record["machine"]["hostname"] == socket.gethostname()
    assert record["machine"]["cpus"] == os.cpu_count()
    assert record["machine"]["platform"] == platform.platform()
    commit = _git(repository, "rev-parse", "HEAD").strip()
    assert record["working_dir_git"] == {"commit": commit, "dirty": False, "root": str(repository)}
    package = Path(ppaia.__file__).parent  # the tests run on a checkout (make installs it editable)
    assert record["git"]["commit"] == _git(package, "rev-parse", "HEAD").strip()
    assert record["git"]["root"] == _git(package, "rev-parse", "--show-toplevel").strip()


def test_git_revision_reads_commit_and_dirty_state(repository, tmp_path) -> None:
    commit = _git(repository, "rev-parse", "HEAD").strip()
    assert git_revision(repository) == {"commit": commit, "dirty": False, "root": str(repository)}
    (repository / "runs").mkdir()
    (repository / "runs" / "out.csv").write_text("1\n")  # untracked outputs do not make it dirty
    assert git_revision(repository / "runs")["dirty"] is False
    (repository / "notes.txt").write_text("changed\n")
    assert git_revision(repository)["dirty"] is True
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert git_revision(outside) is None
    assert git_revision(repository / "runs", tracked="out.csv") is None  # inside, but not its checkout
