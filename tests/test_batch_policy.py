"""The batch transcription policy (files) with windows in flight: several windows transcribed at once,
segments still returned in stream order and the same as one window at a time."""

from __future__ import annotations

import re

import jiwer
import pytest
from conftest import SAMPLES, SPEECH_REFERENCE

from livesum.asr.policy import make_transcriber
from livesum.asr.transcriber import BatchTranscriber, load_whisper
from livesum.config import AsrConfig
from livesum.events import Segment
from livesum.source.file import decode_file

RATE = 16000


def transcribe(transcriber: BatchTranscriber, path: str) -> list[Segment]:
    segments: list[Segment] = []
    for chunk in decode_file(SAMPLES / path, RATE, 0.5):
        segments += transcriber.push(chunk)
    return segments + transcriber.flush()


def norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w' ]+", " ", text.lower().replace("-", " ")).split())


@pytest.mark.slow
def test_windows_in_flight_give_the_same_segments_in_order(model_cache) -> None:  # noqa: ANN001
    """Short windows (8 s) over the 40 s reading: five or so windows, two at a time on two workers."""
    config = AsrConfig(model="tiny.en", policy="batch", window_seconds=8.0, cpu_threads=1)
    model = load_whisper(config, model_cache)
    in_turn = make_transcriber(model, config.model_copy(update={"windows_in_flight": 1}), RATE, live=False)
    overlapped = make_transcriber(model, config.model_copy(update={"windows_in_flight": 2}), RATE, live=False)
    assert isinstance(in_turn, BatchTranscriber) and isinstance(overlapped, BatchTranscriber)
    assert (in_turn.in_flight, overlapped.in_flight) == (1, 2)

    one = transcribe(in_turn, "librivox.flac")
    two = transcribe(overlapped, "librivox.flac")
    assert len(one) >= 4  # several windows, so some were in flight together
    assert [(s.start, s.end, s.text) for s in two] == [(s.start, s.end, s.text) for s in one]
    assert all(a.end <= b.start + 0.5 for a, b in zip(two, two[1:]))  # stream order
    assert overlapped.buffered_seconds == 0.0 and overlapped.in_flight == 1  # flushed: nothing held, the pool gone
    error = jiwer.wer(norm(SPEECH_REFERENCE.read_text()), norm(" ".join(s.text for s in two)))
    assert error <= 0.10


def test_partials_keep_one_window_at_a_time_and_auto_follows_the_workers() -> None:
    """Partials must see the finals before them, so they turn the overlap off; 'auto' (0) takes one
    window per Whisper worker."""
    class Workers:
        def __init__(self, count: int) -> None:
            self.model = type("Ct2", (), {"num_workers": count})()

    auto = AsrConfig(policy="batch", windows_in_flight=0)
    assert BatchTranscriber(Workers(2), auto, RATE).in_flight == 2  # type: ignore[arg-type]
    assert BatchTranscriber(Workers(1), auto, RATE).in_flight == 1  # type: ignore[arg-type]
    with_partials = auto.model_copy(update={"partial_every_seconds": 2.0, "windows_in_flight": 3})
    assert BatchTranscriber(Workers(2), with_partials, RATE).in_flight == 1  # type: ignore[arg-type]
