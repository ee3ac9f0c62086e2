"""Speech-to-caption latency of the live path, with the language model running beside it.

A recording is replayed in real time: each chunk is released when the wall clock reaches its end
(as a microphone would deliver it) and carries `captured_at`. Chunks wait in a capture buffer of
`capture.buffer_seconds`; when the pipeline falls that far behind, the oldest are dropped and
reported, as `livesum mic` does. The pipeline runs in live mode (streaming ASR policy, coalesced
LM feeding, rolling summaries). Reported:

- final latency (Segment.latency: emission minus capture of the segment's last sample), median/p95;
- partial latency, the same measure for partial segments;
- CPU use (getrusage of this process: user+system seconds per wall second, i.e. cores busy) and the
  machine's load average, since the machine may be shared;
- dropped audio, Whisper passes, and the worst ASR lag seen in status events;
- WER of the streaming finals and of the batch policy on the same audio (against the reference text
  when one is given, e.g. make_meeting.py's `.reference.txt`), and WER of streaming against batch;
- for questions asked mid-stream (`--ask SECONDS:QUESTION`, asked when the stream reaches SECONDS, as
  a user typing into `livesum mic` would): seconds to the first words of the answer (its first
  `answer_part` event) and to the whole answer.

    python samples/make_meeting.py --out /tmp/meeting.wav --minutes 5
    .venv/bin/python benchmarks/live_latency.py /tmp/meeting.wav --reference /tmp/meeting.reference.txt \
        --asr-model base --json docs/live_latency.json
With the default model, rolling summaries and questions (the issue's acceptance run):
    .venv/bin/python benchmarks/live_latency.py /tmp/housing_coop.wav --minutes 7 --no-batch \
        --set llm.summary_every_seconds=150 --ask "150:Who will ring the roofers?" \
        --ask "240:How much was the cheaper quote?" --ask "330:What did they decide about the bins?"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import jiwer
import numpy as np

from livesum.asr.transcriber import BatchTranscriber, load_whisper
from livesum.config import Settings, load_settings
from livesum.events import Answer, AnswerPart, Event, Segment, Status
from livesum.loading import load_engine, prepare_process, transcriber_factory
from livesum.pipeline import Pipeline
from livesum.source.audio import AudioChunk
from livesum.source.file import decode_file


class Collector:
    """An EventSink that keeps every event (the benchmark reads them afterwards)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def handle(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


def load_audio(path: Path, settings: Settings, limit_seconds: float | None) -> list[AudioChunk]:
    chunks = []
    for chunk in decode_file(path, settings.audio.sample_rate, settings.audio.chunk_seconds):
        if limit_seconds is not None and chunk.start >= limit_seconds:
            break
        chunks.append(chunk)
    return chunks


async def paced(chunks: list[AudioChunk], pipeline: Pipeline, buffer_seconds: float) -> AsyncIterator[AudioChunk]:
    """Release each chunk when the wall clock reaches its end, through a capture buffer that drops the oldest."""
    ready: deque[AudioChunk] = deque()
    arrived = asyncio.Event()
    finished = False
    began = time.time()

    async def capture() -> None:
        nonlocal finished
        for chunk in chunks:
            await asyncio.sleep(max(0.0, began + chunk.end - time.time()))
            ready.append(AudioChunk(chunk.samples, chunk.start, chunk.sample_rate, captured_at=time.time()))
            while sum(c.duration for c in ready) > buffer_seconds:
                pipeline.report_dropped(ready.popleft().duration, "benchmark capture buffer full")
            arrived.set()
        finished = True
        arrived.set()

    task = asyncio.create_task(capture())
    try:
        while True:
            while not ready and not finished:
                arrived.clear()
                await arrived.wait()
            if not ready:
                return
            yield ready.popleft()
    finally:
        task.cancel()


def words_of(text: str) -> str:
    return " ".join(re.sub(r"[^\w' ]+", " ", text.lower().replace("-", " ")).split())


def wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(words_of(reference), words_of(hypothesis)))


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def batch_transcript(whisper, settings: Settings, chunks: list[AudioChunk]) -> str:
    transcriber = BatchTranscriber(whisper, settings.asr, settings.audio.sample_rate)
    segments = [s for chunk in chunks for s in transcriber.push(chunk)] + transcriber.flush()
    return " ".join(s.text for s in segments if s.final)


async def ask_when_reached(pipeline: Pipeline, questions: list[tuple[float, str]], asked: dict[str, float]) -> None:
    """Ask each question once the stream has reached its time (the wall time it was asked is kept)."""
    pending = []
    for at, question in sorted(questions):
        while pipeline.result.audio_seconds < at:
            await asyncio.sleep(0.05)
        asked[question] = time.time()
        pending.append(asyncio.create_task(pipeline.ask(question)))
    await asyncio.gather(*pending)


def answer_latencies(events: list[Event], asked: dict[str, float]) -> list[dict]:
    rows = []
    for question, at in asked.items():
        parts = [e.wall_time for e in events if isinstance(e, AnswerPart) and e.question == question]
        answers = [e for e in events if isinstance(e, Answer) and e.question == question]
        rows.append({
            "question": question,
            "first_words_seconds": round(min(parts) - at, 2) if parts else None,
            "answer_seconds": round(answers[0].wall_time - at, 2) if answers else None,
            "answer": answers[0].text if answers else None,
        })
    return rows


