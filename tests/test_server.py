"""`livesum serve` native path, end to end: real websockets on loopback, tiny.en + SmolLM2 loaded once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jiwer
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from livesum.config import Settings, load_settings
from livesum.events import Answer, Notes, Segment, Summary
from livesum.server.app import LivesumServer, SharedModels, load_shared_models
from livesum.server.protocol import Envelope
from livesum.source.file import decode_file

from conftest import REPO, SPEECH_REFERENCE, SPEECH_SAMPLE

MAX_WER = 0.15  # tiny.en streaming on the sample measured 0.02-0.05; the bound leaves room for CPU-load timing
FRAME_BYTES = 3200  # 100 ms of 16 kHz s16le


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(normalise(reference), normalise(hypothesis)))


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def speech_pcm(path: Path = SPEECH_SAMPLE) -> bytes:
    return pcm16(np.concatenate([chunk.samples for chunk in decode_file(path, 16000, 1.0)]))


def espeak_pcm(text: str, tmp: Path) -> bytes:
    wav = tmp / "speech.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), text], check=True, capture_output=True)
    return speech_pcm(wav)


def server_settings(data_dir: Path, **server: object) -> Settings:
    overrides = {
        "server": {"port": 0, "data_dir": str(data_dir), "resume_grace_seconds": 20, "session_queue_seconds": 120, "idle_timeout_seconds": 300,
                   "override_minimums": {"llm.summary_every_seconds": 5}, **server},
        "llm": {"summary_every_seconds": 600, "engine": {"max_summary_tokens": 32, "max_answer_tokens": 24}},
        "output": {"console": False, "progress_every_seconds": 2},
    }
    return load_settings(REPO / "configs" / "cpu.toml", overrides, environ={})


class RunningServer:
    """A LivesumServer on its own event loop thread, as `livesum serve` runs it."""

    def __init__(self, settings: Settings, models: SharedModels | None = None) -> None:
        self.settings = settings
        self.server = LivesumServer(settings, models or load_shared_models(settings))
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        ready = threading.Event()
        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self.server.serve(self.stop, lambda _: ready.set()),), daemon=True
        )
        self.thread.start()
        assert ready.wait(60), "server did not start"

    def url(self, path: str = "/v1/stream", **query: str) -> str:
        suffix = "&".join(f"{key}={value}" for key, value in query.items())
        return f"ws://127.0.0.1:{self.server.port}{path}" + (f"?{suffix}" if suffix else "")

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = RunningServer(server_settings(tmp_path_factory.mktemp("sessions")))
    yield running
    running.close()


def start(connection: ClientConnection, **fields: object) -> None:
    connection.send(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", **fields}))


def welcome(connection: ClientConnection) -> Envelope:
    """The connection-level message that answers a `start`: the session's resume secret."""
    envelope = Envelope.model_validate_json(connection.recv(60))
    assert envelope.seq is None and envelope.resume_secret, envelope
    return envelope


def numbered(envelopes: list[Envelope]) -> list[Envelope]:
    """The session's record: connection-level messages (seq null) left out."""
    return [item for item in envelopes if item.seq is not None]


def send_audio(connection: ClientConnection, pcm: bytes, pace: float = 0.0) -> None:
    """100 ms frames; `pace` 1.0 = real time, 0 = as fast as the socket takes them."""
    began = time.monotonic()
    for offset in range(0, len(pcm), FRAME_BYTES):
        connection.send(pcm[offset: offset + FRAME_BYTES])
        if pace:
            time.sleep(max(0.0, began + (offset + FRAME_BYTES) / 32000 / pace - time.monotonic()))


def read_until_notes(connection: ClientConnection, timeout: float = 600) -> list[Envelope]:
    envelopes = []
    for message in iter(lambda: connection.recv(timeout), None):
        envelopes.append(Envelope.model_validate_json(message))
        if isinstance(envelopes[-1].event, Notes):
            return envelopes
    return envelopes


