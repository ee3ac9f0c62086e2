"""A session's event log: `events.jsonl`, append-only, indexed by seq, the one source of replay.

Line n of the file is the event numbered n (seq n). Each line goes to disk in one `write` on an
O_APPEND descriptor as it is made, so a server killed at any moment leaves a file that is valid
up to its last complete line. The byte offset of every line is kept (8 bytes an event), so a client
that resumes, or a watcher that falls behind, reads exactly the events after its seq, in bounded
batches, from memory (the most recent ones) or from the file in a worker thread, never on the
event loop. Nothing here waits on a reader: a slow reader only lags behind in the file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from array import array
from collections import deque
from pathlib import Path

from livesum.events import Error, Status, parse_event
from livesum.outputs.files import OUTPUT_FILES, TranscriptWriter

log = logging.getLogger(__name__)

RECENT_EVENTS = 1024  # lines kept in memory: live readers and short resumes never touch the disk
READ_BATCH_BYTES = 1 << 20  # a reader's batch from the file: bounded memory per reader
MAX_UNWRITTEN = 20_000  # lines kept in memory after the disk refused a write (disk full)
FILE_NAME = "events.jsonl"


class EventLog:
    """Append event JSON lines; read envelope texts by seq."""

    def __init__(self, path: Path, session_id: str) -> None:
        """Creates `path`; it must not exist (a session id is never reused, so no record is overwritten)."""
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._prefix = '{"session":' + json.dumps(session_id) + ',"seq":'
        self._offsets = array("q")  # offsets[n - 1] = where line n starts; -1 = not on disk
        self._size = 0
        self._recent: deque[str] = deque(maxlen=RECENT_EVENTS)
        self._unwritten: dict[int, str] = {}
        self.write_error: str | None = None

    @property
    def last_seq(self) -> int:
        return len(self._offsets)

    def append(self, line: str) -> int:
        """Writes one event line; returns its seq. A disk error keeps the line in memory (bounded)
        and stops writing: the file stays a valid prefix of the record."""
        seq = len(self._offsets) + 1
        offset = -1
        if self.write_error is None:
            data = (line + "\n").encode()
            try:
                written = 0
                while written < len(data):
                    written += os.write(self._fd, data[written:])
                offset, self._size = self._size, self._size + len(data)
            except OSError as error:
                self.write_error = f"{self.path}: {error.strerror or error}"
                log.error("event log %s: %s; later events are kept in memory only", self.path, self.write_error)
        if offset < 0 and len(self._unwritten) < MAX_UNWRITTEN:
            self._unwritten[seq] = line
        self._offsets.append(offset)
        self._recent.append(line)
        return seq

    def envelope(self, seq: int, line: str) -> str:
        """The wire form `{"session", "seq", "event"}` of a stored line, without parsing it."""
        return f"{self._prefix}{seq},\"event\":{line}}}"

    async def read(self, first: int) -> tuple[list[str], int]:
        """(envelope texts from seq `first` on, the seq to read next): one bounded batch. Events the
        disk refused and memory could not keep are skipped."""
        last = self.last_seq
        if first > last:
            return [], first
        oldest_recent = last - len(self._recent) + 1
        if first >= oldest_recent:
            lines = list(self._recent)[first - oldest_recent:]
            return [self.envelope(first + index, line) for index, line in enumerate(lines)], last + 1
        if self._offsets[first - 1] < 0:
            line = self._unwritten.get(first)
            return ([self.envelope(first, line)] if line is not None else []), first + 1
        stop = min(oldest_recent, self._first_unwritten(first, oldest_recent))
        start_byte = self._offsets[first - 1]
        end_byte = self._offsets[stop - 1] if stop <= last and self._offsets[stop - 1] >= 0 else self._size
        end_byte = min(end_byte, start_byte + READ_BATCH_BYTES)
        data = await asyncio.to_thread(_read_range, self.path, start_byte, end_byte - start_byte)
        texts: list[str] = []
        for line in data.split(b"\n")[:-1]:  # a batch cut inside a line leaves that line for the next one
            texts.append(self.envelope(first + len(texts), line.decode()))
        if not texts:  # one line longer than a batch: read it whole
            length = (self._offsets[first] if first < last and self._offsets[first] >= 0 else self._size) - start_byte
            line = (await asyncio.to_thread(_read_range, self.path, start_byte, length)).rstrip(b"\n").decode()
            texts.append(self.envelope(first, line))
        return texts, first + len(texts)

    def _first_unwritten(self, first: int, stop: int) -> int:
        """The first seq in [first, stop) that is not on disk, or stop."""
        if self.write_error is None:
            return stop
        for seq in range(first, stop):
            if self._offsets[seq - 1] < 0:
                return seq
        return stop

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _read_range(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def recover_interrupted(data_dir: Path) -> list[str]:
    """Session folders a killed server left unfinished: the torn last line (if any) is cut off and
    an error plus a `finished` status are appended, so every log ends in a valid, closed record.
    Returns the session ids it closed. Runs once at startup, before any session can start."""
    closed: list[str] = []
    if not data_dir.is_dir():
        return closed
    for folder in sorted(data_dir.iterdir()):
        path = folder / FILE_NAME
        if not path.is_file():
            continue
        try:
            if _close_interrupted(path):
                _rewrite_transcripts(folder)
                closed.append(folder.name)
        except (OSError, ValueError) as error:
            log.warning("cannot check %s: %s", path, error)
    return closed


def _close_interrupted(path: Path) -> bool:
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        tail_start = max(0, size - 65536)
        handle.seek(tail_start)
        tail = handle.read()
        complete = tail.rfind(b"\n") + 1
        if tail_start and not complete:
            return False  # a last line over 64 KiB: leave the file as it is
        last_line = tail[:complete - 1].rsplit(b"\n", 1)[-1] if complete else b""
        if last_line and b'"type":"status"' in last_line and b'"state":"finished"' in last_line and complete == len(tail):
            return False
        handle.truncate(tail_start + complete)  # drop a torn last line
        handle.seek(0, os.SEEK_END)
        message = "the server stopped before this session finished; its transcript is kept up to here, its notes were not made"
        for event in (Error(message=message, fatal=True, source="server"), Status(state="finished", detail="interrupted")):
            handle.write(event.model_dump_json().encode() + b"\n")
    return True


def _rewrite_transcripts(folder: Path) -> None:
    """The transcript files again from the closed log: a killed writer loses the sentence it was still
    gathering (and can be a line behind the log); the log has every final, so the files follow it."""
    formats = {kind for kind, name in OUTPUT_FILES.items() if kind in ("txt", "srt", "vtt") and (folder / name).exists()}
    if not formats:
        return
    writer = TranscriptWriter(folder, formats)
    try:
        with (folder / FILE_NAME).open(encoding="utf-8") as lines:
            for line in lines:
                writer.handle(parse_event(line))
    finally:
        writer.close()
