#!/usr/bin/env python3
"""How right are the notes on naturally phrased meetings? (issue 9)

For each meeting script under samples/meetings/ it synthesizes the audio (samples/make_meeting.py),
runs `livesum file` on it as a user would, with every annotated question as --ask, and scores the
notes against the script's annotations:

* decisions and action items, recall and precision: an expected item matches a listed one of the
  same kind when all its keywords occur in the listed text (letters and digits only, so "iced tea"
  = "icedtea"), or when rapidfuzz token_set_ratio of the two texts is >= 60; matching is one to
  one, greedy in the script's order. The listed item's evidence quote does not count: it is what was
  said nearby, and "the rota" quoted with "...exams in June..." is not the June decision;
* owners: of the matched action items, the share whose owner is the annotated one;
* questions: an answerable one is right when some accepted alternative's keywords all occur in the
  answer; an unanswerable one is right when the answer says so ("not mentioned", "does not say"...);
* invented facts: numbers (as digits) and proper names (capitalized mid-sentence) in the title,
  summary, key points, items and answers that occur nowhere in the run's transcript;
* speed, from the run's finished Status event: LLM busy seconds while the audio streamed / audio
  seconds (under 0.6 keeps up live beside Whisper on 2 cores), the LLM seconds after it ended
  (questions and final notes: how long a user waits for the notes), and the peak RSS.

Speed on the shared 2-core machine is noisy (other jobs run beside it): compare ratios of runs
made close together, not absolute numbers.

    python benchmarks/notes_quality.py                                  # all meetings, default profile
    python benchmarks/notes_quality.py cafe_supplier --llm-model qwen2.5-coder-0.5b --json out.json
    python benchmarks/notes_quality.py --work /tmp/nq --rescore                   # score an earlier run again
    python benchmarks/notes_quality.py --work /tmp/nq --replay    # again, items re-made from its recorded model outputs
    python benchmarks/notes_quality.py --transcript reference --work /tmp/nq-ref  # the LM on a perfect transcript
    python benchmarks/notes_quality.py --synth festival --work /tmp/nq-fest      # festival's voices instead of espeak's

`--synth` only changes the voices (samples/make_meeting.py); with festival, audio and notes are kept as
NAME-festival.* in --work, beside espeak's NAME.*, and scored the same way.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rapidfuzz import fuzz

from livesum.asr.speaker_names import LABEL
from livesum.llm.notes import JSON_OBJECT, cut_at_repeat

REPO = Path(__file__).resolve().parent.parent
MEETINGS = REPO / "samples" / "meetings"
TEXT_MATCH_SCORE = 60.0
NOT_MENTIONED = re.compile(
    r"not (?:been )?(?:mentioned|said|discussed|stated|specified|covered|given)|no (?:mention|information)|"
    r"(?:does|did)(?: not|n't) (?:say|mention|specify)|wasn't (?:mentioned|discussed)|isn't mentioned|unknown",
    re.IGNORECASE,
)
SMALL_NUMBERS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "first": 1, "second": 2, "third": 3, "fifth": 5, "twelfth": 12, "fifteenth": 15, "fourteenth": 14,
}


def squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


@dataclass
class Score:
    meeting: str
    audio_seconds: float = 0.0
    decisions: tuple[int, int, int] = (0, 0, 0)  # matched, expected, listed
    actions: tuple[int, int, int] = (0, 0, 0)
    strict: tuple[int, int] = (0, 0)  # decisions, action items matched by item_matches_strictly
    owners: tuple[int, int] = (0, 0)  # right, matched action items
    owners_by_voice: int = 0  # right when an unnamed diarizer label ("Speaker 2") counts as the person it mostly labels
    questions: tuple[int, int] = (0, 0)  # right, asked
    invented: list[str] = field(default_factory=list)
    llm_busy_seconds: float | None = None  # while the audio streamed: must stay under the audio time to keep up
    notes_seconds: float | None = None  # after it ended: questions and final notes
    peak_rss_mib: float | None = None
    answers: list[tuple[str, str, bool]] = field(default_factory=list)
    funnel: dict = field(default_factory=dict)  # kind -> stage -> (found, right, listed): see funnel()


UNITS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
         "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8, "ninth": 9}
TEENS = {"ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
         "seventeen": 17, "eighteen": 18, "nineteen": 19, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
         "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19}
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
        "twentieth": 20, "thirtieth": 30}


def number_words_as_digits(text: str) -> str:
    """'the twenty-first', '21st' and 'twenty one' all become '21', so a keyword and an item that say the
    same number the two ways Whisper and people write it match."""
    words = re.findall(r"[a-z]+|\d+", text.lower().replace("-", " "))
    out: list[str] = []
    for word in words:
        word = re.sub(r"^(\d+)(?:st|nd|rd|th)$", r"\1", word)
        if word in UNITS and out and out[-1].isdigit() and int(out[-1]) % 10 == 0 and 20 <= int(out[-1]) < 100:
            out[-1] = str(int(out[-1]) + UNITS[word])
        elif word in UNITS or word in TEENS or word in TENS:
            out.append(str(UNITS.get(word) or TEENS.get(word) or TENS[word]))
        else:
            out.append(word)
    return " ".join(out)


def item_matches(item: dict, candidate: dict) -> bool:
    """Whether a listed item says the annotated one (see the module docstring)."""
    listed = squash(candidate["text"])
    return all(squash(k) in listed for k in item["keywords"]) or fuzz.token_set_ratio(
        item["text"].lower(), candidate["text"].lower()) >= TEXT_MATCH_SCORE


def item_matches_strictly(item: dict, candidate: dict) -> bool:
    """The strict rule: every keyword is in the listed text (numbers compared as digits), no fuzzy
    alternative. The lenient rule above lets a wrong item that shares a phrase with the annotation
    match ("launched on the fifteenth of May" for "starts on the first of June, not the fifteenth of May")."""
    listed = f" {number_words_as_digits(candidate['text'] + ' ' + (candidate.get('due') or ''))} "  # a task's due date is part of it
    return all(f" {number_words_as_digits(k)} " in listed for k in item["keywords"])


def match_items(expected: list[dict], listed: list[dict], rule: Callable[[dict, dict], bool] = item_matches) -> list[tuple[dict, dict]]:
    """One-to-one greedy matching of annotated items to listed ones (see the module docstring)."""
    free = list(listed)
    pairs = []
    for item in expected:
        for candidate in free:
            if rule(item, candidate):
                pairs.append((item, candidate))
                free.remove(candidate)
                break
    return pairs


FUNNEL_STAGES = ("written", "parsed", "grounded", "notes")
KINDS = (("decision", "decisions"), ("action", "action_items"))


def funnel(script: dict, rounds: list[dict], notes: dict) -> dict[str, dict[str, tuple[int, int, int]]]:
    """Per kind and stage, (expected items found, listed items that are right, listed items), from the
    extraction rounds of notes_trace.json (`--set output.notes_trace=true`): what the model wrote (an
    object or a '- ' line each), what parsed, what grounding kept, over all rounds (an item listed again
    in a later round counts again), then what reached the notes (one to one, as scored above)."""
    result: dict[str, dict[str, tuple[int, int, int]]] = {}
    for kind, key in KINDS:
        expected = script.get(key, [])
        stages: dict[str, tuple[int, int, int]] = {}
        mine = [r for r in rounds if r["kind"] == kind]
        written = sum(len(JSON_OBJECT.findall(r["raw"])) or len(re.findall(r"(?m)^\s*(?:[-*]|\d+[.)])\s+\S", r["raw"]))
                      for r in mine)
        stages["written"] = (0, 0, written)
        for stage in ("parsed", "grounded"):
            listed = [item for r in mine for item in r[stage]]
            found = sum(any(item_matches(e, c) for c in listed) for e in expected)
            right = sum(any(item_matches(e, c) for e in expected) for c in listed)
            stages[stage] = (found, right, len(listed))
        final = notes[key]
        matched = len(match_items(expected, final))
        stages["notes"] = (matched, matched, len(final))
        result[kind] = stages
    return result


def replay(out: Path) -> tuple[list[dict], dict] | None:
    """The notes stages after the model (parse, ground, merge: livesum.llm.minutes) run again on the model
    outputs a run recorded in notes_trace.json, with the segments it had at each round: what a change to
    those stages does, without running the model. An output is first cut where today's engine would have
    stopped its fork (`cut_at_repeat`: greedy decoding writes the same prefix either way).
    (trace rounds, {"decisions": [...], "action_items": [...]})"""
    trace_path = out / "notes_trace.json"
    if not trace_path.exists():
        return None
    from livesum.config import Settings
    from livesum.events import Segment
    from livesum.llm.minutes import MeetingMinutes

    rounds = json.loads(trace_path.read_text())
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    segments = [Segment.model_validate(e) for e in events if e["type"] == "segment" and e["final"]]
    minutes = MeetingMinutes(Settings.model_validate({"output": {"notes_trace": True}}))
    given = 0
    for first in range(0, len(rounds), 2):  # one round = a decision fork and an action fork
        pair = rounds[first:first + 2]
        while given < len(segments) and segments[given].end <= pair[0].get("known_until", pair[0]["until"]):
            minutes.on_segment(segments[given])
            given += 1
        minutes.extraction_requests(pair[0]["until"])
        minutes.take_extractions([cut_at_repeat(r["raw"]) or r["raw"] for r in pair], pair[0]["since"])
    items = {"decisions": [item.model_dump() for item in minutes.decisions()],
             "action_items": [item.model_dump() for item in minutes.action_items()]}
    return minutes.trace or [], items


def answer_right(question: dict, answer: str) -> bool:
    if not question.get("answerable", True):
        return bool(NOT_MENTIONED.search(answer))
    said = squash(answer)
    return any(all(squash(k) in said for k in alternative) for alternative in question["accept"])


def numbers_in(text: str) -> set[str]:
    found = {str(int(n.replace(",", ""))) for n in re.findall(r"\d[\d,]*", text) if n.replace(",", "").isdigit()}
    found |= {str(SMALL_NUMBERS[w]) for w in re.findall(r"[a-z]+", text.lower()) if w in SMALL_NUMBERS}
    return found


def names_in(text: str) -> set[str]:
    return set(re.findall(r"(?<![.!?:\n]\s)(?<!^)(?<=\s)([A-Z][a-z]{2,})\b", text))


def invented_facts(outputs: list[str], transcript: str, title: str = "") -> list[str]:
    """Numbers and names in the outputs that the transcript never has (in the title only numbers:
    title case capitalizes every word)."""
    known_numbers, known_words = numbers_in(transcript), set(squash_words(transcript))
    invented = []
    for text in [title, *outputs]:
        invented += [n for n in re.findall(r"\d[\d,.]*\d|\d", text) if str(_as_int(n)) not in known_numbers]
    for text in outputs:
        invented += [name for name in names_in(text) if name.lower() not in known_words]
    return sorted(set(invented))


def squash_words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _as_int(number: str) -> int | str:
    digits = number.replace(",", "")
    return int(digits) if digits.isdigit() else digits


def meeting_stem(name: str, synth: str) -> str:
    """A meeting's files in --work: NAME.* spoken by espeak, NAME-SYNTH.* by another synthesizer."""
    return name if synth == "espeak" else f"{name}-{synth}"


