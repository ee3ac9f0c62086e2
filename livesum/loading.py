"""The models, loaded once per process and shared: Whisper, the LM (and a sink-cache engine per stream on
it), the diarizer's voice model; and the process settings that must come before them (cores, allocator).
The CLI runs (runner.py, live.py), the server and the scale-out workers all load through here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from faster_whisper import WhisperModel

from livesum.asr.diarize import voices_for
from livesum.asr.policy import make_transcriber
from livesum.asr.transcriber import load_whisper
from livesum.compute import share_cores
from livesum.config import Settings
from livesum.memory import tune_allocator
from livesum.pipeline import LanguageEngine, TranscriberFactory


class StartupError(RuntimeError):
    """The run cannot start (a model the engine refuses, an output folder that cannot be written); one line."""


def prepare_process(settings: Settings) -> None:
    """Process-wide settings, before the models load: the allocator (before the model threads first
    allocate) and the cores the LM and Whisper share (Whisper's pool size follows where the LM computes)."""
    tune_allocator(settings.memory)
    share_cores(settings)


def load_language(settings: Settings) -> tuple[Any, Any] | None:
    """(model, tokenizer) of the configured LM, loaded once and shared by every session; None when off."""
    if not settings.llm.enabled:
        return None
    from livesum.models import load_language_model

    return load_language_model(settings.llm.model, settings.resolved_cache_dir(), settings.llm.device, settings.llm.dtype,
                               settings.llm.decode_weights, settings.llm.prefill_weights)


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
class SharedModels:
    """The models one process loads once and shares: a batch worker's recordings, a session host's or
    the server's sessions. Each recording or session still gets its own transcribers and sink cache."""

    whisper: WhisperModel
    language: tuple[Any, Any] | None = None  # (model, tokenizer); None when the LM is off


def load_shared_models(settings: Settings) -> SharedModels:
    """Whisper, the LM and the diarizer's voice model, blocking (call from a thread, once per process)."""
    prepare_process(settings)  # before Whisper loads: its threads depend on where the LM computes
    whisper = load_whisper(settings.asr, settings.resolved_cache_dir())
    voices_for(settings.asr)  # cached for transcriber_factory
    return SharedModels(whisper, load_language(settings))


def transcriber_factory(whisper: WhisperModel, settings: Settings, *, live: bool) -> TranscriberFactory:
    """A new transcriber per track, all on the one shared Whisper model. One-track audio (track None) is
    diarized when `asr.diarize` says so; a named track is one speaker already."""
    voices = voices_for(settings.asr)  # loaded (and cached) by load_models / load_shared_models beforehand
    return lambda track: make_transcriber(whisper, settings.asr, settings.audio.sample_rate, live=live,
                                          voices=voices if track is None else None)


async def load_models(settings: Settings, status: Callable[[str], object] | None = None) -> tuple[WhisperModel, LanguageEngine | None]:
    """The models side by side in worker threads (Whisper, the LM, the diarizer's voice model)."""
    cache = settings.resolved_cache_dir()
    prepare_process(settings)
    with status("loading models (the first run converts them once)") if status else nullcontext():  # type: ignore[attr-defined]
        whisper, engine, _ = await asyncio.gather(
            asyncio.to_thread(load_whisper, settings.asr, cache),
            asyncio.to_thread(load_engine, settings),
            asyncio.to_thread(voices_for, settings.asr),  # the diarizer, cached for transcriber_factory
        )
    return whisper, engine
