"""The batch transcription policy (files): faster-whisper with its Silero VAD, ~24 s at a time.

Throughput first; live sources use the streaming policy in livesum/asr/streaming.py instead, and
livesum/asr/policy.py picks between them.

Audio accumulates in a buffer. When the buffer holds `window_seconds` of audio, or speech has
been followed by a pause and the stream ends, the buffer is cut at the last pause and that part
is transcribed into final segments; the rest stays for the next round, so words are never cut in
half. Optional partial segments re-transcribe the open utterance for live captions.

Windows carry nothing over (no previous text as a prompt), so without partials several may be
transcribed at once (`asr.windows_in_flight`; 0 = one per Whisper worker). Segments still come out
in order. Off by default: on 2 cores, where Whisper has one thread beside the LM, the README's
command was no faster with two windows in flight (88-97 s against 91-106 s wall, two runs each).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.vad import VadOptions, get_speech_timestamps

from livesum.compute import SHARE
from livesum.config import AsrConfig
from livesum.events import Segment, Word
from livesum.models import resolve_device, whisper_model_dir
from livesum.source.audio import AudioChunk


# Keep at least this much audio before a cut so a word starting right at it is not clipped.
CUT_PADDING_SECONDS = 0.2


def load_whisper(config: AsrConfig, cache_dir: Path) -> WhisperModel:
    device = resolve_device(config.device)
    compute_type = config.compute_type
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    model_dir = whisper_model_dir(config.model, cache_dir)
    # Temperature fallback samples when greedy decoding looks wrong; unseeded, the same file
    # could transcribe differently on each run.
    ctranslate2.set_random_seed(config.seed)
    if device != "cpu":
        return WhisperModel(str(model_dir), device=device, compute_type=compute_type, cpu_threads=config.cpu_threads)
    threads = SHARE.asr_threads(config.cpu_threads)  # livesum.compute: the cores it shares with the LM
    return WhisperModel(str(model_dir), device=device, compute_type=compute_type, cpu_threads=threads,
                        num_workers=SHARE.asr_workers(threads))


@dataclass
class _Buffer:
    samples: np.ndarray
    start: float  # stream time of samples[0]


class BatchTranscriber:
    """Turns a sequence of audio chunks into final (and optionally partial) segments.

    Blocking: call `push`/`flush` from a worker thread. Not thread-safe; one per stream.
    """

    def __init__(self, model: WhisperModel, config: AsrConfig, sample_rate: int, *, word_timestamps: bool = False) -> None:
        self.model = model
        self.word_timestamps = word_timestamps  # the diarizer splits a segment at a change of speaker
        self.config = config
        self.sample_rate = sample_rate
        self.buffer = _Buffer(np.zeros(0, dtype=np.float32), 0.0)
        self.since_partial = 0.0
        self.vad = VadOptions(
            threshold=config.vad_threshold,
            min_silence_duration_ms=config.min_silence_ms,
            speech_pad_ms=100,
        )
        self.in_flight = self._windows_in_flight()
        self._pending: deque[tuple[Future[list[Segment]], float]] = deque()  # (transcription, its seconds of audio)
        self._pool = ThreadPoolExecutor(self.in_flight, thread_name_prefix="whisper-window") if self.in_flight > 1 else None

    def _windows_in_flight(self) -> int:
        """`asr.windows_in_flight`, or one per Whisper worker; one when partials are wanted (they must
        see the finals before them)."""
        if self.config.partial_every_seconds:
            return 1
        if self.config.windows_in_flight:
            return self.config.windows_in_flight
        return max(1, int(getattr(getattr(self.model, "model", None), "num_workers", 1) or 1))

    @property
    def buffered_seconds(self) -> float:
        """Audio heard and not yet returned as segments: the open buffer and windows still being transcribed."""
        return len(self.buffer.samples) / self.sample_rate + sum(seconds for _, seconds in self._pending)

    def push(self, chunk: AudioChunk) -> list[Segment]:
        if chunk.sample_rate != self.sample_rate:
            raise ValueError(f"chunk at {chunk.sample_rate} Hz, transcriber expects {self.sample_rate} Hz")
        if not len(self.buffer.samples):
            self.buffer.start = chunk.start
        self.buffer.samples = np.concatenate([self.buffer.samples, chunk.samples.astype(np.float32, copy=False)])
        self.since_partial += chunk.duration
        if len(self.buffer.samples) >= self.config.window_seconds * self.sample_rate:
            return self._transcribe_until(self._cut_point())
        every = self.config.partial_every_seconds
        if every and self.since_partial >= every:
            self.since_partial = 0.0
            return self._partial()
        return []

    def flush(self) -> list[Segment]:
        """End of stream: everything left becomes final (windows still in flight included)."""
        segments = self._transcribe_until(len(self.buffer.samples))
        while self._pending:
            segments += self._take_oldest()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
            self.in_flight = 1
        return segments

    def _cut_point(self) -> int:
        """Sample index to cut at: the middle of the last pause, or the whole buffer if none."""
        samples = self.buffer.samples
        speech = get_speech_timestamps(samples, self.vad, sampling_rate=self.sample_rate)
        if not speech:
            return len(samples)
        pad = int(CUT_PADDING_SECONDS * self.sample_rate)
        # A pause between two speech regions; the last region may still be going on.
        for earlier, later in zip(reversed(speech[:-1]), reversed(speech[1:])):
            cut = (earlier["end"] + later["start"]) // 2
            if cut > pad:
                return cut
        if speech[-1]["end"] + pad < len(samples):
            return speech[-1]["end"] + pad
        return len(samples)

    def _transcribe(self, audio: np.ndarray, offset: float, final: bool) -> list[Segment]:
        if len(audio) < self.sample_rate // 10:
            return []
        segments, info = self.model.transcribe(
            audio,
            language=self.config.language,
            beam_size=self.config.beam_size,
            vad_filter=True,
            vad_parameters=self.vad,
            condition_on_previous_text=False,
            word_timestamps=self.word_timestamps,
            max_new_tokens=self.config.max_new_tokens or None,
        )
        events = []
        for piece in segments:
            text = piece.text.strip()
            if not text:
                continue
            events.append(
                Segment(
                    final=final,
                    start=round(offset + piece.start, 3),
                    end=round(offset + min(piece.end, len(audio) / self.sample_rate), 3),
                    text=text,
                    language=info.language,
                    words=self._words(piece.words, offset) if self.word_timestamps else None,
                )
            )
        return events

    @staticmethod
    def _words(words: list | None, offset: float) -> list[Word] | None:
        kept = [word for word in words or () if word.word.strip()]
        return [
            Word(text=word.word.strip(), start=round(offset + word.start, 3), end=round(offset + max(word.start, word.end), 3),
                 probability=min(1.0, max(0.0, float(word.probability))))
            for word in kept
        ] or None

    def _transcribe_until(self, cut: int) -> list[Segment]:
        """The buffer up to `cut` as final segments: at once, or (windows in flight) submitted, returning
        the segments of the windows before it that are done, in order, and waiting for the oldest only
        when every worker is busy (backpressure to the caller)."""
        audio, start = self.buffer.samples[:cut], self.buffer.start
        self.buffer = _Buffer(self.buffer.samples[cut:], start + cut / self.sample_rate)
        self.since_partial = 0.0
        if self._pool is None:
            return self._transcribe(audio, start, final=True)
        self._pending.append((self._pool.submit(self._recognize, audio, start), len(audio) / self.sample_rate))
        segments: list[Segment] = []
        while self._pending and (self._pending[0][0].done() or len(self._pending) >= self.in_flight):
            segments += self._take_oldest()
        return segments

    def _recognize(self, audio: np.ndarray, start: float) -> list[Segment]:
        """One window on a pool thread, counted as recognition on the cores (the LM's threads follow)."""
        with SHARE.recognition():
            return self._transcribe(audio, start, final=True)

    def _take_oldest(self) -> list[Segment]:
        future, _ = self._pending[0]
        try:
            return future.result()
        finally:
            self._pending.popleft()

    def _partial(self) -> list[Segment]:
        return self._transcribe(self.buffer.samples, self.buffer.start, final=False)
