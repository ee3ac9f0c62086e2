"""End to end on the synthesized meeting: its notes must carry the decisions and action items
that its script contains. Real espeak-ng speech, real Whisper, real SmolLM2, the CLI as a user
runs it. The longest test of the suite (a 20+ minute meeting), so it is marked slow."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SAMPLES, run_cli
from livesum.events import Notes, Summary, parse_event


@pytest.fixture(scope="module")
def meeting_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("meeting")
    audio = work / "meeting.wav"
    made = subprocess.run([sys.executable, str(SAMPLES / "make_meeting.py"), "--out", str(audio)], capture_output=True, text=True, cwd=REPO)
    assert made.returncode == 0, made.stderr
    out = work / "notes"
    result = run_cli(
        "file", str(audio), "--out", str(out), "-q",
        "--ask", "What did the team decide about the launch date?",
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr
    # What the audio contains, written by make_meeting.py from the script's marked turns.
    return out, json.loads((work / "meeting.expected.json").read_text())


def squash(text: str) -> str:
    """Letters and digits only: "feed back" and "feedback" are the same words to a reader."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def mentions(section: str, keywords: list[str]) -> bool:
    """Some single bullet of the section holds every keyword."""
    bullets = [squash(line) for line in section.splitlines() if line.startswith("- ")]
    return any(all(squash(keyword) in bullet for keyword in keywords) for bullet in bullets)


@pytest.mark.slow
def test_notes_list_every_decision(meeting_run: tuple[Path, dict]) -> None:
    out, script = meeting_run
    section = (out / "notes.md").read_text().split("## Decisions")[1].split("## Action items")[0]
    missing = [d["text"] for d in script["decisions"] if not mentions(section, d["keywords"])]
    assert not missing, f"decisions missing from notes.md: {missing}\n{section}"


@pytest.mark.slow
def test_notes_list_every_action_item_with_its_owner(meeting_run: tuple[Path, dict]) -> None:
    out, script = meeting_run
    section = (out / "notes.md").read_text().split("## Action items")[1].split("## Questions")[0]
    missing = [a["text"] for a in script["action_items"] if not mentions(section, [a["owner"], *a["keywords"]])]
    assert not missing, f"action items missing from notes.md: {missing}\n{section}"


@pytest.mark.slow
def test_rolling_summaries_cover_the_meeting_in_order(meeting_run: tuple[Path, dict]) -> None:
    out, _ = meeting_run
    events = [parse_event(line) for line in (out / "events.jsonl").read_text().splitlines()]
    summaries = [e for e in events if isinstance(e, Summary)]
    assert len(summaries) >= 10  # 22 minutes at one summary per 120 s of audio, plus the final one
    assert all(s.text.strip() for s in summaries)
    assert [s.end for s in summaries] == sorted(s.end for s in summaries)
    assert summaries[-1].final
    notes = [e for e in events if isinstance(e, Notes)]
    assert len(notes) == 1 and notes[0].duration > 20 * 60
    assert notes[0].title and notes[0].summary
    assert notes[0].answers and notes[0].answers[0].text
