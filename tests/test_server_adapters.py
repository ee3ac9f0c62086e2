"""`livesum serve` adapters, limits and bad input: real websockets on loopback, tiny.en, LM off
(these tests are about audio in and transcripts out; the LM path is covered in test_server.py)."""

from __future__ import annotations

import base64
import contextlib
import json
import random
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from conftest import REPO, SAMPLES, SPEECH_REFERENCE, SPEECH_SAMPLE, run_cli
from livesum.config import load_settings
from livesum.events import Segment
from livesum.server.protocol import Envelope
from test_server import FRAME_BYTES, RunningServer, closed_with, send_audio, speech_pcm, start, welcome, wer

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TELEPHONE_WER = 0.25  # tiny.en on 8 kHz G.711 audio of the sample measured about 0.05-0.1
WIDEBAND_WER = 0.15
BUDGET = "The quarterly budget review is moved to Thursday. Maria will send the spreadsheet."
CARD_WORDS = {"clubs", "spades", "hearts", "queen", "ten", "10", "four", "4", "five", "5", "seven", "7", "eight", "8"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    overrides = {
        "server": {"port": 0, "data_dir": str(tmp_path_factory.mktemp("sessions")), "token": TOKEN, "max_sessions": 3,
                   "resume_grace_seconds": 2, "idle_timeout_seconds": 30, "session_queue_seconds": 120, "max_frame_bytes": 65536,
                   "open_timeout_seconds": 3, "max_connections_per_address": 8},
        "llm": {"enabled": False},
        "output": {"console": False},
    }
    running = RunningServer(load_settings(REPO / "configs" / "cpu.toml", overrides, environ={}))
    yield running
    running.close()


@pytest.fixture(scope="module")
def budget_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wav = tmp_path_factory.mktemp("speech") / "budget.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), BUDGET], check=True, capture_output=True)
    return wav


@pytest.fixture(scope="module")
def cards_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second real voice: the pocketsphinx "cards" speaker's turns of samples/two_readers.flac, joined.

    espeak through 8 kHz mu-law is beyond tiny.en ("the quarterly market remue in room" even in one batch
    pass), and a streaming pass over it now and then came out as two words for the whole leg, so a phone
    leg is real speech here, as on a real call. The speaker reads playing cards ("ten of clubs").
    """
    folder = tmp_path_factory.mktemp("cards")
    rows = [line.split() for line in (SAMPLES / "two_readers.rttm").read_text().splitlines()]
    pieces = []
    for index, (onset, length) in enumerate((float(row[3]), float(row[4])) for row in rows if row[7] == "cards"):
        piece = folder / f"turn{index}.wav"
        command = ["sox", str(SAMPLES / "two_readers.flac"), str(piece), "trim", f"{onset - 0.2:.3f}", f"{length + 0.4:.3f}"]
        subprocess.run(command, check=True, capture_output=True)
        pieces.append(str(piece))
    wav = folder / "cards.wav"
    subprocess.run(["sox", *pieces, str(wav)], check=True, capture_output=True)
    return wav


def sox_raw(source: Path, rate: int, encoding: str, bits: int) -> bytes:
    """The file as headerless mono audio, encoded by sox (independent of the server's decoders)."""
    command = ["sox", str(source), "-t", "raw", "-r", str(rate), "-c", "1", "-e", encoding, "-b", str(bits), "-"]
    return subprocess.run(command, check=True, capture_output=True).stdout


def finished_segments(server: RunningServer, session: str, timeout: float = 300) -> list[Segment]:
    """Final segments from the session's events.jsonl, once the session has finished."""
    path = server.settings.server.data_dir / session / "events.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            events = [json.loads(line) for line in path.read_text().splitlines()]
            if any(event["type"] == "status" and event["state"] == "finished" for event in events):
                return [Segment.model_validate(e) for e in events if e["type"] == "segment" and e["final"]]
        time.sleep(0.5)
    raise AssertionError(f"session {session} did not finish")


def text_of(segments: list[Segment], speaker: str | None = "any") -> str:
    return " ".join(s.text for s in segments if speaker == "any" or s.speaker == speaker)


def closed_code(connection: ClientConnection) -> int | None:
    try:
        while True:
            connection.recv(30)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


# -- adapters -------------------------------------------------------------------------------------


def twilio_media(sid: str, track: str, payload: bytes, timestamp_ms: int, number: int) -> str:
    media = {"track": track, "chunk": str(number), "timestamp": str(timestamp_ms), "payload": base64.b64encode(payload).decode()}
    return json.dumps({"event": "media", "sequenceNumber": str(number), "media": media, "streamSid": sid})


@pytest.mark.slow
def test_twilio_both_tracks_are_two_speakers(server: RunningServer, cards_wav: Path) -> None:
    inbound, outbound = sox_raw(SPEECH_SAMPLE, 8000, "mu-law", 8), sox_raw(cards_wav, 8000, "mu-law", 8)
    sid = "MZtwilio0001"
    with connect(server.url("/twilio"), max_size=None, max_queue=None, ping_interval=None) as connection:
        connection.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        start_message = {
            "accountSid": "AC1", "streamSid": sid, "callSid": "CA1", "tracks": ["inbound", "outbound"],
            "customParameters": {"token": TOKEN, "inbound_speaker": "Caller"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        connection.send(json.dumps({"event": "start", "sequenceNumber": "1", "start": start_message, "streamSid": sid}))
        number = 2
        for offset in range(0, len(inbound), 160):  # 20 ms frames, both legs interleaved as a call sends them
            for track, audio in (("inbound", inbound), ("outbound", outbound)):
                if offset < len(audio):
                    connection.send(twilio_media(sid, track, audio[offset: offset + 160], offset // 8, number))
                    number += 1
            if offset == 8000:
                connection.send(json.dumps({"event": "dtmf", "streamSid": sid, "sequenceNumber": str(number), "dtmf": {"track": "inbound_track", "digit": "5"}}))
                number += 1
        connection.send(json.dumps({"event": "mark", "sequenceNumber": str(number), "streamSid": sid, "mark": {"name": "m1"}}))
        connection.send(json.dumps({"event": "stop", "sequenceNumber": str(number + 1), "streamSid": sid, "stop": {"accountSid": "AC1", "callSid": "CA1"}}))
    segments = finished_segments(server, sid)
    assert wer(SPEECH_REFERENCE.read_text(), text_of(segments, "Caller")) < TELEPHONE_WER, text_of(segments, "Caller")
    # Each leg holds its own words and none of the other's: the cards leg has nine of CARD_WORDS ("clubs" is
    # also heard as "clothes"), the reader's has none of the suits.
    outbound = set(re.findall(r"[a-z0-9]+", text_of(segments, "outbound").lower()))
    assert len(outbound & CARD_WORDS) >= 6 and "dashwood" not in outbound, outbound
    assert not {"clubs", "spades", "hearts"} & set(re.findall(r"[a-z]+", text_of(segments, "Caller").lower()))
    assert {s.speaker for s in segments} == {"Caller", "outbound"}


def test_twilio_wrong_token_is_refused_before_audio(server: RunningServer) -> None:
    sid = "MZbadtoken01"
    with connect(server.url("/twilio")) as connection:
        start_message = {"streamSid": sid, "tracks": ["inbound"], "customParameters": {"token": "wrong"},
                         "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
        connection.send(json.dumps({"event": "start", "start": start_message, "streamSid": sid}))
        with contextlib.suppress(ConnectionClosed):  # on a loaded machine the refusal can come before this frame goes
            connection.send(twilio_media(sid, "inbound", b"\xff" * 160, 0, 2))
        assert closed_code(connection) == 4401
    assert not (server.settings.server.data_dir / sid).exists()


@pytest.mark.slow
def test_telnyx_frames_out_of_order_are_put_back_in_order(server: RunningServer) -> None:
    audio = sox_raw(SPEECH_SAMPLE, 8000, "a-law", 8)
    stream_id = "telnyx-stream-1"
    frames = []
    for index, offset in enumerate(range(0, len(audio), 160)):
        media = {"track": "inbound", "chunk": str(index + 1), "timestamp": str(offset // 8),
                 "payload": base64.b64encode(audio[offset: offset + 160]).decode()}
        frames.append({"event": "media", "sequence_number": str(index + 2), "media": media, "stream_id": stream_id})
    shuffler = random.Random(8)
    for block in range(0, len(frames), 10):  # reordered within blocks of 10 frames (200 ms of jitter)
        window = frames[block: block + 10]
        shuffler.shuffle(window)
        frames[block: block + 10] = window
    with connect(server.url("/telnyx", token=TOKEN), max_size=None, max_queue=None, ping_interval=None) as connection:
        connection.send(json.dumps({"event": "connected", "version": "1.0.0"}))
        start_message = {"user_id": "u1", "call_control_id": "v3:abc", "from": "+1", "to": "+2",
                         "media_format": {"encoding": "PCMA", "sample_rate": 8000, "channels": 1}}
        connection.send(json.dumps({"event": "start", "sequence_number": "1", "start": start_message, "stream_id": stream_id}))
        for frame in frames:
            connection.send(json.dumps(frame))
        connection.send(json.dumps({"event": "stop", "sequence_number": str(len(frames) + 2), "stop": {"user_id": "u1", "call_control_id": "v3:abc"}, "stream_id": stream_id}))
    segments = finished_segments(server, stream_id)
    assert wer(SPEECH_REFERENCE.read_text(), text_of(segments)) < TELEPHONE_WER, text_of(segments)


def recall_audio(participant: tuple[int, str], pcm: bytes, relative: float, bot: str = "bot-recall-1") -> str:
    data = {"buffer": base64.b64encode(pcm).decode(), "timestamp": {"relative": relative, "absolute": "2026-01-01T00:00:00Z"},
            "participant": {"id": participant[0], "name": participant[1], "is_host": False, "platform": "zoom", "extra_data": {}}}
    envelope = {"data": data, "realtime_endpoint": {"id": "re1", "metadata": {}}, "recording": {"id": "rec1", "metadata": {}},
                "bot": {"id": bot, "metadata": {}}, "audio_separate_raw": {"id": "asr1", "metadata": {}}}
    return json.dumps({"event": "audio_separate_raw.data", "data": envelope})


@pytest.mark.slow
def test_recall_separate_audio_labels_each_participant(server: RunningServer, budget_wav: Path) -> None:
    alice, bob = speech_pcm(), speech_pcm(budget_wav)
    bob_starts = len(alice) / 32000 + 1.0  # Bob speaks after Alice; Alice's track is silent (not sent) then
    with connect(server.url("/recall", token=TOKEN), max_size=None, max_queue=None, ping_interval=None) as connection:
        connection.send(json.dumps({"event": "participant_events.join", "data": {"data": {"participant": {"id": 1, "name": "Alice"}}}}))
        for offset in range(0, len(alice), FRAME_BYTES):
            connection.send(recall_audio((1, "Alice"), alice[offset: offset + FRAME_BYTES], offset / 32000))
        for offset in range(0, len(bob), FRAME_BYTES):
            connection.send(recall_audio((2, "Bob"), bob[offset: offset + FRAME_BYTES], bob_starts + offset / 32000))
        connection.send(json.dumps({"event": "transcript.data", "data": {"data": {"words": []}}}))
    segments = finished_segments(server, "bot-recall-1")
    assert wer(SPEECH_REFERENCE.read_text(), text_of(segments, "Alice")) < WIDEBAND_WER, text_of(segments, "Alice")
    assert "thursday" in text_of(segments, "Bob").lower() and "dashwood" not in text_of(segments, "Bob").lower()
    assert min(s.start for s in segments if s.speaker == "Bob") >= bob_starts - 1.0  # placed by timestamp.relative


def stream_vonage(server: RunningServer, session: str) -> list[Segment]:
    audio = sox_raw(SPEECH_SAMPLE, 8000, "signed-integer", 16)
    with connect(server.url("/vonage", session=session), additional_headers=AUTH, max_size=None, max_queue=None, ping_interval=None) as connection:
        connection.send(json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=8000", "caller": "+1"}))
        for offset in range(0, len(audio), 320):  # 20 ms frames
            connection.send(audio[offset: offset + 320])
        connection.send(json.dumps({"event": "websocket:dtmf", "digit": "5", "duration": 260}))
    return finished_segments(server, session)  # a clean close ends a Vonage call


@pytest.mark.slow
def test_vonage_l16_8khz(server: RunningServer) -> None:
    segments = stream_vonage(server, "vonage-call-1")
    assert wer(SPEECH_REFERENCE.read_text(), text_of(segments)) < TELEPHONE_WER, text_of(segments)


# -- limits and bad input ----------------------------------------------------------------------------


def test_native_token_is_checked_before_the_upgrade(server: RunningServer) -> None:
    for headers in (None, {"Authorization": "Bearer nope"}):
        with pytest.raises(InvalidStatus) as refused:
            connect(server.url(session="no-token"), additional_headers=headers)
        assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as missing:
        connect(server.url("/nowhere", token=TOKEN))
    assert missing.value.response.status_code == 404
    assert not (server.settings.server.data_dir / "no-token").exists()


@pytest.mark.parametrize(
    ("first", "code", "words"),
    [
        (b"\x00\x01" * 100, 4400, "binary audio before start"),
        ('{"type": "start", "sample_rate": 1000}', 4400, "sample_rate"),
        ('{"type": "start", "overrides": {"server.token": "x"}}', 4400, "not allowed"),
        ('{"type": "ask", "question": "hi"}', 4400, "first message must be start"),
        ('{"type": "resume", "last_seq": 3, "secret": "s"}', 4404, "no session"),
        ('{"type": "start", "overrides": {"llm.summary_every_seconds": 1}}', 4400, "at least 60"),
        ('{"type": "watch", "last_seq": 0}', 4404, "no running session"),
        ("{not json", 4400, "malformed JSON"),
    ],
)
def test_bad_first_messages_get_an_error_and_a_close_code(server: RunningServer, first: str | bytes, code: int, words: str) -> None:
    with connect(server.url(session="refused", token=TOKEN)) as connection:
        connection.send(first)
        error = Envelope.model_validate_json(connection.recv(30))
        assert error.seq is None and error.event.type == "error" and words in error.event.message
        assert closed_code(connection) == code


@pytest.mark.slow
def test_bad_frames_mid_stream_are_reported_and_the_stream_goes_on(server: RunningServer) -> None:
    pcm = speech_pcm()
    with connect(server.url(session="bad-frames"), additional_headers=AUTH, max_size=None, max_queue=None, ping_interval=None) as connection:
        start(connection)
        connection.send("{oops")
        connection.send('{"type": "dance"}')
        connection.send(b"\x01\x02\x03")  # odd-length PCM
        connection.send('{"type": "start"}')
        send_audio(connection, pcm)
        connection.send('{"type": "stop"}')
        envelopes: list[Envelope] = []
        try:
            while True:
                envelopes.append(Envelope.model_validate_json(connection.recv(300)))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1000
    errors = [item.event.message for item in envelopes if item.event.type == "error"]
    assert any("malformed JSON" in e for e in errors) and any("unknown message type 'dance'" in e for e in errors)
    assert any("not a whole number" in e for e in errors) and any("only valid as the first" in e for e in errors)
    text = " ".join(item.event.text for item in envelopes if isinstance(item.event, Segment) and item.event.final)
    assert wer(SPEECH_REFERENCE.read_text(), text) < WIDEBAND_WER, text


def test_oversized_frame_closes_1009_and_max_sessions_closes_1013(server: RunningServer) -> None:
    with connect(server.url(session="too-big"), additional_headers=AUTH) as connection:
        start(connection)
        connection.send(b"\x00" * (server.settings.server.max_frame_bytes + 2))
        assert closed_code(connection) == 1009
    finished_segments(server, "too-big", timeout=60)  # not resumed within the grace period: finished, files written
    with contextlib.ExitStack() as stack:
        open_connections = [stack.enter_context(connect(server.url(session=f"hold-{n}"), additional_headers=AUTH)) for n in range(3)]
        for connection in open_connections:
            start(connection)
            connection.recv(30)  # the session's `started` status: it exists
        with connect(server.url(session="one-too-many"), additional_headers=AUTH) as extra:
            start(extra)
            error = Envelope.model_validate_json(extra.recv(30))
            assert "server full" in error.event.message  # type: ignore[union-attr]
            assert closed_code(extra) == 1013
        for connection in open_connections:
            connection.send('{"type": "stop"}')
            assert closed_code(connection) == 1000  # finished: notes sent, then closed


def test_a_finished_session_id_is_never_reused(server: RunningServer) -> None:
    with connect(server.url(session="used-once"), additional_headers=AUTH, max_size=None, max_queue=None, ping_interval=None) as connection:
        start(connection)
        welcome(connection)
        send_audio(connection, speech_pcm()[: 3 * 32000])
        connection.send('{"type": "stop"}')
        assert closed_with(connection, 300)[1] == 1000
    folder = server.settings.server.data_dir / "used-once"
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    with connect(server.url(session="used-once"), additional_headers=AUTH) as again:
        start(again)
        messages, code = closed_with(again)
    assert code == 4409 and "belongs to a finished session" in messages[0].event.message  # type: ignore[union-attr]
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before  # nothing reopened, nothing wiped


def test_a_vendor_socket_without_its_credential_is_closed_at_the_open_deadline(server: RunningServer) -> None:
    # Keepalive-looking frames (connected, mark, dtmf) used to reset the idle timer forever.
    with connect(server.url("/twilio")) as connection:
        connection.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        deadline = time.monotonic() + 30
        code = None
        while code is None and time.monotonic() < deadline:
            try:
                connection.send(json.dumps({"event": "mark", "streamSid": "MZx", "mark": {"name": "m"}}))
                connection.recv(0.3)
            except TimeoutError:
                continue
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
    assert code == 4408


def test_connections_per_address_are_capped_and_released(server: RunningServer) -> None:
    cap = server.settings.server.max_connections_per_address
    with contextlib.ExitStack() as stack:
        for _ in range(cap):
            stack.enter_context(connect(server.url(session="capped", token=TOKEN)))
        with pytest.raises(InvalidStatus) as refused:
            connect(server.url(session="capped", token=TOKEN))
        assert refused.value.response.status_code == 429
    deadline = time.monotonic() + 30  # the server counts a connection until its TCP connection is closed
    while True:
        try:
            with connect(server.url(session="capped-after", token=TOKEN)):
                break
        except InvalidStatus:
            assert time.monotonic() < deadline, "connections were not released"
            time.sleep(0.2)


def test_telnyx_holds_back_a_bounded_number_of_bytes_for_reordering() -> None:
    from livesum.server.adapters import Audio
    from livesum.server.adapters.telnyx import TelnyxAdapter

    adapter = TelnyxAdapter({}, max_buffered_bytes=2000)
    start_message = {"event": "start", "sequence_number": "1", "stream_id": "t", "start": {"media_format": {"encoding": "PCMU", "sample_rate": 8000}}}
    adapter.on_message(start_message)
    payload = base64.b64encode(b"\xff" * 600).decode()  # 800 base64 characters a frame
    released = []
    for number in range(3, 9):  # frame 2 never comes
        released += adapter.on_message({"event": "media", "sequence_number": str(number), "media": {"payload": payload}})
    assert adapter.held_bytes <= 2000
    assert len([action for action in released if isinstance(action, Audio)]) >= 4  # gave up waiting for frame 2


@pytest.mark.slow
def test_recall_clocks_follow_the_vendor_timestamps_across_a_long_silence(server: RunningServer, budget_wav: Path) -> None:
    # Bob speaks, is silent (not sent) for longer than session_queue_seconds, then speaks again.
    bob = speech_pcm(budget_wav)
    gap = server.settings.server.session_queue_seconds + 30
    again_at = len(bob) / 32000 + gap
    with connect(server.url("/recall", token=TOKEN), max_size=None, max_queue=None, ping_interval=None) as connection:
        for start_at in (0.0, again_at):
            for offset in range(0, len(bob), FRAME_BYTES):
                connection.send(recall_audio((2, "Bob"), bob[offset: offset + FRAME_BYTES], start_at + offset / 32000, bot="bot-clock-1"))
    segments = finished_segments(server, "bot-clock-1")
    later = [s for s in segments if s.start >= again_at - 1.0]
    assert later and "thursday" in text_of(later).lower()  # the second time is placed after the silence
    assert "thursday" in text_of([s for s in segments if s.end <= again_at - gap]).lower()


# -- fuzz ------------------------------------------------------------------------------------------------

VALID = {
    "/v1/stream": ['{"type": "start", "sample_rate": 16000}', '{"type": "ask", "question": "why?"}', '{"type": "summarize"}'],
    "/twilio": [json.dumps({"event": "start", "streamSid": "MZfuzz", "start": {"tracks": ["inbound"], "customParameters": {"token": TOKEN},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}),
                twilio_media("MZfuzz", "inbound", b"\xff" * 160, 0, 2)],
    "/telnyx": [json.dumps({"event": "start", "sequence_number": "1", "stream_id": "fuzz", "start": {"media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}}),
                json.dumps({"event": "media", "sequence_number": "2", "stream_id": "fuzz", "media": {"track": "inbound", "payload": "//8="}})],
    "/recall": [recall_audio((1, "A"), b"\x00\x00" * 160, 0.0)],
    "/vonage": [json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000"})],
}


def mutate(text: str, rng: random.Random) -> str | bytes:
    choice = rng.randrange(6)
    if choice == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
    if choice == 1:
        cut = rng.randrange(len(text))
        return text[:cut]
    if choice == 2:
        chars = list(text)
        for _ in range(rng.randrange(1, 8)):
            chars[rng.randrange(len(chars))] = rng.choice('{}[]":,0a\\ \x00é')
        return "".join(chars)
    if choice == 3:
        data = json.loads(text)
        key = rng.choice(list(data))
        data[key] = rng.choice([None, 0, -1, 1e308, "x" * 300, [], {}, True])
        return json.dumps(data)
    if choice == 4:
        return json.dumps(rng.choice([[], 0, "start", None, {"type": None}, {"event": ["media"]}]))
    return "\ud800".encode("utf-8", "surrogatepass") if rng.random() < 0.5 else "x" * rng.randrange(1, 2000)


@pytest.mark.slow
def test_fuzz_every_path_then_a_fresh_session_still_transcribes(server: RunningServer) -> None:
    rng = random.Random(1234)
    sent = 0
    for path, valid in VALID.items():
        query = {"session": f"fuzz{path.strip('/').replace('/', '-')}"}
        remaining = 600
        while remaining > 0:
            try:
                with connect(server.url(path, **query), additional_headers=AUTH, max_size=None, max_queue=None, ping_interval=None) as connection:
                    connection.send(valid[0])
                    while remaining > 0:
                        remaining -= 1
                        sent += 1
                        connection.send(mutate(rng.choice(valid), rng) if rng.random() < 0.9 else rng.choice(valid))
            except ConnectionClosed:
                query = {"session": f"fuzz{path.strip('/').replace('/', '-')}-{remaining}"}  # closed by the server: go on
    assert sent >= 3000
    # The fuzzed sessions still transcribe what they queued before they free their places (a client would
    # get "try again later" meanwhile): wait for that, then a fresh session must work as before.
    deadline = time.monotonic() + 600
    while server.server.sessions and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not server.server.sessions, list(server.server.sessions)
    segments = stream_vonage(server, "after-fuzz")
    assert wer(SPEECH_REFERENCE.read_text(), text_of(segments)) < TELEPHONE_WER, text_of(segments)


# -- the commands ----------------------------------------------------------------------------------------


def test_serve_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path), timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("livesum: error: refusing to listen on 0.0.0.0 without a token")


def test_send_with_a_wrong_token_fails_in_one_line(server: RunningServer) -> None:
    result = run_cli("send", str(SPEECH_SAMPLE), "--url", server.url(), "--token", "wrong", "--speed", "0", timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == "livesum: error: server refused the connection: HTTP 401 missing or wrong token"


def test_published_protocol_schemas_are_current() -> None:
    from livesum.server.protocol import client_schema, schema_text, server_schema

    assert (REPO / "docs" / "server-client.schema.json").read_text() == schema_text(client_schema())
    assert (REPO / "docs" / "server-events.schema.json").read_text() == schema_text(server_schema())
