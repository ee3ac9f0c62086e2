"""`livesum batch` on this machine: audio hours per wall hour in one process and on Ray with 1 and
2 workers, and what Ray costs against running the same recordings in one process.

Makes N recordings of M minutes (the meetings of samples/meetings/*.toml spoken by espeak-ng and
joined, each recording starting at another meeting), then runs the same `livesum batch` command line in three
ways, each run into a fresh --out, timing the whole command (start, model loading, every recording, exit):

- local: no Ray, one process, recordings one after another (torch and CTranslate2 on all cores);
- ray-1: a one-node Ray cluster with the machine's CPUs (tests/ray_cluster.py: its own network
  namespace, loopback only), one worker reserving all of them: the same CPU budget as `local`;
- ray-2: the same cluster, two workers with half the CPUs each.

Ray's overhead is ray-1 against local, end to end and per recording (the sum of the rows'
wall_seconds, which leaves out start and model loading). The same work on this machine drifts by
20% or more over a quarter of an hour, more than the effect measured, so local and ray-1 run
interleaved in rounds that mirror each other (local, ray-1, ray-1, local, ...): a drift that is
steady over the runs costs both the same. The overhead is the mean of ray-1 over the mean of local,
and each round's pair is reported too. The cluster runs only for the Ray runs (its idle daemons are
part of what Ray costs, not of the local runs); it is started before them and left to settle for
`--settle` seconds, as a user's cluster is up before a batch. The JSON records the load average
before and after each run.

    .venv/bin/python benchmarks/batch_scale.py --recordings 2 --minutes 5 --rounds 2 --json docs/batch_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from ray_cluster import RayCluster  # noqa: E402  (the tests' loopback cluster)

MEETINGS = ["housing_coop", "incident_review", "garden_committee", "school_trip", "cafe_supplier"]


def make_recordings(folder: Path, count: int, minutes: float) -> list[Path]:
    """Recording i: the meetings joined from the i-th on (espeak-ng voices, samples/make_meeting.py),
    cut at `minutes`: each as long as asked, no two alike."""
    folder.mkdir(parents=True, exist_ok=True)
    spoken = []
    for name in MEETINGS:
        path = folder / "parts" / f"{name}.wav"
        if not path.is_file():
            path.parent.mkdir(exist_ok=True)
            subprocess.run([sys.executable, str(REPO / "samples" / "make_meeting.py"), "--script",
                            str(REPO / "samples" / "meetings" / f"{name}.toml"), "--out", str(path)], check=True, capture_output=True)
        spoken.append(path)
    made = []
    for index in range(count):
        out = folder / f"meeting-{index:02d}.wav"
        if not out.is_file():
            order = spoken[index % len(spoken):] + spoken[:index % len(spoken)]
            subprocess.run(["sox", *map(str, order), str(out), "trim", "0", str(minutes * 60)], check=True)
        made.append(out)
    return made


def run_batch(command: list[str], out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # a fresh --out: in the last one `livesum batch` would skip what is done
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "batch.jsonl").read_text().splitlines()]
    audio = sum(row["audio_seconds"] for row in rows)
    return {
        "wall_seconds": round(wall, 1),
        "audio_seconds": round(audio, 1),
        "recording_wall_seconds": round(sum(row["wall_seconds"] for row in rows), 1),
        "audio_hours_per_wall_hour": round(audio / wall, 2),
        "workers": sorted({row["worker"] for row in rows}),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }


def run_order(rounds: int) -> list[str]:
    """local and ray-1 in mirrored rounds (local, ray-1 | ray-1, local | ...), then ray-2 once."""
    order: list[str] = []
    for index in range(rounds):
        order += ["local", "ray-1"] if index % 2 == 0 else ["ray-1", "local"]
    return order + ["ray-2"]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of local and ray-1 runs, in mirrored order")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds a new cluster idles before its first run")
    parser.add_argument("--config", default=str(REPO / "configs" / "cpu.toml"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/livesum-batch-scale"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    recordings = make_recordings(args.work / "in", args.recordings, args.minutes)
    cpus = os.cpu_count() or 2

    def command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "livesum.cli", "batch", *map(str, recordings), "--out", str(out), "-c", args.config, "-q", *extra]

    runs: dict[str, list[dict]] = {"local": [], "ray-1": [], "ray-2": []}
    cluster: RayCluster | None = None
    try:
        for name in run_order(args.rounds):
            out = args.work / name
            if name == "local":
                if cluster is not None:
                    cluster.stop()
                    cluster = None
                result = run_batch(command(out), out)
            else:
                if cluster is None:
                    cluster = RayCluster()
                    cluster.start(head_cpus=cpus)
                    time.sleep(args.settle)
                workers = int(name.split("-")[1])
                extra = ["--ray", cluster.gcs_address, "--workers", str(workers), "--set", f"batch.cpus_per_worker={cpus // workers}"]
                result = run_batch(cluster.in_cluster_net(command(out, *extra)), out)
            runs[name].append(result)
            print(name, result, flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
    local, ray_one = runs["local"], runs["ray-1"]

    def overhead(key: str) -> float:
        return round(mean([run[key] for run in ray_one]) / mean([run[key] for run in local]) - 1, 3)

    summary = {
        "recordings": len(recordings), "minutes_each": args.minutes, "config": Path(args.config).name, "cpus": cpus,
        "order": run_order(args.rounds), "runs": runs,
        "ray_overhead_end_to_end": overhead("wall_seconds"),
        "ray_overhead_per_recording": overhead("recording_wall_seconds"),
        "ray_overhead_end_to_end_per_round": [round(ray["wall_seconds"] / loc["wall_seconds"] - 1, 3) for loc, ray in zip(local, ray_one)],
        "audio_hours_per_wall_hour": {name: round(mean([run["audio_hours_per_wall_hour"] for run in done]), 2)
                                      for name, done in runs.items() if done},
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
