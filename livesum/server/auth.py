"""The server token's rules, shared by the websocket paths (livesum/server/app.py) and plain HTTP
(livesum/server/http.py): where a token is read from a header, and a constant-time comparison."""

from __future__ import annotations

import hmac


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def token_matches(expected: str, offered: str | None) -> bool:
    """True when `offered` is the expected token (compared in constant time)."""
    return offered is not None and hmac.compare_digest(expected.encode(), offered.encode())