async def live_run(settings: Settings, whisper, chunks: list[AudioChunk], questions: list[tuple[float, str]]) -> dict:
    engine = load_engine(settings)
    collector = Collector()
    pipeline = Pipeline(settings, transcriber_factory(whisper, settings, live=True), engine, [collector], live=True)
    usage_before, wall_before, load_before = resource.getrusage(resource.RUSAGE_SELF), time.time(), os.getloadavg()
    asked: dict[str, float] = {}
    asking = asyncio.create_task(ask_when_reached(pipeline, questions, asked))
    result = await pipeline.run(paced(chunks, pipeline, settings.capture.buffer_seconds))
    asking.cancel()
    usage_after, wall = resource.getrusage(resource.RUSAGE_SELF), time.time() - wall_before
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    segments = [e for e in collector.events if isinstance(e, Segment)]
    finals = [s for s in segments if s.final]
    partials = [s for s in segments if not s.final and s.text]
    final_latency = [s.latency for s in finals if s.latency is not None]
    partial_latency = [s.latency for s in partials if s.latency is not None]
    lags = [e.asr_lag for e in collector.events if isinstance(e, Status) and e.asr_lag is not None]
    passes = sum(getattr(t, "passes", 0) for t in pipeline.transcribers.values())
    return {
        "audio_seconds": round(result.audio_seconds, 1),
        "wall_seconds": round(wall, 1),
        "finals": len(finals),
        "partials": len(partials),
        "whisper_passes": passes,
        "busy_seconds": {stage: round(seconds, 1) for stage, seconds in result.stage_seconds.items()},
        "final_latency_median": percentile(final_latency, 50),
        "final_latency_p95": percentile(final_latency, 95),
        "final_latency_max": max(final_latency, default=None),
        "partial_latency_median": percentile(partial_latency, 50),
        "partial_latency_p95": percentile(partial_latency, 95),
        "cpu_cores_busy": round(cpu / wall, 2),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "dropped_seconds": round(result.dropped_seconds, 2),
        "max_asr_lag": max(lags, default=None),
        "summaries": sum(1 for e in collector.events if e.type == "summary"),
        "questions": (answered := answer_latencies(collector.events, asked)),
        "first_words_median": percentile([q["first_words_seconds"] for q in answered if q["first_words_seconds"] is not None], 50),
        "errors": [e.message for e in collector.events if e.type == "error"],
        "transcript": " ".join(s.text for s in finals),
        "final_latencies": [[s.end, s.latency] for s in finals],  # (stream time, latency): where the tail comes from
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("audio", type=Path)
    parser.add_argument("--reference", type=Path, help="the spoken text, for absolute WERs")
    parser.add_argument("--minutes", type=float, help="replay only the first N minutes")
    parser.add_argument("--asr-model", default="base")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="any setting, as in the CLI")
    parser.add_argument("--no-llm", action="store_true", help="without the language model (isolates ASR latency)")
    parser.add_argument("--no-batch", action="store_true", help="skip the batch-mode WER comparison")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--ask", action="append", default=[], metavar="SECONDS:QUESTION",
                        help="ask QUESTION when the stream reaches SECONDS (repeatable)")
    args = parser.parse_args()

    overrides: dict = {"asr": {"model": args.asr_model, "policy": "streaming"}}
    if args.no_llm:
        overrides["llm"] = {"enabled": False}
    for item in args.overrides:
        key, _, value = item.partition("=")
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    settings = load_settings(overrides=overrides)
    settings.output.console = False

    prepare_process(settings)  # as the CLI does: the allocator, and the cores Whisper and the LM share
    whisper = load_whisper(settings.asr, settings.resolved_cache_dir())
    chunks = load_audio(args.audio, settings, args.minutes * 60 if args.minutes else None)
    questions = [(float(at), question) for at, _, question in (item.partition(":") for item in args.ask)]
    report = asyncio.run(live_run(settings, whisper, chunks, questions))
    report["asr_model"] = settings.asr.model
    report["streaming_config"] = settings.asr.streaming.model_dump()
    report["llm"] = settings.llm.model if settings.llm.enabled else None
    reference = args.reference.read_text() if args.reference else None
    if reference is not None and args.minutes:
        reference = None  # a cut recording has no matching reference; compare with batch only
    if not args.no_batch:
        began = time.perf_counter()
        batch = batch_transcript(whisper, settings, chunks)
        report["batch_seconds"] = round(time.perf_counter() - began, 1)
        report["wer_streaming_vs_batch"] = round(wer(batch, report["transcript"]), 4)
        if reference is not None:
            report["wer_batch"] = round(wer(reference, batch), 4)
    if reference is not None:
        report["wer_streaming"] = round(wer(reference, report["transcript"]), 4)
    transcript, series = report.pop("transcript"), report.pop("final_latencies")
    json.dump(report, sys.stdout, indent=2)
    print()
    if args.json:
        args.json.write_text(json.dumps({**report, "transcript": transcript, "final_latencies": series}) + "\n")


if __name__ == "__main__":
    main()
