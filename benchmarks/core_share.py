#!/usr/bin/env python3
"""Whisper and the LM on the same CPU cores: alone and side by side, with their thread counts varied.

Why livesum/compute.py splits the cores: both models run OpenMP pools, and two pools that each
take every core stall each other at their barriers. This measures, on the default models
(Whisper base int8 with beam 5 on 24 s of the cafe meeting; Qwen2.5-Coder-1.5B decoding with its
int4 weights off a cache of ~1,500 tokens of meeting text):

- each alone, with 1 thread and with all cores' threads;
- both at once (Whisper transcribing window after window in one thread, the LM decoding in
  another), for each pair of thread counts, and for livesum's own policy: Whisper's pool fixed at
  half the cores, the LM switching between all cores (no recognition running) and the rest.

Seconds per Whisper window and milliseconds per LM token are medians. Run it with nothing else
on the machine:

    .venv/bin/python benchmarks/core_share.py [--windows 3] [--tokens 24]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from faster_whisper import WhisperModel

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from livesum.compute import CoreShare, cpu_cores  # noqa: E402
from livesum.config import load_settings  # noqa: E402
from livesum.llm.engine import StreamingEngine  # noqa: E402
from livesum.models import load_language_model, whisper_model_dir  # noqa: E402

SAMPLE = REPO / "samples" / "cafe_meeting.flac"


def load_audio(seconds: float = 24.0) -> np.ndarray:
    raw = subprocess.run(["sox", str(SAMPLE), "-t", "raw", "-r", "16000", "-c", "1", "-e", "float", "-b", "32", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, dtype=np.float32)[: int(16000 * seconds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=3, help="Whisper windows per measurement")
    parser.add_argument("--tokens", type=int, default=24, help="LM tokens per measurement")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    cores = cpu_cores()
    settings = load_settings()
    audio = load_audio()
    whisper_dir = str(whisper_model_dir(settings.asr.model, settings.resolved_cache_dir()))
    whispers = {n: WhisperModel(whisper_dir, device="cpu", compute_type="int8", cpu_threads=n) for n in sorted({1, cores // 2 or 1, cores})}
    model, tokenizer = load_language_model(settings.llm.model, settings.resolved_cache_dir())
    engine = StreamingEngine(model, tokenizer, settings.llm.engine)
    engine.feed((REPO / "samples" / "meetings" / "housing_coop.toml").read_text()[:6000])

    def transcribe(threads: int, share: CoreShare | None = None) -> float:
        began = time.perf_counter()
        if share is None:
            segments, _ = whispers[threads].transcribe(audio, beam_size=5, language="en", vad_filter=True, temperature=0.0)
            list(segments)
        else:
            with share.recognition():
                segments, _ = whispers[threads].transcribe(audio, beam_size=5, language="en", vad_filter=True, temperature=0.0)
                list(segments)
        return time.perf_counter() - began

    def decode(threads: int | None, count: int, share: CoreShare | None = None) -> list[float]:
        run = engine.fork_run("Summarize the meeting above in detail.", count)
        cache, ids = run.want()
        run.accept(engine.forward(ids, cache))  # the prompt
        times = []
        while not run.done:
            torch.set_num_threads(share.lm_threads() if share is not None else threads)
            began = time.perf_counter()
            cache, ids = run.want()
            run.accept(engine.forward(ids, cache))
            times.append(time.perf_counter() - began)
        run.close()
        return times

    print(f"## {cores} cores\n\n| run | Whisper s / 24 s window | LM ms / token |\n| --- | --- | --- |")
    for threads in sorted({1, cores}):
        transcribe(threads)
        alone = statistics.median(transcribe(threads) for _ in range(args.windows))
        print(f"| Whisper alone, {threads} thread(s) | {alone:.2f} | |", flush=True)
    for threads in sorted({1, cores}):
        per_token = statistics.median(decode(threads, args.tokens))
        print(f"| LM alone, {threads} thread(s) | | {1000 * per_token:.0f} |", flush=True)
    pairs = [(a, b) for a in sorted({1, cores}) for b in sorted({1, cores})]
    for asr_threads, lm_threads in [*pairs, ("policy", "policy")]:
        share = CoreShare(cores) if asr_threads == "policy" else None
        whisper_threads = share.asr_threads() if share else asr_threads
        windows: list[float] = []

        def recognize() -> None:
            windows.extend(transcribe(whisper_threads, share) for _ in range(args.windows))

        worker = threading.Thread(target=recognize)
        worker.start()
        tokens: list[float] = []
        while worker.is_alive():
            tokens += decode(None if share else lm_threads, 8, share)
        worker.join()
        label = (f"together, livesum's split (Whisper {whisper_threads}, LM {cores} or {cores - whisper_threads})" if share
                 else f"together, Whisper {asr_threads} + LM {lm_threads} thread(s)")
        print(f"| {label} | {statistics.median(windows):.2f} | {1000 * statistics.median(tokens):.0f} |", flush=True)


if __name__ == "__main__":
    main()
