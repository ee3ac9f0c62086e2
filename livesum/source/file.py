"""Decode any file PyAV (FFmpeg) can read into 16 kHz mono chunks, streamed, never whole.

Decoding runs in a worker thread and hands chunks to the event loop through a bounded queue, so
a multi-hour file costs a few seconds of audio in memory and a slow consumer slows the decoder
down (backpressure) instead of piling audio up.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import av
import numpy as np

from livesum.source.audio import AudioChunk, AudioSourceError

_END = object()


def probe_duration(path: Path) -> float | None:
    """Duration in seconds from the container header (None if it does not say); raises AudioSourceError if unreadable."""
    with open_audio(path) as container:
        stream = container.streams.audio[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / av.time_base
    return None


def _describe(error: BaseException) -> str:
    """One line: FFmpeg's reason without errno and file name."""
    if isinstance(error, av.FFmpegError) and error.strerror:
        return str(error.strerror)
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def open_audio(path: Path) -> av.container.InputContainer:
    """Open `path` and make sure it has an audio stream; fails fast, before any model loads."""
    if not path.is_file():
        raise AudioSourceError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioSourceError(f"{path}: the file is empty")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise AudioSourceError(f"{path}: not a readable audio or video file ({_describe(error)})") from None
    if not container.streams.audio:
        container.close()
        raise AudioSourceError(f"{path}: the file has no audio stream")
    return container


def decode_file(path: Path, sample_rate: int, chunk_seconds: float) -> Iterator[AudioChunk]:
    """Yield chunks of `chunk_seconds` (the last may be shorter). Raises AudioSourceError."""
    container = open_audio(path)
    with container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunk_size = max(1, int(round(chunk_seconds * sample_rate)))
        pending = np.zeros(0, dtype=np.float32)
        emitted = 0  # samples handed out so far: chunk start times come from this, never drift
        got_audio = False
        try:
            for frame in container.decode(stream):
                for resampled in resampler.resample(frame):
                    pending = np.concatenate([pending, resampled.to_ndarray().reshape(-1)])
                got_audio = True
                while len(pending) >= chunk_size:
                    yield AudioChunk(pending[:chunk_size].copy(), emitted / sample_rate, sample_rate)
                    emitted += chunk_size
                    pending = pending[chunk_size:]
            for resampled in resampler.resample(None):
                pending = np.concatenate([pending, resampled.to_ndarray().reshape(-1)])
        except (av.FFmpegError, OSError, ValueError) as error:
            where = f" after {emitted / sample_rate:.1f} s" if emitted else ""
            raise AudioSourceError(f"{path}: decoding failed{where} ({_describe(error)})") from None
        if not got_audio:
            raise AudioSourceError(f"{path}: no audio could be decoded")
        if len(pending):
            yield AudioChunk(pending, emitted / sample_rate, sample_rate)


async def stream_file(path: Path, sample_rate: int, chunk_seconds: float, queue_chunks: int) -> AsyncIterator[AudioChunk]:
    """`decode_file` on a worker thread, bridged to async through a bounded queue."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=queue_chunks)
    stop = threading.Event()

    def put(item: object) -> None:
        future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while not stop.is_set():
            try:
                future.result(timeout=0.2)
                return
            except TimeoutError:
                continue
        future.cancel()

    def produce() -> None:
        try:
            for chunk in decode_file(path, sample_rate, chunk_seconds):
                if stop.is_set():
                    return
                put(chunk)
            put(_END)
        except AudioSourceError as error:
            put(error)
        except Exception as error:  # anything else must still reach the pipeline, never hang it
            put(AudioSourceError(f"{path}: decoding failed ({type(error).__name__}: {error})"))

    worker = threading.Thread(target=produce, name="livesum-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, AudioSourceError):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
