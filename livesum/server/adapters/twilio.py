"""Twilio Media Streams (`/twilio`): JSON text frames connected, start, media, dtmf, mark, stop.

media.payload is base64 mu-law 8 kHz mono; media.track is 'inbound' or 'outbound' (both with
`both_tracks`), media.timestamp milliseconds since the stream started. Twilio cannot put a query
string on the stream URL, so the token comes from start.customParameters.token.
"""

from __future__ import annotations

import uuid
from typing import Any

from livesum.server.adapters import Action, Adapter, AdapterError, CallLegAudio, Close, Open, field_of
from livesum.server.audio import decode_alaw, decode_mulaw

DECODERS = {"audio/x-mulaw": decode_mulaw, "audio/x-alaw": decode_alaw}


class TwilioAdapter(Adapter):
    name = "twilio"

    def __init__(self, query: dict[str, str], max_buffered_bytes: int = 4 << 20) -> None:
        super().__init__(query, max_buffered_bytes)
        self.started = False
        self.legs = CallLegAudio("twilio", DECODERS)

    def on_message(self, message: dict[str, Any]) -> list[Action]:
        event = message.get("event")
        if event == "connected" or event in ("dtmf", "mark"):
            return []
        if event == "start":
            return self._start(message)
        if event == "media":
            return self._media(message)
        if event == "stop":
            return [Close()]
        raise AdapterError(f"twilio: unknown event {str(event)[:40]!r}")

    def _start(self, message: dict[str, Any]) -> list[Action]:
        if self.started:
            raise AdapterError("twilio: a second start on one stream")
        start = field_of(message, "start", kind=dict)
        self.legs.configure(field_of(start, "mediaFormat", kind=dict), "mediaFormat", "encoding", "sampleRate")
        tracks = start.get("tracks") or ["inbound"]
        parameters = start.get("customParameters") or {}
        if not isinstance(tracks, list) or not isinstance(parameters, dict):
            raise AdapterError("twilio: start.tracks must be a list and customParameters an object")
        stream_id = message.get("streamSid") or start.get("streamSid") or uuid.uuid4().hex
        speakers = {str(track): str(parameters.get(f"{track}_speaker", track)) for track in tracks}
        self.started = True
        token = parameters.get("token")
        return [Open(str(stream_id), speakers, str(token) if token is not None else None)]

    def _media(self, message: dict[str, Any]) -> list[Action]:
        if not self.started:
            raise AdapterError("twilio: media before start")
        return self.legs.audio(message)
