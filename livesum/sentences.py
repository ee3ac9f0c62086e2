"""Where a sentence of transcript text ends: the streaming ASR commits words up to one
(livesum/asr/streaming.py), a question's matching lines grow to one (livesum/llm/matching_lines.py),
and the transcript files end a line at one (livesum/outputs/files.py)."""

from __future__ import annotations

import re

SENTENCE_END = re.compile(r"[.!?…][\"')\]]*$")
ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "prof.", "vs.", "e.g.", "i.e.", "etc.", "no.", "jr.", "sr."})


def ends_sentence(text: str) -> bool:
    """Whether `text` (a word, or a line; trailing spaces aside) ends a sentence: closing punctuation,
    and not a title or abbreviation on its own ("Dr.")."""
    return bool(SENTENCE_END.search(text.rstrip())) and text.strip().lower() not in ABBREVIATIONS
