"""Telnyx media streaming (`/telnyx`): connected, start, media, dtmf, mark, error, stop in snake_case.

media.payload is base64 RTP payload in start.media_format.encoding (PCMU or PCMA, 8 kHz mono).
Telnyx does not guarantee frame order, so messages are put back in `sequence_number` order
through a small window; a frame that never comes is skipped once the window is full.
"""

from __future__ import annotations

import heapq
import itertools
import uuid
from typing import Any

from livesum.server.adapters import Action, Adapter, AdapterError, Audio, Close, Open, b64, field_of, number
from livesum.server.audio import Resampler, decode_alaw, decode_mulaw

DECODERS = {"PCMU": decode_mulaw, "PCMA": decode_alaw}
REORDER_WINDOW = 50  # messages held back waiting for a missing one (1 s of 20 ms frames)


class TelnyxAdapter(Adapter):
    name = "telnyx"

    def __init__(self, query: dict[str, str]) -> None:
        super().__init__(query)
        self.started = False
        self.decode = decode_mulaw
        self.rate = 8000
        self.resamplers: dict[str, Resampler] = {}
        self.held: list[tuple[int, int, dict[str, Any]]] = []  # (sequence_number, arrival, message)
        self.arrival = itertools.count()
        self.next_seq: int | None = None

    def on_message(self, message: dict[str, Any]) -> list[Action]:
        event = message.get("event")
        if event == "connected":
            return []
        if event not in ("start", "media", "dtmf", "mark", "error", "stop"):
            raise AdapterError(f"telnyx: unknown event {str(event)[:40]!r}")
        if event == "start":  # handled at once: later frames need its format
            actions = self._start(message)
            if "sequence_number" in message:
                self.next_seq = int(number(message["sequence_number"], "sequence_number")) + 1
            return actions + self._release()
        if "sequence_number" not in message:
            return self._handle(message)
        sequence = int(number(message["sequence_number"], "sequence_number"))
        if self.next_seq is not None and sequence < self.next_seq:
            return []  # a duplicate, or later than the window allowed: its place has passed
        heapq.heappush(self.held, (sequence, next(self.arrival), message))
        return self._release()

    def _release(self) -> list[Action]:
        if not self.started:
            if len(self.held) > REORDER_WINDOW:
                raise AdapterError("telnyx: media without a start")
            return []
        actions: list[Action] = []
        while self.held:
            sequence = self.held[0][0]
            if self.next_seq is None or sequence == self.next_seq or len(self.held) > REORDER_WINDOW or sequence < self.next_seq:
                _, _, message = heapq.heappop(self.held)
                if self.next_seq is None or sequence >= self.next_seq:
                    self.next_seq = sequence + 1
                    actions += self._handle(message)
            else:
                break
        return actions

    def flush(self) -> list[Action]:
        actions: list[Action] = []
        while self.held and self.started:
            actions += self._handle(heapq.heappop(self.held)[2])
        return actions

    def _handle(self, message: dict[str, Any]) -> list[Action]:
        event = message.get("event")
        if event == "media":
            return self._media(message)
        if event == "stop":
            return [Close()]
        return []  # dtmf, mark, error: nothing to transcribe

    def _start(self, message: dict[str, Any]) -> list[Action]:
        if self.started:
            raise AdapterError("telnyx: a second start on one stream")
        start = field_of(message, "start", kind=dict)
        media_format = field_of(start, "media_format", kind=dict)
        encoding = field_of(media_format, "encoding")
        if encoding not in DECODERS:
            raise AdapterError(f"telnyx: unsupported media_format.encoding {encoding[:40]!r} (PCMU or PCMA)")
        self.decode = DECODERS[encoding]
        self.rate = int(number(media_format.get("sample_rate", 8000), "media_format.sample_rate"))
        if not 8000 <= self.rate <= 48000:
            raise AdapterError(f"telnyx: media_format.sample_rate {self.rate} is out of range")
        stream_id = message.get("stream_id") or uuid.uuid4().hex
        self.started = True
        return [Open(str(stream_id), {"inbound": "inbound", "outbound": "outbound"})]

    def _media(self, message: dict[str, Any]) -> list[Action]:
        media = field_of(message, "media", kind=dict)
        track = str(media.get("track", "inbound"))
        samples = self.decode(b64(field_of(media, "payload")))
        at = number(media["timestamp"], "media.timestamp") / 1000 if "timestamp" in media else None
        resampler = self.resamplers.setdefault(track, Resampler(self.rate))
        return [Audio(track, resampler(samples), at)]
