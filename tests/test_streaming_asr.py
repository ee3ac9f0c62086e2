"""The streaming (LocalAgreement) transcription policy.

Most tests script Whisper's hypotheses and use an energy detector in place of Silero, so the commit
policy is checked exactly and fast; the slow test runs the real tiny.en model and Silero on speech.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from types import SimpleNamespace

import jiwer
import numpy as np
import pytest
from conftest import SPEECH_REFERENCE, SPEECH_SAMPLE

from livesum.asr.policy import make_transcriber, resolve_policy
from livesum.asr.streaming import PRE_ROLL_SECONDS, HypWord, LocalAgreementTranscriber, encoder_window, find_loop
from livesum.asr.transcriber import BatchTranscriber
from livesum.config import AsrConfig, StreamingAsrConfig
from livesum.events import Segment
from livesum.source.audio import AudioChunk

RATE = 16000
CHUNK = 0.5


def energy_detector(frames: np.ndarray) -> np.ndarray:
    """Stands in for Silero: a 512-sample frame is speech when it is loud."""
    return (np.abs(frames.reshape(-1, 512)).mean(axis=1) > 0.01).astype(np.float32)


def audio_with_speech(seconds: float, speech: list[tuple[float, float]], seed: int = 0) -> np.ndarray:
    """Zeros, with loud noise over the given (start, end) stretches."""
    audio = np.zeros(int(seconds * RATE), dtype=np.float32)
    noise = np.random.default_rng(seed)
    for start, end in speech:
        a, b = int(start * RATE), int(end * RATE)
        audio[a:b] = noise.uniform(-0.3, 0.3, b - a).astype(np.float32)
    return audio


def timeline(text: str, start: float, word_seconds: float = 0.4) -> list[HypWord]:
    """The words of `text`, one every `word_seconds` from `start`; sentence ends close a Whisper segment."""
    words = []
    for index, token in enumerate(text.split()):
        at = start + index * word_seconds
        words.append(HypWord(" " + token, at, at + word_seconds * 0.8, 0.9, segment_end=token.endswith(".")))
    return words


class ScriptedWhisper:
    """Returns the true words Whisper could have heard in the audio it is given, optionally garbling the tail."""

    def __init__(self, truth: list[HypWord], garble: Callable[[list[HypWord], int], list[HypWord]] | None = None) -> None:
        self.truth = truth
        self.garble = garble
        self.calls: list[tuple[float, float, str]] = []  # (offset, seconds, prompt)

    def __call__(self, audio: np.ndarray, offset: float, prompt: str) -> list[HypWord]:
        end = offset + len(audio) / RATE
        self.calls.append((offset, len(audio) / RATE, prompt))
        heard = [w for w in self.truth if w.start >= offset - 0.05 and w.end <= end]
        return self.garble(heard, len(self.calls)) if self.garble else heard


def run(transcriber: LocalAgreementTranscriber, audio: np.ndarray, captured: Callable[[float], float] | None = None) -> list[Segment]:
    step = int(CHUNK * RATE)
    events: list[Segment] = []
    for index in range(0, len(audio), step):
        start = index / RATE
        samples = audio[index:index + step]
        captured_at = captured(start + len(samples) / RATE) if captured else None
        events += transcriber.push(AudioChunk(samples, start, RATE, captured_at=captured_at))
    return events + transcriber.flush()


def streaming(recognize, **config) -> LocalAgreementTranscriber:
    return LocalAgreementTranscriber(recognize, StreamingAsrConfig(**config), RATE, detector=energy_detector)


def final_words(events: list[Segment]) -> list[str]:
    return [w.text for e in events if e.final for w in e.words or []]


def test_agreement_commits_the_common_prefix_of_two_passes_only() -> None:
    hypotheses = iter([
        ["Hello", "world", "foo"],
        ["hello,", "World", "bar", "baz"],  # agrees on "hello world" (case and punctuation aside)
        ["bar", "baz", "qux"],  # agrees on "bar baz"
    ])

    def recognize(audio: np.ndarray, offset: float, prompt: str) -> list[HypWord]:
        words = next(hypotheses)
        t = 2.0 if words[0] == "bar" else 0.1
        return [HypWord(" " + w, t + 0.3 * i, t + 0.3 * i + 0.2) for i, w in enumerate(words)]

    transcriber = streaming(recognize, min_chunk_seconds=1.0)
    events = []
    step = 32 * 512  # 1.024 s: whole VAD frames, so every chunk brings min_chunk_seconds and a pass
    audio = audio_with_speech(3 * step / RATE, [(0.0, 3 * step / RATE)])
    for index in range(0, len(audio), step):
        events.append(transcriber.push(AudioChunk(audio[index:index + step], index / RATE, RATE)))
    assert [e.final for e in events[0]] == [False] and events[0][0].text == "Hello world foo"
    assert [(e.final, e.text) for e in events[1]] == [(True, "hello, World"), (False, "bar baz")]
    assert [(e.final, e.text) for e in events[2]] == [(True, "bar baz"), (False, "qux")]
    rest = transcriber.flush()  # no audio since the last pass: the tail as it stands becomes final
    assert [(e.final, e.text, e.id) for e in rest] == [(True, "qux", events[2][1].id)]
    # No word was ever finalised twice.
    assert final_words([*sum(events, []), *rest]) == ["hello,", "World", "bar", "baz", "qux"]


def test_end_of_speech_flushes_the_tail_at_once_and_resets_the_utterance() -> None:
    truth = timeline("we ship on friday", 0.3) + timeline("next item", 4.0)
    whisper = ScriptedWhisper(truth)
    transcriber = streaming(whisper, end_silence_ms=600)
    audio = audio_with_speech(6.0, [(0.2, 1.9), (3.9, 4.9)])
    step = int(CHUNK * RATE)
    events: list[Segment] = []
    for index in range(0, int(2.9 * RATE), step):  # up to one second after the first stretch
        events += transcriber.push(AudioChunk(audio[index:index + step], index / RATE, RATE))
    # Without any second opinion the tail became final after the pause, and the buffer emptied.
    assert " ".join(final_words(events)) == "we ship on friday"
    assert transcriber.buffered_seconds == 0 and not transcriber.in_speech
    for index in range(int(3.0 * RATE), len(audio), step):
        events += transcriber.push(AudioChunk(audio[index:index + step], index / RATE, RATE))
    assert " ".join(final_words(events)) == "we ship on friday next item"


def test_a_word_stretched_over_the_silence_after_it_ends_with_the_speech() -> None:
    """Whisper may stretch the last word of an utterance over the pause the VAD waits out; the final's
    end (its latency, the diarizer's window) stays where the VAD last heard speech."""
    truth = timeline("we ship on", 0.3)
    truth.append(HypWord(" friday.", 1.5, 2.6, 0.9, segment_end=True))  # the speech stops at 1.9 s
    transcriber = streaming(ScriptedWhisper(truth), end_silence_ms=600)
    events = run(transcriber, audio_with_speech(4.0, [(0.2, 1.9)]))
    finals = [e for e in events if e.final]
    assert " ".join(final_words(events)) == "we ship on friday."
    speech_end = 1.9 + 512 / RATE  # the VAD decides per 32 ms frame
    assert finals[-1].end <= speech_end + 0.1 and finals[-1].words[-1].start == 1.5
    assert all(w.end <= speech_end + 0.1 for f in finals for w in f.words or [])


def test_silence_costs_no_whisper_call_and_is_not_buffered() -> None:
    whisper = ScriptedWhisper(timeline("nothing here", 0.0))
    transcriber = streaming(whisper)
    events = run(transcriber, np.zeros(20 * RATE, dtype=np.float32))
    assert events == [] and whisper.calls == []
    assert transcriber.buffered_seconds == 0 and transcriber.state_size() < RATE  # a little pre-roll only


def test_a_click_shorter_than_a_word_is_never_sent_to_whisper() -> None:
    whisper = ScriptedWhisper([])
    events = run(streaming(whisper), audio_with_speech(5.0, [(1.0, 1.1)]))
    assert events == [] and whisper.calls == []


def test_partial_and_the_final_that_replaces_it_share_an_id() -> None:
    truth = timeline("the budget is approved. we hire two people in march. that is all.", 0.2)
    events = run(streaming(ScriptedWhisper(truth)), audio_with_speech(8.0, [(0.1, 6.5)]))
    finals = [e for e in events if e.final]
    partial_ids = {e.id for e in events if not e.final}
    assert finals and all(e.id for e in events)
    assert len({e.id for e in finals}) == len(finals)  # each final once
    assert partial_ids & {e.id for e in finals}  # partials were replaced by finals with their id
    for final in finals:  # nothing is shown under an id after its final
        later = events[events.index(final) + 1:]
        assert all(e.id != final.id for e in later)
    assert " ".join(final_words(events)) == " ".join(w.text.strip() for w in truth)
    # Finals are split after sentence ends.
    assert any(e.text.endswith("approved.") for e in finals)


def test_committed_words_are_never_retracted_over_a_long_random_run() -> None:
    """Whisper's tail flickers at random; finals only ever extend the transcript, in time order."""
    rng = random.Random(7)
    sentences = [" ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega", "sigma"]) for _ in range(rng.randint(3, 12))) + "." for _ in range(60)]
    truth, speech, at = [], [], 0.5
    for sentence in sentences:
        words = timeline(sentence, at, word_seconds=rng.uniform(0.25, 0.5))
        truth += words
        speech.append((at - 0.1, words[-1].end + 0.1))
        at = words[-1].end + rng.choice([0.2, 0.3, 1.5])  # short pauses keep utterances going, long ones end them

    def garble(heard: list[HypWord], call: int) -> list[HypWord]:
        out = []
        for index, word in enumerate(heard):
            from_end = len(heard) - index
            if from_end <= 3 and rng.random() < 0.5:  # the tail is unstable: misheard, split, dropped
                choice = rng.random()
                if choice < 0.5:
                    out.append(HypWord(f" noise{call}x{index}", word.start, word.end))
                elif choice < 0.8:
                    continue
                else:
                    out += [word, HypWord(f" extra{call}", word.end, word.end + 0.05)]
                continue
            jitter = rng.uniform(-0.04, 0.04)
            out.append(HypWord(word.text, max(0.0, word.start + jitter), word.end + jitter, word.probability, word.segment_end))
        return out

    transcriber = streaming(ScriptedWhisper(truth, garble), min_chunk_seconds=0.5, trim_seconds=6, max_buffer_seconds=12)
    events = run(transcriber, audio_with_speech(at + 2, speech))
    finals = [e for e in events if e.final]
    seen_final: set[str] = set()
    last_end = 0.0
    for event in events:
        assert event.id not in seen_final  # a finalised id never comes back, as partial or final
        if event.final:
            seen_final.add(event.id)
            assert event.start >= last_end - 1e-6  # never overlapping what is already final
            last_end = event.end
    committed = [w.text for e in finals for w in e.words or []]
    # What was committed is the truth, except where a garbled word was the last one heard before a pause.
    clean = [w for w in committed if not w.startswith(("noise", "extra"))]
    assert jiwer.wer(" ".join(w.text.strip() for w in truth), " ".join(clean)) < 0.1
    assert len(committed) - len(clean) <= len(sentences)  # at most one garbled word per utterance end


