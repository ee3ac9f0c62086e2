"""`serve --ray`'s front-end (livesum/server/ray_sessions.py) without a cluster: two front-ends in this
process, real websockets, real SessionHosts (fast profile, LM off) behind a stand-in for Ray's named
actors whose `kill` fails every pending and later call with Ray's own ActorDiedError, as a dead actor
process does. The same paths on a real two-node cluster: tests/test_ray.py (serve_on_ray.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import REPO, SAMPLES
from livesum.config import Settings, load_settings
from livesum.loading import SharedModels, load_shared_models
from livesum.source.file import decode_file

ray = pytest.importorskip("ray", reason="livesum[ray] is not installed")

from livesum.server.ray_sessions import HostPool, RayLivesumServer  # noqa: E402

FRAME = 3200


class FakeHandle:
    """An actor handle: `handle.method.remote(...)` is awaitable; after `kill` every call, pending or new,
    raises ActorDiedError and the host's sessions stop (the process is gone)."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.dead = False
        self._death: asyncio.Future[None] | None = None

    def __getattr__(self, method: str) -> Any:
        return SimpleNamespace(remote=lambda *args, **kwargs: self._call(method, args, kwargs))

    async def _call(self, method: str, args: tuple, kwargs: dict) -> Any:
        if self._death is None:
            self._death = asyncio.get_running_loop().create_future()
        if self.dead:
            raise ray.exceptions.ActorDiedError()
        work = asyncio.ensure_future(getattr(self.host, method)(*args, **kwargs))
        await asyncio.wait([work, self._death], return_when=asyncio.FIRST_COMPLETED)
        if self.dead:
            work.cancel()
            raise ray.exceptions.ActorDiedError()
        return work.result()

    def kill(self) -> None:
        self.dead = True
        if self._death is not None and not self._death.done():
            self._death.set_result(None)
        for session in self.host.sessions.values():
            session.task.cancel()


class FakeRay:
    """The part of the `ray` module HostPool uses; named actors in one namespace, get-or-create."""

    exceptions = ray.exceptions

    def __init__(self, models: SharedModels) -> None:
        self.models = models
        self.actors: dict[str, FakeHandle] = {}
        self.reserved: dict[str, int | None] = {}  # the CPUs each host was told it has (its share is Ray's reservation)
        self.util = SimpleNamespace(list_named_actors=lambda all_namespaces=False: [
            {"name": name, "namespace": "livesum"} for name, handle in self.actors.items() if not handle.dead])

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 2.0}

    def remote(self, cls: type) -> Any:
        def options(name: str, **_: Any) -> Any:
            def create(settings: Settings, cpus: int | None = None) -> FakeHandle:
                # In one test process the core share stays the process's: `cpus` is recorded, not applied.
                if name not in self.actors or self.actors[name].dead:
                    self.actors[name] = FakeHandle(cls(settings, models=self.models))
                    self.reserved[name] = cpus
                return self.actors[name]
            return SimpleNamespace(remote=create)
        return SimpleNamespace(options=options)

    def shutdown(self) -> None:
        pass


@pytest.fixture(scope="module")
def models() -> SharedModels:
    return SharedModels(load_shared_models(load_settings(REPO / "configs" / "cpu.toml", {"llm": {"enabled": False}})).whisper, None)


def front_settings(data_dir: Path) -> Settings:
    return load_settings(REPO / "configs" / "cpu.toml", {
        "llm": {"enabled": False}, "output": {"console": False},
        "server": {"port": 0, "data_dir": str(data_dir), "max_sessions": 1, "resume_grace_seconds": 30, "idle_timeout_seconds": 300},
        "scale": {"hosts": 2, "cpus_per_host": 1, "poll_seconds": 1, "load_cache_seconds": 0},
    }, environ={})


