"""The session host of `serve --ray` on its own (livesum/scale/session_host.py): sessions fed by
pushed audio, events long-polled from any caller, resume by seq, a full host, the grace period."""

from __future__ import annotations

import asyncio
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SAMPLES
from livesum.config import load_settings
from livesum.events import Answer, Notes, Segment, parse_event
from livesum.loading import SharedModels, load_shared_models
from livesum.scale.session_host import SessionHost, SessionHostError
from livesum.source.file import decode_file

CPU = REPO / "configs" / "cpu.toml"


@pytest.fixture(scope="module")
def models() -> SharedModels:
    return load_shared_models(load_settings(CPU))


def settings(tmp_path: Path, **server: object):
    return load_settings(CPU, {"server": {"data_dir": str(tmp_path / "sessions"), **server}})


def pcm_chunks(path: Path, seconds: float = 0.5) -> list[bytes]:
    return [chunk.samples.astype("<f4").tobytes() for chunk in decode_file(path, 16000, seconds)]


async def collect(host: SessionHost, session_id: str, after_seq: int = 0) -> list[tuple[int, str]]:
    """Poll as a front-end does until the session has finished and every event is read."""
    got: list[tuple[int, str]] = []
    while True:
        batch = await host.events(session_id, after_seq, timeout=5)
        got += batch.events
        after_seq = got[-1][0] if got else after_seq
        if batch.finished:
            return got


@pytest.mark.slow
async def test_two_sessions_on_one_host_each_get_their_own_transcript_and_notes(tmp_path: Path, models: SharedModels) -> None:
    host = SessionHost(settings(tmp_path), models=models)
    await host.open("reading", speakers=None)
    await host.open("silence")
    for pcm in pcm_chunks(SAMPLES / "librivox.flac")[:24]:  # its first 12 s: the notes of a live session are the slow part
        await host.push("reading", pcm)
    await host.push("silence", np.zeros(16000 * 3, dtype="<f4").tobytes())
    await host.ask("reading", "Who is the story about?")
    assert (await host.load()).sessions == 2
    await host.stop("reading")
    await host.stop("silence")
    reading, silence = await asyncio.gather(collect(host, "reading"), collect(host, "silence"))
    await host.close()

    assert [seq for seq, _ in reading] == list(range(1, len(reading) + 1))  # numbered, none lost
    events = [parse_event(text) for _, text in reading]
    text = " ".join(e.text for e in events if isinstance(e, Segment) and e.final).lower()
    assert "dashwood" in text and "consider" in text
    assert any(isinstance(e, Answer) for e in events) and isinstance(events[-2], Notes)
    assert not any(isinstance(e, Segment) and e.final for e in (parse_event(t) for _, t in silence))
    data = tmp_path / "sessions"
    assert len((data / "reading" / "events.jsonl").read_text().splitlines()) == len(reading)  # the files are the events
    assert (data / "reading" / "notes.md").is_file() and (data / "silence" / "notes.md").is_file()


async def test_resume_from_a_seq_refusals_and_the_grace_period(tmp_path: Path, models: SharedModels) -> None:
    no_llm = SharedModels(models.whisper, None)
    host = SessionHost(load_settings(CPU, {"llm": {"enabled": False}, "server": {"data_dir": str(tmp_path / "s"), "resume_grace_seconds": 1}}),
                       capacity=1, models=no_llm)
    await host.open("call-1", secret="s3cret", meta={"format": {"sample_rate": 8000}})
    with pytest.raises(SessionHostError) as full:
        await host.open("call-2")
    assert full.value.reason == "full"
    assert pickle.loads(pickle.dumps(full.value)).reason == "full"  # crosses Ray (pickled) with its reason
    with pytest.raises(SessionHostError) as bad:
        await host.open("../x")
    assert bad.value.reason == "invalid"
    for pcm in pcm_chunks(SAMPLES / "librivox.flac")[:24]:  # 12 s
        await host.push("call-1", pcm)
    first = await host.events("call-1", 0, timeout=5)
    assert first.events and first.events[0][0] == 1
    # A front-end taking the session over (a resume) presents its secret; the old owner's long-poll
    # returns at once and says who owns the session now.
    with pytest.raises(SessionHostError) as wrong:
        await host.claim("call-1", "nope")
    assert wrong.value.reason == "secret"
    old_owner = asyncio.ensure_future(host.events("call-1", 10**6, timeout=60))
    await asyncio.sleep(0.1)
    claim = await host.claim("call-1", "s3cret")
    assert (claim.owner, claim.meta, claim.ended) == (2, {"format": {"sample_rate": 8000}}, False)
    assert (await asyncio.wait_for(old_owner, 5)).owner == 2
    # Nobody pushes or polls now: after the 1 s grace the session ends by itself, with its notes.
    everything = await asyncio.wait_for(collect_after_grace(host, "call-1"), timeout=300)
    assert json.loads(everything[-1][1])["state"] == "finished"
    # A second front-end resumes from the seq its client last saw: exactly the events after it.
    seen = first.events[-1][0]
    resumed = await host.events("call-1", seen, timeout=1)
    assert [seq for seq, _ in resumed.events] == list(range(seen + 1, everything[-1][0] + 1)) and resumed.finished
    with pytest.raises(SessionHostError) as ended:
        await host.push("call-1", b"\0\0\0\0")
    assert ended.value.reason == "unknown"
    with pytest.raises(SessionHostError):
        await host.events("nobody", 0, timeout=0.1)
    with pytest.raises(SessionHostError) as taken:
        await host.open("call-1")
    assert taken.value.reason == "exists"
    await host.close()
    again = SessionHost(host.settings, capacity=1, models=no_llm)  # another host on the same storage
    with pytest.raises(SessionHostError) as finished:
        await again.open("call-1")
    assert finished.value.reason == "finished"  # its folder holds a finished session: never reopened


async def collect_after_grace(host: SessionHost, session_id: str) -> list[tuple[int, str]]:
    session = host.sessions[session_id]
    while not session.ended:  # no contact: the host's reaper ends it
        await asyncio.sleep(0.2)
    return await collect(host, session_id)