def test_buffer_is_trimmed_at_sentence_ends_and_cut_hard_without_them() -> None:
    truth = timeline(" ".join(f"word{i}{'.' if i % 9 == 8 else ''}" for i in range(100)), 0.2)
    transcriber = streaming(ScriptedWhisper(truth), trim_seconds=8, max_buffer_seconds=16)
    longest = 0.0
    audio = audio_with_speech(42.0, [(0.1, 41.0)])
    events = []
    for index in range(0, len(audio), int(CHUNK * RATE)):
        events += transcriber.push(AudioChunk(audio[index:index + 8000], index / RATE, RATE))
        longest = max(longest, transcriber.buffered_seconds)
    events += transcriber.flush()
    assert longest <= 8 + 2  # trimmed just past trim_seconds, at a committed sentence end
    assert final_words(events) == [w.text.strip() for w in truth]

    # No punctuation, no segment ends: the hard cut at the last committed word keeps the buffer bounded.
    bare = [HypWord(w.text.rstrip("."), w.start, w.end) for w in truth]
    transcriber = streaming(ScriptedWhisper(bare), trim_seconds=8, max_buffer_seconds=16)
    longest = 0.0
    events = []
    for index in range(0, len(audio), int(CHUNK * RATE)):
        events += transcriber.push(AudioChunk(audio[index:index + 8000], index / RATE, RATE))
        longest = max(longest, transcriber.buffered_seconds)
    events += transcriber.flush()
    assert longest <= 16
    assert final_words(events) == [w.text.strip() for w in bare]


