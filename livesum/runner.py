"""Wires sources, models (livesum.loading) and outputs into a Pipeline for each CLI mode."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from livesum.asr.diarize import voices_for
from livesum.asr.transcriber import load_whisper
from livesum.config import Settings
from livesum.loading import (
    SharedModels,
    StartupError,
    load_engine,
    new_engine,
    prepare_process,
    transcriber_factory,
)
from livesum.outputs.console import ConsoleView
from livesum.outputs.files import EventSink, file_sinks, write_notes_trace
from livesum.pipeline import LanguageEngine, Pipeline
from livesum.run_stats import RunResult
from livesum.source.file import probe_duration, stream_file


def ensure_writable(out_dir: Path) -> None:
    """Fail in a second, before minutes of model loading, when the outputs cannot be written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".livesum-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise StartupError(f"cannot write to {out_dir}: {error.strerror or error}") from None


def open_sinks(out_dir: Path, settings: Settings) -> list[EventSink]:
    try:
        return file_sinks(out_dir, settings.output.formats)
    except OSError as error:
        raise StartupError(f"cannot write to {out_dir}: {error.strerror or error}") from None


async def build_pipeline(settings: Settings, out_dir: Path, models: SharedModels | None = None) -> Pipeline:
    """Speech recognition first (loaded now, or the models given), then the files (so a model that fails
    to load leaves no empty outputs). The LM goes on loading while the first audio is transcribed (it
    takes seconds and nothing needs it before the first words): the pipeline waits for it before its
    first feed, and a failure seen before the audio starts is raised here, as before."""
    view = ConsoleView() if settings.output.console else None
    engine: LanguageEngine | asyncio.Future | None
    if models is None:  # models given were loaded by load_shared_models, which prepared the process
        prepare_process(settings)
        engine = asyncio.ensure_future(asyncio.to_thread(load_engine, settings))
        with view.console.status("loading models (the first run converts them once)") if view else nullcontext():
            whisper, _ = await asyncio.gather(asyncio.to_thread(load_whisper, settings.asr, settings.resolved_cache_dir()),
                                              asyncio.to_thread(voices_for, settings.asr))
        if engine.done():
            engine = engine.result()  # raises what stopped it (a missing package, a refused setting)
    else:
        whisper, engine = models.whisper, None if models.language is None else new_engine(settings, *models.language)
    sinks = open_sinks(out_dir, settings)
    if view:
        sinks.append(view)
    return Pipeline(settings, transcriber_factory(whisper, settings, live=False), engine, sinks)


def stop_on_signals(pipeline: Pipeline, signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)) -> Callable[[], None]:
    """First Ctrl-C / SIGTERM ends the stream gracefully (notes written); a second one cancels.

    Returns a function that puts the default handlers back.
    """
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    hits = 0

    def on_signal() -> None:
        nonlocal hits
        hits += 1
        if hits == 1:
            pipeline.stop()
        elif main is not None:
            main.cancel()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal)

    def restore() -> None:
        for sig in signals:
            loop.remove_signal_handler(sig)

    return restore


async def run_file(
    path: Path, out_dir: Path, settings: Settings, questions: list[str], models: SharedModels | None = None,
    control: Callable[[Pipeline], Callable[[], None]] = stop_on_signals,
) -> RunResult:
    """One recording into `out_dir`. `models`: already loaded ones (a batch worker's), else loaded now.
    `control` hooks the pipeline up to whatever may stop it (Ctrl-C by default) and returns its undo."""
    audio = settings.audio
    duration = probe_duration(path)  # an unreadable file fails here, before models load
    ensure_writable(out_dir)
    pipeline = await build_pipeline(settings, out_dir, models)
    chunks = stream_file(path, audio.sample_rate, audio.chunk_seconds, audio.queue_chunks)
    restore = control(pipeline)
    try:
        result = await pipeline.run(chunks, duration, questions)
    finally:
        restore()
        write_notes_trace(out_dir, pipeline.minutes.trace)
    if pipeline.engine_failure is not None:  # the transcript is written; the run still fails as a startup would
        raise pipeline.engine_failure
    return result
