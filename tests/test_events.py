import json

import pytest
from pydantic import ValidationError

from livesum.events import (
    ActionItem,
    Answer,
    Decision,
    Error,
    Notes,
    Segment,
    Status,
    Summary,
    event_json_schema,
    parse_event,
)

EXAMPLES = [
    Segment(final=True, start=1.0, end=2.5, text="hello", language="en"),
    Segment(final=False, start=3.0, end=3.4, text="wor"),
    Summary(start=0.0, end=120.0, text="They planned the launch."),
    Answer(question="When?", text="Friday.", at=60.0),
    Notes(
        title="Launch",
        summary="s",
        key_points=["a"],
        decisions=[Decision(text="Ship Friday.", at=5.0)],
        action_items=[ActionItem(text="Maria will write the post.", owner="Maria")],
        answers=[Answer(question="q", text="a", at=1.0)],
        duration=61.0,
    ),
    Status(state="progress", position=10.0, duration=100.0),
    Error(message="bad frame", source="server"),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.type)
def test_events_round_trip_through_json(event) -> None:
    assert parse_event(event.model_dump_json()) == event


def test_unknown_type_and_extra_fields_are_rejected() -> None:
    with pytest.raises(ValidationError):
        parse_event('{"type": "gossip", "text": "x"}')
    with pytest.raises(ValidationError):
        parse_event('{"type": "segment", "final": true, "start": 0, "end": 1, "text": "x", "mood": "happy"}')


def test_json_schema_lists_every_event_type() -> None:
    schema = event_json_schema()
    json.dumps(schema)
    tags = {definition["properties"]["type"]["const"] for definition in schema["$defs"].values() if "type" in definition.get("properties", {})}
    assert tags == {"segment", "summary", "answer_part", "answer", "notes", "status", "error"}


def test_committed_schema_is_current() -> None:
    """docs/events.schema.json is what clients code against; regenerate with `livesum schema -o`."""
    from conftest import REPO
    from livesum.events import event_json_schema_text

    assert (REPO / "docs" / "events.schema.json").read_text() == event_json_schema_text()
