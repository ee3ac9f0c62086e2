"""Soak: one session of `livesum serve` fed hours of speech, accelerated, with summaries and questions.

Does memory stay flat and latency stay level over a long meeting? Starts `livesum serve` (fast
profile by default) as a subprocess on loopback and streams recordings end to end, looped, into
one native session until `--hours` of audio have been sent, as fast as the server takes them
(`live: false`: flow control paces the sender to the server's speed, nothing is dropped), with a
question every `--ask-every` audio minutes. Rolling summaries come at the profile's cadence.

A row per `--window` audio minutes, sampled when the transcript reaches past it: wall time, the
server's RSS then, its mean and peak over the samples taken every `RSS_EVERY` seconds while the
transcript was inside the window (one sample swings by 100-300 MiB with the forks and the summaries'
`malloc_trim`: a 4-hour run's samples said -7.6% where the means said +3%), the LM cache length
(from the status events), the p50/p95 latency of the finals emitted in that window (Segment.latency:
emission minus arrival of the segment's last frame), and how long the window's questions took to
their answer. At the end: the last window's mean and peak RSS against those of the window after the
first 30 audio minutes (the issue's bar: within 5%), dropped audio (must be 0), and whether the
transcript reaches the end of the audio.

    .venv/bin/python benchmarks/soak.py --hours 4 --json docs/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from websockets.asyncio.client import connect

from livesum.events import Answer, Error, Notes, Segment, Status, Summary
from livesum.server.protocol import Ask, Envelope, Start, Stop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import pcm16_of, start_server  # noqa: E402  (a sibling script)

REPO = Path(__file__).resolve().parent.parent
RATE = 16000
FRAME = 1600  # 100 ms
RECORDINGS = [REPO / "samples" / "cafe_meeting.flac", REPO / "samples" / "two_readers.flac", REPO / "samples" / "librivox.flac"]
RSS_EVERY = 5.0  # seconds between samples of the server's RSS
QUESTIONS = ["What was decided so far?", "Who is doing what next?", "What did the last speaker talk about?"]


@dataclass
class Window:
    """What happened while one `--window` of audio was streamed."""

    until_minutes: float
    latencies: list[float] = field(default_factory=list)
    answers: list[float] = field(default_factory=list)
    sampled: dict = field(default_factory=dict)  # wall time, server RSS and cache length when its audio was read
    rss_mib: list[float] = field(default_factory=list)  # every RSS_EVERY seconds while the transcript was in it


async def soak(url: str, pid: int, hours: float, window_minutes: float, ask_every_minutes: float) -> dict:
    loop_pcm = pcm16_of(RECORDINGS)
    total_frames = int(hours * 3600 * RATE / FRAME)
    server = psutil.Process(pid)
    windows = [Window(window_minutes * (k + 1)) for k in range(int(np.ceil(hours * 60 / window_minutes)))]
    asked: dict[str, tuple[float, int]] = {}  # question -> (wall time asked, window index)
    received: list[Envelope] = []
    cache_tokens: int | None = None
    began = time.monotonic()
    reached = 0  # the window the transcript is in now (None once all audio is transcribed)

    def window_at(stream_seconds: float) -> int:
        return min(len(windows) - 1, int(stream_seconds / 60 / window_minutes))

    async with connect(f"{url}?session=soak-{int(time.time())}", max_size=None, ping_interval=None) as socket:
        await socket.send(Start(live=False).model_dump_json())

        async def watch_rss() -> None:
            while reached is not None:
                windows[reached].rss_mib.append(rss_mib(server))
                await asyncio.sleep(RSS_EVERY)

        async def receive() -> None:
            nonlocal cache_tokens, reached
            async for message in socket:
                envelope = Envelope.model_validate_json(message)
                received.append(envelope)
                event = envelope.event
                if isinstance(event, Segment) and event.final and event.latency is not None:
                    reached = window_at(event.end)
                    windows[reached].latencies.append(event.latency)
                    for window in windows[:reached]:  # the transcript has reached past these: sample now
                        if not window.sampled:
                            window.sampled = sample(server, cache_tokens, began)
                            print(json.dumps({"audio_minutes": window.until_minutes, **window.sampled}), flush=True)
                elif isinstance(event, Answer) and event.question in asked:
                    at, index = asked.pop(event.question)
                    windows[index].answers.append(time.time() - at)
                elif isinstance(event, Status) and event.cache_tokens is not None:
                    cache_tokens = event.cache_tokens
                elif isinstance(event, Status) and event.detail == "writing notes":  # all audio transcribed
                    reached = None
                    for window in windows:
                        if not window.sampled:
                            window.sampled = sample(server, cache_tokens, began)
                elif isinstance(event, Notes):
                    return

        receiver = asyncio.create_task(receive())
        watcher = asyncio.create_task(watch_rss())
        frame_bytes = FRAME * 2
        frames_in_loop = len(loop_pcm) // frame_bytes
        next_question, asked_count = ask_every_minutes * 60, 0
        for index in range(total_frames):
            offset = (index % frames_in_loop) * frame_bytes
            await socket.send(loop_pcm[offset: offset + frame_bytes])  # waits while the server is not reading
            sent_seconds = (index + 1) * FRAME / RATE
            if sent_seconds >= next_question:
                question = f"{QUESTIONS[asked_count % len(QUESTIONS)]} (#{asked_count + 1})"
                asked[question] = (time.time(), window_at(sent_seconds))
                await socket.send(Ask(question=question).model_dump_json())
                asked_count += 1
                next_question += ask_every_minutes * 60
        await socket.send(Stop().model_dump_json())
        await asyncio.wait_for(receiver, timeout=3600)
        reached = None
        await watcher
    # Latencies per window once every final is in (a window's last finals come after its audio was read).
    rows = [row_of(window) for window in windows if window.sampled]
    rows.append({"at": "notes written", **sample(server, None, began)})
    return summarize(rows, received, hours, window_minutes)


def rss_mib(server: psutil.Process) -> float:
    return server.memory_info().rss / 2**20


def sample(server: psutil.Process, cache_tokens: int | None, began: float) -> dict:
    return {"wall_minutes": round((time.monotonic() - began) / 60, 1), "server_rss_mib": round(rss_mib(server)),
            "cache_tokens": cache_tokens}


def row_of(window: Window) -> dict:
    latencies = window.latencies or [float("nan")]
    return {
        "audio_minutes": window.until_minutes,
        **window.sampled,
        "finals": len(window.latencies),
        "final_latency_p50_s": round(float(np.percentile(latencies, 50)), 2),
        "final_latency_p95_s": round(float(np.percentile(latencies, 95)), 2),
        "rss_mean_mib": round(float(np.mean(window.rss_mib))) if window.rss_mib else None,
        "rss_peak_mib": round(max(window.rss_mib)) if window.rss_mib else None,
        "answer_seconds": [round(seconds, 1) for seconds in window.answers],
    }


def summarize(rows: list[dict], received: list[Envelope], hours: float, window_minutes: float) -> dict:
    events = [envelope.event for envelope in received]
    finals = [event for event in events if isinstance(event, Segment) and event.final]
    streamed = [row for row in rows if "at" not in row]
    measured = [row for row in streamed if row["rss_mean_mib"] is not None]
    after_30 = next((row for row in measured if row["audio_minutes"] > 30), measured[0])  # the window from 30 minutes on
    end = measured[-1]
    dropped = [event.message for event in events if isinstance(event, Error) and "dropped" in event.message]
    return {
        "hours": hours,
        "window_minutes": window_minutes,
        "rows": rows,
        "rss_after_30_min_mib": {"mean": after_30["rss_mean_mib"], "peak": after_30["rss_peak_mib"]},
        "rss_at_end_mib": {"mean": end["rss_mean_mib"], "peak": end["rss_peak_mib"]},
        "rss_growth_after_30_min": {kind: round(end[f"rss_{kind}_mib"] / after_30[f"rss_{kind}_mib"] - 1, 4) for kind in ("mean", "peak")},
        "finals": len(finals),
        "last_final_end_s": round(finals[-1].end, 1) if finals else None,
        "summaries": sum(isinstance(event, Summary) for event in events),
        "answers": sum(isinstance(event, Answer) for event in events),
        "dropped_reports": dropped,
        "errors": [event.message for event in events if isinstance(event, Error)][:20],
        "notes": any(isinstance(event, Notes) for event in events),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=4.0)
    parser.add_argument("--window", type=float, default=15.0, help="Audio minutes per row.")
    parser.add_argument("--ask-every", type=float, default=20.0, help="Audio minutes between questions.")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "cpu.toml")
    parser.add_argument("--port", type=int, default=8798)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--set", dest="assignments", action="append", default=[], help="Passed to `livesum serve --set`.")
    args = parser.parse_args()
    data_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"soak-{os.getpid()}"
    command = [sys.executable, "-m", "livesum.cli", "serve", "--config", str(args.config), "--port", str(args.port),
               "--data-dir", str(data_dir), "--set", "output.console=false"]
    for assignment in args.assignments:
        command += ["--set", assignment]
    server = start_server(command)
    try:
        result = asyncio.run(soak(f"ws://127.0.0.1:{args.port}/v1/stream", server.pid, args.hours, args.window, args.ask_every))
    finally:
        server.terminate()
        server.wait(120)
    result["config"] = str(args.config)
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps({key: value for key, value in result.items() if key != "rows"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
