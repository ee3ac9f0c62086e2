"""Diarization error rate, speed and memory of livesum's speaker labels (livesum/asr/diarize.py).

The labels are scored as users see them: each final segment's words (Whisper's timings) with the
speaker the segment was given, against a reference of who spoke when. DER uses pyannote.metrics with
the usual 0.25 s collar, and missed speech, false alarm and confusion are reported apart (missed and
false alarm come mostly from Whisper's word timings; confusion is the diarizer's own share).

Data (docs/diarization.md says which informed the defaults):
- the synthesized meetings of samples/meetings and samples/meeting_script.toml, reference from
  make_meeting.py's turn times, cut at the silences inside each turn; spoken by espeak-ng (several
  of its "people" share one voice, so DER is also scored against the voices it really used) or,
  with `--synth festival`, by festival's three English voices shifted in pitch, one per person;
- real read speech of different people joined into a conversation (turns alternate, 0.5 s apart):
  `two_readers` = samples/two_readers.flac (LibriVox reader + the pocketsphinx "cards" speaker; the
  tests use it), and held out from tests and tuning, from Debian packages: `alsa_and_digits` (the
  alsa-utils channel-test voice + the pocketsphinx goforward/numbers/something speaker) and
  `three_readers` (LibriVox + alsa + goforward speaker);
- `phone_call`, held out: the 30 s of a real telephone conversation (two women, some overlap) with
  its RTTM that the pyannote.audio wheel ships as its sample (MIT); fetched once from PyPI with
  `pip download` into ~/.cache/livesum/benchmarks.

    python benchmarks/diarization.py                       # every recording, file (batch) policy
    python benchmarks/diarization.py --policy streaming --only cafe_supplier two_readers
    python benchmarks/diarization.py --json out.json --asr-model tiny.en
    python benchmarks/diarization.py --synth festival --only cafe_supplier housing_coop

Speed is the time spent in the diarizer (CAM++ windows and the assignment) over the audio duration;
peak RSS is the whole process (Whisper included) and the diarizer's own load is reported apart.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "samples"))

from livesum.asr.diarize import DiarizingTranscriber, shared_voice_embedder  # noqa: E402
from livesum.asr.policy import make_transcriber  # noqa: E402
from livesum.asr.transcriber import load_whisper  # noqa: E402
from livesum.config import load_settings  # noqa: E402
from livesum.events import Segment  # noqa: E402
from livesum.source.audio import AudioChunk  # noqa: E402

RATE = 16000
PAUSE = 0.5
POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
ALSA = Path("/usr/share/sounds/alsa")
LIBRIVOX = [POCKETSPHINX / "librivox" / f"sense_and_sensibility_01_austen_64kb-{n}.wav" for n in ("0870", "0880", "0890", "0920", "0930")]
CARDS = [POCKETSPHINX / "cards" / f"00{n}.wav" for n in range(1, 6)]
ALSA_VOICE = [ALSA / f"{name}.wav" for name in ("Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left", "Rear_Right", "Side_Left", "Side_Right")]
DIGITS = [POCKETSPHINX / f"{name}.raw" for name in ("goforward", "numbers", "something")]
MEETINGS = ["cafe_supplier", "garden_committee", "incident_review", "school_trip", "housing_coop", "meeting_script",
            "football_club", "theatre_production", "vet_practice"]
CONVERSATIONS = {
    "two_readers": None,  # samples/two_readers.flac + .rttm
    "alsa_and_digits": [("alsa", ALSA_VOICE[:4]), ("digits", DIGITS)],
    "three_readers": [("librivox", LIBRIVOX[:3]), ("alsa", ALSA_VOICE[4:]), ("digits", DIGITS)],
    "phone_call": None,  # pyannote.audio's sample
}
PYANNOTE_WHEEL = "pyannote.audio==4.0.7"
PHONE_CALL = Path.home() / ".cache" / "livesum" / "benchmarks" / "phone_call"


# -- data ---------------------------------------------------------------------------------------------

def read_audio(path: Path) -> np.ndarray:
    """16 kHz mono float32 through sox (wav, flac, and pocketsphinx's headerless .raw)."""
    source = ["-t", "raw", "-r", "16000", "-e", "signed", "-b", "16", "-c", "1", str(path)] if path.suffix == ".raw" else [str(path)]
    raw = subprocess.run(["sox", *source, "-t", "raw", "-r", str(RATE), "-e", "float", "-b", "32", "-c", "1", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype=np.float32).copy()


def speech_runs(audio: np.ndarray, offset: float, relative: float = 0.1, gap: float = 0.3) -> list[tuple[float, float]]:
    """Where a clip's 10 ms frames are loud (RMS above `relative` of its loud frames), pauses over `gap` cut."""
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    loud = np.flatnonzero(rms > relative * np.percentile(rms, 95))
    runs: list[tuple[float, float]] = []
    for index in loud:
        at = offset + index * 0.01
        if runs and at - runs[-1][1] <= gap:
            runs[-1] = (runs[-1][0], at + 0.01)
        else:
            runs.append((at, at + 0.01))
    return runs


def assemble(turns: list[tuple[str, Path]], out: Path) -> list[tuple[float, float, str]]:
    """Join clips into one conversation (PAUSE apart); returns the reference (start, end, speaker)."""
    pieces, reference, at = [np.zeros(int(PAUSE * RATE), np.float32)], [], PAUSE
    for speaker, path in turns:
        audio = read_audio(path)
        reference += [(a, b, speaker) for a, b in speech_runs(audio, at)]
        pieces += [audio, np.zeros(int(PAUSE * RATE), np.float32)]
        at += len(audio) / RATE + PAUSE
    import soundfile

    soundfile.write(str(out), np.concatenate(pieces), RATE, subtype="PCM_16")
    return reference


def alternate(groups: list[tuple[str, list[Path]]]) -> list[tuple[str, Path]]:
    turns, longest = [], max(len(paths) for _, paths in groups)
    for index in range(longest):
        turns += [(speaker, paths[index]) for speaker, paths in groups if index < len(paths)]
    return turns


def make_sample() -> None:
    """samples/two_readers.flac: the LibriVox reader and the pocketsphinx "cards" speaker, turn about."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "two_readers.wav"
        reference = assemble(alternate([("reader", LIBRIVOX), ("cards", CARDS)]), wav)
        subprocess.run(["sox", str(wav), str(REPO / "samples" / "two_readers.flac")], check=True)
    write_rttm(reference, "two_readers", REPO / "samples" / "two_readers.rttm")


def phone_call() -> tuple[Path, list[tuple[float, float, str]]]:
    """pyannote.audio's sample conversation and its reference, taken out of the wheel on first use."""
    wav, rttm = PHONE_CALL / "sample.wav", PHONE_CALL / "sample.rttm"
    if not (wav.is_file() and rttm.is_file()):
        import zipfile

        PHONE_CALL.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, PYANNOTE_WHEEL], check=True)
            with zipfile.ZipFile(next(Path(tmp).glob("pyannote_audio-*.whl"))) as wheel:
                for target in (wav, rttm):
                    target.write_bytes(wheel.read(f"pyannote/audio/sample/{target.name}"))
    return wav, read_rttm(rttm)


