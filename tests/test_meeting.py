"""End to end on synthesized meetings (real espeak-ng speech, real Whisper, the real default LM, the
CLI as a user runs it). These check behaviour that must hold whatever the model writes: every listed
decision and action item rests on words that were said, every owner is a person of the meeting,
every question gets an answer, key points do not echo the instruction, and the rolling summaries of
a meeting longer than the window cover it in order (on the fast profile: the default model on a
meeting twice its window would take CI a quarter of an hour). How *right* the notes are is measured
by benchmarks/notes_quality.py on eight meetings, six of them held out of the tests; one reduced
check of it runs here."""

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import CPU_PROFILE, REPO, SAMPLES, run_cli
from livesum.events import Notes, Segment, Summary, parse_event
from livesum.llm.minutes import KEY_POINTS_INSTRUCTION, locate, names_in, not_echo

NATURAL_MEETING = SAMPLES / "meetings" / "garden_committee.toml"
# Of garden_committee's 3 decisions + 4 action items and 7 questions (2 unanswerable). The default model
# measured 2 items right of 7 listed and 2-5 questions right there over runs (the transcript varies a
# little between runs; on 2026-12-02 "300 and 10 pounds" missed the scorer's "310"); SmolLM2 0 items and
# 2 questions: the items floor is what tells a fallback apart.
LONG_MINUTES = 5
# The fast profile with half its window and a summary every 90 s: five minutes of meeting are then
# about twice the window and four rolling summaries, what eight minutes were on the profile as it is.
LONG_RUN_SETTINGS = {"llm.engine.window": 384, "llm.summary_every_seconds": 90}
QUALITY_FLOOR = {"items found": 1, "items precision": 0.15, "questions right": 2}


def synthesize(script: Path, audio: Path, minutes: float | None = None) -> None:
    """make_meeting.py as a user runs it; `minutes` keeps the whole turns that fit."""
    limit = ["--minutes", str(minutes)] if minutes is not None else []
    made = subprocess.run([sys.executable, str(SAMPLES / "make_meeting.py"), "--script", str(script), "--out", str(audio), *limit],
                          capture_output=True, text=True, cwd=REPO)
    assert made.returncode == 0, made.stderr


def events_of(out: Path) -> list:
    return [parse_event(line) for line in (out / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def natural_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("natural")
    audio = work / "garden.wav"
    synthesize(NATURAL_MEETING, audio)
    script = tomllib.loads(NATURAL_MEETING.read_text())
    asks = [arg for question in script["questions"] for arg in ("--ask", question["question"])]
    out = work / "notes"
    result = run_cli("file", str(audio), "--out", str(out), "-q", *asks, timeout=1200)
    assert result.returncode == 0, result.stderr
    return out, script


@pytest.mark.slow
def test_natural_meeting_items_rest_on_what_was_said(natural_run: tuple[Path, dict]) -> None:
    out, _ = natural_run
    events = events_of(out)
    segments = [e for e in events if isinstance(e, Segment) and e.final]
    notes = next(e for e in events if isinstance(e, Notes))
    people = names_in(segments)
    for item in [*notes.decisions, *notes.action_items]:
        assert item.evidence and locate(item.evidence, segments) is not None, f"not said: {item}"
        assert item.at is not None and 0 <= item.at <= notes.duration
    for item in notes.action_items:
        assert item.owner is None or item.owner in people, f"owner {item.owner!r} is nobody in the meeting {people}"


@pytest.mark.slow
def test_natural_meeting_notes_answer_every_question_and_do_not_echo(natural_run: tuple[Path, dict]) -> None:
    out, script = natural_run
    notes = next(e for e in events_of(out) if isinstance(e, Notes))
    assert [a.question for a in notes.answers] == [q["question"] for q in script["questions"]]
    assert all(a.text.strip() for a in notes.answers)
    assert notes.title.strip() and len(notes.title.split()) <= 12
    assert notes.summary.strip()
    assert notes.key_points == not_echo(notes.key_points, KEY_POINTS_INSTRUCTION)
    assert "## Decisions" in (out / "notes.md").read_text()


@pytest.fixture(scope="module")
def long_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first minutes of the sample meeting: about twice the LM window, so most of it is evicted
    before the end (the whole 22 minutes took CI a quarter of its time budget)."""
    work = tmp_path_factory.mktemp("meeting")
    audio = work / "meeting.wav"
    synthesize(SAMPLES / "meeting_script.toml", audio, LONG_MINUTES)
    out = work / "notes"
    overrides = [arg for key, value in LONG_RUN_SETTINGS.items() for arg in ("--set", f"{key}={value}")]
    result = run_cli("file", str(audio), "--out", str(out), "-q", "--config", CPU_PROFILE, *overrides,
                     "--set", "asr.diarize=false", "--ask", "What did the team decide about the launch date?", timeout=1800)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow
def test_rolling_summaries_cover_a_long_meeting_in_order(long_run: Path) -> None:
    events = events_of(long_run)
    summaries = [e for e in events if isinstance(e, Summary)]
    every = LONG_RUN_SETTINGS["llm.summary_every_seconds"]
    notes_event = next(e for e in events if isinstance(e, Notes))
    assert len(summaries) >= notes_event.duration // every  # one per summary_every_seconds of audio, plus the final one
    assert all(s.text.strip() for s in summaries)
    assert [s.end for s in summaries] == sorted(s.end for s in summaries)
    assert summaries[-1].final
    notes = [e for e in events if isinstance(e, Notes)]
    assert len(notes) == 1 and notes[0].duration > (LONG_MINUTES - 1) * 60
    segments = [e for e in events if isinstance(e, Segment) and e.final]
    assert sum(len(s.text.split()) for s in segments) > 1.5 * LONG_RUN_SETTINGS["llm.engine.window"]  # a word is a token or more
    assert notes[0].title and notes[0].summary
    assert notes[0].answers and notes[0].answers[0].text
    # Items extracted at rolling summaries long before the end are still in the notes, and all were said.
    items = [*notes[0].decisions, *notes[0].action_items]
    assert all(item.evidence and locate(item.evidence, segments) is not None for item in items)


def notes_quality_module():
    """benchmarks/notes_quality.py, imported by path: its scorer is the one the benchmark reports."""
    spec = importlib.util.spec_from_file_location("notes_quality", REPO / "benchmarks" / "notes_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_reduced_quality_check_on_the_default_model(natural_run: tuple[Path, dict]) -> None:
    """The benchmark's scoring on one meeting, with floors well under what the default model measured
    there (docs/notes-quality.md), so that falling back to notes without items (the cue-phrase
    extractor, or SmolLM2: 0 items, 2 of 7 answers) fails CI, while one answer more or less does not."""
    out, script = natural_run
    score = notes_quality_module().score_notes(script, "garden_committee", out)
    found = score.decisions[0] + score.actions[0]
    listed = score.decisions[2] + score.actions[2]
    assert found >= QUALITY_FLOOR["items found"], score
    assert found / max(listed, 1) >= QUALITY_FLOOR["items precision"], score
    assert score.questions[0] >= QUALITY_FLOOR["questions right"], score.answers
    assert not [fact for fact in score.invented if fact[:1].isdigit()], score.invented
