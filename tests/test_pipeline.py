"""The pipeline's promises: what was transcribed before a stage broke is kept, a crash or a stop
never hangs and still writes notes, live mode never lets a slow model stall the transcript."""

import asyncio
import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from livesum.config import Settings
from livesum.events import Error, Event, Segment, Status, Summary, parse_event
from livesum.outputs.console import ConsoleView
from livesum.outputs.files import file_sinks
from livesum.pipeline import Pipeline
from livesum.source.audio import AudioChunk


class BreaksOnSecondChunk:
    """A transcriber whose model dies mid-stream (as a CUDA OOM or a corrupt model file would)."""

    def __init__(self) -> None:
        self.pushed = 0

    def push(self, chunk: AudioChunk) -> list[Segment]:
        self.pushed += 1
        if self.pushed == 2:
            raise RuntimeError("model crashed")
        return [Segment(final=True, start=chunk.start, end=chunk.end, text="We decided to ship in April.")]

    def flush(self) -> list[Segment]:
        return []


async def chunks(count: int):
    for index in range(count):
        yield AudioChunk(np.zeros(8000, dtype=np.float32), index * 0.5, 16000)


async def test_asr_failure_keeps_transcript_and_still_writes_notes(tmp_path: Path) -> None:
    settings = Settings.model_validate({"llm": {"enabled": False}})
    pipeline = Pipeline(settings, BreaksOnSecondChunk(), None, file_sinks(tmp_path, settings.output.formats))
    result = await pipeline.run(chunks(3), duration=1.5)
    assert result.fatal_error == "speech recognition failed: model crashed"
    assert (tmp_path / "transcript.txt").read_text() == "[00:00:00] We decided to ship in April.\n"
    notes = (tmp_path / "notes.md").read_text()
    assert notes.startswith("# Meeting notes") and "_Duration: 0 min 01 s_" in notes  # notes for what was heard
    events = [parse_event(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert any(isinstance(e, Error) and e.fatal and e.source == "asr" for e in events)
    assert isinstance(events[-1], Status) and events[-1].state == "finished"


class CountingEngine:
    """Stands in for StreamingEngine where the test is about the pipeline's scheduling."""

    def __init__(self) -> None:
        self.summaries = 0
        self.question_contexts: list[str] = []

    def feed(self, text: str) -> int:
        return len(text.split())

    def summarize(self, max_new_tokens: int | None = None) -> str:
        self.summaries += 1
        return f"Summary {self.summaries}. Cut off mid"

    def ask(self, question: str, max_new_tokens: int | None = None, context: str = "") -> str:
        self.question_contexts.append(context)
        return "April."

    def complete(self, instruction: str, max_new_tokens: int, *, structured: bool = False) -> str:
        return "[]" if structured else "- Ship the app in April\n- Hire a designer for onboarding"


class OneSegmentPerChunk(BreaksOnSecondChunk):
    def push(self, chunk: AudioChunk) -> list[Segment]:
        return [Segment(final=True, start=chunk.start, end=chunk.end, text="Words were said.")]


async def test_final_summary_reuses_a_rolling_summary_made_at_the_very_end(tmp_path: Path) -> None:
    # One rolling summary, after 2.0 s, the end of the stream: it already covers everything (no
    # earlier summaries to combine), so the final summary is that one, not a new fork.
    settings = Settings.model_validate({"llm": {"summary_every_seconds": 2.0}})
    engine = CountingEngine()
    pipeline = Pipeline(settings, OneSegmentPerChunk(), engine, file_sinks(tmp_path, ["jsonl"]))
    result = await pipeline.run(chunks(4), duration=2.0, questions=["When?"])
    assert result.fatal_error is None
    events = [parse_event(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    summaries = [e for e in events if e.type == "summary"]
    assert engine.summaries == 1
    assert [(s.end, s.text, s.final) for s in summaries] == [(2.0, "Summary 1.", False), (2.0, "Summary 1.", True)]
    notes = next(e for e in events if e.type == "notes")
    assert (notes.summary, notes.key_points, notes.answers[0].text) == ("Summary 1.", ["Ship the app in April", "Hire a designer for onboarding"], "April.")


async def test_questions_at_the_end_see_the_earlier_rolling_summaries(tmp_path: Path) -> None:
    # Three rolling summaries: the window (16 tokens) holds the last stretch, the first two are what it evicted.
    settings = Settings.model_validate({"llm": {"summary_every_seconds": 1.0, "engine": {"window": 16}}})
    engine = CountingEngine()
    pipeline = Pipeline(settings, OneSegmentPerChunk(), engine, file_sinks(tmp_path, ["jsonl"]))
    await pipeline.run(chunks(6), duration=3.0, questions=["When?"])
    assert engine.summaries >= 3
    context = engine.question_contexts[-1]
    assert "Summary 1." in context and "Summary 2." in context and f"Summary {engine.summaries}." not in context


async def test_questions_get_no_summary_of_what_the_window_still_holds(tmp_path: Path) -> None:
    # The same meeting in the default window: every summary would repeat what the fork reads anyway.
    settings = Settings.model_validate({"llm": {"summary_every_seconds": 1.0}})
    engine = CountingEngine()
    pipeline = Pipeline(settings, OneSegmentPerChunk(), engine, file_sinks(tmp_path, ["jsonl"]))
    await pipeline.run(chunks(6), duration=3.0, questions=["When?"])
    assert engine.summaries >= 3 and engine.question_contexts == [""]


class RecordingEngine(CountingEngine):
    """Keeps what it was fed; `feed_delay` makes it slower than the speech (a small CPU, a big model).
    A test waits for what it needs with `reached` (the model runs on another thread)."""

    def __init__(self, feed_delay: float = 0.0) -> None:
        super().__init__()
        self.fed: list[str] = []
        self.feed_delay = feed_delay
        self.changed = threading.Condition()

    def feed(self, text: str) -> int:
        time.sleep(self.feed_delay)  # a slow model, not a way to order threads
        with self.changed:
            self.fed.append(text)
            self.changed.notify_all()
        return len(text.split())

    def summarize(self, max_new_tokens: int | None = None) -> str:
        with self.changed:
            summary = super().summarize(max_new_tokens)
            self.changed.notify_all()
        return summary

    async def reached(self, condition: Callable[[], bool], timeout: float = 30) -> None:
        def wait() -> bool:
            with self.changed:
                return self.changed.wait_for(condition, timeout)

        assert await asyncio.to_thread(wait), f"the engine did not get there within {timeout} s"


class Heard:
    """A sink a test waits on: the events so far, and `until` a condition on them holds (with a deadline)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.arrived = asyncio.Event()

    def handle(self, event: Event) -> None:
        self.events.append(event)
        self.arrived.set()

    def close(self) -> None:
        pass

    def finals(self) -> int:
        return sum(isinstance(event, Segment) and event.final for event in self.events)

    async def until(self, condition: Callable[[], bool], timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self.arrived.clear()
                await self.arrived.wait()


class BrokenFeedCount(CountingEngine):
    """An engine bug that surfaces outside the pipeline's model-call handler (a feed count that is no number)."""

    def feed(self, text: str) -> int:
        return "many"  # type: ignore[return-value]


def read_events(path: Path) -> list:
    return [parse_event(line) for line in (path / "events.jsonl").read_text().splitlines()]


async def test_a_crashed_llm_stage_ends_the_run_with_an_error_and_notes_instead_of_a_hang(tmp_path: Path) -> None:
    # File mode: the ASR->LLM queue holds 2 segments, so a dead LLM stage would block the ASR forever.
    settings = Settings.model_validate({"audio": {"queue_chunks": 2}})
    pipeline = Pipeline(settings, OneSegmentPerChunk(), BrokenFeedCount(), file_sinks(tmp_path, settings.output.formats))
    result = await asyncio.wait_for(pipeline.run(chunks(50)), timeout=60)  # a guard against a hang, not a timing check
    assert result.fatal_error is not None and "llm stage crashed" in result.fatal_error
    events = read_events(tmp_path)
    assert any(isinstance(e, Error) and e.fatal and e.source == "llm" for e in events)
    assert events[-1].type == "status" and events[-1].state == "finished"
    assert (tmp_path / "notes.md").is_file() and (tmp_path / "transcript.txt").read_text().startswith("[00:00:00] Words were said.")


async def endless_chunks():
    index = 0
    while True:
        yield AudioChunk(np.zeros(8000, dtype=np.float32), index * 0.5, 16000)
        index += 1
        await asyncio.sleep(0.01)


async def test_stop_ends_a_live_stream_and_still_writes_notes(tmp_path: Path) -> None:
    settings = Settings.model_validate({})
    heard = Heard()
    pipeline = Pipeline(settings, OneSegmentPerChunk(), RecordingEngine(), [*file_sinks(tmp_path, settings.output.formats), heard], live=True)
    running = asyncio.create_task(pipeline.run(endless_chunks()))
    await heard.until(lambda: heard.finals() >= 5)
    pipeline.stop()
    result = await asyncio.wait_for(running, timeout=60)
    assert result.interrupted and result.fatal_error is None
    events = read_events(tmp_path)
    assert [e.type for e in events[-3:]] == ["summary", "notes", "status"]
    assert "## Summary" in (tmp_path / "notes.md").read_text()


async def test_cancelling_a_run_still_writes_notes_then_propagates(tmp_path: Path) -> None:
    settings = Settings.model_validate({"llm": {"enabled": False}})
    heard = Heard()
    pipeline = Pipeline(settings, OneSegmentPerChunk(), None, [*file_sinks(tmp_path, settings.output.formats), heard])
    running = asyncio.create_task(pipeline.run(endless_chunks()))
    await heard.until(lambda: heard.finals() >= 3)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert (tmp_path / "notes.md").is_file()
    assert read_events(tmp_path)[-1].type == "status"


async def test_live_mode_coalesces_transcript_for_a_slow_model_and_never_stalls_asr(tmp_path: Path) -> None:
    settings = Settings.model_validate({"llm": {"summary_every_seconds": 1000}})
    engine = RecordingEngine(feed_delay=0.2)
    pipeline = Pipeline(settings, OneSegmentPerChunk(), engine, file_sinks(tmp_path, ["jsonl"]), live=True)
    result = await pipeline.run(chunks(40))
    fed = "".join(engine.fed)
    assert fed.count("Words were said.") == 40  # every final segment reached the model, once
    assert len(engine.fed) < 40  # in fewer, larger pieces than segments
    assert len(result.segments) == 40


async def test_a_question_mid_stream_is_answered_while_audio_goes_on(tmp_path: Path) -> None:
    settings = Settings.model_validate({})
    heard = Heard()
    pipeline = Pipeline(settings, OneSegmentPerChunk(), RecordingEngine(), [*file_sinks(tmp_path, ["jsonl"]), heard], live=True)
    running = asyncio.create_task(pipeline.run(endless_chunks()))
    await heard.until(lambda: heard.finals() >= 2)
    answer = await pipeline.ask("When do we ship?")
    heard_after_answer = heard.finals()
    await heard.until(lambda: heard.finals() >= heard_after_answer + 3)  # capture and ASR carry on
    pipeline.stop()
    await asyncio.wait_for(running, timeout=60)  # a guard against a hang
    assert answer is not None and answer.text == "April."
    answers = [e for e in read_events(tmp_path) if e.type == "answer"]
    assert [a.question for a in answers] == ["When do we ship?"]


class TrackEcho(BreaksOnSecondChunk):
    def __init__(self, track: str | None) -> None:
        super().__init__()
        self.track = track

    def push(self, chunk: AudioChunk) -> list[Segment]:
        return [Segment(final=True, start=chunk.start, end=chunk.end, text=f"I am on {self.track}.")]


async def two_tracks():
    for index in range(3):
        for track in ("in", "out"):
            yield AudioChunk(np.zeros(8000, dtype=np.float32), index * 0.5, 16000, track=track)


async def test_each_track_gets_its_own_transcriber_and_speaker_label(tmp_path: Path) -> None:
    settings = Settings.model_validate({})
    engine = RecordingEngine()
    made: list[str | None] = []

    def factory(track: str | None) -> TrackEcho:
        made.append(track)
        return TrackEcho(track)

    pipeline = Pipeline(settings, factory, engine, file_sinks(tmp_path, ["jsonl"]), speakers={"in": "Caller", "out": "Agent"})
    result = await pipeline.run(two_tracks())
    assert made == ["in", "out"]
    assert {(s.speaker, s.text) for s in result.segments} == {("Caller", "I am on in."), ("Agent", "I am on out.")}
    fed = "".join(engine.fed)  # a busy model gets queued segments in one feed
    assert "Caller: I am on in.\n" in fed and "Agent: I am on out.\n" in fed


def test_console_shows_bracketed_speech_literally() -> None:
    buffer = io.StringIO()
    view = ConsoleView(Console(file=buffer, width=100, color_system=None))
    view.handle(Segment(final=True, start=1.0, end=2.0, text="[laughter] okay [/ that was odd"))
    view.handle(Summary(start=0, end=2, text="They laughed [applause]."))
    shown = buffer.getvalue()
    assert "[laughter] okay [/ that was odd" in shown and "[applause]" in shown


async def test_a_requested_summary_is_made_once_even_when_it_waits_behind_a_feed(tmp_path: Path) -> None:
    settings = Settings.model_validate({"llm": {"summary_every_seconds": 1000}})
    engine = RecordingEngine(feed_delay=0.2)  # the request arrives while a feed is running
    pipeline = Pipeline(settings, OneSegmentPerChunk(), engine, file_sinks(tmp_path, ["jsonl"]), live=True)
    running = asyncio.create_task(pipeline.run(endless_chunks()))
    await engine.reached(lambda: bool(engine.fed))
    assert pipeline.request_summary()
    assert not pipeline.request_summary()  # one is pending already: skipped
    await engine.reached(lambda: engine.summaries >= 1)
    feeds_after_summary = len(engine.fed) + 2  # let the stage take the queued request and more text
    await engine.reached(lambda: len(engine.fed) >= feeds_after_summary)
    pipeline.stop()
    await asyncio.wait_for(running, timeout=60)  # a guard against a hang
    rolling = [e for e in read_events(tmp_path) if e.type == "summary" and not e.final]
    assert len(rolling) == 1


class SlowAnswers(RecordingEngine):
    """Answers take a while, as a big model's do; `release` lets them through."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def ask(self, question: str, max_new_tokens: int | None = None, context: str = "") -> str:
        self.release.wait(timeout=30)
        return f"About {question}"


async def test_questions_beyond_the_pending_limit_are_refused_and_the_rest_answered(tmp_path: Path) -> None:
    settings = Settings.model_validate({"llm": {"max_pending_questions": 2}})
    engine = SlowAnswers()
    heard = Heard()
    pipeline = Pipeline(settings, OneSegmentPerChunk(), engine, [*file_sinks(tmp_path, ["jsonl"]), heard], live=True)
    running = asyncio.create_task(pipeline.run(endless_chunks()))
    await heard.until(lambda: heard.finals() >= 2)
    asked = [asyncio.create_task(pipeline.ask(f"q{n}")) for n in range(4)]
    # the two beyond the limit are refused while the first two are still being answered
    await heard.until(lambda: sum(isinstance(e, Error) and "question refused" in e.message for e in heard.events) >= 2)
    engine.release.set()
    answers = await asyncio.gather(*asked)
    pipeline.stop()
    await asyncio.wait_for(running, timeout=60)
    assert [a.text if a else None for a in answers] == ["About q0", "About q1", None, None]
    refusals = [e for e in read_events(tmp_path) if isinstance(e, Error) and "question refused" in e.message]
    assert len(refusals) == 2 and not any(e.fatal for e in refusals)


class NumberedSegments(BreaksOnSecondChunk):
    """Each chunk is a sentence of its own, so a test can tell which ones the model had read."""

    def push(self, chunk: AudioChunk) -> list[Segment]:
        return [Segment(final=True, start=chunk.start, end=chunk.end, text=f"Sentence {round(chunk.start * 2)}.")]


class HeldSummary(RecordingEngine):
    """A summary that takes as long as the test says (`release`); remembers what was fed when asked."""

    def __init__(self) -> None:
        super().__init__()
        self.summarizing = threading.Event()
        self.release = threading.Event()
        self.fed_when_asked = ""

    def summarize(self, max_new_tokens: int | None = None) -> str:
        self.summarizing.set()
        self.release.wait(timeout=30)
        return super().summarize(max_new_tokens)

    def ask(self, question: str, max_new_tokens: int | None = None, context: str = "") -> str:
        self.fed_when_asked = "".join(self.fed)
        return "April."


async def test_a_question_is_answered_on_what_was_said_before_it_even_while_a_summary_holds_the_stage(tmp_path: Path) -> None:
    settings = Settings.model_validate({"llm": {"summary_every_seconds": 1000}})
    engine = HeldSummary()
    heard = Heard()
    pipeline = Pipeline(settings, NumberedSegments(), engine, [*file_sinks(tmp_path, ["jsonl"]), heard], live=True)
    running = asyncio.create_task(pipeline.run(endless_chunks()))
    await engine.reached(lambda: bool(engine.fed))
    assert pipeline.request_summary()
    assert await asyncio.to_thread(engine.summarizing.wait, 30)
    await heard.until(lambda: heard.finals() >= 8)  # said while the stage waits for the summary
    last_said = [e for e in heard.events if isinstance(e, Segment) and e.final][-1].text
    asking = asyncio.create_task(pipeline.ask("When do we ship?"))
    await asyncio.sleep(0)
    engine.release.set()
    assert (await asyncio.wait_for(asking, timeout=30)) is not None
    pipeline.stop()
    await asyncio.wait_for(running, timeout=60)
    assert last_said in engine.fed_when_asked


class CountsExtractions(CountingEngine):
    def __init__(self) -> None:
        super().__init__()
        self.extractions: list[int] = []  # summaries made before each extraction fork

    def complete(self, instruction: str, max_new_tokens: int, *, structured: bool = False) -> str:
        if structured:
            self.extractions.append(self.summaries)
        return super().complete(instruction, max_new_tokens, structured=structured)


async def test_decisions_and_tasks_are_extracted_on_their_own_cadence_and_once_more_at_the_end(tmp_path: Path) -> None:
    settings = Settings.model_validate({"llm": {"summary_every_seconds": 1000, "extract_every_seconds": 1.0}})
    engine = CountsExtractions()
    pipeline = Pipeline(settings, OneSegmentPerChunk(), engine, file_sinks(tmp_path, ["jsonl", "md"]))
    await pipeline.run(chunks(7), duration=3.5)
    # Two forks (decisions, tasks) per round: at 1.0, 2.0 and 3.0 s of audio, then the last half second
    # at the end; no rolling summary was due, so extraction did not wait for one.
    assert len(engine.extractions) == 2 * 4 and engine.summaries == 0
    assert (tmp_path / "notes.md").exists()


async def test_the_lm_may_still_be_loading_when_the_audio_starts(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    loading: asyncio.Future = loop.create_future()
    engine = RecordingEngine()
    heard = Heard()
    pipeline = Pipeline(Settings.model_validate({}), OneSegmentPerChunk(), loading, [heard], live=True)
    running = asyncio.create_task(pipeline.run(endless_chunks()))
    await heard.until(lambda: heard.finals() >= 3)  # transcribed while the model loads
    asking = asyncio.create_task(pipeline.ask("When do we ship?"))  # waits for the model, is not refused
    loading.set_result(engine)
    answer = await asyncio.wait_for(asking, timeout=30)
    pipeline.stop()
    await asyncio.wait_for(running, timeout=60)
    assert answer is not None and answer.text == "April."
    assert "".join(engine.fed).count("Words were said.") == len([e for e in heard.events if isinstance(e, Segment) and e.final])


async def test_an_lm_that_fails_to_load_leaves_the_transcript_and_says_why(tmp_path: Path) -> None:
    loading: asyncio.Future = asyncio.get_running_loop().create_future()
    loading.set_exception(RuntimeError("model file is corrupt"))
    pipeline = Pipeline(Settings.model_validate({}), OneSegmentPerChunk(), loading, file_sinks(tmp_path, ["jsonl", "txt", "md"]))
    result = await pipeline.run(chunks(4))
    assert len(result.segments) == 4 and isinstance(pipeline.engine_failure, RuntimeError)
    assert any(e.type == "error" and "could not be loaded: model file is corrupt" in e.message for e in read_events(tmp_path))
    assert (tmp_path / "notes.md").exists()


class DiarizedMeeting(BreaksOnSecondChunk):
    """One track, the diarizer's labels on each final (as livesum/asr/diarize.py gives them)."""

    LINES = [("Speaker 1", "Hello, I'm Dana and I chair this."), ("Speaker 2", "Morning all."),
             ("Speaker 1", "Let's start with the budget."), ("Speaker 2", "I will send the figures round.")]

    def push(self, chunk: AudioChunk) -> list[Segment]:
        index = round(chunk.start * 2)
        if index >= len(self.LINES):
            return []
        speaker, text = self.LINES[index]
        return [Segment(final=True, start=chunk.start, end=chunk.end, text=text, speaker=speaker)]


class OwnsTheTask(CountingEngine):
    def complete(self, instruction: str, max_new_tokens: int, *, structured: bool = False) -> str:
        if structured and "tasks" in instruction:
            return '[{"owner": "Speaker 1", "text": "send the budget figures round", "due": null}]'
        return super().complete(instruction, max_new_tokens, structured=structured)


async def test_a_diarized_label_takes_the_name_the_meeting_gives_it_from_then_on(tmp_path: Path) -> None:
    engine = OwnsTheTask()
    pipeline = Pipeline(Settings.model_validate({}), DiarizedMeeting(), engine, file_sinks(tmp_path, ["jsonl"]))
    result = await pipeline.run(chunks(4))
    assert [s.speaker for s in result.segments] == ["Dana", "Speaker 2", "Dana", "Speaker 2"]  # named at its own introduction
    notes = next(e for e in read_events(tmp_path) if e.type == "notes")
    assert [a.owner for a in notes.action_items] == ["Dana"]  # the label the LM read, resolved at the end


# -- every way out of a run keeps what was heard -----------------------------------------------------------


async def until(condition, timeout: float = 60.0) -> None:
    """Waits for `condition()` with a deadline (a guard against a hang, not a timing check)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


class HoldsUntilFlush:
    """A transcriber that, like the streaming policy mid-utterance, holds its audio until it is flushed:
    the words of the open utterance exist only once `flush` runs. `first_final` emits one final at once."""

    def __init__(self, first_final: str | None = None, flush_gate: threading.Event | None = None) -> None:
        self.pushed = 0
        self.held_from: float | None = None
        self.held_to = 0.0
        self.first_final = first_final
        self.flush_gate = flush_gate

    @property
    def buffered_seconds(self) -> float:
        return self.held_to - (self.held_from or 0.0)

    def push(self, chunk: AudioChunk) -> list[Segment]:
        self.pushed += 1
        if self.pushed == 1 and self.first_final:
            return [Segment(final=True, start=chunk.start, end=chunk.end, text=self.first_final)]
        self.held_from = chunk.start if self.held_from is None else self.held_from
        self.held_to = chunk.end
        return []

    def flush(self) -> list[Segment]:
        if self.flush_gate is not None:
            self.flush_gate.wait(timeout=60)
        if self.held_from is None:
            return []
        return [Segment(final=True, start=self.held_from, end=self.held_to, text="Maria will call the roaster.")]


async def test_a_cancelled_run_flushes_the_open_utterance_into_transcript_and_notes(tmp_path: Path) -> None:
    # A second Ctrl-C, or a server past its shutdown deadline, cancels the run mid-utterance.
    settings = Settings.model_validate({})
    engine = RecordingEngine()
    transcriber = HoldsUntilFlush()
    pipeline = Pipeline(settings, transcriber, engine, file_sinks(tmp_path, settings.output.formats), live=True)
    running = asyncio.create_task(pipeline.run(endless_chunks()))
    await until(lambda: transcriber.pushed >= 4)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert "Maria will call the roaster." in (tmp_path / "transcript.txt").read_text()
    assert any("Maria will call the roaster." in text for text in engine.fed)  # the notes' model read it
    events = read_events(tmp_path)
    assert events[-2].type == "notes" and events[-1].type == "status" and events[-1].state == "finished"


class BreaksOnceAudioIsHeld(CountingEngine):
    """Its feed returns garbage (the stage crashes) once the transcriber holds an open utterance."""

    def __init__(self, transcriber: HoldsUntilFlush) -> None:
        super().__init__()
        self.transcriber = transcriber

    def feed(self, text: str) -> int:
        deadline = time.monotonic() + 60
        while self.transcriber.pushed < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        return "many"  # type: ignore[return-value]


async def test_a_crashed_llm_stage_does_not_lose_the_audio_the_asr_held(tmp_path: Path) -> None:
    # The LLM stage crashes; the TaskGroup cancels the ASR stage mid-utterance.
    settings = Settings.model_validate({})
    transcriber = HoldsUntilFlush(first_final="We ship in April.")
    engine = BreaksOnceAudioIsHeld(transcriber)
    pipeline = Pipeline(settings, transcriber, engine, file_sinks(tmp_path, settings.output.formats), live=True)
    result = await asyncio.wait_for(pipeline.run(endless_chunks()), timeout=60)  # a guard against a hang
    assert result.fatal_error is not None and "llm stage crashed" in result.fatal_error
    assert (tmp_path / "transcript.txt").read_text().splitlines()[-1].endswith("Maria will call the roaster.")
    assert (tmp_path / "notes.md").is_file()


async def test_a_hurried_exit_says_what_it_could_not_transcribe_in_time(tmp_path: Path) -> None:
    settings = Settings.model_validate({"llm": {"enabled": False}})
    gate = threading.Event()  # the flush is stuck in the model until the test ends
    transcriber = HoldsUntilFlush(flush_gate=gate)
    pipeline = Pipeline(settings, transcriber, None, file_sinks(tmp_path, settings.output.formats), live=True, exit_deadline=0.5)
    running = asyncio.create_task(pipeline.run(endless_chunks()))
    await until(lambda: transcriber.pushed >= 4)
    running.cancel()
    try:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(running, timeout=60)
    finally:
        gate.set()
    events = read_events(tmp_path)
    lost = [e for e in events if isinstance(e, Error) and "not transcribed before the exit deadline" in e.message]
    assert len(lost) == 1 and f"dropped {transcriber.buffered_seconds:.1f} s" in lost[0].message
    assert events[-2].type == "notes" and (tmp_path / "notes.md").is_file()
    assert pipeline.result.dropped_seconds == pytest.approx(transcriber.buffered_seconds)


class NotesNeverCome(RecordingEngine):
    """The LM is still deep in the notes when the run must end."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def complete(self, instruction: str, max_new_tokens: int, *, structured: bool = False) -> str:
        self.release.wait(timeout=60)
        return super().complete(instruction, max_new_tokens, structured=structured)


async def test_cancelled_while_writing_notes_the_notes_come_from_the_transcript_by_the_deadline(tmp_path: Path) -> None:
    from livesum.llm.service import LmService

    settings = Settings.model_validate({})
    engine = NotesNeverCome()
    service = LmService()
    pipeline = Pipeline(settings, OneSegmentPerChunk(), engine, file_sinks(tmp_path, settings.output.formats),
                        service=service, exit_deadline=0.5)
    running = asyncio.create_task(pipeline.run(chunks(4), duration=2.0))
    try:
        await until(lambda: pipeline.clock.audio_ended)
        running.cancel()  # once: the run is hurried; the LM's notes get half a second
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(running, timeout=60)
    finally:
        engine.release.set()
        await asyncio.to_thread(service.close, True)
    notes = [e for e in read_events(tmp_path) if e.type == "notes"]
    assert len(notes) == 1 and notes[0].key_points == []  # from the transcript alone, not the stuck model
    assert "Words were said." in (tmp_path / "transcript.txt").read_text()
