"""The async pipeline: audio chunks -> ASR -> LLM -> events, the same for files, mics and sockets.

Two stages run under one `asyncio.TaskGroup`: the ASR stage reads chunks and transcribes them
(one transcriber per track, blocking calls in worker threads), the LLM stage feeds final text into
the session's StreamingEngine and makes rolling summaries. Model work goes through the process's
`LmService`, a forward at a time, so several sessions share one model, a question overtakes a
running summary, and nothing here ever waits on the model's lock (status reads published values).

Overload policy, by source:
- files (`live=False`): backpressure. The ASR->LLM queue is bounded, so a slow LM slows the ASR,
  which slows the decoder; every rolling summary is made at its point in the audio.
- live (`live=True`): a microphone cannot wait. The ASR never waits on the LM: final text queues
  (it is small) and is fed in coalesced pieces; summaries are made when the LM gets to them, one
  at a time, and a requested one is skipped while another is pending. Sources drop the oldest
  audio when the ASR falls behind and report it through `report_dropped`.

Whatever happens (a source that breaks, a stage that crashes, Ctrl-C, `stop()`, cancellation),
`run()` flushes the transcribers, makes the final summary and notes and emits `finished`, so what
was heard is never lost. Cancelled (a second Ctrl-C, a server past its shutdown deadline), the run
is hurried: the flush, the last feed and the LM's notes get `exit_deadline` seconds, then the notes
are made from the transcript alone, and audio that could not be transcribed in time is reported
as dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

from livesum.asr.policy import Transcriber
from livesum.asr.speaker_names import SpeakerNames
from livesum.compute import recognizing
from livesum.config import Settings
from livesum.events import Answer, AnswerPart, Error, Event, Notes, Segment, Status, Summary
from livesum.llm.minutes import MeetingMinutes, spoken_line
from livesum.llm.notes import whole_sentences
from livesum.llm.service import LmService, Priority
from livesum.llm.window_span import WindowSpan
from livesum.memory import release_free_memory
from livesum.outputs.files import EventSink
from livesum.run_stats import LiveStats, RunResult, StageClock
from livesum.source.audio import AudioChunk, AudioSourceError, level_dbfs


class LanguageEngine(Protocol):
    """What the pipeline needs of the LLM engine (livesum.llm.engine.StreamingEngine)."""

    def feed(self, text: str) -> int: ...

    def summarize(self, max_new_tokens: int | None = None) -> str: ...

    def ask(self, question: str, max_new_tokens: int | None = None, context: str = "") -> str: ...

    def complete(self, instruction: str, max_new_tokens: int, *, structured: bool = False) -> str: ...


TranscriberFactory = Callable[[str | None], Transcriber]


class StageFailure(Exception):
    """An unexpected crash of a pipeline stage (the known failures are handled inside the stages)."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage} stage crashed: {type(error).__name__}: {error}")
        self.stage = stage


