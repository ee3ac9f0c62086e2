"""A batch in this process: the models load once, recordings run one after another."""

from __future__ import annotations

from livesum.batch.run import BatchRun, Interrupts, Planned
from livesum.batch.worker import Job, RecordingWorker


def run_local(batch: BatchRun, todo: list[Planned]) -> None:
    if not todo:
        return
    worker = RecordingWorker(batch.settings)
    info = worker.describe()
    with Interrupts(first=worker.stop, second=batch.abandon_running) as interrupts:
        for planned in todo:
            if interrupts.count:
                break
            out_dir = batch.out_dir / planned.name
            job = Job(planned.name, list(planned.recording.questions), str(planned.recording.path), out_dir=str(out_dir))
            batch.started(planned, info, "local")
            batch.finished(planned, worker.process(job), info, "local")