def finals(envelopes: list[Envelope]) -> list[Segment]:
    return [item.event for item in envelopes if isinstance(item.event, Segment) and item.event.final]


@pytest.mark.slow
def test_native_stream_gives_transcript_summaries_answer_and_notes(server: RunningServer) -> None:
    pcm = speech_pcm()
    with connect(server.url(session="native-1"), max_size=None, max_queue=None, ping_interval=None) as connection:
        start(connection, overrides={"llm.summary_every_seconds": 8})
        half = len(pcm) // 2 // FRAME_BYTES * FRAME_BYTES
        send_audio(connection, pcm[:half])
        connection.send(json.dumps({"type": "ask", "question": "Who is the young man?"}))
        send_audio(connection, pcm[half:])
        connection.send(json.dumps({"type": "summarize"}))
        envelopes: list[Envelope] = []
        while not any(isinstance(item.event, Summary) for item in envelopes):  # the rolling summary asked for
            envelopes.append(Envelope.model_validate_json(connection.recv(600)))
        connection.send(json.dumps({"type": "stop"}))
        envelopes += read_until_notes(connection)
    record = numbered(envelopes)
    assert [item.seq for item in record] == list(range(1, len(record) + 1))
    assert envelopes[0].resume_secret and envelopes[0].seq is None  # the welcome comes first
    assert {item.session for item in envelopes} == {"native-1"}
    text = " ".join(segment.text for segment in finals(envelopes))
    assert wer(SPEECH_REFERENCE.read_text(), text) < MAX_WER, text
    answers = [item.event for item in envelopes if isinstance(item.event, Answer)]
    assert [answer.question for answer in answers] == ["Who is the young man?"] and answers[0].text
    summaries = [item.event for item in envelopes if isinstance(item.event, Summary)]
    assert not summaries[0].final and summaries[0].text, "the rolling summary comes before the end"
    assert any(summary.final and summary.text for summary in summaries)
    session_dir = server.settings.server.data_dir / "native-1"
    assert (session_dir / "notes.md").read_text().startswith("# ")
    assert "Dashwood" in (session_dir / "transcript.txt").read_text()
    lines = (session_dir / "events.jsonl").read_text().splitlines()
    assert len(lines) >= len(envelopes)  # the file also has the events sent after the notes


