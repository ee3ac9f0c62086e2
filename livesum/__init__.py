"""livesum: live transcription into rolling summaries, offline, with a StreamingLLM cache."""

__version__ = "0.1.0"
