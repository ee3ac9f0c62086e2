"""Wire audio -> float32 mono at the pipeline's rate: G.711 mu-law/A-law, s16le, float32, any rate.

Every decoder raises `AudioFormatError` (one line) on bytes that cannot be what the stream says,
so a bad frame becomes an error event, never a crash.
"""

from __future__ import annotations

import numpy as np
import soxr

PIPELINE_RATE = 16000


class AudioFormatError(ValueError):
    """A frame that does not fit the declared encoding; the message is one line for the client."""


def _mulaw_table() -> np.ndarray:
    """ITU-T G.711 mu-law: the 256 codes expanded to linear 16-bit, scaled to [-1, 1]."""
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign, exponent, mantissa = codes & 0x80, (codes >> 4) & 0x07, codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return (np.where(sign != 0, -magnitude, magnitude) / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    """ITU-T G.711 A-law: the 256 codes expanded to linear 16-bit, scaled to [-1, 1]."""
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    sign, exponent, mantissa = codes & 0x80, (codes >> 4) & 0x07, codes & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return (np.where(sign != 0, magnitude, -magnitude) / 32768.0).astype(np.float32)


MULAW = _mulaw_table()
ALAW = _alaw_table()


def decode_mulaw(data: bytes) -> np.ndarray:
    return MULAW[np.frombuffer(data, dtype=np.uint8)]


def decode_alaw(data: bytes) -> np.ndarray:
    return ALAW[np.frombuffer(data, dtype=np.uint8)]


def decode_s16le(data: bytes, channels: int = 1) -> np.ndarray:
    frame = 2 * channels
    if len(data) % frame:
        raise AudioFormatError(f"pcm_s16le frame of {len(data)} bytes is not a whole number of {frame}-byte samples")
    return downmix(np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, channels)


def decode_f32le(data: bytes, channels: int = 1) -> np.ndarray:
    frame = 4 * channels
    if len(data) % frame:
        raise AudioFormatError(f"float32 frame of {len(data)} bytes is not a whole number of {frame}-byte samples")
    samples = np.frombuffer(data, dtype="<f4")
    if not np.all(np.isfinite(samples)):
        raise AudioFormatError("float32 frame holds NaN or infinite samples")
    return downmix(np.clip(samples, -1.0, 1.0), channels)


def downmix(interleaved: np.ndarray, channels: int) -> np.ndarray:
    if channels == 1:
        return interleaved.astype(np.float32, copy=False)
    return interleaved.reshape(-1, channels).mean(axis=1, dtype=np.float32)


class Resampler:
    """One stream's resampler to 16 kHz; keeps filter state between frames (no clicks at frame edges)."""

    def __init__(self, in_rate: int, out_rate: int = PIPELINE_RATE) -> None:
        self.in_rate, self.out_rate = in_rate, out_rate
        self._stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32")

    def __call__(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(np.ascontiguousarray(samples, dtype=np.float32), last=last)
