"""The credentials check of the simulated SD servers (the web UI's --api-auth, a proxy in front of ComfyUI)."""

from __future__ import annotations

import base64
import binascii
import hmac


def basic_auth_matches(authorization: str, credentials: tuple[str, str]) -> bool:
    """Whether an `Authorization` header carries these Basic credentials (compared in constant time)."""
    scheme, _, encoded = authorization.partition(" ")
    try:
        given = base64.b64decode(encoded, validate=True) if scheme.lower() == "basic" else b""
    except binascii.Error:
        given = b""
    return hmac.compare_digest(given, ":".join(credentials).encode())
