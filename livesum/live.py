"""`livesum mic`: the microphone, the live pipeline, the live view and questions typed on stdin.

Order matters for the user: the device and the output folder are checked first (a second), the
models load next (seconds to a minute), then capture starts. SIGINT/SIGTERM stop the pipeline
gracefully, so what was captured is transcribed and the notes are written.
"""

from __future__ import annotations

import asyncio
import os
import sys
import termios
import threading
import tty
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from livesum.config import Settings
from livesum.loading import load_models, transcriber_factory
from livesum.outputs.files import EventSink
from livesum.outputs.live_view import LiveView, PlainLiveView
from livesum.pipeline import Pipeline
from livesum.run_stats import RunResult
from livesum.runner import ensure_writable, open_sinks, stop_on_signals
from livesum.source.mic import MicSource

ERASE = {"\x7f", "\b"}


def default_out_dir(now: datetime | None = None) -> Path:
    return Path("notes") / (now or datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")


def read_pipe_lines(loop: asyncio.AbstractEventLoop, on_line: Callable[[str], None]) -> None:
    """Questions from a pipe or file, line by line, in a daemon thread (stdin reads block)."""

    def reader() -> None:
        for line in sys.stdin:
            try:
                loop.call_soon_threadsafe(on_line, line)
            except RuntimeError:  # the loop has closed: the run is over
                return

    threading.Thread(target=reader, name="livesum-stdin", daemon=True).start()


def read_tty_keys(loop: asyncio.AbstractEventLoop, view: LiveView, on_line: Callable[[str], None]) -> Callable[[], None]:
    """Keys typed on a TTY build the question line shown under the view; Enter asks it.

    The terminal is put in cbreak mode (no echo, so the live redraw is not garbled); the
    returned function puts it back.
    """
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    typed: list[str] = []

    def on_readable() -> None:
        data = os.read(fd, 1024).decode(errors="replace")
        for key in data:
            if key in "\r\n":
                line, typed[:] = "".join(typed), []
                on_line(line)
            elif key in ERASE:
                del typed[-1:]
            elif key.isprintable():
                typed.append(key)
        view.set_prompt("".join(typed))

    loop.add_reader(fd, on_readable)

    def restore() -> None:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    return restore


async def run_mic(out_dir: Path, settings: Settings, *, interactive: bool) -> RunResult:
    """Capture until SIGINT/SIGTERM or the device goes away; `interactive` = the rich Live view."""
    mic = MicSource(settings.capture, settings.audio.sample_rate)
    mic.open()  # no device, no match, a rate it refuses: one line, before the models load
    try:
        ensure_writable(out_dir)
        whisper, engine = await load_models(settings)
        sinks: list[EventSink] = open_sinks(out_dir, settings)
    except BaseException:
        mic.close()
        raise
    view: LiveView | PlainLiveView = LiveView() if interactive else PlainLiveView()
    sinks.append(view)
    pipeline = Pipeline(settings, transcriber_factory(whisper, settings, live=True), engine, sinks, live=True)
    mic.on_dropped = pipeline.report_dropped
    loop = asyncio.get_running_loop()
    asking: set[asyncio.Task[object]] = set()

    def on_line(line: str) -> None:
        if not line.strip():
            return
        task = loop.create_task(pipeline.ask(line))
        asking.add(task)
        task.add_done_callback(asking.discard)

    restore_terminal: Callable[[], None] | None = None
    if isinstance(view, LiveView) and sys.stdin.isatty():
        restore_terminal = read_tty_keys(loop, view, on_line)
    else:
        read_pipe_lines(loop, on_line)
    restore_signals = stop_on_signals(pipeline)
    try:
        return await pipeline.run(mic.chunks())
    finally:
        restore_signals()
        if restore_terminal is not None:
            restore_terminal()
        mic.close()
