"""Shared fixtures: real audio made on the fly, the repo's samples, the CLI as a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
SPEECH_SAMPLE = SAMPLES / "librivox.flac"
SPEECH_REFERENCE = SAMPLES / "librivox.txt"


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`livesum ...` in a fresh interpreter, as a user runs it."""
    command = [sys.executable, "-m", "livesum.cli", *args]
    environment = {**os.environ, **(env or {})}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=environment)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One converted-model cache for the whole session (LIVESUM_CACHE_DIR, else the user's)."""
    configured = os.environ.get("LIVESUM_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "livesum"


def synthesize(text: str, out: Path, voice: str = "en-us") -> Path:
    """Real speech audio from espeak-ng, converted to 16 kHz mono 16-bit with sox."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.fail("espeak-ng and sox are needed (apt-get install espeak-ng sox)")
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True)
    raw.unlink()
    return out


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
