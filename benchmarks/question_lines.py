#!/usr/bin/env python3
"""Do the matching transcript lines make answers better? A paired comparison on the same cache.

For each meeting that `benchmarks/notes_quality.py --work DIR` ran, this feeds the run's own final
segments into a fresh engine (the same tokens the run's cache ended with), restores the run's
rolling summaries, and asks every annotated question twice off that one cache: with only the
earlier summaries as context (`llm.question_lines = 0`) and with the matching lines too (the
default). Forks roll back, so both answers see exactly the same state; only the context differs.
Answers are scored by notes_quality's rule. Prints, per meeting, right answers each way and the
questions that only one way got right.

    python benchmarks/question_lines.py --work /tmp/nq [meeting ...] [--set KEY=VALUE]... [--llm-model NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

from livesum.cli import model_flags, settings_from
from livesum.events import Segment, Summary
from livesum.llm.minutes import MeetingMinutes, spoken_line
from livesum.loading import load_language, new_engine
from notes_quality import MEETINGS, answer_right  # beside this script: the benchmark's own answer rule


def compare(name: str, work: Path, settings, loaded) -> tuple[int, int, int, list[str]]:
    """(questions, right without lines, right with lines, lines of the questions that differ)."""
    script = tomllib.loads((MEETINGS / f"{name}.toml").read_text())
    events = [json.loads(line) for line in (work / f"{name}.notes" / "events.jsonl").read_text().splitlines()]
    minutes = MeetingMinutes(settings)
    for event in events:
        if event["type"] == "segment" and event["final"]:
            minutes.on_segment(Segment.model_validate(event))
        elif event["type"] == "summary":
            minutes.summaries.append(Summary.model_validate(event))
    engine = new_engine(settings, *loaded)  # a fresh cache on the one loaded model
    engine.feed("".join(spoken_line(segment) + "\n" for segment in minutes.segments))  # as the pipeline feeds it
    without = with_lines = 0
    differ = []
    for question in script.get("questions", []):
        asked = question["question"]
        plain = engine.ask(asked, None, minutes.earlier_context())
        lined = engine.ask(asked, None, minutes.question_context(asked))
        right = answer_right(question, plain), answer_right(question, lined)
        without += right[0]
        with_lines += right[1]
        if right[0] != right[1]:
            differ.append(f"  {asked}\n    without: {plain!r} ({'ok' if right[0] else 'wrong'})\n    with:    {lined!r} ({'ok' if right[1] else 'wrong'})")
    return len(script.get("questions", [])), without, with_lines, differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("meetings", nargs="*")
    parser.add_argument("--work", type=Path, required=True, help="a notes_quality.py --work folder")
    parser.add_argument("--config", "-c", type=Path)
    parser.add_argument("--set", dest="assignments", action="append", default=[])
    parser.add_argument("--llm-model")
    args = parser.parse_args(argv)
    settings = settings_from(args.config, args.assignments, model_flags(None, args.llm_model, False, None))
    loaded = load_language(settings)
    names = args.meetings or sorted(p.name.removesuffix(".notes") for p in args.work.glob("*.notes"))
    totals = [0, 0, 0]
    print("| meeting | questions | right, summaries only | right, with matching lines |\n| --- | --- | --- | --- |")
    for name in names:
        asked, without, with_lines, differ = compare(name, args.work, settings, loaded)
        print(f"| {name} | {asked} | {without} | {with_lines} |")
        print("\n".join(differ), file=sys.stderr)
        totals = [totals[0] + asked, totals[1] + without, totals[2] + with_lines]
    print(f"| **total** | {totals[0]} | {totals[1]} | {totals[2]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
