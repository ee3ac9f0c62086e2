"""Meeting minutes: what a stream's notes are made of, kept outside the LM cache.

The pipeline hands every final segment and every rolling summary to one `MeetingMinutes` per
stream, and asks it for the `Notes` at the end. All methods are blocking; the pipeline runs the
ones that take the engine on the LM thread.

Why this shape: people agree on things implicitly ("Tom, could you give them a ring?" / "Sure"),
so decisions and action items come from the model, asked for JSON off a fork of the live cache.
A small model invents, so an item is kept only when its evidence quote is found in the transcript
(rapidfuzz) and its owner is a name said in the meeting or a speaker label. The window forgets,
so extraction runs at every rolling summary and its items are merged into a running list here,
and the final summary and title are made from the earlier rolling summaries (map-reduce over
summaries, never over the raw history).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

from livesum.config import Settings
from livesum.events import ActionItem, Answer, Decision, Notes, Segment, Summary
from livesum.llm.engine import SUMMARY_INSTRUCTION, ForkRequest
from livesum.llm.notes import JSON_OBJECT, bullet_lines, first_line, whole_sentences
from livesum.llm.matching_lines import relevant_segments
from livesum.words import NOT_NAMES

# Two focused forks, not one: asked for decisions and tasks in one array, Qwen2.5-Coder-1.5B listed one
# kind and stopped, or copied one object until the token limit. Tasks are asked for as "follow-up tasks"
# with first-person examples: asked for "tasks someone agreed or offered to do" it often answered [].
# No evidence quote: the model mostly made them up ("Priya said 'Lovely'"), they doubled the tokens to
# decode, and grounding places an item by its own words. A decision is asked for as a sentence: as "the
# choice in a few words" it came back as fragments ("iced tea", "the eighteenth").
# Wording chosen on cafe_supplier and garden_committee only (docs/notes-quality.md).
DECISIONS_INSTRUCTION = (
    "List what the people in the meeting above settled on: for each topic, the choice they ended up with "
    '(they rarely say "we decided"; agreeing is enough). If they changed their mind, give only the final '
    "choice. Leave out ideas that were dropped.\n"
    "Reply with a JSON array, one object per line, nothing else, in this form:\n"
    '[{"text": "the decision, as a short sentence"}]\n'
    "[] if there are none."
)
ACTIONS_INSTRUCTION = (
    "List the follow-up tasks from the meeting above: everything someone said they will do "
    '("I\'ll send it round", "leave that with me", "sure, I can do that") or agreed to do when asked. '
    "Leave out things people only might do.\n"
    "Reply with a JSON array, one object per line, nothing else, in this form:\n"
    '[{"owner": "first name or null", "text": "the task in a few words", "due": "when, as said, or null"}]'
)
EXTRACTIONS: tuple[tuple[str, str], ...] = (("decision", DECISIONS_INSTRUCTION), ("action", ACTIONS_INSTRUCTION))
TITLE_INSTRUCTION = "Give this meeting a short title of at most eight words. Reply with the title only."
KEY_POINTS_INSTRUCTION = "List the three to five most important points of this meeting, one short line each, starting with '- '."
EARLIER_SUMMARIES_INTRO = "Earlier parts of this meeting, summarized in order:\n"
RELEVANT_LINES_INTRO = "Lines of the transcript that may bear on the question:\n"
FINAL_SUMMARY_INSTRUCTION = (
    "Together with the transcript above, summarize the whole meeting in three to five short sentences: "
    "what was discussed and what was decided."
)
DEFAULT_TITLE = "Meeting notes"
EXTRACT_MAX_TOKENS = 200  # eight or so one-line JSON objects; a cut-off tail is still parsed
EVIDENCE_MIN_SCORE = 80.0  # rapidfuzz partial_ratio (0-100) of the evidence against the transcript
EVIDENCE_MIN_WORDS = 2  # "yes" is evidence of nothing
TEXT_MIN_WORDS_SAID = 0.7  # without a quote found, this share of the item's content words must have been said
CONTENT_WORD = re.compile(r"[a-z0-9']{4,}")
FUNCTION_WORDS = {
    "will", "would", "should", "could", "shall", "about", "with", "from", "that", "this", "they", "them", "their",
    "there", "then", "than", "have", "been", "were", "what", "when", "which", "into", "onto", "also", "just",
    "group", "team", "meeting", "decided", "agreed", "some", "more", "each", "every", "after", "before",
}
TASK_RESTATED_SCORE = 85.0  # token_set_ratio: the task's words (all but one or two) inside the decision
SAME_ITEM_SCORE = 72.0  # token_set_ratio above which two items are one (a duplicate or a change of mind)
ECHO_SCORE = 70.0  # a key point this close to the instruction is the instruction echoed back
MAX_CONTEXT_SUMMARIES = 6  # earlier summaries given to the final forks (the latest ones)

PRONOUN_OWNERS = {"i", "me", "myself", "i'll", "i will"}
FIRST_PERSON = re.compile(r"^\s*I\b")  # a task the model wrote as said: "I'll ring Steve tomorrow"
SAYS_I = re.compile(r"\bI\b")  # ...and the line it was placed on is said in the first person too
EXAMPLE = re.compile(r'"([^"]{3,60})"')  # quoted examples in an instruction, which small models copy as items
CAPITALIZED = re.compile(r"\b[A-Z][a-z]+\b")
MID_SENTENCE_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-z]+)\b")
# "Tom, could you..." at a sentence start: a name is addressed.
ADDRESSED = re.compile(r"(?:^|[.!?]\s+)([A-Z][a-z]+), ")  # "Priya, you had the smoothie idea." / "Tom, could you..."
THANKED = re.compile(r"\b(?:[Tt]hanks|[Tt]hank you|[Cc]heers),? ([A-Z][a-z]+)\b")


class Engine(Protocol):
    """What minutes need of a StreamingEngine (or of the LM service's `ServedEngine`); `complete_many`
    is optional: without it the forks run one after another."""

    def complete(self, instruction: str, max_new_tokens: int, *, structured: bool = False) -> str: ...
    def summarize(self, max_new_tokens: int | None = None) -> str: ...


def complete_all(engine: Engine, requests: Sequence[ForkRequest]) -> list[str]:
    """The forks of `requests` off the same moment of the stream: decoded side by side where the engine
    can (`complete_many`), else one after another (a plain summary request as `summarize`)."""
    many = getattr(engine, "complete_many", None)
    if many is not None:
        return many(requests)
    return [engine.summarize(r.max_new_tokens) if r.instruction == SUMMARY_INSTRUCTION
            else engine.complete(r.instruction, r.max_new_tokens, structured=r.structured) for r in requests]


class ExtractedItem(BaseModel):
    """One object of the model's JSON, validated; anything malformed is dropped, not repaired."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    kind: Literal["decision", "action"]
    text: str = Field(min_length=3)
    owner: str | None = None
    due: str | None = None
    evidence: str = ""

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, value: object) -> object:
        """'Decision', 'action item', 'task' all mean what they say."""
        word = str(value).strip().lower()
        if word.startswith("decision"):
            return "decision"
        if word.startswith(("action", "task", "todo", "to-do")):
            return "action"
        return value

    @field_validator("owner", "due", mode="before")
    @classmethod
    def _optional(cls, value: object) -> object:
        """null, "", "none", "N/A" and lists of one all come back from small models."""
        if isinstance(value, list):
            value = value[0] if len(value) == 1 else None
        if value is None or str(value).strip().lower() in {"", "none", "null", "n/a", "unknown", "tbd", "-"}:
            return None
        return str(value)


