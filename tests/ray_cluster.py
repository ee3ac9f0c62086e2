"""A real two-node Ray cluster for the tests: `ray start --head` and `ray start --address` as separate
processes, each with its own CPU count.

Ray resolves 127.0.0.1 to the machine's outward address, so the cluster runs in a network namespace
of its own that has only the loopback device: every byte the tests send stays on loopback. Commands
that talk to the cluster (the `livesum batch` driver) run in that namespace too (`in_cluster_net`).
Teardown kills exactly the process groups these started (never `ray stop`, which would stop every
Ray of this user on a shared machine). Needs root (or unprivileged user namespaces) for `unshare`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

OBJECT_STORE_BYTES = 80 * 1024 * 1024  # Ray's floor is 75 MiB; the recordings in the tests are a few MB
HEAD_PORT, CLIENT_PORT = 6380, 10001  # free in a namespace of our own


def ray_environment() -> dict[str, str]:
    env = dict(os.environ)
    # Ray Client's proxy gives a new client's server process 30 s to come up; a test suite loading
    # both cores can take longer, and the client then sees only "Initialization failure from server".
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S="180")
    return env


def namespace_available() -> str | None:
    """None when a network namespace can be made here, else why not."""
    if not shutil.which("unshare") or not shutil.which("nsenter") or not shutil.which("ip"):
        return "unshare, nsenter and ip (util-linux, iproute2) are needed"
    probe = subprocess.run(["unshare", "--net", "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot make a network namespace: {probe.stderr.strip()}"


@dataclass
class RayCluster:
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lsray-", dir="/tmp")))  # socket paths <= 107 bytes
    holder: subprocess.Popen[bytes] | None = None
    groups: list[int] = field(default_factory=list)

    gcs_address = f"127.0.0.1:{HEAD_PORT}"
    client_address = f"ray://127.0.0.1:{CLIENT_PORT}"

    def in_cluster_net(self, command: list[str]) -> list[str]:
        assert self.holder is not None
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", *command]

    def _ray_start(self, args: list[str]) -> None:
        ray = str(Path(sys.executable).with_name("ray"))
        command = self.in_cluster_net([ray, "start", *args, f"--object-store-memory={OBJECT_STORE_BYTES}",
                                       "--disable-usage-stats", f"--temp-dir={self.temp_dir}"])
        process = subprocess.Popen(command, env=ray_environment(), start_new_session=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.groups.append(process.pid)  # its daemons stay in this process group after `ray start` exits
        output, _ = process.communicate(timeout=180)
        if process.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{output}")

    def start(self, head_cpus: int, node_cpus: int = 0) -> None:
        """A head with `head_cpus` CPUs and, if `node_cpus`, a second node with that many."""
        self.holder = subprocess.Popen(["unshare", "--net", "sh", "-c", "ip link set lo up && exec sleep 3600"], start_new_session=True)
        deadline = time.monotonic() + 10
        while subprocess.run(["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "ip", "-o", "link", "show", "up"],
                             capture_output=True, text=True).stdout.count("lo:") == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the network namespace did not come up")
            time.sleep(0.05)
        self._ray_start(["--head", f"--port={HEAD_PORT}", f"--num-cpus={head_cpus}", "--include-dashboard=false",
                         f"--ray-client-server-port={CLIENT_PORT}"])
        if node_cpus:
            self._ray_start([f"--address={self.gcs_address}", f"--num-cpus={node_cpus}"])

    def client_server_logs(self, lines: int = 20) -> str:
        """The tails of Ray Client's server logs (the proxy and each client's server, stderr and stdout), for a
        failed test's message."""
        tails = []
        for log in sorted((self.temp_dir / "session_latest" / "logs").glob("ray_client_server*.[eo][ru][rt]")):
            tails.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(tails)

    def stop(self) -> None:
        groups = [*self.groups, *([self.holder.pid] if self.holder else [])]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for group in groups:
                try:
                    os.killpg(group, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(_group_alive(group) for group in groups):
                time.sleep(0.2)
        if self.holder:
            self.holder.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False
