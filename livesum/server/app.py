"""The websocket server: routing and auth before the upgrade, one handler per protocol, shared models.

Models load once (`load_shared_models`); every session gets its own transcribers (on the one
Whisper) and its own StreamingEngine cache (on the one LM, run by the one `LmService`).
Nothing here calls a model on the event loop: Whisper runs in worker threads, the LM on the
service's thread, a forward at a time, so a busy model never stalls another connection.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from faster_whisper import WhisperModel
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from livesum.config import ConfigError, Settings, deep_merge, nest, validate_settings
from livesum.llm.service import LmService, Priority
from livesum.server.adapters import Adapter, AdapterError, Audio, Close, Open
from livesum.server.adapters.recall import RecallAdapter
from livesum.server.adapters.telnyx import TelnyxAdapter
from livesum.server.adapters.twilio import TwilioAdapter
from livesum.server.adapters.vonage import VonageAdapter
from livesum.server.audio import AudioFormatError, Resampler, decode_f32le, decode_s16le
from livesum.server.protocol import SESSION_ID, Ask, Envelope, ProtocolError, Resume, Start, Stop, Summarize, parse_client_message
from livesum.server.session import Session
from livesum.events import Error

log = logging.getLogger(__name__)

NATIVE_PATH = "/v1/stream"
ADAPTERS: dict[str, type[Adapter]] = {
    "/twilio": TwilioAdapter, "/telnyx": TelnyxAdapter, "/recall": RecallAdapter, "/vonage": VonageAdapter,
}
IN_BAND_TOKEN = {"/twilio", "/vonage"}  # protocols that carry the token in their first messages

# Close codes (1xxx from RFC 6455, 4xxx ours; docs/server.md lists them).
CLOSE_FULL = 1013  # try again later: max_sessions reached
CLOSE_PROTOCOL = 4400  # the first message was not a valid start/resume, or too much garbage
CLOSE_UNAUTHORIZED = 4401  # in-band token wrong or missing
CLOSE_UNKNOWN_SESSION = 4404  # resume of a session that is not there (finished, expired, never started)
CLOSE_IDLE = 4408  # nothing received for idle_timeout_seconds
CLOSE_SESSION_TAKEN = 4409  # `start` with the id of a live session; or this connection was taken over by a resume
MAX_BAD_BEFORE_OPEN = 50  # garbage frames tolerated before an adapter stream has opened its session


class ServerStartupError(RuntimeError):
    """The server cannot start as configured; one line."""


@dataclass
class SharedModels:
    whisper: WhisperModel
    language_model: Any | None = None  # transformers model, None when the LLM is off
    tokenizer: Any | None = None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """A server reachable from other machines must have a token."""
    if not is_loopback(settings.server.host) and not settings.server.token:
        raise ServerStartupError(f"refusing to listen on {settings.server.host} without a token: set --token (or server.token)")


def load_shared_models(settings: Settings) -> SharedModels:
    """Whisper and the LM, once per server (blocking; call from a thread)."""
    from livesum.asr.transcriber import load_whisper

    from livesum.runner import load_language

    from livesum.asr.diarize import voices_for
    from livesum.compute import share_cores

    share_cores(settings)  # before Whisper loads: its threads depend on where the LM computes
    whisper = load_whisper(settings.asr, settings.resolved_cache_dir())
    voices_for(settings.asr)  # the diarizer's voice model, cached for the sessions' transcribers
    loaded = load_language(settings)
    return SharedModels(whisper) if loaded is None else SharedModels(whisper, *loaded)


def kv_cache_bytes(model: Any, capacity: int) -> int:
    """Per-session memory of the sink cache: 2 (K and V) * layers * kv_heads * head_dim * capacity * dtype bytes."""
    config = model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(model.parameters()).element_size()
    return 2 * config.num_hidden_layers * heads * head_dim * capacity * element


def bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def token_matches(expected: str, offered: str | None) -> bool:
    return offered is not None and hmac.compare_digest(expected.encode(), offered.encode())


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


class LivesumServer:
    def __init__(self, settings: Settings, models: SharedModels) -> None:
        self.settings = settings
        self.models = models
        self.service = LmService()
        self.sessions: dict[str, Session] = {}
        self.kv_bytes: int | None = None
        self.port: int | None = None
        self._decoders: dict[str, tuple[FrameDecoder, str | None]] = {}

    # -- lifetime --------------------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event | None = None, ready: Callable[[LivesumServer], None] | None = None) -> None:
        """Listen until `stop` is set; then end every session gracefully (notes written) and close."""
        check_bind(self.settings)
        config = self.settings.server
        async with serve(
            self.handler, config.host, config.port,
            process_request=self.process_request,
            max_size=config.max_frame_bytes,
            ping_interval=config.ping_interval_seconds,
            ping_timeout=config.ping_interval_seconds,
            max_queue=64,
        ) as server:
            self.port = server.sockets[0].getsockname()[1] if server.sockets else config.port
            if ready is not None:
                ready(self)
            await (stop.wait() if stop is not None else asyncio.Future())
            await self.finish_all()
        self.service.close()

    async def finish_all(self, timeout: float = 120) -> None:
        sessions = list(self.sessions.values())
        for session in sessions:
            session.end_audio()
        if sessions:
            await asyncio.wait([asyncio.ensure_future(s.finished.wait()) for s in sessions], timeout=timeout)

    # -- before the upgrade: path and token ----------------------------------------------------------

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        route = url.path.rstrip("/") or "/"
        if route != NATIVE_PATH and route not in ADAPTERS:
            paths = ", ".join([NATIVE_PATH, *ADAPTERS])
            return connection.respond(HTTPStatus.NOT_FOUND, f"unknown path {route[:80]}; use one of {paths}\n")
        expected = self.settings.server.token
        if expected:
            query = dict(parse_qsl(url.query))
            offered = bearer(request.headers.get("Authorization")) or query.get("token")
            if offered is None and route in IN_BAND_TOKEN:
                return None  # checked on the protocol's first message, before any audio
            if not token_matches(expected, offered):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        return None

    def _authorized_at_handshake(self, connection: ServerConnection) -> bool:
        expected = self.settings.server.token
        if not expected:
            return True
        request = connection.request
        assert request is not None
        offered = bearer(request.headers.get("Authorization")) or dict(parse_qsl(urlsplit(request.path).query)).get("token")
        return token_matches(expected, offered)

    async def handler(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        url = urlsplit(connection.request.path)
        route, query = url.path.rstrip("/"), dict(parse_qsl(url.query))
        try:
            if route == NATIVE_PATH:
                await self._native(connection, query)
            else:
                await self._adapter(connection, ADAPTERS[route](query), self._authorized_at_handshake(connection))
        except ConnectionClosed:
            pass
        except Exception:  # a bug in one connection must never take the server down
            log.exception("connection on %s failed", route)
            await connection.close(1011, "internal error")

    async def _receive(self, connection: ServerConnection, idle: bool = True) -> str | bytes:
        """The next message; `idle` closes the connection after idle_timeout_seconds of silence
        (off once the client said stop: then the server is the one still working)."""
        try:
            async with asyncio.timeout(self.settings.server.idle_timeout_seconds if idle else None):
                return await connection.recv()
        except TimeoutError:
            await connection.close(CLOSE_IDLE, "idle timeout")
            raise ConnectionClosed(None, None) from None

    # -- sessions -----------------------------------------------------------------------------------

    def session_settings(self, start: Start) -> Settings:
        """The server's settings with the start's allow-listed overrides (and language)."""
        allowed = set(self.settings.server.allowed_overrides)
        for key in start.overrides:
            if key not in allowed:
                raise ProtocolError(f"override {key[:60]!r} is not allowed; allowed: {', '.join(sorted(allowed)) or 'none'}")
        tree = nest(start.overrides)
        if start.language is not None:
            tree = deep_merge(tree, {"asr": {"language": start.language}})
        if not tree:
            return self.settings
        try:
            return validate_settings(deep_merge(self.settings.model_dump(), tree), "start.overrides")
        except ConfigError as error:
            raise ProtocolError(str(error)) from None

    async def open_session(self, session_id: str, settings: Settings, speakers: dict[str, str] | None) -> Session:
        from livesum.runner import new_engine, transcriber_factory

        engine = None
        if self.models.language_model is not None:
            engine = await self.service.run(Priority.QUESTION, new_engine, settings, self.models.language_model, self.models.tokenizer)
            if self.kv_bytes is None:
                self.kv_bytes = kv_cache_bytes(self.models.language_model, engine.cache.capacity)
                log.info("KV cache per session: %.1f MiB (%d positions)", self.kv_bytes / 2**20, engine.cache.capacity)
        session = Session(
            session_id, settings, settings.server.data_dir / session_id,
            transcriber_factory(self.models.whisper, settings, live=True), engine, self.service,
            speakers=speakers, on_finished=self._forget,
        )
        self.sessions[session_id] = session
        return session

    def _forget(self, session: Session) -> None:
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
        self._decoders.pop(session.id, None)

    async def _refuse(self, connection: ServerConnection, session_id: str, message: str, code: int) -> None:
        """A connection-level error (no session record): one error message, then the close code."""
        envelope = Envelope(session=session_id, seq=None, event=Error(message=message, fatal=True, source="server"))
        try:
            await connection.send(envelope.model_dump_json())
        except ConnectionClosed:
            pass
        await connection.close(code, message[:120])

    def _full(self) -> bool:
        return len(self.sessions) >= self.settings.server.max_sessions

    # -- native protocol ------------------------------------------------------------------------------

    async def _native(self, connection: ServerConnection, query: dict[str, str]) -> None:
        session_id = query.get("session") or uuid.uuid4().hex
        if not SESSION_ID.match(session_id):
            return await self._refuse(connection, session_id[:64], "session id must be 1-64 of A-Z a-z 0-9 _ . -", CLOSE_PROTOCOL)
        first = await self._receive(connection)
        if isinstance(first, bytes):
            return await self._refuse(connection, session_id, "binary audio before start", CLOSE_PROTOCOL)
        try:
            message = parse_client_message(first)
            if isinstance(message, Start):
                session, decoder, track = await self._start_native(connection, session_id, message)
            elif isinstance(message, Resume):
                session, decoder, track = self._resume_native(connection, session_id, message)
            else:
                raise ProtocolError(f"the first message must be start or resume, not {message.type}")
        except ProtocolError as error:
            code = getattr(error, "close_code", CLOSE_PROTOCOL)
            return await self._refuse(connection, session_id, str(error), code)
        except OSError as error:
            return await self._refuse(connection, session_id, f"cannot write session files: {error.strerror or error}", 1011)
        try:
            await self._native_stream(connection, session, decoder, track)
        finally:
            session.detach(connection)

    async def _start_native(self, connection: ServerConnection, session_id: str, start: Start) -> tuple[Session, FrameDecoder, str | None]:
        if session_id in self.sessions:
            raise _closing(f"session {session_id} exists; reconnect with a resume message", CLOSE_SESSION_TAKEN)
        if self._full():
            raise _closing(f"server full ({self.settings.server.max_sessions} sessions); try again later", CLOSE_FULL)
        settings = self.session_settings(start)
        speakers = {start.speaker: start.speaker} if start.speaker else None
        session = await self.open_session(session_id, settings, speakers)
        decoder = FrameDecoder(start)
        self._decoders[session_id] = (decoder, start.speaker)
        session.attach(connection, last_seq=0)
        return session, decoder, start.speaker

    def _resume_native(self, connection: ServerConnection, session_id: str, resume: Resume) -> tuple[Session, FrameDecoder, str | None]:
        session = self.sessions.get(session_id)
        if session is None or session.finished.is_set() or session_id not in self._decoders:
            raise _closing(f"no session {session_id} to resume (finished, expired or never started)", CLOSE_UNKNOWN_SESSION)
        session.attach(connection, last_seq=resume.last_seq)  # takes over from a connection not yet seen dead
        decoder, track = self._decoders[session_id]
        return session, decoder, track

    async def _native_stream(self, connection: ServerConnection, session: Session, decoder: FrameDecoder, track: str | None) -> None:
        while True:
            message = await self._receive(connection, idle=not session.ended)
            if isinstance(message, bytes):
                if session.ended:
                    session.report("audio after stop is ignored")
                    continue
                try:
                    session.push(track, decoder(message))
                except AudioFormatError as error:
                    session.report(f"frame dropped: {error}")
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
        try:
            while True:
                message = await self._receive(connection, idle=session is None or not session.ended)
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
            existing.attach(connection, send_events=False)  # the same call reconnected: audio continues
            return existing
        if self._full():
            await connection.close(CLOSE_FULL, "server full; try again later")
            return None
        session = await self.open_session(session_id, self.settings, action.speakers or None)
        session.attach(connection, send_events=False)
        return session


class _ClosingProtocolError(ProtocolError):
    def __init__(self, message: str, close_code: int) -> None:
        super().__init__(message)
        self.close_code = close_code


def _closing(message: str, code: int) -> ProtocolError:
    return _ClosingProtocolError(message, code)


async def run_server(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """`livesum serve`: check the bind, load the models once, serve until SIGINT/SIGTERM."""
    import signal

    check_bind(settings)
    settings.server.data_dir.mkdir(parents=True, exist_ok=True)
    print("livesum serve: loading models", file=sys.stderr, flush=True)
    models = await asyncio.to_thread(load_shared_models, settings)
    server = LivesumServer(settings, models)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def ready(bound: LivesumServer) -> None:
        host = settings.server.host
        print(f"livesum serve: listening on ws://{host}:{bound.port} ({NATIVE_PATH}, {', '.join(ADAPTERS)}); "
              f"sessions in {settings.server.data_dir}", file=sys.stderr, flush=True)

    await server.serve(stop, ready)
