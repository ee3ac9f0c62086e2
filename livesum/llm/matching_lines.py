"""Which lines of the transcript a question is about: BM25 over the final segments.

The window holds only the last few minutes, and a rolling summary keeps the gist, not "which
roofer" or "how much". So a question's fork is also given the few lines whose words match the
question best (each with the line before and after it: "Tom, could you ring them?" is answered
on the next line), widened to whole sentences: a diarized transcript cuts a sentence where its
speaker paused ("Tom, could you ring them and ask whether we get a discount if we order" / "sixty
kilos at a time?"), and a neighbour that is half a sentence leaves out who was asked. That costs a
couple of hundred prompt tokens per question, inside the fork; nothing else of the history is
re-encoded, and it is the same text a user would scroll back to.
Each question stems the transcript again: linear in its length (milliseconds for an hour).
Words are stemmed (snowball), so "ordering" finds "order" and "quotes" finds "quote".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import snowballstemmer
from rank_bm25 import BM25Okapi

from livesum.events import Segment
from livesum.sentences import ends_sentence

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# Words that say what kind of answer is wanted, not what it is about.
STOP_WORDS = frozenset(
    "a an the and or but of to in on at for by with from as is are was were be been being do does did "
    "what which who whom whose when where why how much many will would shall should can could may might "
    "must it its this that these those there here they them their he she him her his i we you your our "
    "me my us about into over than then so if not no yes any some all has have had let meeting".split()
)
LINES_AROUND = 1  # lines given before and after each hit
MAX_SENTENCE_LINES = 3  # lines a run may grow by at each end to finish a sentence cut at a pause
_stemmer = snowballstemmer.stemmer("english")


def terms(text: str) -> list[str]:
    """Stemmed content words of a text."""
    words = (word.split("'")[0] for word in WORD.findall(text.lower()))  # "supplier's" is "supplier", "that's" "that"
    return _stemmer.stemWords([word for word in words if word not in STOP_WORDS])


def relevant_segments(question: str, segments: Sequence[Segment], hits: int) -> list[Segment]:
    """The `hits` segments that match the question best (BM25, only those sharing a word with it),
    each with its neighbours, in stream order; [] when nothing matches."""
    query = terms(question)
    documents = [terms(segment.text) for segment in segments]
    if hits <= 0 or not query or not any(documents):
        return []
    scores = BM25Okapi(documents).get_scores(query)
    wanted = set(query)
    ranked = sorted((index for index, words in enumerate(documents) if wanted.intersection(words)), key=lambda i: -scores[i])
    picked: set[int] = set()
    for index in ranked[:hits]:
        first, last = sentence_run(segments, max(index - LINES_AROUND, 0), min(index + LINES_AROUND, len(segments) - 1))
        picked.update(range(first, last + 1))
    return [segments[index] for index in sorted(picked)]


def sentence_run(segments: Sequence[Segment], first: int, last: int) -> tuple[int, int]:
    """The run of lines `first`..`last` grown at each end (by MAX_SENTENCE_LINES at most) until it starts
    after a sentence end and ends on one."""
    for _ in range(MAX_SENTENCE_LINES):
        if first == 0 or ends_sentence(segments[first - 1].text):
            break
        first -= 1
    for _ in range(MAX_SENTENCE_LINES):
        if last == len(segments) - 1 or ends_sentence(segments[last].text):
            break
        last += 1
    return first, last