def test_hard_cut_finalises_a_buffer_where_no_two_passes_ever_agree() -> None:
    def never_agrees(heard: list[HypWord], call: int) -> list[HypWord]:
        return [HypWord(f" w{call}x{i}", w.start, w.end) for i, w in enumerate(heard)]

    truth = timeline(" ".join(["x"] * 80), 0.2)
    transcriber = streaming(ScriptedWhisper(truth, never_agrees), trim_seconds=5, max_buffer_seconds=10)
    audio = audio_with_speech(33.0, [(0.1, 32.5)])
    longest, events = 0.0, []
    for index in range(0, len(audio), int(CHUNK * RATE)):
        events += transcriber.push(AudioChunk(audio[index:index + 8000], index / RATE, RATE))
        longest = max(longest, transcriber.buffered_seconds)
        assert transcriber.buffered_seconds <= 10
    assert [e for e in events if e.final]  # text still reaches the transcript, a buffer at a time


def test_loop_detector() -> None:
    assert find_loop("thank you thank you thank you".split()) == 0
    assert find_loop("so we agreed that that that that that is it".split()) == 3
    assert find_loop("no no no we will not".split()) is None  # people do say this
    assert find_loop("the plan is the plan is the plan is fine".split()) == 0
    assert find_loop("a b c d a b c d".split()) is None