_DONE = object()
_SUMMARY_REQUEST = object()
TRUNCATION_TOLERANCE = 1.0  # seconds of audio missing before the header's duration counts as a truncation
EXIT_DEADLINE_SECONDS = 30.0  # a hurried (cancelled) run's last flush, feed and notes, together
T = TypeVar("T")


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        transcriber: Transcriber | TranscriberFactory,
        engine: LanguageEngine | asyncio.Future | None,
        sinks: Iterable[EventSink],
        *,
        live: bool = False,
        service: LmService | None = None,
        speakers: dict[str, str] | None = None,
        exit_deadline: float = EXIT_DEADLINE_SECONDS,
    ) -> None:
        self.settings = settings
        if hasattr(transcriber, "push"):
            single = transcriber
            self.transcriber_factory: TranscriberFactory = lambda track: single  # type: ignore[assignment,return-value]
        else:
            self.transcriber_factory = transcriber  # type: ignore[assignment]
        self.transcribers: dict[str | None, Transcriber] = {}
        # The engine, or a future of it (still loading: awaited before the LM is first used, `_engine_ready`)
        self._engine_loading = engine if isinstance(engine, asyncio.Future) else None
        self.engine: LanguageEngine | None = None if self._engine_loading is not None else engine  # type: ignore[assignment]
        self.engine_failure: BaseException | None = None  # why a loading engine never came
        self.sinks = list(sinks)
        self.live = live
        self.service = service or LmService()
        self._owns_service = service is None
        self.speakers = dict(speakers or {})
        self.speaker_names = SpeakerNames()
        self.minutes = MeetingMinutes(settings)
        self.minutes.aliases = self.speaker_names.names  # the one map, filled as names are settled
        self.clock = StageClock()
        self.result = RunResult()
        self.stats = LiveStats()
        self.answers: list[Answer] = []
        self.latest_summary = ""
        self.window_span = WindowSpan(settings.llm.engine.window)  # which audio the LM's window still holds
        self._tokens_since_summary = 0
        self._fed_until = 0.0  # stream time of the end of the last segment handed to the LM
        self._feeding: set[asyncio.Task] = set()
        self._extraction: asyncio.Task | None = None
        self._last_extraction_at = 0.0
        self._to_llm: asyncio.Queue[object] = asyncio.Queue(maxsize=0 if live else settings.audio.queue_chunks)
        self._stopping = asyncio.Event()
        self._summary_pending = False
        self._questions_pending = 0
        self._answer_ids = itertools.count(1)
        self.exit_deadline = exit_deadline
        self._exit_by: float | None = None  # loop time a hurried run's exit must be done by
        self._hurried = asyncio.Event()
        self._in_flight: tuple[asyncio.Future[list[Segment]], str | None] | None = None  # a push a cancellation cut short
        self._flushed: set[str | None] = set()  # tracks whose transcriber was flushed

    # -- control from outside (CLI, server) ------------------------------------------------------

    def stop(self) -> None:
        """End the stream gracefully: stop reading audio, transcribe what came, write the notes."""
        self.result.interrupted = True
        self._stopping.set()

    def request_summary(self) -> bool:
        """A rolling summary as soon as the LM is free; False (skipped) if one is already pending."""
        if self._summary_pending or (self.engine is None and self._engine_loading is None):
            return False
        self._summary_pending = True
        if self.live:  # wake the LLM stage now; a file's stage looks at the flag after each segment
            self._to_llm.put_nowait(_SUMMARY_REQUEST)
        return True

    def report_dropped(self, seconds: float, why: str) -> None:
        """A live source dropped audio because the pipeline fell behind: counted and reported."""
        self.result.dropped_seconds += seconds
        self.emit(Error(message=f"dropped {seconds:.1f} s of audio ({why}); {self.result.dropped_seconds:.1f} s in all", source="source"))

    async def ask(self, question: str) -> Answer | None:
        """Answer a question off the live cache now (questions overtake feeds and summaries)."""
        question = question.strip()
        if not question:
            return None
        await self._engine_ready()
        if self.engine is None:
            self.emit(Error(message="cannot answer: the language model is switched off", source="llm"))
            return None
        limit = self.settings.llm.max_pending_questions
        if self._questions_pending >= limit:
            self.emit(Error(message=f"question refused: {limit} questions of this stream are still being answered; "
                                    "ask again when one is answered", source="llm"))
            return None
        self._questions_pending += 1
        try:
            self._feed_queued()  # what was said before the question goes into the cache before it
            return await self._answer(question)
        finally:
            self._questions_pending -= 1

    async def _answer(self, question: str) -> Answer | None:
        assert self.engine is not None
        # The window holds the recent stretch; what it evicted is there as the earlier rolling summaries,
        # and the lines that match the question are found in the whole transcript (off the event loop).
        context = await asyncio.to_thread(self.minutes.question_context, question, self.window_span.held_from())
        answer_id = f"a{next(self._answer_ids)}"
        loop = asyncio.get_running_loop()

        def on_text(text: str) -> None:  # on the LM thread: the event is emitted on the loop
            part = AnswerPart(id=answer_id, question=question, text=text)
            loop.call_soon_threadsafe(self.emit, part)

        text = await self._guarded(self.service.ask(self.engine, question, context, on_text=on_text,
                                                    session=self, account=self._account_llm))
        if text is None:
            return None
        source_at = await asyncio.to_thread(self.minutes.source_of, text)  # fuzzy search of the whole transcript
        answer = Answer(question=question, text=text.strip(), id=answer_id, at=self.result.audio_seconds, source_at=source_at)
        self.answers.append(answer)
        self.emit(answer)
        return answer

    # -- events ------------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink.handle(event)
            except Exception as error:  # one broken sink must not stop the stream or the others
                if not isinstance(event, Error):
                    self.emit(Error(message=f"{type(sink).__name__}: {error}", source="output"))

    def _fatal(self, message: str, source: str) -> None:
        if self.result.fatal_error is None:
            self.result.fatal_error = message
        self.emit(Error(message=message, fatal=True, source=source))

    # -- the run -----------------------------------------------------------------------------------

    async def run(
        self, chunks: AsyncIterator[AudioChunk], duration: float | None = None, questions: Iterable[str] = ()
    ) -> RunResult:
        began = time.perf_counter()
        self.emit(Status(state="started", duration=duration))
        cancelled = False
        try:
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._supervised("asr", self._asr_stage(chunks, duration)))
                    group.create_task(self._supervised("llm", self._llm_stage(duration)))
            except* StageFailure as failures:
                for failure in failures.exceptions:
                    self._fatal(str(failure), failure.stage)  # type: ignore[attr-defined]
        except asyncio.CancelledError:
            cancelled = True
            self.result.interrupted = True
            self._hurry()
        try:
            finishing = asyncio.ensure_future(self._finish(list(questions), duration))
            while True:
                try:
                    await asyncio.shield(finishing)
                    break
                except asyncio.CancelledError:  # cancelled (again) while finishing: the notes still come, hurried
                    if finishing.done():
                        break
                    cancelled = True
                    self._hurry()
        finally:
            self.result.wall_seconds = time.perf_counter() - began
            self.result.stage_seconds = dict(self.clock.seconds)
            self.emit(Status(state="finished", position=self.result.audio_seconds, duration=duration, detail=self.describe_timing()))
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception:
                    pass
            if self._owns_service:  # joined: a process must not exit with the worker inside torch
                if self._exit_by is not None:
                    self.service.cancel_queued()  # what the hurried exit left behind would hold the join
                await asyncio.to_thread(self.service.close, True)
        if cancelled:
            raise asyncio.CancelledError
        return self.result

    def _hurry(self) -> None:
        """From now on the exit (flush, last feed, notes) has `exit_deadline` seconds."""
        if self._exit_by is None:
            self._exit_by = asyncio.get_running_loop().time() + self.exit_deadline
            self._hurried.set()

    async def _bounded(self, work: Awaitable[T]) -> tuple[bool, T | None]:
        """(done, result) of `work`: it runs to its end, unless the run is hurried and the exit deadline
        passes first (then it is left behind: a worker thread cannot be stopped, only not waited for).
        Its exception, if it raised, is raised here."""
        task = asyncio.ensure_future(work)
        loop = asyncio.get_running_loop()
        while not task.done():
            if self._exit_by is None:
                hurried = asyncio.ensure_future(self._hurried.wait())
                await asyncio.wait({task, hurried}, return_when=asyncio.FIRST_COMPLETED)
                hurried.cancel()
                continue
            remaining = self._exit_by - loop.time()
            if remaining <= 0:
                return False, None
            await asyncio.wait({task}, timeout=remaining)
        return True, task.result()

    async def _supervised(self, stage: str, work: Any) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise StageFailure(stage, error) from error

    def describe_timing(self) -> str:
        return self.result.describe()

    # -- ASR stage -----------------------------------------------------------------------------------

    async def _next_chunk(self, iterator: AsyncIterator[AudioChunk]) -> AudioChunk | None:
        """The next chunk, or None at the end of the audio or once `stop()` was called."""
        if self._stopping.is_set():
            return None
        next_chunk = asyncio.ensure_future(anext(iterator))
        stopped = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({next_chunk, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            next_chunk.cancel()
            raise
        finally:
            stopped.cancel()
        if not next_chunk.done():
            next_chunk.cancel()
            await asyncio.gather(next_chunk, return_exceptions=True)
            return None
        try:
            return next_chunk.result()
        except StopAsyncIteration:
            return None

    def _transcriber(self, track: str | None) -> Transcriber:
        if track not in self.transcribers:
            self.transcribers[track] = self.transcriber_factory(track)
        return self.transcribers[track]

    async def _asr_stage(self, chunks: AsyncIterator[AudioChunk], duration: float | None) -> None:
        iterator, last_progress = aiter(chunks), 0.0
        try:
            while True:
                waited = time.perf_counter()
                try:
                    chunk = await self._next_chunk(iterator)
                except AudioSourceError as error:
                    self._fatal(str(error), "source")
                    break
                finally:
                    self.clock.seconds["source"] += time.perf_counter() - waited
                if chunk is None:
                    break
                self.result.audio_seconds = max(self.result.audio_seconds, chunk.end)
                if self.live:
                    self.stats.level_db = level_dbfs(chunk.samples)
                transcriber = self._transcriber(chunk.track)
                work = asyncio.ensure_future(self.clock.run("asr", recognizing(transcriber.push), chunk))
                self._in_flight = (work, chunk.track)
                segments = await asyncio.shield(work)  # cancelled here, the push goes on and _salvage takes its words
                self._in_flight = None
                await self._publish(segments, chunk.track)
                if chunk.captured_at is not None:
                    self.stats.asr_lag = max(0.0, time.time() - chunk.captured_at)
                if chunk.end - last_progress >= self.settings.output.progress_every_seconds:
                    self.emit(self._progress(chunk.end, duration))
                    last_progress = chunk.end
            for track, transcriber in list(self.transcribers.items()):
                segments = await self.clock.run("asr", recognizing(transcriber.flush))
                self._flushed.add(track)
                await self._publish(segments, track)
        except Exception as error:  # keep what was transcribed: notes and files still get finished
            self._fatal(f"speech recognition failed: {error}", "asr")
        finally:
            closer = getattr(iterator, "aclose", None)
            if closer is not None:
                try:
                    await closer()
                except Exception:
                    pass
            task = asyncio.current_task()
            if task is None or not task.cancelling():  # cancelled: the LLM stage is being cancelled too
                await self._to_llm.put(_DONE)
        finished_early = self.result.fatal_error or self.result.interrupted
        if duration and not finished_early and self.result.audio_seconds < duration - TRUNCATION_TOLERANCE:
            message = f"audio ended after {self.result.audio_seconds:.1f} s but the header says {duration:.1f} s: truncated file?"
            self.emit(Error(message=message, source="source"))

    def _progress(self, position: float, duration: float | None) -> Status:
        if not self.live:
            return Status(state="progress", position=position, duration=duration)
        oldest = self.stats.oldest_unfed
        cache_length = getattr(self.engine, "cache_length", None)
        return Status(
            state="progress",
            position=position,
            duration=duration,
            level_db=self.stats.level_db,
            dropped_seconds=self.result.dropped_seconds,
            asr_lag=self.stats.asr_lag,
            llm_lag=max(0.0, time.time() - oldest) if oldest is not None else 0.0,
            cache_tokens=cache_length if isinstance(cache_length, int) else None,
        )

    async def _publish(self, segments: list[Segment], track: str | None) -> None:
        for segment in self._record(segments, track):
            if self.stats.oldest_unfed is None:
                self.stats.oldest_unfed = time.time()
            await self._to_llm.put(segment)

    def _record(self, segments: list[Segment], track: str | None) -> list[Segment]:
        """Emits the segments (labelled with the track's speaker); keeps and returns the final ones."""
        speaker = self.speakers.get(track, track) if track is not None else None
        finals: list[Segment] = []
        for segment in segments:
            if speaker is not None and segment.speaker is None:
                segment = segment.model_copy(update={"speaker": speaker})
            elif track is None and segment.speaker is not None:  # a diarizer's label: a name once the meeting gives one
                self.speaker_names.observe(segment)
                segment = segment.model_copy(update={"speaker": self.speaker_names.name_of(segment.speaker)})
            self.emit(segment)
            if segment.final:
                self.result.segments.append(segment)
                self.minutes.on_segment(segment)
                finals.append(segment)
        return finals

    # -- LLM stage -----------------------------------------------------------------------------------

    async def _guarded(self, call: Awaitable[Any]) -> Any:
        """A model call's result; a failure becomes a non-fatal error and None."""
        try:
            return await call
        except Exception as error:  # the transcript goes on without the model
            self.emit(Error(message=f"language model: {error}", source="llm"))
            return None

    def _account_llm(self, seconds: float) -> None:
        """The service's share of a step for this stream (on the LM thread): LLM busy time."""
        self.clock.seconds["notes" if self.clock.audio_ended else "llm"] += seconds

    def _served(self, priority: Priority) -> Any:
        """This stream's engine as blocking calls through the service (for minutes, in a worker thread)."""
        return self.service.blocking(self.engine, priority, session=self, account=self._account_llm)

    def _feed_now(self, segments: list[Segment]) -> asyncio.Task | None:
        """Submit the segments' text to the service now, as one feed (a feed of a few words costs a
        forward over all the weights, like one of a hundred); the task does the bookkeeping once it is in.
        Submitted at once, not when a task first runs: a question asked next must find it queued."""
        if self.engine is None or not segments:
            return None
        text = "".join(self._line(segment) for segment in segments)
        self._fed_until = max(self._fed_until, segments[-1].end)
        submitted = self.service.submit_feed(self.engine, text, session=self, account=self._account_llm)
        task = asyncio.ensure_future(self._fed(asyncio.wrap_future(submitted), segments[0].start))
        self._feeding.add(task)
        task.add_done_callback(self._feeding.discard)
        return task

    async def _fed(self, submitted: Awaitable[int], start: float) -> None:
        added = await self._guarded(submitted)
        if added:
            self._tokens_since_summary += added
            self.window_span.fed(start, added)

    def _feed_queued(self) -> None:
        """Feed every final segment still queued for the LLM stage (before a question)."""
        queued: list[object] = []
        while not self._to_llm.empty():
            queued.append(self._to_llm.get_nowait())
        for item in queued:  # the end-of-audio mark and summary requests stay for the stage
            if not isinstance(item, Segment):
                self._to_llm.put_nowait(item)
        self._feed_now([item for item in queued if isinstance(item, Segment)])

    async def _take_batch(self, until: float) -> tuple[list[Segment], bool]:
        """(segments, done): everything queued, coalesced into one feed. A file's batch stops at the
        segment that reaches `until`, so every rolling summary and extraction is still made at its
        point in the audio. A summary request in the queue only wakes the stage: `_summary_pending`
        says whether one is owed."""
        items = [await self._to_llm.get()]
        while not self._to_llm.empty() and items[-1] is not _DONE:
            last = items[-1]
            if not self.live and isinstance(last, Segment) and last.end >= until:
                break
            items.append(self._to_llm.get_nowait())
        return [item for item in items if isinstance(item, Segment)], any(item is _DONE for item in items)

    async def _engine_ready(self) -> None:
        """Wait for an engine still loading; one that fails leaves the stream without the LM (an error
        event, and `engine_failure` for the caller), never without its transcript."""
        loading = self._engine_loading
        if loading is None:
            return
        try:
            engine = await asyncio.shield(loading)  # shared by the stage and questions: never cancelled by one
        except Exception as error:
            engine = None
            if self._engine_loading is loading:
                self.engine_failure = error
                self.emit(Error(message=f"the language model could not be loaded: {error}", source="llm"))
        if self._engine_loading is loading:
            self._engine_loading, self.engine = None, engine

    async def _llm_stage(self, duration: float | None = None) -> None:
        await self._engine_ready()
        llm = self.settings.llm
        last_summary_at, done = 0.0, False
        while not done:
            next_point = min(last_summary_at + llm.summary_every_seconds, self._last_extraction_at + llm.extract_every_seconds)
            segments, done = await self._take_batch(next_point)
            feeding = self._feed_now(segments)
            if feeding is not None:
                await feeding
            self.stats.oldest_unfed = None if self._to_llm.empty() else self.stats.oldest_unfed
            if self.engine is None or done:
                continue
            at = self._fed_until
            # A file's last stretch is left to the notes at its end, which extract it anyway.
            near_end = duration is not None and not self.live and duration - at < llm.extract_every_seconds / 2
            if at - self._last_extraction_at >= llm.extract_every_seconds and not near_end:
                await self._start_extraction(at)
            due_by_time = bool(segments) and at - last_summary_at >= llm.summary_every_seconds
            due_by_tokens = bool(llm.summary_every_tokens) and self._tokens_since_summary >= llm.summary_every_tokens
            if due_by_time or due_by_tokens or self._summary_pending:
                await self._summarize(at)
                last_summary_at, self._tokens_since_summary = at, 0

    async def _start_extraction(self, at: float) -> None:
        """Decisions and action items of what the window holds, in the background: its forks run on a
        snapshot of the cache, so feeds, summaries and questions go on beside them. One at a time: live,
        a due extraction is put off while one runs; a file's waits for it (backpressure), so each is
        made at its point in the audio."""
        if self._extraction is not None and not self._extraction.done():
            if self.live:
                return
            await self._extraction
        self._last_extraction_at = at
        extract = asyncio.to_thread(self.minutes.extract, self._served(Priority.SUMMARY), self._memory_start(), at)
        self._extraction = asyncio.ensure_future(self._guarded(extract))

    def _line(self, segment: Segment) -> str:
        """What the LM reads of a segment: 'Name: text' when speakers are known."""
        return spoken_line(segment) + "\n"

    def _memory_start(self) -> float:
        """Earliest audio the summary can draw on: all of it with a pinned summary, else the window."""
        if self.settings.llm.engine.pin_summary and self.latest_summary:
            return 0.0
        return self.window_span.oldest()

    async def _summarize(self, at: float) -> None:
        assert self.engine is not None
        self._summary_pending = True
        try:
            text = await self._guarded(self.service.summarize(self.engine, self.settings.llm.engine.max_summary_tokens,
                                                              session=self, account=self._account_llm))
            if not text:
                return
            summary = Summary(start=self._memory_start(), end=at, text=whole_sentences(text))
            self.latest_summary = summary.text
            self.emit(summary)
            self.minutes.add_summary(summary)
            await asyncio.to_thread(release_free_memory)  # a summary every few minutes: RSS stays level over hours
        finally:
            self._summary_pending = False

    # -- the end ---------------------------------------------------------------------------------------

    async def _finish(self, questions: list[str], duration: float | None) -> None:
        """The questions asked for the end and the final notes, side by side: the service decodes the
        answers' tokens together with the notes' forks, so the notes do not wait for the answers."""
        await self._bounded(self._engine_ready())  # in case the LLM stage never got to it: what is salvaged is fed
        await self._salvage()
        end = self.result.audio_seconds
        self.clock.audio_ended = True
        self.emit(Status(state="progress", position=end, duration=duration, detail="writing notes"))

        async def answer_all() -> None:
            for question in questions:
                await self.ask(question)

        memory_start = self._memory_start()
        notes: Notes | None = None
        answering = asyncio.ensure_future(answer_all())
        try:
            if self._feeding:  # an interrupted stage may leave a feed in flight
                await self._bounded(asyncio.gather(*self._feeding, return_exceptions=True))
            if self._extraction is not None:  # its items merge before the last stretch's
                await self._bounded(asyncio.shield(self._extraction))
            loop = asyncio.get_running_loop()
            told: list[str] = []

            def tell(text: str) -> None:  # the final summary as soon as it is written (from the LM's thread)
                told.append(text)
                loop.call_soon_threadsafe(self.emit, Summary(start=memory_start, end=end, text=text, final=True))

            if self.engine is not None:
                _, notes = await self._bounded(self._guarded(asyncio.to_thread(
                    self.minutes.final_notes, self._served(Priority.NOTES), [], end, memory_start, tell, self.window_span.held_from())))
            if notes is None:  # no model, it failed, or the exit deadline passed: notes from the transcript alone
                notes = await asyncio.to_thread(self.minutes.final_notes, None, [], end)
            if notes.summary and not told:
                self.emit(Summary(start=memory_start, end=end, text=notes.summary, final=True))
        finally:
            answered, _ = await self._bounded(answering)
            if not answered:
                answering.cancel()
        named = [item.model_copy(update={"owner": self.speaker_names.name_of(item.owner)}) for item in notes.action_items]
        self.emit(notes.model_copy(update={"answers": list(self.answers), "action_items": named}))

    async def _salvage(self) -> None:
        """However the stages ended, what the transcribers still hold becomes transcript, and final text
        the LLM stage never read is fed, so the notes cover all that was heard. A hurried run waits for
        this until its exit deadline; what misses it is reported as dropped audio."""
        lost = 0.0
        salvaged: list[Segment] = []
        if self._in_flight is not None:  # a push cut short by a cancellation: its thread finishes it
            work, track = self._in_flight
            self._in_flight = None
            try:
                done, segments = await self._bounded(asyncio.shield(work))
                if done and segments:
                    salvaged += self._record(segments, track)
                if not done:  # still inside the model: that transcriber cannot be flushed beside it
                    self._flushed.add(track)
                    lost += float(getattr(self.transcribers.get(track), "buffered_seconds", 0.0))
            except Exception:
                pass  # the push failed: the ASR stage reported it
        for track, transcriber in list(self.transcribers.items()):
            if track in self._flushed:
                continue
            self._flushed.add(track)
            try:
                done, segments = await self._bounded(self.clock.run("asr", recognizing(transcriber.flush)))
            except Exception as error:
                self.emit(Error(message=f"speech recognition failed while flushing: {error}", source="asr"))
                done, segments = False, None
            if done:
                salvaged += self._record(segments or [], track)
            else:
                lost += float(getattr(transcriber, "buffered_seconds", 0.0))
        if lost:
            self.report_dropped(lost, "heard, but not transcribed before the exit deadline")
        unfed = []
        while not self._to_llm.empty():  # final text the LLM stage did not get to
            item = self._to_llm.get_nowait()
            if isinstance(item, Segment):
                unfed.append(item)
        unfed += salvaged
        feeding = self._feed_now(unfed)
        if feeding is not None:
            try:
                await self._bounded(feeding)
            except Exception as error:  # the model's bookkeeping broke (it already crashed the LLM stage)
                self.emit(Error(message=f"language model: {error}", source="llm"))
