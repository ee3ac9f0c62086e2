"""The async pipeline: audio chunks -> ASR -> LLM -> events, the same for files, mics and sockets.

Stages are tasks joined by bounded queues, so a slow stage slows the one before it instead of
buffering without limit. Model calls are blocking and run in worker threads. A failing source or
model becomes an Error event; everything transcribed up to then is still written and summarised.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from livesum.asr.transcriber import StreamingTranscriber
from livesum.config import Settings
from livesum.events import Answer, Error, Event, Notes, Segment, Status, Summary
from livesum.llm.notes import bullet_lines, extract_action_items, extract_decisions, first_line, whole_sentences
from livesum.outputs.files import EventSink
from livesum.source.audio import AudioChunk, AudioSourceError

TITLE_INSTRUCTION = "Give this meeting a short title of at most eight words. Reply with the title only."
KEY_POINTS_INSTRUCTION = "List the three to five most important points of this meeting, one short line each, starting with '- '."


class LanguageEngine(Protocol):
    """What the pipeline needs of the LLM engine (livesum.llm.engine.StreamingEngine)."""

    def feed(self, text: str) -> int: ...

    def summarize(self, max_new_tokens: int | None = None) -> str: ...

    def ask(self, question: str, max_new_tokens: int | None = None) -> str: ...

    def complete(self, instruction: str, max_new_tokens: int) -> str: ...


@dataclass
class StageClock:
    """Seconds each stage spent busy, for the RTF split that the CLI reports.

    `source` is the time the pipeline waited for audio: decoding that ASR did not hide.
    """

    seconds: dict[str, float] = field(default_factory=lambda: {"source": 0.0, "asr": 0.0, "llm": 0.0})

    async def run(self, stage: str, function: Callable[..., Any], *args: Any) -> Any:
        def timed() -> Any:
            began = time.perf_counter()
            try:
                return function(*args)
            finally:
                self.seconds[stage] += time.perf_counter() - began

        return await asyncio.to_thread(timed)


@dataclass
class RunResult:
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)
    fatal_error: str | None = None

    @property
    def real_time_factor(self) -> float:
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else 0.0


_DONE = object()
TRUNCATION_TOLERANCE = 1.0  # seconds of audio missing before the header's duration counts as a truncation


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        transcriber: StreamingTranscriber,
        engine: LanguageEngine | None,
        sinks: Iterable[EventSink],
    ) -> None:
        self.settings = settings
        self.transcriber = transcriber
        self.engine = engine
        self.sinks = list(sinks)
        self.clock = StageClock()
        self.result = RunResult()
        self.answers: list[Answer] = []
        self.latest_summary = ""
        # (segment start, cumulative tokens after it): tells which audio the window still holds.
        self.token_marks: deque[tuple[float, int]] = deque()
        self.tokens_fed = 0
        self.summarized_tokens = -1  # tokens_fed when the latest summary was made

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink.handle(event)
            except Exception as error:  # one broken sink must not stop the stream or the others
                if not isinstance(event, Error):
                    self.emit(Error(message=f"{type(sink).__name__}: {error}", source="output"))

    async def run(
        self, chunks: AsyncIterator[AudioChunk], duration: float | None = None, questions: Iterable[str] = ()
    ) -> RunResult:
        began = time.perf_counter()
        self.emit(Status(state="started", duration=duration))
        to_llm: asyncio.Queue[object] = asyncio.Queue(maxsize=self.settings.audio.queue_chunks)
        llm_task = asyncio.create_task(self._llm_stage(to_llm))
        try:
            await self._asr_stage(chunks, duration, to_llm)
        except Exception as error:  # keep what was transcribed: notes and files still get finished
            self.result.fatal_error = f"speech recognition failed: {error}"
            self.emit(Error(message=self.result.fatal_error, fatal=True, source="asr"))
        finally:
            await to_llm.put(_DONE)
            await llm_task
        self.emit(Status(state="progress", position=self.result.audio_seconds, duration=duration, detail="writing notes"))
        await self._finish(list(questions))
        self.result.wall_seconds = time.perf_counter() - began
        self.result.stage_seconds = dict(self.clock.seconds)
        self.emit(
            Status(
                state="finished",
                position=self.result.audio_seconds,
                duration=duration,
                detail=self.describe_timing(),
            )
        )
        for sink in self.sinks:
            sink.close()
        return self.result

    def describe_timing(self) -> str:
        result = self.result
        split = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in result.stage_seconds.items())
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        return (
            f"{result.audio_seconds:.1f} s of audio in {result.wall_seconds:.1f} s (RTF {result.real_time_factor:.3f}; "
            f"busy: {split}; peak RSS {peak_mib:.0f} MiB)"
        )

    async def _asr_stage(
        self, chunks: AsyncIterator[AudioChunk], duration: float | None, to_llm: asyncio.Queue[object]
    ) -> None:
        iterator, last_progress = aiter(chunks), 0.0
        while True:
            waited = time.perf_counter()
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                break
            except AudioSourceError as error:
                self.result.fatal_error = str(error)
                self.emit(Error(message=str(error), fatal=True, source="source"))
                break
            finally:
                self.clock.seconds["source"] += time.perf_counter() - waited
            self.result.audio_seconds = max(self.result.audio_seconds, chunk.end)
            await self._publish(await self.clock.run("asr", self.transcriber.push, chunk), to_llm)
            if chunk.end - last_progress >= self.settings.output.progress_every_seconds:
                self.emit(Status(state="progress", position=chunk.end, duration=duration))
                last_progress = chunk.end
        await self._publish(await self.clock.run("asr", self.transcriber.flush), to_llm)
        if duration and not self.result.fatal_error and self.result.audio_seconds < duration - TRUNCATION_TOLERANCE:
            message = f"audio ended after {self.result.audio_seconds:.1f} s but the header says {duration:.1f} s: truncated file?"
            self.emit(Error(message=message, source="source"))

    async def _publish(self, segments: list[Segment], to_llm: asyncio.Queue[object]) -> None:
        for segment in segments:
            self.emit(segment)
            if segment.final:
                self.result.segments.append(segment)
                await to_llm.put(segment)

    async def _llm_stage(self, from_asr: asyncio.Queue[object]) -> None:
        llm = self.settings.llm
        last_summary_at, tokens_since = 0.0, 0
        while (item := await from_asr.get()) is not _DONE:
            assert isinstance(item, Segment)
            if self.engine is None:
                continue
            added = await self._engine_call(self.engine.feed, item.text + "\n")
            if added is None:
                continue
            self.tokens_fed += added
            tokens_since += added
            self.token_marks.append((item.start, self.tokens_fed))
            due_by_time = item.end - last_summary_at >= llm.summary_every_seconds
            due_by_tokens = bool(llm.summary_every_tokens) and tokens_since >= llm.summary_every_tokens
            if due_by_time or due_by_tokens:
                await self._summarize(item.end, final=False)
                last_summary_at, tokens_since = item.end, 0

    async def _engine_call(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self.clock.run("llm", function, *args)
        except Exception as error:  # the transcript goes on without the model
            self.emit(Error(message=f"language model: {error}", source="llm"))
            return None

    def _memory_start(self) -> float:
        """Earliest audio the summary can draw on: all of it with a pinned summary, else the window."""
        if self.settings.llm.engine.pin_summary and self.latest_summary:
            return 0.0
        oldest_kept = self.tokens_fed - self.settings.llm.engine.window
        while self.token_marks and self.token_marks[0][1] <= oldest_kept:
            self.token_marks.popleft()
        return self.token_marks[0][0] if self.token_marks else 0.0

    async def _summarize(self, at: float, final: bool) -> None:
        assert self.engine is not None
        text = await self._engine_call(self.engine.summarize, self.settings.llm.engine.max_summary_tokens)
        if text:
            start = self._memory_start()  # before this summary counts as pinned
            self.latest_summary, self.summarized_tokens = whole_sentences(text), self.tokens_fed
            self.emit(Summary(start=start, end=at, text=self.latest_summary, final=final))

    async def _finish(self, questions: list[str]) -> None:
        end = self.result.audio_seconds
        title, key_points = "Meeting notes", []
        if self.engine is not None and self.result.segments:
            if self.summarized_tokens == self.tokens_fed:  # -1 until a summary exists
                # Nothing was said since the last rolling summary: it is the final one, no new fork.
                self.emit(Summary(start=self._memory_start(), end=end, text=self.latest_summary, final=True))
            else:
                await self._summarize(end, final=True)
            max_tokens = self.settings.llm.engine.max_answer_tokens
            title = first_line(await self._engine_call(self.engine.complete, TITLE_INSTRUCTION, 24) or "", title)
            key_points = bullet_lines(await self._engine_call(self.engine.complete, KEY_POINTS_INSTRUCTION, max_tokens * 2) or "")
            for question in questions:
                text = await self._engine_call(self.engine.ask, question, max_tokens)
                if text is not None:
                    answer = Answer(question=question, text=text.strip(), at=end)
                    self.answers.append(answer)
                    self.emit(answer)
        self.emit(
            Notes(
                title=title,
                summary=self.latest_summary,
                key_points=key_points,
                decisions=extract_decisions(self.result.segments),
                action_items=extract_action_items(self.result.segments),
                answers=self.answers,
                duration=end,
            )
        )
