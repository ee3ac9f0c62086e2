"""Which stretch of the stream the LM's window still holds, from the tokens each feed added.

The engine keeps the latest `window` transcript tokens behind its sinks; the pipeline knows when each
feed's text was said. Together they say from when the window holds the transcript: where a rolling
summary starts, and which earlier summaries a fork needs (those reaching before what is held).
"""

from __future__ import annotations

import math
from collections import deque


class WindowSpan:
    def __init__(self, window: int) -> None:
        self.window = window
        self.tokens_fed = 0
        self._marks: deque[tuple[float, int]] = deque()  # (stream time a feed starts, tokens_fed after it)
        self._evicted_through = 0  # tokens_fed after the last feed the window dropped whole

    def fed(self, start: float, tokens: int) -> None:
        """A feed of `tokens` tokens whose first words were said at stream time `start`."""
        self.tokens_fed += tokens
        self._marks.append((start, self.tokens_fed))

    def oldest(self) -> float:
        """Stream time of the oldest feed the window still holds any of (0.0 before the first)."""
        self._forget_evicted()
        return self._marks[0][0] if self._marks else 0.0

    def held_from(self) -> float:
        """Stream time from which the window holds every word fed: the start of the first feed it holds
        whole (a feed it holds part of counts as gone; none held whole: nothing is known held, inf)."""
        oldest_kept = self._forget_evicted()
        if not self._marks:
            return 0.0
        if self._evicted_through >= oldest_kept:
            return self._marks[0][0]
        return self._marks[1][0] if len(self._marks) > 1 else math.inf

    def _forget_evicted(self) -> int:
        """Drop the marks of feeds the window holds none of; the count of tokens evicted so far."""
        oldest_kept = self.tokens_fed - self.window
        while self._marks and self._marks[0][1] <= oldest_kept:
            self._evicted_through = self._marks.popleft()[1]
        return oldest_kept
