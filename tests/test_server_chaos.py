"""`livesum serve` as a real subprocess under faults: SIGTERM and kill -9 mid-speech, floods of
connections, bytes and garbage. Bounded in count and time; the models are the fast profile's."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from conftest import REPO
from livesum.events import Notes, Segment, parse_event
from livesum.server.protocol import Envelope
from test_server import FRAME_BYTES, closed_with, espeak_pcm, send_audio, speech_pcm, start, welcome

READING = "The quarterly budget review is moved to Thursday. Maria will send the spreadsheet to the whole team before noon."


class ServeProcess:
    """`livesum serve` in its own process, on a free port, as a user runs it."""

    def __init__(self, data_dir: Path, *settings: str) -> None:
        command = [sys.executable, "-m", "livesum.cli", "serve", "--port", "0", "--data-dir", str(data_dir),
                   "--config", str(REPO / "configs" / "cpu.toml"), "--set", "output.console=false",
                   *[item for setting in settings for item in ("--set", setting)]]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.port = int(self.wait_for(r"listening on wss?://[^:]+:(\d+)", 300).group(1))

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The next line of its stderr, not read by an earlier wait, that matches `pattern` (a deadline guard, not a timing check)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.process.poll() is None, "".join(self.stderr)
                continue
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no {pattern!r} from livesum serve:\n{''.join(self.stderr)}")

    def url(self, session: str) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream?session={session}"

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 600) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


@pytest.fixture
def spawned() -> Iterator[list[ServeProcess]]:
    """Every server a test starts is gone when it ends, whatever happened."""
    servers: list[ServeProcess] = []
    yield servers
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(60)


class Speaker(threading.Thread):
    """One client streaming speech in real time into its own session, collecting what it receives."""

    def __init__(self, url: str, pcm: bytes) -> None:
        super().__init__(daemon=True)
        self.url, self.pcm = url, pcm
        self.received: list[Envelope] = []
        self.close_code: int | None = None
        self.heard = threading.Event()  # a final segment came back: the session is mid-speech
        self.stop_sending = threading.Event()

    def run(self) -> None:
        with connect(self.url, max_size=None, max_queue=None, ping_interval=None) as connection:
            start(connection)
            self.received.append(welcome(connection))
            reader = threading.Thread(target=self._read, args=(connection,), daemon=True)
            reader.start()
            with contextlib.suppress(ConnectionClosed):
                for offset in range(0, len(self.pcm), FRAME_BYTES):
                    if self.stop_sending.is_set():
                        break
                    connection.send(self.pcm[offset: offset + FRAME_BYTES])
                    time.sleep(FRAME_BYTES / 32000)
            reader.join(600)

    def _read(self, connection: ClientConnection) -> None:
        try:
            while True:
                envelope = Envelope.model_validate_json(connection.recv(600))
                self.received.append(envelope)
                if isinstance(envelope.event, Segment) and envelope.event.final:
                    self.heard.set()
        except ConnectionClosed as closed:
            self.close_code = closed.rcvd.code if closed.rcvd else None


def speaking(server: ServeProcess, prefix: str, tmp_path: Path) -> list[Speaker]:
    """Two sessions streaming speech in real time, each with a caption back: mid-speech."""
    pcm = speech_pcm() + espeak_pcm(READING, tmp_path)
    speakers = [Speaker(server.url(f"{prefix}-{n}"), pcm) for n in range(2)]
    for speaker in speakers:
        speaker.start()
    for speaker in speakers:
        assert speaker.heard.wait(300), "no caption came back"
    return speakers


@pytest.mark.slow
def test_sigterm_mid_speech_stops_accepting_finishes_every_session_with_notes_and_exits_0(tmp_path: Path, spawned: list[ServeProcess]) -> None:
    server = ServeProcess(tmp_path / "sessions")
    spawned.append(server)
    speakers = speaking(server, "term", tmp_path)
    server.process.send_signal(signal.SIGTERM)
    server.wait_for(r"livesum serve: stopping", 60)  # the signal reached the event loop
    refused = None
    deadline = time.monotonic() + 60
    while refused is None and time.monotonic() < deadline:  # the listener closes at once
        try:
            with connect(server.url("too-late"), open_timeout=5):
                time.sleep(0.1)
        except (OSError, InvalidStatus, InvalidMessage, TimeoutError, ConnectionClosed) as error:
            # InvalidMessage: the kernel had queued the connection when the listener closed, and it was
            # closed unanswered: refused as well. ConnectionClosed: opened as the listener closed, then
            # dropped without a session (the folder check below).
            refused = error
    assert refused is not None, "the server kept accepting connections after SIGTERM"
    for speaker in speakers:
        speaker.join(600)
    assert server.process.wait(600) == 0, "".join(server.stderr)  # after the one SIGTERM (a second one hurries the exit)
    for speaker in speakers:
        speaker.stop_sending.set()
        assert speaker.close_code == 1000
        assert any(isinstance(item.event, Notes) for item in speaker.received), [i.event.type for i in speaker.received]
        folder = tmp_path / "sessions" / speaker.url.rsplit("=", 1)[1]
        assert (folder / "notes.md").read_text().startswith("# ")
    assert not (tmp_path / "sessions" / "too-late").exists()


def events_in(folder: Path) -> list:
    return [parse_event(line) for line in (folder / "events.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_kill_9_mid_speech_leaves_valid_logs_and_transcripts_after_a_restart(tmp_path: Path, spawned: list[ServeProcess]) -> None:
    data_dir = tmp_path / "sessions"
    server = ServeProcess(data_dir)
    spawned.append(server)
    speakers = speaking(server, "killed", tmp_path)
    server.stop(signal.SIGKILL)
    for speaker in speakers:
        speaker.stop_sending.set()
        speaker.join(120)
    restarted = ServeProcess(data_dir)  # closes what the killed server left open, before it accepts anything
    spawned.append(restarted)
    for speaker in speakers:
        folder = data_dir / speaker.url.rsplit("=", 1)[1]
        events = events_in(folder)  # every line parses
        assert events[-2].type == "error" and events[-2].fatal and "stopped before this session finished" in events[-2].message
        assert events[-1].type == "status" and events[-1].state == "finished"
        finals = [event for event in events if isinstance(event, Segment) and event.final]
        transcript = (folder / "transcript.txt").read_text().splitlines()
        # Every final in the log is in the transcript, in order, the sentence a killed writer was still
        # gathering included (the restart writes the files again from the log).
        voices = "|".join(re.escape(label) for label in {segment.speaker for segment in finals} if label)
        prefix = re.compile(rf"^\[[0-9:.]+\] (?:(?:{voices}): )?" if voices else r"^\[[0-9:.]+\] ")
        assert finals and transcript
        assert " ".join(prefix.sub("", line) for line in transcript) == " ".join(segment.text.strip() for segment in finals)
        received = [item.event for item in speaker.received if item.seq is not None]
        assert [event.model_dump() for event in received] == [event.model_dump() for event in events[:len(received)]]
        with connect(restarted.url(folder.name)) as again:  # the id stays used
            start(again)
            messages, code = closed_with(again)
        assert code == 4409
    assert restarted.stop() == 0


@pytest.mark.slow
def test_floods_of_connections_bytes_and_garbage_are_bounded_and_a_new_session_still_works(tmp_path: Path, spawned: list[ServeProcess]) -> None:
    server = ServeProcess(tmp_path / "sessions", "llm.enabled=false", "server.max_connections_per_address=16",
                          "server.open_timeout_seconds=3")
    spawned.append(server)
    baseline = server.rss_mib()
    # Connection flood: 200 connections at once from one address; past the cap they get HTTP 429.
    outcomes: list[str] = []

    def knock() -> None:
        try:
            with connect(server.url("flood-c"), open_timeout=30) as connection:
                outcomes.append("open")
                time.sleep(0.5)
                del connection
        except InvalidStatus as error:
            outcomes.append(str(error.response.status_code))
        except (OSError, TimeoutError):
            outcomes.append("refused")

    knockers = [threading.Thread(target=knock) for _ in range(200)]
    for thread in knockers:
        thread.start()
    for thread in knockers:
        thread.join(120)
    assert outcomes.count("open") <= 16 * 3 and "429" in outcomes  # the cap held (connections come and go)
    # Byte flood: 400 MiB as fast as the socket takes it into one session. It is near-silence, which the
    # VAD skips faster than the socket delivers, so the bound checked is memory, not the pace (flow control
    # slowing a sender of speech is test_server_limits.py, test_a_client_faster_than_real_time_is_slowed_and_loses_nothing).
    sent = 0
    chunk = b"\x00\x01" * (FRAME_BYTES * 16)
    peak = baseline
    with connect(server.url("flood-bytes"), max_size=None, max_queue=None, ping_interval=None, open_timeout=30) as connection:
        start(connection)
        welcome(connection)
        until = time.monotonic() + 20
        while time.monotonic() < until and sent < 400 << 20:
            connection.send(chunk)
            sent += len(chunk)
            if sent % (8 << 20) < len(chunk):
                peak = max(peak, server.rss_mib())
        # Garbage flood: 2000 bad frames mid-stream are reported thinned and change nothing else.
        for n in range(2000):
            connection.send("{not json" if n % 2 else b"\x01\x02\x03")
        connection.send(json.dumps({"type": "stop"}))
        envelopes, code = closed_with(connection, 600)
    peak = max(peak, server.rss_mib())
    assert peak - baseline < 300, (baseline, peak, sent)  # the server held a bounded amount meanwhile
    errors = [item for item in envelopes if item.event.type == "error"]
    assert code == 1000 and len(errors) <= 20 + 2000 // 100 + 5
    # The server still serves: a fresh session transcribes.
    with connect(server.url("after-floods"), max_size=None, max_queue=None, ping_interval=None) as connection:
        start(connection)
        welcome(connection)
        send_audio(connection, espeak_pcm(READING, tmp_path))
        connection.send(json.dumps({"type": "stop"}))
        envelopes, code = closed_with(connection, 600)
    text = " ".join(item.event.text for item in envelopes if isinstance(item.event, Segment) and item.event.final).lower()
    assert code == 1000 and "thursday" in text
    assert server.stop() == 0
