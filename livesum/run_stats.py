"""What a run measures of itself: the seconds each stage was busy (the real-time-factor split the CLI
prints at the end), the run's result, and the figures of the live status line."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from livesum.events import Segment


@dataclass
class StageClock:
    """Seconds each stage spent busy, for the RTF split that the CLI reports.

    `source` is the time the pipeline waited for audio: decoding that ASR did not hide. `notes` is
    the LM time after the audio ended (questions, final notes): what keeping up live does not need.
    """

    seconds: dict[str, float] = field(default_factory=lambda: {"source": 0.0, "asr": 0.0, "llm": 0.0, "notes": 0.0})
    audio_ended: bool = False

    def timed(self, stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            began = time.perf_counter()
            try:
                return function(*args)
            finally:
                self.seconds[stage] += time.perf_counter() - began

        return run

    async def run(self, stage: str, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(self.timed(stage, function), *args)


@dataclass
class RunResult:
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)
    fatal_error: str | None = None
    interrupted: bool = False
    dropped_seconds: float = 0.0

    @property
    def real_time_factor(self) -> float:
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else 0.0

    def describe(self) -> str:
        """One line: audio, wall time, RTF, each stage's busy seconds, the process's peak RSS, what was dropped."""
        split = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in self.stage_seconds.items())
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        dropped = f"; dropped {self.dropped_seconds:.1f} s" if self.dropped_seconds else ""
        return (
            f"{self.audio_seconds:.1f} s of audio in {self.wall_seconds:.1f} s (RTF {self.real_time_factor:.3f}; "
            f"busy: {split}; peak RSS {peak_mib:.0f} MiB{dropped})"
        )


@dataclass
class LiveStats:
    """What the live status line shows; updated by the stages, sent with progress events."""

    level_db: float | None = None
    asr_lag: float | None = None
    oldest_unfed: float | None = None  # wall time the oldest final text not yet in the LM was emitted
