"""`livesum serve --ray`: the same websocket front-end, with every session's work on SessionHost actors
of a Ray cluster (livesum/scale/session_host.py; docs/scale.md has the design).

The front-end keeps what belongs to a connection: the protocols and adapters, tokens, close codes,
decoding and resampling, flow control. A session lives on a host, found by name (`livesum-host-N` in
the configured namespace, detached, created by the first front-end that needs it), so a client can
resume through any front-end. `RayLivesumServer` is `LivesumServer` with its in-process sessions
replaced at the few places that make or find one (`_start_native`, `_resume_native`, `_watch`,
`_open_adapter_session`, `finish_all`); the connection handlers are shared, and talk to a
`RemoteSession`, which has the part of `Session`'s interface they use.

- Audio goes to the host in `push` calls of `scale.push_seconds` (one call per frame would cost more
  than the frame), in order with the control messages, from one sender task per session.
- One task per reading connection long-polls `events(after_seq)` and forwards each event as the
  native envelope; the host is the record, so a resume anywhere replays exactly what followed.
- A host that dies fails every pending call of its sessions with `RayActorError` at once: those
  sessions' connections get an error event and close 4503; other sessions use other handles.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from livesum.config import Settings
from livesum.events import Status
from livesum.loading import SharedModels
from livesum.scale.session_host import EventBatch, HostLoad, SessionHost, SessionHostError
from livesum.server.adapters import Adapter, Open
from livesum.server.app import (
    CLOSE_FULL, CLOSE_PROTOCOL, CLOSE_SESSION_TAKEN, CLOSE_UNAUTHORIZED, CLOSE_UNKNOWN_SESSION, CLOSE_WORKER_DIED,
    FrameDecoder, LivesumServer, _closing, safe_session_id, token_matches,
)
from livesum.server.audio import PIPELINE_RATE
from livesum.server.protocol import Envelope, ProtocolError, Resume, Start, Watch

log = logging.getLogger(__name__)

HOST_PREFIX = "livesum-host-"
CLOSE_TAKEN_OVER = 4409
CLOSE_RESTART = 1012  # the front-end is stopping: the session goes on on its host; resume through another front-end
DEATH_MESSAGE = "session worker died"
NOTHING_AFTER = 2**62  # a long-poll after this seq returns no event: only a take-over, the end, or the timeout


def host_error(error: BaseException) -> SessionHostError | None:
    """The host's refusal inside what Ray raised (a RayTaskError that wraps it), or None."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, SessionHostError):
        return cause
    return error if isinstance(error, SessionHostError) else None


def is_death(error: BaseException) -> bool:
    """The actor is gone (killed, out of memory, its node lost): RayActorError and its kinds."""
    import ray

    return isinstance(error, ray.exceptions.RayActorError)


@dataclass
class Host:
    name: str
    handle: Any
    load: HostLoad | None = None  # the last answer of load(); None: not answering (loading models, pending, dead)


