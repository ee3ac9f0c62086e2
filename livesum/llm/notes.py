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
OWNER_AFTER_CUE = re.compile(r"\baction items? (?:for|to|on) (?P<owner>[A-Z][a-z]+)\b", re.IGNORECASE)
NOT_NAMES = {
    "It", "That", "This", "There", "We", "They", "He", "She", "You", "I", "What", "Which", "Who",
    "Everyone", "Everybody", "Someone", "Somebody", "Nobody", "One", "Then", "So", "And", "But", "Next",
}
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


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


def extract_decisions(segments: Iterable[Segment]) -> list[Decision]:
    return [Decision(text=text, at=at) for text, at in sentences(segments) if DECISION_CUES.search(text)]


def extract_action_items(segments: Iterable[Segment]) -> list[ActionItem]:
    items = []
    for text, at in sentences(segments):
        owner = _owner(text)
        if owner or ACTION_CUES.search(text):
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


def first_line(text: str, fallback: str) -> str:
    for line in text.splitlines():
        cleaned = line.strip().strip("#*\"' ").removeprefix("Title:").strip()
        if cleaned:
            return cleaned[:120]
    return fallback
