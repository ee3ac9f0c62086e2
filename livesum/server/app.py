"""The websocket server: routing and auth before the upgrade, one handler per protocol, shared models.

Models load once (`load_shared_models`); every session gets its own transcribers (on the one
Whisper) and its own StreamingEngine cache (on the one LM, run by the one `LmService`).
Nothing here calls a model on the event loop: Whisper runs in worker threads, the LM on the
service's thread, a forward at a time, so a busy model never stalls another connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import ssl
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from livesum.config import ConfigError, Settings, deep_merge, nest, validate_settings
from livesum.llm.service import LmService, Priority
from livesum.loading import SharedModels, load_shared_models, new_engine, transcriber_factory
from livesum.server.adapters import Adapter, AdapterError, Audio, Close, Open
from livesum.server.adapters.recall import RecallAdapter
from livesum.server.adapters.telnyx import TelnyxAdapter
from livesum.server.adapters.twilio import TwilioAdapter
from livesum.server.adapters.vonage import VonageAdapter
from livesum.server.audio import AudioFormatError, Resampler, decode_f32le, decode_s16le
from livesum.server.auth import bearer, token_matches
from livesum.server.eventlog import FILE_NAME, EventLog, recover_interrupted
from livesum.server.http import HttpRoutes, is_upgrade
from livesum.server.protocol import (
    SESSION_ID, Ask, Envelope, ProtocolError, Resume, Start, Stop, Summarize, Watch, parse_client_message,
)
from livesum.server.session import Session
from livesum.events import Error, Status

log = logging.getLogger(__name__)

NATIVE_PATH = "/v1/stream"
ADAPTERS: dict[str, type[Adapter]] = {
    "/twilio": TwilioAdapter, "/telnyx": TelnyxAdapter, "/recall": RecallAdapter, "/vonage": VonageAdapter,
}
IN_BAND_TOKEN = {"/twilio", "/vonage"}  # protocols that carry the token in their first messages

# Close codes (1xxx from RFC 6455, 4xxx ours; docs/server.md lists them).
CLOSE_FULL = 1013  # try again later: max_sessions reached
CLOSE_PROTOCOL = 4400  # the first message was not a valid start/resume, or too much garbage
CLOSE_UNAUTHORIZED = 4401  # in-band token or resume secret wrong or missing
CLOSE_UNKNOWN_SESSION = 4404  # resume or watch of a session that is not running (finished, expired, never started)
CLOSE_IDLE = 4408  # nothing received for idle_timeout_seconds, or no session opened within open_timeout_seconds
CLOSE_SESSION_TAKEN = 4409  # `start` with the id of a running or finished session; or taken over by a resume
CLOSE_WORKER_DIED = 4503  # `serve --ray` only: the session host (Ray actor) running the session died
MAX_BAD_BEFORE_OPEN = 50  # garbage frames tolerated before an adapter stream has opened its session
SUBSCRIBERS_DRAIN_SECONDS = 10.0  # at shutdown: time readers get to take the last events of finished sessions


class ServerStartupError(RuntimeError):
    """The server cannot start as configured; one line."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """A server reachable from other machines must have a token; TLS needs both of its files."""
    config = settings.server
    if not is_loopback(config.host) and not config.token:
        raise ServerStartupError(f"refusing to listen on {config.host} without a token: set --token (or server.token)")
    if (config.certfile is None) != (config.keyfile is None):
        raise ServerStartupError("TLS needs both --certfile and --keyfile")


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context (standard library `ssl`), or None to serve plain ws:// and http://."""
    config = settings.server
    if config.certfile is None or config.keyfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except (OSError, ssl.SSLError) as error:
        raise ServerStartupError(f"cannot load the TLS certificate {config.certfile} / key {config.keyfile}: {error}") from None
    return context


