"""N concurrent real-time sessions against one `livesum serve`: does one machine keep up?

Starts `livesum serve` (fast profile by default: configs/cpu.toml) as a subprocess on loopback,
then for each N streams the recording into N native sessions at once, each paced in real time
(100 ms frames), waits for every session's notes, and reports per N:

- p50/p95 final-segment latency (Segment.latency: the server's emission time minus the arrival of
  the segment's last audio frame), over all sessions;
- audio dropped by the live policy (session queue full), from the sessions' `finished` status;
- the server process's CPU (cores busy, user+system per wall second) and peak RSS while streaming
  (from the first frame until every session is writing its notes: all its audio transcribed and fed);
- WER of each session's finals against the reference (the sessions must not interfere).

N "keeps up" when no audio was dropped and p95 final latency stays under --max-p95 seconds.
The machine may be shared with other jobs: read the numbers as an upper bound of the cost.

    .venv/bin/python benchmarks/serve_load.py samples/librivox.flac --reference samples/librivox.txt --sessions 1 2 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import jiwer
import numpy as np
import psutil
from websockets.asyncio.client import connect

from livesum.events import Notes, Segment, Status
from livesum.server.protocol import Envelope, Start, Stop
from livesum.source.file import decode_file

REPO = Path(__file__).resolve().parent.parent
FRAME = 1600  # samples: 100 ms at 16 kHz


def pcm16_of(paths: list[Path]) -> bytes:
    """The recordings end to end as 16 kHz s16le, the frames the native protocol sends."""
    samples = [np.concatenate([c.samples for c in decode_file(path, 16000, 1.0)]) for path in paths]
    return (np.clip(np.concatenate(samples), -1, 1) * 32767).astype("<i2").tobytes()


def is_writing_notes(event: object) -> bool:
    return isinstance(event, Status) and event.detail == "writing notes"


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


class Collecting:
    """One session's client; `received` fills as events arrive (readable before the session ends)."""

    def __init__(self, url: str, session: str, pcm: bytes, streamed: asyncio.Event) -> None:
        self.args = (url, session, pcm, streamed)
        self.received: list[Envelope] = []

    async def run(self) -> list[Envelope]:
        return await one_session(*self.args, received=self.received)

    def result(self) -> list[Envelope]:
        return self.received


async def one_session(url: str, session: str, pcm: bytes, streamed: asyncio.Event, received: list[Envelope]) -> list[Envelope]:
    async with connect(f"{url}?session={session}", max_size=None) as socket:
        await socket.send(Start().model_dump_json())

        async def receive() -> None:
            async for message in socket:
                received.append(Envelope.model_validate_json(message))
                if isinstance(received[-1].event, Notes):
                    return

        receiver = asyncio.create_task(receive())
        began = time.monotonic()
        for index, offset in enumerate(range(0, len(pcm), FRAME * 2)):
            await socket.send(pcm[offset: offset + FRAME * 2])
            await asyncio.sleep(max(0.0, began + (index + 1) * FRAME / 16000 - time.monotonic()))
        await socket.send(Stop().model_dump_json())
        while not receiver.done() and not any(is_writing_notes(e.event) for e in received):
            await asyncio.sleep(0.1)  # all audio transcribed and fed: the notes are being written
        streamed.set()
        await asyncio.wait_for(receiver, timeout=1800)
    return received


