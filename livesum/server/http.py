"""Plain HTTP on the websocket port: the browser page, its assets, health, metrics and session files.

`LivesumServer.process_request` hands every request that is not a websocket upgrade here, before
the handshake, so one port serves both (a load balancer, a monitor and a browser need nothing else).
Each answer closes its TCP connection (websockets sends EOF after a non-101 response). HEAD is
answered like GET without the body. A session file is streamed from disk in `FILE_CHUNK_BYTES`
pieces straight to the connection's transport, with flow control (`drain`), instead of being read
whole into one response: an event log can be large. websockets runs `process_request` inside its
opening-handshake timeout (`open_timeout`, 10 s by default), so a download must finish within it.

Security: the session list and files are data, so the server's token protects them, taken only from
`Authorization: Bearer` (a `?token=` would end up in access logs and browser history); the page shell
and its static assets hold no data and `/healthz` must answer a load balancer, so those are open.
A session id is checked with the protocol's own rule (`SESSION_ID`: no '/', cannot start with '.'),
file names come from a fixed list, and the resolved path must still lie inside the data dir.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from livesum.server.auth import bearer, token_matches
from livesum.server.eventlog import FILE_NAME
from livesum.server.protocol import SESSION_ID

if TYPE_CHECKING:
    from livesum.server.app import LivesumServer
    from livesum.server.session import Session

WEB_DIR = Path(__file__).resolve().parent.parent / "web"  # package data: the page, no build step
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
}
SESSION_FILES = {  # the only files of a session that HTTP serves
    "notes.md": "text/markdown; charset=utf-8",
    "transcript.srt": "application/x-subrip; charset=utf-8",
    "transcript.vtt": "text/vtt; charset=utf-8",
    "transcript.txt": "text/plain; charset=utf-8",
    FILE_NAME: "application/x-ndjson; charset=utf-8",
}
FILE_CHUNK_BYTES = 256 * 1024  # one read of a session file, then written to the socket before the next
METHODS = ("GET", "HEAD")
# The page loads only its own files and talks only to its own server (websocket included).
PAGE_POLICY = ("default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; style-src 'self'; "
               "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def response(status: HTTPStatus, body: bytes | str, content_type: str = "text/plain; charset=utf-8",
             headers: dict[str, str] | None = None, length: int | None = None) -> Response:
    """A complete HTTP/1.1 response that closes the connection (websockets serves one request per connection).
    `length` is the Content-Length of a body sent separately (a streamed file, the answer to a HEAD)."""
    data = body.encode() if isinstance(body, str) else body
    fields = Headers()
    fields["Content-Type"] = content_type
    fields["Content-Length"] = str(len(data) if length is None else length)
    fields["Connection"] = "close"
    fields["Cache-Control"] = "no-store"
    fields["X-Content-Type-Options"] = "nosniff"
    for name, value in (headers or {}).items():
        fields[name] = value
    return Response(status.value, status.phrase, fields, data)


def is_upgrade(request: Request) -> bool:
    """A websocket handshake (left to websockets) rather than a plain HTTP request (answered here)."""
    return "websocket" in request.headers.get("Upgrade", "").lower()


def session_title(folder: Path) -> str | None:
    """notes.md's first line without its '#', where the notes are written."""
    try:
        with (folder / "notes.md").open(encoding="utf-8", errors="replace") as notes:
            first = notes.readline(400).strip()
    except OSError:
        return None
    return first.lstrip("#").strip() or None


