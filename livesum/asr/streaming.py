"""The streaming transcription policy: Silero VAD gating + LocalAgreement-2 over faster-whisper.

Live captions cannot wait for 24 s windows. This policy keeps only the open utterance in a
buffer and re-transcribes it whenever `min_chunk_seconds` of new audio arrived. Words that two
successive passes agree on (after the point already committed) are committed: final, never changed
again. The rest is shown as a partial. Why each piece exists:

- VAD first: silence costs a Silero call (microseconds per frame), never a Whisper call, so a quiet
  room yields no hallucinated "Thank you." and audio outside speech is not kept.
- End of speech (`end_silence_ms` of VAD silence) finalises the tail at once: waiting for a second
  agreeing pass would hold the last words of every sentence until someone speaks again.
- Self-adaptive: when the source is backed up (the chunk was captured long ago), the pass is put off
  until the queue is drained, so a slow pass simply takes in more audio next time.
- Bounded over hours: the buffer is trimmed at committed sentence ends past `trim_seconds` and cut
  hard near `max_buffer_seconds`; the prompt is the last `prompt_chars` of committed text; every
  other piece of state lives inside the buffer.
- Whisper sometimes loops ("the the the ..."); an n-gram loop detector drops the loop and restarts.

Design studied from ufal/whisper_streaming (LocalAgreement-2, its VAC controller); the code is our own. Blocking: call `push`/`flush` from a worker thread; one instance per stream.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.vad import get_vad_model

from livesum.config import AsrConfig, StreamingAsrConfig
from livesum.events import Segment, Word
from livesum.sentences import ends_sentence
from livesum.source.audio import AudioChunk

SAMPLE_RATE = 16000  # Silero and Whisper both work at 16 kHz
VAD_FRAME = 512  # samples per Silero decision at 16 kHz (32 ms): the model's fixed window
VAD_WARMUP_FRAMES = 16  # recent frames replayed before new ones: Silero's state starts cold each call
PRE_ROLL_SECONDS = 0.3  # audio kept before speech onset, so the first consonant is not clipped
MIN_SPEECH_SECONDS = 0.25  # an "utterance" with less speech than this (a click, a cough) is dropped unheard
GAP_TOLERANCE_SECONDS = 0.05  # a jump in chunk start times beyond this (dropped audio, a clock reset) ends the utterance
MAX_OVERLAP_WORDS = 5  # committed words Whisper may say again at the start of a pass, its timestamps drifting
# A pass that finalises without a second opinion sees the audio end abruptly; Whisper then tends to
# invent a closing "Thank you." (seen on the librivox sample). A little silence after the audio and
# dropping near-zero-probability trailing words (that one had 0.0) keep it out.
END_PAD_SECONDS = 0.3
BACKLOG_SECONDS = 1.0  # a chunk captured this long ago (or min_chunk_seconds, if longer) means the source is backed up
VOICED_MARGIN_SECONDS = 0.1  # a word may end this far past the last frame the VAD heard as speech
UNSURE_TAIL_PROBABILITY = 0.1
ENCODER_WINDOW_STEP = 10  # seconds: few distinct window sizes, each a little longer than the buffer (5: 1-3 points worse WER)
# Loop guard: an n-gram of 2..8 words repeated this many times in a row, or one word this many + 2.
LOOP_REPEATS = 3
LOOP_MAX_NGRAM = 8


@dataclass(frozen=True)
class HypWord:
    """A word of one Whisper pass, in stream seconds. `segment_end`: Whisper closed a segment after it.

    `text` keeps Whisper's leading space: "ill" + "-disposed" must join without one.
    """

    text: str
    start: float
    end: float
    probability: float | None = None
    segment_end: bool = False

    @property
    def key(self) -> str:
        """The normalised form two passes are compared on (case and punctuation vary between passes)."""
        return normalise(self.text)

    @property
    def ends_sentence(self) -> bool:
        return ends_sentence(self.text)


def join_words(words: Sequence[HypWord]) -> str:
    return "".join(w.text for w in words).strip()


# (audio of the utterance buffer, stream time of its first sample, prompt) -> words in stream time
Recognizer = Callable[[np.ndarray, float, str], list[HypWord]]


def normalise(word: str) -> str:
    cleaned = re.sub(r"[^\w']+", "", word.lower()).strip("'")
    return cleaned or word.strip().lower()


def find_loop(words: Sequence[str]) -> int | None:
    """Index where a repetition loop starts (an n-gram repeated LOOP_REPEATS times in a row), or None."""
    count = len(words)
    for start in range(count):
        for n in range(1, LOOP_MAX_NGRAM + 1):
            repeats = LOOP_REPEATS + 2 if n == 1 else LOOP_REPEATS
            if start + n * repeats > count:
                break
            gram = words[start:start + n]
            if all(words[start + k * n:start + (k + 1) * n] == gram for k in range(1, repeats)):
                return start
    return None


class SileroFrames:
    """Speech probability per 512-sample frame of a stream, on faster-whisper's bundled Silero model.

    faster-whisper's model call resets its recurrent state, so the last few frames are replayed in
    front of each new batch to warm it up; their outputs are discarded.
    """

    def __init__(self) -> None:
        self.model = get_vad_model()
        self.history = np.zeros(0, dtype=np.float32)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if not len(frames):
            return np.zeros(0, dtype=np.float32)
        audio = np.concatenate([self.history, frames])
        probabilities = np.asarray(self.model(audio)).reshape(-1)
        self.history = audio[-VAD_WARMUP_FRAMES * VAD_FRAME:]
        return probabilities[-(len(frames) // VAD_FRAME):]


SpeechDetector = Callable[[np.ndarray], np.ndarray]  # frames (a multiple of 512 samples) -> probability per frame


def encoder_window(seconds: float) -> int:
    """Whisper window for `seconds` of audio: rounded up to 10 s (a little room for the end), at most 30."""
    return min(30, max(ENCODER_WINDOW_STEP, math.ceil((seconds + 0.2) / ENCODER_WINDOW_STEP) * ENCODER_WINDOW_STEP))


def whisper_recognizer(model: WhisperModel, config: AsrConfig) -> Recognizer:
    """The one place the streaming policy calls Whisper: word timestamps, no VAD (already done), no own context.

    With `fit_encoder_window`, the encoder sees only the buffer (rounded up) instead of a padded 30 s
    window. faster-whisper's `chunk_length` sets the window on the model's feature extractor, for
    good, so this transcriber works on a shallow copy of the model with its own extractor: the weights
    stay shared, and the batch policy and other streams on the same model keep their 30 s windows.
    `chunk_length` alone is not enough: since faster-whisper 1.1 every window is zero-padded to 3000
    frames before the encoder whatever the chunk length (pad_or_trim's default), so the copy's `encode`
    cuts the padding back to the window; the decoder, word alignment and timestamps already work in
    the window's frames.
    """
    fit = config.streaming.fit_encoder_window
    decoding = {} if config.streaming.temperature_fallback else {"temperature": 0.0}  # left out: faster-whisper's own fallback temperatures
    if fit:
        model = copy.copy(model)
        model.feature_extractor = copy.copy(model.feature_extractor)

        def encode_window(features: np.ndarray) -> object:
            window = np.ascontiguousarray(features[..., :model.feature_extractor.nb_max_frames])
            return type(model).encode(model, window)

        model.encode = encode_window  # type: ignore[method-assign]

    def recognize(audio: np.ndarray, offset: float, prompt: str) -> list[HypWord]:
        window = encoder_window(len(audio) / SAMPLE_RATE) if fit else None
        if window is not None and len(audio) < window * SAMPLE_RATE:
            # Silence after the speech, as Whisper's own 30 s padding gives it: with bare zero features
            # instead, the streaming WER rose 2-7 points on festival's meetings (docs/live.md).
            audio = np.concatenate([audio, np.zeros(window * SAMPLE_RATE - len(audio), dtype=np.float32)])
        segments, _ = model.transcribe(
            audio,
            language=config.language,
            beam_size=config.streaming.beam_size,
            **decoding,
            word_timestamps=True,
            initial_prompt=prompt or None,
            vad_filter=False,
            condition_on_previous_text=False,
            chunk_length=window,
            max_new_tokens=config.max_new_tokens or None,
        )
        words: list[HypWord] = []
        for segment in segments:
            piece = [word for word in segment.words or () if word.word.strip()]
            for index, word in enumerate(piece):
                words.append(
                    HypWord(
                        text=word.word if word.word.startswith(" ") else word.word.strip(),
                        start=offset + word.start,
                        end=offset + word.end,
                        probability=min(1.0, max(0.0, float(word.probability))),
                        segment_end=index == len(piece) - 1,
                    )
                )
        return words

    return recognize


class LocalAgreementTranscriber:
    """Audio chunks in; final segments for committed words and partial segments for the open tail out."""

    def __init__(
        self,
        recognize: Recognizer,
        config: StreamingAsrConfig,
        sample_rate: int,
        *,
        detector: SpeechDetector | None = None,
        vad_threshold: float = 0.5,
        language: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"the streaming policy needs 16 kHz audio (Silero, Whisper), got {sample_rate} Hz")
        self.recognize = recognize
        self.config = config
        self.sample_rate = sample_rate
        self.detector = detector or SileroFrames()
        self.threshold = vad_threshold
        self.neg_threshold = max(vad_threshold - 0.15, 0.01)
        self.language = language
        self.clock = clock
        self.id_prefix = uuid.uuid4().hex[:8]
        self.id_counter = itertools.count(1)
        self.open_id = self._new_id()
        self.partial_text = ""  # what the screen shows under `open_id` right now
        # The stream clock and VAD framing.
        self.next_time: float | None = None  # stream time of the next sample to arrive
        self.pending = np.zeros(0, dtype=np.float32)  # samples short of a full VAD frame
        self.pre_roll = np.zeros(0, dtype=np.float32)
        self.wall_anchor: tuple[float, float] | None = None  # (stream time, wall time) of the latest captured sample
        # The open utterance.
        self.in_speech = False
        self.silence_run = 0.0
        self.speech_seconds = 0.0
        self.voiced_until = 0.0  # stream time where the VAD last heard speech: no word ends much later
        self.audio = np.zeros(0, dtype=np.float32)
        self.buffer_start = 0.0
        self.new_audio = 0.0  # seconds appended since the last pass
        self.committed: list[HypWord] = []  # committed words still inside the buffer
        self.committed_end = 0.0  # stream time the committed text reaches (never goes back)
        self.tail: list[HypWord] = []  # the previous pass's words after the commit point
        self.context = ""  # committed text that left the buffer: Whisper's prompt, capped
        self.passes = 0  # Whisper calls made (tests and benchmarks read it)

    @classmethod
    def with_whisper(cls, model: WhisperModel, config: AsrConfig, sample_rate: int) -> LocalAgreementTranscriber:
        return cls(
            whisper_recognizer(model, config),
            config.streaming,
            sample_rate,
            vad_threshold=config.vad_threshold,
            language=config.language,
        )

    # -- the Transcriber interface -------------------------------------------------------------------

    def push(self, chunk: AudioChunk) -> list[Segment]:
        if chunk.sample_rate != self.sample_rate:
            raise ValueError(f"chunk at {chunk.sample_rate} Hz, transcriber expects {self.sample_rate} Hz")
        out: list[Segment] = []
        expected = None if self.next_time is None else self.next_time + len(self.pending) / self.sample_rate
        if expected is not None and abs(chunk.start - expected) > GAP_TOLERANCE_SECONDS:
            # Audio went missing (or the source's clock restarted): do not glue two stretches together.
            out += self._end_utterance()
            self.pending = np.zeros(0, dtype=np.float32)
            self.next_time = None
            self.committed_end = min(self.committed_end, chunk.start)
        if self.next_time is None:
            self.next_time = chunk.start - len(self.pending) / self.sample_rate
        if chunk.captured_at is not None:
            self.wall_anchor = (chunk.end, chunk.captured_at)
        samples = np.concatenate([self.pending, chunk.samples.astype(np.float32, copy=False)])
        usable = len(samples) - len(samples) % VAD_FRAME
        self.pending = samples[usable:]
        out += self._take_frames(samples[:usable])
        if self.in_speech and self._pass_due(chunk):
            out += self._pass()
        return out

    def flush(self) -> list[Segment]:
        out: list[Segment] = []
        if len(self.pending):
            frame = np.zeros(VAD_FRAME, dtype=np.float32)
            frame[:len(self.pending)] = self.pending
            self.pending = np.zeros(0, dtype=np.float32)
            out += self._take_frames(frame)
        out += self._end_utterance()
        return out

    # -- introspection (status line, tests, benchmark) -------------------------------------------------

    @property
    def buffered_seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def prompt(self) -> str:
        """The last `prompt_chars` of committed text, starting at a whole word."""
        limit = self.config.prompt_chars
        if not limit or not self.context:
            return ""
        if len(self.context) <= limit:
            return self.context
        tail = self.context[-limit:]
        return tail.split(" ", 1)[1] if " " in tail else ""

    def state_size(self) -> int:
        """Items held across calls; stays bounded however long the stream runs."""
        return len(self.audio) + len(self.pre_roll) + len(self.pending) + len(self.committed) + len(self.tail) + len(self.context)

    # -- VAD gating ------------------------------------------------------------------------------------

    def _take_frames(self, samples: np.ndarray) -> list[Segment]:
        if not len(samples):
            return []
        out: list[Segment] = []
        probabilities = self.detector(samples)
        frame_seconds = VAD_FRAME / self.sample_rate
        for index, probability in enumerate(probabilities):
            frame = samples[index * VAD_FRAME:(index + 1) * VAD_FRAME]
            frame_start = self.next_time if self.next_time is not None else 0.0
            self.next_time = frame_start + frame_seconds
            if probability >= self.threshold:
                if not self.in_speech:
                    self._start_utterance(frame_start)
                self.silence_run = 0.0
                self.speech_seconds += frame_seconds
            elif not self.in_speech:
                self.pre_roll = np.concatenate([self.pre_roll, frame])[-int(PRE_ROLL_SECONDS * self.sample_rate):]
                continue
            elif probability < self.neg_threshold:
                self.silence_run += frame_seconds
            if probability >= self.neg_threshold:
                self.voiced_until = frame_start + frame_seconds
            self.audio = np.concatenate([self.audio, frame])
            self.new_audio += frame_seconds
            if self.silence_run * 1000 >= self.config.end_silence_ms:
                out += self._end_utterance()
            elif self.buffered_seconds >= self.config.max_buffer_seconds:
                out += self._hard_cut()
        return out

    def _start_utterance(self, at: float) -> None:
        self.in_speech = True
        self.audio = self.pre_roll
        self.buffer_start = at - len(self.pre_roll) / self.sample_rate
        self.pre_roll = np.zeros(0, dtype=np.float32)
        self.new_audio = self.buffered_seconds
        self.silence_run = self.speech_seconds = 0.0

    def _pass_due(self, chunk: AudioChunk) -> bool:
        """Enough new audio, enough of it speech (a click is never sent to Whisper), and the source is not
        backed up (a backlog means: take more audio first)."""
        if self.new_audio < self.config.min_chunk_seconds or self.speech_seconds < MIN_SPEECH_SECONDS:
            return False
        if chunk.captured_at is None:
            return True
        behind = self.clock() - chunk.captured_at
        return behind < max(self.config.min_chunk_seconds, BACKLOG_SECONDS) or self.new_audio >= self.config.trim_seconds

    # -- Whisper passes and the agreement rule -----------------------------------------------------------

    def _hypothesis(self, *, final: bool = False) -> list[HypWord]:
        """Words of a fresh pass past the commit point (`final`: nothing will confirm them)."""
        self.passes += 1
        self.new_audio = 0.0
        audio = self.audio
        if final:
            audio = np.concatenate([audio, np.zeros(int(END_PAD_SECONDS * self.sample_rate), dtype=np.float32)])
        words = self.recognize(audio, self.buffer_start, self.prompt)
        buffer_end = self.buffer_start + self.buffered_seconds
        # Whisper stretches a last word over the silence after it (the VAD's end-of-speech wait, the
        # window's padding): it ends where the VAD last heard speech, so captions' end times (their
        # latency, the diarizer's windows) stay on the speech, and never past the buffer.
        speech_end = min(self.voiced_until + VOICED_MARGIN_SECONDS, buffer_end)
        words = [w if w.end <= speech_end else replace(w, start=min(w.start, speech_end), end=speech_end) for w in words]
        # Words mostly before the commit point were committed already.
        words = [w for w in words if (w.start + w.end) / 2 >= self.committed_end and w.start < buffer_end]
        # Whisper may say the last committed words again with drifted timestamps: drop that overlap, but
        # only words starting before the commit point, so a real repetition ("that that") survives.
        recent = [w.key for w in self.committed[-MAX_OVERLAP_WORDS:]]
        leading = next((i for i, w in enumerate(words) if w.start >= self.committed_end), len(words))
        for size in range(min(len(recent), leading), 0, -1):
            if recent[-size:] == [w.key for w in words[:size]]:
                words = words[size:]
                break
        if final:
            while words and words[-1].probability is not None and words[-1].probability < UNSURE_TAIL_PROBABILITY:
                words.pop()
        return words

    def _pass(self) -> list[Segment]:
        words = self._hypothesis()
        loop_at = find_loop([w.key for w in words])
        if loop_at is not None:
            return self._drop_loop(words[:loop_at])
        agreed = 0
        for old, new in zip(self.tail, words):
            if old.key != new.key:
                break
            agreed += 1
        out = self._commit(words[:agreed])
        self.tail = words[agreed:]
        out += self._show_partial()
        self._trim()
        return out

    def _end_utterance(self) -> list[Segment]:
        """Speech ended (or the stream did): the whole open tail is final now, and the utterance closes."""
        out: list[Segment] = []
        if self.in_speech and self.speech_seconds >= MIN_SPEECH_SECONDS:
            words = self._hypothesis(final=True) if self.new_audio > 0 else self.tail
            loop_at = find_loop([w.key for w in words])
            out += self._commit(words if loop_at is None else words[:loop_at])
        self.tail = []
        out += self._show_partial()
        self._retire_committed(len(self.committed))
        self.audio = np.zeros(0, dtype=np.float32)
        self.buffer_start = self.next_time or self.buffer_start
        self.in_speech = False
        self.new_audio = self.silence_run = self.speech_seconds = 0.0
        return out

    def _drop_loop(self, before_loop: list[HypWord]) -> list[Segment]:
        """Whisper is looping: keep the words before the loop, forget the audio and the prompt that fed it."""
        out = self._commit(before_loop)
        self.tail = []
        out += self._show_partial()
        self._retire_committed(len(self.committed))
        self.context = ""
        self.buffer_start += self.buffered_seconds
        self.audio = np.zeros(0, dtype=np.float32)
        self.new_audio = 0.0
        return out

    # -- committing and emitting -------------------------------------------------------------------------

    def _commit(self, words: list[HypWord]) -> list[Segment]:
        """Make `words` final: one Segment per sentence piece; the first takes over the partial's id."""
        if not words:
            return []
        out: list[Segment] = []
        piece: list[HypWord] = []
        for word in words:
            start = max(word.start, self.committed_end)
            word = HypWord(word.text, start, max(word.end, start), word.probability, word.segment_end)
            self.committed_end = word.end
            self.committed.append(word)
            piece.append(word)
            if word.ends_sentence:
                out.append(self._segment(piece, final=True, segment_id=self.open_id))
                self.open_id, self.partial_text, piece = self._new_id(), "", []
        if piece:
            out.append(self._segment(piece, final=True, segment_id=self.open_id))
            self.open_id, self.partial_text = self._new_id(), ""
        return out

    def _show_partial(self) -> list[Segment]:
        text = join_words(self.tail)
        if text == self.partial_text:
            return []
        self.partial_text = text
        if not self.tail:  # clears the line a partial left on screen
            return [Segment(final=False, start=self.committed_end, end=self.committed_end, text="", id=self.open_id, language=self.language)]
        return [self._segment(self.tail, final=False, segment_id=self.open_id)]

    def _segment(self, words: list[HypWord], *, final: bool, segment_id: str) -> Segment:
        start = max(0.0, words[0].start)
        end = max(start, words[-1].end)
        return Segment(
            final=final,
            start=round(start, 3),
            end=round(end, 3),
            text=join_words(words),
            language=self.language,
            id=segment_id,
            words=[
                Word(text=w.text.strip(), start=round(max(0.0, w.start), 3), end=round(max(0.0, w.start, w.end), 3), probability=w.probability)
                for w in words
            ],
            latency=self._latency(end),
        )

    def _latency(self, stream_time: float) -> float | None:
        """Wall seconds since the sample at `stream_time` was captured (live sources only)."""
        if self.wall_anchor is None:
            return None
        anchor_time, anchor_wall = self.wall_anchor
        return round(max(0.0, self.clock() - (anchor_wall - (anchor_time - stream_time))), 3)

    def _new_id(self) -> str:
        return f"{self.id_prefix}-{next(self.id_counter)}"

    # -- keeping the buffer bounded ------------------------------------------------------------------------

    def _retire_committed(self, count: int) -> None:
        """The first `count` committed words leave the buffer; their text becomes prompt context."""
        if not count:
            return
        text = join_words(self.committed[:count])
        self.context = (self.context + " " + text).strip()[-max(self.config.prompt_chars, 1) * 2:]
        del self.committed[:count]

    def _cut_before(self, stream_time: float) -> None:
        cut = int(round((stream_time - self.buffer_start) * self.sample_rate))
        cut = max(0, min(cut, len(self.audio)))
        self.audio = self.audio[cut:]
        self.buffer_start += cut / self.sample_rate

    def _trim(self) -> None:
        """Past `trim_seconds`, cut the buffer after the last committed sentence (or Whisper segment) end."""
        if self.buffered_seconds <= self.config.trim_seconds:
            return
        for index in range(len(self.committed) - 1, -1, -1):
            word = self.committed[index]
            if word.ends_sentence or word.segment_end:
                self._retire_committed(index + 1)
                self._cut_before(word.end)
                return

    def _hard_cut(self) -> list[Segment]:
        """The buffer reached `max_buffer_seconds`: cut at the last committed word, or finalise it all."""
        if self.committed:
            end = self.committed[-1].end
            self._retire_committed(len(self.committed))
            self._cut_before(end)
            if self.buffered_seconds < self.config.max_buffer_seconds - self.config.min_chunk_seconds:
                return []
        # Nothing agreed for a whole buffer (or the uncommitted rest is still too long): make it final.
        out = self._commit(self._hypothesis(final=True))
        self.tail = []
        out += self._show_partial()
        self._retire_committed(len(self.committed))
        self._cut_before(self.buffer_start + self.buffered_seconds)
        return out
