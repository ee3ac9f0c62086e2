"""Notes extraction without a model: parsing model-like JSON, grounding items in the transcript,
merging rolling extractions, titles and key points. The model's side is covered by the slow tests."""

from livesum.config import Settings
from livesum.events import ActionItem, Decision, Segment, Summary
from livesum.llm.engine import SUMMARY_INSTRUCTION, ForkRequest
from livesum.llm.minutes import (
    ACTIONS_INSTRUCTION,
    DECISIONS_INSTRUCTION,
    KEY_POINTS_INSTRUCTION,
    MeetingMinutes,
    ground,
    locate,
    locate_said,
    merge,
    names_in,
    negation_unsaid,
    not_echo,
    owner_of,
    parse_items,
)
from livesum.llm.notes import cut_at_repeat, whole_sentences

TRANSCRIPT = [
    "Morning everyone, how was the weekend? Good, we went hiking near the lake.",
    "So about the supplier, the quote came in at twelve thousand euros.",
    "That's too much for this quarter. Let's stay with the current one for now.",
    "Tom, could you give them a ring tomorrow and tell them?",
    "Sure, I'll call them first thing in the morning.",
    "And the training day, I think the fourteenth of March works for everyone.",
    "Actually, the fourteenth clashes with the audit, let's move it to the twenty first.",
]


def segments(lines: list[str] = TRANSCRIPT) -> list[Segment]:
    return [Segment(final=True, start=10.0 * i, end=10.0 * i + 9, text=line) for i, line in enumerate(lines)]


def test_parse_takes_fenced_json_with_prose_around_it() -> None:
    output = """Here are the items:
```json
[{"kind": "decision", "text": "Stay with the current supplier", "owner": null, "due": null,
  "evidence": "Let's stay with the current one for now"},
 {"kind": "Action item", "text": "Call the new supplier", "owner": "Tom", "due": "tomorrow",
  "evidence": "Tom, could you give them a ring tomorrow"}]
```"""
    items = parse_items(output)
    assert [item.kind for item in items] == ["decision", "action"]
    assert items[1].owner == "Tom" and items[1].due == "tomorrow"


def test_parse_keeps_the_whole_objects_of_a_cut_off_array_and_drops_malformed_ones() -> None:
    output = (
        "[{'kind': 'action', 'text': 'Call the supplier', 'owner': 'Tom', 'evidence': 'give them a ring',},"
        ' {"kind": "opinion", "text": "nice weekend", "evidence": "how was the weekend"},'
        ' {"kind": "decision"},'
        ' {"kind": "decision", "text": "Move the training day", "owner": "none", "evidence": "let\'s move it to the tw'
    )
    items = parse_items(output)
    assert len(items) == 1
    assert items[0].owner == "Tom" and items[0].kind == "action"


def test_a_fork_asked_for_one_kind_gives_items_of_that_kind() -> None:
    items = parse_items('[{"owner": "Tom", "text": "Call the supplier", "due": "tomorrow", "evidence": "give them a ring"}]', "action")
    assert [(item.kind, item.owner) for item in items] == [("action", "Tom")]
    assert parse_items('[{"kind": "decision", "text": "Stay with the supplier"}]', "action")[0].kind == "decision"


def test_parse_of_plain_prose_is_empty() -> None:
    assert parse_items("The meeting discussed the supplier and the training day.") == []
    assert parse_items("[]") == []


def test_names_are_people_addressed_or_labelled_not_sentence_starts_or_days() -> None:
    names = names_in(segments() + [Segment(final=True, start=80, end=81, text="See you Friday, Anna.", speaker="Ben")])
    assert {"Tom", "Anna", "Ben"} <= names
    assert not names & {"So", "That", "Sure", "Actually", "Friday", "Morning"}


def test_items_are_kept_when_the_meeting_spoke_of_them_and_owned_only_by_its_people() -> None:
    items = parse_items(
        '[{"kind": "action", "text": "Call the supplier", "owner": "Tom", "evidence": "Tom, could you give them a ring tomorrow"},'
        ' {"kind": "action", "text": "Book a venue", "owner": "Tom", "evidence": "I\'ll call them first thing"},'
        ' {"kind": "action", "text": "Ring the supplier about the quote", "owner": "Acme Ltd"},'
        ' {"kind": "decision", "text": "Budget of 50,000", "evidence": "we agreed a budget of fifty thousand pounds"},'
        ' {"kind": "decision", "text": "Stay with the current supplier", "evidence": "lets stay with the current one"}]'
    )
    said = segments()
    kept = ground(items, said, names_in(said))
    # "Book a venue" comes with a real quote, but nobody spoke of a venue; the budget was never said
    assert [item.text for item in kept] == ["Call the supplier", "Ring the supplier about the quote", "Stay with the current supplier"]
    assert isinstance(kept[0], ActionItem) and kept[0].owner == "Tom" and kept[0].at == 30.0
    assert isinstance(kept[1], ActionItem) and kept[1].owner is None  # not a person of the meeting: unassigned, not lost
    assert isinstance(kept[2], Decision) and kept[2].at == 20.0