def twilio_signature(auth_token: str, url: str) -> str:
    """What Twilio puts in X-Twilio-Signature of a websocket upgrade: base64 HMAC-SHA1 of the URL it
    connected to (no body parameters on a GET), keyed with the account's auth token."""
    digest = hmac.new(auth_token.encode(), url.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def kv_cache_bytes(model: Any, capacity: int) -> int:
    """Per-session memory of the sink cache: 2 (K and V) * layers * kv_heads * head_dim * capacity * dtype bytes."""
    config = model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(model.parameters()).element_size()
    return 2 * config.num_hidden_layers * heads * head_dim * capacity * element


def page_url(host: str, port: int, tls: bool) -> str:
    """The browser page's address; a wildcard bind is shown as 127.0.0.1 (what a browser on this machine opens)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}/"


def safe_session_id(raw: str) -> str:
    """Vendor ids as folder names: odd characters become '_', at most 64."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", raw)[:64]
    return cleaned if SESSION_ID.match(cleaned) else "s" + cleaned[:63]


class FrameDecoder:
    """Native binary frames in the encoding `start` declared -> 16 kHz mono float32."""

    def __init__(self, start: Start) -> None:
        self.decode = decode_s16le if start.encoding == "pcm_s16le" else decode_f32le
        self.channels = start.channels
        self.resample = Resampler(start.sample_rate)

    def __call__(self, data: bytes) -> Any:
        return self.resample(self.decode(data, self.channels))


