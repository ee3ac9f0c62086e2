"""One streaming session: its audio queue, its pipeline, its numbered events and their replay.

A session outlives its connection: the connection may drop and a client may reattach within
`resume_grace_seconds` (events after its last `seq` are replayed, audio continues on the same
stream clock). Models are not here: the transcriber factory and the engine share the server's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from livesum.config import Settings
from livesum.events import Error, Event
from livesum.llm.service import LmService
from livesum.outputs.files import EventSink, file_sinks
from livesum.pipeline import LanguageEngine, Pipeline, TranscriberFactory
from livesum.server.audio import PIPELINE_RATE
from livesum.server.protocol import Envelope

log = logging.getLogger(__name__)

REPLAY_EVENTS = 2000  # kept in memory for resume; older ones are read back from events.jsonl
SEND_QUEUE = 1024  # messages a connection may have unsent before it counts as too slow
REPORT_DROPS_EVERY = 1.0  # seconds between "dropped audio" reports (a flood must not flood events)
CLOSE_TOO_SLOW = 4429
CLOSE_TAKEN_OVER = 4409


class Subscriber:
    """A connection's send side: a bounded queue drained by its own task, so a slow client never
    blocks the pipeline or other sessions; when the queue is full the client is dropped."""

    def __init__(self, connection: ServerConnection, limit: int = SEND_QUEUE) -> None:
        self.connection = connection
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(limit)
        self.task = asyncio.create_task(self._send())

    def offer(self, text: str) -> bool:
        try:
            self.queue.put_nowait(text)
            return True
        except asyncio.QueueFull:
            return False

    async def _send(self) -> None:
        try:
            while (text := await self.queue.get()) is not None:
                await self.connection.send(text)
        except ConnectionClosed:
            pass

    async def finish(self, code: int, reason: str) -> None:
        """Send what is queued, then close the connection."""
        try:
            self.queue.put_nowait(None)
            await asyncio.wait_for(self.task, timeout=30)
        except (asyncio.QueueFull, TimeoutError):
            self.task.cancel()
        await self.connection.close(code, reason)

    def drop(self, code: int, reason: str) -> None:
        self.task.cancel()
        asyncio.create_task(self.connection.close(code, reason))


class _Track:
    """Per-track stream clock and the samples waiting to fill a chunk."""

    def __init__(self) -> None:
        self.samples_in = 0  # samples queued on this track's clock so far
        self.pending: list[np.ndarray] = []
        self.pending_len = 0


class Session:
    def __init__(
        self,
        session_id: str,
        settings: Settings,
        out_dir: Path,
        transcribers: TranscriberFactory,
        engine: LanguageEngine | None,
        service: LmService,
        speakers: dict[str, str] | None = None,
        on_finished: Callable[[Session], None] | None = None,
    ) -> None:
        self.id = session_id
        self.settings = settings
        self.out_dir = out_dir
        self.seq = 0
        self.replay: deque[tuple[int, str]] = deque(maxlen=REPLAY_EVENTS)
        self.subscriber: Subscriber | None = None
        self.owner: ServerConnection | None = None  # the connection streaming into this session now
        self.ended = False  # no more audio will come (stop, or grace expired)
        self.finished = asyncio.Event()
        self._on_finished = on_finished
        self._chunk_samples = max(1, int(settings.audio.chunk_seconds * PIPELINE_RATE))
        self._tracks: dict[str | None, _Track] = {}
        self._queue: deque = deque()
        self._queued_samples = 0
        self._max_queued = int(settings.server.session_queue_seconds * PIPELINE_RATE)
        self._wakeup = asyncio.Event()
        self._unreported_drop = 0.0
        self._last_drop_report = 0.0
        self._grace: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._bad_input = 0
        sinks: list[EventSink] = [*file_sinks(out_dir, settings.output.formats), _Numbering(self)]
        self.pipeline = Pipeline(settings, transcribers, engine, sinks, live=True, service=service, speakers=speakers)
        self.task = asyncio.create_task(self._run(), name=f"session-{session_id}")

    # -- audio in ----------------------------------------------------------------------------------

    def push(self, track: str | None, samples: np.ndarray, at: float | None = None, speaker: str | None = None) -> None:
        """Audio of one track at 16 kHz. `at` (stream seconds), where the protocol gives it, fills a gap
        the sender skipped (e.g. a silent participant) with silence so tracks stay on one clock."""
        if self.ended or not len(samples):
            return
        if speaker is not None and track is not None:
            self.pipeline.speakers[track] = speaker
        state = self._tracks.setdefault(track, _Track())
        if at is not None:
            gap = int(at * PIPELINE_RATE) - (state.samples_in + state.pending_len)
            if PIPELINE_RATE // 5 < gap <= self._max_queued:
                self._append(track, state, np.zeros(gap, dtype=np.float32))
        self._append(track, state, samples.astype(np.float32, copy=False))

    def _append(self, track: str | None, state: _Track, samples: np.ndarray) -> None:
        state.pending.append(samples)
        state.pending_len += len(samples)
        if state.pending_len >= self._chunk_samples:
            self._enqueue(track, state)

    def _enqueue(self, track: str | None, state: _Track) -> None:
        from livesum.source.audio import AudioChunk

        samples = np.concatenate(state.pending) if len(state.pending) > 1 else state.pending[0]
        state.pending, state.pending_len = [], 0
        chunk = AudioChunk(samples, state.samples_in / PIPELINE_RATE, PIPELINE_RATE, captured_at=time.time(), track=track)
        state.samples_in += len(samples)
        self._queue.append(chunk)
        self._queued_samples += len(samples)
        while self._queued_samples > self._max_queued and len(self._queue) > 1:  # live policy: drop the oldest
            dropped = self._queue.popleft()
            self._queued_samples -= len(dropped.samples)
            self._unreported_drop += dropped.duration
        if self._unreported_drop and time.monotonic() - self._last_drop_report >= REPORT_DROPS_EVERY:
            self.pipeline.report_dropped(self._unreported_drop, "the session queue was full")
            self._unreported_drop, self._last_drop_report = 0.0, time.monotonic()
        self._wakeup.set()

    def end_audio(self) -> None:
        """No more audio: what is pending becomes the last chunks, then the pipeline writes the notes."""
        if self.ended:
            return
        for track, state in self._tracks.items():
            if state.pending_len:
                self._enqueue(track, state)
        self.ended = True
        self._wakeup.set()

    async def _chunks(self) -> AsyncIterator:
        while True:
            while not self._queue:
                if self.ended:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            chunk = self._queue.popleft()
            self._queued_samples -= len(chunk.samples)
            yield chunk

    @property
    def queued_seconds(self) -> float:
        return self._queued_samples / PIPELINE_RATE

    # -- control -------------------------------------------------------------------------------------

    def ask(self, question: str) -> None:
        self._spawn(self.pipeline.ask(question))

    def summarize(self) -> None:
        if not self.pipeline.request_summary():
            self.report("a summary is already being made", counted=False)

    def report(self, message: str, *, counted: bool = True) -> None:
        """A non-fatal server-side error into the session's events; a flood of bad input is thinned
        out (the first 20, then every 100th) so it cannot fill the disk."""
        if counted:
            self._bad_input += 1
            if self._bad_input > 20 and self._bad_input % 100:
                return
            if self._bad_input > 20:
                message += f" ({self._bad_input} bad inputs so far)"
        self.pipeline.emit(Error(message=message, source="server"))

    def _spawn(self, work) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connections -----------------------------------------------------------------------------

    def attach(self, connection: ServerConnection, last_seq: int | None = None, *, send_events: bool = True) -> None:
        """`connection` takes the session (a previous one is closed: a client that comes back first
        wins over a dead socket the server has not noticed yet); with `last_seq`, every later event
        is replayed first. Adapters pass `send_events=False`: the vendors do not read our events."""
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        previous, self.owner = self.owner, connection
        if previous is not None and previous is not connection:
            if self.subscriber is not None:
                self.subscriber.task.cancel()
                self.subscriber = None
            asyncio.create_task(previous.close(CLOSE_TAKEN_OVER, "another connection resumed this session"))
        if not send_events:
            return
        backlog = self._backlog(last_seq) if last_seq is not None else []
        self.subscriber = Subscriber(connection, SEND_QUEUE + len(backlog))
        for text in backlog:
            self.subscriber.offer(text)

    @property
    def attached(self) -> bool:
        return self.owner is not None

    def _backlog(self, last_seq: int) -> list[str]:
        kept = [text for seq, text in self.replay if seq > last_seq]
        oldest_kept = self.replay[0][0] if self.replay else self.seq + 1
        if last_seq + 1 >= oldest_kept:
            return kept
        return self._from_disk(last_seq + 1, oldest_kept) + kept

    def _from_disk(self, first: int, stop: int) -> list[str]:
        """Events first..stop-1 from events.jsonl: line n is event n (the writer sees every event)."""
        path = self.out_dir / "events.jsonl"
        texts: list[str] = []
        try:
            with path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, start=1):
                    if number >= stop:
                        break
                    if number >= first:
                        envelope = Envelope.model_validate({"session": self.id, "seq": number, "event": json.loads(line)})
                        texts.append(envelope.model_dump_json())
        except OSError as error:
            log.warning("session %s: cannot replay from %s: %s", self.id, path, error)
        return texts

    def detach(self, connection: ServerConnection) -> None:
        """`connection` is gone without `stop`: wait `resume_grace_seconds` for a reconnect.
        A connection that no longer owns the session (taken over) changes nothing."""
        if connection is not self.owner:
            return
        self.owner = None
        if self.subscriber is not None:
            self.subscriber.task.cancel()
            self.subscriber = None
        if self.ended or self.finished.is_set() or self._grace is not None:
            return
        self._grace = asyncio.create_task(self._expire(self.settings.server.resume_grace_seconds))

    async def _expire(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if not self.attached:
            log.info("session %s: not resumed within %.0f s; finishing", self.id, seconds)
            self.end_audio()

    def _publish(self, event: Event) -> None:
        self.seq += 1
        text = Envelope(session=self.id, seq=self.seq, event=event).model_dump_json()
        self.replay.append((self.seq, text))
        subscriber = self.subscriber
        if subscriber is not None and not subscriber.offer(text):
            log.warning("session %s: client too slow, dropping the connection (session goes on)", self.id)
            self.subscriber = None
            subscriber.drop(CLOSE_TOO_SLOW, "client too slow to read events; reconnect with resume")
            self.detach(subscriber.connection)

    # -- lifetime --------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self.pipeline.run(self._chunks())
        except Exception as error:  # the pipeline finishes itself; this is a last guard for the server
            log.exception("session %s crashed", self.id)
            self.pipeline.emit(Error(message=f"session crashed: {error}", fatal=True, source="server"))
        finally:
            self.ended = True
            if self._grace is not None:
                self._grace.cancel()
            self.finished.set()
            if self.subscriber is not None:
                subscriber, self.subscriber = self.subscriber, None
                await subscriber.finish(1000, "session finished")
            if self._on_finished is not None:
                self._on_finished(self)


class _Numbering:
    """The pipeline sink that numbers events and hands them to the connection (and the replay log)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def handle(self, event: Event) -> None:
        self.session._publish(event)

    def close(self) -> None:
        pass