def synthesize(script_path: Path, work: Path, synth: str = "espeak") -> Path:
    """The meeting's audio in `work`, spoken by samples/make_meeting.py unless it is there already; its
    .reference.txt and .expected.json lie beside it."""
    audio = work / f"{meeting_stem(script_path.stem, synth)}.wav"
    if not audio.exists():
        made = subprocess.run([sys.executable, str(REPO / "samples" / "make_meeting.py"), "--script", str(script_path),
                               "--out", str(audio), "--synth", synth], capture_output=True, text=True)
        if made.returncode != 0:
            raise SystemExit(f"{script_path.stem}: make_meeting failed: {made.stderr.strip()[-500:]}")
    return audio


def run_meeting(script_path: Path, work: Path, cli_args: list[str], rescore: bool = False, transcript: str = "asr",
                synth: str = "espeak", replayed: bool = False) -> Score:
    """Synthesize, run and score one meeting; with `rescore`, score the notes an earlier run left in `work`.
    `transcript`: "asr" runs `livesum file` on the audio; "reference" the same pipeline on the script's
    own words, "speakers" on them labelled with who spoke (benchmarks/reference_transcript.py).
    `synth`: the voices samples/make_meeting.py speaks it with."""
    script = tomllib.loads(script_path.read_text())
    name = script_path.stem
    stem = meeting_stem(name, synth)
    out = work / f"{stem}.notes"
    questions = script.get("questions", [])
    if not rescore:
        audio = synthesize(script_path, work, synth)
        # --force: a rerun replaces the notes of the run before
        command = [sys.executable, "-m", "livesum.cli", "file", str(audio), "--out", str(out), "-q", "--force", *cli_args]
        if transcript != "asr":
            command = [sys.executable, str(REPO / "benchmarks" / "reference_transcript.py"), str(work / f"{stem}.expected.json"),
                       "--out", str(out), *(["--speakers"] if transcript == "speakers" else []), *cli_args]
        for question in questions:
            command += ["--ask", question["question"]]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name}: livesum failed: {done.stderr.strip()[-500:]}")
    timed = work / f"{stem}.expected.json"  # the turns' times, as synthesized
    turns = json.loads(timed.read_text())["turns"] if timed.is_file() else []
    return score_notes(script, name, out, replayed, turns)


