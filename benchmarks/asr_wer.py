#!/usr/bin/env python3
"""How well does Whisper hear each benchmark meeting, per speech synthesizer? (issue 16)

The notes of benchmarks/notes_quality.py inherit every word the ASR mishears, and espeak's voices are
hard for Whisper; festival's are heard better. For each meeting of samples/meetings/ and
each synthesizer this speaks the script (samples/make_meeting.py --synth, the same audio files as
notes_quality.py's in the same --work), runs `livesum file --no-llm` on it (ASR only, the profile's
Whisper: base, beam 5, on the CPU) and reports the word error rate of its final segments against
the script's words, both lower-cased with punctuation dropped (benchmarks/live_latency.py's
`words_of`; numbers Whisper writes as digits count as errors), and the ASR time.

    python benchmarks/asr_wer.py --work /tmp/asr-wer                    # all meetings, espeak and festival
    python benchmarks/asr_wer.py school_trip --synth festival --json wer.json
    python benchmarks/asr_wer.py --work /tmp/asr-wer --rescore          # score the transcripts already there
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import jiwer

from live_latency import words_of
from notes_quality import MEETINGS, meeting_stem, synthesize

SYNTHESIZERS = ["espeak", "festival"]


@dataclass
class Heard:
    meeting: str
    synth: str
    audio_seconds: float
    reference_words: int
    wer: float
    asr_seconds: float | None
    reference: str
    hypothesis: str


def transcribe(script_path: Path, work: Path, synth: str, cli_args: list[str], rescore: bool) -> Heard:
    """Speak the meeting (unless its audio is in `work`), transcribe it and score the transcript."""
    stem = meeting_stem(script_path.stem, synth)
    audio, out = work / f"{stem}.wav", work / f"{stem}.asr"
    if not rescore:
        synthesize(script_path, work, synth)
        command = [sys.executable, "-m", "livesum.cli", "file", str(audio), "--no-llm", "--out", str(out), "-q", *cli_args]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{stem}: livesum failed: {done.stderr.strip()[-500:]}")
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    hypothesis = words_of(" ".join(e["text"] for e in events if e["type"] == "segment" and e["final"]))
    reference = words_of((work / f"{stem}.reference.txt").read_text())
    finished = [e for e in events if e["type"] == "status" and e["state"] == "finished"]
    asr = re.search(r"\basr ([\d.]+) s", finished[-1]["detail"]) if finished else None
    duration = finished[-1]["duration"] if finished else 0.0
    return Heard(meeting=script_path.stem, synth=synth, audio_seconds=duration, reference_words=len(reference.split()),
                 wer=float(jiwer.wer(reference, hypothesis)), asr_seconds=float(asr.group(1)) if asr else None,
                 reference=reference, hypothesis=hypothesis)


def table(heard: list[Heard], synths: list[str]) -> str:
    rows = ["| meeting | words | " + " | ".join(f"audio s {s} | WER {s} | ASR s {s}" for s in synths) + " |",
            "| --- | --- | " + " | ".join("--- | --- | ---" for _ in synths) + " |"]
    by_key = {(h.meeting, h.synth): h for h in heard}
    for meeting in dict.fromkeys(h.meeting for h in heard):
        cells = []
        for synth in synths:
            h = by_key.get((meeting, synth))
            cells.append(f"{h.audio_seconds:.0f} | {100 * h.wer:.1f}% | {h.asr_seconds or 0:.0f}" if h else "- | - | -")
        words = next(h.reference_words for h in heard if h.meeting == meeting)
        rows.append(f"| {meeting} | {words} | " + " | ".join(cells) + " |")
    totals = []
    for synth in synths:  # pooled over all words, as jiwer does for a list of pairs
        runs = [h for h in heard if h.synth == synth]
        pooled = jiwer.wer([h.reference for h in runs], [h.hypothesis for h in runs]) if runs else 0.0
        totals.append(f"{sum(h.audio_seconds for h in runs):.0f} | {100 * pooled:.1f}% | {sum(h.asr_seconds or 0 for h in runs):.0f}")
    rows.append(f"| **all** | {sum(h.reference_words for h in heard if h.synth == synths[0])} | " + " | ".join(totals) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("meetings", nargs="*", help="script names under samples/meetings (default: all)")
    parser.add_argument("--synth", action="append", choices=SYNTHESIZERS, help="repeatable (default: all)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/livesum-notes-quality"), help="audio and transcripts go here")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--rescore", action="store_true", help="score the transcripts already in --work")
    args, cli_args = parser.parse_known_args(argv)  # the rest goes to `livesum file` (--asr-model, --set)
    args.work.mkdir(parents=True, exist_ok=True)
    synths = args.synth or SYNTHESIZERS
    names = args.meetings or sorted(p.stem for p in MEETINGS.glob("*.toml"))
    heard = []
    for name in names:
        for synth in synths:
            heard.append(transcribe(MEETINGS / f"{name}.toml", args.work, synth, cli_args, args.rescore))
            print(f"{name} {synth}: WER {100 * heard[-1].wer:.1f}%", file=sys.stderr, flush=True)
    print(table(heard, synths))
    if args.json:
        args.json.write_text(json.dumps([asdict(h) for h in heard], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
