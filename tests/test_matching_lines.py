"""Which transcript lines a question's fork is given (livesum.llm.matching_lines, MeetingMinutes.question_context)."""

from livesum.config import Settings
from livesum.events import Segment, Summary
from livesum.llm.minutes import RELEVANT_LINES_INTRO, MeetingMinutes
from livesum.llm.matching_lines import relevant_segments, terms

LINES = [
    "Morning everyone, how was the weekend?",
    "Good, we went hiking near the lake.",
    "So about the supplier, the quote came in at twelve thousand euros.",
    "That's too much for this quarter.",
    "Let's stay with the current one for now.",
    "Tom, could you give them a ring tomorrow and tell them?",
    "Sure, I'll call them first thing in the morning.",
    "Last thing, the training days.",
    "I think the fourteenth of March works for everyone.",
    "Actually the fourteenth clashes with the audit, let's move it to the twenty first.",
]


def segments() -> list[Segment]:
    return [Segment(final=True, start=5.0 * i, end=5.0 * i + 4, text=line) for i, line in enumerate(LINES)]


def test_terms_are_stemmed_content_words() -> None:
    assert terms("Who is ordering the quotes for the training day?") == ["order", "quot", "train", "day"]
    assert terms("That's the supplier's, I'll ring") == ["supplier", "ring"]


def test_a_question_gets_its_best_lines_with_the_lines_around_them_in_stream_order() -> None:
    found = [segment.text for segment in relevant_segments("Who will ring the supplier?", segments(), hits=2)]
    # The supplier line and the ring line, each with its neighbours: the reply "Sure, I'll call them" comes along.
    assert found == LINES[1:7]


def test_fewer_hits_give_fewer_lines_and_words_never_said_give_none() -> None:
    assert [s.text for s in relevant_segments("When is the training?", segments(), hits=1)] == LINES[6:9]
    assert relevant_segments("What colour will the railings be?", segments(), hits=3) == []
    assert relevant_segments("Who will ring the supplier?", segments(), hits=0) == []
    assert relevant_segments("What did they say?", segments(), hits=3) == []  # nothing but question words
    assert relevant_segments("Who will ring?", [], hits=3) == []


def test_lines_cut_mid_sentence_at_a_pause_come_whole() -> None:
    """A diarized transcript splits a sentence where its speaker paused: the hit's neighbour is then half
    a sentence, and the run grows to the whole of it (who was asked), at either end."""
    cut = [*LINES[:5], "Tom, could you give them a ring tomorrow and ask", "whether they would do a discount if we", "order sixty kilos at a time?",
           LINES[6], "Fine, and the training days", "we can do", "later."]
    lines = [Segment(final=True, start=5.0 * i, end=5.0 * i + 4, text=line) for i, line in enumerate(cut)]
    found = [segment.text for segment in relevant_segments("Who will call them?", lines, hits=1)]
    assert found == cut[5:12]  # the hit (cut[8]) and its neighbours, grown back to a sentence's start and on to its end
    alone = [segment.text for segment in relevant_segments("Who will call them?", lines[7:], hits=1)]
    assert alone == cut[7:12]  # the run never reaches before the transcript's first line


def test_question_context_is_earlier_summaries_then_matching_lines_with_gaps_marked() -> None:
    minutes = MeetingMinutes(Settings())
    for segment in segments():
        minutes.on_segment(segment)
    minutes.add_summary(Summary(start=0, end=20, text="They discussed the supplier's quote."))
    minutes.add_summary(Summary(start=20, end=50, text="Training day dates."))
    question = "How much was the supplier's quote, and when is the training?"
    context = minutes.question_context(question, held_from=10.0)  # the window lost the first 10 s
    summaries, lines = context.split(RELEVANT_LINES_INTRO)
    assert "They discussed the supplier's quote." in summaries and "Training day dates." not in summaries  # the window has the latest
    assert lines.splitlines() == [LINES[1], LINES[2], LINES[3], "...", LINES[6], LINES[7], LINES[8]]
    # While the window still holds everything a summary covers, the summary would only repeat it.
    assert minutes.question_context(question, held_from=0.0).startswith(RELEVANT_LINES_INTRO)


def test_question_lines_zero_gives_only_the_summaries() -> None:
    minutes = MeetingMinutes(Settings.model_validate({"llm": {"question_lines": 0}}))
    for segment in segments():
        minutes.on_segment(segment)
    assert minutes.question_context("Who will ring the supplier?") == ""


def test_matching_lines_keep_their_speaker_as_the_model_read_them() -> None:
    minutes = MeetingMinutes(Settings())
    minutes.on_segment(Segment(final=True, start=0, end=4, text="I'll ring the supplier tomorrow.", speaker="Tom"))
    assert minutes.question_context("Who will ring the supplier?").splitlines()[-1] == "Tom: I'll ring the supplier tomorrow."
