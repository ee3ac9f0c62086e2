"""The session audio queue (server/audio_queue.py) that the server and the scale-out session hosts
share: clocks per track, chunking, the live drop policy and flow control, with real asyncio."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from livesum.config import Settings
from livesum.server.audio_queue import SessionAudio, TrackRefused

RATE = 16000


def settings(queue_seconds: float = 2.0, chunk_seconds: float = 0.5, tracks: int = 2) -> Settings:
    return Settings.model_validate({"audio": {"chunk_seconds": chunk_seconds},
                                    "server": {"session_queue_seconds": queue_seconds, "max_tracks_per_session": tracks}})


def tenths(count: int, value: float = 0.1) -> list[np.ndarray]:
    """`count` frames of 100 ms, each filled with its own number so that chunks can be traced back."""
    return [np.full(RATE // 10, value * (index + 1), dtype=np.float32) for index in range(count)]


async def drain(audio: SessionAudio) -> list:
    return [chunk async for chunk in audio.chunks()]


def test_frames_become_chunks_on_one_clock_per_track_and_end_flushes_the_rest() -> None:
    async def scenario() -> list:
        audio = SessionAudio(settings(), live=True, report_dropped=lambda seconds, why: None)
        for frame in tenths(7):
            audio.push("caller", frame)
        for frame in tenths(3):
            audio.push("agent", frame)
        audio.end()
        return await drain(audio)

    chunks = asyncio.run(scenario())
    placed = [(chunk.track, round(chunk.start, 2), len(chunk.samples)) for chunk in chunks]
    assert placed == [("caller", 0.0, 8000), ("caller", 0.5, 3200), ("agent", 0.0, 4800)]
    assert np.allclose(chunks[0].samples[:1600], 0.1) and np.allclose(chunks[1].samples[-1600:], 0.7)


def test_a_timestamp_ahead_of_a_track_moves_its_clock_instead_of_queueing_silence() -> None:
    async def scenario() -> list:
        audio = SessionAudio(settings(), live=True, report_dropped=lambda seconds, why: None)
        audio.push("alice", np.zeros(RATE // 10, np.float32), at=0.0)
        audio.push("alice", np.zeros(RATE // 10, np.float32), at=0.1)  # on time: same chunk
        audio.push("alice", np.zeros(RATE // 10, np.float32), at=30.0)  # silent for half a minute
        audio.push("alice", np.zeros(RATE // 10, np.float32), at=30.15)  # 50 ms late is within the gap
        audio.end()
        return await drain(audio)

    assert [(round(chunk.start, 2), len(chunk.samples)) for chunk in asyncio.run(scenario())] == [(0.0, 3200), (30.0, 3200)]


def test_a_track_past_the_limit_is_refused_and_the_others_go_on() -> None:
    audio = SessionAudio(settings(tracks=2), live=True, report_dropped=lambda seconds, why: None)
    audio.push("a", np.zeros(10, np.float32))
    audio.push("b", np.zeros(10, np.float32))
    with pytest.raises(TrackRefused, match="at most 2 tracks"):
        audio.push("c", np.zeros(10, np.float32))
    audio.push("a", np.zeros(10, np.float32))
    assert audio.received_seconds == 30 / RATE


def test_a_live_source_loses_its_oldest_audio_and_every_dropped_second_is_reported() -> None:
    reports: list[tuple[float, str]] = []

    async def scenario() -> list:
        audio = SessionAudio(settings(queue_seconds=1.0), live=True, report_dropped=lambda seconds, why: reports.append((seconds, why)))
        dropped = sum(audio.push(None, frame) for frame in tenths(40))  # 4 s into a 1-s queue nobody reads
        assert not audio.needs_room  # a live source is never held
        audio.end()
        assert dropped == pytest.approx(3.0)
        return await drain(audio)

    chunks = asyncio.run(scenario())
    assert [round(chunk.start, 2) for chunk in chunks] == [3.0, 3.5]  # the newest second is kept
    assert sum(seconds for seconds, _ in reports) == pytest.approx(3.0)
    assert len(reports) < 6 and all(why == "the session queue was full" for _, why in reports)  # thinned: not one per dropped chunk (6)


def test_a_source_that_can_wait_is_held_until_there_is_room_and_loses_nothing() -> None:
    reports: list[float] = []

    async def scenario() -> tuple[list, int]:
        audio = SessionAudio(settings(queue_seconds=1.0), live=False, report_dropped=lambda seconds, why: reports.append(seconds))
        waits = 0

        async def sender() -> None:
            nonlocal waits
            for frame in tenths(60):
                if audio.needs_room:
                    waits += 1
                    await audio.room()
                assert audio.push(None, frame) == 0.0
            audio.end()

        received, _ = await asyncio.gather(drain(audio), sender())
        return received, waits

    chunks, waits = asyncio.run(scenario())
    assert waits > 0 and not reports
    assert sum(len(chunk.samples) for chunk in chunks) == 60 * RATE // 10
    assert [round(chunk.start, 2) for chunk in chunks] == [round(0.5 * index, 2) for index in range(12)]


def test_audio_still_queued_when_the_pipeline_stops_reading_is_reported_lost_and_a_held_source_is_released() -> None:
    reports: list[tuple[float, str]] = []

    async def scenario() -> None:
        audio = SessionAudio(settings(queue_seconds=1.0), live=False, report_dropped=lambda seconds, why: reports.append((seconds, why)))
        for frame in tenths(13):
            audio.push(None, frame)
        assert audio.needs_room
        reader = audio.chunks()
        await reader.__anext__()  # the pipeline takes one chunk, then stops (a crash, a cancel)
        await reader.aclose()
        await asyncio.wait_for(audio.room(), 5)  # the sender is not left waiting for room that never comes
        assert audio.ended and audio.push(None, tenths(1)[0]) == 0.0

    asyncio.run(scenario())
    assert reports == [(pytest.approx(0.8), "the stream ended before it was transcribed")]