def test_a_repetition_loop_is_dropped_and_the_buffer_reset() -> None:
    def loops(heard: list[HypWord], call: int) -> list[HypWord]:
        if call != 3:
            return heard
        start = heard[2].start if len(heard) > 2 else 0.0
        return heard[:2] + [HypWord(" and then", start + 0.1 * i, start + 0.1 * i + 0.05) for i in range(12)]

    truth = timeline("we will meet again tomorrow at nine and discuss the roadmap", 0.2)
    whisper = ScriptedWhisper(truth, loops)
    transcriber = streaming(whisper, min_chunk_seconds=1.0)
    events = run(transcriber, audio_with_speech(7.0, [(0.1, 5.0)]))
    text = " ".join(e.text for e in events if e.final)
    assert "and then and then" not in text
    assert text.startswith("we will")
    third_pass_end = whisper.calls[2][0] + whisper.calls[2][1]
    assert whisper.calls[3][0] >= third_pass_end - 1e-6  # the looping audio was not transcribed again
    assert whisper.calls[3][2] == ""  # nor the prompt that fed the loop


def test_latency_is_wall_time_since_the_last_sample_was_captured() -> None:
    now = [0.0]
    truth = timeline("latency check here.", 0.2)
    transcriber = LocalAgreementTranscriber(ScriptedWhisper(truth), StreamingAsrConfig(), RATE, detector=energy_detector, clock=lambda: now[0])
    audio = audio_with_speech(4.0, [(0.1, 1.6)])
    made_at: list[tuple[Segment, float]] = []
    for index in range(0, len(audio), 8000):
        end = (index + 8000) / RATE
        now[0] = 1000.0 + end + 0.25  # each chunk is processed 0.25 s after its capture
        for event in transcriber.push(AudioChunk(audio[index:index + 8000], index / RATE, RATE, captured_at=1000.0 + end)):
            made_at.append((event, now[0]))
    assert any(event.final for event, _ in made_at)
    for event, clock in made_at:
        if event.text:
            assert event.latency == pytest.approx(clock - (1000.0 + event.end), abs=1e-3)
            assert event.latency >= 0.25


