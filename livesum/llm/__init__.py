"""The language model side: the StreamingLLM engine and what it writes (summaries, notes)."""
