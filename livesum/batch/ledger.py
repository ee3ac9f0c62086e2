"""`batch.jsonl`: one row per recording, the truth about what a batch has done.

The file is rewritten whole (a temporary file renamed over it) on every change, so it is never
half-written, whatever stops the driver. A recording counts as done only for the content hash,
settings and questions it was done with: a changed file, profile or question is done again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from livesum.config import Settings

LEDGER_NAME = "batch.jsonl"
HASH_BLOCK = 1 << 20
log = logging.getLogger(__name__)

Status = Literal["running", "done", "failed", "interrupted"]


class BatchRow(BaseModel):
    name: str
    path: str
    status: Status
    audio_seconds: float | None = None
    wall_seconds: float | None = None
    real_time_factor: float | None = None
    error: str | None = None
    questions: list[str] = []
    content_hash: str | None = None  # sha256 of the file
    settings_hash: str
    size: int | None = None  # with mtime_ns: the hash is read again only when either changed
    mtime_ns: int | None = None
    attempts: int = 0  # runs of this recording that a worker began in the last batch (a dead worker's count too)
    worker: str | None = None  # "host pid N" (and the Ray node) of the worker that ran it last
    node: str | None = None
    pid: int | None = None
    transfer: Literal["local", "shared", "object"] | None = None
    updated_at: str | None = None


def settings_hash(settings: Settings) -> str:
    """What decides a recording's outputs: the audio, ASR, LM and output settings (not threads, not
    the console, not where models are cached or how the batch is spread)."""
    data = settings.model_dump(mode="json", include={"audio", "asr", "llm", "output"})
    data["asr"].pop("cpu_threads", None)
    data["llm"].pop("threads", None)
    data["output"].pop("console", None)
    data["output"].pop("progress_every_seconds", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Ledger:
    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / LEDGER_NAME
        self.rows: dict[str, BatchRow] = {}
        if self.path.is_file():
            for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = BatchRow.model_validate_json(line)
                except ValidationError:
                    log.warning("%s line %d is not a batch row; it will be dropped", self.path, number)
                    continue
                self.rows[row.name] = row

    def names_by_path(self) -> dict[str, str]:
        return {row.path: row.name for row in self.rows.values()}

    def known_hash(self, path: Path, size: int, mtime_ns: int) -> str | None:
        """The content hash an earlier run took of this very file (same path, size and mtime)."""
        for row in self.rows.values():
            if row.path == str(path) and row.size == size and row.mtime_ns == mtime_ns and row.content_hash:
                return row.content_hash
        return None

    def is_done(self, name: str, digest: str, settings: str, questions: list[str]) -> bool:
        row = self.rows.get(name)
        return (row is not None and row.status == "done" and row.content_hash == digest
                and row.settings_hash == settings and row.questions == questions)

    def put(self, row: BatchRow) -> None:
        self.rows[row.name] = row.model_copy(update={"updated_at": now()})
        self.save()

    def save(self) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text("".join(row.model_dump_json() + "\n" for row in self.rows.values()), encoding="utf-8")
        os.replace(temporary, self.path)