def test_an_hour_keeps_buffer_prompt_and_state_bounded() -> None:
    """An hour of talk (20 s turns, 2 s pauses), accelerated: nothing grows with the stream."""
    vocabulary = ["budget", "roadmap", "hiring", "release", "customer", "design", "review", "launch"]
    turn, pause, word_seconds = 20.0, 2.0, 0.4

    def recognize(audio: np.ndarray, offset: float, prompt: str) -> list[HypWord]:
        end = offset + len(audio) / RATE
        words = []
        first = int(np.ceil(offset / word_seconds))
        for index in range(first, int(end / word_seconds)):
            at = index * word_seconds
            if at % (turn + pause) > turn - word_seconds:  # inside a pause
                continue
            token = vocabulary[index % len(vocabulary)] + ("." if index % 11 == 10 else "")
            words.append(HypWord(" " + token, at, at + 0.3))
        return words

    config = StreamingAsrConfig()
    transcriber = LocalAgreementTranscriber(recognize, config, RATE, detector=energy_detector)
    speech_chunk = np.full(int(CHUNK * RATE), 0.2, dtype=np.float32)
    silence_chunk = np.zeros(int(CHUNK * RATE), dtype=np.float32)
    sizes, finals = [], 0
    for index in range(int(3600 / CHUNK)):
        start = index * CHUNK
        samples = speech_chunk if start % (turn + pause) < turn else silence_chunk
        finals += sum(e.final for e in transcriber.push(AudioChunk(samples, start, RATE)))
        assert transcriber.buffered_seconds <= config.max_buffer_seconds
        assert len(transcriber.prompt) <= config.prompt_chars
        sizes.append(transcriber.state_size())
    assert finals > 1000  # it did transcribe the hour
    first_ten_minutes = max(sizes[: len(sizes) // 6])
    assert max(sizes) <= first_ten_minutes  # the last 50 minutes never needed more state than the first 10
    assert len(transcriber.context) <= 2 * config.prompt_chars


def test_encoder_window_fits_the_buffer() -> None:
    assert [encoder_window(s) for s in (0.5, 9.7, 9.9, 12.0, 29.0, 31.0)] == [10, 10, 20, 20, 30, 30]


def test_policy_is_chosen_by_config() -> None:
    assert resolve_policy(AsrConfig(), live=True) == "streaming"
    assert resolve_policy(AsrConfig(), live=False) == "batch"
    assert resolve_policy(AsrConfig(policy="streaming"), live=False) == "streaming"
    assert resolve_policy(AsrConfig(policy="batch"), live=True) == "batch"
    model = SimpleNamespace(feature_extractor=object())  # neither policy runs the model before audio arrives
    assert isinstance(make_transcriber(model, AsrConfig(), RATE, live=True), LocalAgreementTranscriber)  # type: ignore[arg-type]
    assert isinstance(make_transcriber(model, AsrConfig(), RATE, live=False), BatchTranscriber)  # type: ignore[arg-type]


def test_bad_chunks_get_a_clear_error_and_the_stream_goes_on() -> None:
    transcriber = streaming(ScriptedWhisper(timeline("still here", 0.2)))
    with pytest.raises(ValueError, match="8000 Hz"):
        transcriber.push(AudioChunk(np.zeros(4000, dtype=np.float32), 0.0, 8000))
    events = run(transcriber, audio_with_speech(3.0, [(0.1, 1.2)]))
    assert final_words(events) == ["still", "here"]


def test_dropped_audio_ends_the_utterance_and_a_restarted_clock_is_followed() -> None:
    truth = timeline("first part here", 0.2) + timeline("after the gap", 10.2) + timeline("clock restarted", 0.2)
    transcriber = streaming(ScriptedWhisper(truth[:6]))
    speech = audio_with_speech(1.5, [(0.1, 1.4)])
    events = []
    for index in range(0, len(speech), 8000):  # 1.5 s of speech, then the source skips to 10 s
        events += transcriber.push(AudioChunk(speech[index:index + 8000], index / RATE, RATE))
    assert final_words(events) == []  # still open
    events += transcriber.push(AudioChunk(speech[:8000], 10.0, RATE))
    assert final_words(events) == ["first", "part", "here"]  # the gap closed the first utterance at once
    events += run_from(transcriber, speech[8000:], 10.5)
    assert final_words(events)[3:] == ["after", "the", "gap"]
    transcriber.recognize = ScriptedWhisper(truth[6:])  # a new stream clock starting at 0 again
    events += run_from(transcriber, speech, 0.0) + transcriber.flush()
    assert final_words(events)[6:] == ["clock", "restarted"]


def run_from(transcriber: LocalAgreementTranscriber, audio: np.ndarray, start: float) -> list[Segment]:
    events: list[Segment] = []
    for index in range(0, len(audio), 8000):
        events += transcriber.push(AudioChunk(audio[index:index + 8000], start + index / RATE, RATE))
    return events + transcriber.push(AudioChunk(np.zeros(16000, dtype=np.float32), start + len(audio) / RATE, RATE))


@pytest.mark.slow
def test_real_speech_with_tiny_en(model_cache, monkeypatch) -> None:  # noqa: ANN001
    """samples/librivox.flac in 0.5 s chunks through tiny.en and Silero."""
    from faster_whisper import WhisperModel

    from livesum.asr.transcriber import load_whisper
    from livesum.source.file import decode_file

    encoded_frames: list[int] = []
    encode = WhisperModel.encode

    def counting_encode(self: WhisperModel, features: np.ndarray) -> object:
        encoded_frames.append(features.shape[-1])
        return encode(self, features)

    monkeypatch.setattr(WhisperModel, "encode", counting_encode)
    config = AsrConfig(model="tiny.en", policy="streaming")
    model = load_whisper(config, model_cache)
    transcriber = make_transcriber(model, config, RATE, live=True)
    assert isinstance(transcriber, LocalAgreementTranscriber)
    # A second of silence first: the VAD hears nothing, Whisper is not called.
    assert transcriber.push(AudioChunk(np.zeros(8000, dtype=np.float32), 0.0, RATE)) == []
    assert transcriber.push(AudioChunk(np.zeros(8000, dtype=np.float32), 0.5, RATE)) == []
    assert transcriber.passes == 0
    events: list[Segment] = []
    for chunk in decode_file(SPEECH_SAMPLE, RATE, CHUNK):
        events += transcriber.push(AudioChunk(chunk.samples, chunk.start + 1.0, RATE))
    events += transcriber.flush()

    finals = [e for e in events if e.final]
    partials = [e for e in events if not e.final and e.text]
    assert partials and finals
    first_seen = {}
    for index, event in enumerate(events):
        first_seen.setdefault(event.id, index)
    assert any(first_seen[f.id] < events.index(f) for f in finals)  # captions showed before they were final
    assert all(f.words and f.start >= 1.0 - PRE_ROLL_SECONDS for f in finals)  # times are on the stream clock

    def norm(text: str) -> str:
        return " ".join(re.sub(r"[^\w' ]+", " ", text.lower().replace("-", " ")).split())

    # The short encoder windows stayed on this transcriber's copy: the shared model still encodes 30 s.
    assert model.feature_extractor.nb_max_frames == 3000
    # Each pass encoded its window, not a 30 s one padded with zeros (faster-whisper pads every window
    # to 3000 frames; the copy cuts that back): 10 s windows, 20 s once the sentence ran long.
    assert encoded_frames and set(encoded_frames) <= {1000, 2000, 3000}
    assert encoded_frames.count(1000) > len(encoded_frames) / 2
    error = jiwer.wer(norm(SPEECH_REFERENCE.read_text()), norm(" ".join(f.text for f in finals)))
    # Measured 0.028 (2 of 71 words) with tiny.en on this machine; the batch policy gets about the same.
    assert error <= 0.10
