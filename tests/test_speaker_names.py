"""Names for diarized labels come from what the meeting says, never from a guess."""

from livesum.asr.speaker_names import SpeakerNames
from livesum.events import Segment


def said(speaker: str, text: str, at: float) -> Segment:
    return Segment(final=True, start=at, end=at + 2, text=text, speaker=speaker)


def names_after(*segments: Segment) -> dict[str, str]:
    names = SpeakerNames()
    for segment in segments:
        names.observe(segment)
    return names.names


def test_an_introduction_names_its_voice() -> None:
    assert names_after(said("Speaker 1", "Hi all, I'm Priya, I run the bar.", 0)) == {"Speaker 1": "Priya"}
    assert names_after(said("Speaker 1", "Morning. This is Tom speaking.", 0)) == {"Speaker 1": "Tom"}
    assert names_after(said("Speaker 1", "I'm sure that's fine. I'm happy with it.", 0)) == {}


def test_a_voice_that_answers_its_name_twice_is_named_once_is_not_enough() -> None:
    once = [said("Speaker 1", "Tom, could you ring the roaster?", 0), said("Speaker 2", "Sure, first thing.", 3)]
    assert names_after(*once) == {}
    twice = [*once, said("Speaker 1", "And the rota, Tom?", 10), said("Speaker 2", "Leave that with me.", 12)]
    assert names_after(*twice) == {"Speaker 2": "Tom"}


def test_the_asker_going_on_is_no_answer_and_a_late_reply_is_none() -> None:
    segments = [said("Speaker 1", "Tom, could you", 0), said("Speaker 1", "ring the roaster?", 2),  # a live final in pieces
                said("Speaker 2", "Sure.", 4),
                said("Speaker 1", "Tom, can you do the rota?", 10), said("Speaker 3", "Unrelated, much later.", 40)]
    names = SpeakerNames()
    for segment in segments:
        names.observe(segment)
    assert names.names == {}  # one answer from Speaker 2, then nobody answered in time
    assert names.name_of("Speaker 2") == "Speaker 2" and names.name_of(None) is None


def test_conflicting_evidence_leaves_the_labels() -> None:
    # one voice answers to two names (a diarizer merged two people): no name
    merged = [said("Speaker 2", "Tom, could you ring them?", 0), said("Speaker 1", "Sure.", 2),
              said("Speaker 2", "And Sam, would you do the rota?", 5), said("Speaker 1", "Fine.", 7),
              said("Speaker 2", "Tom, can you bring the list?", 10), said("Speaker 1", "Yes.", 12)]
    assert names_after(*merged) == {}
    # a name points at one voice: a second voice claiming it later does not get it too
    assert names_after(said("Speaker 1", "I'm Ana.", 0), said("Speaker 2", "I'm Ana.", 3)) == {"Speaker 1": "Ana"}
    # answers split between two voices for one name: neither gets it
    split = [said("Speaker 1", "Tom, could you ring them?", 0), said("Speaker 2", "Sure.", 2),
             said("Speaker 1", "Tom, can you do the rota?", 5), said("Speaker 3", "Yes.", 7),
             said("Speaker 1", "Tom, will you bring the list?", 10), said("Speaker 2", "Yes.", 12)]
    assert names_after(*split) == {}


def test_only_diarizer_labels_are_named() -> None:
    assert names_after(said("Caller", "I'm Priya.", 0)) == {}


def test_a_word_at_a_sentence_start_is_not_someone_addressed() -> None:
    # Whisper capitalizes it, and it looks like "Tom, could you...": an answer to it names nobody,
    # and its evidence must not stand against the voice's real name.
    yeah = [said("Speaker 1", "Yeah, could you send it round?", 0), said("Speaker 2", "Will do.", 3)]
    assert names_after(*yeah) == {}
    tom = [said("Speaker 1", "Tom, could you ring the roaster?", 10), said("Speaker 2", "Sure, first thing.", 13),
           said("Speaker 1", "And the rota, Tom?", 20), said("Speaker 2", "Leave that with me.", 22)]
    assert names_after(*yeah, *tom) == {"Speaker 2": "Tom"}
