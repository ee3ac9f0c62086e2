"""Where events go: files (txt, srt, vtt, jsonl, md) and the terminal."""