def score_notes(script: dict, name: str, out: Path, replayed: bool = False, turns: list[dict] | None = None) -> Score:
    """Score the notes a `livesum file --ask ...` run wrote to `out` against the script's annotations;
    `replayed`: its decisions and action items made again from its recorded model outputs (`replay`)."""
    questions = script.get("questions", [])
    lines = (out / "events.jsonl").read_text().splitlines()
    notes = next(json.loads(line) for line in lines if '"type":"notes"' in line.replace(" ", ""))
    transcript = (out / "transcript.txt").read_text()
    score = Score(meeting=name, audio_seconds=notes["duration"])
    if replayed and (again := replay(out)) is not None:
        rounds, items = again
        notes = {**notes, **items}
        (out / "notes_trace.replay.json").write_text(json.dumps(rounds, indent=1))
        score.funnel = funnel(script, rounds, notes)
    elif (out / "notes_trace.json").exists():
        score.funnel = funnel(script, json.loads((out / "notes_trace.json").read_text()), notes)
    matched = match_items(script.get("decisions", []), notes["decisions"])
    score.decisions = (len(matched), len(script.get("decisions", [])), len(notes["decisions"]))
    matched = match_items(script.get("action_items", []), notes["action_items"])
    score.actions = (len(matched), len(script.get("action_items", [])), len(notes["action_items"]))
    score.owners = (sum((c.get("owner") or "").lower() == e["owner"].lower() for e, c in matched), len(matched))
    people = label_people(turns or [], [json.loads(line) for line in lines if '"segment"' in line])
    by_voice = [people.get(owner, "") if LABEL.match(owner) else owner for owner in (c.get("owner") or "" for _, c in matched)]
    score.owners_by_voice = sum(owner.lower() == e["owner"].lower() for owner, (e, _) in zip(by_voice, matched))
    score.strict = (len(match_items(script.get("decisions", []), notes["decisions"], item_matches_strictly)),
                    len(match_items(script.get("action_items", []), notes["action_items"], item_matches_strictly)))
    answers = {a["question"]: a["text"] for a in notes["answers"]}
    for question in questions:
        answer = answers.get(question["question"], "")
        score.answers.append((question["question"], answer, answer_right(question, answer)))
    score.questions = (sum(right for _, _, right in score.answers), len(questions))
    outputs = [notes["summary"], *notes["key_points"], *answers.values()]
    outputs += [i["text"] for i in notes["decisions"] + notes["action_items"]]
    score.invented = invented_facts(outputs, transcript, notes["title"])
    finished = [json.loads(line) for line in lines if '"finished"' in line]
    detail = finished[-1]["detail"] if finished else ""
    busy = re.search(r"\bllm ([\d.]+) s", detail)
    score.llm_busy_seconds = float(busy.group(1)) if busy else None
    at_end = re.search(r"\bnotes ([\d.]+) s", detail)
    score.notes_seconds = float(at_end.group(1)) if at_end else None
    rss = re.search(r"peak RSS (\d+) MiB", detail)
    score.peak_rss_mib = float(rss.group(1)) if rss else None
    return score