class CpuSampler:
    """The server process's CPU seconds and peak RSS over a stretch of time."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak_rss = 0
        self.running = True

    async def sample(self) -> None:
        while self.running:
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            await asyncio.sleep(0.5)

    def cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system


async def run_level(url: str, n: int, pcm: bytes, reference: str | None, pid: int, max_p95: float, wait_notes: bool) -> dict:
    sampler = CpuSampler(pid)
    sampling = asyncio.create_task(sampler.sample())
    cpu0, wall0 = sampler.cpu_seconds(), time.monotonic()
    done = [asyncio.Event() for _ in range(n)]
    one_session_tasks = [Collecting(url, f"load{n}-{k}-{int(time.time())}", pcm, done[k]) for k in range(n)]
    sessions = asyncio.gather(*(task.run() for task in one_session_tasks))
    for event in done:  # the streaming phase: until every session's audio is transcribed
        await event.wait()
    cpu1, wall1 = sampler.cpu_seconds(), time.monotonic()
    sampler.running = False
    await sampling
    if wait_notes:
        results = await sessions
    else:  # what arrived by now: every final segment (the notes are the LM's, not the load's)
        results = [session.result() for session in one_session_tasks]
        sessions.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sessions
    wall_notes = time.monotonic() - wall0
    latencies, dropped, errors = [], 0.0, []
    for envelopes in results:
        finals = [e.event for e in envelopes if isinstance(e.event, Segment) and e.event.final]
        latencies += [s.latency for s in finals if s.latency is not None]
        if reference is not None:
            errors.append(float(jiwer.wer(words(reference), words(" ".join(s.text for s in finals)))))
        progress = [e.event.dropped_seconds for e in envelopes if isinstance(e.event, Status) and e.event.dropped_seconds]
        dropped += max(progress, default=0.0)
    p50, p95 = (float(np.percentile(latencies, q)) for q in (50, 95)) if latencies else (float("nan"),) * 2
    return {
        "sessions": n,
        "final_latency_p50_s": round(p50, 2),
        "final_latency_p95_s": round(p95, 2),
        "dropped_audio_s": round(dropped, 1),
        "server_cpu_cores": round((cpu1 - cpu0) / (wall1 - wall0), 2),
        "server_peak_rss_mib": round(sampler.peak_rss / 2**20),
        "streaming_wall_s": round(wall1 - wall0, 1),
        "wall_s_incl_notes": round(wall_notes, 1) if wait_notes else None,
        "wer_max": round(max(errors), 3) if errors else None,
        "keeps_up": dropped == 0 and p95 <= max_p95,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", type=Path)
    parser.add_argument("--reference", type=Path)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "cpu.toml")
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--max-p95", type=float, default=5.0, help="p95 final latency (s) that still counts as keeping up.")
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    parser.add_argument("--wait-notes", action="store_true", help="Also wait for every session's notes (slow on a busy CPU).")
    parser.add_argument("--set", dest="assignments", action="append", default=[], help="Passed to `livesum serve --set`.")
    args = parser.parse_args()
    pcm = pcm16_of([args.audio])
    reference = args.reference.read_text() if args.reference else None
    data_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"serve_load-{os.getpid()}"
    command = [sys.executable, "-m", "livesum.cli", "serve", "--config", str(args.config), "--port", str(args.port),
               "--data-dir", str(data_dir), "--set", f"server.max_sessions={max(args.sessions)}"]
    for assignment in args.assignments:
        command += ["--set", assignment]
    url = f"ws://127.0.0.1:{args.port}/v1/stream"
    rows = []
    for n in args.sessions:  # a fresh server per level: no notes of the last level still running, RSS per level
        server = start_server(command)
        try:
            row = asyncio.run(run_level(url, n, pcm, reference, server.pid, args.max_p95, args.wait_notes))
        finally:
            server.kill()
            server.wait(60)
        row["load_average_1m"] = round(os.getloadavg()[0], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    fits = [row["sessions"] for row in rows if row["keeps_up"]]
    print(f"largest N that keeps up: {max(fits) if fits else 0} (of {args.sessions}; {os.cpu_count()} cores, shared)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def start_server(command: list[str]) -> subprocess.Popen[str]:
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert server.stderr is not None
    for line in server.stderr:  # wait for "listening on"
        if "listening on" in line:
            break
    threading.Thread(target=server.stderr.read, daemon=True).start()  # keep draining: a full pipe would stall the server
    return server

if __name__ == "__main__":
    main()
