"""Meeting notes at the end of a stream.

Decisions and action items are taken from the transcript itself by their cue phrases ("we decided
to...", "action item for Maria: ..."), because people say them explicitly and a small model
paraphrasing them can drop the one detail that matters (who, by when). The model writes what
needs judgement: the title, the summary and the key points, each a fork off the live cache.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from livesum.events import ActionItem, Decision, Segment

DECISION_CUES = re.compile(
    r"\b(we(?:'ve| have)? (?:decided|agreed)|(?:the )?decision(?: is)?\b|it(?:'s| is| was) (?:decided|agreed)"
    r"|we(?:'re| are) going (?:to go )?with|let's go with|we(?:'ll| will) go with|(?:we )?settled on)",
    re.IGNORECASE,
)
ACTION_CUES = re.compile(
    r"\b(action items?|to-?do|follow(?:s|ing)? up|take (?:the|an|that) action)\b", re.IGNORECASE
)
# "Maria will send the draft by Friday": a named person committing to something.
NAMED_COMMITMENT = re.compile(
    r"\b(?P<owner>[A-Z][a-z]+) (?:will|is going to|'ll|needs to|has to|agreed to|can you|could you)\b"
)
# Whisper writes a spoken "for" as "4" now and then.
OWNER_AFTER_CUE = re.compile(r"\baction items? (?:for|4|to|on) (?P<owner>[A-Z][a-z]+)\b", re.IGNORECASE)
NOT_NAMES = {
    "It", "That", "This", "There", "We", "They", "He", "She", "You", "I", "What", "Which", "Who",
    "Everyone", "Everybody", "Someone", "Somebody", "Nobody", "One", "Then", "So", "And", "But", "Next",
}
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# A sentence ends at . ! ? followed by a space: "version 2.0" and "e.g." mid-word are not ends.
SENTENCE_STOP = re.compile(r"[.!?][\"')]*(?=\s)")


def sentences(segments: Iterable[Segment]) -> list[tuple[str, float]]:
    """Final transcript split into sentences, each with the start time of its segment."""
    found: list[tuple[str, float]] = []
    carry, carry_at = "", 0.0
    for segment in segments:
        if not segment.final:
            continue
        if not carry:
            carry_at = segment.start
        parts = SENTENCE_END.split((carry + " " + segment.text).strip())
        for part in parts[:-1]:
            found.append((part.strip(), carry_at))
            carry_at = segment.start
        carry = parts[-1]
        if carry.endswith((".", "!", "?")):
            found.append((carry.strip(), carry_at))
            carry = ""
    if carry.strip():
        found.append((carry.strip(), carry_at))
    return found


def _owner(sentence: str) -> str | None:
    match = OWNER_AFTER_CUE.search(sentence)
    if match:
        return match.group("owner").capitalize()
    for match in NAMED_COMMITMENT.finditer(sentence):
        if match.group("owner") not in NOT_NAMES:
            return match.group("owner")
    return None


NEGATED_DECISION = re.compile(r"\b(?:not|no|without) (?:a |any )?decision", re.IGNORECASE)
FIRST_PERSON_COMMITMENT = re.compile(r"^(?:and |so |then |okay,? )?(?:I will|I'll|I am going to|I'm going to|I can)\b", re.IGNORECASE)
# "Decision." / "Action item for Peter, then.": the cue says little more, the content follows.
CUE_ONLY_TRAILING_WORDS = 2
MAX_FOLLOWING_SENTENCES = 4  # how far after a cue its owner's promises are looked for


def _cue_only(sentence: str, cue: re.Pattern[str]) -> bool:
    """The sentence ends (give or take a word or two) with the cue: its content is in the next one."""
    matches = list(cue.finditer(sentence))
    return bool(matches) and len(sentence[matches[-1].end():].split()) <= CUE_ONLY_TRAILING_WORDS


def extract_decisions(segments: Iterable[Segment]) -> list[Decision]:
    said = sentences(segments)
    decisions = []
    for index, (text, at) in enumerate(said):
        if not DECISION_CUES.search(text) or NEGATED_DECISION.search(text):
            continue
        if _cue_only(text, DECISION_CUES) and index + 1 < len(said):
            text = f"{text} {said[index + 1][0]}"
        decisions.append(Decision(text=text, at=at))
    return decisions


def extract_action_items(segments: Iterable[Segment]) -> list[ActionItem]:
    """A cue or a named commitment, plus the first-person promises said right after it
    ("Action item for David. I will fix the login crash by Friday.")."""
    said = sentences(segments)
    items = []
    for index, (text, at) in enumerate(said):
        owner = _owner(text)
        if not owner and not ACTION_CUES.search(text):
            continue
        content_follows = _cue_only(text, OWNER_AFTER_CUE) or _cue_only(text, ACTION_CUES)
        following = [sentence for sentence, _ in said[index + 1 : index + 1 + MAX_FOLLOWING_SENTENCES]]
        cue = text
        for position, sentence in enumerate(following):
            if ACTION_CUES.search(sentence) or _owner(sentence):
                break  # the next item starts
            if FIRST_PERSON_COMMITMENT.search(sentence) or (position == 0 and content_follows):
                text = f"{text} {sentence}"
        if content_follows and text == cue:
            continue  # "And the action items." announces, it commits nobody to anything
        items.append(ActionItem(text=text, owner=owner, at=at))
    return items


def bullet_lines(text: str, limit: int = 6) -> list[str]:
    """Model output -> clean bullet texts ('- a', '1. b', '* c' all accepted)."""
    points = []
    for line in text.splitlines():
        cleaned = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", line).strip()
        if cleaned and cleaned not in points:
            points.append(cleaned)
    return points[:limit]


def whole_sentences(text: str) -> str:
    """Drop a last sentence cut off by the token limit ("...two weeks. A beta testers' login")."""
    text = text.strip()
    if not text or text[-1] in ".!?\"')":
        return text
    ends = [match.end() for match in SENTENCE_STOP.finditer(text)]
    return text[: ends[-1]].strip() if ends else text


def first_line(text: str, fallback: str, max_words: int = 12) -> str:
    """A title: the model's first non-empty line, unquoted, at most `max_words` words."""
    for line in text.splitlines():
        cleaned = line.strip().strip("#*\"' ").removeprefix("Title:").strip()
        if cleaned:
            words = cleaned.split()
            return " ".join(words[:max_words]).rstrip(",;:") if len(words) > max_words else cleaned
    return fallback
