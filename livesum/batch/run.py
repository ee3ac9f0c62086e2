"""A batch from start to end: plan (which recordings are done already), run (here or on Ray),
record every change in batch.jsonl, show progress over recordings and audio hours, list failures."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from livesum.batch.inputs import Recording, assign_names
from livesum.batch.ledger import BatchRow, Ledger, content_hash, settings_hash
from livesum.batch.worker import Outcome, WorkerInfo
from livesum.config import Settings
from livesum.source.audio import AudioSourceError
from livesum.source.file import probe_duration

HOUR = 3600.0


@dataclass
class Planned:
    """A recording to run: who it is, what it is (hash, size, duration) and how often it was begun."""

    recording: Recording
    digest: str
    size: int
    mtime_ns: int
    duration: float | None
    attempts: int = 0

    @property
    def name(self) -> str:
        assert self.recording.name is not None
        return self.recording.name


@dataclass
class Tally:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    audio_seconds: float = 0.0


class Reporter:
    """Two bars on a terminal (recordings, audio hours); one line per finished recording otherwise."""

    def __init__(self, total: int, total_seconds: float, quiet: bool) -> None:
        self.console = Console(stderr=True)
        self.quiet = quiet
        self.live = not quiet and self.console.is_terminal
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), console=self.console)
        self.recordings: TaskID = self.progress.add_task("recordings", total=total, extra="")
        self.hours: TaskID = self.progress.add_task("audio hours", total=round(total_seconds / HOUR, 2), extra="")
        if self.live:
            self.progress.start()

    def advance(self, seconds: float, line: str | None = None) -> None:
        self.progress.advance(self.recordings, 1)
        self.progress.advance(self.hours, round(seconds / HOUR, 4))
        if line and not self.quiet:
            self.say(line)

    def say(self, line: str) -> None:
        if self.live:
            self.progress.console.print(line, highlight=False)
        elif not self.quiet:
            print(Console(no_color=True).render_str(line).plain, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.live:
            self.progress.stop()


class BatchRun:
    def __init__(self, recordings: list[Recording], out_dir: Path, settings: Settings, *, quiet: bool = False) -> None:
        self.out_dir = out_dir.absolute()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.settings_hash = settings_hash(settings)
        self.ledger = Ledger(self.out_dir)
        self.recordings = assign_names(recordings, self.ledger.names_by_path())
        self.tally = Tally()
        self.quiet = quiet
        self.reporter: Reporter | None = None
        self.running: dict[str, Planned] = {}

    # -- planning ---------------------------------------------------------------------------------

    def plan(self) -> list[Planned]:
        """The recordings still to do; done ones are skipped, unreadable ones are error rows now."""
        todo, skipped_seconds, failed = [], 0.0, []
        for recording in self.recordings:
            assert recording.name is not None
            questions = list(recording.questions)
            try:
                stat = recording.path.stat()
                digest = self.ledger.known_hash(recording.path, stat.st_size, stat.st_mtime_ns) or content_hash(recording.path)
            except OSError as error:
                failed.append((recording, f"{recording.path}: {error.strerror or error}", None, None))
                continue
            if self.ledger.is_done(recording.name, digest, self.settings_hash, questions):
                self.tally.skipped += 1
                skipped_seconds += self.ledger.rows[recording.name].audio_seconds or 0.0
                continue
            try:
                duration = probe_duration(recording.path)
            except AudioSourceError as error:
                failed.append((recording, str(error), digest, stat))
                continue
            todo.append(Planned(recording, digest, stat.st_size, stat.st_mtime_ns, duration))
        total_seconds = skipped_seconds + sum(planned.duration or 0.0 for planned in todo)
        self.reporter = Reporter(len(self.recordings), total_seconds, self.quiet)
        self.reporter.progress.update(self.reporter.recordings, completed=self.tally.skipped)
        self.reporter.progress.update(self.reporter.hours, completed=round(skipped_seconds / HOUR, 4))
        for recording, error, digest, stat in failed:
            row = BatchRow(name=recording.name, path=str(recording.path), status="failed", error=error,
                           questions=list(recording.questions), content_hash=digest, settings_hash=self.settings_hash,
                           size=stat.st_size if stat else None, mtime_ns=stat.st_mtime_ns if stat else None)
            self._record(row, None)
        if self.tally.skipped:
            self.reporter.say(f"skipping {self.tally.skipped} recording(s) done before with these settings")
        return todo

    # -- what the executors report ------------------------------------------------------------------

    def _row(self, planned: Planned, status: str, worker: WorkerInfo | None, transfer: str | None, **values: object) -> BatchRow:
        recording = planned.recording
        return BatchRow(name=planned.name, path=str(recording.path), status=status, questions=list(recording.questions),
                        content_hash=planned.digest, settings_hash=self.settings_hash, size=planned.size, mtime_ns=planned.mtime_ns,
                        attempts=planned.attempts, worker=worker.label() if worker else None, node=worker.node if worker else None,
                        pid=worker.pid if worker else None,
                        transfer=transfer, **values)  # type: ignore[arg-type]

    def started(self, planned: Planned, worker: WorkerInfo, transfer: str) -> None:
        planned.attempts += 1
        self.running[planned.name] = planned
        self.ledger.put(self._row(planned, "running", worker, transfer))

    def finished(self, planned: Planned, outcome: Outcome, worker: WorkerInfo | None, transfer: str | None) -> None:
        self.running.pop(planned.name, None)
        rtf = outcome.wall_seconds / outcome.audio_seconds if outcome.audio_seconds else None
        row = self._row(planned, outcome.status, worker, transfer, audio_seconds=round(outcome.audio_seconds, 3),
                        wall_seconds=round(outcome.wall_seconds, 3), real_time_factor=rtf and round(rtf, 4), error=outcome.error)
        self._record(row, planned.duration)

    def retrying(self, planned: Planned, worker: WorkerInfo | None, why: str) -> None:
        """A worker died under this recording; it goes back in the queue (the row says so until it runs again)."""
        self.running.pop(planned.name, None)
        self.ledger.put(self._row(planned, "interrupted", worker, None, error=f"{why}; queued again"))
        assert self.reporter is not None
        self.reporter.say(f"[yellow]retrying[/yellow] {escape(planned.name)}: {escape(why)} (attempt {planned.attempts} of {self.settings.batch.max_attempts})")

    def abandon_running(self) -> None:
        """Whatever was still running is marked interrupted (done again on the next run)."""
        for planned in list(self.running.values()):
            self.finished(planned, Outcome("interrupted", error="abandoned (second Ctrl-C)"), None, None)

    def _record(self, row: BatchRow, duration: float | None) -> None:
        self.ledger.put(row)
        assert self.reporter is not None
        seconds = row.audio_seconds if row.status == "done" and row.audio_seconds else duration or 0.0
        if row.status == "done":
            self.tally.done += 1
            self.tally.audio_seconds += row.audio_seconds or 0.0
            line = f"[green]done[/green] {escape(row.name)}: {row.audio_seconds:.1f} s of audio in {row.wall_seconds:.1f} s (RTF {row.real_time_factor or 0:.3f}, {escape(row.worker or '')})"
        elif row.status == "failed":
            self.tally.failed.append((row.name, row.error or "failed"))
            line = f"[red]failed[/red] {escape(row.name)}: {escape(row.error or '')}"
        else:
            self.tally.interrupted.append(row.name)
            line = f"[yellow]interrupted[/yellow] {escape(row.name)} after {row.audio_seconds or 0:.1f} s of audio"
        self.reporter.advance(seconds if row.status != "interrupted" else 0.0, line)

    def close(self) -> Tally:
        if self.reporter is not None:
            self.reporter.close()
            tally = self.tally
            summary = f"{tally.done} done, {tally.skipped} skipped, {len(tally.failed)} failed"
            summary += f", {len(tally.interrupted)} interrupted" if tally.interrupted else ""
            print(f"batch: {summary}; {tally.audio_seconds / HOUR:.2f} audio hours transcribed; rows in {self.ledger.path}", file=sys.stderr)
            for name, error in tally.failed:
                print(f"  failed: {name}: {error}", file=sys.stderr)
        return self.tally


class Interrupts:
    """First Ctrl-C (or SIGTERM): `first()`, the batch winds down; second: `second()`, then exit 130 now."""

    def __init__(self, first: Callable[[], None], second: Callable[[], None]) -> None:
        self.count = 0
        self.first, self.second = first, second
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            print("livesum: stopping: the recordings in progress end with notes for what was heard; Ctrl-C again to abandon them",
                  file=sys.stderr, flush=True)
            self.first()
        else:
            self.second()
            os._exit(130)  # model threads may be inside torch; the ledger is already true

    def __enter__(self) -> Interrupts:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
