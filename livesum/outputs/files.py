"""File writers. Each appends as events arrive and flushes, so whatever was transcribed before
a crash or a broken input is already on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Protocol

from livesum.events import Event, Notes, Segment

# The file each output format writes into the output folder.
OUTPUT_FILES = {"txt": "transcript.txt", "srt": "transcript.srt", "vtt": "transcript.vtt", "jsonl": "events.jsonl", "md": "notes.md"}


class EventSink(Protocol):
    def handle(self, event: Event) -> None: ...

    def close(self) -> None: ...


def timestamp(seconds: float, decimal: str) -> str:
    """SRT uses '00:01:02,345', WebVTT '00:01:02.345'."""
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


class _LineFile:
    def __init__(self, path: Path, header: str = "") -> None:
        self.stream: IO[str] = path.open("w", encoding="utf-8")
        if header:
            self.write(header)

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()


class JsonlWriter(_LineFile):
    """events.jsonl: every event, one JSON object a line, in the order they were emitted."""

    def handle(self, event: Event) -> None:
        self.write(event.model_dump_json() + "\n")


class TranscriptWriter:
    """transcript.txt / .srt / .vtt from final segments; partials are for screens, not files."""

    def __init__(self, out_dir: Path, formats: set[str]) -> None:
        self.files: dict[str, _LineFile] = {}
        if "txt" in formats:
            self.files["txt"] = _LineFile(out_dir / OUTPUT_FILES["txt"])
        if "srt" in formats:
            self.files["srt"] = _LineFile(out_dir / OUTPUT_FILES["srt"])
        if "vtt" in formats:
            self.files["vtt"] = _LineFile(out_dir / OUTPUT_FILES["vtt"], "WEBVTT\n\n")
        self.count = 0

    def handle(self, event: Event) -> None:
        if not isinstance(event, Segment) or not event.final:
            return
        self.count += 1
        if "txt" in self.files:
            self.files["txt"].write(f"[{timestamp(event.start, '.')[:-4]}] {event.text}\n")
        if "srt" in self.files:
            span = f"{timestamp(event.start, ',')} --> {timestamp(event.end, ',')}"
            self.files["srt"].write(f"{self.count}\n{span}\n{event.text}\n\n")
        if "vtt" in self.files:
            span = f"{timestamp(event.start, '.')} --> {timestamp(event.end, '.')}"
            self.files["vtt"].write(f"{span}\n{event.text}\n\n")

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()


def render_notes(notes: Notes) -> str:
    """notes.md: title, summary, key points, decisions, action items, answers."""
    minutes, seconds = divmod(int(round(notes.duration)), 60)
    lines = [f"# {notes.title}", "", f"_Duration: {minutes} min {seconds:02d} s_", "", "## Summary", "", notes.summary or "_(none)_", ""]
    lines += ["## Key points", ""] + ([f"- {point}" for point in notes.key_points] or ["_(none)_"]) + [""]
    lines += ["## Decisions", ""]
    lines += [f"- {item.text}" + (f" _({timestamp(item.at, '.')[:-4]})_" if item.at is not None else "") for item in notes.decisions] or ["_(none recorded)_"]
    lines += ["", "## Action items", ""]
    lines += [
        "- [ ] " + (f"**{item.owner}**: " if item.owner else "") + item.text + (f" _({timestamp(item.at, '.')[:-4]})_" if item.at is not None else "")
        for item in notes.action_items
    ] or ["_(none recorded)_"]
    if notes.answers:
        lines += ["", "## Questions", ""]
        for answer in notes.answers:
            said = f" _({timestamp(answer.source_at, '.')[:-4]})_" if answer.source_at is not None else ""
            lines += [f"**Q: {answer.question}**", "", answer.text + said, ""]
    return "\n".join(lines).rstrip() + "\n"


class NotesWriter:
    """notes.md, written when the Notes event arrives at the end of the stream."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / OUTPUT_FILES["md"]

    def handle(self, event: Event) -> None:
        if isinstance(event, Notes):
            self.path.write_text(render_notes(event), encoding="utf-8")

    def close(self) -> None:
        pass


def existing_outputs(out_dir: Path, formats: list[str]) -> list[str]:
    """The files these formats would write that `out_dir` already holds (an earlier run's)."""
    return [OUTPUT_FILES[kind] for kind in formats if (out_dir / OUTPUT_FILES[kind]).exists()]


def file_sinks(out_dir: Path, formats: list[str]) -> list[EventSink]:
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(formats)
    sinks: list[EventSink] = []
    if wanted & {"txt", "srt", "vtt"}:
        sinks.append(TranscriptWriter(out_dir, wanted))
    if "jsonl" in wanted:
        sinks.append(JsonlWriter(out_dir / OUTPUT_FILES["jsonl"]))
    if "md" in wanted:
        sinks.append(NotesWriter(out_dir))
    return sinks


def write_notes_trace(out_dir: Path, trace: list[dict] | None) -> None:
    """notes_trace.json: the extraction rounds behind the notes (`output.notes_trace`), written at the end."""
    if trace is not None:
        (out_dir / "notes_trace.json").write_text(json.dumps(trace, indent=1), encoding="utf-8")
