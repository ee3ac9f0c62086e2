"""Names for the diarizer's labels, from what the meeting itself says, never from a guess.

The diarizer knows voices, not people: "Speaker 1", "Speaker 2"... A label gets a name only on
clear evidence in the transcript:

- an introduction by that voice: "I'm Priya", "this is Tom speaking", "my name is Ade";
- the voice that answers when a name is addressed: "Tom, could you ring them?" then another voice
  says "Sure, I'll call them first thing" (or "..., Tom?" at the end of a question). One such
  exchange can be a coincidence (someone else answered), so it takes two, and no evidence at all
  for any other name for that voice or any other voice for that name.

A voice that two people share (a diarizer that merged them) gets conflicting evidence and stays a
label. A name, once given, holds for the rest of the stream: finals already emitted keep their
label (a final never changes), the ones after carry the name, and the notes at the end resolve the
earlier label to it. State: a few counters per label, bounded by the number of voices.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

from livesum.events import Segment
from livesum.words import NOT_NAMES

LABEL = re.compile(r"^Speaker \d+$")
NAME = r"([A-Z][a-z]{1,20})"
INTRODUCTION = re.compile(rf"\b(?i:I'm|I am|this is|my name is|it's) {NAME}(?=[,.!?;]|$|\s(?:and|from|with|here|speaking)\b)")
ADDRESSED_FIRST = re.compile(rf"(?:^|[.!?]\s+)(?i:(?:and|so|ok|okay|right|now),? )?{NAME}, "
                             rf"(?:could|can|would|will|do|are|please|you|what|how|when|where|is)\b")
ADDRESSED_LAST = re.compile(rf", {NAME}\?\s*$")
ANSWERS_NEEDED = 2  # addressed-then-answered exchanges that name a voice (an introduction needs one)
ANSWER_WITHIN_SECONDS = 10.0  # an answer comes soon after the question (the asker may go on meanwhile)


class SpeakerNames:
    """Watches final segments in order and names the labels the evidence settles."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}  # label -> name, once settled
        self._introduced: dict[str, Counter[str]] = defaultdict(Counter)
        self._answered: dict[str, Counter[str]] = defaultdict(Counter)
        self._addressed: tuple[str, str, float] | None = None  # (name, label that addressed it, when): awaiting an answer

    def observe(self, segment: Segment) -> None:
        """Take a final segment's evidence (its speaker is the label the diarizer gave it)."""
        label = segment.speaker
        if not segment.final or label is None or not LABEL.match(label):
            return
        text = segment.text.strip()
        if self._addressed is not None:
            name, asker, at = self._addressed
            if segment.start - at > ANSWER_WITHIN_SECONDS:
                self._addressed = None
            elif label != asker:  # another voice answers; the asker going on (a live final in pieces) waits
                self._answered[label][name] += 1
                self._addressed = None
        for name in INTRODUCTION.findall(text):
            if name not in NOT_NAMES:
                self._introduced[label][name] += 1
        addressed = [name for name in ADDRESSED_FIRST.findall(text) + ADDRESSED_LAST.findall(text) if name not in NOT_NAMES]
        if addressed:
            self._addressed = (addressed[-1], label, segment.end)
        self._settle()

    def name_of(self, label: str | None) -> str | None:
        """The label's name when settled, else the label itself."""
        return self.names.get(label, label) if label is not None else None

    def _settle(self) -> None:
        evidence: dict[str, Counter[str]] = defaultdict(Counter)
        for source in (self._introduced, self._answered):
            for label, counts in source.items():
                evidence[label].update(counts)
        for label, counts in evidence.items():
            if label in self.names or len(counts) != 1:
                continue  # named already, or two names for one voice: it stays a label
            name = next(iter(counts))
            if name in self.names.values() or any(name in other for key, other in evidence.items() if key != label):
                continue  # that name points at another voice too
            if self._introduced[label][name] >= 1 or self._answered[label][name] >= ANSWERS_NEEDED:
                self.names[label] = name
