import asyncio
from pathlib import Path

import numpy as np
import pytest

from livesum.source.audio import AudioChunk, AudioSourceError
from livesum.source.file import decode_file, probe_duration, stream_file


def test_decodes_to_16k_mono_chunks_with_exact_times(tone_wav: Path) -> None:
    chunks = list(decode_file(tone_wav, 16000, 0.5))
    assert [c.start for c in chunks] == [0.0, 0.5, 1.0, 1.5]
    assert all(c.samples.dtype == np.float32 and c.samples.ndim == 1 for c in chunks)
    total = sum(len(c.samples) for c in chunks)
    assert abs(total - 32000) <= 16  # resampler may keep a few samples of delay
    peak = max(float(np.abs(c.samples).max()) for c in chunks)
    assert 0.4 < peak < 0.45  # FFmpeg downmixes L+R at -3 dB each: 0.3 * 2 * 0.707
    assert probe_duration(tone_wav) == pytest.approx(2.0, abs=0.01)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"just some text, not audio\n" * 20, "not a readable audio"), (None, "no such file")],
)
def test_bad_files_raise_one_line_errors(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioSourceError, match=message) as caught:
        list(decode_file(path, 16000, 0.5))
    assert "\n" not in str(caught.value)


async def test_stream_file_applies_backpressure(tone_wav: Path) -> None:
    """With a queue of 1 and a consumer that has not read yet, the decoder waits."""
    stream = stream_file(tone_wav, 16000, 0.1, queue_chunks=1)
    first = await anext(stream)
    await asyncio.sleep(0.2)
    rest = [chunk async for chunk in stream]
    assert first.start == 0.0
    assert [round(c.start, 1) for c in rest] == [round(0.1 * i, 1) for i in range(1, 20)]


async def test_stream_file_raises_source_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"\x00" * 4096)
    with pytest.raises(AudioSourceError):
        async for _ in stream_file(bad, 16000, 0.5, 4):
            pass


async def test_an_unexpected_decoder_crash_becomes_a_source_error_not_a_hang(tmp_path, monkeypatch) -> None:
    from livesum.source import file as file_source

    def crashing_decoder(path, sample_rate, chunk_seconds):
        yield AudioChunk(np.zeros(800, dtype=np.float32), 0.0, sample_rate)
        raise MemoryError("no room for the next frame")

    monkeypatch.setattr(file_source, "decode_file", crashing_decoder)
    got = []
    with pytest.raises(AudioSourceError, match="MemoryError"):
        async with asyncio.timeout(30):  # a hang guard
            async for chunk in file_source.stream_file(tmp_path / "any.wav", 16000, 0.05, 4):
                got.append(chunk)
    assert len(got) == 1
