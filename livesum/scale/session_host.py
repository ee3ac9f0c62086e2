"""A session host: live sessions on models loaded once, behind a small interface that a websocket
front-end calls (as a Ray actor, or in-process).

The front-end keeps everything about connections (protocols, adapters, auth, close codes); the host
keeps everything about a session's work: its pipeline (streaming ASR, the LM through the host's one
`LmService`), its files under DATA_DIR/<session>/ (appended as they go), and its events, numbered and
kept for replay. A front-end pushes 16 kHz float32 audio, long-polls `events(after_seq)`, and may
be a different front-end at each reconnect: the session lives here, not in a connection. A session
nobody pushes to or polls for `server.resume_grace_seconds` ends as if stopped (notes written).
docs/scale.md has the design of `serve --ray` around it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livesum.batch.worker import ray_node_id
from livesum.compute import SHARE
from livesum.config import ConfigError, Settings, deep_merge, validate_settings
from livesum.events import Error, Event
from livesum.llm.service import LmService, Priority
from livesum.loading import (
    SharedModels,
    load_shared_models,
    new_engine,
    transcriber_factory,
)
from livesum.outputs.files import file_sinks
from livesum.pipeline import Pipeline
from livesum.server.audio_queue import SessionAudio, TrackRefused
from livesum.server.protocol import SESSION_ID

log = logging.getLogger(__name__)

REPLAY_EVENTS = 2000  # events kept for a resume; an older `after_seq` is told what it missed
GRACE_CHECK_SECONDS = 1.0
EVENTS_FILE = "events.jsonl"


class SessionHostError(RuntimeError):
    """A call the host refuses (unknown or finished session, bad id, host full); one line for the client."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # "full", "unknown", "exists", "finished", "invalid", "secret": the front-end maps it to a close code

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # crosses Ray (pickled) with its reason
        return SessionHostError, (str(self), self.reason)


@dataclass
class EventBatch:
    """What `events()` returns: numbered events after the asked seq, and whether more can come."""

    events: list[tuple[int, str]]  # (seq, event JSON)
    finished: bool  # the session ended and every event is in `events` or before
    missed: int = 0  # events after the asked seq that are no longer kept (in DATA_DIR/<id>/events.jsonl)
    owner: int = 0  # which attachment owns the session now (`claim` counts up): an older owner was taken over


@dataclass
class Claim:
    """What `claim()` gives the front-end that takes a session over (a resume, a reconnected call)."""

    owner: int  # this attachment's number: `events()` says when a later one took over
    meta: dict[str, Any] = field(default_factory=dict)  # what the opening front-end stored (the stream's format)
    ended: bool = False  # the client said stop: no more audio


@dataclass
class HostLoad:
    host: str
    pid: int
    node: str | None  # the Ray node id; None in-process
    sessions: int
    capacity: int

    @property
    def room(self) -> int:
        return self.capacity - self.sessions


