"""`livesum serve`: websocket ingestion (native protocol and telephony/meeting adapters) on shared models."""
