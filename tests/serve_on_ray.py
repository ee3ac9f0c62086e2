"""Driver for tests/test_ray.py (run inside the cluster's network namespace): `livesum serve --ray`,
two front-end processes on two session hosts (one per node), real websockets. Prints one JSON line.

- front-end A makes the two hosts (1 CPU each, one session each); B finds them;
- sessions `alpha` and `beta` start on A (native protocol, real speech); they land on the two hosts;
  a third start finds every host full: 1013;
- once both are transcribing, alpha's host process is SIGKILLed: alpha's client gets an error
  event and close 4503; beta's client goes on;
- beta's client drops its connection to A and resumes through B from the last seq it saw, sends
  the rest of the recording and `stop`: the replay and the live events follow on with nothing lost
  or doubled, up to the notes;
- a resume of the dead alpha through B: 4404.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import ray
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from livesum.source.file import decode_file  # noqa: E402

RATE = 16000
FRAME = 3200  # 100 ms of 16 kHz s16le
HOSTS = ("livesum-host-0", "livesum-host-1")


def pcm16(path: Path) -> bytes:
    samples = np.concatenate([chunk.samples for chunk in decode_file(path, RATE, 1.0)])
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def start_frontend(address: str, data_dir: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    command = [sys.executable, "-m", "livesum.cli", "serve", "--ray", address, "--port", "0", "--data-dir", data_dir,
               "-c", str(REPO / "configs" / "cpu.toml"),
               "--set", "scale.hosts=2", "--set", "scale.cpus_per_host=1", "--set", "server.max_sessions=1",
               "--set", "llm.enabled=false", "--set", "output.console=false", "--set", "scale.poll_seconds=2",
               "--set", "server.idle_timeout_seconds=300"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = re.search(r"listening on ws://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if found:
            return process, f"ws://127.0.0.1:{found.group(1)}/v1/stream"
        if process.poll() is not None:
            raise RuntimeError(f"front-end exited {process.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"front-end did not listen:\n{log.read_text()[-3000:]}")


class Client:
    """One websocket to a front-end: every envelope received, and how it closed."""

    def __init__(self, url: str, session: str) -> None:
        self.url = f"{url}?session={session}"
        self.envelopes: list[dict] = []
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self.socket = None
        self.reader: asyncio.Task[None] | None = None

    async def open(self, first: dict) -> None:
        self.socket = await connect(self.url, max_size=None, ping_timeout=None, open_timeout=30)
        await self.socket.send(json.dumps(first))
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.socket is not None
        try:
            async for message in self.socket:
                self.envelopes.append(json.loads(message))
        except ConnectionClosed:
            pass
        self.close_code = self.socket.close_code
        self.closed_at = time.monotonic()

    async def send_audio(self, pcm: bytes) -> None:
        assert self.socket is not None
        for offset in range(0, len(pcm), FRAME):
            await self.socket.send(pcm[offset:offset + FRAME])

    async def wait_for(self, predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}: waited {timeout:g} s; got {[e['event']['type'] for e in self.envelopes][-20:]}")
            await asyncio.sleep(0.1)

    def transcribing(self) -> bool:
        return any(e["event"]["type"] == "segment" for e in self.envelopes)

    def finals(self) -> list[str]:
        return [e["event"]["text"] for e in self.envelopes if e["event"]["type"] == "segment" and e["event"].get("final")]

    def last_seq(self) -> int:
        return max((e["seq"] for e in self.envelopes if e["seq"] is not None), default=0)

    @property
    def secret(self) -> str:
        return next(e["resume_secret"] for e in self.envelopes if e.get("resume_secret"))


def host_of(session: str) -> str:
    for name in HOSTS:
        if ray.get(ray.get_actor(name, namespace="livesum").has.remote(session)):
            return name
    raise AssertionError(f"no host has {session}")


async def scenario(address: str, data_dir: str, logs: Path) -> dict:
    report: dict = {}
    front_a, url_a = start_frontend(address, data_dir, logs / "frontend-a.log")
    front_b = None
    try:
        # A made both hosts; both must have loaded their models before placement means anything.
        hosts = [ray.get_actor(name, namespace="livesum") for name in HOSTS]
        loads = ray.get([host.load.remote() for host in hosts], timeout=300)
        report["host_nodes"] = [load.node for load in loads]
        front_b, url_b = start_frontend(address, data_dir, logs / "frontend-b.log")

        speech = pcm16(REPO / "samples" / "librivox.flac")
        half = (len(speech) // 2) // FRAME * FRAME
        start = {"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le"}
        alpha, beta = Client(url_a, "alpha"), Client(url_a, "beta")
        await alpha.open(start)
        await alpha.wait_for(lambda c: c.envelopes or c.close_code is not None, 60)
        await beta.open(start)
        await beta.wait_for(lambda c: c.envelopes or c.close_code is not None, 60)
        report["placed"] = {name: host_of(name) for name in ("alpha", "beta")}

        full = Client(url_a, "gamma")  # one session per host: both are taken
        await full.open(start)
        await full.wait_for(lambda c: c.close_code is not None, 60)
        report["full_close"] = full.close_code

        await asyncio.gather(alpha.send_audio(speech[:half]), beta.send_audio(speech[:half]))
        await alpha.wait_for(Client.transcribing, 300)
        await beta.wait_for(Client.transcribing, 300)

        doomed_pid = ray.get(ray.get_actor(report["placed"]["alpha"], namespace="livesum").load.remote()).pid
        killed_at = time.monotonic()
        os.kill(doomed_pid, signal.SIGKILL)
        await alpha.wait_for(lambda c: c.close_code is not None, 60)
        report["alpha_close"] = alpha.close_code
        report["alpha_close_after"] = alpha.closed_at - killed_at  # type: ignore[operator]
        report["alpha_last"] = alpha.envelopes[-1]
        report["alpha_events_before_death"] = alpha.last_seq()

        # beta: its connection to A drops; its client resumes through B from the last seq it saw.
        await asyncio.sleep(1.0)
        seen = beta.last_seq()
        first_part = [e for e in beta.envelopes if e["seq"] is not None]
        assert beta.socket is not None
        await beta.socket.close()
        await beta.reader  # type: ignore[misc]
        report["beta_errors_on_a"] = [e["event"] for e in beta.envelopes if e["event"]["type"] == "error"]
        resumed = Client(url_b, "beta")
        await resumed.open({"type": "resume", "last_seq": seen, "secret": beta.secret})
        await resumed.send_audio(speech[half:])
        await resumed.socket.send(json.dumps({"type": "stop"}))  # type: ignore[union-attr]
        await resumed.wait_for(lambda c: c.close_code is not None, 240)
        report["beta_seen_on_a"] = seen
        report["beta_seqs_on_a"] = [e["seq"] for e in first_part]
        report["beta_seqs_on_b"] = [e["seq"] for e in resumed.envelopes if e["seq"] is not None]
        report["beta_types_on_b"] = [e["event"]["type"] for e in resumed.envelopes]
        report["beta_close"] = resumed.close_code
        report["beta_text"] = " ".join(beta.finals() + resumed.finals())

        ghost = Client(url_b, "alpha")  # the dead host's session is nowhere
        await ghost.open({"type": "resume", "last_seq": 0, "secret": "x"})
        await ghost.wait_for(lambda c: c.close_code is not None, 60)
        report["alpha_resume_close"] = ghost.close_code
    finally:
        for process in (front_a, front_b):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        report["frontend_exits"] = [process.wait(timeout=60) if process is not None else None for process in (front_a, front_b)]
        for name in ray.util.list_named_actors():  # detached: they outlive the front-ends; the next tests need the CPUs
            if name.startswith("livesum-host-"):
                ray.kill(ray.get_actor(name, namespace="livesum"))
    return report


def main(address: str, data_dir: str, logs: str) -> None:
    ray.init(address=address, namespace="livesum", log_to_driver=False, logging_level="ERROR")
    report = asyncio.run(scenario(address, data_dir, Path(logs)))
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
