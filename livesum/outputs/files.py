"""File writers. Each appends as events arrive and flushes, so whatever was transcribed before
a crash or a broken input is already on disk."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import IO, Protocol

from livesum.events import Event, Notes, Segment
from livesum.sentences import ends_sentence

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


LINE_GAP_SECONDS = 2.0  # a pause longer than this starts a new line even mid-sentence
LINE_MAX_CHARS = 400  # unpunctuated speech still breaks into lines


def continues(line: Segment, segment: Segment) -> bool:
    """Whether `segment` carries on the line `line` (same speaker, the sentence not ended, no long pause).

    Live finals are committed a few words at a time; a reader wants sentences.
    """
    return (
        segment.speaker == line.speaker
        and not ends_sentence(line.text)
        and segment.start - line.end <= LINE_GAP_SECONDS
        and len(line.text) + len(segment.text) < LINE_MAX_CHARS
    )


def extend_line(line: Segment, segment: Segment) -> Segment:
    return line.model_copy(update={"end": max(line.end, segment.end), "text": f"{line.text} {segment.text.strip()}"})


def spoken_text(segment: Segment) -> str:
    """'Name: text' where the speaker is known (txt, srt and the terminal)."""
    return f"{segment.speaker}: {segment.text}" if segment.speaker else segment.text


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
    """transcript.txt / .srt / .vtt from final segments, a line per sentence of a speaker's turn (the
    pieces a live stream commits are joined); partials are for screens, not files. A line is written as
    soon as its sentence ends, the speaker changes or the stream closes."""

    def __init__(self, out_dir: Path, formats: set[str]) -> None:
        self.files: dict[str, _LineFile] = {}
        if "txt" in formats:
            self.files["txt"] = _LineFile(out_dir / OUTPUT_FILES["txt"])
        if "srt" in formats:
            self.files["srt"] = _LineFile(out_dir / OUTPUT_FILES["srt"])
        if "vtt" in formats:
            self.files["vtt"] = _LineFile(out_dir / OUTPUT_FILES["vtt"], "WEBVTT\n\n")
        self.count = 0
        self.line: Segment | None = None  # the sentence being gathered

    def handle(self, event: Event) -> None:
        if not isinstance(event, Segment) or not event.final or not event.text.strip():
            return
        if self.line is not None and continues(self.line, event):
            self.line = extend_line(self.line, event)
        else:
            self._write_line()
            self.line = event
        if ends_sentence(self.line.text):
            self._write_line()

    def _write_line(self) -> None:
        line, self.line = self.line, None
        if line is None:
            return
        self.count += 1
        if "txt" in self.files:
            self.files["txt"].write(f"[{timestamp(line.start, '.')[:-4]}] {spoken_text(line)}\n")
        if "srt" in self.files:
            span = f"{timestamp(line.start, ',')} --> {timestamp(line.end, ',')}"
            self.files["srt"].write(f"{self.count}\n{span}\n{spoken_text(line)}\n\n")
        if "vtt" in self.files:
            span = f"{timestamp(line.start, '.')} --> {timestamp(line.end, '.')}"
            text = html.escape(line.text, quote=False)
            voice = f"<v {html.escape(line.speaker.replace('>', ''), quote=False)}>" if line.speaker else ""
            self.files["vtt"].write(f"{span}\n{voice}{text}\n\n")

    def close(self) -> None:
        self._write_line()
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