def parse_items(output: str, kind: str | None = None) -> list[ExtractedItem]:
    """Model output -> the items in it (of `kind` when the fork asked for one kind only). Tolerant:
    code fences, prose around the JSON, single quotes, a trailing comma, an array cut off by the
    token limit (its whole objects are kept)."""
    items: list[ExtractedItem] = []
    for raw in JSON_OBJECT.findall(output):
        data = _loads(raw)
        if not isinstance(data, dict):
            continue
        if kind is not None:
            data.setdefault("kind", kind)
        try:
            items.append(ExtractedItem.model_validate(data))
        except ValidationError:
            continue
    return items


def _loads(raw: str) -> object:
    """json.loads, then again with trailing commas dropped and single quotes made double."""
    for attempt in (raw, re.sub(r",\s*}", "}", raw)):
        try:
            return json.loads(attempt)
        except json.JSONDecodeError:
            pass
    try:
        return json.loads(re.sub(r",\s*}", "}", raw.replace("'", '"')))
    except json.JSONDecodeError:
        return None


def names_in(segments: Iterable[Segment], speakers: Iterable[str] = ()) -> set[str]:
    """People a meeting names: capitalized words said mid-sentence, addressed at a sentence start
    ("Tom, could you...", "Priya, you had...") or thanked ("Thanks Sam"), plus speaker labels.
    Whisper capitalizes names and sentence starts only."""
    found = {name.strip() for name in speakers if name and name.strip()}
    for segment in segments:
        text = segment.text
        found.update(MID_SENTENCE_NAME.findall(text))
        found.update(ADDRESSED.findall(text))
        found.update(THANKED.findall(text))
        if segment.speaker:
            found.add(segment.speaker)
    return {name for name in found if name not in NOT_NAMES}


