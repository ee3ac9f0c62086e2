"""One streaming session: its audio queue, its pipeline, its event log and the connections reading it.

A session outlives its connection: the connection may drop and its client may reattach within
`resume_grace_seconds` with the session's resume secret (events after its last `seq` are replayed
from the event log, audio continues on the same stream clock). Watchers read the same log, each at
its own pace, so no reader ever slows the pipeline or the client feeding it. Models are not here:
the transcriber factory and the engine share the server's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from livesum.config import Settings
from livesum.events import Error, Event
from livesum.llm.service import LmService
from livesum.outputs.files import EventSink, file_sinks
from livesum.pipeline import LanguageEngine, Pipeline, TranscriberFactory
from livesum.server.audio_queue import SessionAudio, TrackRefused
from livesum.server.eventlog import EventLog

log = logging.getLogger(__name__)

CLOSE_TAKEN_OVER = 4409


class Subscriber:
    """A connection reading a session's event log from its own cursor, in its own task: a slow
    client only lags behind in the log, and the pipeline never waits for it."""

    def __init__(self, session: Session, connection: ServerConnection, after_seq: int, preamble: Iterable[str] = ()) -> None:
        self.session = session
        self.connection = connection
        self.next_seq = after_seq + 1
        self.preamble = list(preamble)
        self.wakeup = asyncio.Event()
        self.wakeup.set()
        self.task = asyncio.create_task(self._send())

    async def _send(self) -> None:
        event_log = self.session.log
        try:
            for text in self.preamble:
                await self.connection.send(text)
            while True:
                if self.next_seq > event_log.last_seq:
                    if self.session.finished.is_set():
                        break
                    self.wakeup.clear()
                    await self.wakeup.wait()
                    continue
                texts, self.next_seq = await event_log.read(self.next_seq)
                for text in texts:
                    await self.connection.send(text)
            await self.connection.close(1000, "session finished")
        except ConnectionClosed:
            pass

    def stop(self) -> None:
        self.task.cancel()


class Session:
    def __init__(
        self,
        session_id: str,
        settings: Settings,
        out_dir: Path,
        transcribers: TranscriberFactory,
        engine: LanguageEngine | None,
        service: LmService,
        *,
        event_log: EventLog,
        secret: str,
        live: bool,
        speakers: dict[str, str] | None = None,
        on_finished: Callable[[Session], None] | None = None,
    ) -> None:
        self.id = session_id
        self.settings = settings
        self.out_dir = out_dir
        self.log = event_log
        self.secret = secret
        self.owner: ServerConnection | None = None  # the connection streaming into this session now
        self.owner_subscriber: Subscriber | None = None
        self.watchers: dict[ServerConnection, Subscriber] = {}
        self.finished = asyncio.Event()
        self._on_finished = on_finished
        self._grace: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._asking = 0
        self._bad_input = 0
        formats = [kind for kind in settings.output.formats if kind != "jsonl"]  # the event log is events.jsonl
        sinks: list[EventSink] = [*file_sinks(out_dir, formats), _Numbering(self)]
        self.pipeline = Pipeline(settings, transcribers, engine, sinks, live=True, service=service, speakers=speakers)
        self.audio = SessionAudio(settings, live=live, report_dropped=self.pipeline.report_dropped)
        self.task = asyncio.create_task(self._run(), name=f"session-{session_id}")

    # -- audio in ----------------------------------------------------------------------------------

    def push(self, track: str | None, samples: np.ndarray, at: float | None = None, speaker: str | None = None) -> None:
        """Audio of one track at 16 kHz, placed at `at` (stream seconds) where the protocol gives it."""
        if self.audio.ended or not len(samples):
            return
        try:
            self.audio.push(track, samples, at)
        except TrackRefused as refused:
            self.report(str(refused))
            return
        if speaker is not None and track is not None:
            self.pipeline.speakers[track] = speaker

    @property
    def ended(self) -> bool:
        """No more audio will come (stop, the grace expired, or the pipeline stopped)."""
        return self.audio.ended

    @property
    def needs_room(self) -> bool:
        """A source that can wait has filled its queue: its connection stops reading until there is room."""
        return self.audio.needs_room

    async def room(self) -> None:
        await self.audio.room()

    def end_audio(self) -> None:
        """No more audio: what is pending becomes the last chunks, then the pipeline writes the notes."""
        self.audio.end()

    @property
    def queued_seconds(self) -> float:
        return self.audio.queued_seconds

    @property
    def audio_in_seconds(self) -> float:
        """Audio received so far (all tracks), for /metrics."""
        return self.audio.received_seconds

    @property
    def dropped_seconds(self) -> float:
        """Audio dropped so far, reported or not yet (reports are thinned), for /metrics."""
        return self.pipeline.result.dropped_seconds + self.audio.unreported_drop_seconds

    # -- control -------------------------------------------------------------------------------------

    def ask(self, question: str) -> None:
        """A question answered off the live cache; past `llm.max_pending_questions` it is refused here
        (thinned like bad input, so a flood of questions is neither queued nor echoed one by one)."""
        limit = self.settings.llm.max_pending_questions
        if self.pipeline.engine is None:
            self.report("cannot answer: the language model is switched off")
        elif self._asking >= limit:
            self.report(f"question refused: {limit} questions of this session are still being answered; ask again when one is answered")
        else:
            self._asking += 1
            self._spawn(self._ask(question))

    async def _ask(self, question: str) -> None:
        try:
            await self.pipeline.ask(question)
        finally:
            self._asking -= 1

    def summarize(self) -> None:
        if not self.pipeline.request_summary():
            self.report("a summary is already being made")

    def report(self, message: str) -> None:
        """A non-fatal server-side error into the session's events; a flood is thinned out (the first
        20, then every 100th) so it can fill neither the disk nor the readers."""
        self._bad_input += 1
        if self._bad_input > 20 and self._bad_input % 100:
            return
        if self._bad_input > 20:
            message += f" ({self._bad_input} refused inputs so far)"
        self.pipeline.emit(Error(message=message, source="server"))

    def _spawn(self, work) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connections -----------------------------------------------------------------------------

    def attach(self, connection: ServerConnection, last_seq: int | None = 0, preamble: Iterable[str] = ()) -> None:
        """`connection` takes the session (a previous one is closed: a client that comes back first
        wins over a dead socket the server has not noticed yet) and reads every event after
        `last_seq`. Adapters pass None: the vendors do not read our events."""
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        previous, self.owner = self.owner, connection
        if self.owner_subscriber is not None:
            self.owner_subscriber.stop()
            self.owner_subscriber = None
        if previous is not None and previous is not connection:
            asyncio.create_task(previous.close(CLOSE_TAKEN_OVER, "another connection resumed this session"))
        if last_seq is not None:
            self.owner_subscriber = Subscriber(self, connection, last_seq, preamble)

    def watch(self, connection: ServerConnection, last_seq: int) -> None:
        """A read-only reader: every event after `last_seq`, then the live ones, at its own pace."""
        self.watchers[connection] = Subscriber(self, connection, last_seq)

    @property
    def attached(self) -> bool:
        return self.owner is not None

    def detach(self, connection: ServerConnection) -> None:
        """`connection` is gone. A watcher just stops reading; the owner gone without `stop` starts the
        wait of `resume_grace_seconds` for a reconnect. A connection that no longer owns the session
        (taken over) changes nothing."""
        watcher = self.watchers.pop(connection, None)
        if watcher is not None:
            watcher.stop()
            return
        if connection is not self.owner:
            return
        self.owner = None
        if self.owner_subscriber is not None:
            self.owner_subscriber.stop()
            self.owner_subscriber = None
        if self.ended or self.finished.is_set() or self._grace is not None:
            return
        self._grace = asyncio.create_task(self._expire(self.settings.server.resume_grace_seconds))

    async def _expire(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if not self.attached:
            log.info("session %s: not resumed within %.0f s; finishing", self.id, seconds)
            self.end_audio()

    def _publish(self, event: Event) -> None:
        if self.finished.is_set():  # the record is closed (a late report from a connection handler)
            return
        self.log.append(event.model_dump_json())
        for subscriber in self.readers():
            subscriber.wakeup.set()

    def readers(self) -> list[Subscriber]:
        readers = list(self.watchers.values())
        if self.owner_subscriber is not None:
            readers.append(self.owner_subscriber)
        return readers

    # -- lifetime --------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self.pipeline.run(self.audio.chunks())
        except Exception as error:  # the pipeline finishes itself; this is a last guard for the server
            log.exception("session %s crashed", self.id)
            self.pipeline.emit(Error(message=f"session crashed: {error}", fatal=True, source="server"))
        finally:
            self.audio.close()
            if self._grace is not None:
                self._grace.cancel()
            self.log.close()
            self.finished.set()
            for subscriber in self.readers():  # they send what is left, then close with 1000
                subscriber.wakeup.set()
            if self._on_finished is not None:
                self._on_finished(self)


class _Numbering:
    """The pipeline sink that numbers events in the session's event log and wakes its readers."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def handle(self, event: Event) -> None:
        self.session._publish(event)

    def close(self) -> None:
        pass