class Keepalive:
    """Pings a connection every `interval` and closes it (1011) when no pong comes within as long.
    While the server itself does not read the connection (flow control), a pong queued behind audio
    it has not read yet says nothing about the peer, so such a wait never counts against it."""

    def __init__(self, connection: ServerConnection, interval: float) -> None:
        self.connection = connection
        self.interval = interval
        self.paused = False
        self.pauses = 0
        self.task = asyncio.create_task(self._run())

    def pause(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume(self) -> None:
        self.paused = False

    async def _run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                if self.paused:
                    continue
                pauses = self.pauses
                pong = await self.connection.ping()
                try:
                    await asyncio.wait_for(asyncio.shield(pong), self.interval)
                except TimeoutError:
                    if self.paused or self.pauses != pauses:
                        continue
                    await self.connection.close(1011, "keepalive ping timeout")
                    return
        except ConnectionClosed:
            pass


class LivesumServer:
    STOPPING = "no new sessions; finishing the running ones"  # what the first SIGTERM does

    def __init__(self, settings: Settings, models: SharedModels) -> None:
        self.settings = settings
        self.models = models
        self.service = LmService()
        self.sessions: dict[str, Session] = {}
        self.kv_bytes: int | None = None
        self.port: int | None = None
        self.closing = False  # set on shutdown: no new session is admitted
        self.tls = tls_context(settings)
        self._reserved: set[str] = set()  # ids being opened (engine creation awaits): admission counts them
        self._decoders: dict[str, tuple[FrameDecoder, str | None]] = {}
        self._connections = 0
        self._per_address: Counter[str] = Counter()
        self.http = HttpRoutes(self)  # the page, /healthz, /metrics, /api on the same port (livesum/server/http.py)

    @property
    def connections_open(self) -> int:
        """TCP connections admitted and not yet closed (websockets and plain HTTP)."""
        return self._connections

    # -- lifetime --------------------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event | None = None, ready: Callable[[LivesumServer], None] | None = None,
                    hurry: asyncio.Event | None = None) -> None:
        """Listen until `stop` is set; then stop accepting, let every session finish (transcript and
        notes) within `shutdown_seconds` and close. `hurry` (a second signal) cuts the wait short."""
        check_bind(self.settings)
        config = self.settings.server
        await self.recover_interrupted()
        async with serve(
            self.handler, config.host, config.port,
            process_request=self.process_request,
            ssl=self.tls,
            max_size=config.max_frame_bytes,
            max_queue=max(1, config.max_buffered_bytes // config.max_frame_bytes),
            ping_interval=None,  # our Keepalive: it knows when the server itself stopped reading (flow control)
        ) as server:
            self.port = server.sockets[0].getsockname()[1] if server.sockets else config.port
            if ready is not None:
                ready(self)
            await (stop.wait() if stop is not None else asyncio.Future())
            self.closing = True
            server.server.close()  # stop accepting; open connections stay until their sessions are done
            await self.finish_all(hurry)
        await self.close_backend()

    async def recover_interrupted(self) -> None:
        """Closes the records a killed server left unfinished (before any session can start)."""
        closed = await asyncio.to_thread(recover_interrupted, self.settings.server.data_dir)
        if closed:
            log.warning("closed %d session(s) a previous server left unfinished: %s", len(closed), ", ".join(closed[:10]))

    async def close_backend(self) -> None:
        """After every session is done: the LM thread."""
        self.service.cancel_queued()  # every session is done: what is queued is notes a hurried exit gave up
        await asyncio.to_thread(self.service.close, True)  # joined: the process must not exit inside a torch call

    async def finish_all(self, hurry: asyncio.Event | None = None) -> None:
        """End every session's audio and wait `shutdown_seconds` for its notes; then cancel what is left
        (each pipeline still flushes its transcribers and writes notes from the transcript, within its
        exit deadline), and give readers a moment to take the last events."""
        sessions = list(self.sessions.values())
        for session in sessions:
            session.end_audio()
        if sessions:
            async def all_finished() -> None:
                for session in sessions:
                    await session.finished.wait()

            waiters = {asyncio.ensure_future(all_finished())}
            if hurry is not None:
                waiters.add(asyncio.ensure_future(hurry.wait()))
            await asyncio.wait(waiters, timeout=self.settings.server.shutdown_seconds, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        late = [session for session in sessions if not session.finished.is_set()]
        for session in late:
            log.warning("session %s: notes not done within the shutdown deadline; finishing from the transcript", session.id)
            session.task.cancel()
        if late:
            await asyncio.wait([session.task for session in late])
        readers = [subscriber.task for session in sessions for subscriber in session.readers()]
        if readers:
            await asyncio.wait(readers, timeout=SUBSCRIBERS_DRAIN_SECONDS)

    # -- before the upgrade: limits, path and token ---------------------------------------------------

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        refused = self._admit_connection(connection)
        if refused is not None:
            return refused
        url = urlsplit(request.path)
        route = url.path.rstrip("/") or "/"
        if request.method != "GET" or (not is_upgrade(request) and route != NATIVE_PATH and route not in ADAPTERS):
            return await self.http.answer(request, connection)  # plain HTTP: the page, health, metrics, session files (405 for other methods)
        if route != NATIVE_PATH and route not in ADAPTERS:
            paths = ", ".join([NATIVE_PATH, *ADAPTERS])
            return connection.respond(HTTPStatus.NOT_FOUND, f"unknown path {route[:80]}; use one of {paths}\n")
        if route == "/twilio" and self.settings.server.twilio_auth_token:
            if not self._twilio_signed(request):
                return connection.respond(HTTPStatus.FORBIDDEN, "missing or wrong X-Twilio-Signature\n")
            return None
        expected = self.settings.server.token
        if expected:
            offered = self._offered_token(request)
            if offered is None and route in IN_BAND_TOKEN:
                return None  # checked on the protocol's first messages, within open_timeout_seconds
            if not token_matches(expected, offered):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        return None

    def _admit_connection(self, connection: ServerConnection) -> Response | None:
        """Caps on open connections, per server and per client address; counted until the TCP connection closes."""
        config = self.settings.server
        address = str(connection.remote_address[0]) if connection.remote_address else "?"
        if self._connections >= config.max_connections:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"server busy ({config.max_connections} connections); try again later\n")
        if self._per_address[address] >= config.max_connections_per_address:
            return connection.respond(HTTPStatus.TOO_MANY_REQUESTS, f"too many connections from {address} ({config.max_connections_per_address})\n")
        self._connections += 1
        self._per_address[address] += 1

        def release(_: object) -> None:
            self._connections -= 1
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]

        asyncio.ensure_future(connection.wait_closed()).add_done_callback(release)
        return None

    @staticmethod
    def _offered_token(request: Request) -> str | None:
        return bearer(request.headers.get("Authorization")) or dict(parse_qsl(urlsplit(request.path).query)).get("token")

    def _twilio_signed(self, request: Request) -> bool:
        config = self.settings.server
        assert config.twilio_auth_token is not None
        offered = request.headers.get("X-Twilio-Signature")
        base = config.public_url.rstrip("/") if config.public_url else f"{'wss' if self.tls else 'ws'}://{request.headers.get('Host', '')}"
        return offered is not None and hmac.compare_digest(twilio_signature(config.twilio_auth_token, base + request.path), offered)

    def _authorized_at_handshake(self, connection: ServerConnection, route: str) -> bool:
        expected = self.settings.server.token
        request = connection.request
        assert request is not None
        if route == "/twilio" and self.settings.server.twilio_auth_token:
            return True  # the signature was checked before the upgrade
        return not expected or token_matches(expected, self._offered_token(request))

    async def handler(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        url = urlsplit(connection.request.path)
        route, query = url.path.rstrip("/"), dict(parse_qsl(url.query))
        keepalive = Keepalive(connection, self.settings.server.ping_interval_seconds)
        try:
            if route == NATIVE_PATH:
                await self._native(connection, query, keepalive)
            else:
                adapter = ADAPTERS[route](query, max_buffered_bytes=self.settings.server.max_buffered_bytes)
                await self._adapter(connection, adapter, self._authorized_at_handshake(connection, route))
        except ConnectionClosed:
            pass
        except Exception:  # a bug in one connection must never take the server down
            log.exception("connection on %s failed", route)
            await connection.close(1011, "internal error")
        finally:
            keepalive.task.cancel()

    async def _receive(self, connection: ServerConnection, timeout: float | None, reason: str = "idle timeout") -> str | bytes:
        """The next message; after `timeout` seconds without one the connection is closed (4408)."""
        try:
            async with asyncio.timeout(timeout):
                return await connection.recv()
        except TimeoutError:
            await connection.close(CLOSE_IDLE, reason[:120])
            raise ConnectionClosed(None, None) from None

    def _idle(self, session: Session | None) -> float | None:
        """Idle timeout while the client streams; none once it said stop (the server is the one working)."""
        return None if session is not None and session.ended else self.settings.server.idle_timeout_seconds

    # -- sessions -----------------------------------------------------------------------------------

    def session_overrides(self, start: Start) -> dict[str, Any]:
        """The start's allow-listed overrides (within their bounds) and language, as a nested tree."""
        config = self.settings.server
        allowed = set(config.allowed_overrides)
        for key, value in start.overrides.items():
            if key not in allowed:
                raise ProtocolError(f"override {key[:60]!r} is not allowed; allowed: {', '.join(sorted(allowed)) or 'none'}")
            minimum = config.override_minimums.get(key)
            if minimum is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < minimum):
                raise ProtocolError(f"override {key}: must be a number of at least {minimum:g} on this server")
        tree = nest(start.overrides)
        if start.language is not None:
            tree = deep_merge(tree, {"asr": {"language": start.language}})
        return tree

    def session_settings(self, start: Start) -> Settings:
        """The server's settings with the start's allow-listed overrides (within their bounds) and language."""
        tree = self.session_overrides(start)
        if not tree:
            return self.settings
        try:
            return validate_settings(deep_merge(self.settings.model_dump(), tree), "start.overrides")
        except ConfigError as error:
            raise ProtocolError(str(error)) from None

    @contextlib.contextmanager
    def _admission(self, session_id: str) -> Iterator[None]:
        """Reserves `session_id` and a place while the session is being opened (engine creation awaits the
        LM thread): concurrent starts can neither exceed max_sessions nor share an id. An id is used once:
        a finished session's folder is never opened again."""
        config = self.settings.server
        if self.closing:
            raise _closing("the server is shutting down; try again later", CLOSE_FULL)
        if session_id in self.sessions or session_id in self._reserved:
            raise _closing(f"session {session_id} exists; reconnect with a resume message", CLOSE_SESSION_TAKEN)
        if (config.data_dir / session_id / FILE_NAME).exists():
            raise _closing(f"session id {session_id} belongs to a finished session; start with a new id", CLOSE_SESSION_TAKEN)
        if len(self.sessions) + len(self._reserved) >= config.max_sessions:
            raise _closing(f"server full ({config.max_sessions} sessions); try again later", CLOSE_FULL)
        self._reserved.add(session_id)
        try:
            yield
        finally:
            self._reserved.discard(session_id)

    async def open_session(self, session_id: str, settings: Settings, speakers: dict[str, str] | None, *, live: bool) -> Session:
        """A running session with its own engine cache and event log (under an admission reservation)."""
        engine = None
        if self.models.language is not None:
            engine = await self.service.run(Priority.QUESTION, new_engine, settings, *self.models.language)
            if self.kv_bytes is None:
                self.kv_bytes = kv_cache_bytes(self.models.language[0], engine.cache.capacity)
                log.info("KV cache per session: %.1f MiB (%d positions)", self.kv_bytes / 2**20, engine.cache.capacity)
        out_dir = settings.server.data_dir / session_id
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            event_log = EventLog(out_dir / FILE_NAME, session_id)
        except FileExistsError:  # written meanwhile by someone else (another server on the same data dir)
            raise _closing(f"session id {session_id} belongs to a finished session; start with a new id", CLOSE_SESSION_TAKEN) from None
        try:
            session = Session(
                session_id, settings, out_dir, transcriber_factory(self.models.whisper, settings, live=True), engine, self.service,
                event_log=event_log, secret=secrets.token_urlsafe(24), live=live, speakers=speakers, on_finished=self._forget,
            )
        except BaseException:
            event_log.close()
            raise
        self.sessions[session_id] = session
        return session

    def _forget(self, session: Session) -> None:
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
            self.http.metrics.retire(session)
        self._decoders.pop(session.id, None)

    async def _refuse(self, connection: ServerConnection, session_id: str, message: str, code: int) -> None:
        """A connection-level error (no session record): one error message, then the close code."""
        envelope = Envelope(session=session_id, seq=None, event=Error(message=message, fatal=True, source="server"))
        try:
            await connection.send(envelope.model_dump_json())
        except ConnectionClosed:
            pass
        await connection.close(code, message[:120])

    # -- native protocol ------------------------------------------------------------------------------

    async def _native(self, connection: ServerConnection, query: dict[str, str], keepalive: Keepalive) -> None:
        session_id = query.get("session") or uuid.uuid4().hex
        if not SESSION_ID.match(session_id):
            return await self._refuse(connection, session_id[:64], "session id must be 1-64 of A-Z a-z 0-9 _ . -", CLOSE_PROTOCOL)
        opening = self.settings.server.open_timeout_seconds
        first = await self._receive(connection, opening, f"no start, resume or watch within {opening:g} s")
        if isinstance(first, bytes):
            return await self._refuse(connection, session_id, "binary audio before start", CLOSE_PROTOCOL)
        try:
            message = parse_client_message(first)
            if isinstance(message, Watch):
                return await self._watch(connection, session_id, message)
            if isinstance(message, Start):
                session, decoder, track = await self._start_native(connection, session_id, message)
            elif isinstance(message, Resume):
                session, decoder, track = await self._resume_native(connection, session_id, message)
            else:
                raise ProtocolError(f"the first message must be start, resume or watch, not {message.type}")
        except ProtocolError as error:
            code = getattr(error, "close_code", CLOSE_PROTOCOL)
            return await self._refuse(connection, session_id, str(error), code)
        except OSError as error:
            return await self._refuse(connection, session_id, f"cannot write session files: {error.strerror or error}", 1011)
        try:
            await self._native_stream(connection, session, decoder, track, keepalive)
        finally:
            session.detach(connection)

    async def _start_native(self, connection: ServerConnection, session_id: str, start: Start) -> tuple[Session, FrameDecoder, str | None]:
        with self._admission(session_id):
            settings = self.session_settings(start)
            speakers = {start.speaker: start.speaker} if start.speaker else None
            session = await self.open_session(session_id, settings, speakers, live=start.live)
        decoder = FrameDecoder(start)
        self._decoders[session_id] = (decoder, start.speaker)
        welcome = Envelope(session=session_id, seq=None, resume_secret=session.secret,
                           event=Status(state="started", detail="session opened; a resume must present resume_secret"))
        session.attach(connection, last_seq=0, preamble=[welcome.model_dump_json()])
        return session, decoder, start.speaker

    async def _resume_native(self, connection: ServerConnection, session_id: str, resume: Resume) -> tuple[Session, FrameDecoder, str | None]:
        session = self.sessions.get(session_id)
        if session is None or session.finished.is_set() or session_id not in self._decoders:
            raise _closing(f"no session {session_id} to resume (finished, expired or never started)", CLOSE_UNKNOWN_SESSION)
        if not hmac.compare_digest(session.secret.encode(), resume.secret.encode()):
            raise _closing(f"wrong resume secret for session {session_id}", CLOSE_UNAUTHORIZED)
        session.attach(connection, last_seq=resume.last_seq)  # takes over from a connection not yet seen dead
        decoder, track = self._decoders[session_id]
        return session, decoder, track

    async def _watch(self, connection: ServerConnection, session_id: str, watch: Watch) -> None:
        """Read-only: the session's events after `last_seq`, then live ones, until it finishes. A
        watcher that sends anything is closed; the session is not touched."""
        session = self.sessions.get(session_id)
        if session is None or session.finished.is_set():
            return await self._refuse(connection, session_id, f"no running session {session_id} (a finished one: GET its files)",
                                      CLOSE_UNKNOWN_SESSION)
        session.watch(connection, watch.last_seq)
        try:
            await connection.recv()  # the subscriber closes the connection when the session is done
            await self._refuse(connection, session_id, "a watcher is read-only", CLOSE_PROTOCOL)
        finally:
            session.detach(connection)

    async def _native_stream(self, connection: ServerConnection, session: Session, decoder: FrameDecoder, track: str | None,
                             keepalive: Keepalive) -> None:
        while True:
            message = await self._receive(connection, self._idle(session))
            if isinstance(message, bytes):
                if session.ended:
                    session.report("audio after stop is ignored")
                    continue
                try:
                    session.push(track, decoder(message))
                except AudioFormatError as error:
                    session.report(f"frame dropped: {error}")
                if session.needs_room:  # flow control: read no more until the session has room
                    keepalive.pause()
                    try:
                        await session.room()
                    finally:
                        keepalive.resume()
                continue
            try:
                control = parse_client_message(message)
            except ProtocolError as error:
                session.report(str(error))
                continue
            if isinstance(control, Ask):
                session.ask(control.question)
            elif isinstance(control, Summarize):
                session.summarize()
            elif isinstance(control, Stop):
                session.end_audio()  # the session closes the connection once the notes are sent
            else:
                session.report(f"{control.type} is only valid as the first message")

    # -- adapters -----------------------------------------------------------------------------------------

    async def _adapter(self, connection: ServerConnection, adapter: Adapter, authorized: bool) -> None:
        session: Session | None = None
        bad = 0
        clean_close = False
        loop = asyncio.get_running_loop()
        opening = self.settings.server.open_timeout_seconds
        open_by = loop.time() + opening
        try:
            while True:
                if session is None:  # the credential and the start must come within open_timeout_seconds
                    message = await self._receive(connection, max(0.0, open_by - loop.time()),
                                                  f"{adapter.name}: no authenticated start within {opening:g} s")
                else:
                    message = await self._receive(connection, self._idle(session))
                try:
                    actions = adapter.on_text(message) if isinstance(message, str) else adapter.on_binary(message)
                except AdapterError as error:
                    if session is not None:
                        session.report(str(error))
                        continue
                    bad += 1
                    log.info("%s: %s", adapter.name, error)
                    if bad >= MAX_BAD_BEFORE_OPEN:
                        return await connection.close(CLOSE_PROTOCOL, f"{adapter.name}: too many unusable messages")
                    continue
                for action in actions:
                    if isinstance(action, Open):
                        session = await self._open_adapter_session(connection, adapter, action, authorized)
                        if session is None:
                            return
                    elif isinstance(action, Audio):
                        if session is None:
                            bad += 1
                            continue
                        session.push(action.track, action.samples, action.at, action.speaker)
                    elif isinstance(action, Close) and session is not None:
                        session.end_audio()
        except ConnectionClosed as closed:
            clean_close = closed.rcvd is not None and closed.rcvd.code in (1000, 1001)
        finally:
            if session is not None:
                for action in adapter.flush():
                    if isinstance(action, Audio):
                        session.push(action.track, action.samples, action.at, action.speaker)
                    elif isinstance(action, Close):
                        session.end_audio()
                if clean_close and getattr(adapter, "ends_on_close", False):
                    session.end_audio()
                session.detach(connection)

    async def _open_adapter_session(self, connection: ServerConnection, adapter: Adapter, action: Open, authorized: bool) -> Session | None:
        expected = self.settings.server.token
        if expected and not authorized and not token_matches(expected, action.token):
            await connection.close(CLOSE_UNAUTHORIZED, "missing or wrong token")
            return None
        session_id = safe_session_id(adapter.query.get("session") or action.session_id)
        existing = self.sessions.get(session_id)
        if existing is not None and not existing.finished.is_set():
            existing.attach(connection, last_seq=None)  # the same call reconnected: audio continues
            return existing
        try:
            with self._admission(session_id):
                session = await self.open_session(session_id, self.settings, action.speakers or None, live=True)
        except ProtocolError as error:
            await connection.close(getattr(error, "close_code", CLOSE_PROTOCOL), str(error)[:120])
            return None
        session.attach(connection, last_seq=None)
        return session


