"""What the batch tests share: recordings made from the samples, the ledger read back, waiting on a
recording to be mid-way."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from conftest import SAMPLES

LONG_SAMPLE = SAMPLES / "cafe_meeting.flac"  # 124 s: long enough to be stopped or killed half way


def make_recordings(folder: Path) -> Path:
    """Three real recordings (124 s, 25 s, 12 s) and a corrupt one, in a folder with a subfolder."""
    (folder / "calls").mkdir(parents=True)
    (folder / "cafe_meeting.flac").write_bytes(LONG_SAMPLE.read_bytes())
    (folder / "calls" / "librivox.flac").write_bytes((SAMPLES / "librivox.flac").read_bytes())
    subprocess.run(["sox", str(SAMPLES / "librivox.flac"), str(folder / "calls" / "short.wav"), "trim", "0", "12"], check=True)
    (folder / "calls" / "corrupt.mp3").write_bytes(bytes(range(256)) * 64)
    return folder


def rows(out: Path) -> dict[str, dict]:
    path = out / "batch.jsonl"
    if not path.is_file():
        return {}
    return {row["name"]: row for row in map(json.loads, path.read_text().splitlines())}


def wait_until_mid_recording(out: Path, name: str, driver: subprocess.Popen[str], timeout: float = 240) -> dict:
    """The recording's row once it is running and its first final segment is on disk."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"the batch ended before {name} was half way: {driver.communicate()}"
        row = rows(out).get(name)
        events = out / name / "events.jsonl"
        if row and row["status"] == "running" and events.is_file() and '"final":true' in events.read_text():
            return row
        time.sleep(0.2)
    raise AssertionError(f"{name} never got half way")


def act_mid_recording(command: list[str], out: Path, name: str, act: Callable[[subprocess.Popen[str], dict], None],
                      timeout: float = 300) -> tuple[int, str, dict]:
    """Run a `livesum batch` driver, `act(driver, row)` once `name` is half way, wait for the driver to end:
    (exit code, stderr, the row `act` saw)."""
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        running = wait_until_mid_recording(out, name, driver)
        act(driver, running)
        _, stderr = driver.communicate(timeout=timeout)
    finally:
        driver.kill()
    return driver.returncode, stderr, running
