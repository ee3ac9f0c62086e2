"""A session's audio on its way to its pipeline, in the server and in a scale-out session host alike.

One stream clock per track (a vendor's timestamp that runs ahead of a track's clock moves it, so a
silent participant is not queued as silence), chunks of `audio.chunk_seconds`, and at most
`server.session_queue_seconds` waiting. When the pipeline falls behind, the source decides: a live
one cannot wait, so the oldest audio goes (reported, at most once a second, so a flood cannot flood
the events); one that can wait (a recording sent faster than real time) is held at `room()`, its
connection unread meanwhile (flow control), and loses nothing. Whatever is still queued when the
pipeline stops reading is reported as lost, never dropped in silence.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

import numpy as np

from livesum.config import Settings
from livesum.server.audio import PIPELINE_RATE
from livesum.source.audio import AudioChunk

REPORT_DROPS_EVERY = 1.0  # seconds between "dropped audio" reports
CLOCK_GAP_SECONDS = 0.2  # a vendor timestamp this far past a track's clock moves the clock


class TrackRefused(ValueError):
    """A new track past `server.max_tracks_per_session`; the message says so in one line."""


class _Track:
    """A track's stream clock and the samples waiting to fill its next chunk."""

    def __init__(self) -> None:
        self.samples_in = 0  # stream position (in samples) of the next chunk's first sample
        self.pending: list[np.ndarray] = []
        self.pending_len = 0


class SessionAudio:
    """The bounded queue between a session's source and its pipeline (`chunks()` is what the pipeline reads)."""

    def __init__(self, settings: Settings, *, live: bool, report_dropped: Callable[[float, str], None]) -> None:
        self.live = live
        self.ended = False  # no more audio will come
        self._report_dropped = report_dropped
        self._max_tracks = settings.server.max_tracks_per_session
        self._chunk_samples = max(1, int(settings.audio.chunk_seconds * PIPELINE_RATE))
        self._max_queued = int(settings.server.session_queue_seconds * PIPELINE_RATE)
        self._tracks: dict[str | None, _Track] = {}
        self._queue: deque[AudioChunk] = deque()
        self._queued_samples = 0
        self._samples_in = 0  # every sample pushed (the tracks' clocks may skip ahead)
        self._unreported_drop = 0.0
        self._last_drop_report = 0.0
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()

    def push(self, track: str | None, samples: np.ndarray, at: float | None = None) -> float:
        """16 kHz mono samples of one track; `at` (stream seconds), where the protocol gives it, places
        them. Returns the seconds of older audio this push made a live source drop (0 when it keeps up)."""
        if self.ended or not len(samples):
            return 0.0
        state = self._tracks.get(track)
        if state is None:
            if len(self._tracks) >= self._max_tracks:
                raise TrackRefused(f"track {str(track)[:40]!r} refused: at most {self._max_tracks} tracks a session")
            state = self._tracks[track] = _Track()
        dropped = 0.0
        if at is not None:
            position = round(at * PIPELINE_RATE)
            if position - (state.samples_in + state.pending_len) > CLOCK_GAP_SECONDS * PIPELINE_RATE:
                if state.pending_len:
                    dropped += self._enqueue(track, state)
                state.samples_in = position
        state.pending.append(samples.astype(np.float32, copy=False))
        self._samples_in += len(samples)
        state.pending_len += len(samples)
        if state.pending_len >= self._chunk_samples:
            dropped += self._enqueue(track, state)
        return dropped

    def _enqueue(self, track: str | None, state: _Track) -> float:
        samples = np.concatenate(state.pending) if len(state.pending) > 1 else state.pending[0]
        state.pending, state.pending_len = [], 0
        self._queue.append(AudioChunk(samples, state.samples_in / PIPELINE_RATE, PIPELINE_RATE, captured_at=time.time(), track=track))
        state.samples_in += len(samples)
        self._queued_samples += len(samples)
        dropped = 0.0
        if self.live:  # a source that can wait is held at room() instead
            while self._queued_samples > self._max_queued and len(self._queue) > 1:
                oldest = self._queue.popleft()
                self._queued_samples -= len(oldest.samples)
                dropped += oldest.duration
            self._unreported_drop += dropped
            if self._unreported_drop and time.monotonic() - self._last_drop_report >= REPORT_DROPS_EVERY:
                self._report_drops()
        self._wakeup.set()
        return dropped

    def _report_drops(self) -> None:
        self._report_dropped(self._unreported_drop, "the session queue was full")
        self._unreported_drop, self._last_drop_report = 0.0, time.monotonic()

    @property
    def needs_room(self) -> bool:
        """A source that can wait has filled the queue: its connection stops reading until there is room."""
        return not self.live and not self.ended and self._queued_samples >= self._max_queued

    async def room(self) -> None:
        """Returns once the queue has room again (or no more audio will be taken)."""
        while self.needs_room:
            self._room.clear()
            await self._room.wait()

    def end(self) -> None:
        """No more audio: what waits to fill a chunk becomes the last chunks."""
        if self.ended:
            return
        for track, state in self._tracks.items():
            if state.pending_len:
                self._enqueue(track, state)
        if self._unreported_drop:
            self._report_drops()
        self.ended = True
        self._wakeup.set()
        self._room.set()

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        """The pipeline's source; it ends after `end()` once the queue is empty."""
        try:
            while True:
                while not self._queue:
                    if self.ended:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                chunk = self._queue.popleft()
                self._queued_samples -= len(chunk.samples)
                if self._queued_samples < self._max_queued:
                    self._room.set()
                yield chunk
        finally:  # the pipeline stopped reading: what is still here will not be heard; say so
            if self._unreported_drop:
                self._report_drops()
            left = self._queued_samples + sum(state.pending_len for state in self._tracks.values())
            if left:
                self._report_dropped(left / PIPELINE_RATE, "the stream ended before it was transcribed")
            self._queue.clear()
            self._queued_samples = 0
            self.close()

    def close(self) -> None:
        """The pipeline reads no more: later audio is ignored and a source held at `room()` goes on."""
        self.ended = True
        self._wakeup.set()
        self._room.set()

    @property
    def queued_seconds(self) -> float:
        return self._queued_samples / PIPELINE_RATE

    @property
    def received_seconds(self) -> float:
        """Audio received so far, all tracks together."""
        return self._samples_in / PIPELINE_RATE

    @property
    def unreported_drop_seconds(self) -> float:
        """Dropped but not reported yet (reports are thinned)."""
        return self._unreported_drop
