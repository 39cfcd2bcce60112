"""The dashboard's web server: one page, its static files, and the source's views as JSON and as
server-sent events.

Starlette (routing, static files, streaming) served by uvicorn, in a thread of the process that owns
the source: ``ppaia run`` and ``ppaia launch`` go on with their work while it serves, and ``ppaia
dashboard`` waits for Ctrl-C.

- ``GET /``: the page; ``/static/...``: its scripts, styles and the vendored libraries (nothing is
  loaded from elsewhere: the page works offline).
- ``GET /api/view?round=R``: the :class:`View` at round R (default: the newest).
- ``GET /api/events``: server-sent events, one ``view`` event with the newest view after each change,
  at most one every :data:`PUSH_INTERVAL_S` (changes in between are coalesced: the page skips rounds on
  screen, never in the data), and a comment every :data:`KEEPALIVE_S` while nothing changes.

**Safety.** It binds 127.0.0.1 unless told otherwise, and another address needs ``public=True``
(``--public``): the views hold file paths, configs and what peers report. Bound to a loopback address,
it answers only requests whose ``Host`` is a loopback name, so a web page elsewhere cannot read it
through DNS rebinding. Every response carries a Content-Security-Policy that lets the page run only its
own scripts from this server (no inline script, no ``eval``), so that a string that got into the page
could not run even if it were ever inserted as markup; the page inserts every string as text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ppaia.dashboard.sources import Source, is_loopback

__all__ = ["CSP", "DEFAULT_PORT", "Dashboard", "DashboardError", "app", "is_loopback"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
DEFAULT_PORT = 8350
PUSH_INTERVAL_S = 0.5
KEEPALIVE_S = 15.0
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class DashboardError(ValueError):
    """A dashboard that cannot be served as asked (an address it may not or cannot listen on)."""


def _host_of(header: str) -> str:
    """The host part of a Host header (``name``, ``name:port``, ``[v6]:port``)."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    """ASGI middleware: the security headers on every response, and (`local`) requests whose Host is
    not a loopback name refused with 421."""

    def __init__(self, app: ASGIApp, local: bool) -> None:
        self.app = app
        self.local = local

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.local:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not is_loopback(_host_of(host)):
                await PlainTextResponse("misdirected request", status_code=421)(scope, receive, send)
                return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def app(source: Source, local: bool = True) -> ASGIApp:
    """The dashboard's ASGI app for `source` (`local`: serve loopback Host names only)."""
    cache: dict[tuple[int, int | None], bytes] = {}

    def view_json(round_: int | None) -> bytes:
        key = (source.version, round_)
        if key not in cache:
            if len(cache) > 32:
                cache.clear()
            cache[key] = source.view(round_).model_dump_json().encode()
        return cache[key]

    async def page(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    async def view(request: Request) -> Response:
        text = request.query_params.get("round")
        try:
            round_ = None if text in (None, "") else int(text)
        except ValueError:
            return PlainTextResponse("round: not an integer", status_code=400)
        return Response(
            view_json(round_), media_type="application/json", headers={"cache-control": "no-store"}
        )

    async def events(_: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            loop, seen, last = asyncio.get_running_loop(), -1, 0.0
            while True:
                await source.wait(seen, KEEPALIVE_S)
                if source.version == seen:
                    yield b": keep-alive\n\n"
                    continue
                await asyncio.sleep(max(0.0, last + PUSH_INTERVAL_S - loop.time()))
                seen, last = source.version, loop.time()
                yield b"event: view\ndata: " + view_json(None) + b"\n\n"

        headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        following = asyncio.create_task(source.follow())
        following.add_done_callback(_report)
        try:
            yield
        finally:
            following.cancel()

    routes = [
        Route("/", page),
        Route("/api/view", view),
        Route("/api/events", events),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    return Guard(Starlette(routes=routes, lifespan=lifespan), local)


def _report(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the dashboard stopped following its source", exc_info=task.exception())


class Dashboard:
    """`source`'s dashboard, served by uvicorn in a thread of its own (:meth:`start`, :meth:`stop`).
    Listening on an address other than a loopback one needs `public`."""

    def __init__(self, source: Source, host: str = "127.0.0.1", port: int = 0, public: bool = False) -> None:
        if not public and not is_loopback(host):
            raise DashboardError(
                f"--host {host} would serve the dashboard (configs, paths, what peers report) to other "
                "machines: add --public to do so"
            )
        self.source = source
        self.host = host
        self.port = port
        self.local = is_loopback(host)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout: float = 10.0) -> str:
        """Listen and serve in a thread; the page's URL. DashboardError if the address cannot be used."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(64)
        except OSError as err:
            listener.close()
            raise DashboardError(f"cannot listen on {self.host}:{self.port}: {err.strerror or err}") from None
        self.port = listener.getsockname()[1]
        config = uvicorn.Config(
            app(self.source, self.local),
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [listener]}, name="ppaia-dashboard", daemon=True
        )
        self._thread.start()
        waited = 0.0
        while not self._server.started and self._thread.is_alive() and waited < timeout:
            time.sleep(0.02)
            waited += 0.02
        if not self._server.started:
            self.stop()
            raise DashboardError(f"the dashboard on {self.url} did not start within {timeout:.0f} s")
        return self.url

    def serving(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving (open event streams are closed) and wait for the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