class HostedSession:
    """One session: its audio queue (server/audio_queue.py, as in process), a live pipeline reading
    it, and the numbered events."""

    def __init__(self, session_id: str, settings: Settings, pipeline_factory: Callable[[HostedSession], Pipeline], *,
                 live: bool = True, secret: str | None = None, meta: dict[str, Any] | None = None) -> None:
        self.id = session_id
        self.settings = settings
        self.secret = secret  # what a resume must present (None: no check here, e.g. a vendor's call id)
        self.meta = dict(meta or {})
        self.owner = 1
        self.bad_input = 0
        self.seq = 0
        self.replay: deque[tuple[int, str]] = deque(maxlen=REPLAY_EVENTS)
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # resolved at each new event
        self.finished = False  # the pipeline is done: notes written, every event numbered
        self.last_contact = time.monotonic()
        self.waiting = 0  # front-ends' calls waiting here now (long-polls, pushes held for room): contact while they wait
        self._tasks: set[asyncio.Task[object]] = set()
        self.pipeline = pipeline_factory(self)
        self.audio = SessionAudio(settings, live=live, report_dropped=self.pipeline.report_dropped)
        self.task = asyncio.create_task(self._run(), name=f"hosted-{session_id}")

    def push(self, samples: np.ndarray, track: str | None = None, at: float | None = None, speaker: str | None = None) -> float:
        """Audio of one track; returns the seconds a live session dropped to make room (0 when the
        pipeline keeps up). `at` (stream seconds, where the protocol gives it) places the audio;
        `speaker` names the track."""
        if self.audio.ended or not len(samples):
            return 0.0
        try:
            dropped = self.audio.push(track, samples, at)
        except TrackRefused as refused:
            self.report(str(refused))
            return 0.0
        if speaker is not None and track is not None:
            self.pipeline.speakers[track] = speaker
        return dropped

    @property
    def ended(self) -> bool:
        """No more audio will come."""
        return self.audio.ended

    async def room(self) -> None:
        """Returns once a source that can wait may push again (its queue has room, or the session ended)."""
        await self.audio.room()

    def report(self, message: str) -> None:
        """A non-fatal error into the session's events, a flood thinned (the first 20, then every 100th)."""
        self.bad_input += 1
        if self.bad_input > 20 and self.bad_input % 100:
            return
        if self.bad_input > 20:
            message += f" ({self.bad_input} refused inputs so far)"
        self.pipeline.emit(Error(message=message, source="server"))

    def end_audio(self) -> None:
        self.audio.end()

    def spawn(self, work: object) -> None:
        task = asyncio.ensure_future(work)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def publish(self, event: Event) -> None:
        """The pipeline's sink: number the event, keep it, wake the pollers."""
        self.seq += 1
        self.replay.append((self.seq, event.model_dump_json()))
        self._notify()

    def _notify(self) -> None:
        """Wake every poller; later ones wait on a fresh future."""
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)

    async def events(self, after_seq: int, timeout: float, touch: bool = True) -> EventBatch:
        if touch:
            self.last_contact = time.monotonic()
            self.waiting += 1
        try:
            deadline = time.monotonic() + timeout
            owner = self.owner  # a claim meanwhile ends the wait: the poller learns it was taken over
            while self.seq <= after_seq and not self.finished and self.owner == owner and (left := deadline - time.monotonic()) > 0:
                try:
                    await asyncio.wait_for(asyncio.shield(self._changed), left)
                except TimeoutError:
                    break
        finally:
            if touch:
                self.waiting -= 1
        oldest = self.replay[0][0] if self.replay else self.seq + 1
        kept = [(seq, text) for seq, text in self.replay if seq > after_seq]
        missed = max(0, min(oldest, self.seq + 1) - after_seq - 1)
        if touch:
            self.last_contact = time.monotonic()
        return EventBatch(kept, self.finished and (not kept or kept[-1][0] == self.seq), missed, self.owner)

    async def _run(self) -> None:
        try:
            await self.pipeline.run(self.audio.chunks())
        except Exception as error:  # the pipeline finishes itself; this guards the host's other sessions
            log.exception("hosted session %s crashed", self.id)
            self.pipeline.emit(Error(message=f"session crashed: {error}", fatal=True, source="server"))
        finally:
            self.audio.close()
            self.finished = True
            self._notify()


class _Publisher:
    def __init__(self, session: HostedSession) -> None:
        self.session = session

    def handle(self, event: Event) -> None:
        self.session.publish(event)

    def close(self) -> None:
        pass


