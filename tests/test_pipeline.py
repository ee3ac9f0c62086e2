"""The pipeline's promise under failure: what was transcribed before a stage broke is kept."""

from pathlib import Path

import numpy as np

from livesum.config import Settings
from livesum.events import Error, Segment, Status, parse_event
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
    assert "We decided to ship in April." in (tmp_path / "notes.md").read_text().split("## Decisions")[1]
    events = [parse_event(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert any(isinstance(e, Error) and e.fatal and e.source == "asr" for e in events)
    assert isinstance(events[-1], Status) and events[-1].state == "finished"


class CountingEngine:
    """Stands in for StreamingEngine where the test is about the pipeline's scheduling."""

    def __init__(self) -> None:
        self.summaries = 0

    def feed(self, text: str) -> int:
        return len(text.split())

    def summarize(self, max_new_tokens: int | None = None) -> str:
        self.summaries += 1
        return f"Summary {self.summaries}. Cut off mid"

    def ask(self, question: str, max_new_tokens: int | None = None) -> str:
        return "April."

    def complete(self, instruction: str, max_new_tokens: int) -> str:
        return "- point one\n- point two"


class OneSegmentPerChunk(BreaksOnSecondChunk):
    def push(self, chunk: AudioChunk) -> list[Segment]:
        return [Segment(final=True, start=chunk.start, end=chunk.end, text="Words were said.")]


async def test_final_summary_reuses_a_rolling_summary_made_at_the_very_end(tmp_path: Path) -> None:
    settings = Settings.model_validate({"llm": {"summary_every_seconds": 1.0}})
    engine = CountingEngine()
    pipeline = Pipeline(settings, OneSegmentPerChunk(), engine, file_sinks(tmp_path, ["jsonl"]))
    result = await pipeline.run(chunks(4), duration=2.0, questions=["When?"])
    assert result.fatal_error is None
    events = [parse_event(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    summaries = [e for e in events if e.type == "summary"]
    # Rolling summaries after 1.0 s and 2.0 s of audio; the stream ends there, so no third fork.
    assert engine.summaries == 2
    assert [(s.end, s.text, s.final) for s in summaries] == [(1.0, "Summary 1.", False), (2.0, "Summary 2.", False), (2.0, "Summary 2.", True)]
    notes = next(e for e in events if e.type == "notes")
    assert (notes.summary, notes.key_points, notes.answers[0].text) == ("Summary 2.", ["point one", "point two"], "April.")
