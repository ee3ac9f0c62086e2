"""samples/make_meeting.py's choice of festival voices (festival itself is not installed in CI: the
voices are mapped without running it)."""

import importlib.util

from conftest import SAMPLES

spec = importlib.util.spec_from_file_location("make_meeting", SAMPLES / "make_meeting.py")
make_meeting = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_meeting)


def speakers(*voices: str) -> dict:
    return {f"s{n}": make_meeting.Speaker(id=f"s{n}", name=f"S{n}", role="", voice=voice) for n, voice in enumerate(voices)}


def test_women_get_the_female_voice_and_men_the_male_ones() -> None:
    chosen = make_meeting.festival_voices(speakers("en-gb+f3", "en-us", "en-us+f2", "en-gb-scotland", "en-gb-x-rp+m3"))
    assert [chosen[s].name for s in ("s0", "s2")] == ["cmu_us_slt_arctic_hts"] * 2
    assert {chosen[s].name for s in ("s1", "s3", "s4")} == {"kal_diphone", "ked_diphone"}


def test_up_to_four_speakers_of_each_kind_all_sound_different() -> None:
    chosen = make_meeting.festival_voices(speakers(*["en-us+f3"] * 4, *["en-gb"] * 4))
    assert len(set(chosen.values())) == 8
    assert all(voice.name in make_meeting.FESTIVAL_WPM for voice in chosen.values())
