from pathlib import Path

from livesum.events import ActionItem, Answer, Decision, Notes, Segment, Summary, parse_event
from livesum.llm.notes import bullet_lines, first_line, whole_sentences
from livesum.outputs.files import OUTPUT_FILES, existing_outputs, file_sinks, render_notes, timestamp


def test_timestamps() -> None:
    assert timestamp(3723.456, ",") == "01:02:03,456"
    assert timestamp(59.9996, ".") == "00:01:00.000"


def test_writers_produce_every_format(tmp_path: Path) -> None:
    events = [
        Segment(final=False, start=0.0, end=1.0, text="hel"),
        Segment(final=True, start=0.0, end=1.5, text="Hello there."),
        Segment(final=True, start=61.0, end=62.25, text="Second line."),
        Summary(start=0.0, end=62.25, text="A greeting."),
        Notes(title="T", summary="A greeting.", duration=62.25),
    ]
    sinks = file_sinks(tmp_path, ["txt", "srt", "vtt", "jsonl", "md"])
    for event in events:
        for sink in sinks:
            sink.handle(event)
    for sink in sinks:
        sink.close()
    assert (tmp_path / "transcript.txt").read_text() == "[00:00:00] Hello there.\n[00:01:01] Second line.\n"
    assert (tmp_path / "transcript.srt").read_text() == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n2\n00:01:01,000 --> 00:01:02,250\nSecond line.\n\n"
    )
    assert (tmp_path / "transcript.vtt").read_text().startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.")
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [parse_event(line) for line in lines] == events
    assert (tmp_path / "notes.md").read_text().startswith("# T\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(OUTPUT_FILES.values())


def test_existing_outputs_are_those_the_formats_would_write(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("earlier")
    (tmp_path / "my-notes.txt").write_text("the user's own")
    assert existing_outputs(tmp_path, ["txt", "md"]) == ["notes.md"]
    assert existing_outputs(tmp_path, ["txt", "srt", "jsonl"]) == []
    assert existing_outputs(tmp_path / "absent", ["md"]) == []


def test_notes_markdown_has_every_section() -> None:
    notes = Notes(
        title="Launch review",
        summary="We reviewed the launch.",
        key_points=["Budget is fine"],
        decisions=[Decision(text="We decided to ship on Friday.", at=65.0)],
        action_items=[ActionItem(text="Maria will update the docs.", owner="Maria", at=70.0)],
        answers=[Answer(question="When do we ship?", text="Friday.", at=80.0, source_at=61.0)],
        duration=90.0,
    )
    text = render_notes(notes)
    for expected in ["# Launch review", "## Summary", "- Budget is fine", "- We decided to ship on Friday. _(00:01:05)_",
                     "- [ ] **Maria**: Maria will update the docs.", "**Q: When do we ship?**", "Friday. _(00:01:01)_"]:
        assert expected in text


def test_model_output_cleanup() -> None:
    assert bullet_lines("Key points:\n- one\n2) two\n* one\n\n• three") == ["Key points:", "one", "two", "three"]
    assert first_line('\n  "Title: Quarterly planning"\nmore', "x") == "Quarterly planning"
    assert first_line("", "fallback") == "fallback"
    assert first_line("This meeting is a great example of how a team can work, together and more", "x") == (
        "This meeting is a great example of how a team can work"
    )
    assert whole_sentences("Ships in April. Maria owns the") == "Ships in April."
    assert whole_sentences("No full stop at all") == "No full stop at all"
    assert whole_sentences('He said "done."') == 'He said "done."'
