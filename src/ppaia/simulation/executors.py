"""Where a sweep's runs run: one after another in this process, or as tasks on a Ray cluster.

An executor only runs: it takes the runs still to run and yields each one's :class:`RunResult` (or its
:class:`RunFailure`) as it ends. Everything else — each run's folder, ``sweep.toml``, resuming, the tables
and plots — is :func:`ppaia.simulation.sweep.sweep`'s, the same code for every executor, so a sweep on
Ray writes what the local sweep writes.

On Ray, each run is one task (``num_cpus`` = its CPUs, 1 by default). The task gets the run's config as
plain data (:meth:`ExperimentConfig.to_table`, as its ``config.toml`` holds it) and validates it where it
runs, importing the config's plugins there, so a rule from ``--plugin myrules.py`` runs on a worker that
never saw the driver's imports; its torch threads are its CPUs, so concurrent runs do not oversubscribe a
node. The driver receives the :class:`RunResult` through Ray's object store and writes the run's folder
itself: no shared file system is needed, and the only pickles unpickled are those of the user's own
cluster (its driver and workers), never a peer's. Torch's CPU kernels give the digits and synthetic
workloads the same bits at 1 and 2 threads (the tests compare a Ray sweep with a local one file by file).
"""

from __future__ import annotations

import enum
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from ppaia.config import ExperimentConfig
from ppaia.simulation.engine import RunResult, Simulation

if TYPE_CHECKING:
    from ppaia.simulation.sweep import SweepRun

__all__ = [
    "Backend",
    "BackendError",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "RunFailure",
    "executor_for",
]

RAY_EXTRA = "pip install 'ppaia[ray]'"
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
PROBE_TIMEOUT_S = 5.0  # how long an --address may take to answer before the sweep gives up on it


class Backend(enum.StrEnum):
    """Where a sweep's runs run (``ppaia sweep --backend``)."""

    LOCAL = "local"
    RAY = "ray"


class BackendError(ValueError):
    """The backend cannot be used: Ray not installed, its cluster unreachable or failing to start."""


@dataclass(frozen=True)
class RunFailure:
    """A run that raised instead of ending: its exception and where it was raised (for Ray, the worker's
    traceback). The sweep goes on with its other runs and reports this one."""

    error: BaseException
    trace: str

    @classmethod
    def of(cls, error: BaseException) -> RunFailure:
        return cls(error, "".join(traceback.format_exception(error)))

    def line(self) -> str:
        """The error in one line: its type and the first line of its message."""
        message = str(self.error).strip().splitlines()
        return f"{type(self.error).__name__}: {message[0]}" if message else type(self.error).__name__


Ended = RunResult | RunFailure


class Executor(AbstractContextManager["Executor"], ABC):
    """Runs a sweep's runs; a context manager, so that what it holds (a Ray cluster) is released."""

    @abstractmethod
    def execute(
        self, runs: Sequence[SweepRun], on_round: Callable[[], None] | None = None
    ) -> Iterator[tuple[int, Ended]]:
        """Run each of `runs`, yielding (its index in `runs`, its result or failure) as each ends, in any
        order; `on_round` is called once per round run (all at once when the run ends, where its rounds
        are not seen)."""

    def __exit__(self, *_exc: object) -> None:
        """Nothing to release unless an executor holds something."""


class LocalExecutor(Executor):
    """Each run in this process, one after another, in order."""

    def execute(
        self, runs: Sequence[SweepRun], on_round: Callable[[], None] | None = None
    ) -> Iterator[tuple[int, Ended]]:
        tick = None if on_round is None else lambda _round, _row: on_round()
        for index, run in enumerate(runs):
            try:
                result = Simulation(run.config).run(tick)
            except Exception as err:  # the run's own failure; the sweep reports it and goes on
                yield index, RunFailure.of(err)
            else:
                yield index, result


def _run_task(table: dict[str, Any], threads: int) -> RunResult:
    """One run on a Ray worker: its config validated there (its plugins imported there), torch limited to
    the task's CPUs."""
    torch.set_num_threads(threads)
    return Simulation(ExperimentConfig.model_validate(table)).run()


