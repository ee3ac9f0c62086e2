#!/usr/bin/env python3
"""`livesum file` with a perfect ear: the meeting script's own words instead of Whisper's.

Runs the same pipeline, LM, minutes and output files as `livesum file`, but the transcriber hands
out the script's turns (from the `.expected.json` that samples/make_meeting.py writes), each as a
final segment once the stream passes its end. `benchmarks/notes_quality.py --transcript reference`
scores that, so what the notes lose to the ASR and what they lose to the LM can be told apart;
`--speakers` also labels each turn with its speaker, as a diarizer or a per-speaker websocket
track would, to measure what owners gain from knowing who spoke.

    python benchmarks/reference_transcript.py /tmp/nq/garden_committee.expected.json --out /tmp/g.notes \\
        --ask "Who will make the poster?" [--speakers] [--set llm.question_lines=0] [--llm-model NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from livesum.cli import model_flags, settings_from
from livesum.events import Segment
from livesum.llm.service import LmService
from livesum.loading import load_engine
from livesum.outputs.files import write_notes_trace
from livesum.pipeline import Pipeline
from livesum.runner import ensure_writable, open_sinks
from livesum.source.audio import AudioChunk


class ReferenceTranscriber:
    """The script's turns as final segments, in order, each when the stream has passed its end."""

    def __init__(self, turns: list[dict], with_speakers: bool) -> None:
        self.pending = deque(turns)
        self.with_speakers = with_speakers

    def push(self, chunk: AudioChunk) -> list[Segment]:
        done = []
        while self.pending and self.pending[0]["end"] <= chunk.end:
            done.append(self._segment(self.pending.popleft()))
        return done

    def flush(self) -> list[Segment]:
        done = [self._segment(turn) for turn in self.pending]
        self.pending.clear()
        return done

    def _segment(self, turn: dict) -> Segment:
        speaker = turn["name"] if self.with_speakers else None
        return Segment(final=True, start=turn["start"], end=turn["end"], text=turn["text"], id=f"ref-{turn['index']}", speaker=speaker)


async def silence(duration: float, sample_rate: int, chunk_seconds: float) -> AsyncIterator[AudioChunk]:
    """Chunks that only move the stream clock on (the transcriber never listens)."""
    samples = np.zeros(int(sample_rate * chunk_seconds), dtype=np.float32)
    start = 0.0
    while start < duration:
        yield AudioChunk(samples=samples, start=start, sample_rate=sample_rate)
        start += chunk_seconds
        await asyncio.sleep(0)


async def run(expected: dict, out: Path, args: argparse.Namespace) -> None:
    settings = settings_from(args.config, args.assignments, {**model_flags(None, args.llm_model, False, None), "output.console": False})
    ensure_writable(out)
    engine = load_engine(settings)  # before any audio flows: nothing to keep responsive yet
    service = LmService()
    pipeline = Pipeline(settings, ReferenceTranscriber(expected["turns"], args.speakers), engine, open_sinks(out, settings), service=service)
    chunks = silence(expected["duration_s"], settings.audio.sample_rate, settings.audio.chunk_seconds)
    try:
        await pipeline.run(chunks, expected["duration_s"], args.ask)
        write_notes_trace(out, pipeline.minutes.trace)
    finally:
        await asyncio.to_thread(service.close, True)  # exiting with the worker inside torch aborts the process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("expected", type=Path, help="a meeting's .expected.json (samples/make_meeting.py)")
    parser.add_argument("--out", "-o", type=Path, required=True)
    parser.add_argument("--ask", action="append", default=[])
    parser.add_argument("--speakers", action="store_true", help="label each turn with its speaker's name")
    parser.add_argument("--config", "-c", type=Path)
    parser.add_argument("--set", dest="assignments", action="append", default=[])
    parser.add_argument("--llm-model")
    parser.add_argument("--quiet", "-q", action="store_true", help="accepted for `livesum file` compatibility")
    args = parser.parse_args(argv)
    asyncio.run(run(json.loads(args.expected.read_text()), args.out, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