def label_people(turns: list[dict], events: list[dict]) -> dict[str, str]:
    """Each speaker label of the run's final segments -> the person whose turns it overlaps most."""
    overlap: dict[str, dict[str, float]] = {}
    for event in events:
        if event.get("type") != "segment" or not event.get("final") or not event.get("speaker"):
            continue
        for turn in turns:
            shared = min(event["end"], turn["end"]) - max(event["start"], turn["start"])
            if shared > 0:
                person = overlap.setdefault(event["speaker"], {})
                person[turn["name"]] = person.get(turn["name"], 0.0) + shared
    return {label: max(people, key=people.get) for label, people in overlap.items()}


def ratio(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.0f}%)" if whole else "-"


def owners(score: Score) -> str:
    """Owners right by name, and in brackets by voice where unnamed labels add some."""
    extra = f" [{score.owners_by_voice} by voice]" if score.owners_by_voice != score.owners[0] else ""
    return ratio(*score.owners) + extra


def table(scores: list[Score]) -> str:
    rows = ["| meeting | audio s | decisions recall | decisions precision | actions recall | actions precision | owners | questions | invented | LLM busy / audio | notes at end s | peak RSS MiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    total = Score(meeting="total")
    for s in scores:
        busy = f"{s.llm_busy_seconds / s.audio_seconds:.2f}" if s.llm_busy_seconds is not None and s.audio_seconds else "-"
        rows.append(f"| {s.meeting} | {s.audio_seconds:.0f} | {ratio(s.decisions[0], s.decisions[1])} | {ratio(s.decisions[0], s.decisions[2])} | "
                    f"{ratio(s.actions[0], s.actions[1])} | {ratio(s.actions[0], s.actions[2])} | {owners(s)} | "
                    f"{ratio(*s.questions)} | {', '.join(s.invented) or 0} | {busy} | "
                    f"{f'{s.notes_seconds:.0f}' if s.notes_seconds is not None else '-'} | {f'{s.peak_rss_mib:.0f}' if s.peak_rss_mib else '-'} |")
        total.decisions = tuple(a + b for a, b in zip(total.decisions, s.decisions))
        total.actions = tuple(a + b for a, b in zip(total.actions, s.actions))
        total.owners = tuple(a + b for a, b in zip(total.owners, s.owners))
        total.owners_by_voice += s.owners_by_voice
        total.questions = tuple(a + b for a, b in zip(total.questions, s.questions))
        total.invented += s.invented
    rows.append(f"| **total** | {sum(s.audio_seconds for s in scores):.0f} | {ratio(total.decisions[0], total.decisions[1])} | "
                f"{ratio(total.decisions[0], total.decisions[2])} | {ratio(total.actions[0], total.actions[1])} | "
                f"{ratio(total.actions[0], total.actions[2])} | {owners(total)} | {ratio(*total.questions)} | "
                f"{len(total.invented)} | | | |")
    return "\n".join(rows)


def strict_table(scores: list[Score]) -> str:
    """Decisions and action items again under the strict rule (item_matches_strictly): recall and precision."""
    rows = ["| meeting | decisions recall | decisions precision | actions recall | actions precision |", "| --- | --- | --- | --- | --- |"]
    totals = [0, 0, 0, 0, 0, 0]
    for s in scores:
        cells = (s.strict[0], s.decisions[1], s.decisions[2], s.strict[1], s.actions[1], s.actions[2])
        totals = [a + b for a, b in zip(totals, cells)]
        rows.append(f"| {s.meeting} | {ratio(cells[0], cells[1])} | {ratio(cells[0], cells[2])} | {ratio(cells[3], cells[4])} | {ratio(cells[3], cells[5])} |")
    rows.append(f"| **total** | {ratio(totals[0], totals[1])} | {ratio(totals[0], totals[2])} | {ratio(totals[3], totals[4])} | {ratio(totals[3], totals[5])} |")
    return "\n".join(rows)


def funnel_table(scores: list[Score]) -> str:
    """Recall (expected found) and precision (listed right) at each stage, per kind, summed over meetings."""
    rows = ["| kind | " + " | ".join(FUNNEL_STAGES) + " |", "| --- |" + " --- |" * len(FUNNEL_STAGES)]
    for kind, key in KINDS:
        cells = []
        for stage in FUNNEL_STAGES:
            found = sum(s.funnel[kind][stage][0] for s in scores if s.funnel)
            right = sum(s.funnel[kind][stage][1] for s in scores if s.funnel)
            listed = sum(s.funnel[kind][stage][2] for s in scores if s.funnel)
            total = sum((s.decisions if kind == "decision" else s.actions)[1] for s in scores if s.funnel)
            cells.append(f"{listed} listed" if stage == "written" else f"found {found}/{total}, right {right}/{listed}")
        rows.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("meetings", nargs="*", help="script names under samples/meetings (default: all)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/livesum-notes-quality"), help="audio and notes go here")
    parser.add_argument("--json", type=Path, help="also write the scores as JSON")
    parser.add_argument("--rescore", action="store_true", help="score the notes already in --work, without running livesum")
    parser.add_argument("--replay", action="store_true", help="like --rescore, but decisions and action items are made again "
                        "from the model outputs the run recorded (notes_trace.json) by the current parse/ground/merge code")
    parser.add_argument("--transcript", choices=["asr", "reference", "speakers"], default="asr",
                        help="what the LM reads: Whisper's transcript (as users get), the script's own words, or those labelled by speaker")
    parser.add_argument("--synth", choices=["espeak", "festival"], default="espeak",
                        help="the voices the meetings are spoken with (samples/make_meeting.py --synth)")
    args, cli_args = parser.parse_known_args(argv)  # the rest goes to `livesum file` (--llm-model, --set, -c)
    args.work.mkdir(parents=True, exist_ok=True)
    names = args.meetings or sorted(p.stem for p in MEETINGS.glob("*.toml"))
    scores = [run_meeting(MEETINGS / f"{name}.toml", args.work, cli_args, args.rescore or args.replay, args.transcript, args.synth,
                          args.replay)
              for name in names]
    for score in scores:
        for question, answer, right in score.answers:
            print(f"[{score.meeting}] {'ok ' if right else 'BAD'} {question} -> {answer!r}", file=sys.stderr)
    print(table(scores))
    print("\nStrict matching (every keyword, numbers as digits; no fuzzy alternative):\n" + strict_table(scores))
    if any(s.funnel for s in scores):
        print("\nFunnel (all extraction rounds; notes one to one):\n" + funnel_table(scores))
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in scores], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
