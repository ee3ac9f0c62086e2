"""Wires sources, models and outputs into a Pipeline for each CLI mode."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faster_whisper import WhisperModel

from livesum.asr.diarize import voices_for
from livesum.asr.policy import make_transcriber
from livesum.asr.transcriber import load_whisper
from livesum.compute import share_cores
from livesum.config import Settings
from livesum.outputs.console import ConsoleView
from livesum.outputs.files import EventSink, file_sinks, write_notes_trace
from livesum.pipeline import LanguageEngine, Pipeline, RunResult, TranscriberFactory
from livesum.source.file import probe_duration, stream_file


class StartupError(RuntimeError):
    """The run cannot start (a model the engine refuses, an output folder that cannot be written); one line."""


def load_language(settings: Settings) -> tuple[Any, Any] | None:
    """(model, tokenizer) of the configured LM, loaded once and shared by every session; None when off."""
    if not settings.llm.enabled:
        return None
    from livesum.models import load_language_model

    return load_language_model(settings.llm.model, settings.resolved_cache_dir(), settings.llm.device, settings.llm.dtype,
                               settings.llm.decode_weights)


def new_engine(settings: Settings, model: Any, tokenizer: Any) -> LanguageEngine:
    """A StreamingEngine (its own sink cache) on a loaded model; a refusal is a one-line StartupError."""
    from livesum.llm.engine import StreamingEngine
    from livesum.llm.sink_cache import UnsupportedModelError

    try:
        return StreamingEngine(model, tokenizer, settings.llm.engine)
    except (UnsupportedModelError, ValueError) as error:
        raise StartupError(f"language model {settings.llm.model}: {error}") from None


def load_engine(settings: Settings) -> LanguageEngine | None:
    """The StreamingLLM engine on the configured model, or None when the LLM is switched off."""
    loaded = load_language(settings)
    return None if loaded is None else new_engine(settings, *loaded)


@dataclass
class FileModels:
    """Whisper and the LM loaded once for many recordings in a row (`livesum batch`); each recording
    still gets its own transcribers and its own sink cache on them."""

    whisper: WhisperModel
    language: tuple[Any, Any] | None  # (model, tokenizer); None when the LM is off


def load_file_models(settings: Settings) -> FileModels:
    """Both models, blocking (a batch worker loads them once, before its first recording)."""
    share_cores(settings)
    return FileModels(load_whisper(settings.asr, settings.resolved_cache_dir()), load_language(settings))


def transcriber_factory(whisper: WhisperModel, settings: Settings, *, live: bool) -> TranscriberFactory:
    """A new transcriber per track, all on the one shared Whisper model. One-track audio (track None) is
    diarized when `asr.diarize` says so; a named track is one speaker already."""
    voices = voices_for(settings.asr)  # loaded by load_models / load_shared_models beforehand
    return lambda track: make_transcriber(whisper, settings.asr, settings.audio.sample_rate, live=live,
                                          voices=voices if track is None else None)


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


async def load_models(settings: Settings, status: Callable[[str], object] | None = None) -> tuple[WhisperModel, LanguageEngine | None]:
    """The models side by side in worker threads (Whisper, the LM, the diarizer's voice model)."""
    cache = settings.resolved_cache_dir()
    share_cores(settings)  # before Whisper loads: its threads depend on where the LM computes
    with status("loading models (the first run converts them once)") if status else nullcontext():  # type: ignore[attr-defined]
        whisper, engine, _ = await asyncio.gather(
            asyncio.to_thread(load_whisper, settings.asr, cache),
            asyncio.to_thread(load_engine, settings),
            asyncio.to_thread(voices_for, settings.asr),  # the diarizer, cached for transcriber_factory
        )
    return whisper, engine


async def build_pipeline(settings: Settings, out_dir: Path, models: FileModels | None = None) -> Pipeline:
    """Speech recognition first (loaded now, or the models given), then the files (so a model that fails
    to load leaves no empty outputs). The LM goes on loading while the first audio is transcribed (it
    takes seconds and nothing needs it before the first words): the pipeline waits for it before its
    first feed, and a failure seen before the audio starts is raised here, as before."""
    view = ConsoleView() if settings.output.console else None
    engine: LanguageEngine | asyncio.Future | None
    share_cores(settings)
    if models is None:
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
    path: Path, out_dir: Path, settings: Settings, questions: list[str], models: FileModels | None = None,
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
