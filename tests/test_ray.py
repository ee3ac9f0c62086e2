"""`livesum batch --ray` and `livesum serve --ray` (its session host alone, then front-ends and hosts)
on a real two-node Ray cluster on loopback (tests/ray_cluster.py), fast profile.

One cluster for the module: a head with 1 CPU and a second node with 1 CPU, so the two workers
(1 CPU each) land one on each node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch_helpers import act_mid_recording, make_recordings, rows
from conftest import CPU_PROFILE as CPU
from conftest import REPO, SAMPLES
from livesum.events import parse_event
from ray_cluster import RayCluster, namespace_available

pytest.importorskip("ray", reason="livesum[ray] is not installed")
pytestmark = pytest.mark.slow

ONE_CPU_WORKERS = ["--set", "batch.cpus_per_worker=1"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    why_not = namespace_available()
    if why_not:
        pytest.skip(why_not)
    cluster = RayCluster()
    try:
        cluster.start(head_cpus=1, node_cpus=1)
        yield cluster
    finally:
        cluster.stop()


def batch_command(cluster: RayCluster, address: str, *args: str) -> list[str]:
    return cluster.in_cluster_net([sys.executable, "-m", "livesum.cli", "batch", *args, "--ray", address, "-c", CPU, *ONE_CPU_WORKERS])


def test_recordings_spread_over_both_nodes_a_killed_worker_is_retried_and_a_rerun_skips(cluster: RayCluster, tmp_path: Path) -> None:
    inputs = make_recordings(tmp_path / "in")
    out = tmp_path / "notes"
    command = batch_command(cluster, cluster.gcs_address, str(inputs), "--out", str(out), "--no-llm")
    # The worker process dies half way through the recording.
    code, stderr, running = act_mid_recording(command, out, "cafe_meeting", lambda driver, row: os.kill(row["pid"], signal.SIGKILL), timeout=400)
    assert code == 1, stderr  # the corrupt recording failed, nothing else
    table = rows(out)
    assert {name: row["status"] for name, row in table.items()} == {
        "cafe_meeting": "done", "librivox": "done", "short": "done", "corrupt": "failed"}
    assert "not a readable audio" in table["corrupt"]["error"]
    cafe = table["cafe_meeting"]
    assert cafe["attempts"] == 2 and cafe["pid"] != running["pid"]
    assert cafe["audio_seconds"] == pytest.approx(124, abs=2)
    assert "retrying cafe_meeting: its worker died" in stderr
    done = [table[name] for name in ("cafe_meeting", "librivox", "short")]
    assert len({running["node"], *(row["node"] for row in done)}) == 2  # both nodes took recordings
    assert all(row["transfer"] == "shared" for row in done)  # loopback: the workers see the driver's disk
    for row in done:
        assert (out / row["name"] / "transcript.txt").read_text().strip()
        assert (out / row["name"] / "notes.md").is_file()

    again = subprocess.run(batch_command(cluster, cluster.gcs_address, str(inputs), "--out", str(out), "--no-llm"),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 1, again.stderr
    assert "skipping 3 recording(s)" in again.stderr and "0 done, 3 skipped, 1 failed" in again.stderr
    assert all(rows(out)[row["name"]]["updated_at"] == row["updated_at"] for row in done)


def test_ctrl_c_on_the_driver_ends_the_workers_recordings_with_notes(cluster: RayCluster, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "cafe_meeting.flac").write_bytes((SAMPLES / "cafe_meeting.flac").read_bytes())
    out = tmp_path / "notes"
    command = batch_command(cluster, cluster.gcs_address, str(inputs), "--out", str(out), "--no-llm")
    code, stderr, _ = act_mid_recording(command, out, "cafe_meeting", lambda driver, row: driver.send_signal(signal.SIGINT))
    assert code == 130, stderr
    row = rows(out)["cafe_meeting"]
    assert row["status"] == "interrupted" and 0 < row["audio_seconds"] < 124
    assert (out / "cafe_meeting" / "notes.md").is_file()  # the worker wrote the notes for what was heard


def test_object_store_carries_recordings_and_outputs_through_ray_client(cluster: RayCluster, tmp_path: Path) -> None:
    """The driver off the cluster's disk: Ray Client (ray://), a manifest with a per-file question, the
    recording's bytes and the outputs in the object store, the LM on; the worker never gets a path of
    the driver's."""
    recording = tmp_path / "driver-only" / "short.wav"
    recording.parent.mkdir()
    subprocess.run(["sox", str(SAMPLES / "librivox.flac"), str(recording), "trim", "0", "12"], check=True)
    manifest = recording.parent / "calls.jsonl"  # the question is this recording's own
    manifest.write_text(json.dumps({"path": "short.wav", "questions": ["What is the story about?"]}) + "\n")
    out = tmp_path / "notes"
    result = subprocess.run(
        batch_command(cluster, cluster.client_address, str(manifest), "--out", str(out), "--set", "batch.transfer=object"),
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr + cluster.client_server_logs()
    row = rows(out)["short"]
    assert (row["status"], row["transfer"], row["attempts"]) == ("done", "object", 1)
    notes = (out / "short" / "notes.md").read_text()
    assert "## Questions" in notes and "What is the story about?" in notes
    assert (out / "short" / "events.jsonl").read_text().count('"final":true') >= 1


def test_a_killed_session_host_ends_its_session_only(cluster: RayCluster, tmp_path: Path) -> None:
    """`serve --ray`'s worker side: two session hosts as actors on the two nodes; one host's process is
    killed half way through its session: its caller gets RayActorError at once, the files it wrote
    stay whole, and the session on the other host goes on to its notes."""
    data_dir = tmp_path / "sessions"
    command = cluster.in_cluster_net([sys.executable, str(REPO / "tests" / "host_on_ray.py"), cluster.gcs_address, str(data_dir)])
    result = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(set(report["nodes"])) == 2
    assert report["doomed_error"] in {"ActorDiedError", "RayActorError", "ActorUnavailableError"}
    written = (data_dir / "doomed" / "events.jsonl").read_text().splitlines()
    assert len(written) >= report["doomed_seen"] and all(parse_event(line) for line in written)  # whole lines only
    assert "dashwood" in report["survivor_text"].lower()
    assert (data_dir / "survivor" / "notes.md").is_file()


def test_serve_on_ray_places_sessions_on_two_hosts_survives_a_dead_host_and_resumes_through_another_front_end(
        cluster: RayCluster, tmp_path: Path) -> None:
    """`livesum serve --ray`, two front-end processes on the module's cluster (tests/serve_on_ray.py):
    two sessions on the two hosts and a third refused (1013); one host killed: its session gets an
    error event and 4503 at once, the other goes on; that one resumes through the second front-end
    from its last seq, with every event exactly once, to its notes."""
    data_dir = tmp_path / "sessions"
    command = cluster.in_cluster_net([sys.executable, str(REPO / "tests" / "serve_on_ray.py"), cluster.gcs_address, str(data_dir),
                                      str(tmp_path)])
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    logs = "".join(f"\n--- {path.name}\n{path.read_text()[-3000:]}" for path in sorted(tmp_path.glob("frontend-*.log")))
    assert result.returncode == 0, result.stderr[-3000:] + logs
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(set(report["host_nodes"])) == 2, logs  # one host per node
    assert report["placed"]["alpha"] != report["placed"]["beta"]
    assert report["full_close"] == 1013
    # The dead host's session: an error event, then 4503, at once.
    assert report["alpha_close"] == 4503 and report["alpha_close_after"] < 10
    last = report["alpha_last"]
    assert last["seq"] is None and last["event"]["type"] == "error" and "session worker died" in last["event"]["message"]
    assert report["alpha_resume_close"] == 4404
    # The other session: untouched by the death, resumed through front-end B with nothing lost or doubled.
    assert report["beta_errors_on_a"] == []
    seen, on_b = report["beta_seen_on_a"], report["beta_seqs_on_b"]
    assert report["beta_seqs_on_a"] == list(range(1, seen + 1))
    assert on_b == list(range(seen + 1, seen + 1 + len(on_b)))
    assert report["beta_close"] == 1000 and "notes" in report["beta_types_on_b"]
    text = report["beta_text"].lower()
    assert "dashwood" in text and "respectable" in text  # words of both halves: the audio sent to A and to B
    written = (data_dir / "beta" / "events.jsonl").read_text().splitlines()
    assert len(written) == on_b[-1]  # the record on the hosts' storage is the events the client got
    assert (data_dir / "beta" / "notes.md").is_file()
    assert all(parse_event(line) for line in (data_dir / "alpha" / "events.jsonl").read_text().splitlines())
    assert report["frontend_exits"] == [0, 0]