def owner_of(owner: str | None, names: set[str], speaker: str | None = None, text: str = "", line: str = "") -> str | None:
    """The person an action item belongs to: the model's owner when it is a person of the meeting;
    "I"/"me" is the `speaker` of the line the task was placed on, when speakers are known, and so is a
    task `text` in the first person ("I'll ring Steve") when that `line` says "I" too (the model often
    makes a name in the task its owner, and also rewrites "Liam, could you..." as "I'll..."); anything
    else (a company, "the team", a name nobody said) leaves the item unassigned rather than losing it."""
    if speaker and FIRST_PERSON.match(text) and SAYS_I.search(line):
        return speaker
    if owner is None:
        return None
    if owner.strip().lower() in PRONOUN_OWNERS:
        return speaker
    for name in sorted(names, key=len, reverse=True):  # whole labels first: "Speaker 2", "Anna Smith"
        if " " in name and re.search(rf"\b{re.escape(name)}\b", owner, re.IGNORECASE):
            return name
    lowered = {name.lower(): name for name in names}
    for word in CAPITALIZED.findall(owner) or owner.split():
        if word.lower() in lowered:
            return lowered[word.lower()]
    return None


STRETCH = 3  # a quote may run over up to this many segments
CLAUSE_BREAK = re.compile(r"[,;]|\bbut\b|\binstead\b", re.IGNORECASE)
NEGATED = re.compile(r"\b(?:not|never|no longer|cannot)\b|n't\b", re.IGNORECASE)
# How people turn a thing down, next to where an item was said: "No, not before the fridge", "we forget
# the smoothies", "rather not", "skip it". Broad on purpose: it only has to be absent for an item to go.
TURNED_DOWN = re.compile(r"\b(?:no|not|never|nope|none|nothing|neither|nor|without|instead|rather|forget|"
                         r"drop|dropped|skip|scrap|cancel|cancelled|postpone|postponed)\b|n't\b", re.IGNORECASE)


def _best_stretch(count: int, score: Callable[[int], float]) -> tuple[float, int]:
    """(best score, start index) over the runs of up to STRETCH segments; the first of equals wins."""
    best_score, best_index = 0.0, -1
    for index in range(count):
        value = score(index)
        if value > best_score:
            best_score, best_index = value, index
    return best_score, best_index