class RayExecutor(Executor):
    """Each run as a Ray task on the cluster at `address`, or on a local cluster started for the sweep
    (and shut down after it) when `address` is None.

    The address is probed at construction, before anything runs (``ray.init`` itself would wait without
    end for an address where no Ray cluster answers); the cluster is joined or started at the first run,
    so a resumed sweep with nothing left to run starts nothing.
    """

    def __init__(self, address: str | None = None, cpus_per_run: int = 1) -> None:
        self._ray = _import_ray()
        if address is not None:
            _probe(address)
        self.address = address
        self.cpus_per_run = cpus_per_run
        self._joined = False
        self._temp_dir: str | None = None

    def execute(
        self, runs: Sequence[SweepRun], on_round: Callable[[], None] | None = None
    ) -> Iterator[tuple[int, Ended]]:
        if not runs:
            return
        ray = self._join()
        task = ray.remote(num_cpus=self.cpus_per_run)(_run_task)
        waiting = {task.remote(run.config.to_table(), self.cpus_per_run): i for i, run in enumerate(runs)}
        try:
            while waiting:
                [ready], _ = ray.wait(list(waiting), num_returns=1)
                index = waiting.pop(ready)
                try:
                    ended: Ended = ray.get(ready)
                except ray.exceptions.RayError as err:  # the run raised, or its worker or node died
                    cause = getattr(err, "cause", None)
                    trace = ANSI_COLOUR.sub("", str(err))  # the worker's traceback, as Ray colours it
                    ended = RunFailure(cause if isinstance(cause, BaseException) else err, trace)
                for _ in range(runs[index].config.rounds if on_round is not None else 0):
                    on_round()
                yield index, ended
        finally:  # stopped early (Ctrl-C, a folder that cannot be written): the cluster drops the rest
            for ref in waiting:
                ray.cancel(ref, force=True)

    def _join(self) -> ModuleType:
        """Connect to the cluster, or start the local one (its files in a fresh temporary folder, no
        dashboard, no usage statistics sent anywhere), once."""
        ray = self._ray
        if self._joined:
            return ray
        options: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        }
        if self.address is None:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a started cluster phones nowhere
            # under /tmp, not the sweep's folder: Ray's Unix sockets live below it (paths ≤ 107 bytes)
            self._temp_dir = tempfile.mkdtemp(prefix="ppaia-ray-")
            options |= {"address": "local", "_temp_dir": self._temp_dir}
        else:
            options["address"] = self.address
        try:
            ray.init(**options)
        except Exception as err:
            where = "a local Ray cluster" if self.address is None else f"the Ray cluster at {self.address}"
            ray.shutdown()  # what a failed start left running
            self._remove_temp_dir()
            raise BackendError(f"cannot start or join {where}: {type(err).__name__}: {err}") from None
        self._joined = True
        return ray

    def _remove_temp_dir(self) -> None:
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def __exit__(self, *_exc: object) -> None:
        """Leave the cluster (a local one stops) and remove the local one's files."""
        if self._joined:
            self._ray.shutdown()
            self._joined = False
        self._remove_temp_dir()


def _import_ray() -> ModuleType:
    try:
        import ray
    except ModuleNotFoundError as err:
        if err.name != "ray":
            raise
        raise BackendError(f"--backend ray needs Ray, an optional extra: {RAY_EXTRA}") from None
    return ray


SETTINGS = 0x04  # the HTTP/2 frame type a gRPC server answers the client's preface with
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])


def _probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise a one-line :class:`BackendError` unless a gRPC server (a Ray head's GCS, or Ray Client for
    ``ray://``) answers at `address` within `timeout` seconds: it must accept a TCP connection and answer
    the HTTP/2 preface with a SETTINGS frame, as gRPC does. ``auto`` (a cluster ``ray start`` began on
    this machine) is Ray's to find; it fails at once when there is none."""
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")  # an IPv6 literal
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BackendError(
            f"--address {address!r}: expected HOST:PORT (a Ray head's GCS port, 6379 by default), "
            "ray://HOST:PORT (Ray Client) or auto"
        )
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as connection:
            connection.sendall(HTTP2_PREFACE)
            reply = b""
            while len(reply) < 9 and (left := deadline - time.monotonic()) > 0:
                connection.settimeout(left)
                chunk = connection.recv(9 - len(reply))
                if not chunk:
                    break
                reply += chunk
    except TimeoutError:
        raise BackendError(
            f"--address {address}: no answer within {timeout:g} s (is the head running?)"
        ) from None
    except OSError as err:
        raise BackendError(f"--address {address}: cannot connect ({err.strerror or err})") from None
    if len(reply) < 9 or reply[3] != SETTINGS:
        raise BackendError(
            f"--address {address}: something answers there, but not a Ray cluster (no gRPC within "
            f"{timeout:g} s); give the head's GCS address, as `ray start --head` prints it"
        )


def executor_for(backend: Backend, address: str | None = None, cpus_per_run: int | None = None) -> Executor:
    """The executor ``ppaia sweep --backend`` names; `address` and `cpus_per_run` are Ray's alone."""
    if backend is Backend.RAY:
        return RayExecutor(address, cpus_per_run or 1)
    given = [option for option, value in (("--address", address), ("--cpus-per-run", cpus_per_run)) if value]
    if given:
        raise BackendError(f"{' and '.join(given)}: only with --backend ray")
    return LocalExecutor()
