"""The native websocket protocol (`/v1/stream`): client messages in, event envelopes out.

Client -> server: a JSON `start` (or `resume` on reconnect) first, then binary audio frames in the
declared encoding, and JSON control messages `ask`, `summarize`, `stop` at any time.
Server -> client: every pipeline event (livesum/events.py) wrapped as `{session, seq, event}`;
`seq` counts the session's events from 1, so a client that reconnects says where it stopped.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from livesum.events import Event

PROTOCOL_VERSION = 1
SCHEMA_BASE = "https://livesum.dev/schemas"
SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # also a folder name: no '/', no '..' start


class ProtocolError(ValueError):
    """A client message that does not fit the protocol; the message is one line for the client."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Start(_Message):
    """Opens a session: how the audio that follows is encoded, and allow-listed config overrides."""

    type: Literal["start"] = "start"
    sample_rate: int = Field(16000, ge=8000, le=48000, description="Rate of the binary audio frames, Hz.")
    encoding: Literal["pcm_s16le", "float32"] = "pcm_s16le"
    channels: int = Field(1, ge=1, le=8, description="Interleaved channels; downmixed to mono.")
    language: str | None = Field(None, max_length=16, description="Whisper language code; None = the server's setting.")
    speaker: str | None = Field(None, max_length=64, description="Label put on every final segment of this stream.")
    live: bool = Field(
        False,
        description="True for a source that cannot wait (a microphone): when the server falls behind it drops the "
        "oldest audio and reports it. False (a file, a recording): the server stops reading the socket until it has "
        "room, so nothing is dropped and the sender is slowed.",
    )
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted config keys from the server's allow-list.")


class Resume(_Message):
    """Reattaches to a session within its grace period; events after `last_seq` are replayed."""

    type: Literal["resume"] = "resume"
    last_seq: int = Field(0, ge=0, description="The last seq the client saw (0 = replay everything).")
    secret: str = Field(max_length=128, description="The session's resume_secret, sent to the connection that started it.")


class Watch(_Message):
    """Reads a running session without changing it: events after `last_seq` are replayed, then live ones.
    A watcher sends nothing else; audio and control messages from it are refused."""

    type: Literal["watch"] = "watch"
    last_seq: int = Field(0, ge=0, description="The last seq the watcher saw (0 = everything from the start).")


class Ask(_Message):
    type: Literal["ask"] = "ask"
    question: str = Field(min_length=1, max_length=2000)


class Summarize(_Message):
    """A rolling summary now (skipped if one is already being made)."""

    type: Literal["summarize"] = "summarize"


class Stop(_Message):
    """End of the stream: transcribe what came, write the final summary and notes, then close."""

    type: Literal["stop"] = "stop"


ClientMessage = Annotated[Start | Resume | Watch | Ask | Summarize | Stop, Field(discriminator="type")]
CLIENT_ADAPTER: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


class Envelope(BaseModel):
    """One server message: an event of the session, numbered. `seq` is None for connection-level
    messages that are not part of the session's record (and are not replayed): an error right
    before a close, and the `started` status that gives the starting connection its resume secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    session: str
    seq: int | None = Field(None, ge=1)
    event: Event
    resume_secret: str | None = Field(
        None, description="Only on the connection-level message right after `start`: what a `resume` of this session must present.")


def parse_client_message(raw: str) -> Start | Resume | Watch | Ask | Summarize | Stop:
    """Validated client message, or ProtocolError with a one-line reason."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as error:
        raise ProtocolError(f"malformed JSON: {error}") from None
    if not isinstance(data, dict):
        raise ProtocolError("a control message must be a JSON object")
    kind = data.get("type")
    if kind not in {"start", "resume", "watch", "ask", "summarize", "stop"}:
        raise ProtocolError(f"unknown message type {str(kind)[:40]!r}")
    try:
        return CLIENT_ADAPTER.validate_python(data)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"][1:]) or "message"
        raise ProtocolError(f"invalid {kind}: {where}: {problem['msg']}") from None


def _schema(title: str, core: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{SCHEMA_BASE}/{name}/v{PROTOCOL_VERSION}.json",
        "title": title,
        "version": PROTOCOL_VERSION,
        **core,
    }


def client_schema() -> dict[str, Any]:
    return _schema("livesum native protocol: client messages", CLIENT_ADAPTER.json_schema(), "server-client")


def server_schema() -> dict[str, Any]:
    return _schema("livesum native protocol: server messages", Envelope.model_json_schema(), "server-events")


def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"
