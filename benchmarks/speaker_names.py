#!/usr/bin/env python3
"""How often do diarized labels get a name, and how often the right one? (livesum/asr/speaker_names.py)

Each meeting of samples/meetings is read turn by turn with perfect diarization: every person is
"Speaker N" in order of first appearance, as the diarizer labels voices. What the meeting says
(introductions, names addressed and answered) is all the naming goes on. Reported per meeting:
people, labels named, named right, named wrong. With a real diarizer, labels are noisier (two
people in one label get conflicting evidence and stay unnamed), so this is the naming rule's own
ceiling, not the whole system's.

    .venv/bin/python benchmarks/speaker_names.py
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from livesum.asr.speaker_names import SpeakerNames  # noqa: E402
from livesum.events import Segment  # noqa: E402

MEETINGS = REPO / "samples" / "meetings"
WORDS_PER_SECOND = 2.6  # the scripts' speaking rate, near enough for the answer window


def evaluate(script: dict) -> tuple[int, int, int, int]:
    """(people, labels named, right, wrong) for one meeting script."""
    people = {key: speaker["name"] for key, speaker in script["speakers"].items()}
    labels: dict[str, str] = {}
    names, at = SpeakerNames(), 0.0
    for turn in script["turns"]:
        label = labels.setdefault(turn["speaker"], f"Speaker {len(labels) + 1}")
        length = len(turn["text"].split()) / WORDS_PER_SECOND
        names.observe(Segment(final=True, start=at, end=at + length, text=" ".join(turn["text"].split()), speaker=label))
        at += length + 0.6
    truth = {label: people[key] for key, label in labels.items()}
    right = sum(truth[label] == name for label, name in names.names.items())
    return len(labels), len(names.names), right, len(names.names) - right


def main() -> int:
    rows = ["| meeting | people | labels named | right | wrong |", "| --- | --- | --- | --- | --- |"]
    totals = [0, 0, 0, 0]
    for path in sorted(MEETINGS.glob("*.toml")):
        counts = evaluate(tomllib.loads(path.read_text()))
        totals = [a + b for a, b in zip(totals, counts)]
        rows.append(f"| {path.stem} | " + " | ".join(map(str, counts)) + " |")
    rows.append("| **total** | " + " | ".join(map(str, totals)) + " |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