async def front_end(fake: FakeRay, settings: Settings) -> tuple[RayLivesumServer, asyncio.Event, asyncio.Task[None]]:
    pool = HostPool(fake, settings)
    assert await pool.start() == 2
    assert set(fake.reserved.values()) == {int(settings.scale.cpus_per_host)}  # each host shares out what Ray reserved
    server = RayLivesumServer(settings, pool)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(server.serve(stop, lambda _: ready.set()))
    await asyncio.wait_for(ready.wait(), 30)
    return server, stop, task


class Client:
    def __init__(self, server: RayLivesumServer, session: str) -> None:
        self.url = f"ws://127.0.0.1:{server.port}/v1/stream?session={session}"
        self.envelopes: list[dict] = []
        self.code: int | None = None

    async def open(self, first: dict) -> Client:
        self.socket = await connect(self.url, max_size=None, ping_timeout=None)
        await self.socket.send(json.dumps(first))
        self.reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for message in self.socket:
                self.envelopes.append(json.loads(message))
        except ConnectionClosed:
            pass
        self.code = self.socket.close_code

    async def until(self, predicate: Any, timeout: float = 120) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            seen = [(e["seq"], e["event"]["type"], e["event"].get("state")) for e in self.envelopes]
            raise AssertionError(f"{self.url}: nothing after {timeout:g} s; closed {self.code}; got {seen[-12:]}") from None

    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.envelopes if e["seq"] is not None]

    def finals(self) -> list[str]:
        return [e["event"]["text"] for e in self.envelopes if e["event"]["type"] == "segment" and e["event"].get("final")]

    @property
    def secret(self) -> str:
        return next(e["resume_secret"] for e in self.envelopes if e.get("resume_secret"))


START = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le"}