def locate(evidence: str, segments: Sequence[Segment]) -> float | None:
    """Stream time of the evidence: the start of the segment holding it (a quote may run over up to
    three segments), or None when no stretch of the transcript matches well enough."""
    if len(evidence.split()) < EVIDENCE_MIN_WORDS:
        return None
    needle = evidence.lower()
    texts = [segment.text.lower() for segment in segments]
    best_score, best_index = _best_stretch(len(texts), lambda i: fuzz.partial_ratio(needle, " ".join(texts[i : i + STRETCH])))
    if best_score < EVIDENCE_MIN_SCORE:
        return None
    # The quote may straddle segments; its time is that of the segment holding most of it.
    holder = max(range(best_index, min(best_index + STRETCH, len(texts))), key=lambda j: fuzz.partial_ratio(needle, texts[j]))
    return segments[holder].start


def content_words(text: str) -> list[str]:
    return [word for word in CONTENT_WORD.findall(text.lower()) if word not in FUNCTION_WORDS]


def said_share(wanted: set[str], heard: set[str]) -> float:
    """The share of `wanted` content words in `heard`, a word counting when said nearly alike ("fridays")."""
    return sum(1 for word in wanted if word in heard or any(fuzz.ratio(word, h) >= 85 for h in heard)) / len(wanted)


def locate_said(text: str, segments: Sequence[Segment]) -> tuple[float, str] | None:
    """(stream time, what was said) of the stretch of up to three segments that holds most of the
    item's content words, when at least TEXT_MIN_WORDS_SAID of them (and two or more) were said there.
    For an item whose quote is paraphrased: its own words must still have been spoken."""
    wanted = set(content_words(text))
    if len(wanted) < 2:
        return None
    words = [set(content_words(segment.text)) for segment in segments]  # once per segment, not per stretch

    best_share, best_index = _best_stretch(len(words), lambda index: said_share(wanted, set().union(*words[index : index + STRETCH])))
    if best_share < TEXT_MIN_WORDS_SAID:
        return None
    holder = segments[max(range(best_index, min(best_index + STRETCH, len(words))), key=lambda j: len(wanted & words[j]))]
    return holder.start, holder.text.strip()


def mentioned(text: str, segments: Sequence[Segment]) -> Segment | None:
    """The segment that says most of the item's content words, when at least half of them were said
    somewhere in `segments`: an item whose words the meeting never used is invented."""
    wanted = set(content_words(text))
    if not wanted or not segments:
        return None
    words = [set(content_words(segment.text)) for segment in segments]
    heard = set().union(*words)
    if sum(1 for word in wanted if word in heard) < len(wanted) / 2:
        return None
    return segments[max(range(len(segments)), key=lambda index: len(wanted & words[index]))]


def negation_unsaid(text: str, segments: Sequence[Segment], at: float) -> bool:
    """Whether an item only denies ("we will not redo the rota") what the meeting said without denial
    ("I'll redo the rota"): every clause of it is negated, and nothing turns anything down in the segment
    it was placed at, in any segment that says half its words or more, or in the segment after each
    (where "No, not before the fridge" answers). Greedy decoding copies the first item's "we will not"
    into the next ones, and each copy turns a decision into its opposite; an item that also says what
    comes instead ("not the blender, iced tea instead") keeps its positive part and is not checked."""
    clauses = [clause for clause in CLAUSE_BREAK.split(text) if clause.strip()]
    if not clauses or not all(NEGATED.search(clause) for clause in clauses):
        return False
    wanted = set(content_words(text))
    places = [i for i, segment in enumerate(segments) if segment.start == at
              or (wanted and said_share(wanted, set(content_words(segment.text))) >= 0.5)]
    return bool(places) and not any(TURNED_DOWN.search(segment.text) for i in places for segment in segments[i : i + 2])


