"""One interface over the two transcription policies, picked by `asr.policy`.

Files want throughput (the batch policy transcribes ~24 s windows, Whisper's cheapest use);
microphones and sockets want captions within a second or two (the streaming policy re-transcribes
the open utterance and commits what two passes agree on). The pipeline only sees `Transcriber`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from faster_whisper import WhisperModel

from livesum.config import AsrConfig
from livesum.events import Segment
from livesum.source.audio import AudioChunk

if TYPE_CHECKING:
    from livesum.asr.diarize import VoiceEmbedder


class Transcriber(Protocol):
    """One stream's (or track's) speech recognition. Blocking: call it from a worker thread."""

    def push(self, chunk: AudioChunk) -> list[Segment]:
        """Take the next chunk; return the segments it completed (finals, and partials when streaming)."""
        ...

    def flush(self) -> list[Segment]:
        """End of stream: everything still open becomes final."""
        ...


def resolve_policy(config: AsrConfig, *, live: bool) -> str:
    """'batch' or 'streaming': 'auto' streams live sources and batches files."""
    if config.policy == "auto":
        return "streaming" if live else "batch"
    return config.policy


def make_transcriber(
    model: WhisperModel, config: AsrConfig, sample_rate: int, *, live: bool, voices: VoiceEmbedder | None = None
) -> Transcriber:
    """A new transcriber on the shared Whisper model, of the policy the config asks for; with `voices`,
    its final segments carry speaker labels (livesum/asr/diarize.py)."""
    transcriber: Transcriber
    if resolve_policy(config, live=live) == "streaming":
        from livesum.asr.streaming import LocalAgreementTranscriber

        transcriber = LocalAgreementTranscriber.with_whisper(model, config, sample_rate)
    else:
        from livesum.asr.transcriber import BatchTranscriber

        transcriber = BatchTranscriber(model, config, sample_rate, word_timestamps=voices is not None)
    if voices is None:
        return transcriber
    from livesum.asr.diarize import DiarizingTranscriber

    return DiarizingTranscriber(transcriber, voices, config)
