"""`ppaia sweep --backend ray` as a researcher meets it: the installed command in a working directory of
their own, a local Ray cluster started and stopped with the sweep. The folder it writes equals the local
sweep's, run by run; a run that raises is named while the others complete, and `--resume` runs only it;
an address where no cluster answers, or Ray not installed, is one line, at once."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from importlib.util import find_spec
from pathlib import Path

import pytest
from test_sweep_cli import CONFIG, assert_same_run, complete, ppaia  # the local sweep's own config and checks

PPAIA = str(Path(sys.executable).with_name("ppaia"))
FRAGILE = '''
import os

from pydantic import Field

from ppaia.rules import RULES, CooperationRule, RoundContext, RoundPlan


@RULES.register("fragile")
class Fragile(CooperationRule):
    """Each peer trains alone; raises in round `breaks_in` while FRAGILE_BREAKS is set (0: never)."""

    breaks_in: int = Field(default=0, ge=0)

    def plan(self, ctx: RoundContext) -> RoundPlan:
        if ctx.round == self.breaks_in and os.environ.get("FRAGILE_BREAKS"):
            raise RuntimeError(f"fragile broke in round {ctx.round}")
        return RoundPlan()
'''
needs_ray = pytest.mark.skipif(find_spec("ray") is None, reason="Ray is an extra: pip install 'ppaia[ray]'")


def command(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed command, in its own process (as a Ray driver should be), within a bounded time."""
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [PPAIA, *arguments], env=environment, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("exp.toml").write_text(CONFIG)
    return tmp_path


@needs_ray
@pytest.mark.slow
def test_a_20_run_sweep_on_ray_equals_the_local_sweep_cell_for_cell(workdir):
    grid = ["exp.toml", "--grid", "lr=0.02,0.05,0.1,0.2,0.4", "--seeds", "4", "--no-plots"]
    local = ppaia("sweep", *grid, "--out", "local")  # in this process, one run after another
    assert local.exit_code == 0, local.output
    temporary = set(Path(tempfile.gettempdir()).glob("ppaia-ray-*"))
    on_ray = command("sweep", *grid, "--backend", "ray", "--out", "ray")
    assert on_ray.returncode == 0, on_ray.stdout + on_ray.stderr
    assert set(Path(tempfile.gettempdir()).glob("ppaia-ray-*")) <= temporary  # the local cluster's files go

    runs = complete(Path("local"))
    assert len(runs) == 20 and [run.relative_to("local") for run in runs] == [
        run.relative_to("ray") for run in complete(Path("ray"))
    ]
    for name in ("runs.csv", "sweep.csv", "results.md", "results.tex", "sweep.toml"):
        assert Path("local", name).read_text() == Path("ray", name).read_text(), name
    for run in runs:
        assert_same_run(run, Path("ray") / run.relative_to("local"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", pytest.param("ray", marks=needs_ray)])
def test_a_run_that_raises_is_named_the_others_complete_and_resume_runs_only_it(workdir, backend):
    Path("fragile.py").write_text(FRAGILE)
    grid = ["--grid", 'rule=["fragile", "fragile(breaks_in=2)"]', "--seeds", "2"]
    first = command(
        "sweep", "exp.toml", "--plugin", "fragile.py", *grid, "--no-plots", "--backend", backend,
        "--out", "s", env={"FRAGILE_BREAKS": "1"},
    )  # fmt: skip
    assert first.returncode == 2, first.stdout + first.stderr
    named = [line for line in first.stderr.splitlines() if line.startswith("error: run ")]
    assert named == [
        f"error: run rule=fragile(breaks_in=2), seed {seed}: RuntimeError: fragile broke in round 2"
        for seed in (0, 1)
    ], first.stderr
    assert 'fragile.py", line' in first.stderr  # the traceback: where the user's code raised
    assert "2 of 4 runs failed" in first.stderr and "ppaia sweep --resume s" in first.stderr
    kept = complete(Path("s"))
    assert [run.parent.name for run in kept] == ["000-rule=fragile"] * 2
    assert not Path("s/runs.csv").exists()  # a sweep's tables are of all its runs
    stamps = {run: os.stat(run / "summary.json").st_mtime_ns for run in kept}

    # the cause fixed, the sweep resumed (with the local backend, either will do): only the failed runs run
    resumed = command("sweep", "--resume", "s", "--no-plots")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert len(complete(Path("s"))) == 4 and len(Path("s/runs.csv").read_text().splitlines()) == 5
    assert {run: os.stat(run / "summary.json").st_mtime_ns for run in kept} == stamps


def closed_port() -> str:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
def silent_port():
    """Accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for connection, _ in accepted:
        connection.close()


class Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *_args: object) -> None:
        """Not on the test's stderr, which holds what the command prints."""


@pytest.fixture
def http_port():
    """A web server (Ray's dashboard port is one): it answers, but not as a Ray cluster does."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@needs_ray
@pytest.mark.parametrize(
    ("where", "named"),
    [
        ("closed", "cannot connect"),
        ("silent", "no answer within"),
        ("http", "not a Ray cluster"),
        ("ray://closed", "cannot connect"),
        ("nonsense", "expected HOST:PORT"),
        ("127.0.0.1:99999", "expected HOST:PORT"),
        ("ray://:6379", "expected HOST:PORT"),
        ("no-such-host.invalid:6379", "cannot connect"),
    ],
)
def test_an_address_where_no_ray_cluster_answers_is_one_line_at_once(workdir, request, where, named):
    kind = where.rpartition("://")[2]
    if kind == "closed":
        address = where.replace(kind, closed_port())
    elif kind in ("silent", "http"):
        address = where.replace(kind, request.getfixturevalue(f"{kind}_port"))
    else:
        address = where
    start = time.monotonic()
    result = ppaia(
        "sweep", "exp.toml", "--seeds", "1", "--backend", "ray", "--address", address, "--out", "s"
    )
    assert time.monotonic() - start < 60  # bounded: Ray's own connect would wait on without end
    assert result.exit_code == 2 and result.output.startswith("error: "), result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert named in result.output and address in result.output
    assert not Path("s").exists()


def test_without_ray_the_ray_backend_is_one_line_naming_the_extra(workdir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises
    result = ppaia("sweep", "exp.toml", "--seeds", "1", "--backend", "ray", "--out", "s")
    assert result.exit_code == 2 and "pip install 'ppaia[ray]'" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not Path("s").exists()


@pytest.mark.parametrize("option", [["--address", "127.0.0.1:6379"], ["--cpus-per-run", "2"]])
def test_ray_options_without_the_ray_backend_are_refused(workdir, option):
    result = ppaia("sweep", "exp.toml", "--seeds", "1", *option, "--out", "s")
    assert result.exit_code == 2 and f"{option[0]}: only with --backend ray" in result.output, result.output
    assert not Path("s").exists()
