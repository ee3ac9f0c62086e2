"""Cleaning up what a model writes: bullet lists, sentences cut off by the token limit, titles.

(Decisions and action items used to be found here by cue phrases, "we decided to...", "action
item for Maria"; people rarely say those, so they now come from the model: livesum/llm/minutes.py.)
"""

from __future__ import annotations

import re

from rapidfuzz import fuzz

# A sentence ends at . ! ? followed by a space: "version 2.0" and "e.g." mid-word are not ends.
SENTENCE_STOP = re.compile(r"[.!?][\"')]*(?=\s)")
JSON_OBJECT = re.compile(r"\{[^{}]*\}")
ITEM_TEXT = re.compile(r'"text"\s*:\s*"([^"]*)"')
REPEAT_SCORE = 90.0  # rapidfuzz ratio of two items' texts above which the second is the first again


def cut_at_repeat(text: str) -> str | None:
    """A JSON list of items cut before the first item whose "text" nearly repeats an earlier one's, or
    None when none does. In greedy decoding a small model falls into loops of near-copies ("...with a
    15-year guarantee", "...with a 14-year guarantee", ...) that run to the token limit; what follows the
    first copy is worth nothing, and a fork that stops there saves the rest of its tokens
    (livesum.llm.engine.ForkRun). The texts, not the whole objects: their keys alike make "ask the PTA"
    look like "ask the kitchen"."""
    seen: list[str] = []
    for match in JSON_OBJECT.finditer(text):
        said = ITEM_TEXT.search(match.group())
        item = (said.group(1) if said else match.group()).lower().strip(" .")
        if any(fuzz.ratio(item, earlier) >= REPEAT_SCORE for earlier in seen):
            return text[: match.start()].rstrip(" ,\n")
        seen.append(item)
    return None


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
