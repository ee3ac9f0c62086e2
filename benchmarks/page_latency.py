"""Caption latency on the browser page against `livesum mic`: capture of a final's last word to its display.

**Page**: `livesum serve` (a subprocess on loopback) and Debian's chromium driven by Playwright, its
fake microphone fed the recording (a 48 kHz WAV with silence after the speech). The page measures on
its own clock (performance.now()): when each 100 ms frame of 16 kHz audio reached it from the
AudioWorklet, and when a final line was put on the page; a final ending at stream time t was
captured when the frame holding t arrived, less the rest of that frame. That is `data-latency` on
each line of `#finals` (livesum/web/app.js). The server's own figure for the same finals
(Segment.latency: emission minus the arrival of the last frame at the server) is reported beside it.

**`livesum mic`**: the same recording played with paplay into a private PulseAudio null sink whose
monitor is the default source (tests/pulse.py), captured through PortAudio's ALSA 'pulse' device;
its figure is Segment.latency of the finals in events.jsonl (emission minus the capture time of the
segment's last sample, which the terminal shows at once). Both use the same config (default:
configs/cpu.toml, tiny.en and SmolLM2 with the LM on) and only finals shown before the stream was
stopped (finals forced out by the stop are not live captions).

    .venv/bin/python benchmarks/page_latency.py samples/librivox.flac --runs 5 --json /tmp/page_latency.json

A short check: `--runs 1` (one 25 s reading each way, about 2 minutes with model loading).
The machine should be quiet: both paths are real time and share the CPU with nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
from livesum.source.file import probe_duration  # noqa: E402
from serve_load import start_server  # noqa: E402  (a sibling script)
from tests.pulse import play, pulseaudio_server  # noqa: E402

TAIL_SECONDS = 8.0  # silence after the speech: the last segment is finalized by the VAD, not by the stop
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def padded_wav(audio: Path, folder: Path) -> tuple[Path, float]:
    """The recording as a 48 kHz 16-bit WAV with TAIL_SECONDS of silence after it; its speech duration."""
    wav = folder / "speech.wav"
    subprocess.run(["sox", str(audio), "-r", "48000", "-b", "16", "-c", "1", str(wav), "pad", "0", str(TAIL_SECONDS)], check=True)
    return wav, (probe_duration(wav) or 0.0) - TAIL_SECONDS


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"finals": 0, "median_s": None, "p95_s": None, "max_s": None}
    return {"finals": len(values), "median_s": round(float(np.median(values)), 3), "p95_s": round(float(np.percentile(values, 95)), 3),
            "max_s": round(max(values), 3)}


def page_run(wav: Path, duration: float, config: Path, port: int, folder: Path) -> dict:
    """One recording through the page; the finals' latencies on the page's clock and the server's."""
    from playwright.sync_api import sync_playwright

    data_dir = folder / "sessions"
    server = start_server([sys.executable, "-m", "livesum.cli", "serve", "--config", str(config), "--port", str(port),
                           "--data-dir", str(data_dir)])
    arguments = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required"]
    if os.geteuid() == 0:
        arguments.append("--no-sandbox")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=arguments)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("body[data-ready='1']")
            page.click("#record")
            page.wait_for_selector("#state:has-text('Recording session')", timeout=60_000)
            session_id = page.inner_text("#session-id").removeprefix("session ").strip()
            # The fake microphone plays the file from the moment it opened; stop before it loops.
            page.wait_for_timeout((duration + TAIL_SECONDS - 1.0) * 1000)
            lines = page.locator("#finals li")
            shown = [float(value) for value in (lines.nth(i).get_attribute("data-latency") for i in range(lines.count())) if value]
            page.click("#stop")
            page.wait_for_selector(f"#state:has-text('Session {session_id} finished')", timeout=600_000)
            browser.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
    events = [json.loads(line) for line in (data_dir / session_id / "events.jsonl").read_text().splitlines()]
    finals = [event for event in events if event["type"] == "segment" and event["final"]]
    return {"page": shown, "server": [event["latency"] for event in finals[: len(shown)] if event.get("latency") is not None],
            "finals": len(finals)}


def mic_run(wav: Path, config: Path, folder: Path, pulse: dict[str, str]) -> dict:
    """The same recording played into `livesum mic`; Segment.latency of the finals emitted before Ctrl-C."""
    out = folder / "mic"
    command = [sys.executable, "-m", "livesum.cli", "mic", "--device", "pulse", "--config", str(config), "--out", str(out), "--quiet"]
    mic = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, **pulse}, cwd=REPO)
    events_file = out / "events.jsonl"
    try:
        deadline = time.monotonic() + 600
        while not events_file.exists() or '"started"' not in events_file.read_text():
            if mic.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"livesum mic did not start: {mic.stderr.read() if mic.stderr else ''}")
            time.sleep(0.2)
        play(wav, pulse).wait(timeout=600)
        stopped_at = time.time()
        mic.send_signal(signal.SIGINT)
        mic.communicate(timeout=600)
    finally:
        if mic.poll() is None:
            mic.kill()
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    finals = [event for event in events if event["type"] == "segment" and event["final"]]
    return {"mic": [event["latency"] for event in finals if event.get("latency") is not None and event["wall_time"] < stopped_at],
            "finals": len(finals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", type=Path)
    parser.add_argument("--runs", type=int, default=1, help="Recordings each way (alternating page and mic).")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "cpu.toml")
    parser.add_argument("--port", type=int, default=0, help="For `livesum serve`; 0 = a free one.")
    parser.add_argument("--skip-mic", action="store_true", help="Only the page.")
    parser.add_argument("--skip-page", action="store_true", help="Only `livesum mic`.")
    parser.add_argument("--json", type=Path, help="Also write the results (and every latency) here.")
    args = parser.parse_args()
    latencies: dict[str, list[float]] = {"page": [], "server": [], "mic": []}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="page_latency-") as temp:
        folder = Path(temp)
        wav, duration = padded_wav(args.audio, folder)
        with contextlib.nullcontext({}) if args.skip_mic else pulseaudio_server(folder / "pulse") as pulse:
            for run in range(args.runs):
                if not args.skip_page:
                    result = page_run(wav, duration, args.config, args.port or free_port(), folder / f"page-{run}")
                    latencies["page"] += result["page"]
                    latencies["server"] += result["server"]
                    print(f"run {run + 1} page: {json.dumps(summary(result['page']))} (server's own: "
                          f"{json.dumps(summary(result['server']))})", flush=True)
                if not args.skip_mic:
                    result = mic_run(wav, args.config, folder / f"mic-{run}", pulse)
                    latencies["mic"] += result["mic"]
                    print(f"run {run + 1} livesum mic: {json.dumps(summary(result['mic']))}", flush=True)
    report = {
        "audio": str(args.audio), "speech_seconds": round(duration, 1), "runs": args.runs, "config": str(args.config),
        "page_capture_to_display": summary(latencies["page"]),
        "server_arrival_to_emission_same_finals": summary(latencies["server"]),
        "mic_capture_to_emission": summary(latencies["mic"]),
        "cores": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps({**report, "latencies": latencies}, indent=2) + "\n")


if __name__ == "__main__":
    main()
