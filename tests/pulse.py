"""A private PulseAudio server for capture tests: a null sink whose monitor is the default source.

PortAudio reaches it through ALSA's 'pulse' device (libasound2-plugins). Everything lives in a
temporary runtime dir, so the tests neither need nor touch a desktop's sound server; it runs as
root too (CI), because `--system=false` with an explicit runtime dir is allowed for root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SINK = "livesum_test"


def pulse_env(runtime: Path) -> dict[str, str]:
    """What a client (paplay, PortAudio's ALSA pulse plugin) needs to find this server."""
    return {
        "XDG_RUNTIME_DIR": str(runtime),
        "PULSE_RUNTIME_PATH": str(runtime),
        "PULSE_SERVER": f"unix:{runtime / 'native'}",
    }


@contextmanager
def pulseaudio_server(runtime: Path) -> Iterator[dict[str, str]]:
    """Start the server, wait until it answers, yield its client environment, stop it."""
    runtime.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **pulse_env(runtime)}
    command = [
        shutil.which("pulseaudio") or "pulseaudio",
        "--daemonize=no", "--exit-idle-time=-1", "--system=false", "-n", "--disallow-exit",
        "--load=module-native-protocol-unix auth-anonymous=1",
        f"--load=module-null-sink sink_name={SINK} rate=48000 channels=2",
        "--load=module-always-sink",
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pulseaudio did not start: {server.stderr.read() if server.stderr else ''}")
            time.sleep(0.2)
        subprocess.run(["pactl", "set-default-source", f"{SINK}.monitor"], env=env, check=True)
        yield pulse_env(runtime)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def play(path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """paplay into the null sink (what a loudspeaker next to the microphone would do)."""
    return subprocess.Popen(["paplay", "--device", SINK, str(path)], env={**os.environ, **env})