class _ClosingProtocolError(ProtocolError):
    def __init__(self, message: str, close_code: int) -> None:
        super().__init__(message)
        self.close_code = close_code


def _closing(message: str, code: int) -> ProtocolError:
    return _ClosingProtocolError(message, code)


async def run_server(settings: Settings, stop: asyncio.Event | None = None, ray_address: str | None = None) -> None:
    """`livesum serve`: check the bind, load the models once, serve until SIGINT/SIGTERM. The first
    signal stops accepting and lets the sessions finish (`shutdown_seconds`); a second one hurries them.
    With `ray_address` the sessions run on session hosts of that Ray cluster (livesum/server/ray_sessions.py)."""
    import signal

    check_bind(settings)
    tls_context(settings)  # a certificate that does not load fails before minutes of model loading
    settings.server.data_dir.mkdir(parents=True, exist_ok=True)
    server: LivesumServer
    if ray_address:
        from livesum.server.ray_sessions import start_ray_server

        server = await start_ray_server(settings, ray_address)
    else:
        print("livesum serve: loading models", file=sys.stderr, flush=True)
        models = await asyncio.to_thread(load_shared_models, settings)
        server = LivesumServer(settings, models)
    stop = stop or asyncio.Event()
    hurry = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            hurry.set()
        else:
            print(f"livesum serve: stopping: {server.STOPPING}", file=sys.stderr, flush=True)
            stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    def ready(bound: LivesumServer) -> None:
        host, scheme = settings.server.host, "wss" if bound.tls else "ws"
        print(f"livesum serve: listening on {scheme}://{host}:{bound.port} ({NATIVE_PATH}, {', '.join(ADAPTERS)}); "
              f"sessions in {settings.server.data_dir}", file=sys.stderr, flush=True)
        print(f"livesum serve: open {page_url(host, bound.port, bound.tls is not None)} in a browser", file=sys.stderr, flush=True)

    await server.serve(stop, ready, hurry)
    print("livesum serve: stopped", file=sys.stderr, flush=True)
