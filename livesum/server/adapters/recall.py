"""Recall.ai real-time websocket endpoints (`/recall`): `{"event": ..., "data": {"data": {...}, ...}}`.

audio_mixed_raw.data: data.data.buffer is base64 s16le 16 kHz mono of the whole call (no speaker);
audio_separate_raw.data: the same per participant, with data.data.participant {id, name}: each
participant is a track whose speaker is their name. data.data.timestamp.relative (seconds since the
recording began) places the audio, so a participant who was silent gets silence, not a shifted clock.
Other events (transcripts, participant events) are ignored. The socket closing ends the stream.
"""

from __future__ import annotations

import uuid
from typing import Any

from livesum.server.adapters import Action, Adapter, AdapterError, Audio, Open, b64, field_of, number
from livesum.server.audio import AudioFormatError, decode_s16le

AUDIO_EVENTS = ("audio_mixed_raw.data", "audio_separate_raw.data")


class RecallAdapter(Adapter):
    name = "recall"
    ends_on_close = True

    def __init__(self, query: dict[str, str], max_buffered_bytes: int = 4 << 20) -> None:
        super().__init__(query, max_buffered_bytes)
        self.opened = False

    def on_message(self, message: dict[str, Any]) -> list[Action]:
        event = message.get("event")
        if not isinstance(event, str):
            raise AdapterError("recall: message without an event name")
        if event not in AUDIO_EVENTS:
            return []  # participant events, transcripts...: not ours to use, not an error
        envelope = field_of(message, "data", kind=dict)
        data = field_of(envelope, "data", kind=dict)
        try:
            samples = decode_s16le(b64(field_of(data, "buffer")))
        except AudioFormatError as error:
            raise AdapterError(f"recall: {error}") from None
        at = None
        timestamp = data.get("timestamp")
        if isinstance(timestamp, dict) and "relative" in timestamp:
            at = number(timestamp["relative"], "timestamp.relative")
        track, speaker = None, None
        if event == "audio_separate_raw.data":
            participant = field_of(data, "participant", kind=dict)
            ident = participant.get("id")
            if not isinstance(ident, (int, str)) or isinstance(ident, bool):
                raise AdapterError("recall: participant.id missing")
            track = f"participant-{ident}"
            name = participant.get("name")
            speaker = str(name)[:64] if isinstance(name, str) and name else f"Participant {ident}"
        actions: list[Action] = []
        if not self.opened:
            self.opened = True
            actions.append(Open(self._session_id(envelope)))
        actions.append(Audio(track, samples, at, speaker))
        return actions

    def _session_id(self, envelope: dict[str, Any]) -> str:
        for key in ("bot", "recording"):
            node = envelope.get(key)
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                return node["id"]
        return uuid.uuid4().hex