@pytest.mark.slow
async def test_two_front_ends_share_the_hosts_take_over_a_session_and_a_dead_host_closes_4503(
        tmp_path: Path, models: SharedModels) -> None:
    samples = np.concatenate([chunk.samples for chunk in decode_file(SAMPLES / "librivox.flac", 16000, 1.0)])  # 25 s
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    half = len(pcm) // 2 // FRAME * FRAME
    fake = FakeRay(models)
    settings = front_settings(tmp_path / "sessions")
    (a, stop_a, task_a), (b, stop_b, task_b) = await front_end(fake, settings), await front_end(fake, settings)
    assert sorted(fake.actors) == ["livesum-host-0", "livesum-host-1"]  # B found the hosts A made

    one = await Client(a, "one").open(START)
    await one.until(lambda c: c.envelopes)
    two = await Client(a, "two").open(START)
    await two.until(lambda c: c.envelopes)
    holders = {name: [host for host, handle in fake.actors.items() if name in handle.host.sessions] for name in ("one", "two")}
    assert len(holders["one"]) == len(holders["two"]) == 1 and holders["one"] != holders["two"]  # most room first
    full = await Client(a, "three").open(START)
    await full.until(lambda c: c.code is not None)
    assert full.code == 1013
    taken = await Client(b, "two").open({"type": "start", "sample_rate": 16000})
    await taken.until(lambda c: c.code is not None)
    assert taken.code == 4409  # the id runs on a host: B knows without a directory

    for offset in range(0, half, FRAME):
        await one.socket.send(pcm[offset:offset + FRAME])
        await two.socket.send(pcm[offset:offset + FRAME])
    await one.until(lambda c: any(e["event"]["type"] == "segment" for e in c.envelopes))  # transcription is under way

    # A second connection through B resumes `one` while A's still looks alive: it takes over (A's closes
    # 4409), and the replay from its seq follows on; the rest of the audio goes through B.
    seen = one.seqs()[-1]
    wrong = await Client(b, "one").open({"type": "resume", "last_seq": seen, "secret": "nope"})
    await wrong.until(lambda c: c.code is not None)
    assert wrong.code == 4401
    resumed = await Client(b, "one").open({"type": "resume", "last_seq": seen, "secret": one.secret})
    await one.until(lambda c: c.code is not None, 30)
    assert one.code == 4409
    watcher = await Client(b, "two").open({"type": "watch", "last_seq": 0})
    for offset in range(half, len(pcm), FRAME):
        await resumed.socket.send(pcm[offset:offset + FRAME])
    await resumed.socket.send(json.dumps({"type": "stop"}))
    await resumed.until(lambda c: c.code is not None, 180)
    assert resumed.code == 1000 and resumed.envelopes[-2]["event"]["type"] == "notes"
    record = sorted(set(one.seqs()) | set(resumed.seqs()))
    assert resumed.seqs()[0] == seen + 1 and record == list(range(1, record[-1] + 1))  # nothing lost
    assert len(one.seqs()) + len(resumed.seqs()) - len(set(one.seqs()) & set(resumed.seqs())) == len(record)
    assert set(one.seqs()) & set(resumed.seqs()) <= set(range(seen + 1, record[-1] + 1))  # sent to A after `seen`, replayed on B
    text = " ".join(one.finals() + resumed.finals()).lower()
    assert "dashwood" in text

    # An adapter (Twilio, mu-law 8 kHz, the token-less loopback server) through B: its session runs on the
    # host `one` left, the call's speaker name on its transcript, notes once the call stops.
    mulaw = subprocess.run(["sox", str(SAMPLES / "librivox.flac"), "-t", "raw", "-r", "8000", "-e", "mu-law", "-b", "8", "-c", "1",
                            "-", "trim", "0", "7"], check=True, capture_output=True).stdout
    async with connect(f"ws://127.0.0.1:{b.port}/twilio", max_size=None) as call:
        start = {"streamSid": "MZcall1", "tracks": ["inbound"], "customParameters": {"inbound_speaker": "Caller"},
                 "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
        await call.send(json.dumps({"event": "start", "start": start, "streamSid": "MZcall1"}))
        for number, offset in enumerate(range(0, len(mulaw), 160)):  # 20 ms frames
            media = {"track": "inbound", "timestamp": str(offset // 8), "payload": base64.b64encode(mulaw[offset:offset + 160]).decode()}
            await call.send(json.dumps({"event": "media", "sequenceNumber": str(number + 2), "media": media, "streamSid": "MZcall1"}))
        await call.send(json.dumps({"event": "stop", "streamSid": "MZcall1"}))
    notes = tmp_path / "sessions" / "MZcall1" / "notes.md"
    async with asyncio.timeout(120):  # the front-end may still be handling the call's messages after it hung up
        while not notes.is_file():
            await asyncio.sleep(0.2)
    assert "MZcall1" in fake.actors[holders["one"][0]].host.sessions
    transcript = (tmp_path / "sessions" / "MZcall1" / "transcript.txt").read_text()
    assert "Caller" in transcript and "dashwood" in transcript.lower()

    # `two`'s host dies: its owner on A and its watcher on B get an error event and 4503 at once.
    await watcher.until(lambda c: len(c.seqs()) >= 1)
    fake.actors[holders["two"][0]].kill()
    await two.until(lambda c: c.code is not None, 10)
    await watcher.until(lambda c: c.code is not None, 10)
    assert two.code == watcher.code == 4503
    for client in (two, watcher):
        last = client.envelopes[-1]
        assert last["seq"] is None and last["event"]["fatal"] and "session worker died" in last["event"]["message"]
    ghost = await Client(b, "two").open({"type": "resume", "last_seq": 0, "secret": two.secret})
    await ghost.until(lambda c: c.code is not None)
    assert ghost.code == 4404
    await asyncio.sleep(2.5)  # the dead host is made again under its name: capacity is back
    assert not fake.actors[holders["two"][0]].dead

    stop_a.set(), stop_b.set()
    await asyncio.wait_for(asyncio.gather(task_a, task_b), 60)
    assert not a.sessions and not b.sessions
    for handle in fake.actors.values():
        await handle.host.close()
