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
import logging
import os
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livesum.batch.worker import ray_node_id
from livesum.config import Settings
from livesum.events import Error, Event
from livesum.llm.service import LmService, Priority
from livesum.outputs.files import file_sinks
from livesum.pipeline import Pipeline
from livesum.runner import FileModels, load_file_models, new_engine, transcriber_factory
from livesum.server.protocol import SESSION_ID
from livesum.source.audio import AudioChunk

log = logging.getLogger(__name__)

PIPELINE_RATE = 16000
REPLAY_EVENTS = 2000  # events kept for a resume; an older `after_seq` is told what it missed
GRACE_CHECK_SECONDS = 1.0


class SessionHostError(RuntimeError):
    """A call the host refuses (unknown or finished session, bad id, host full); one line for the client."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # "full", "unknown", "exists", "invalid": the front-end maps it to a close code

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # crosses Ray (pickled) with its reason
        return SessionHostError, (str(self), self.reason)


@dataclass
class EventBatch:
    """What `events()` returns: numbered events after the asked seq, and whether more can come."""

    events: list[tuple[int, str]]  # (seq, event JSON)
    finished: bool  # the session ended and every event is in `events` or before
    missed: int = 0  # events after the asked seq that are no longer kept (in DATA_DIR/<id>/events.jsonl)


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
    """One session: audio queued per push (the oldest dropped past `server.session_queue_seconds`),
    a live pipeline reading it, and the numbered events."""

    def __init__(self, session_id: str, settings: Settings, pipeline_factory: Callable[[HostedSession], Pipeline]) -> None:
        self.id = session_id
        self.settings = settings
        self.seq = 0
        self.replay: deque[tuple[int, str]] = deque(maxlen=REPLAY_EVENTS)
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # resolved at each new event
        self.ended = False  # no more audio
        self.finished = False  # the pipeline is done: notes written, every event numbered
        self.last_contact = time.monotonic()
        self._queue: deque[AudioChunk] = deque()
        self._queued_samples = 0
        self._max_queued = int(settings.server.session_queue_seconds * PIPELINE_RATE)
        self._clocks: dict[str | None, int] = {}
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[object]] = set()
        self.pipeline = pipeline_factory(self)
        self.task = asyncio.create_task(self._run(), name=f"hosted-{session_id}")

    def push(self, samples: np.ndarray, track: str | None = None) -> float:
        """Audio of one track; returns the seconds dropped to make room (0 when the pipeline keeps up)."""
        if self.ended:
            return 0.0
        start = self._clocks.get(track, 0)
        self._clocks[track] = start + len(samples)
        self._queue.append(AudioChunk(samples, start / PIPELINE_RATE, PIPELINE_RATE, captured_at=time.time(), track=track))
        self._queued_samples += len(samples)
        dropped = 0.0
        while self._queued_samples > self._max_queued and len(self._queue) > 1:  # live: drop the oldest
            chunk = self._queue.popleft()
            self._queued_samples -= len(chunk.samples)
            dropped += chunk.duration
        if dropped:
            self.pipeline.report_dropped(dropped, "the session queue was full")
        self._wakeup.set()
        return dropped

    def end_audio(self) -> None:
        self.ended = True
        self._wakeup.set()

    def spawn(self, work: object) -> None:
        task = asyncio.ensure_future(work)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _chunks(self) -> AsyncIterator[AudioChunk]:
        while True:
            while not self._queue:
                if self.ended:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            chunk = self._queue.popleft()
            self._queued_samples -= len(chunk.samples)
            yield chunk

    def publish(self, event: Event) -> None:
        """The pipeline's sink: number the event, keep it, wake the pollers."""
        self.seq += 1
        self.replay.append((self.seq, event.model_dump_json()))
        self._notify()

    def _notify(self) -> None:
        """Wake every poller; later ones wait on a fresh future."""
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)

    async def events(self, after_seq: int, timeout: float) -> EventBatch:
        self.last_contact = time.monotonic()
        deadline = time.monotonic() + timeout
        while self.seq <= after_seq and not self.finished and (left := deadline - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(asyncio.shield(self._changed), left)
            except TimeoutError:
                break
        oldest = self.replay[0][0] if self.replay else self.seq + 1
        kept = [(seq, text) for seq, text in self.replay if seq > after_seq]
        missed = max(0, min(oldest, self.seq + 1) - after_seq - 1)
        self.last_contact = time.monotonic()
        return EventBatch(kept, self.finished and (not kept or kept[-1][0] == self.seq), missed)

    async def _run(self) -> None:
        try:
            await self.pipeline.run(self._chunks())
        except Exception as error:  # the pipeline finishes itself; this guards the host's other sessions
            log.exception("hosted session %s crashed", self.id)
            self.pipeline.emit(Error(message=f"session crashed: {error}", fatal=True, source="server"))
        finally:
            self.ended = self.finished = True
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
                 models: FileModels | None = None) -> None:
        self.settings = settings
        self.data_dir = Path(data_dir) if data_dir else settings.server.data_dir
        self.capacity = capacity or settings.server.max_sessions
        self.models = models or load_file_models(settings)
        self.service = LmService()
        self.sessions: dict[str, HostedSession] = {}
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

    async def open(self, session_id: str, speakers: dict[str, str] | None = None) -> None:
        if not SESSION_ID.match(session_id):
            raise SessionHostError("session id must be 1-64 of A-Z a-z 0-9 _ . -", "invalid")
        if session_id in self.sessions:
            raise SessionHostError(f"session {session_id} exists; resume it instead", "exists")
        if (await self.load()).room <= 0:
            raise SessionHostError(f"this host is full ({self.capacity} sessions); try again later", "full")
        engine = None
        if self.models.language is not None:
            engine = await self.service.run(Priority.QUESTION, new_engine, self.settings, *self.models.language)
        out_dir = self.data_dir / session_id
        sinks = await asyncio.to_thread(file_sinks, out_dir, self.settings.output.formats)
        transcribers = transcriber_factory(self.models.whisper, self.settings, live=True)

        def pipeline(session: HostedSession) -> Pipeline:
            return Pipeline(self.settings, transcribers, engine, [*sinks, _Publisher(session)], live=True,
                            service=self.service, speakers=speakers)

        self.sessions[session_id] = HostedSession(session_id, self.settings, pipeline)
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._end_abandoned())

    async def push(self, session_id: str, pcm: bytes, track: str | None = None) -> float:
        """16 kHz mono float32 little-endian samples (the front-end decoded and resampled them)."""
        session = self._live(session_id)
        session.last_contact = time.monotonic()
        return session.push(np.frombuffer(pcm, dtype="<f4").copy(), track)

    async def ask(self, session_id: str, question: str) -> None:
        """The answer comes as events (answer_part, answer)."""
        session = self._live(session_id)
        session.spawn(session.pipeline.ask(question))

    async def summarize(self, session_id: str) -> bool:
        return self._live(session_id).pipeline.request_summary()

    async def stop(self, session_id: str) -> None:
        """End of the audio: the session transcribes what is queued, writes its notes and finishes."""
        self._get(session_id).end_audio()

    async def events(self, session_id: str, after_seq: int = 0, timeout: float = 10.0) -> EventBatch:
        """Events after `after_seq`, waiting up to `timeout` seconds for one (a long-poll)."""
        return await self._get(session_id).events(after_seq, timeout)

    async def close(self) -> None:
        """Every session ends with its notes; the host can go."""
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
                if now - session.last_contact <= grace:
                    continue
                if session.finished:
                    del self.sessions[session.id]
                elif not session.ended:
                    log.info("session %s: no front-end for %.0f s; finishing", session.id, grace)
                    session.end_audio()
