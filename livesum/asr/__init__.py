"""Speech to text: faster-whisper with VAD, streamed into final and partial segments."""
