"""Audio sources: each yields 16 kHz mono float32 chunks with their stream time."""

from livesum.source.audio import AudioChunk, AudioSourceError

__all__ = ["AudioChunk", "AudioSourceError"]
