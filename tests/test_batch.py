"""`livesum batch` without Ray: inputs, names, the ledger, and real runs in this process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from batch_helpers import act_mid_recording, make_recordings, rows
from conftest import CPU_PROFILE as CPU
from conftest import SAMPLES, run_cli
from livesum.batch.inputs import BatchInputError, Recording, assign_names, collect
from livesum.batch.ledger import BatchRow, Ledger, settings_hash
from livesum.config import load_settings

EXTENSIONS = [".wav", ".flac", ".mp3"]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folders_globs_and_files_each_once_with_the_questions(tmp_path: Path) -> None:
    a = touch(tmp_path / "in" / "a.wav")
    b = touch(tmp_path / "in" / "deep" / "b.flac")
    touch(tmp_path / "in" / "notes.txt")
    c = touch(tmp_path / "more" / "c.mp3")
    found = collect([str(tmp_path / "in"), str(tmp_path / "more" / "*.mp3"), str(a)], EXTENSIONS, ["Who?"])
    assert [r.path for r in found] == [a, b, c]
    assert all(r.questions == ("Who?",) for r in found)
    with pytest.raises(BatchInputError, match="matches no file"):
        collect([str(tmp_path / "none" / "*.wav")], EXTENSIONS)


def test_manifests_give_paths_relative_to_themselves_and_per_file_questions(tmp_path: Path) -> None:
    a, b = touch(tmp_path / "a.wav"), touch(tmp_path / "sub" / "b.wav")
    csv_manifest = tmp_path / "list.csv"
    csv_manifest.write_text("path,questions,owner\na.wav,Who pays? | When?,x\nsub/b.wav,,y\n")
    jsonl_manifest = tmp_path / "list.jsonl"
    jsonl_manifest.write_text(json.dumps({"path": str(b), "questions": ["Why?"], "name": "call b"}) + "\n\n")
    from_csv = collect([str(csv_manifest)], EXTENSIONS, ["Anything else?"])
    assert [(r.path, r.questions) for r in from_csv] == [(a, ("Who pays?", "When?", "Anything else?")), (b, ("Anything else?",))]
    (from_jsonl,) = collect([str(jsonl_manifest)], EXTENSIONS)
    assert (from_jsonl.path, from_jsonl.questions, from_jsonl.name) == (b, ("Why?",), "call_b")


@pytest.mark.parametrize(("name", "text", "message"), [
    ("bad.csv", "file,questions\na.wav,\n", "needs a header line with a 'path' column"),
    ("bad.jsonl", '{"path": "a.wav"}\n{"path": \n', "bad.jsonl line 2: not JSON"),
    ("bad.jsonl", '{"path": "a.wav"}\n{"questions": ["q"]}\n', "bad.jsonl line 2: path: Field required"),
])
def test_a_bad_manifest_names_its_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(BatchInputError, match=message):
        collect([str(tmp_path / name)], EXTENSIONS)


def test_names_are_unique_and_stay_what_an_earlier_run_gave(tmp_path: Path) -> None:
    first, second = Recording(tmp_path / "x" / "call.wav"), Recording(tmp_path / "y" / "call.wav")
    named = assign_names([first, second], {})
    assert named[0].name == "call" and named[1].name.startswith("call-") and len(named[1].name) == 13
    # Next run, a third 'call' comes first in the list: the two keep their folders.
    third = Recording(tmp_path / "a" / "call.wav")
    again = assign_names([third, first, second], {str(r.path): r.name for r in named})
    assert [r.name for r in again[1:]] == [named[0].name, named[1].name]
    assert again[0].name not in {named[0].name, named[1].name}


def test_settings_hash_follows_what_changes_the_outputs_only() -> None:
    base = load_settings(Path(CPU))
    assert settings_hash(base) == settings_hash(load_settings(Path(CPU), {"llm": {"threads": 3}, "output": {"console": False}, "batch": {"workers": 4}}))
    assert settings_hash(base) != settings_hash(load_settings(Path(CPU), {"asr": {"beam_size": 1}}))
    assert settings_hash(base) != settings_hash(load_settings(Path(CPU), {"llm": {"enabled": False}}))


def test_ledger_keeps_one_row_per_recording_and_drops_a_broken_line(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.put(BatchRow(name="a", path="/a.wav", status="running", settings_hash="s", content_hash="h"))
    ledger.put(BatchRow(name="a", path="/a.wav", status="done", settings_hash="s", content_hash="h", size=1, mtime_ns=2))
    with (tmp_path / "batch.jsonl").open("a") as handle:
        handle.write('{"name": "half a line\n')
    again = Ledger(tmp_path)
    assert list(again.rows) == ["a"] and again.rows["a"].status == "done"
    assert again.is_done("a", "h", "s", []) and not again.is_done("a", "other", "s", []) and not again.is_done("a", "h", "s", ["Q?"])
    assert again.known_hash(Path("/a.wav"), 1, 2) == "h" and again.known_hash(Path("/a.wav"), 1, 3) is None


@pytest.mark.slow
def test_local_batch_writes_every_recording_then_skips_what_is_done(tmp_path: Path) -> None:
    """Models load once for two recordings with the LM on; the corrupt one is an error row; a second run skips."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "librivox.flac").write_bytes((SAMPLES / "librivox.flac").read_bytes())
    subprocess.run(["sox", str(SAMPLES / "librivox.flac"), str(inputs / "short.wav"), "trim", "0", "12"], check=True)
    (inputs / "corrupt.mp3").write_bytes(bytes(range(256)) * 64)
    out = tmp_path / "notes"
    result = run_cli("batch", str(inputs), "--out", str(out), "-c", CPU)
    assert result.returncode == 1, result.stderr  # one recording failed
    table = rows(out)
    assert {name: row["status"] for name, row in table.items()} == {"corrupt": "failed", "librivox": "done", "short": "done"}
    assert "not a readable audio" in table["corrupt"]["error"]
    for name in ("librivox", "short"):
        assert table[name]["transfer"] == "local"
        assert table[name]["audio_seconds"] > 10 and table[name]["real_time_factor"] > 0
        assert "## Summary" in (out / name / "notes.md").read_text()
        assert (out / name / "transcript.txt").read_text().strip()
    assert table["librivox"]["pid"] == table["short"]["pid"]  # one process, models loaded once
    assert "failed: corrupt:" in result.stderr

    again = run_cli("batch", str(inputs), "--out", str(out), "-c", CPU)
    assert again.returncode == 1
    assert "skipping 2 recording(s)" in again.stderr
    after = rows(out)
    assert {name: after[name]["updated_at"] for name in ("librivox", "short")} == {name: table[name]["updated_at"] for name in ("librivox", "short")}
    assert after["corrupt"]["status"] == "failed"


@pytest.mark.slow
def test_ctrl_c_ends_the_recording_with_notes_and_the_ledger_says_interrupted(tmp_path: Path) -> None:
    inputs = make_recordings(tmp_path / "in")
    out = tmp_path / "notes"
    command = [sys.executable, "-m", "livesum.cli", "batch", str(inputs), "--out", str(out), "-c", CPU, "--no-llm", "-q"]
    code, stderr, _ = act_mid_recording(command, out, "cafe_meeting", lambda driver, row: driver.send_signal(signal.SIGINT))
    assert code == 130, stderr
    table = rows(out)
    assert table["cafe_meeting"]["status"] == "interrupted"
    assert 0 < table["cafe_meeting"]["audio_seconds"] < 124
    assert (out / "cafe_meeting" / "notes.md").is_file()  # what was heard still got its notes
    assert "librivox" not in table or table["librivox"]["status"] != "running"  # nothing began after the Ctrl-C
    assert not Ledger(out).is_done("cafe_meeting", table["cafe_meeting"]["content_hash"], table["cafe_meeting"]["settings_hash"], [])
