"""The recordings of a batch: folders (recursively), globs, single files and manifests.

A manifest is a CSV (a header with `path`, optional `questions` separated by `|` and `name`) or a
JSONL file (objects with `path`, optional `questions` as a list or one string, and `name`);
relative paths are relative to the manifest. Every recording gets a folder name under --out that
stays the same across runs (the ledger remembers it), so a second run finds what the first did.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

MANIFEST_SUFFIXES = (".csv", ".jsonl")
QUESTION_SEPARATOR = "|"
GLOB_CHARACTERS = re.compile(r"[*?\[]")


class BatchInputError(ValueError):
    """An input that names nothing or a manifest that cannot be read; one line, naming the file and line."""


@dataclass(frozen=True)
class Recording:
    path: Path  # absolute
    questions: tuple[str, ...] = ()
    name: str | None = None  # the output folder under --out; set by `assign_names`


class ManifestEntry(BaseModel):
    """One manifest line; other columns are allowed (a spreadsheet has its own) and ignored."""

    model_config = ConfigDict(extra="ignore")

    path: str
    questions: list[str] = []
    name: str | None = None

    @field_validator("questions", mode="before")
    @classmethod
    def split_questions(cls, value: object) -> object:
        if value is None:
            return []
        if isinstance(value, str):
            return [part.strip() for part in value.split(QUESTION_SEPARATOR) if part.strip()]
        return value

    @field_validator("path")
    @classmethod
    def path_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("path is empty")
        return value.strip()


def read_manifest(manifest: Path) -> list[Recording]:
    """The recordings a CSV or JSONL manifest lists, in its order."""
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise BatchInputError(f"{manifest}: cannot read the manifest ({error})") from None
    rows: list[tuple[int, object]] = []
    if manifest.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise BatchInputError(f"{manifest}: a CSV manifest needs a header line with a 'path' column")
        rows = [(reader.line_num, dict(row)) for row in reader]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise BatchInputError(f"{manifest} line {number}: not JSON ({error.msg})") from None
    recordings = []
    for number, row in rows:
        try:
            entry = ManifestEntry.model_validate(row)
        except ValidationError as error:
            problem = "; ".join(f"{'.'.join(map(str, item['loc'])) or 'line'}: {item['msg']}" for item in error.errors())
            raise BatchInputError(f"{manifest} line {number}: {problem}") from None
        path = Path(entry.path).expanduser()
        path = path if path.is_absolute() else manifest.parent / path
        recordings.append(Recording(path.absolute(), tuple(entry.questions), entry.name and safe_name(entry.name)))
    return recordings


def _folder(folder: Path, extensions: set[str]) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in extensions)


def collect(inputs: Iterable[str], extensions: Iterable[str], questions: Iterable[str] = ()) -> list[Recording]:
    """Every recording the inputs name, each once (the first mention wins), with `questions` added to
    each one's own. A missing file named on its own stays in the list: it becomes an error row."""
    wanted = {suffix.lower() if suffix.startswith(".") else "." + suffix.lower() for suffix in extensions}
    found: list[Recording] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found += [Recording(file.absolute()) for file in _folder(path, wanted)]
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            found += read_manifest(path)
        elif path.exists() or not GLOB_CHARACTERS.search(item):
            found.append(Recording(path.absolute()))
        else:
            matches = sorted(Path(match) for match in glob.glob(str(path), recursive=True))
            if not matches:
                raise BatchInputError(f"{item}: matches no file")
            for match in matches:
                found += [Recording(file.absolute()) for file in _folder(match, wanted)] if match.is_dir() else [Recording(match.absolute())]
    extra = tuple(question.strip() for question in questions if question.strip())
    unique: dict[Path, Recording] = {}
    for recording in found:
        if recording.path not in unique:
            unique[recording.path] = Recording(recording.path, recording.questions + extra, recording.name)
    if not unique:
        raise BatchInputError("no recordings found in " + ", ".join(inputs))
    return list(unique.values())


def safe_name(raw: str) -> str:
    """A folder name: odd characters become '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", raw.strip()).strip(".")
    return cleaned[:120] or "recording"


def assign_names(recordings: list[Recording], known: dict[str, str]) -> list[Recording]:
    """Give each recording its output folder name: the one it had in an earlier run (`known`: path ->
    name) or the manifest's first, then the file name; a name already taken gets a short hash of the path."""
    taken: set[str] = set()
    names: list[str | None] = [None] * len(recordings)

    def take(index: int, name: str) -> None:
        if name in taken:
            name = f"{name}-{hashlib.sha1(str(recordings[index].path).encode()).hexdigest()[:8]}"
        taken.add(name)
        names[index] = name

    for index, recording in enumerate(recordings):
        fixed = known.get(str(recording.path)) or recording.name
        if fixed:
            take(index, fixed)
    for index, recording in enumerate(recordings):
        if names[index] is None:
            take(index, safe_name(recording.path.stem))
    return [Recording(recording.path, recording.questions, name) for recording, name in zip(recordings, names)]
