"""A batch on a Ray cluster: a pool of actors that each load the models once and take one recording
at a time.

Placement, restarts and failure detection are Ray's: each worker reserves `batch.cpus_per_worker`
CPUs (and a GPU where the cluster has them), the pool spreads over the nodes, and a worker process
that dies is restarted by Ray (`batch.worker_restarts`). What Ray does not know is that a recording
whose worker died should run again elsewhere: the driver puts it back at the head of the queue, up to
`batch.max_attempts` times, while a recording that fails on its own (corrupt, empty) is an error row
at once. How a recording and its outputs travel (shared storage or the object store): worker.py.
"""

from __future__ import annotations

import math
import os
import secrets
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livesum.batch.run import BatchRun, Interrupts, Planned
from livesum.batch.worker import PROBE_PREFIX, Job, Outcome, RecordingWorker, StorageProbe, WorkerInfo, write_outputs

POLL_SECONDS = 0.5  # how often the driver looks up from waiting, for Ctrl-C
# Ray Client's proxy starts one server process per client; when that process dies while starting
# (seen under load, with nothing in its logs: ray-project/ray#63202, a gRPC race in the proxy's fork),
# the proxy says so within seconds, or trips over the dead process ("ZombieProcess"), and a new
# connection gets a new process: one more try, then the error.
CLIENT_SERVER_DIED = ("Starting Ray client server failed", "ZombieProcess")


class RayUnavailable(RuntimeError):
    """Ray is not installed or the cluster cannot be reached; one line."""


def connect(address: str) -> Any:
    """`ray.init` on `auto` (a cluster this machine is part of), `HOST:PORT` or `ray://HOST:10001` (Ray Client)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # livesum is offline software: no usage reports
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs Ray: pip install 'livesum[ray]'") from None
    try:
        try:
            _init(ray, address)
        except ConnectionError as error:
            if not any(sign in str(error) for sign in CLIENT_SERVER_DIED):
                raise
            ray.shutdown()  # a new ray.init is a new client id, which gets a new server process
            _init(ray, address)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {_reason(error)}") from None
    return ray


def _init(ray: Any, address: str) -> None:
    ray.init(address=address, namespace="livesum", log_to_driver=False, logging_level="ERROR")


def _reason(error: Exception) -> str:
    """One line: the error's first line and, when Ray Client wraps the server's traceback after it
    ("Initialization failure from server:"), that traceback's last line, which says what failed."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"


@dataclass
class Slot:
    """One actor of the pool and what the driver knows of it."""

    actor: Any
    info: WorkerInfo | None = None

    def transfer(self, configured: str) -> str:
        if configured != "auto":
            return configured
        return "shared" if self.info is not None and self.info.shares_storage else "object"


def worker_count(ray: Any, settings_workers: int, cpus: float, gpus: float, recordings: int) -> int:
    if settings_workers:
        return min(settings_workers, recordings)
    free = ray.available_resources()
    fit = math.floor(free.get("CPU", 0) / cpus)
    if gpus:
        fit = min(fit, math.floor(free.get("GPU", 0) / gpus))
    return max(1, min(fit, recordings))


def run_on_ray(batch: BatchRun, todo: list[Planned], address: str) -> None:
    ray = connect(address)
    try:
        if todo:
            _Pool(ray, batch).run(todo)
    finally:
        ray.shutdown()


