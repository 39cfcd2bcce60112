"""Where a result came from: software versions, code revision, machine, date and command.

A number in a paper has to be traced back to what produced it. ``summary.json`` of every run (and the
sweep's own record) carries :func:`provenance`: the ppaia, torch, numpy and Python versions; the git commit
of the ppaia checkout (and whether it had uncommitted changes), and of the repository the command ran in
when that is another one (where a researcher's own models and rules usually live); the UTC date; the
machine (host name, platform, CPU count, torch threads, GPU); and the command line with its working
directory. The host name is recorded: the file stays with the researcher, and it tells which machine's
timings these are.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy
import torch

__all__ = ["git_revision", "provenance"]

GIT_TIMEOUT_S = 5.0  # a git call that hangs (a network file system) must not hold up writing results


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True
    )
    return done.stdout.strip()


def git_revision(folder: Path, tracked: str | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty", "root"}`` of the git repository holding `folder`, or None when there is none
    (or git is missing). `tracked`: a file in `folder` that must be tracked by that repository — so that
    a package installed into a virtual environment that happens to lie inside some repository is not
    taken for a checkout of it. `dirty`: tracked files changed since the commit (untracked files, such as
    run outputs, do not count)."""
    try:
        if tracked is not None:
            _git(folder, "ls-files", "--error-unmatch", tracked)
        root = _git(folder, "rev-parse", "--show-toplevel")
        commit = _git(folder, "rev-parse", "HEAD")
        dirty = bool(_git(folder, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty, "root": root}


def _version(distribution: str) -> str | None:
    """The installed version of `distribution` (None when it runs from a source tree not installed)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """What produced a result, as JSON-ready data (see the module docstring); `argv` defaults to this
    process's command line (``sys.argv``), recorded shell-quoted so that it can be pasted back."""
    package = Path(__file__).resolve().parent
    ppaia_git = git_revision(package, tracked="__init__.py")
    here = git_revision(Path.cwd())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv if argv is None else argv),
        "working_dir": os.getcwd(),
        "versions": {
            "ppaia": _version("ppaia"),
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "python": platform.python_version(),
        },
        "git": ppaia_git,
        "working_dir_git": here if here is not None and here != ppaia_git else None,
        "machine": {
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "arch": platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": gpu,
        },
    }
