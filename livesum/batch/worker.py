"""The work of one batch worker: load the models once, then run recordings one at a time through
`livesum.runner.run_file`, the same path as `livesum file`.

A worker reads a recording from its path and writes its outputs into its folder when it shares the
driver's storage (`shared`, and in-process `local`), or gets the recording's bytes and hands the
output files back when it does not (`object`: Ray's object store carries both). The class is plain
Python: `local.py` uses it in this process, `cluster.py` makes it a Ray actor.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from livesum.compute import SHARE
from livesum.config import Settings
from livesum.loading import StartupError, load_shared_models
from livesum.models import ModelNotInstalled
from livesum.pipeline import Pipeline
from livesum.runner import run_file
from livesum.source.audio import AudioSourceError

OUTPUT_FILES = ("transcript.txt", "transcript.srt", "transcript.vtt", "events.jsonl", "notes.md")
PROBE_PREFIX = ".livesum-probe-"


@dataclass
class Job:
    name: str
    questions: list[str]
    path: str | None  # where the worker reads the recording; None = its bytes come with the job
    suffix: str = ""  # the recording's ending, for the temporary copy of an `object` job
    out_dir: str | None = None  # where the worker writes the outputs; None = hand them back


@dataclass
class Outcome:
    status: str  # done, failed or interrupted
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    error: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # the outputs of an `object` job


@dataclass(frozen=True)
class WorkerInfo:
    host: str
    pid: int
    node: str | None  # the Ray node id; None in this process
    shares_storage: bool  # sees the driver's --out folder and the inputs (see `RecordingWorker.describe`)

    def label(self) -> str:
        return f"{self.host} pid {self.pid}" + (f" node {self.node[:8]}" if self.node else "")


@dataclass(frozen=True)
class StorageProbe:
    """A file the driver wrote into --out, and the inputs with their sizes: a worker that reads the
    same token there and finds every input at its size shares the driver's storage."""

    probe: str
    token: str
    inputs: list[tuple[str, int]]

    def seen(self) -> bool:
        try:
            if Path(self.probe).read_text(encoding="utf-8") != self.token:
                return False
            return all(os.path.getsize(path) == size for path, size in self.inputs)
        except OSError:
            return False


def clear_outputs(out_dir: Path) -> None:
    """An earlier attempt's files go, so a folder never mixes two runs."""
    for name in OUTPUT_FILES:
        (out_dir / name).unlink(missing_ok=True)


def write_outputs(out_dir: Path, files: dict[str, bytes]) -> None:
    """The files an `object` worker handed back, each renamed into place whole."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_outputs(out_dir)
    for name, data in files.items():
        if name not in OUTPUT_FILES:
            continue
        temporary = out_dir / f".{name}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, out_dir / name)


def ray_node_id() -> str | None:
    try:
        import ray
    except ImportError:
        return None
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


class RecordingWorker:
    def __init__(self, settings: Settings, threads: int | None = None) -> None:
        """`threads`: the CPUs a Ray worker reserved; Whisper and the LM share them as `livesum file` shares
        the machine's (livesum.compute), not each on all of them: two pools on the same cores, busy at
        once, stall each other at every barrier (benchmarks/core_share.py; docs/scale.md for the batch)."""
        if threads:
            SHARE.reserve(threads)
        self.settings = settings.model_copy(update={"output": settings.output.model_copy(update={"console": False})})
        self.models = load_shared_models(self.settings)
        self._lock = threading.Lock()
        self._stop: Callable[[], None] | None = None
        self._stopping = False

    def describe(self, probe: StorageProbe | None = None) -> WorkerInfo:
        """Who and where this worker is; answered once the models are loaded."""
        return WorkerInfo(socket.gethostname(), os.getpid(), ray_node_id(), probe.seen() if probe else False)

    def stop(self) -> None:
        """End the recording in progress as a Ctrl-C ends `livesum file` (notes for what was heard)
        and take no more; callable from another thread (a Ray actor runs it beside `process`)."""
        with self._lock:
            self._stopping = True
            stop = self._stop
        if stop is not None:
            stop()

    def _control(self, pipeline: Pipeline) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        with self._lock:
            self._stop = lambda: loop.call_soon_threadsafe(pipeline.stop)
            stopping = self._stopping
        if stopping:
            pipeline.stop()

        def release() -> None:
            with self._lock:
                self._stop = None

        return release

    def process(self, job: Job, audio: bytes | None = None) -> Outcome:
        """One recording; its own failures (corrupt, empty, a broken decode) are an Outcome, never raised."""
        with tempfile.TemporaryDirectory(prefix="livesum-batch-") as scratch:
            if audio is not None:
                source = Path(scratch) / f"recording{job.suffix}"
                source.write_bytes(audio)
            else:
                assert job.path is not None, "a job without bytes needs a path"
                source = Path(job.path)
            out_dir = Path(job.out_dir) if job.out_dir else Path(scratch) / "out"
            clear_outputs(out_dir)
            outcome = self._run(source, out_dir, job.questions)
            if job.out_dir is None and out_dir.is_dir():
                outcome.files = {name: (out_dir / name).read_bytes() for name in OUTPUT_FILES if (out_dir / name).is_file()}
        return outcome

    def _run(self, source: Path, out_dir: Path, questions: list[str]) -> Outcome:
        if self._stopping:
            return Outcome("interrupted", error="stopped before it began")
        try:
            result = asyncio.run(run_file(source, out_dir, self.settings, questions, self.models, control=self._control))
        except (AudioSourceError, StartupError, ModelNotInstalled) as error:
            return Outcome("failed", error=str(error))
        except Exception as error:  # anything else is this recording's failure, not the batch's
            return Outcome("failed", error=f"{type(error).__name__}: {error}")
        status = "failed" if result.fatal_error else "interrupted" if result.interrupted else "done"
        return Outcome(status, result.audio_seconds, result.wall_seconds, result.fatal_error)
