"""What every audio source produces."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SILENCE_DB = -100.0  # what a level meter shows for digital silence


class AudioSourceError(RuntimeError):
    """Audio could not be read or decoded; the message is one line, fit for a user."""


@dataclass(frozen=True)
class AudioChunk:
    """Mono float32 samples in [-1, 1] at the pipeline's sample rate, starting at `start` seconds."""

    samples: np.ndarray
    start: float
    sample_rate: int
    captured_at: float | None = None  # live sources: time.time() when the last sample was captured
    track: str | None = None  # which speaker/call leg (websocket tracks); None = the one mixed stream

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def end(self) -> float:
        return self.start + self.duration


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level in dBFS (a full-scale square wave is 0), for the live status line."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0
    return 20 * math.log10(rms) if rms > 1e-5 else SILENCE_DB
