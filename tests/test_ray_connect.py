"""How `--ray` connects: Ray Client's proxy losing the server process it started for us is tried once
more (a new connection gets a new process); any other failure is one clear line at once.

Ray's own `init` is replaced here by one that fails the way Ray Client reports it: a server process
that dies while starting cannot be made to die on demand in a real cluster (test_ray.py has those)."""

from __future__ import annotations

from typing import Any

import pytest

from livesum.batch.cluster import RayUnavailable, connect

ray = pytest.importorskip("ray", reason="livesum[ray] is not installed")

SERVER_DIED = ("Initialization failure from server:\nTraceback (most recent call last):\n"
               "RuntimeError: Starting Ray client server failed. See ray_client_server_23000.err for detailed logs.")
# The same death seen from the proxy's side (a test run under load, 2026-12-07; ray-project/ray#63202).
SERVER_A_ZOMBIE = ("Initialization failure from server:\nTraceback (most recent call last):\n"
                   "psutil.ZombieProcess: PID still exists but it's a zombie (pid=26640)")


def scripted_init(monkeypatch: pytest.MonkeyPatch, failures: list[Exception]) -> list[str]:
    calls: list[str] = []

    def init(address: str, **_: Any) -> None:
        calls.append(address)
        if failures:
            raise failures.pop(0)

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    return calls


@pytest.mark.parametrize("failure", [SERVER_DIED, SERVER_A_ZOMBIE])
def test_a_client_server_that_died_starting_is_tried_once_more(monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    calls = scripted_init(monkeypatch, [ConnectionAbortedError(failure)])
    assert connect("ray://127.0.0.1:10001") is ray
    assert calls == ["ray://127.0.0.1:10001", "shutdown", "ray://127.0.0.1:10001"]


def test_it_dying_twice_is_one_line_with_the_servers_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = scripted_init(monkeypatch, [ConnectionAbortedError(SERVER_DIED), ConnectionAbortedError(SERVER_DIED)])
    with pytest.raises(RayUnavailable) as raised:
        connect("ray://127.0.0.1:10001")
    assert calls.count("ray://127.0.0.1:10001") == 2
    assert str(raised.value) == ("cannot reach the Ray cluster at ray://127.0.0.1:10001: Initialization failure from server: "
                                 "RuntimeError: Starting Ray client server failed. See ray_client_server_23000.err for detailed logs.")


def test_an_unreachable_cluster_is_not_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = scripted_init(monkeypatch, [ConnectionError("Could not find any running Ray instance.")])
    with pytest.raises(RayUnavailable, match="at 10.0.0.9:6379: Could not find any running Ray instance"):
        connect("10.0.0.9:6379")
    assert calls == ["10.0.0.9:6379"]
