"""Vonage Voice API websockets (`/vonage`): a first text frame `websocket:connected` with
`content-type: audio/l16;rate=16000` (or 8000) and the NCCO's custom headers, then binary 20 ms
frames of s16le mono; `websocket:dtmf` text frames. The call ending closes the socket."""

from __future__ import annotations

import re
import uuid
from typing import Any

from livesum.server.adapters import Action, Adapter, AdapterError, Audio, Open
from livesum.server.audio import AudioFormatError, Resampler, decode_s16le

CONTENT_TYPE = re.compile(r"^audio/l16;\s*rate=(8000|16000|24000)$", re.IGNORECASE)


class VonageAdapter(Adapter):
    name = "vonage"
    ends_on_close = True

    def __init__(self, query: dict[str, str], max_buffered_bytes: int = 4 << 20) -> None:
        super().__init__(query, max_buffered_bytes)
        self.resample: Resampler | None = None

    def on_message(self, message: dict[str, Any]) -> list[Action]:
        event = message.get("event")
        if event == "websocket:connected":
            return self._connected(message)
        if event in ("websocket:dtmf", "websocket:notify"):
            return []
        raise AdapterError(f"vonage: unknown event {str(event)[:40]!r}")

    def _connected(self, message: dict[str, Any]) -> list[Action]:
        if self.resample is not None:
            raise AdapterError("vonage: a second websocket:connected")
        content_type = message.get("content-type")
        match = CONTENT_TYPE.match(content_type) if isinstance(content_type, str) else None
        if match is None:
            raise AdapterError(f"vonage: unsupported content-type {str(content_type)[:60]!r}")
        self.resample = Resampler(int(match.group(1)))
        session = message.get("session") or message.get("uuid") or uuid.uuid4().hex
        token = message.get("token")
        return [Open(str(session), {}, str(token) if token is not None else None)]

    def on_binary(self, data: bytes) -> list[Action]:
        if self.resample is None:
            raise AdapterError("vonage: audio before websocket:connected")
        try:
            return [Audio(None, self.resample(decode_s16le(data)))]
        except AudioFormatError as error:
            raise AdapterError(f"vonage: {error}") from None