def ground(items: Iterable[ExtractedItem], segments: Sequence[Segment], names: set[str],
           instruction: str = "") -> list[Decision | ActionItem]:
    """Keep the items the meeting spoke of: at least half of their own words said somewhere (`mentioned`);
    drop the others (invented, whatever quote comes with them) and those that only repeat an example of
    the `instruction`. An item is placed by its evidence quote when found, else by where its words were
    said together, else by the segment that says most of them (the evidence is then what was said there);
    an item that only denies, where nothing said near its words denies anything, is dropped (`negation_unsaid`).
    The owner must be a person of the meeting, else the item is kept unassigned (`owner_of`)."""
    kept: list[Decision | ActionItem] = []
    examples = [quote.lower() for quote in EXAMPLE.findall(instruction)]
    for item in items:
        if any(fuzz.ratio(item.text.lower().strip(" ."), example.strip(" .")) >= ECHO_SCORE for example in examples):
            continue
        holder = mentioned(item.text, segments)
        if holder is None:  # a real quote beside an item nobody spoke of proves nothing
            continue
        at = locate(item.evidence, segments)
        if at is None and (said := locate_said(item.text, segments)) is not None:
            at, item = said[0], item.model_copy(update={"evidence": said[1]})
        if at is None:
            at, item = holder.start, item.model_copy(update={"evidence": holder.text.strip()})
        if negation_unsaid(item.text, segments, at):
            continue
        if item.kind == "decision":
            kept.append(Decision(text=item.text, evidence=item.evidence, at=at))
        else:
            line = next((s for s in segments if s.start == at), None)
            owner = owner_of(item.owner, names, line.speaker if line else None, item.text, line.text if line else "")
            kept.append(ActionItem(text=item.text, owner=owner, due=item.due,
                                   evidence=item.evidence, at=at))
    return kept


def restates(decision: Decision, task: ActionItem) -> bool:
    """Whether a decision is a task said again: every word of the task is in it (or nearly)."""
    return fuzz.token_set_ratio(decision.text, task.text, processor=default_process) >= TASK_RESTATED_SCORE


def same_item(a: Decision | ActionItem, b: Decision | ActionItem) -> bool:
    """One item said twice, or a change of mind about it: same kind, most words in common."""
    return type(a) is type(b) and fuzz.token_set_ratio(a.text.lower(), b.text.lower()) >= SAME_ITEM_SCORE


def merge(running: list[Decision | ActionItem], new: Iterable[Decision | ActionItem]) -> list[Decision | ActionItem]:
    """New items into the running list: a near-duplicate updates the earlier item in place (the later
    wording wins, a missing owner or due date is kept from before), anything else is appended."""
    merged = list(running)
    for item in new:
        for index, earlier in enumerate(merged):
            if same_item(earlier, item):
                if (earlier.at or 0.0) > (item.at or 0.0):
                    break  # an older statement re-extracted from the window: the newer one stands
                if isinstance(item, ActionItem) and isinstance(earlier, ActionItem):
                    item = item.model_copy(update={"owner": item.owner or earlier.owner, "due": item.due or earlier.due})
                merged[index] = item
                break
        else:
            merged.append(item)
    return merged


def spoken_line(segment: Segment) -> str:
    """What the LM reads of a segment (without its newline): 'Name: text' when the speaker is known."""
    return f"{segment.speaker}: {segment.text}" if segment.speaker else segment.text


def not_echo(points: list[str], instruction: str) -> list[str]:
    """Key points minus lines that repeat the instruction ("The three most important points...")."""
    return [point for point in points if fuzz.partial_ratio(point.lower(), instruction.lower()) < ECHO_SCORE]