def write_rttm(reference: list[tuple[float, float, str]], name: str, path: Path) -> None:
    path.write_text("".join(f"SPEAKER {name} 1 {a:.3f} {b - a:.3f} <NA> <NA> {s} <NA> <NA>\n" for a, b, s in reference))


def read_rttm(path: Path) -> list[tuple[float, float, str]]:
    rows = [line.split() for line in path.read_text().splitlines() if line.startswith("SPEAKER")]
    return [(float(r[3]), float(r[3]) + float(r[4]), r[7]) for r in rows]


def espeak_timbre(voice: str, workdir: Path) -> str:
    """The formant set espeak-ng really speaks `voice` with: its +variant, unless espeak ignores it (it
    does for en-gb: "en-gb+f3" gives the very bytes of "en-gb"); without one, the default male voice,
    which en-us and en-gb share (they differ in accent only). Pitch is left out: voice models ignore it."""
    base, _, variant = voice.partition("+")
    if not variant:
        return "default"
    probe = []
    for name in (voice, base):
        out = workdir / f"probe-{name}.wav"
        subprocess.run(["espeak-ng", "-v", name, "-w", str(out), "a probe of the voice"], check=True, capture_output=True)
        probe.append(out.read_bytes())
    return "default" if probe[0] == probe[1] else variant