def test_an_item_that_copies_an_example_of_the_instruction_is_no_item() -> None:
    said = segments([*TRANSCRIPT, "Sure, I can do that. I'll send it round tonight."])
    items = parse_items('[{"kind": "action", "text": "I\'ll send it round", "owner": "Tom"},'
                        ' {"kind": "action", "text": "Call the supplier first thing", "owner": "Tom"}]')
    kept = ground(items, said, names_in(said), instruction='everything someone said they will do ("I\'ll send it round")')
    assert [item.text for item in kept] == ["Call the supplier first thing"]


def test_i_is_whoever_said_it_when_speakers_are_known() -> None:
    said = [Segment(final=True, start=0, end=4, text="Who can call the supplier tomorrow?", speaker="Anna"),
            Segment(final=True, start=5, end=9, text="I'll call the supplier first thing tomorrow.", speaker="Ben")]
    items = parse_items('[{"kind": "action", "text": "Call the supplier tomorrow", "owner": "I", '
                        '"evidence": "I\'ll call the supplier first thing tomorrow"}]')
    assert [(item.owner, item.at) for item in ground(items, said, names_in(said))] == [("Ben", 5)]
    assert owner_of("me", {"Anna"}) is None and owner_of("Anna Smith", {"Anna"}) == "Anna"
    assert owner_of("Speaker 2", {"Speaker 1", "Speaker 2", "Anna"}) == "Speaker 2"  # a diarizer's labels
    assert owner_of("Speaker 3", {"Speaker 1", "Speaker 2"}) is None


def test_a_task_in_the_first_person_belongs_to_who_said_it() -> None:
    said = [Segment(final=True, start=0, end=4, text="Can someone book the engineer? Steve does the service.", speaker="Speaker 1"),
            Segment(final=True, start=5, end=9, text="I'll ring Steve tomorrow.", speaker="Speaker 2")]
    items = parse_items('[{"kind": "action", "text": "I\'ll ring Steve tomorrow", "owner": "Steve"}]')
    assert [(item.owner, item.at) for item in ground(items, said, names_in(said))] == [("Speaker 2", 5)]
    unlabelled = [segment.model_copy(update={"speaker": None}) for segment in said]  # no speakers: the model's owner
    assert [item.owner for item in ground(items, unlabelled, names_in(unlabelled))] == ["Steve"]
    assert owner_of("Steve", {"Steve", "Ben"}, "Ben", "Ring Steve tomorrow", "I'll ring Steve") == "Steve"  # not first person
    assert owner_of("Steve", {"Steve", "Ben"}, "Ben", "Item: ring Steve", "I'll ring Steve") == "Steve"
    # The model also turns a request into the first person; the line that asked says no "I": its owner stays.
    assert owner_of("Liam", {"Liam", "Speaker 1"}, "Speaker 1", "I'll change the templates",
                    "Liam, could you change the templates?") == "Liam"


def test_an_item_that_denies_what_was_said_without_denial_is_dropped() -> None:
    said = segments(["Should we launch the summer menu on the fifteenth of May?",
                     "No, not before the new fridge arrives. We launch it on the first of June.",
                     "Sam, the weekend rota is next.",
                     "I'll redo the weekend rota and put it up by Friday."])
    items = parse_items('[{"kind": "decision", "text": "We will not launch the summer menu on the fifteenth of May"},'
                        ' {"kind": "decision", "text": "We will launch the summer menu on the first of June"},'
                        ' {"kind": "action", "text": "We will not redo the weekend rota", "owner": "Sam"},'
                        ' {"kind": "action", "text": "Redo the weekend rota by Friday", "owner": "Sam"}]')
    kept = ground(items, said, names_in(said))
    # the first "not" was said ("No, not before..."); nothing near the rota turns it down
    assert [item.text for item in kept] == ["We will not launch the summer menu on the fifteenth of May",
                                            "We will launch the summer menu on the first of June", "Redo the weekend rota by Friday"]
    assert negation_unsaid("We won't redo the rota", said, said[3].start)
    assert not negation_unsaid("We'll redo the rota", said, said[3].start)  # nothing denied: nothing to check
    assert not negation_unsaid("We will not redo the rota, Sam puts it up instead", said, said[3].start)  # says what instead
    # placed at the wrong line, but where its words were said, something was turned down
    assert not negation_unsaid("We will not launch on the fifteenth", said, said[2].start)


