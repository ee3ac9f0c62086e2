"""`livesum serve` under pressure: flow control for a client faster than real time, truthful drop
counts for a live one, TLS, Twilio's request signature. Real websockets on loopback, tiny.en, LM off."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import re
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.sync.client import connect

from conftest import REPO, SAMPLES, SPEECH_REFERENCE
from livesum.config import load_settings
from livesum.events import Error, Notes, Segment
from livesum.server.app import twilio_signature
from livesum.server.client import send_file
from livesum.source.file import probe_duration
from test_server import RunningServer, closed_with, send_audio, speech_pcm, start, welcome, wer
from test_server_adapters import finished_segments, twilio_media

MEETING = SAMPLES / "cafe_meeting.flac"
QUEUE_SECONDS = 5
TWILIO_AUTH = "twilio-account-auth-token"


def limited_settings(data_dir: Path, **server: object):  # type: ignore[no-untyped-def]
    overrides = {
        "server": {"port": 0, "data_dir": str(data_dir), "session_queue_seconds": QUEUE_SECONDS, "idle_timeout_seconds": 120,
                   "resume_grace_seconds": 2, **server},
        "llm": {"enabled": False},
        "output": {"console": False, "progress_every_seconds": 2},
    }
    return load_settings(REPO / "configs" / "cpu.toml", overrides, environ={})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = RunningServer(limited_settings(tmp_path_factory.mktemp("sessions"), twilio_auth_token=TWILIO_AUTH))
    yield running
    running.close()


@pytest.mark.slow
def test_a_client_faster_than_real_time_is_slowed_and_loses_nothing(server: RunningServer) -> None:
    # `livesum send --speed 0` of a 2-minute meeting into a 5-second session queue: before flow control
    # the first 73 s were dropped (with a 30 s queue) while 0.5 s was reported.
    duration = probe_duration(MEETING)
    assert duration is not None
    received = asyncio.run(send_file(MEETING, server.url(), speed=0, session="too-fast"))
    segments = [item.event for item in received if isinstance(item.event, Segment) and item.event.final]
    dropped = [item.event for item in received if isinstance(item.event, Error) and "dropped" in item.event.message]
    assert not dropped, dropped
    assert isinstance(received[-1].event, Notes) or any(isinstance(item.event, Notes) for item in received)
    assert segments[0].start < 10 and segments[-1].end > duration - 10  # the whole meeting, from its first words
    # ... and nothing in between: the meeting's turns follow each other within a second or two, so a gap
    # of 10 s between finals would be audio lost (a word check, "discount" said 70 s in, failed once on
    # tiny.en's hearing of it, with the stretch around it transcribed).
    gaps = [later.start - earlier.end for earlier, later in zip(segments, segments[1:])]
    assert max(gaps) < 10, max(gaps)


def reported_drops(envelopes: list) -> float:
    """The running total the last 'dropped' error states ('...; N s in all')."""
    totals = [float(match.group(1)) for item in envelopes if isinstance(item.event, Error)
              for match in [re.search(r"; ([0-9.]+) s in all", item.event.message)] if match]
    return totals[-1] if totals else 0.0


@pytest.mark.slow
def test_a_live_client_faster_than_real_time_has_its_drops_counted_in_full(server: RunningServer) -> None:
    pcm = speech_pcm(MEETING)
    duration = len(pcm) / 32000
    with connect(server.url(session="live-flood"), max_size=None, max_queue=None, ping_interval=None) as connection:
        start(connection, live=True)
        welcome(connection)
        send_audio(connection, pcm)  # as fast as the socket takes it: a live source's server must drop
        connection.send('{"type": "stop"}')
        envelopes, code = closed_with(connection, 600)
    assert code == 1000
    total = reported_drops(envelopes)
    # At most the queue (5 s) plus what the ASR took while the flood arrived can have been kept.
    assert duration * 0.5 < total <= duration, total
    progress = [item.event for item in envelopes if item.event.type == "status" and item.event.dropped_seconds is not None]
    assert not progress or progress[-1].dropped_seconds <= total  # type: ignore[union-attr]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here (no network, no openssl binary)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "livesum test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert, private = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert, private


@pytest.mark.slow
def test_tls_serves_wss_and_refuses_plain_websockets(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    running = RunningServer(limited_settings(tmp_path / "sessions", certfile=str(cert), keyfile=str(key)))
    try:
        url = f"wss://127.0.0.1:{running.server.port}/v1/stream?session=over-tls"
        trust = ssl.create_default_context(cafile=str(cert))
        with connect(url, ssl=trust, max_size=None, max_queue=None, ping_interval=None) as connection:
            start(connection)
            welcome(connection)
            send_audio(connection, speech_pcm())
            connection.send('{"type": "stop"}')
            envelopes, code = closed_with(connection, 600)
        assert code == 1000
        text = " ".join(item.event.text for item in envelopes if isinstance(item.event, Segment) and item.event.final)
        assert wer(SPEECH_REFERENCE.read_text(), text) < 0.15, text
        with pytest.raises((OSError, InvalidHandshake, TimeoutError)):  # a plain websocket gets no upgrade
            with connect(f"ws://127.0.0.1:{running.server.port}/v1/stream?session=plain", open_timeout=10):
                pass
        with pytest.raises(ssl.SSLError):  # a client that does not trust the certificate refuses it
            with connect(url.replace("over-tls", "untrusted"), ssl=ssl.create_default_context(), open_timeout=10):
                pass
    finally:
        running.close()


def test_tls_needs_both_files(tmp_path: Path) -> None:
    from livesum.server.app import ServerStartupError, check_bind

    with pytest.raises(ServerStartupError, match="both --certfile and --keyfile"):
        check_bind(limited_settings(tmp_path, certfile=str(tmp_path / "cert.pem")))


def test_twilio_upgrade_needs_a_valid_signature(server: RunningServer) -> None:
    path = "/twilio?session=signed-call"
    url = f"ws://127.0.0.1:{server.server.port}{path}"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers={"X-Twilio-Signature": twilio_signature("not-the-token", url)})
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        connect(url)  # no signature at all
    start_message = {"streamSid": "MZsigned", "tracks": ["inbound"], "customParameters": {},
                     "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
    with connect(url, additional_headers={"X-Twilio-Signature": twilio_signature(TWILIO_AUTH, url)}) as connection:
        connection.send(json.dumps({"event": "start", "start": start_message, "streamSid": "MZsigned"}))
        connection.send(twilio_media("MZsigned", "inbound", b"\xff" * 1600, 0, 2))
        connection.send(json.dumps({"event": "stop", "streamSid": "MZsigned"}))
    finished_segments(server, "signed-call", timeout=120)  # opened without an in-band token: the signature was it
