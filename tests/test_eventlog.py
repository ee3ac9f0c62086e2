"""The session event log: seq-indexed replay from memory and file, one line per event, and the
repair of a log a killed server left open."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from livesum.events import Segment, parse_event
from livesum.server.eventlog import RECENT_EVENTS, EventLog, recover_interrupted
from livesum.server.protocol import Envelope


def text_of(n: int) -> str:
    return f"line {n} " + "x" * (n % 7) * 300  # lines of different lengths, some long


def segment_line(n: int) -> str:
    return Segment(final=True, start=n, end=n + 1, text=text_of(n)).model_dump_json()


async def read_all(event_log: EventLog, first: int) -> list[Envelope]:
    envelopes, seq = [], first
    while seq <= event_log.last_seq:
        texts, seq = await event_log.read(seq)
        envelopes += [Envelope.model_validate_json(text) for text in texts]
    return envelopes


async def test_replay_from_any_seq_reads_memory_and_file_in_order(tmp_path: Path) -> None:
    event_log = EventLog(tmp_path / "events.jsonl", "s-1")
    count = RECENT_EVENTS * 3 + 17  # most of it only on disk
    for n in range(1, count + 1):
        assert event_log.append(segment_line(n)) == n
    for first in (1, 2, count - RECENT_EVENTS - 1, count - 5, count):
        replayed = await read_all(event_log, first)
        assert [item.seq for item in replayed] == list(range(first, count + 1))
        assert {item.session for item in replayed} == {"s-1"}
        assert replayed[0].event.text == text_of(first) and replayed[-1].event.text == text_of(count)  # type: ignore[union-attr]
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(lines) == count and parse_event(lines[41]).text.startswith("line 42 ")  # line n is seq n
    event_log.close()


def test_a_log_is_created_once(tmp_path: Path) -> None:
    EventLog(tmp_path / "events.jsonl", "s").close()
    with pytest.raises(FileExistsError):
        EventLog(tmp_path / "events.jsonl", "s")


async def test_events_the_disk_refuses_are_kept_in_memory_and_the_file_stays_a_valid_prefix(tmp_path: Path) -> None:
    event_log = EventLog(tmp_path / "events.jsonl", "full-disk")
    for n in range(1, 11):
        event_log.append(segment_line(n))
    os.close(event_log._fd)  # the next write fails, as on a full disk
    event_log._fd = os.open(os.devnull, os.O_RDONLY)
    for n in range(11, 21):
        event_log.append(segment_line(n))
    assert event_log.write_error is not None
    assert [item.seq for item in await read_all(event_log, 1)] == list(range(1, 21))
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == 10
    event_log.close()


def test_recovery_cuts_a_torn_line_and_closes_the_record(tmp_path: Path) -> None:
    killed, finished = tmp_path / "killed", tmp_path / "finished"
    killed.mkdir()
    finished.mkdir()
    whole = segment_line(1) + "\n" + segment_line(2) + "\n"
    (killed / "events.jsonl").write_text(whole + segment_line(3)[:40])  # killed mid-write
    done = whole + '{"type":"status","state":"finished","position":0.0}\n'
    (finished / "events.jsonl").write_text(done)
    assert recover_interrupted(tmp_path) == ["killed"]
    events = [parse_event(line) for line in (killed / "events.jsonl").read_text().splitlines()]
    assert [event.type for event in events] == ["segment", "segment", "error", "status"]
    assert events[2].fatal and events[3].state == "finished"
    assert (finished / "events.jsonl").read_text() == done
    assert recover_interrupted(tmp_path) == []  # closed once
    assert json.loads((killed / "events.jsonl").read_text().splitlines()[1])["text"].startswith("line 2")


def test_recovery_writes_the_transcripts_again_from_the_log(tmp_path: Path) -> None:
    # A writer killed while it gathered a sentence: the log has both finals, transcript.txt only the first
    # line, the .vtt nothing past its header; there is no .srt (the session did not ask for one).
    killed = tmp_path / "killed"
    killed.mkdir()
    finals = [Segment(final=True, start=0.0, end=2.0, text="We keep the roaster.", speaker="Ana"),
              Segment(final=True, start=2.5, end=4.0, text="Tom will call them", speaker="Ana")]
    (killed / "events.jsonl").write_text("".join(segment.model_dump_json() + "\n" for segment in finals))
    (killed / "transcript.txt").write_text("[00:00:00] Ana: We keep the roaster.\n")
    (killed / "transcript.vtt").write_text("WEBVTT\n\n")
    assert recover_interrupted(tmp_path) == ["killed"]
    assert (killed / "transcript.txt").read_text().splitlines() == ["[00:00:00] Ana: We keep the roaster.",
                                                                    "[00:00:02] Ana: Tom will call them"]
    assert "<v Ana>Tom will call them" in (killed / "transcript.vtt").read_text()
    assert not (killed / "transcript.srt").exists()