def test_a_list_is_cut_before_an_item_that_nearly_repeats_an_earlier_one() -> None:
    looping = ('[{"text": "The quote includes the scaffolding and a 15-year guarantee."}, {"text": "The fire door is done."}, '
               '{"text": "The quote includes the scaffolding and a 14-year guarantee."}, {"text": "The fire door is done."}]')
    assert cut_at_repeat(looping) == looping[: looping.index(', {"text": "The quote includes the scaffolding and a 14')]
    # alike keys, owners and dates do not make two tasks one; the same task for another owner does
    tasks = ('[{"owner": "Claire", "text": "ask the kitchen", "due": "next week"}, '
             '{"owner": "Claire", "text": "ask the PTA", "due": "next week"}]')
    assert cut_at_repeat(tasks) is None
    assert cut_at_repeat(tasks[:-1] + ', {"owner": "Ade", "text": "Ask the kitchen.", "due": null}]') == tasks[:-1]
    assert cut_at_repeat("[]") is None and cut_at_repeat('[{"text": "cut off') is None


def test_a_paraphrased_quote_is_placed_where_the_item_words_were_said() -> None:
    said = segments()
    items = parse_items(
        '[{"kind": "decision", "text": "Move the training day to the twenty first", "evidence": "They agreed to move it."},'
        ' {"kind": "decision", "text": "Hire a second barista", "evidence": "They agreed to hire."},'
        ' {"kind": "decision", "text": "Keep the current supplier", "evidence": "Both were discussed."}]'
    )
    kept = ground(items, said, names_in(said))
    assert [item.text for item in kept] == ["Move the training day to the twenty first", "Keep the current supplier"]
    assert kept[0].at == 60.0 and kept[0].evidence == TRANSCRIPT[6]  # the evidence is what was actually said
    assert kept[1].at == 10.0 and kept[1].evidence == TRANSCRIPT[1]  # said apart: the segment with most of its words
    assert locate_said("the supplier", said) is None  # one content word proves nothing


def test_an_answer_names_where_its_words_were_said_and_not_mentioned_names_nothing() -> None:
    minutes = MeetingMinutes(Settings())
    for segment in segments():
        minutes.on_segment(segment)
    assert minutes.source_of("The supplier's quote came in at twelve thousand euros.") == 10.0
    assert minutes.source_of("Not mentioned in the meeting.") is None


def test_locate_needs_more_than_one_word() -> None:
    assert locate("Sure", segments()) is None
    assert locate("the quote came in at twelve thousand", segments()) == 10.0


def test_merge_dedupes_and_a_change_of_mind_updates_the_item() -> None:
    first = [
        Decision(text="Hold the training day on the fourteenth of March", at=50.0),
        ActionItem(text="Call the supplier", owner="Tom", due="tomorrow", at=30.0),
    ]
    again = [
        ActionItem(text="Call the supplier tomorrow", owner=None, at=40.0),
        Decision(text="Hold the training day on the twenty first of March", at=60.0),
        Decision(text="Stay with the current supplier", at=20.0),
    ]
    merged = merge(first, again)
    assert len(merged) == 3
    assert merged[0].text.endswith("twenty first of March")
    assert isinstance(merged[1], ActionItem) and merged[1].owner == "Tom" and merged[1].due == "tomorrow"
    # The same window extracted again later: an older statement never overrides a newer one.
    assert merge(merged, [Decision(text="Hold the training day on the fourteenth of March", at=50.0)]) == merged


def test_key_points_that_echo_the_instruction_are_dropped() -> None:
    points = ["The three to five most important points of this meeting, one short line each.", "Training moved to 21 March"]
    assert not_echo(points, KEY_POINTS_INSTRUCTION) == ["Training moved to 21 March"]


def test_whole_sentences_keeps_decimal_numbers() -> None:
    assert whole_sentences("version 2.0 next") == "version 2.0 next"
    assert whole_sentences("We ship 2.0 on Friday. The beta testers' login") == "We ship 2.0 on Friday."


class ScriptedEngine:
    """Replies like a model would, per instruction; records what it was asked."""

    def __init__(self, decisions: list[str], actions: list[str]) -> None:
        self.replies = {DECISIONS_INSTRUCTION: decisions, ACTIONS_INSTRUCTION: actions}
        self.asked: list[str] = []

    def complete(self, instruction: str, max_new_tokens: int, *, structured: bool = False) -> str:
        self.asked.append(instruction)
        if instruction in self.replies:
            assert structured, "JSON is asked for without the prose penalties"
            replies = self.replies[instruction]
            return replies.pop(0) if replies else "[]"
        if "title" in instruction:
            return '"Supplier and training day"\nMore text'
        if instruction.endswith(KEY_POINTS_INSTRUCTION):
            return "- The three to five most important points of this meeting\n- Supplier stays\n- Training on 21 March"
        return "They kept the supplier. Training moves to the 21st. And then"

    def summarize(self, max_new_tokens: int | None = None) -> str:
        return "Rolling."