class SessionHost:
    """Sessions on one set of models. Every method is a coroutine: as a Ray actor it is an async
    actor, so a long-poll of one session never holds up another session's audio."""

    def __init__(self, settings: Settings, data_dir: str | None = None, capacity: int | None = None,
                 models: SharedModels | None = None, cpus: int | None = None) -> None:
        """`cpus`: what a Ray actor reserved; Whisper and the LM share them as one process shares the
        machine's (livesum.compute), not two pools of all of them that stall each other at every barrier."""
        if cpus:
            SHARE.reserve(cpus)
        self.settings = settings
        self.data_dir = Path(data_dir) if data_dir else settings.server.data_dir
        self.capacity = capacity or settings.server.max_sessions
        self.models = models or load_shared_models(settings)
        self.service = LmService()
        self.sessions: dict[str, HostedSession] = {}
        self._opening: set[str] = set()
        self._reaper: asyncio.Task[None] | None = None

    # -- placement -------------------------------------------------------------------------------

    async def load(self) -> HostLoad:
        """How full this host is: what a front-end compares to place a new session."""
        live = sum(not session.finished for session in self.sessions.values())
        return HostLoad(socket.gethostname(), os.getpid(), ray_node_id(), live, self.capacity)

    async def has(self, session_id: str) -> bool:
        """Whether this host holds the session (a front-end resuming a session asks the hosts)."""
        return session_id in self.sessions

    # -- a session's life ------------------------------------------------------------------------

    async def open(self, session_id: str, speakers: dict[str, str] | None = None, *, overrides: dict[str, Any] | None = None,
                   live: bool = True, secret: str | None = None, meta: dict[str, Any] | None = None) -> None:
        """A new session. `overrides`: a nested tree of the host's settings to change for this session
        (the front-end checked them against its allow-list); `live`: see HostedSession; `secret`: what a
        `claim` must present; `meta`: kept for the front-end that claims the session later."""
        if not SESSION_ID.match(session_id):
            raise SessionHostError("session id must be 1-64 of A-Z a-z 0-9 _ . -", "invalid")
        if session_id in self.sessions or session_id in self._opening:
            raise SessionHostError(f"session {session_id} exists; reconnect with a resume message", "exists")
        out_dir = self.data_dir / session_id
        if (out_dir / EVENTS_FILE).exists():
            raise SessionHostError(f"session id {session_id} belongs to a finished session; start with a new id", "finished")
        if (await self.load()).room - len(self._opening) <= 0:
            raise SessionHostError(f"this host is full ({self.capacity} sessions); try again later", "full")
        settings = self.settings
        if overrides:
            try:
                settings = validate_settings(deep_merge(self.settings.model_dump(), overrides), "start.overrides")
            except ConfigError as error:
                raise SessionHostError(str(error), "invalid") from None
        self._opening.add(session_id)  # engine creation awaits the LM thread: a second open of the id must not pass
        try:
            engine = None
            if self.models.language is not None:
                engine = await self.service.run(Priority.QUESTION, new_engine, settings, *self.models.language)
            sinks = await asyncio.to_thread(file_sinks, out_dir, settings.output.formats)
            transcribers = transcriber_factory(self.models.whisper, settings, live=True)

            def pipeline(session: HostedSession) -> Pipeline:
                return Pipeline(settings, transcribers, engine, [*sinks, _Publisher(session)], live=True,
                                service=self.service, speakers=speakers)

            self.sessions[session_id] = HostedSession(session_id, settings, pipeline, live=live, secret=secret, meta=meta)
        finally:
            self._opening.discard(session_id)
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._end_abandoned())

    async def claim(self, session_id: str, secret: str | None = None) -> Claim:
        """A front-end takes over a running session (a client's resume, a vendor's reconnected call):
        the session's secret must match where it has one; the previous owner's next `events()` says it
        was taken over. The claim counts as contact (the grace period starts again)."""
        session = self._get(session_id)
        if session.finished:
            raise SessionHostError(f"no session {session_id} to resume (finished, expired or never started)", "unknown")
        if session.secret is not None and not hmac.compare_digest(session.secret.encode(), (secret or "").encode()):
            raise SessionHostError(f"wrong resume secret for session {session_id}", "secret")
        session.owner += 1
        session.last_contact = time.monotonic()
        session._notify()  # the previous owner's long-poll returns now and sees the new owner
        return Claim(session.owner, session.meta, session.ended)

    async def push(self, session_id: str, pcm: bytes, track: str | None = None, at: float | None = None,
                   speaker: str | None = None) -> float:
        """16 kHz mono float32 little-endian samples (the front-end decoded and resampled them). A session
        that is not live returns only once its queue has room again: the front-end, which waits for each
        push, stops reading its socket meanwhile (flow control)."""
        session = self._live(session_id)
        session.last_contact = time.monotonic()
        dropped = session.push(np.frombuffer(pcm, dtype="<f4").copy(), track, at, speaker)
        session.waiting += 1
        try:
            await session.room()
        finally:
            session.waiting -= 1
        session.last_contact = time.monotonic()
        return dropped

    async def report(self, session_id: str, message: str) -> None:
        """A non-fatal error the front-end saw (a bad frame, a bad control message) into the session's events."""
        session = self._get(session_id)
        if not session.finished:
            session.report(message)

    async def ask(self, session_id: str, question: str) -> None:
        """The answer comes as events (answer_part, answer)."""
        session = self._live(session_id)
        session.spawn(session.pipeline.ask(question))

    async def summarize(self, session_id: str) -> bool:
        return self._live(session_id).pipeline.request_summary()

    async def stop(self, session_id: str) -> None:
        """End of the audio: the session transcribes what is queued, writes its notes and finishes."""
        self._get(session_id).end_audio()

    async def events(self, session_id: str, after_seq: int = 0, timeout: float = 10.0, touch: bool = True) -> EventBatch:
        """Events after `after_seq`, waiting up to `timeout` seconds for one (a long-poll). A watcher
        polls with `touch=False`: reading a session does not keep it from ending."""
        return await self._get(session_id).events(after_seq, timeout, touch)

    async def close(self) -> None:
        """Every session ends with its notes; the host can go."""
        if self._reaper is not None:
            self._reaper.cancel()
        for session in self.sessions.values():
            session.end_audio()
        await asyncio.gather(*(session.task for session in self.sessions.values()), return_exceptions=True)
        await asyncio.to_thread(self.service.close, True)

    # -- internals -------------------------------------------------------------------------------

    def _get(self, session_id: str) -> HostedSession:
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionHostError(f"no session {session_id} on this host", "unknown")
        return session

    def _live(self, session_id: str) -> HostedSession:
        session = self._get(session_id)
        if session.ended:
            raise SessionHostError(f"session {session_id} has ended", "unknown")
        return session

    async def _end_abandoned(self) -> None:
        """A session that no front-end pushed to or polled for the grace period ends with its notes;
        a finished one nobody polled for as long is forgotten (its files stay)."""
        grace = self.settings.server.resume_grace_seconds
        while True:
            await asyncio.sleep(GRACE_CHECK_SECONDS)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if session.waiting or now - session.last_contact <= grace:
                    continue
                if session.finished:
                    del self.sessions[session.id]
                elif not session.ended:
                    log.info("session %s: no front-end for %.0f s; finishing", session.id, grace)
                    session.end_audio()