class _Pool:
    def __init__(self, ray: Any, batch: BatchRun) -> None:
        self.ray = ray
        self.batch = batch
        self.config = batch.settings.batch
        self.starting: dict[Any, Slot] = {}  # describe() ref -> slot: loading models or restarting
        self.idle: deque[Slot] = deque()
        self.busy: dict[Any, tuple[Slot, Planned, str]] = {}  # process() ref -> (slot, recording, transfer)
        self.queue: deque[Planned] = deque()
        self.last_worker_error = ""
        self.stopping = False
        self.probe: StorageProbe | None = None
        self._probe_file: Path | None = None

    def _probe(self, todo: list[Planned]) -> StorageProbe | None:
        if self.config.transfer != "auto":
            return None
        token = secrets.token_hex(16)
        probe = self.batch.out_dir / f"{PROBE_PREFIX}{token[:8]}"
        probe.write_text(token, encoding="utf-8")
        self._probe_file = probe
        return StorageProbe(str(probe), token, [(str(planned.recording.path), planned.size) for planned in todo])

    def run(self, todo: list[Planned]) -> None:
        ray, config = self.ray, self.config
        gpus = config.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) else 0.0
        count = worker_count(ray, config.workers, config.cpus_per_worker, gpus, len(todo))
        actor_class = ray.remote(RecordingWorker).options(
            num_cpus=config.cpus_per_worker, num_gpus=gpus, max_restarts=config.worker_restarts,
            max_concurrency=2,  # stop() must reach a worker while process() runs
            scheduling_strategy=config.placement,
        )
        threads = max(1, int(config.cpus_per_worker))
        self.probe = self._probe(todo)
        self.queue.extend(todo)
        for _ in range(count):
            slot = Slot(actor_class.remote(self.batch.settings, threads))
            self.starting[slot.actor.describe.remote(self.probe)] = slot
        try:
            with Interrupts(first=self._wind_down, second=self._abandon):
                self._loop()
        finally:
            if self._probe_file is not None:
                self._probe_file.unlink(missing_ok=True)

    def _loop(self) -> None:
        ray = self.ray
        while self.busy or (self.queue and not self.stopping):
            while self.idle and self.queue and not self.stopping:
                self._dispatch(self.idle.popleft(), self.queue.popleft())
            if not self.busy and not self.starting:  # every worker is gone for good
                for planned in self.queue:
                    self.batch.finished(planned, Outcome("failed", error=f"no worker could run it: {self.last_worker_error}"), None, None)
                self.queue.clear()
                return
            ready, _ = ray.wait([*self.busy, *self.starting], num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                if ref in self.starting:
                    self._ready(ref, self.starting.pop(ref))
                else:
                    self._returned(ref, *self.busy.pop(ref))

    def _dispatch(self, slot: Slot, planned: Planned) -> None:
        transfer = slot.transfer(self.config.transfer)
        recording = planned.recording
        audio = None
        if transfer == "shared":
            job = Job(planned.name, list(recording.questions), str(recording.path), out_dir=str(self.batch.out_dir / planned.name))
        else:  # the bytes travel through the object store; the worker hands the outputs back
            job = Job(planned.name, list(recording.questions), None, suffix=recording.path.suffix)
            audio = self.ray.put(recording.path.read_bytes())
        assert slot.info is not None
        self.batch.started(planned, slot.info, transfer)
        self.busy[slot.actor.process.remote(job, audio)] = (slot, planned, transfer)

    def _ready(self, ref: Any, slot: Slot) -> None:
        try:
            slot.info = self.ray.get(ref)
        except self.ray.exceptions.RayError as error:  # could not start (a model missing) or out of restarts
            self.last_worker_error = _first_line(error)
            return
        if self.stopping:
            return
        self.idle.append(slot)

    def _returned(self, ref: Any, slot: Slot, planned: Planned, transfer: str) -> None:
        exceptions = self.ray.exceptions
        try:
            outcome: Outcome = self.ray.get(ref)
        except (exceptions.RayActorError, exceptions.WorkerCrashedError, exceptions.ObjectLostError) as error:
            self._worker_died(slot, planned, _first_line(error))
            return
        except exceptions.RayError as error:
            outcome = Outcome("failed", error=_first_line(error))
        if transfer == "object" and outcome.files:
            write_outputs(self.batch.out_dir / planned.name, outcome.files)
        self.batch.finished(planned, outcome, slot.info, transfer)
        if not self.stopping:
            self.idle.append(slot)

    def _worker_died(self, slot: Slot, planned: Planned, why: str) -> None:
        """Ray restarts the actor (or cannot); the recording goes to whichever worker is free first."""
        self.last_worker_error = why
        if planned.attempts >= self.config.max_attempts:
            outcome = Outcome("failed", error=f"its worker died {planned.attempts} times (last: {why})")
            self.batch.finished(planned, outcome, slot.info, None)
        elif self.stopping:
            self.batch.finished(planned, Outcome("interrupted", error=f"its worker died while stopping ({why})"), slot.info, None)
        else:
            self.batch.retrying(planned, slot.info, "its worker died")
            self.queue.appendleft(planned)
        self.starting[slot.actor.describe.remote(self.probe)] = slot  # resolves once the restart has loaded the models

    def _wind_down(self) -> None:
        """First Ctrl-C: no new recordings; the running ones end with notes for what was heard."""
        self.stopping = True
        for slot, _, _ in self.busy.values():
            slot.actor.stop.remote()

    def _abandon(self) -> None:
        """Second Ctrl-C: the running recordings are marked interrupted and their workers killed."""
        self.batch.abandon_running()
        for slot, _, _ in self.busy.values():
            try:
                self.ray.kill(slot.actor, no_restart=True)
            except Exception:
                pass


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