@pytest.mark.slow
def test_two_sessions_at_once_do_not_mix(server: RunningServer, tmp_path: Path) -> None:
    sample = speech_pcm()
    other = espeak_pcm("The quarterly budget review is moved to Thursday. Maria will send the spreadsheet.", tmp_path)
    results: dict[str, list[Envelope]] = {}

    def run(session: str, pcm: bytes) -> None:
        with connect(server.url(session=session), max_size=None, max_queue=None, ping_interval=None) as connection:
            start(connection, speaker=session)
            send_audio(connection, pcm)
            connection.send(json.dumps({"type": "stop"}))
            results[session] = read_until_notes(connection)

    threads = [threading.Thread(target=run, args=args) for args in (("reading", sample), ("budget", other))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    reading, budget = (" ".join(s.text for s in finals(results[name])).lower() for name in ("reading", "budget"))
    assert wer(SPEECH_REFERENCE.read_text(), reading) < MAX_WER, reading
    assert "budget" in budget and "thursday" in budget and "dashwood" not in budget
    assert "budget" not in reading and "spreadsheet" not in reading
    assert {s.speaker for s in finals(results["budget"])} == {"budget"}
    assert all(item.session == name for name in results for item in results[name])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")
def test_reconnect_with_resume_loses_no_event_and_no_audio(server: RunningServer) -> None:
    pcm = speech_pcm()
    cut = len(pcm) // 2 // FRAME_BYTES * FRAME_BYTES
    seen: list[Envelope] = []
    connection = connect(server.url(session="resumed"), max_size=None, max_queue=None, ping_interval=None)
    start(connection)
    secret = welcome(connection).resume_secret
    send_audio(connection, pcm[:cut])
    while not any(isinstance(item.event, Segment) for item in seen):  # transcription is under way
        seen.append(Envelope.model_validate_json(connection.recv(300)))
    # Abrupt disconnect mid-frame: a binary frame header announcing 4096 bytes, 100 sent, then the socket dies.
    connection.socket.sendall(b"\x82\xfe\x10\x00" + b"\x00\x00\x00\x00" + b"\x01" * 100)
    connection.socket.close()
    last_seq = seen[-1].seq
    assert last_seq is not None
    with connect(server.url(session="resumed"), max_size=None, max_queue=None, ping_interval=None) as again:
        again.send(json.dumps({"type": "resume", "last_seq": last_seq, "secret": secret}))
        send_audio(again, pcm[cut:])
        again.send(json.dumps({"type": "stop"}))
        rest = read_until_notes(again)
    every = seen + rest
    assert [item.seq for item in every] == list(range(1, len(every) + 1)), "an event was lost or repeated"
    text = " ".join(segment.text for segment in finals(every))
    assert wer(SPEECH_REFERENCE.read_text(), text) < MAX_WER, text
    ends = max(segment.end for segment in finals(every))
    assert ends > 0.9 * len(pcm) / 2 / 16000  # audio after the reconnect continued the same stream clock


def closed_with(connection: ClientConnection, timeout: float = 120) -> tuple[list[Envelope], int | None]:
    """Every message until the server closes the connection, and the close code."""
    received = []
    try:
        while True:
            received.append(Envelope.model_validate_json(connection.recv(timeout)))
    except ConnectionClosed as closed:
        return received, closed.rcvd.code if closed.rcvd else None


def test_a_resume_needs_the_secret_the_start_returned(server: RunningServer) -> None:
    with connect(server.url(session="secret-1"), max_size=None, max_queue=None, ping_interval=None) as owner:
        start(owner)
        secret = welcome(owner).resume_secret
        assert secret and len(secret) >= 24
        with connect(server.url(session="secret-1")) as intruder:  # knows the id (and the server token), not the secret
            intruder.send(json.dumps({"type": "resume", "last_seq": 0, "secret": "guessed"}))
            messages, code = closed_with(intruder)
        assert code == 4401 and "wrong resume secret" in messages[0].event.message  # type: ignore[union-attr]
        with connect(server.url(session="secret-1")) as again:  # the rightful client takes its session back
            again.send(json.dumps({"type": "resume", "last_seq": 0, "secret": secret}))
            first = Envelope.model_validate_json(again.recv(60))
            assert first.seq == 1 and first.event.type == "status"
            again.send(json.dumps({"type": "stop"}))
            rest, code = closed_with(again, 300)
        assert code == 1000 and any(item.event.type == "notes" for item in rest)


@pytest.mark.slow
def test_a_watcher_sees_the_same_events_read_only_and_a_stalled_one_does_not_slow_the_feeder(server: RunningServer) -> None:
    pcm = speech_pcm()
    with contextlib.ExitStack() as stack, connect(server.url(session="watched"), max_size=None, max_queue=None, ping_interval=None) as feeder:
        start(feeder)
        welcome(feeder)
        send_audio(feeder, pcm[: len(pcm) // 4 // FRAME_BYTES * FRAME_BYTES])
        stalled = stack.enter_context(connect(server.url(session="watched")))  # watches, then never reads a message
        stalled.send(json.dumps({"type": "watch", "last_seq": 0}))
        with connect(server.url(session="watched"), max_size=None, max_queue=None, ping_interval=None) as watcher:
            watcher.send(json.dumps({"type": "watch", "last_seq": 0}))
            send_audio(feeder, pcm[len(pcm) // 4 // FRAME_BYTES * FRAME_BYTES:])
            feeder.send(json.dumps({"type": "stop"}))
            fed, fed_code = closed_with(feeder, 600)
            watched, watched_code = closed_with(watcher, 600)
    assert fed_code == watched_code == 1000
    assert all(item.resume_secret is None for item in watched)  # a watcher never learns how to take the session over
    assert [item.model_dump(exclude={"resume_secret"}) for item in numbered(fed)] == [item.model_dump(exclude={"resume_secret"}) for item in watched]
    assert any(item.event.type == "notes" for item in watched) and finals(watched)
    with connect(server.url(session="watch-rw")) as writer:
        start(writer)
        welcome(writer)
        with connect(server.url(session="watch-rw")) as watcher:
            watcher.send(json.dumps({"type": "watch", "last_seq": 0}))
            assert Envelope.model_validate_json(watcher.recv(60)).seq == 1
            watcher.send(pcm16(np.zeros(1600, dtype=np.float32)))  # a watcher cannot feed audio
            messages, code = closed_with(watcher)
        assert code == 4400 and any("read-only" in item.event.message for item in messages if item.event.type == "error")  # type: ignore[union-attr]
        writer.send(json.dumps({"type": "stop"}))
        _, code = closed_with(writer, 300)
        assert code == 1000


def test_concurrent_starts_never_exceed_max_sessions_nor_share_an_id(server: RunningServer) -> None:
    limit = server.settings.server.max_sessions
    ids = [f"race-{n}" for n in range(limit + 4)] + ["race-0"]  # 4 too many, and one id twice
    with contextlib.ExitStack() as stack:
        connections = [stack.enter_context(connect(server.url(session=session_id))) for session_id in ids]
        for connection in connections:  # all starts land before any engine exists (that takes the LM thread)
            start(connection)
        first = [Envelope.model_validate_json(connection.recv(120)) for connection in connections]
        admitted = [n for n, envelope in enumerate(first) if envelope.resume_secret]
        for n in admitted:
            connections[n].send(json.dumps({"type": "stop"}))
        codes = [closed_with(connection, 300)[1] for connection in connections]
    assert len(admitted) == limit
    assert sorted(codes[n] for n in range(len(ids)) if n not in admitted) == [1013] * 4 + [4409]
    assert all(codes[n] == 1000 for n in admitted)
    assert len({ids[n] for n in admitted}) == limit


@pytest.mark.slow
def test_a_question_flood_is_refused_in_bounded_events_and_another_session_keeps_its_transcript(server: RunningServer, tmp_path: Path) -> None:
    other = espeak_pcm("The quarterly budget review is moved to Thursday. Maria will send the spreadsheet.", tmp_path)
    result: dict[str, list[Envelope]] = {}

    def stream_other() -> None:
        with connect(server.url(session="beside-flood"), max_size=None, max_queue=None, ping_interval=None) as connection:
            start(connection)
            send_audio(connection, other, pace=1.0)
            connection.send(json.dumps({"type": "stop"}))
            result["other"] = closed_with(connection, 600)[0]

    beside = threading.Thread(target=stream_other)
    beside.start()
    with connect(server.url(session="flood-q"), max_size=None, max_queue=None, ping_interval=None) as flood:
        start(flood)
        welcome(flood)
        send_audio(flood, speech_pcm()[: 5 * 32000])
        for n in range(3000):
            flood.send(json.dumps({"type": "ask", "question": f"What was said, question {n}?"}))
        flood.send(json.dumps({"type": "stop"}))
        flooded, code = closed_with(flood, 600)
    beside.join(600)
    assert code == 1000 and any(item.event.type == "notes" for item in flooded)
    refused = [item for item in flooded if item.event.type == "error" and "question refused" in item.event.message]  # type: ignore[union-attr]
    answers = [item for item in flooded if item.event.type == "answer"]
    assert 1 <= len(answers) <= 3000 and len(refused) <= 20 + 3000 // 100  # thinned: the first 20, then every 100th
    assert len(flooded) < 400  # the record stays small: no event per refused question
    text = " ".join(segment.text for segment in finals(result["other"])).lower()
    assert "budget" in text and "thursday" in text
