"""The one event schema that the pipeline, the CLI, the writers and the websocket server speak.

Every event is a pydantic model with a literal `type` tag, so `Event` (a discriminated union)
round-trips through JSON: `parse_event(event.model_dump_json())` gives the same event back.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 3  # 2: segment id/words/latency/speaker, live status fields, item evidence; 3: answer_part, answer id (additive)


class BaseEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_time: float = Field(default_factory=time.time, description="Unix time the event was made.")


class Word(BaseModel):
    """One recognised word with its stream times (Whisper's word timestamps)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    probability: float | None = Field(None, ge=0, le=1)


class Segment(BaseEvent):
    """A stretch of transcribed speech. Partials may be revised; a final one never changes.

    A partial and the final that replaces it share `id`, so a screen can overwrite the line.
    """

    type: Literal["segment"] = "segment"
    final: bool
    start: float = Field(ge=0, description="Seconds from the start of the stream.")
    end: float = Field(ge=0)
    text: str
    language: str | None = None
    id: str | None = Field(None, description="Stable id shared by the partials and the final of one segment.")
    words: list[Word] | None = Field(None, description="Word timings, where Whisper gives them.")
    latency: float | None = Field(
        None, ge=0,
        description="Live sources: wall-clock seconds from the capture of the segment's last audio sample "
        "to the emission of this event.",
    )
    speaker: str | None = Field(None, description="Speaker or track label, where the source separates them.")


class Summary(BaseEvent):
    """A rolling summary of everything heard up to `end` (the model's memory covers [start, end])."""

    type: Literal["summary"] = "summary"
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    text: str
    final: bool = Field(False, description="True for the summary made at the end of the stream.")


class AnswerPart(BaseEvent):
    """An answer as its words come: the text so far (replace, do not append). The `answer` event with the
    same `id` follows with the final text; a client that ignores parts loses nothing."""

    type: Literal["answer_part"] = "answer_part"
    id: str
    question: str
    text: str


class Answer(BaseEvent):
    type: Literal["answer"] = "answer"
    question: str
    text: str
    id: str | None = Field(None, description="Shared with the answer_part events that streamed this answer.")
    at: float = Field(ge=0, description="Stream time (seconds) when the question was answered.")
    source_at: float | None = Field(
        None, ge=0, description="Stream time of the transcript the answer draws on, where its words were said; null when not found.")


class ActionItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    owner: str | None = None
    due: str | None = Field(None, description="When it is due, as said ('Friday', 'next week').")
    evidence: str | None = Field(None, description="The transcript words the item rests on.")
    at: float | None = Field(None, description="Stream time the item was said, when known.")


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    evidence: str | None = Field(None, description="The transcript words the decision rests on.")
    at: float | None = None


class Notes(BaseEvent):
    """The meeting notes made when a stream ends (also written as notes.md)."""

    type: Literal["notes"] = "notes"
    title: str
    summary: str
    key_points: list[str] = []
    decisions: list[Decision] = []
    action_items: list[ActionItem] = []
    answers: list[Answer] = []
    duration: float = Field(0.0, ge=0)


class Status(BaseEvent):
    """Progress and lifecycle: `started`, `progress`, `finished`, with what is known so far."""

    type: Literal["status"] = "status"
    state: Literal["started", "progress", "finished"]
    position: float = Field(0.0, ge=0, description="Seconds of audio processed.")
    duration: float | None = Field(None, description="Total seconds, when known (files).")
    detail: str = ""
    # Live sources (mic, websocket) fill these in on progress events; files leave them None.
    level_db: float | None = Field(None, description="Input level of the latest audio, dBFS.")
    dropped_seconds: float | None = Field(None, ge=0, description="Audio dropped so far because the pipeline fell behind.")
    asr_lag: float | None = Field(None, ge=0, description="Seconds of captured audio not yet transcribed.")
    llm_lag: float | None = Field(None, ge=0, description="Seconds since the oldest final text not yet in the LM cache was emitted.")
    cache_tokens: int | None = Field(None, ge=0, description="Entries in the LM's sink cache.")


class Error(BaseEvent):
    """Something went wrong; `fatal` says whether the stream stopped because of it."""

    type: Literal["error"] = "error"
    message: str
    fatal: bool = False
    source: str = Field("pipeline", description="Stage that raised it: source, asr, llm, output, server.")


Event = Annotated[Segment | Summary | AnswerPart | Answer | Notes | Status | Error, Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(raw: str | bytes) -> Event:
    return EVENT_ADAPTER.validate_json(raw)


def event_json_schema() -> dict:
    schema = EVENT_ADAPTER.json_schema()
    schema["title"] = "livesum event"
    schema["$comment"] = f"livesum event schema version {SCHEMA_VERSION}"
    return schema


def event_json_schema_text() -> str:
    return json.dumps(event_json_schema(), indent=2) + "\n"