def meeting(name: str, workdir: Path, synth: str) -> tuple[Path, list[tuple[float, float, str]], dict[str, str]]:
    """A synthesized meeting, its reference and voices; kept in `workdir` (the --cache) for later runs."""
    from make_meeting import synthesize_meeting

    wav, kept = workdir / f"{name}.{synth}.wav", workdir / f"{name}.{synth}.reference.json"
    if wav.is_file() and kept.is_file():
        saved = json.loads(kept.read_text())
        return wav, [tuple(span) for span in saved["reference"]], saved["voices"]
    script = REPO / "samples" / ("meeting_script.toml" if name == "meeting_script" else f"meetings/{name}.toml")
    info = synthesize_meeting(script, wav, synth=synth)
    audio = read_audio(Path(info.audio_path))
    reference = []
    for turn in info.turns:
        lo, hi = int(turn.start * RATE), int(turn.end * RATE)
        reference += [(a, b, turn.name) for a, b in speech_runs(audio[lo:hi], turn.start, relative=0.02)]
    if synth == "festival":  # each person their own (voice, pitch, tempo), as make_meeting.py chose
        timbres = {speaker["name"]: json.dumps(speaker["festival"], sort_keys=True) for speaker in info.speakers}
    else:
        timbres = {speaker["name"]: "voice " + espeak_timbre(speaker["voice"], workdir) for speaker in info.speakers}
    kept.write_text(json.dumps({"reference": reference, "voices": timbres}))
    return Path(info.audio_path), reference, timbres


def recording(name: str, workdir: Path, synth: str = "espeak") -> tuple[Path, list[tuple[float, float, str]], dict[str, str]]:
    """(audio, reference, speaker -> distinguishable voice); real people are each their own voice."""
    if name in MEETINGS:
        return meeting(name, workdir, synth)
    if name == "two_readers":
        reference = read_rttm(REPO / "samples" / "two_readers.rttm")
        return REPO / "samples" / "two_readers.flac", reference, {s: s for _, _, s in reference}
    if name == "phone_call":
        path, reference = phone_call()
        return path, reference, {s: s for _, _, s in reference}
    out = workdir / f"{name}.wav"
    reference = assemble(alternate(CONVERSATIONS[name]), out)
    return out, reference, {s: s for _, _, s in reference}


# -- scoring ------------------------------------------------------------------------------------------

def annotation(spans: list[tuple[float, float, str]]):
    from pyannote.core import Annotation, Segment as Span

    result = Annotation()
    for start, end, speaker in spans:
        if end > start:
            result[Span(start, end)] = speaker
    return result


def hypothesis(segments: list[Segment], gap: float = 0.5) -> list[tuple[float, float, str]]:
    """Who spoke when, as the labelled transcript says: each word's time with its segment's speaker."""
    spans: list[tuple[float, float, str]] = []
    for segment in segments:
        times = [(w.start, w.end) for w in segment.words] if segment.words else [(segment.start, segment.end)]
        for start, end in times:
            speaker = segment.speaker or "?"
            if spans and spans[-1][2] == speaker and start - spans[-1][1] <= gap:
                spans[-1] = (spans[-1][0], max(spans[-1][1], end), speaker)
            else:
                spans.append((start, end, speaker))
    return spans


