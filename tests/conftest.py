"""Shared fixtures: real audio made on the fly, the repo's samples, the CLI as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from livesum.config import load_settings

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
SPEECH_SAMPLE = SAMPLES / "librivox.flac"
SPEECH_REFERENCE = SAMPLES / "librivox.txt"
# The small models (Whisper tiny.en, SmolLM2-135M): for tests of behaviour that any model shows. The
# default model's own checks are tests/test_meeting.py's; on a CPU without bfloat16 it is float32 and
# each CLI run of it cost CI one to two and a half minutes.
CPU_PROFILE = str(REPO / "configs" / "cpu.toml")


def run_cli(*args: str, timeout: float = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`livesum ...` in a fresh interpreter, as a user runs it."""
    command = [sys.executable, "-m", "livesum.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The CLI's stderr when it fails as it promises: one `livesum: error:` line, no traceback."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("livesum: error: ")
    return lines[0]


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """The converted-model cache the CLI uses too (settings' cache_dir, e.g. LIVESUM_CACHE_DIR)."""
    return load_settings().resolved_cache_dir()


@pytest.fixture
def tone_wav(tmp_path: Path) -> Path:
    """Two seconds of a 440 Hz tone at 44.1 kHz stereo: exercises resampling and downmixing."""
    import av

    rate, seconds = 44100, 2.0
    t = np.arange(int(rate * seconds)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    interleaved = np.stack([wave, wave], axis=1)
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(interleaved.reshape(1, -1), format="flt", layout="stereo")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
