"""Meeting minutes: what a stream's notes are made of, kept outside the LM cache.

The pipeline hands every final segment and every rolling summary to one `MeetingMinutes` per
stream, and asks it for the `Notes` at the end. All methods are blocking; the pipeline runs the
ones that take the engine on the LM thread.
"""

from __future__ import annotations

from livesum.config import Settings
from livesum.events import Answer, Notes, Segment, Summary
from livesum.llm.notes import bullet_lines, extract_action_items, extract_decisions, first_line, whole_sentences

TITLE_INSTRUCTION = "Give this meeting a short title of at most eight words. Reply with the title only."
KEY_POINTS_INSTRUCTION = "List the three to five most important points of this meeting, one short line each, starting with '- '."
DEFAULT_TITLE = "Meeting notes"


class MeetingMinutes:
    """Segments and rolling summaries of one stream, and the notes made from them at its end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.segments: list[Segment] = []
        self.summaries: list[Summary] = []
        self.segments_at_last_summary = -1

    def on_segment(self, segment: Segment) -> None:
        if segment.final:
            self.segments.append(segment)

    def on_rolling_summary(self, engine, summary: Summary) -> None:
        self.summaries.append(summary)
        self.segments_at_last_summary = len(self.segments)

    def final_summary(self, engine) -> str:
        """The latest rolling summary when nothing was said since it, else a new fork."""
        if self.summaries and self.segments_at_last_summary == len(self.segments):
            return self.summaries[-1].text
        if engine is None or not self.segments:
            return self.summaries[-1].text if self.summaries else ""
        return whole_sentences(engine.summarize(self.settings.llm.engine.max_summary_tokens))

    def final_notes(self, engine, answers: list[Answer], end: float) -> Notes:
        title, key_points, summary = DEFAULT_TITLE, [], self.final_summary(engine)
        if engine is not None and self.segments:
            title = first_line(engine.complete(TITLE_INSTRUCTION, 24), DEFAULT_TITLE)
            max_tokens = self.settings.llm.engine.max_answer_tokens
            key_points = bullet_lines(engine.complete(KEY_POINTS_INSTRUCTION, max_tokens * 2))
        return Notes(
            title=title,
            summary=summary,
            key_points=key_points,
            decisions=extract_decisions(self.segments),
            action_items=extract_action_items(self.segments),
            answers=answers,
            duration=end,
        )
