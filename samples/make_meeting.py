#!/usr/bin/env python3
"""Synthesize the sample multi-speaker meeting from ``meeting_script.toml``.

Each turn of the script is spoken by ``espeak-ng`` with its speaker's voice (or,
with ``--synth festival``, by Debian's festival, whose HTS and diphone voices
Whisper mishears less often), the turns are joined with short pauses and
converted by ``sox`` to 16 kHz mono 16-bit WAV.  Next to the audio it writes

* ``<stem>.reference.txt``: the spoken text, one turn a line;
* ``<stem>.expected.json``: agenda, the decisions and action items (with their
  keywords) that the written audio actually contains, and each turn's speaker
  and start/end time.

``--minutes N`` keeps only the first turns that fit in N minutes (whole turns,
never cut mid-sentence); the JSON then lists only the decisions and action
items stated in those turns.

Usage::

    python samples/make_meeting.py                      # -> samples/meeting.wav
    python samples/make_meeting.py --out /tmp/m.wav --minutes 3
    python samples/make_meeting.py --synth festival --out /tmp/m.wav

Needs the ``espeak-ng`` and ``sox`` executables (Debian packages of the same
names); ``--synth festival`` needs ``text2wave`` and its three English voices
(``apt-get install -y festival festvox-us-slt-hts festvox-kallpc16k
festvox-kdlpc16k``) instead of espeak-ng.  Festival has one female voice and two
male ones: ``festival_voices`` gives each speaker one by the gender of their
espeak voice (``+f`` variants are female) and sets apart speakers who share a
voice with a sox pitch shift and a slightly different tempo.  The module is
importable by path; ``synthesize_meeting`` is the entry point.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import wave
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_SCRIPT = HERE / "meeting_script.toml"
DEFAULT_OUT = HERE / "meeting.wav"
SAMPLE_RATE = 16000
SYNTHESIZERS = ("espeak", "festival")
FESTIVAL_PACKAGES = "festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k"
# Words per minute each festival voice speaks at unscaled (measured on school_trip's first twelve
# turns); sox's tempo brings it to the script's ``speed``.
FESTIVAL_WPM = {"cmu_us_slt_arctic_hts": 169.0, "kal_diphone": 140.0, "ked_diphone": 141.0}
# (voice, pitch shift in cents, tempo factor) for the first, second... speaker of each kind; a
# kind's speakers past the end of its list reuse it from the start.
FESTIVAL_FEMALE = [("cmu_us_slt_arctic_hts", 0, 1.0), ("cmu_us_slt_arctic_hts", -300, 0.95),
                   ("cmu_us_slt_arctic_hts", 250, 1.05), ("cmu_us_slt_arctic_hts", -150, 1.08)]
FESTIVAL_MALE = [("kal_diphone", 0, 1.0), ("ked_diphone", 0, 0.96), ("kal_diphone", -250, 1.05),
                 ("ked_diphone", 200, 0.92)]


@dataclass
class Speaker:
    """One meeting participant and the espeak-ng voice that speaks for them."""

    id: str
    name: str
    role: str
    voice: str
    pitch: int = 50


@dataclass(frozen=True)
class FestivalVoice:
    """The festival voice that speaks for one speaker, and the sox pitch shift and tempo that set
    it apart from other speakers with the same voice."""

    name: str
    pitch_cents: int = 0
    tempo: float = 1.0


@dataclass
class Item:
    """A decision (``owner`` empty) or an action item stated in the script."""

    id: str
    text: str
    keywords: list[str]
    owner: str = ""


@dataclass
class Turn:
    """One stretch of speech by one speaker."""

    speaker: str
    text: str
    states: list[str] = field(default_factory=list)


@dataclass
class Script:
    """The parsed ``meeting_script.toml``."""

    title: str
    speed: int
    pause_seconds: float
    speakers: dict[str, Speaker]
    agenda: list[str]
    decisions: list[Item]
    action_items: list[Item]
    turns: list[Turn]


@dataclass
class TurnTiming:
    """Where a turn lies in the written audio."""

    index: int
    speaker: str
    name: str
    start: float
    end: float
    text: str


@dataclass
class MeetingInfo:
    """What ``synthesize_meeting`` wrote."""

    audio_path: str
    reference_path: str
    expected_path: str
    title: str
    duration_s: float
    words: int
    n_turns: int
    truncated: bool
    synth: str
    speakers: list[dict[str, Any]]
    agenda: list[str]
    decisions: list[dict[str, Any]]
    action_items: list[dict[str, Any]]
    turns: list[TurnTiming]


def load_script(path: str | os.PathLike[str] = DEFAULT_SCRIPT) -> Script:
    """Parse and check the meeting script.

    Raises ``ValueError`` when a turn names an unknown speaker or item, or when
    a decision/action item is never stated or its keywords are missing from
    the turns that state it.
    """
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    speakers = {
        sid: Speaker(id=sid, name=s["name"], role=s.get("role", ""), voice=s["voice"],
                     pitch=int(s.get("pitch", 50)))
        for sid, s in raw["speakers"].items()
    }
    decisions = [Item(id=d["id"], text=d["text"], keywords=list(d["keywords"]))
                 for d in raw.get("decisions", [])]
    actions = [Item(id=a["id"], text=a["text"], keywords=list(a["keywords"]), owner=a["owner"])
               for a in raw.get("action_items", [])]
    turns = [Turn(speaker=t["speaker"], text=" ".join(t["text"].split()),
                  states=list(t.get("states", [])))
             for t in raw["turns"]]
    script = Script(title=raw.get("title", "Meeting"), speed=int(raw.get("speed", 150)),
                    pause_seconds=float(raw.get("pause_seconds", 0.6)), speakers=speakers,
                    agenda=list(raw.get("agenda", [])), decisions=decisions,
                    action_items=actions, turns=turns)
    _check(script)
    return script


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _check(script: Script) -> None:
    items = {i.id: i for i in script.decisions + script.action_items}
    stated: dict[str, list[Turn]] = {k: [] for k in items}
    for n, turn in enumerate(script.turns):
        if turn.speaker not in script.speakers:
            raise ValueError(f"turn {n}: unknown speaker {turn.speaker!r}")
        for item_id in turn.states:
            if item_id not in items:
                raise ValueError(f"turn {n}: unknown decision/action id {item_id!r}")
            stated[item_id].append(turn)
    for item_id, turns in stated.items():
        if not turns:
            raise ValueError(f"{item_id!r} is never stated by any turn")
        said = " ".join(" ".join(_words(t.text)) for t in turns)
        for kw in items[item_id].keywords:
            if " ".join(_words(kw)) not in said:
                raise ValueError(f"{item_id!r}: keyword {kw!r} is not in the turns stating it")
    for a in script.action_items:
        if a.owner not in {s.name for s in script.speakers.values()}:
            raise ValueError(f"action {a.id!r}: owner {a.owner!r} is not a speaker")


def _wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / float(w.getframerate())


def festival_voices(speakers: dict[str, Speaker]) -> dict[str, FestivalVoice]:
    """A festival voice for each speaker: women (espeak ``+f`` variants) get the HTS voice, men
    the two diphone voices; each further speaker of a kind gets one of them shifted in pitch and
    tempo, so that the speakers of a meeting sound apart as far as three voices allow."""
    voices: dict[str, FestivalVoice] = {}
    seen = {"female": 0, "male": 0}
    for sid, speaker in speakers.items():
        kind = "female" if re.search(r"\+f\d", speaker.voice) else "male"
        choices = FESTIVAL_FEMALE if kind == "female" else FESTIVAL_MALE
        name, cents, tempo = choices[seen[kind] % len(choices)]
        seen[kind] += 1
        voices[sid] = FestivalVoice(name=name, pitch_cents=cents, tempo=tempo)
    return voices


def _speak_espeak(text: Path, wav: Path, speaker: Speaker, speed: int) -> None:
    subprocess.run(["espeak-ng", "-v", speaker.voice, "-s", str(speed), "-p", str(speaker.pitch),
                    "-w", str(wav), "-f", str(text)], check=True, capture_output=True)


def _speak_festival(text: Path, wav: Path, voice: FestivalVoice, speed: int) -> None:
    raw = wav.with_suffix(".festival.wav")
    done = subprocess.run(["text2wave", "-eval", f"(voice_{voice.name})", str(text), "-o", str(raw)],
                          check=True, capture_output=True)
    if not raw.exists():  # text2wave exits 0 when the voice is missing, and writes nothing
        err = done.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"festival could not speak with {voice.name} ({err or 'no output'}); "
                           f"apt-get install -y {FESTIVAL_PACKAGES}")
    tempo = speed / FESTIVAL_WPM[voice.name] * voice.tempo
    effects = (["pitch", str(voice.pitch_cents)] if voice.pitch_cents else []) + ["tempo", "-s", f"{tempo:.3f}"]
    subprocess.run(["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(wav), *effects],
                   check=True, capture_output=True)


def _speak(turn: Turn, speak: Callable[[Path, Path], None], workdir: Path, index: int) -> tuple[Path, float]:
    """Speak one turn with ``speak(text_path, wav_path)``; returns the WAV and its length."""
    txt = workdir / f"turn{index:04d}.txt"
    wav = workdir / f"turn{index:04d}.wav"
    txt.write_text(turn.text + "\n", encoding="utf-8")
    speak(txt, wav)
    return wav, _wav_seconds(wav)


def _require_tools(synth: str) -> None:
    if synth not in SYNTHESIZERS:
        raise ValueError(f"unknown synthesizer {synth!r} (one of: {', '.join(SYNTHESIZERS)})")
    needed = ("espeak-ng", "sox") if synth == "espeak" else ("text2wave", "sox")
    missing = [t for t in needed if shutil.which(t) is None]
    if missing:
        packages = "espeak-ng sox" if synth == "espeak" else f"{FESTIVAL_PACKAGES} sox"
        raise RuntimeError(f"missing executables: {', '.join(missing)} (apt-get install -y {packages})")


def synthesize_meeting(script_path: str | os.PathLike[str] = DEFAULT_SCRIPT,
                       out_path: str | os.PathLike[str] = DEFAULT_OUT,
                       max_seconds: float | None = None, synth: str = "espeak") -> MeetingInfo:
    """Write the meeting audio, its reference text and its expected notes.

    ``max_seconds`` keeps the first whole turns whose audio fits in that many
    seconds (at least one turn); ``synth`` is ``"espeak"`` or ``"festival"``.
    Returns what was written.
    """
    _require_tools(synth)
    script = load_script(script_path)
    festival = festival_voices(script.speakers) if synth == "festival" else {}
    speakers: dict[str, Callable[[Path, Path], None]] = {
        sid: (partial(_speak_festival, voice=festival[sid], speed=script.speed) if synth == "festival"
              else partial(_speak_espeak, speaker=speaker, speed=script.speed))
        for sid, speaker in script.speakers.items()}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pause = script.pause_seconds
    workers = max(1, os.cpu_count() or 1)

    with tempfile.TemporaryDirectory(prefix="meeting-") as tmp:
        workdir = Path(tmp)
        spoken: list[tuple[int, Path, float]] = []
        total = pause  # leading silence
        done = False
        with ThreadPoolExecutor(max_workers=workers) as pool:
            batch = 4 * workers
            for start in range(0, len(script.turns), batch):
                idx = range(start, min(start + batch, len(script.turns)))
                results = pool.map(lambda i: _speak(script.turns[i], speakers[script.turns[i].speaker],
                                                    workdir, i), idx)
                for i, (wav, secs) in zip(idx, results, strict=True):
                    if max_seconds is not None and spoken and total + secs + pause > max_seconds:
                        done = True
                        break
                    spoken.append((i, wav, secs))
                    total += secs + pause
                if done:
                    break

        # espeak-ng writes 22050 Hz mono (festival's turns are 16 kHz already); silence at the same
        # rate, one sox pass for all.
        with wave.open(str(spoken[0][1]), "rb") as first:
            rate = first.getframerate()
        silence = workdir / "pause.wav"
        subprocess.run(["sox", "-n", "-r", str(rate), "-c", "1", "-b", "16", str(silence),
                        "trim", "0", f"{pause:.3f}"], check=True, capture_output=True)
        inputs: list[str] = [str(silence)]
        for _, wav, _ in spoken:
            inputs += [str(wav), str(silence)]
        tmp_out = workdir / "meeting.wav"
        subprocess.run(["sox", *inputs, "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
                        str(tmp_out)], check=True, capture_output=True)
        shutil.move(str(tmp_out), out)

    timings: list[TurnTiming] = []
    t = pause
    for i, _, secs in spoken:
        turn = script.turns[i]
        timings.append(TurnTiming(index=i, speaker=turn.speaker,
                                  name=script.speakers[turn.speaker].name,
                                  start=round(t, 3), end=round(t + secs, 3), text=turn.text))
        t += secs + pause
    kept = [script.turns[i] for i, _, _ in spoken]
    # An item is in the audio only if every turn that states it was kept.
    dropped = {s for turn in script.turns[len(kept):] for s in turn.states}
    present = {s for turn in kept for s in turn.states} - dropped

    def item_dict(item: Item) -> dict[str, Any]:
        d: dict[str, Any] = {"id": item.id, "text": item.text, "keywords": item.keywords}
        if item.owner:
            d["owner"] = item.owner
        return d

    reference = out.with_name(out.stem + ".reference.txt")
    expected = out.with_name(out.stem + ".expected.json")
    info = MeetingInfo(
        audio_path=str(out), reference_path=str(reference), expected_path=str(expected),
        title=script.title, duration_s=round(_wav_seconds(out), 3),
        words=sum(len(_words(turn.text)) for turn in kept), n_turns=len(kept),
        truncated=len(kept) < len(script.turns), synth=synth,
        speakers=[{"id": s.id, "name": s.name, "role": s.role, "voice": s.voice, "pitch": s.pitch,
                   **({"festival": asdict(festival[s.id])} if s.id in festival else {})}
                  for s in script.speakers.values()],
        agenda=script.agenda,
        decisions=[item_dict(d) for d in script.decisions if d.id in present],
        action_items=[item_dict(a) for a in script.action_items if a.id in present],
        turns=timings,
    )
    reference.write_text("\n".join(turn.text for turn in kept) + "\n", encoding="utf-8")
    expected.write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
    return info


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--script", default=str(DEFAULT_SCRIPT), help="meeting script TOML")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output WAV path (default: %(default)s)")
    p.add_argument("--minutes", type=float, default=None,
                   help="keep only the first whole turns that fit in this many minutes")
    p.add_argument("--synth", choices=SYNTHESIZERS, default="espeak",
                   help="speech synthesizer (default: %(default)s; festival sounds closer to real speech)")
    args = p.parse_args(argv)
    try:
        info = synthesize_meeting(args.script, args.out,
                                  None if args.minutes is None else args.minutes * 60.0, args.synth)
    except subprocess.CalledProcessError as exc:
        err = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        print(f"make_meeting: error: {exc}{': ' + err[-1] if err else ''}", file=sys.stderr)
        return 1
    except (RuntimeError, ValueError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"make_meeting: error: {exc}", file=sys.stderr)
        return 1
    mins, secs = divmod(round(info.duration_s), 60)
    print(f"wrote {info.audio_path}: {info.duration_s:.1f} s ({mins}:{secs:02d}), "
          f"{info.n_turns} turns, {info.words} words, {len(info.decisions)} decisions, "
          f"{len(info.action_items)} action items")
    print(f"wrote {info.reference_path}")
    print(f"wrote {info.expected_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
