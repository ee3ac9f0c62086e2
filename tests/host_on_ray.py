"""Driver for tests/test_ray.py (run inside the cluster's network namespace): two session hosts as
Ray actors, a session on each, one host's process killed half way. Prints one JSON line."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import ray

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from livesum.config import load_settings  # noqa: E402
from livesum.events import Segment, parse_event  # noqa: E402
from livesum.scale.session_host import SessionHost  # noqa: E402
from livesum.source.file import decode_file  # noqa: E402


def main(address: str, data_dir: str) -> None:
    ray.init(address=address, namespace="livesum-test", log_to_driver=False, logging_level="ERROR")
    settings = load_settings(REPO / "configs" / "cpu.toml", {"llm": {"enabled": False}, "server": {"data_dir": data_dir}})
    host_class = ray.remote(SessionHost).options(num_cpus=1, max_restarts=0, scheduling_strategy="SPREAD")
    doomed, survivor = host_class.remote(settings), host_class.remote(settings)
    doomed_load, survivor_load = ray.get([doomed.load.remote(), survivor.load.remote()])
    ray.get([doomed.open.remote("doomed"), survivor.open.remote("survivor")])
    pcm = [chunk.samples.astype("<f4").tobytes() for chunk in decode_file(REPO / "samples" / "librivox.flac", 16000, 0.5)]
    for piece in pcm:
        ray.get([doomed.push.remote("doomed", piece), survivor.push.remote("survivor", piece)])
    seen, finals = 0, 0
    while finals == 0:  # the doomed session is half way: a final segment is out (and on disk)
        batch = ray.get(doomed.events.remote("doomed", seen, 10.0))
        finals += sum(isinstance(parse_event(text), Segment) and parse_event(text).final for _, text in batch.events)
        seen = batch.events[-1][0] if batch.events else seen
    os.kill(doomed_load.pid, signal.SIGKILL)
    try:
        ray.get(doomed.events.remote("doomed", seen, 10.0))
        doomed_error = None
    except ray.exceptions.RayActorError as error:
        doomed_error = type(error).__name__
    ray.get(survivor.stop.remote("survivor"))
    events, after = [], 0
    while True:
        batch = ray.get(survivor.events.remote("survivor", after, 10.0))
        events += [text for _, text in batch.events]
        after = batch.events[-1][0] if batch.events else after
        if batch.finished:
            break
    text = " ".join(e.text for e in map(parse_event, events) if isinstance(e, Segment) and e.final)
    print(json.dumps({"nodes": [doomed_load.node, survivor_load.node], "doomed_seen": seen, "doomed_error": doomed_error,
                      "survivor_events": len(events), "survivor_text": text}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
