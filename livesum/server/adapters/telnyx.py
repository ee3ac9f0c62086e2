"""Telnyx media streaming (`/telnyx`): connected, start, media, dtmf, mark, error, stop in snake_case.

media.payload is base64 RTP payload in start.media_format.encoding (PCMU or PCMA, 8 kHz mono).
Telnyx does not guarantee frame order, so messages are put back in `sequence_number` order
through a small window; a frame that never comes is skipped once the window is full (50 messages,
or `max_buffered_bytes` of payload held back, whichever comes first).
"""

from __future__ import annotations

import heapq
import itertools
import uuid
from typing import Any

from livesum.server.adapters import Action, Adapter, AdapterError, CallLegAudio, Close, Open, field_of, number
from livesum.server.audio import decode_alaw, decode_mulaw

DECODERS = {"PCMU": decode_mulaw, "PCMA": decode_alaw}
REORDER_WINDOW = 50  # messages held back waiting for a missing one (1 s of 20 ms frames)


class TelnyxAdapter(Adapter):
    name = "telnyx"

    def __init__(self, query: dict[str, str], max_buffered_bytes: int = 4 << 20) -> None:
        super().__init__(query, max_buffered_bytes)
        self.started = False
        self.legs = CallLegAudio("telnyx", DECODERS)
        self.held: list[tuple[int, int, dict[str, Any]]] = []  # (sequence_number, arrival, message)
        self.held_bytes = 0
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
        self.held_bytes += _payload_bytes(message)
        return self._release()

    def _window_full(self) -> bool:
        return len(self.held) > REORDER_WINDOW or self.held_bytes > self.max_buffered_bytes

    def _pop(self) -> dict[str, Any]:
        message = heapq.heappop(self.held)[2]
        self.held_bytes -= _payload_bytes(message)
        return message

    def _release(self) -> list[Action]:
        if not self.started:
            if self._window_full():
                self.held.clear()
                self.held_bytes = 0
                raise AdapterError("telnyx: media without a start")
            return []
        actions: list[Action] = []
        while self.held:
            sequence = self.held[0][0]
            if self.next_seq is None or sequence == self.next_seq or self._window_full() or sequence < self.next_seq:
                message = self._pop()
                if self.next_seq is None or sequence >= self.next_seq:
                    self.next_seq = sequence + 1
                    actions += self._handle(message)
            else:
                break
        return actions

    def flush(self) -> list[Action]:
        actions: list[Action] = []
        while self.held and self.started:
            actions += self._handle(self._pop())
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
        self.legs.configure(field_of(start, "media_format", kind=dict), "media_format", "encoding", "sample_rate")
        stream_id = message.get("stream_id") or uuid.uuid4().hex
        self.started = True
        return [Open(str(stream_id), {"inbound": "inbound", "outbound": "outbound"})]

    def _media(self, message: dict[str, Any]) -> list[Action]:
        return self.legs.audio(message)


def _payload_bytes(message: dict[str, Any]) -> int:
    media = message.get("media")
    payload = media.get("payload") if isinstance(media, dict) else None
    return len(payload) if isinstance(payload, str) else 0