class MeetingMinutes:
    """Segments, rolling summaries and extracted items of one stream, and the notes made at its end."""

    def __init__(self, settings: Settings, speakers: Iterable[str] = ()) -> None:
        self.settings = settings
        self.speakers = [name for name in speakers if name]
        self.segments: list[Segment] = []
        self.summaries: list[Summary] = []
        self.items: list[Decision | ActionItem] = []
        self.segments_at_last_summary = -1
        self.extracted_until = -1.0  # stream time up to which extraction forks have read the transcript
        self._requested_until = -1.0
        # Every extraction round as it went (raw output, parsed, kept): what benchmarks/notes_quality.py
        # scores stage by stage. Only when asked for (`output.notes_trace`): it grows with the meeting.
        self.trace: list[dict] | None = [] if settings.output.notes_trace else None
        self.aliases: dict[str, str] = {}  # a diarizer's label -> the name the meeting gave it (livesum.asr.speaker_names)

    def on_segment(self, segment: Segment) -> None:
        if segment.final and segment.text.strip():
            self.segments.append(segment)

    def add_summary(self, summary: Summary) -> None:
        """Keep a rolling summary as text: the final summary and the questions' forks read them."""
        self.summaries.append(summary)
        self.segments_at_last_summary = len(self.segments)

    def extraction_requests(self, until: float) -> list[ForkRequest]:
        """The extraction forks over a cache fed up to stream time `until` (decisions, tasks), or none
        when nothing was said since the last ones read. By stream time, not by the segments here: the
        speech recognition runs ahead of what the model has read."""
        read = [segment.end for segment in self.segments if segment.end <= until]
        if not read or max(read) <= self.extracted_until:
            return []
        self._requested_until = max(read)
        return [ForkRequest(instruction, EXTRACT_MAX_TOKENS, structured=True) for _, instruction in EXTRACTIONS]

    def take_extractions(self, outputs: Sequence[str], since: float) -> None:
        """The extraction forks' outputs, grounded in the segments from `since` on (what the window
        holds), merged into the running list."""
        self.extracted_until = max(self.extracted_until, self._requested_until)
        window = [segment for segment in self.segments if segment.end >= since] or self.segments
        names = self.names()
        for (kind, instruction), output in zip(EXTRACTIONS, outputs):
            parsed = parse_items(output, kind)
            grounded = [item.model_copy(update={"owner": self.aliases.get(item.owner, item.owner)}) if isinstance(item, ActionItem)
                        else item for item in ground(parsed, window, names, instruction)]
            self.items = merge(self.items, grounded)
            if self.trace is not None:
                self.trace.append({"kind": kind, "since": since, "until": self._requested_until,
                                   "known_until": window[-1].end if window else since, "raw": output,
                                   "parsed": [item.model_dump() for item in parsed],
                                   "grounded": [item.model_dump() for item in grounded]})

    def extract(self, engine: Engine, since: float, until: float) -> None:
        """The extraction forks over a cache fed up to `until`, decoded together, grounded in the segments
        from `since` (the oldest the window holds) on."""
        requests = self.extraction_requests(until)
        if requests:
            self.take_extractions(complete_all(engine, requests), since)

    def action_items(self) -> list[ActionItem]:
        return [item for item in self.items if isinstance(item, ActionItem)]

    def decisions(self) -> list[Decision]:
        """The decisions, less those that only restate a task ("Lucy will do a poster" beside Lucy's task
        "do a poster"): the model lists some tasks under both kinds, and a task is not a decision."""
        tasks = self.action_items()
        return [item for item in self.items if isinstance(item, Decision) and not any(restates(item, task) for task in tasks)]

    def source_of(self, answer: str) -> float | None:
        """Stream time of what an answer draws on: where its own words were said together
        (a "not mentioned" answer has none)."""
        found = locate_said(answer, self.segments)
        return found[0] if found else None

    def names(self) -> set[str]:
        """People of the meeting, and the diarizer's labels the LM may have read before they were named."""
        return names_in(self.segments, self.speakers) | set(self.aliases)

    def question_context(self, question: str, held_from: float | None = None) -> str:
        """What a question's fork gets besides the window: the earlier summaries (`earlier_context`), then
        the lines that match the question (livesum.llm.matching_lines), non-adjacent runs of lines marked by "..."."""
        segments = self.segments[:]  # a snapshot: the event loop appends while this runs in a thread
        lines = relevant_segments(question, segments, self.settings.llm.question_lines)
        if not lines:
            return self.earlier_context(held_from)
        index = {id(segment): n for n, segment in enumerate(segments)}
        block, previous = [], None
        for segment in lines:
            if previous is not None and index[id(segment)] != index[id(previous)] + 1:
                block.append("...")
            block.append(spoken_line(segment).strip())  # as the LM read it
            previous = segment
        return self.earlier_context(held_from) + RELEVANT_LINES_INTRO + "\n".join(block) + "\n"

    def earlier_context(self, held_from: float | None = None) -> str:
        """The rolling summaries before the latest, as text for a fork (the window holds the latest).
        `held_from`: the stream time from which the window still holds the transcript; a summary whose
        whole stretch is still there would only repeat it (a hundred tokens of prompt more for every
        question: a second on two cores before the first word), so only those reaching before it count."""
        earlier = [s.text.strip() for s in self.summaries[:-1]
                   if s.text.strip() and (held_from is None or s.start < held_from)][-MAX_CONTEXT_SUMMARIES:]
        return EARLIER_SUMMARIES_INTRO + "".join(f"- {text}\n" for text in earlier) if earlier else ""

    def final_summary_request(self, held_from: float | None = None) -> ForkRequest | str:
        """The fork of the summary over the whole meeting (given the earlier summaries when the window
        has moved on), or the summary itself when no fork is needed (the latest rolling summary when
        nothing was said since it)."""
        context = self.earlier_context(held_from)
        if not context and self.summaries and self.segments_at_last_summary == len(self.segments):
            return self.summaries[-1].text
        max_tokens = self.settings.llm.engine.max_summary_tokens
        if not context:
            return ForkRequest(SUMMARY_INSTRUCTION, max_tokens)
        return ForkRequest(context + FINAL_SUMMARY_INSTRUCTION, max_tokens * 2)

    def final_notes(self, engine: Engine | None, answers: list[Answer], end: float, since: float = 0.0,
                    on_summary: Callable[[str], None] | None = None, held_from: float | None = None) -> Notes:
        """The notes at the end: the extraction of what was said since the last one (over the window, from
        `since`), the final summary, the title and the key points (given the earlier summaries that reach
        before `held_from`, see `earlier_context`), all forks off the final cache decoded
        side by side (`complete_all`). `on_summary` gets the final summary as soon as it is written,
        before the other forks are done (the notes come when all are)."""
        title, key_points = DEFAULT_TITLE, []
        summary = self.summaries[-1].text if self.summaries else ""
        told: list[str] = []

        def tell(text: str) -> None:
            if on_summary is not None and not told:
                told.append(text)
                on_summary(text)

        if engine is not None and self.segments:
            context = self.earlier_context(held_from)
            extraction = self.extraction_requests(math.inf)
            summary_request = self.final_summary_request(held_from)
            if isinstance(summary_request, ForkRequest):
                summary_request = replace(summary_request, on_done=lambda text: tell(whole_sentences(text)))
            max_tokens = self.settings.llm.engine.max_answer_tokens
            requests = [*extraction, *([summary_request] if isinstance(summary_request, ForkRequest) else []),
                        ForkRequest(context + TITLE_INSTRUCTION, 24), ForkRequest(context + KEY_POINTS_INSTRUCTION, max_tokens * 2)]
            outputs = complete_all(engine, requests)
            if extraction:
                self.take_extractions(outputs[:len(extraction)], since)
            outputs = outputs[len(extraction):]
            if isinstance(summary_request, ForkRequest):
                summary, outputs = whole_sentences(outputs[0]), outputs[1:]
            else:
                summary = summary_request
            title = first_line(outputs[0], DEFAULT_TITLE)
            key_points = not_echo(bullet_lines(outputs[1]), KEY_POINTS_INSTRUCTION)
        if summary:
            tell(summary)  # no fork was needed, or the engine has no step API: told now
        return Notes(
            title=title,
            summary=summary,
            key_points=key_points,
            decisions=self.decisions(),
            action_items=self.action_items(),
            answers=answers,
            duration=end,
        )
