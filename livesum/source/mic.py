"""Microphone capture through PortAudio (sounddevice), resampled to the pipeline's 16 kHz mono.

A microphone cannot be slowed down, so the PortAudio callback only copies each block into a
bounded buffer; when the consumer falls behind, the OLDEST audio is dropped and counted (the
newest is what a live caption needs). The async side drains the buffer, downmixes, resamples
with `soxr.ResampleStream` and yields `AudioChunk`s stamped with their capture time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from livesum.config import CaptureConfig
from livesum.source.audio import AudioChunk, AudioSourceError

DroppedCallback = Callable[[float, str], None]


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    default_rate: float
    channels: int
    is_default: bool = False


def _sounddevice() -> Any:
    """sounddevice, or a one-line error when the PortAudio library itself is missing."""
    try:
        import sounddevice
    except OSError as error:  # libportaudio2 not installed
        raise AudioSourceError(f"PortAudio is not available ({error}); install libportaudio2") from None
    return sounddevice


def list_devices() -> list[InputDevice]:
    """Input devices only (PortAudio lists outputs too)."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        default_input = sd.default.device[0]
    except sd.PortAudioError as error:
        raise AudioSourceError(f"cannot list audio devices: {error}") from None
    return [
        InputDevice(int(d["index"]), str(d["name"]), float(d["default_samplerate"]), int(d["max_input_channels"]), d["index"] == default_input)
        for d in devices
        if d["max_input_channels"] > 0
    ]


def find_device(wanted: str | None) -> InputDevice:
    """An index, a (case-insensitive) part of a name, or None for the system's default input."""
    devices = list_devices()
    if not devices:
        raise AudioSourceError("no input device found (is a microphone connected, or PulseAudio running?)")
    if wanted is None or not wanted.strip():
        return next((d for d in devices if d.is_default), devices[0])
    wanted = wanted.strip()
    if wanted.isdigit():
        match = [d for d in devices if d.index == int(wanted)]
    else:
        match = [d for d in devices if d.name == wanted] or [d for d in devices if wanted.lower() in d.name.lower()]
    if not match:
        names = ", ".join(f"{d.index}: {d.name}" for d in devices)
        raise AudioSourceError(f"no input device matches '{wanted}' (input devices: {names})")
    return match[0]


class MicSource:
    """One open input stream. `open()` fails fast (before models load); `chunks()` yields the audio."""

    def __init__(self, capture: CaptureConfig, sample_rate: int = 16000, on_dropped: DroppedCallback | None = None) -> None:
        self.capture = capture
        self.sample_rate = sample_rate
        self.on_dropped = on_dropped
        self.device: InputDevice | None = None
        self.device_rate = 0
        self.channels = 0
        self.dropped_seconds = 0.0  # all audio dropped so far (reported through on_dropped as it happens)
        self._blocks: deque[tuple[np.ndarray, float]] = deque()  # (mono block at device rate, time.time() of its last sample)
        self._buffered = 0
        self._capacity = 0
        self._dropped_frames = 0  # written by the callback thread, read under the lock
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ended: str | None = None  # why the stream ended on its own (the device went away)
        self._stream: Any = None

    def open(self) -> InputDevice:
        sd = _sounddevice()
        device = find_device(self.capture.device)
        rate = self.capture.sample_rate or int(device.default_rate)
        channels = min(self.capture.channels or 2, device.channels)
        if self.capture.channels and self.capture.channels > device.channels:
            raise AudioSourceError(f"device '{device.name}' has {device.channels} input channels, not {self.capture.channels}")
        try:
            sd.check_input_settings(device=device.index, samplerate=rate, channels=channels, dtype="float32")
        except (sd.PortAudioError, ValueError) as error:
            raise AudioSourceError(f"device '{device.name}' cannot capture at {rate} Hz, {channels} channel(s): {error}") from None
        self.device, self.device_rate, self.channels = device, rate, channels
        self._capacity = int(self.capture.buffer_seconds * rate)
        try:
            self._stream = sd.InputStream(
                device=device.index,
                samplerate=rate,
                channels=channels,
                dtype="float32",
                blocksize=max(1, int(self.capture.block_seconds * rate)),
                callback=self._on_audio,
                finished_callback=self._on_finished,
            )
        except (sd.PortAudioError, ValueError) as error:
            raise AudioSourceError(f"cannot open input device '{device.name}': {error}") from None
        return device

    # -- PortAudio thread: copy and nothing else --------------------------------------------------

    def _on_audio(self, block: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        arrived = time.time()
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0].copy()
        with self._lock:
            self._blocks.append((mono, arrived))
            self._buffered += len(mono)
            while self._buffered > self._capacity and len(self._blocks) > 1:
                oldest, _ = self._blocks.popleft()
                self._buffered -= len(oldest)
                self._dropped_frames += len(oldest)
        self._notify()

    def _on_finished(self) -> None:
        if self._ended is None:
            self._ended = "the input device stopped delivering audio (disconnected?)"
        self._notify()

    def _notify(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop closed between the check and the call
                pass

    # -- the async side ----------------------------------------------------------------------------

    def _drain(self) -> tuple[list[tuple[np.ndarray, float]], int]:
        with self._lock:
            blocks = list(self._blocks)
            self._blocks.clear()
            self._buffered = 0
            dropped, self._dropped_frames = self._dropped_frames, 0
        return blocks, dropped

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        """16 kHz mono chunks until the stream is closed; a device that goes away ends it with an error."""
        import soxr

        if self._stream is None:
            self.open()
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        resampler = soxr.ResampleStream(self.device_rate, self.sample_rate, 1, dtype="float32")
        position = 0.0  # stream seconds; dropped audio advances it, so stream time follows the wall clock
        self._stream.start()
        try:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=0.5)
                except TimeoutError:
                    pass
                self._wake.clear()
                blocks, dropped = self._drain()
                if dropped:
                    seconds = dropped / self.device_rate
                    self.dropped_seconds += seconds
                    position += seconds
                    if self.on_dropped is not None:
                        self.on_dropped(seconds, "the pipeline fell behind the microphone")
                ended = self._ended or (None if self._stream.active else "the input stream stopped")
                if blocks:
                    raw = np.concatenate([b for b, _ in blocks])
                    samples = resampler.resample_chunk(raw, last=ended is not None)
                    if len(samples):
                        chunk = AudioChunk(samples.astype(np.float32, copy=False), position, self.sample_rate, captured_at=blocks[-1][1])
                        position = chunk.end
                        yield chunk
                if ended is not None:
                    raise AudioSourceError(f"microphone: {ended}")
        finally:
            self.close()

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            self._ended = self._ended or "closed"
            try:
                stream.abort()
                stream.close()
            except Exception:
                pass