class ServerMetrics:
    """Prometheus metrics read from the server at scrape time (a collector on a per-server registry,
    so two servers in one process, as in the tests, never share or clash). Totals of finished
    sessions are kept here when the server forgets them."""

    def __init__(self, server: LivesumServer) -> None:
        self.server = server
        self.finished_audio_seconds = 0.0
        self.finished_dropped_seconds = 0.0
        self.finished_sessions = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type]  # a custom collector: anything with collect()

    def retire(self, session: Session) -> None:
        self.finished_sessions += 1
        self.finished_audio_seconds += session.audio_in_seconds
        self.finished_dropped_seconds += session.dropped_seconds

    def collect(self) -> Iterator[Metric]:
        sessions = list(self.server.sessions.values())
        now = time.time()
        yield GaugeMetricFamily("livesum_sessions_running", "Sessions open now (streaming or writing their notes).", value=len(sessions))
        yield CounterMetricFamily("livesum_sessions_finished", "Sessions finished since the server started.", value=self.finished_sessions)
        yield GaugeMetricFamily("livesum_connections_open", "Open TCP connections (websockets and HTTP).", value=self.server.connections_open)
        yield CounterMetricFamily("livesum_audio_in_seconds", "Seconds of audio received by all sessions.",
                                  value=self.finished_audio_seconds + sum(s.audio_in_seconds for s in sessions))
        yield CounterMetricFamily("livesum_audio_dropped_seconds", "Seconds of live audio dropped because a session fell behind.",
                                  value=self.finished_dropped_seconds + sum(s.dropped_seconds for s in sessions))
        asr = GaugeMetricFamily("livesum_asr_lag_seconds", "Seconds of captured audio not yet transcribed, per running session.",
                                labels=["session"])
        llm = GaugeMetricFamily("livesum_llm_lag_seconds",
                                "Seconds since the oldest final text not yet in the LM cache was emitted, per running session.",
                                labels=["session"])
        queued = GaugeMetricFamily("livesum_session_queue_seconds", "Seconds of audio waiting in the session's queue.", labels=["session"])
        for session in sessions:
            stats = session.pipeline.stats
            asr.add_metric([session.id], stats.asr_lag or 0.0)
            llm.add_metric([session.id], max(0.0, now - stats.oldest_unfed) if stats.oldest_unfed is not None else 0.0)
            queued.add_metric([session.id], session.queued_seconds)
        yield asr
        yield llm
        yield queued
        yield GaugeMetricFamily("livesum_lm_queue_depth", "LM jobs (feeds, summaries, answers, notes) waiting or running on the LM thread.",
                                value=self.server.service.queue_depth)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class HttpRoutes:
    """GET (and HEAD) routes of one server; `answer` never raises for bad input (a 4xx instead)."""

    def __init__(self, server: LivesumServer) -> None:
        self.server = server
        self.metrics = ServerMetrics(server)
        self.static = {path.name for path in WEB_DIR.iterdir() if path.is_file() and path.suffix in STATIC_TYPES} if WEB_DIR.is_dir() else set()

    @property
    def data_dir(self) -> Path:
        return self.server.settings.server.data_dir

    def _authorized(self, request: Request) -> bool:
        expected = self.server.settings.server.token
        return not expected or token_matches(expected, bearer(request.headers.get("Authorization")))

    async def answer(self, request: Request, connection: ServerConnection | None = None) -> Response:
        """The response to a plain HTTP request (no websocket upgrade). With `connection`, a session
        file is streamed to it (`send_file`) and the Response returned is never sent; without one, the
        file is read whole into the response."""
        if request.method not in METHODS:
            return response(HTTPStatus.METHOD_NOT_ALLOWED, f"method {request.method[:20]} not allowed; only GET and HEAD\n",
                            headers={"Allow": ", ".join(METHODS)})
        answer = await self._get(request, connection)
        if request.method == "HEAD":  # the same status and headers, Content-Length included, without the body
            return dataclasses.replace(answer, body=b"")
        return answer

    async def _get(self, request: Request, connection: ServerConnection | None) -> Response:
        raw = urlsplit(request.path).path
        parts = [unquote(part) for part in raw.split("/")[1:]]  # split before decoding: %2F never makes a separator
        if raw in ("/", "/index.html"):
            return self._static("index.html")
        if raw == "/healthz":
            return response(HTTPStatus.OK, "ok\n")
        if len(parts) == 2 and parts[0] == "static":
            return self._static(parts[1])
        if raw == "/metrics" or parts[:2] == ["api", "sessions"]:
            if not self._authorized(request):
                return response(HTTPStatus.UNAUTHORIZED, "missing or wrong token (Authorization: Bearer TOKEN)\n",
                                headers={"WWW-Authenticate": 'Bearer realm="livesum"'})
            if raw == "/metrics":
                return response(HTTPStatus.OK, self.metrics.text(), CONTENT_TYPE_LATEST)
            if len(parts) == 2 or (len(parts) == 3 and parts[2] == ""):
                listing = await asyncio.to_thread(self.sessions)
                return response(HTTPStatus.OK, json.dumps({"sessions": listing}), "application/json")
            if len(parts) == 4:
                return await self._session_file(parts[2], parts[3], request.method == "HEAD", connection)
        return response(HTTPStatus.NOT_FOUND, f"unknown path {raw[:80]}\n")

    def _static(self, name: str) -> Response:
        if name not in self.static:  # only the shipped files: never a path built from the request
            return response(HTTPStatus.NOT_FOUND, f"no static file {name[:80]}\n")
        path = WEB_DIR / name
        extra = {"Content-Security-Policy": PAGE_POLICY} if path.suffix == ".html" else None
        return response(HTTPStatus.OK, path.read_bytes(), STATIC_TYPES[path.suffix], extra)

    def sessions(self) -> list[dict[str, Any]]:
        """Every session folder in the data dir (running ones first, then newest first)."""
        running = set(self.server.sessions)
        found: list[dict[str, Any]] = []
        try:
            folders: Iterable[Path] = list(self.data_dir.iterdir())
        except OSError:
            folders = []
        for folder in folders:
            if not SESSION_ID.match(folder.name) or not folder.is_dir() or not (folder / FILE_NAME).is_file():
                continue
            try:
                modified = (folder / FILE_NAME).stat().st_mtime
            except OSError:
                continue
            found.append({
                "id": folder.name, "title": session_title(folder), "running": folder.name in running, "modified": modified,
                "files": sorted(name for name in SESSION_FILES if (folder / name).is_file()),
            })
        found.sort(key=lambda item: (not item["running"], -item["modified"]))
        return found

    async def _session_file(self, session_id: str, name: str, head_only: bool, connection: ServerConnection | None) -> Response:
        if not SESSION_ID.match(session_id):
            return response(HTTPStatus.NOT_FOUND, "no such session (ids are 1-64 of A-Z a-z 0-9 _ . -)\n")
        if name not in SESSION_FILES:
            return response(HTTPStatus.NOT_FOUND, f"no such file; one of {', '.join(SESSION_FILES)}\n")
        try:
            handle, size = await asyncio.to_thread(self._open_session_file, session_id, name)
        except FileNotFoundError:
            return response(HTTPStatus.NOT_FOUND, f"session {session_id} has no {name} (yet)\n")
        except OSError as error:
            return response(HTTPStatus.NOT_FOUND, f"cannot read {name}: {error.strerror or error}\n")
        disposition = {"Content-Disposition": f'attachment; filename="{session_id}-{name}"'}
        head = response(HTTPStatus.OK, b"", SESSION_FILES[name], disposition, length=size)
        try:
            if head_only:
                return head
            if connection is None:
                data = await asyncio.to_thread(handle.read, size)
                return response(HTTPStatus.OK, data, SESSION_FILES[name], disposition)
            await send_file(connection, head, handle, size)
        finally:
            handle.close()
        return head  # not sent: the connection is closed once the file is written (websockets sends nothing then)

    def _open_session_file(self, session_id: str, name: str) -> tuple[Any, int]:
        """The open file and its size now (a running session's log grows: exactly this many bytes are sent).
        FileNotFoundError for a missing file or one whose real path is outside the data dir."""
        root = self.data_dir.resolve()
        path = (root / session_id / name).resolve()
        if not path.is_relative_to(root) or not path.is_file():  # a symlink out of the data dir is refused too
            raise FileNotFoundError(name)
        handle = path.open("rb")
        return handle, os.fstat(handle.fileno()).st_size


async def send_file(connection: ServerConnection, head: Response, handle: Any, size: int) -> None:
    """Writes `head` and then `size` bytes of `handle` to the connection's transport, one chunk in memory
    at a time (the next is read once the transport has room), then closes the connection after the
    last byte is flushed. A file that shrank meanwhile ends the body short (the client sees a body
    shorter than its Content-Length); a client that goes away stops the copy."""
    transport = connection.transport
    transport.write(head.serialize())
    left = size
    try:
        while left > 0 and not transport.is_closing():
            chunk = await asyncio.to_thread(handle.read, min(FILE_CHUNK_BYTES, left))
            if not chunk:
                break
            transport.write(chunk)
            left -= len(chunk)
            await connection.drain()  # flow control: wait while the transport's buffer is over its high-water mark
    except OSError:
        transport.abort()
    if not transport.is_closing():
        transport.close()  # after the buffered bytes are written
    await connection.wait_closed()
