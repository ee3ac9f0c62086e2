"""`livesum send`: the reference client. Streams a file as a live source would (real-time-sized
frames, paced at `speed` x real time), prints the events, asks questions mid-stream, and returns
when the session's notes arrive."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from livesum.events import Answer, Error, Event, Notes, Segment, Summary
from livesum.server.protocol import Ask, Envelope, Start, Stop
from livesum.source.file import probe_duration, stream_file

RATE = 16000


class SendError(RuntimeError):
    """The stream could not be sent or was refused; one line."""


def with_session(url: str, session: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("session", session)
    return urlunsplit(parts._replace(query=urlencode(query)))


def describe(event: Event) -> str | None:
    """One human line per event worth showing (finals, summaries, answers, errors, notes)."""
    if isinstance(event, Segment):
        if not event.final:
            return None
        minutes, seconds = divmod(int(event.start), 60)
        who = f"{event.speaker}: " if event.speaker else ""
        return f"[{minutes:02d}:{seconds:02d}] {who}{event.text.strip()}"
    if isinstance(event, Summary):
        return f"{'FINAL SUMMARY' if event.final else 'SUMMARY'}: {event.text}"
    if isinstance(event, Answer):
        return f"Q: {event.question}\nA: {event.text}"
    if isinstance(event, Error):
        return f"{'FATAL ' if event.fatal else ''}error ({event.source}): {event.message}"
    if isinstance(event, Notes):
        return f"NOTES: {event.title} ({len(event.key_points)} key points, {len(event.action_items)} action items)"
    return None


async def send_file(
    path: Path,
    url: str,
    *,
    token: str | None = None,
    speed: float = 1.0,
    questions: list[str] | tuple[str, ...] = (),
    frame_seconds: float = 0.1,
    session: str | None = None,
    on_event: Callable[[Envelope], None] | None = None,
) -> list[Envelope]:
    """Stream `path`; return every envelope received. `speed` 0 = as fast as the socket takes it."""
    duration = probe_duration(path) or 0.0
    session = session or uuid.uuid4().hex[:12]
    headers = {"Authorization": f"Bearer {token}"} if token else None
    received: list[Envelope] = []
    ask_at = [duration * (index + 1) / (len(questions) + 1) for index in range(len(questions))]
    try:
        # No pong deadline: a server slowing this sender down (flow control) reads its pings late.
        async with connect(with_session(url, session), additional_headers=headers, max_size=None, open_timeout=30,
                           ping_timeout=None) as socket:
            await socket.send(Start(sample_rate=RATE, encoding="pcm_s16le").model_dump_json())

            async def receive() -> None:
                async for message in socket:
                    envelope = Envelope.model_validate_json(message)
                    received.append(envelope)
                    if on_event is not None:
                        on_event(envelope)
                    if envelope.seq is None and isinstance(envelope.event, Error) and envelope.event.fatal:
                        raise SendError(envelope.event.message)
                    if isinstance(envelope.event, Notes):
                        return

            receiver = asyncio.create_task(receive())
            began, sent, pending = time.monotonic(), 0.0, list(zip(ask_at, questions))
            async for chunk in stream_file(path, RATE, frame_seconds, 16):
                if receiver.done():
                    break
                pcm = (np.clip(chunk.samples, -1, 1) * 32767).astype("<i2").tobytes()
                await socket.send(pcm)
                sent = chunk.end
                while pending and pending[0][0] <= sent:
                    await socket.send(Ask(question=pending.pop(0)[1]).model_dump_json())
                if speed > 0:
                    await asyncio.sleep(max(0.0, began + sent / speed - time.monotonic()))
            for _, question in pending:
                await socket.send(Ask(question=question).model_dump_json())
            if not receiver.done():
                await socket.send(Stop().model_dump_json())
            await receiver
    except InvalidStatus as error:
        reason = error.response.body.decode(errors="replace").strip()
        raise SendError(f"server refused the connection: HTTP {error.response.status_code} {reason}") from None
    except (OSError, TimeoutError) as error:
        raise SendError(f"cannot connect to {url}: {error}") from None
    except ConnectionClosed as error:
        if not any(isinstance(item.event, Notes) for item in received):
            raise SendError(f"connection closed before the notes arrived ({error})") from None
    return received


def printer(as_json: bool) -> Callable[[Envelope], None]:
    def show(envelope: Envelope) -> None:
        if as_json:
            sys.stdout.write(envelope.model_dump_json() + "\n")
            sys.stdout.flush()
            return
        line = describe(envelope.event)
        if line is not None:
            stream = sys.stderr if isinstance(envelope.event, Error) else sys.stdout
            print(line, file=stream, flush=True)

    return show
