"""API keys: header ``X-API-Key``, stored as SHA-256 hashes, compared in constant time.

The dependency returns the *id* of the matching key (what the audit log records); the key
itself is never stored or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from serving.errors import ApiError

API_KEY_HEADER = "X-API-Key"
#: Key id recorded for requests accepted in development mode (no key configured).
ANONYMOUS = "anonymous"

_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="API key")


def hash_key(key: str) -> str:
    """SHA-256 hex of an API key, as stored in ``FACETRUST_API_KEYS``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random API key (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def match_key(key: str, hashes: tuple[tuple[str, str], ...]) -> str | None:
    """Id of the configured key whose hash equals ``hash(key)``, else ``None``.

    Every configured hash is compared (no early exit) with :func:`hmac.compare_digest`.
    """
    digest = hash_key(key).encode("ascii")
    found: str | None = None
    for key_id, stored in hashes:
        if hmac.compare_digest(digest, stored.encode("ascii")) and found is None:
            found = key_id
    return found


def require_api_key(request: Request, key: Annotated[str | None, Depends(_header)]) -> str:
    """FastAPI dependency: the key id of a valid ``X-API-Key``; 401 without one, 403 if wrong."""
    state = request.app.state.server
    ctx = request.state.ctx
    hashes = state.settings.api_keys
    if not key:
        if state.settings.allow_no_auth:
            ctx.key_id = ANONYMOUS
            return ANONYMOUS
        raise ApiError(401, "auth_missing", f"missing API key: send it in the {API_KEY_HEADER} header")
    key_id = match_key(key, hashes)
    if key_id is None:
        raise ApiError(403, "auth_invalid", "invalid API key")
    ctx.key_id = key_id
    return key_id


#: Typed dependency: the id of the caller's API key.
KeyId = Annotated[str, Depends(require_api_key)]