def test_minutes_merge_rolling_extractions_and_map_reduce_the_final_summary() -> None:
    minutes = MeetingMinutes(Settings())
    engine = ScriptedEngine(
        decisions=[
            '[{"text": "Training day on the fourteenth of March", "evidence": "the fourteenth of March works for everyone"}]',
            '[{"text": "Training day on the twenty first of March", "evidence": "let\'s move it to the twenty first"}]',
        ],
        actions=['[]', '[{"text": "Call the supplier", "owner": "Tom", "due": "tomorrow", "evidence": "I\'ll call them first thing"}]'],
    )
    for segment in segments()[:6]:
        minutes.on_segment(segment)
    minutes.add_summary(Summary(start=0, end=60, text="They talked about the supplier."))
    minutes.extract(engine, since=0, until=60)
    minutes.on_segment(segments()[6])
    minutes.add_summary(Summary(start=30, end=70, text="The training day moved."))
    minutes.extract(engine, since=30, until=70)
    notes = minutes.final_notes(engine, [], 70.0)
    assert [d.text for d in notes.decisions] == ["Training day on the twenty first of March"]
    assert [(a.owner, a.due) for a in notes.action_items] == [("Tom", "tomorrow")]
    assert notes.title == "Supplier and training day"
    assert notes.key_points == ["Supplier stays", "Training on 21 March"]
    assert notes.summary == "They kept the supplier. Training moves to the 21st."
    # The final forks carry the earlier summaries as text, never the raw history.
    assert any("They talked about the supplier." in asked and "twenty first" not in asked for asked in engine.asked)


def test_the_notes_trace_keeps_each_extraction_round_stage_by_stage() -> None:
    settings = Settings()
    settings.output.notes_trace = True
    minutes = MeetingMinutes(settings)
    engine = ScriptedEngine(
        decisions=['[{"text": "Training day on the twenty first of March", "evidence": "let\'s move it to the twenty first"},'
                   ' {"text": "Buy a boat", "evidence": "nobody said this"}]'],
        actions=['not json at all'],
    )
    for segment in segments():
        minutes.on_segment(segment)
    minutes.extract(engine, since=0, until=70)
    decisions, actions = minutes.trace
    assert (decisions["kind"], actions["kind"]) == ("decision", "action")
    assert [item["text"] for item in decisions["parsed"]] == ["Training day on the twenty first of March", "Buy a boat"]
    assert [item["text"] for item in decisions["grounded"]] == ["Training day on the twenty first of March"]
    assert actions["raw"] == "not json at all" and actions["parsed"] == [] and actions["grounded"] == []
    assert MeetingMinutes(Settings()).trace is None  # off by default: it grows with the meeting


def test_a_decision_that_restates_a_task_is_the_task() -> None:
    minutes = MeetingMinutes(Settings())
    minutes.items = [
        Decision(text="Lucy will do a poster like last year.", at=1.0),
        Decision(text="The open day is on the twelfth of September.", at=2.0),
        ActionItem(text="do a poster like last year", owner="Lucy", at=1.0),
        ActionItem(text="email the first six on the waiting list", owner="Raj", at=3.0),
    ]
    assert [d.text for d in minutes.decisions()] == ["The open day is on the twelfth of September."]
    assert [a.owner for a in minutes.action_items()] == ["Lucy", "Raj"]


def test_the_final_summary_reads_earlier_summaries_only_for_what_the_window_lost() -> None:
    minutes = MeetingMinutes(Settings())
    for segment in segments():
        minutes.on_segment(segment)
    minutes.add_summary(Summary(start=0, end=30, text="They talked about the supplier."))
    minutes.on_segment(Segment(final=True, start=60, end=64, text="One more thing about the van."))
    minutes.add_summary(Summary(start=0, end=64, text="The supplier stays; the van."))
    minutes.on_segment(Segment(final=True, start=70, end=74, text="And the rota is done."))
    lost_the_start = minutes.final_summary_request(held_from=20.0)
    assert isinstance(lost_the_start, ForkRequest) and "They talked about the supplier." in lost_the_start.instruction
    holds_it_all = minutes.final_summary_request(held_from=0.0)  # the window still has every word
    assert isinstance(holds_it_all, ForkRequest) and holds_it_all.instruction == SUMMARY_INSTRUCTION
