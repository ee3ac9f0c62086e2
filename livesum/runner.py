"""Wires sources, models and outputs into a Pipeline for each CLI mode."""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from pathlib import Path

from livesum.asr.transcriber import StreamingTranscriber, load_whisper
from livesum.config import Settings
from livesum.outputs.console import ConsoleView
from livesum.outputs.files import EventSink, file_sinks
from livesum.pipeline import LanguageEngine, Pipeline, RunResult
from livesum.source.file import probe_duration, stream_file


def load_engine(settings: Settings) -> LanguageEngine | None:
    """The StreamingLLM engine on the configured model, or None when the LLM is switched off."""
    if not settings.llm.enabled:
        return None
    import torch

    from livesum.llm.engine import StreamingEngine
    from livesum.models import load_language_model

    if settings.llm.threads:
        torch.set_num_threads(settings.llm.threads)
    model, tokenizer = load_language_model(
        settings.llm.model, settings.resolved_cache_dir(), settings.llm.device, settings.llm.dtype
    )
    return StreamingEngine(model, tokenizer, settings.llm.engine)


async def build_pipeline(settings: Settings, out_dir: Path) -> Pipeline:
    """Load both models side by side in worker threads; files are opened only once they loaded."""
    cache = settings.resolved_cache_dir()
    view = ConsoleView() if settings.output.console else None
    with view.console.status("loading models (the first run converts them once)") if view else nullcontext():
        whisper, engine = await asyncio.gather(
            asyncio.to_thread(load_whisper, settings.asr, cache),
            asyncio.to_thread(load_engine, settings),
        )
    transcriber = StreamingTranscriber(whisper, settings.asr, settings.audio.sample_rate)
    sinks: list[EventSink] = file_sinks(out_dir, settings.output.formats)
    if view:
        sinks.append(view)
    return Pipeline(settings, transcriber, engine, sinks)


async def run_file(path: Path, out_dir: Path, settings: Settings, questions: list[str]) -> RunResult:
    audio = settings.audio
    duration = probe_duration(path)  # an unreadable file fails here, before models load
    pipeline = await build_pipeline(settings, out_dir)
    chunks = stream_file(path, audio.sample_rate, audio.chunk_seconds, audio.queue_chunks)
    return await pipeline.run(chunks, duration, questions)