class HostPool:
    """The session hosts this front-end knows, their loads, and placement."""

    def __init__(self, ray: Any, settings: Settings) -> None:
        self.ray = ray
        self.settings = settings
        self.config = settings.scale
        self.hosts: dict[str, Host] = {}
        self._loads_at = -1e9
        self._loads_lock = asyncio.Lock()
        self._replacing: set[str] = set()
        self._tasks: set[asyncio.Task[object]] = set()
        self._actor_class: Any = None

    # -- creating and finding hosts (blocking Ray calls: run in a thread) -----------------------------

    def _host_options(self) -> dict[str, Any]:
        gpus = self.config.gpus_per_host
        if gpus is None:
            gpus = 1.0 if self.ray.cluster_resources().get("GPU", 0) else 0.0
        return dict(namespace=self.config.namespace, lifetime="detached", get_if_exists=True, max_restarts=0,
                    num_cpus=self.config.cpus_per_host, num_gpus=gpus, scheduling_strategy=self.config.placement)

    def _host_settings(self) -> Settings:
        data = self.settings.model_dump()
        data["server"]["data_dir"] = str(Path(self.settings.server.data_dir).resolve())  # the hosts' cwd is not ours
        return Settings.model_validate(data)

    def _ensure(self, name: str) -> Any:
        """The host of that name, created if there is none (get_if_exists: two front-ends racing get one)."""
        if self._actor_class is None:
            self._actor_class = (self.ray.remote(SessionHost), self._host_options(), self._host_settings())
        actor, options, settings = self._actor_class
        return actor.options(name=name, **options).remote(settings, cpus=max(1, int(self.config.cpus_per_host)))

    def ensure_all(self) -> None:
        """This front-end's `scale.hosts` hosts, and any other host in the namespace (made by a front-end
        configured with more)."""
        names = {f"{HOST_PREFIX}{index}" for index in range(self.config.hosts)}
        names |= {actor["name"] for actor in self.ray.util.list_named_actors(all_namespaces=True)
                  if actor["namespace"] == self.config.namespace and actor["name"].startswith(HOST_PREFIX)}
        for name in sorted(names):
            if name not in self.hosts:
                self.hosts[name] = Host(name, self._ensure(name))

    async def start(self) -> int:
        """Create or find the hosts; wait (up to `ready_timeout_seconds`) for a first one to answer."""
        await asyncio.to_thread(self.ensure_all)
        deadline = time.monotonic() + self.config.ready_timeout_seconds
        while True:
            ready = sum(host.load is not None for host in (await self.loads(fresh=True)).values())
            if ready or time.monotonic() > deadline:
                return ready
            await asyncio.sleep(1.0)

    # -- loads and placement --------------------------------------------------------------------------

    async def _ask(self, host: Host, method: str, *args: Any) -> Any:
        """One call with the call timeout; a dead host is replaced, then the error goes on."""
        try:
            return await asyncio.wait_for(getattr(host.handle, method).remote(*args), self.config.call_timeout_seconds)
        except Exception as error:
            if is_death(error):
                self.lost(host.name, host.handle)
            raise

    async def loads(self, fresh: bool = False) -> dict[str, Host]:
        async with self._loads_lock:
            if fresh or time.monotonic() - self._loads_at >= self.config.load_cache_seconds:
                hosts = list(self.hosts.values())
                answers = await asyncio.gather(*(self._ask(host, "load") for host in hosts), return_exceptions=True)
                for host, answer in zip(hosts, answers):
                    host.load = answer if isinstance(answer, HostLoad) else None
                    if not isinstance(answer, HostLoad):
                        log.info("host %s not available: %s", host.name, type(answer).__name__)
                self._loads_at = time.monotonic()
        return self.hosts

    async def place(self) -> Host | None:
        """The host with the most room (the cached answer counts the sessions placed since), or None."""
        hosts = [host for host in (await self.loads()).values() if host.load is not None and host.load.room > 0]
        if not hosts:
            return None
        best = max(hosts, key=lambda host: (host.load.room, -sorted(self.hosts).index(host.name)))  # type: ignore[union-attr]
        best.load.sessions += 1  # type: ignore[union-attr]
        return best

    async def find(self, session_id: str) -> Host | None:
        """The host that holds the session (asked of every host: the hosts are the truth, no directory)."""
        await asyncio.to_thread(self.ensure_all)  # hosts other front-ends made since
        hosts = list(self.hosts.values())
        answers = await asyncio.gather(*(self._ask(host, "has", session_id) for host in hosts), return_exceptions=True)
        for host, answer in zip(hosts, answers):
            if answer is True:
                return host
        return None

    def lost(self, name: str, handle: Any) -> None:
        """A host died: forget its handle; create one of the same name (a fresh process) to restore capacity."""
        host = self.hosts.get(name)
        if host is None or host.handle is not handle:
            return
        log.warning("session host %s died", name)
        del self.hosts[name]
        if self.config.replace_dead_hosts and name not in self._replacing:
            self._replacing.add(name)
            task = asyncio.ensure_future(self._replace(name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _replace(self, name: str) -> None:
        try:
            for _ in range(10):
                await asyncio.sleep(1.0)  # Ray frees the dead actor's name shortly after its death
                try:
                    handle = await asyncio.to_thread(self._ensure, name)
                except Exception as error:  # noqa: BLE001  # anything Ray says: try again, then give up with the log
                    log.warning("cannot create host %s again: %s", name, error)
                    continue
                self.hosts[name] = Host(name, handle)
                self._loads_at = -1e9
                log.info("session host %s created again", name)
                return
        finally:
            self._replacing.discard(name)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.ray.shutdown()  # the hosts are detached: they and their sessions stay


class _Unmeasured:
    """Metrics the front-end cannot see (they are on the host): reported as 0."""

    class stats:  # noqa: N801
        asr_lag = None
        oldest_unfed = None


@dataclass
class _Pending:
    frames: list[np.ndarray] = field(default_factory=list)
    samples: int = 0
    at: float | None = None  # stream seconds of the first frame, where the protocol gave it
    speaker: str | None = None


class RemoteSession:
    """A session on a host, as this front-end's connections see it (the subset of `Session` the
    handlers in app.py use): audio and control go out in order through one sender task, events come
    in through one long-poll task per reading connection."""

    def __init__(self, server: RayLivesumServer, host: Host, session_id: str, *, secret: str | None, live: bool,
                 meta: dict[str, Any] | None = None, owner: int = 1, ended: bool = False) -> None:
        self.server = server
        self.host = host
        self.id = session_id
        self.secret = secret
        self.live = live
        self.meta = dict(meta or {})
        self.generation = owner  # the host's count of claims when this front-end's connection took the session
        self.ended = ended
        self.dead = False
        self.finished = asyncio.Event()
        self.pipeline = _Unmeasured
        self.owner: ServerConnection | None = None
        self.poller: asyncio.Task[None] | None = None
        self.watchers: dict[ServerConnection, asyncio.Task[None]] = {}
        self.audio_in_seconds = 0.0
        self.dropped_seconds = 0.0
        scale = server.settings.scale
        self._push_samples = int(scale.push_seconds * PIPELINE_RATE)
        self._max_buffered = int(scale.buffer_seconds * PIPELINE_RATE)
        self._max_live = int(server.settings.server.session_queue_seconds * PIPELINE_RATE)
        self._pending: dict[str | None, _Pending] = {}
        self._outbox: deque[tuple[Any, ...]] = deque()
        self._outbox_samples = 0
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._sender = asyncio.create_task(self._send(), name=f"push-{session_id}")

    # -- audio and control out ----------------------------------------------------------------------

    def push(self, track: str | None, samples: np.ndarray, at: float | None = None, speaker: str | None = None) -> None:
        if self.ended or self.dead or not len(samples):
            return
        pending = self._pending.setdefault(track, _Pending())
        if at is not None and pending.samples and pending.at is not None and \
                abs(at - (pending.at + pending.samples / PIPELINE_RATE)) > 0.2:
            self._flush(track)  # the vendor's clock jumped: the host places the next batch by its own `at`
            pending = self._pending.setdefault(track, _Pending())
        if not pending.samples:
            pending.at = at
        pending.frames.append(samples.astype(np.float32, copy=False))
        pending.samples += len(samples)
        if speaker is not None:
            pending.speaker = speaker
        self.audio_in_seconds += len(samples) / PIPELINE_RATE
        if pending.samples >= self._push_samples:
            self._flush(track)

    def _flush(self, track: str | None) -> None:
        pending = self._pending.pop(track, None)
        if pending is None or not pending.samples:
            return
        pcm = (np.concatenate(pending.frames) if len(pending.frames) > 1 else pending.frames[0]).astype("<f4").tobytes()
        newest = ("push", pcm, track, pending.at, pending.speaker)
        self._outbox.append(newest)
        self._outbox_samples += pending.samples
        if self.live and self._outbox_samples > self._max_live:
            self._drop_oldest(newest)
        if self.needs_room:
            self._room.clear()
        self._wakeup.set()

    def _drop_oldest(self, newest: tuple[Any, ...]) -> None:
        """A live source cannot wait: when its host takes the audio slower than it comes, past
        `server.session_queue_seconds` the oldest waiting here goes (reported), as in process. The call
        in flight (the first) and the newest audio stay."""
        kept: deque[tuple[Any, ...]] = deque()
        dropped = 0
        for index, item in enumerate(self._outbox):
            if index and item[0] == "push" and item is not newest and self._outbox_samples > self._max_live:
                self._outbox_samples -= len(item[1]) // 4
                dropped += len(item[1]) // 4
            else:
                kept.append(item)
        self._outbox = kept
        if dropped:
            self.dropped_seconds += dropped / PIPELINE_RATE
            self._outbox.append(("report", f"{dropped / PIPELINE_RATE:.1f} s of audio dropped: the session's host took it too slowly"))

    def _flush_all(self) -> None:
        for track in list(self._pending):
            self._flush(track)

    def _call(self, *item: Any) -> None:
        if self.dead:
            return
        self._outbox.append(item)
        self._wakeup.set()

    def ask(self, question: str) -> None:
        self._call("ask", question)

    def summarize(self) -> None:
        self._call("summarize")

    def report(self, message: str) -> None:
        self._call("report", message)

    def end_audio(self) -> None:
        if self.ended:
            return
        self._flush_all()
        self.ended = True
        self._call("stop")

    @property
    def queued_seconds(self) -> float:
        return (self._outbox_samples + sum(p.samples for p in self._pending.values())) / PIPELINE_RATE

    @property
    def needs_room(self) -> bool:
        """A source that can wait sends faster than its host takes the audio: stop reading its socket."""
        return not self.live and not self.ended and not self.dead and self._outbox_samples >= self._max_buffered

    async def room(self) -> None:
        while self.needs_room:
            self._room.clear()
            await self._room.wait()

    async def _send(self) -> None:
        handle, session_id = self.host.handle, self.id
        try:
            while True:
                while not self._outbox:
                    self._wakeup.clear()
                    if self._idle_and_alone():  # nobody here streams to or reads the session: this front-end lets go
                        self.server.forget(self)
                        return
                    if not self._pending:
                        await self._wakeup.wait()
                        continue
                    try:  # a stream that paused: what it sent goes out after push_seconds, not with its next audio
                        await asyncio.wait_for(self._wakeup.wait(), self._push_samples / PIPELINE_RATE)
                    except TimeoutError:
                        self._flush_all()
                item = self._outbox[0]
                kind = item[0]
                try:
                    if kind == "push":
                        dropped = await handle.push.remote(session_id, item[1], item[2], item[3], item[4])
                        self.dropped_seconds += dropped
                    elif kind == "ask":
                        await handle.ask.remote(session_id, item[1])
                    elif kind == "summarize":
                        if not await handle.summarize.remote(session_id):
                            await handle.report.remote(session_id, "a summary is already being made")
                    elif kind == "report":
                        await handle.report.remote(session_id, item[1])
                    elif kind == "stop":
                        await handle.stop.remote(session_id)
                except Exception as error:
                    if is_death(error):
                        self.died()
                        return
                    refusal = host_error(error)
                    if refusal is None:
                        log.exception("session %s: %s to its host failed", session_id, kind)
                    elif kind != "push" or refusal.reason != "unknown":  # audio after the end is not news
                        log.info("session %s: %s refused: %s", session_id, kind, refusal)
                finally:
                    if self._outbox and self._outbox[0] is item:
                        self._outbox.popleft()
                        if kind == "push":
                            self._outbox_samples -= len(item[1]) // 4
                    if not self.needs_room:
                        self._room.set()
        except asyncio.CancelledError:
            pass

    def _idle_and_alone(self) -> bool:
        return self.owner is None and not self.watchers and not self._outbox and not self._pending

    # -- events in --------------------------------------------------------------------------------------

    def attach(self, connection: ServerConnection, last_seq: int | None = 0, preamble: list[str] | tuple[str, ...] = (),
               owner: int | None = None) -> None:
        """`connection` takes the session and (unless None: an adapter's vendor) reads every event after `last_seq`."""
        previous, self.owner = self.owner, connection
        if owner is not None:
            self.generation = owner
        if self.poller is not None:
            self.poller.cancel()
            self.poller = None
        if previous is not None and previous is not connection:
            asyncio.create_task(previous.close(CLOSE_TAKEN_OVER, "another connection resumed this session"))
        self.poller = asyncio.create_task(self._poll(connection, last_seq, list(preamble), touch=True))

    def watch(self, connection: ServerConnection, last_seq: int) -> None:
        self.watchers[connection] = asyncio.create_task(self._poll(connection, last_seq, [], touch=False))

    def detach(self, connection: ServerConnection) -> None:
        watcher = self.watchers.pop(connection, None)
        if watcher is not None:
            watcher.cancel()
        elif connection is self.owner:
            self.owner = None
            if self.poller is not None:
                self.poller.cancel()
                self.poller = None
            self._flush_all()  # what the client sent reaches the host; the host's grace period waits for a resume
        self._wakeup.set()  # the sender forgets the session once its outbox is empty and nobody reads

    def envelope(self, seq: int, text: str) -> str:
        return '{"session":' + json.dumps(self.id) + ',"seq":' + str(seq) + ',"event":' + text + '}'

    async def _poll(self, connection: ServerConnection, after_seq: int | None, preamble: list[str], touch: bool) -> None:
        """Forwards the events after `after_seq` to `connection` until the session finishes. With
        `after_seq` None (an adapter's vendor reads no events) it forwards nothing and still polls: that
        keeps the session from expiring while its call is silent, and tells of a take-over or a death."""
        handle, poll = self.host.handle, self.server.settings.scale.poll_seconds
        forward = after_seq is not None
        after_seq = after_seq if after_seq is not None else NOTHING_AFTER
        try:
            for text in preamble:
                await connection.send(text)
            while True:
                try:
                    batch: EventBatch = await handle.events.remote(self.id, after_seq, poll, touch)
                except Exception as error:
                    if is_death(error):
                        self.died()
                        return
                    refusal = host_error(error)
                    if refusal is None:
                        raise
                    await self.server._refuse(connection, self.id, str(refusal), CLOSE_UNKNOWN_SESSION)
                    return
                if touch and batch.owner != self.generation:
                    await connection.close(CLOSE_TAKEN_OVER, "another connection resumed this session")
                    return
                if batch.missed:
                    for text in await asyncio.to_thread(self._from_file, after_seq + 1, batch.missed):
                        await connection.send(text)
                for seq, text in batch.events:
                    await connection.send(self.envelope(seq, text))
                    after_seq = seq
                if batch.finished:
                    self.finished.set()
                    if forward:
                        await connection.close(1000, "session finished")
                    return
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            pass

    def _from_file(self, first: int, count: int) -> list[str]:
        """Events older than the host keeps, from DATA_DIR/<id>/events.jsonl (line n is seq n) on the
        storage the hosts and front-ends share."""
        path = Path(self.server.settings.server.data_dir) / self.id / "events.jsonl"
        texts: list[str] = []
        try:
            with path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, 1):
                    if number >= first + count:
                        break
                    if number >= first and line.endswith("\n"):
                        texts.append(self.envelope(number, line.rstrip("\n")))
        except OSError as error:
            log.warning("session %s: cannot read %s: %s", self.id, path, error)
        return texts

    # -- the host died ----------------------------------------------------------------------------------

    def died(self) -> None:
        """Every connection of the session gets an error event and 4503; the host is replaced."""
        if self.dead:
            return
        self.dead = self.ended = True
        self.finished.set()
        self._outbox.clear()
        self._outbox_samples = 0
        self._pending.clear()
        self._room.set()
        message = (f"{DEATH_MESSAGE} ({self.host.name}): this session cannot go on; its files so far are in "
                   f"the server's data dir under {self.id}/")
        connections = [*([self.owner] if self.owner is not None else []), *self.watchers]
        for connection in connections:
            asyncio.create_task(self.server._refuse(connection, self.id, message, CLOSE_WORKER_DIED))
        current = asyncio.current_task()
        for task in [self.poller, *self.watchers.values(), self._sender]:
            if task is not None and task is not current:
                task.cancel()
        self.server.pool.lost(self.host.name, self.host.handle)
        self.server.forget(self)

    async def close(self, code: int, reason: str) -> None:
        """The front-end stops: what the connection sent goes to the host first; the session goes on there."""
        self._flush_all()
        deadline = time.monotonic() + 10
        while self._outbox and not self.dead and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in [*([self.owner] if self.owner is not None else []), *self.watchers]:
            with contextlib.suppress(ConnectionClosed):
                await connection.close(code, reason)


class RayLivesumServer(LivesumServer):
    """`LivesumServer` whose sessions run on session hosts; its connection handlers are the same."""

    STOPPING = "no new sessions; the running ones go on on their hosts (their clients resume through another front-end)"

    def __init__(self, settings: Settings, pool: HostPool) -> None:
        super().__init__(settings, SharedModels(whisper=None))  # type: ignore[arg-type]  # no models in a front-end
        self.pool = pool
        self.sessions: dict[str, RemoteSession] = {}  # type: ignore[assignment]  # the sessions attached here

    async def recover_interrupted(self) -> None:
        """Nothing: the session folders belong to the hosts, and some are being written right now."""

    def forget(self, session: RemoteSession) -> None:
        """`session` leaves this front-end (its host died, or nobody here streams to or reads it)."""
        if self.sessions.get(session.id) is session and (session.dead or session._idle_and_alone()):
            del self.sessions[session.id]
            self.http.metrics.retire(session)  # type: ignore[arg-type]
            if not session.dead and session._sender is not asyncio.current_task():
                session._sender.cancel()

    # -- opening and finding sessions -------------------------------------------------------------------

    async def _open_remote(self, session_id: str, speakers: dict[str, str] | None, *, overrides: dict[str, Any], live: bool,
                           secret: str | None, meta: dict[str, Any]) -> RemoteSession:
        if self.closing:
            raise _closing("the server is shutting down; try again later", CLOSE_FULL)
        if session_id in self.sessions or await self.pool.find(session_id) is not None:  # on any host, through any front-end
            raise _closing(f"session {session_id} exists; reconnect with a resume message", CLOSE_SESSION_TAKEN)
        for _ in range(3):  # a host that filled up or died since its cached load: the next one
            host = await self.pool.place()
            if host is None:
                break
            try:
                await host.handle.open.remote(session_id, speakers, overrides=overrides, live=live, secret=secret, meta=meta)
            except Exception as error:
                if is_death(error):
                    self.pool.lost(host.name, host.handle)
                    continue
                refusal = host_error(error)
                if refusal is None:
                    raise
                if refusal.reason == "full":
                    if host.load is not None:
                        host.load.sessions = host.load.capacity
                    continue
                code = {"exists": CLOSE_SESSION_TAKEN, "finished": CLOSE_SESSION_TAKEN}.get(refusal.reason, CLOSE_PROTOCOL)
                raise _closing(str(refusal), code) from None
            session = RemoteSession(self, host, session_id, secret=secret, live=live, meta=meta)
            self.sessions[session_id] = session
            return session
        raise _closing("server full (every session host is full or unavailable); try again later", CLOSE_FULL)

    async def _claim(self, session_id: str, secret: str | None, unknown_code: int = CLOSE_UNKNOWN_SESSION) -> RemoteSession:
        """The running session of that id on whichever host holds it, taken over by this front-end."""
        host = await self.pool.find(session_id)
        if host is None:
            raise _closing(f"no session {session_id} to resume (finished, expired or never started)", unknown_code)
        try:
            claim = await host.handle.claim.remote(session_id, secret)
        except Exception as error:
            if is_death(error):
                self.pool.lost(host.name, host.handle)
                raise _closing(f"{DEATH_MESSAGE} ({host.name})", CLOSE_WORKER_DIED) from None
            refusal = host_error(error)
            if refusal is None:
                raise
            raise _closing(str(refusal), CLOSE_UNAUTHORIZED if refusal.reason == "secret" else unknown_code) from None
        session = self.sessions.get(session_id)
        if session is None or session.host.handle is not host.handle or session.dead:
            session = RemoteSession(self, host, session_id, secret=secret, live=bool(claim.meta.get("live", True)),
                                    meta=claim.meta, owner=claim.owner, ended=claim.ended)
            self.sessions[session_id] = session
        session.generation = claim.owner
        return session

    async def _start_native(self, connection: ServerConnection, session_id: str, start: Start) -> tuple[Any, FrameDecoder, str | None]:
        self.session_settings(start)  # the allow-list and minimums, checked here; the host applies them
        speakers = {start.speaker: start.speaker} if start.speaker else None
        secret = secrets.token_urlsafe(24)
        meta = {"format": start.model_dump(include={"sample_rate", "encoding", "channels"}), "track": start.speaker, "live": start.live}
        session = await self._open_remote(session_id, speakers, overrides=self.session_overrides(start), live=start.live,
                                          secret=secret, meta=meta)
        welcome = Envelope(session=session_id, seq=None, resume_secret=secret,
                           event=Status(state="started", detail="session opened; a resume must present resume_secret"))
        session.attach(connection, last_seq=0, preamble=[welcome.model_dump_json()])
        return session, FrameDecoder(start), start.speaker

    async def _resume_native(self, connection: ServerConnection, session_id: str, resume: Resume) -> tuple[Any, FrameDecoder, str | None]:
        session = await self._claim(session_id, resume.secret)
        if "format" not in session.meta:
            raise _closing(f"session {session_id} is not a native stream; it cannot be resumed here", CLOSE_UNKNOWN_SESSION)
        session.attach(connection, last_seq=resume.last_seq, owner=session.generation)
        return session, FrameDecoder(Start(**session.meta["format"])), session.meta.get("track")

    async def _watch(self, connection: ServerConnection, session_id: str, watch: Watch) -> None:
        host = await self.pool.find(session_id)
        if host is None:
            return await self._refuse(connection, session_id, f"no running session {session_id} (a finished one: GET its files)",
                                      CLOSE_UNKNOWN_SESSION)
        session = self.sessions.get(session_id)
        if session is None or session.host.handle is not host.handle:
            session = RemoteSession(self, host, session_id, secret=None, live=True)
            self.sessions[session_id] = session
        session.watch(connection, watch.last_seq)
        try:
            await connection.recv()  # the poller closes the connection when the session is done
            await self._refuse(connection, session_id, "a watcher is read-only", CLOSE_PROTOCOL)
        finally:
            session.detach(connection)

    async def _open_adapter_session(self, connection: ServerConnection, adapter: Adapter, action: Open, authorized: bool) -> Any:
        expected = self.settings.server.token
        if expected and not authorized and not token_matches(expected, action.token):
            await connection.close(CLOSE_UNAUTHORIZED, "missing or wrong token")
            return None
        session_id = safe_session_id(adapter.query.get("session") or action.session_id)
        try:
            try:
                session = await self._claim(session_id, None, unknown_code=0)  # the same call reconnected: audio continues
                session.attach(connection, last_seq=None, owner=session.generation)
                return session
            except ProtocolError as error:
                if getattr(error, "close_code", None) != 0:
                    raise
            session = await self._open_remote(session_id, action.speakers or None, overrides={}, live=True, secret=None, meta={"live": True})
        except ProtocolError as error:
            await connection.close(getattr(error, "close_code", CLOSE_PROTOCOL), str(error)[:120])
            return None
        session.attach(connection, last_seq=None)
        return session

    # -- stopping -----------------------------------------------------------------------------------------

    async def finish_all(self, hurry: asyncio.Event | None = None) -> None:
        """A front-end that stops ends no session: each connection's audio goes to its host, then the
        connection closes 1012; the client resumes through another front-end (or the host ends the
        session with its notes after `resume_grace_seconds`)."""
        sessions = list(self.sessions.values())
        if sessions:
            await asyncio.gather(*(session.close(CLOSE_RESTART, "front-end stopping; resume through another front-end")
                                   for session in sessions), return_exceptions=True)

    async def close_backend(self) -> None:
        for session in list(self.sessions.values()):
            session._sender.cancel()
        self.pool.close()


async def start_ray_server(settings: Settings, address: str) -> RayLivesumServer:
    """Connect to the cluster, create or find the hosts, wait for a first one to be ready."""
    from livesum.batch.cluster import connect

    ray = connect(address)  # blocking, before anything listens (ray.init belongs in the main thread)
    pool = HostPool(ray, settings)
    print(f"livesum serve: on Ray ({address}): finding or creating {settings.scale.hosts} session host(s) in namespace "
          f"{settings.scale.namespace!r}", file=sys.stderr, flush=True)
    ready = await pool.start()
    loads = [host.load for host in pool.hosts.values() if host.load is not None]
    print(f"livesum serve: {ready} of {len(pool.hosts)} session host(s) ready, room for {sum(load.room for load in loads)} "
          f"more session(s)", file=sys.stderr, flush=True)
    return RayLivesumServer(settings, pool)