@dataclass
class Score:
    name: str
    policy: str
    seconds: float
    speakers_true: int
    speakers_found: int
    der: float
    missed: float
    false_alarm: float
    confusion: float
    voices_true: int  # speakers that sound different (espeak's meetings reuse one voice for several)
    der_by_voice: float  # DER against those voices: what a voice model can tell apart
    confusion_by_voice: float
    diarize_seconds: float
    diarize_x_audio: float
    diarize_cpu_x_audio: float
    windows: int
    asr_seconds: float


def der(reference, segments: list[Segment]) -> dict[str, float]:
    """DER and its parts, in % of the reference speech (pyannote.metrics, 0.25 s collar)."""
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric = DiarizationErrorRate(collar=0.25, skip_overlap=False)
    detail = metric(annotation(reference), annotation(hypothesis(segments)), detailed=True)
    total = detail["total"] or 1.0
    return {"der": round(100 * detail["diarization error rate"], 1), "missed": round(100 * detail["missed detection"] / total, 1),
            "false_alarm": round(100 * detail["false alarm"] / total, 1), "confusion": round(100 * detail["confusion"] / total, 1)}


def score(name: str, policy: str, seconds: float, reference, voices: dict[str, str], segments: list[Segment],
          diarizing: tuple[float, float], windows: int, asr_seconds: float) -> Score:
    by_speaker = der(reference, segments)
    by_voice = der([(a, b, voices[s]) for a, b, s in reference], segments)
    return Score(
        name, policy, round(seconds, 1), len({s for _, _, s in reference}), len({s.speaker for s in segments if s.speaker}),
        by_speaker["der"], by_speaker["missed"], by_speaker["false_alarm"], by_speaker["confusion"],
        len(set(voices.values())), by_voice["der"], by_voice["confusion"],
        round(diarizing[0], 2), round(diarizing[0] / seconds, 4), round(diarizing[1] / seconds, 4), windows, round(asr_seconds, 1),
    )


# -- running ------------------------------------------------------------------------------------------

class Recorder:
    """Passes a transcriber's segments on and keeps its finals (Whisper's, before any speaker)."""

    def __init__(self, inner) -> None:
        self.inner, self.finals = inner, []

    def push(self, chunk: AudioChunk) -> list[Segment]:
        return self._keep(self.inner.push(chunk))

    def flush(self) -> list[Segment]:
        return self._keep(self.inner.flush())

    def _keep(self, segments: list[Segment]) -> list[Segment]:
        self.finals += [s for s in segments if s.final]
        return segments


class Replay:
    """Whisper's finals of an earlier run, each given back once the audio has passed its end: tuning the
    diarizer's settings without paying for Whisper again (`--cache`)."""

    def __init__(self, segments: list[Segment]) -> None:
        self.waiting = list(segments)

    def push(self, chunk: AudioChunk) -> list[Segment]:
        ready = [s for s in self.waiting if s.end <= chunk.end]
        self.waiting = self.waiting[len(ready):]
        return ready

    def flush(self) -> list[Segment]:
        ready, self.waiting = self.waiting, []
        return ready


