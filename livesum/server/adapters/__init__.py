"""Adapters: what telephony and meeting software send, turned into session actions.

Each adapter is a small state machine fed one websocket message at a time; it returns `Open`
(session id, tracks -> speaker names, a token if the protocol carries one), `Audio` (a track's
samples at 16 kHz and, where given, their stream time) and `Close` actions. It raises
`AdapterError` for a message it cannot use; the server reports it and the stream goes on.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from livesum.server.audio import Resampler


class AdapterError(ValueError):
    """A message the adapter cannot use; one line for the log and the session's error events."""


@dataclass(frozen=True)
class Open:
    session_id: str
    speakers: dict[str, str] = field(default_factory=dict)
    token: str | None = None


@dataclass(frozen=True)
class Audio:
    track: str | None
    samples: np.ndarray
    at: float | None = None  # stream seconds of the first sample, when the protocol says
    speaker: str | None = None  # the track's display name, when the protocol names it late


@dataclass(frozen=True)
class Close:
    pass


Action = Open | Audio | Close


class Adapter:
    """Base: text frames are JSON objects, binary frames are refused unless the protocol uses them."""

    name = "adapter"

    def __init__(self, query: dict[str, str], max_buffered_bytes: int = 4 << 20) -> None:
        self.query = query
        self.max_buffered_bytes = max_buffered_bytes  # what an adapter may hold back (e.g. for reordering)

    def on_text(self, text: str) -> list[Action]:
        return self.on_message(load_object(text))

    def on_message(self, message: dict[str, Any]) -> list[Action]:
        raise NotImplementedError

    def on_binary(self, data: bytes) -> list[Action]:
        raise AdapterError(f"{self.name}: unexpected binary frame ({len(data)} bytes)")

    def flush(self) -> list[Action]:
        """The connection ended: anything the adapter still holds."""
        return []


def load_object(text: str) -> dict[str, Any]:
    try:
        message = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise AdapterError(f"malformed JSON: {error}") from None
    if not isinstance(message, dict):
        raise AdapterError("expected a JSON object")
    return message


def field_of(message: dict[str, Any], *path: str, kind: type | tuple[type, ...] = str) -> Any:
    """message[path[0]][path[1]]..., checked for presence and type."""
    node: Any = message
    for key in path:
        if not isinstance(node, dict) or key not in node:
            raise AdapterError(f"missing field {'.'.join(path)}")
        node = node[key]
    if not isinstance(node, kind) or isinstance(node, bool) and kind is not bool:
        raise AdapterError(f"field {'.'.join(path)} has the wrong type")
    return node


def b64(payload: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise AdapterError("payload is not valid base64") from None


def number(value: Any, name: str) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise AdapterError(f"{name} is not a number") from None
    if not np.isfinite(result) or result < 0:
        raise AdapterError(f"{name} is out of range")
    return result


class CallLegAudio:
    """What Twilio and Telnyx share: base64 G.711 payloads per call leg (media.track), stamped in
    milliseconds (media.timestamp), in the encoding and rate their start message announced."""

    def __init__(self, vendor: str, decoders: dict[str, Callable[[bytes], np.ndarray]]) -> None:
        self.vendor, self.decoders = vendor, decoders
        self.decode = next(iter(decoders.values()))
        self.rate = 8000
        self.resamplers: dict[str, Resampler] = {}

    def configure(self, media_format: dict[str, Any], name: str, encoding_key: str, rate_key: str) -> None:
        """Take the format of `start`'s `name` object (mediaFormat / media_format)."""
        encoding = field_of(media_format, encoding_key)
        if encoding not in self.decoders:
            raise AdapterError(f"{self.vendor}: unsupported {name}.{encoding_key} {encoding[:40]!r} ({' or '.join(self.decoders)})")
        self.decode = self.decoders[encoding]
        self.rate = int(number(media_format.get(rate_key, 8000), f"{name}.{rate_key}"))
        if not 8000 <= self.rate <= 48000:
            raise AdapterError(f"{self.vendor}: {name}.{rate_key} {self.rate} is out of range")

    def audio(self, message: dict[str, Any]) -> list[Action]:
        """A `media` message as one track's 16 kHz audio at its stream time."""
        media = field_of(message, "media", kind=dict)
        track = str(media.get("track", "inbound"))
        samples = self.decode(b64(field_of(media, "payload")))
        at = number(media["timestamp"], "media.timestamp") / 1000 if "timestamp" in media else None
        resampler = self.resamplers.setdefault(track, Resampler(self.rate))
        return [Audio(track, resampler(samples), at)]