def run_one(path: Path, whisper, settings, policy: str, voices, cached: list[Segment] | None = None) -> tuple[list[Segment], list[Segment], float, float, tuple[float, float], int]:
    """(final segments, Whisper's own finals, audio seconds, seconds in Whisper, (wall, CPU) seconds in the diarizer, windows embedded)."""
    settings = settings.model_copy(deep=True)
    settings.asr.policy = policy
    if cached is None:
        transcriber = make_transcriber(whisper, settings.asr, RATE, live=policy == "streaming", voices=voices)
    else:
        transcriber = DiarizingTranscriber(Replay(cached), voices, settings.asr)
    assert isinstance(transcriber, DiarizingTranscriber)
    transcriber.inner = recorder = Recorder(transcriber.inner)
    diarizing = diarizing_cpu = 0.0
    label = transcriber.label

    def timed_label(segments: list[Segment]) -> list[Segment]:  # embedding, assignment and splitting
        nonlocal diarizing, diarizing_cpu
        began, began_cpu = time.perf_counter(), time.process_time()
        try:
            return label(segments)
        finally:
            diarizing += time.perf_counter() - began
            diarizing_cpu += time.process_time() - began_cpu

    transcriber.label = timed_label  # type: ignore[method-assign]
    audio = read_audio(path)
    step = int(settings.audio.chunk_seconds * RATE)
    began = time.perf_counter()
    segments: list[Segment] = []
    for at in range(0, len(audio), step):
        segments += transcriber.push(AudioChunk(audio[at:at + step], at / RATE, RATE))
    segments += transcriber.flush()
    total = time.perf_counter() - began
    return [s for s in segments if s.final], recorder.finals, len(audio) / RATE, total - diarizing, (diarizing, diarizing_cpu), transcriber.windows_embedded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="recordings to run (default: all)")
    parser.add_argument("--policy", choices=["batch", "streaming"], default="batch")
    parser.add_argument("--asr-model", default="tiny.en")
    parser.add_argument("--set", action="append", default=[], help="diarization tunables, e.g. --set threshold=0.5")
    parser.add_argument("--speakers", type=int, default=None, help="the --speakers hint")
    parser.add_argument("--json", type=Path, help="write the scores here")
    parser.add_argument("--synth", choices=["espeak", "festival"], default="espeak", help="who speaks the synthesized meetings")
    parser.add_argument("--cache", type=Path, help="keep the synthesized meetings and Whisper's segments here and replay them on later runs (tuning)")
    parser.add_argument("--make-sample", action="store_true", help="(re)write samples/two_readers.flac and .rttm, then exit")
    args = parser.parse_args()
    if args.make_sample:
        return make_sample()
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    overrides = {"asr": {"model": args.asr_model, "speakers": args.speakers, "diarize": True,
                         "diarization": dict(item.split("=", 1) for item in args.set)}}
    settings = load_settings(overrides=overrides)
    whisper = load_whisper(settings.asr, settings.resolved_cache_dir())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    began = time.perf_counter()
    voices = shared_voice_embedder()
    load_seconds = time.perf_counter() - began
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"diarizer loaded in {load_seconds:.1f} s, +{rss_loaded - rss_before:.0f} MiB peak RSS", flush=True)
    names = args.only or [*MEETINGS, *CONVERSATIONS]
    scores = []
    with tempfile.TemporaryDirectory(prefix="diarization-") as tmp:
        for name in names:
            path, reference, voices_of = recording(name, args.cache or Path(tmp), args.synth)
            synth = f".{args.synth}" if name in MEETINGS and args.synth != "espeak" else ""
            cache = args.cache / f"{name}{synth}.{args.policy}.{args.asr_model}.json" if args.cache else None
            cached = None
            if cache is not None and cache.is_file():
                cached = [Segment.model_validate(item) for item in json.loads(cache.read_text())]
            segments, whisper_finals, seconds, asr_seconds, diarizing, windows = run_one(path, whisper, settings, args.policy, voices, cached)
            if cache is not None and cached is None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps([s.model_dump(mode="json") for s in whisper_finals]))
            result = score(name, args.policy, seconds, reference, voices_of, segments, diarizing, windows, asr_seconds)
            scores.append(result)
            print(json.dumps(asdict(result)), flush=True)
    total_audio = sum(s.seconds for s in scores)
    total_diarizing = sum(s.diarize_seconds for s in scores)
    total_cpu = sum(s.diarize_cpu_x_audio * s.seconds for s in scores)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = {"diarizer_load_seconds": round(load_seconds, 1), "diarizer_rss_mib": round(rss_loaded - rss_before),
               "peak_rss_mib": round(peak), "diarize_x_audio": round(total_diarizing / total_audio, 4),
               "diarize_cpu_x_audio": round(total_cpu / total_audio, 4), "load_average": round(__import__("os").getloadavg()[0], 1),
               "diarize_seconds": round(total_diarizing, 1), "audio_seconds": round(total_audio, 1), "policy": args.policy,
               "synth": args.synth, "settings": settings.asr.diarization.model_dump(), "speakers_hint": args.speakers}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "scores": [asdict(s) for s in scores]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
