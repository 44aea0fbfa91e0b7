"""Per-request context, response headers, metrics and the audit log (a pure ASGI middleware).

Every HTTP response, errors included, leaves with ``X-Request-ID``, ``X-FaceTrust-Model``
(``name/version``) and, once an upload has been received, ``X-Content-SHA256``. Every
``/v1/`` request writes one JSON line to the ``facetrust.audit`` logger.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.metrics import Metrics

audit_log = logging.getLogger("facetrust.audit")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


@dataclass
class RequestContext:
    """What the audit line and the response headers need to know about one request."""

    request_id: str
    started: float
    key_id: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    media_type: str | None = None
    format: str | None = None
    result_status: str | None = None
    verdict: str | None = None
    fake_probability: float | None = None
    error_code: str | None = None
    job_id: str | None = None
    min_face: int | None = None  # the min_face a request asked for (None: the server's)
    timings: dict[str, float] = field(default_factory=dict)


def context_of(scope: Scope) -> RequestContext | None:
    """The :class:`RequestContext` the middleware put in ``scope`` (None outside it)."""
    return scope.get("state", {}).get("ctx")


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


def identity_headers(ctx: RequestContext | None, model_header: str) -> dict[str, str]:
    """The headers every response carries."""
    headers = {"X-FaceTrust-Model": model_header}
    if ctx is not None:
        headers["X-Request-ID"] = ctx.request_id
        if ctx.sha256:
            headers["X-Content-SHA256"] = ctx.sha256
    return headers


class ServingMiddleware:
    """Creates the request context, stamps headers, records metrics and the audit line."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, model_header: str) -> None:
        self.app = app
        self.metrics = metrics
        self.model_header = model_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = RequestContext(request_id=_request_id(scope), started=time.perf_counter())
        scope.setdefault("state", {})["ctx"] = ctx
        status = [500]

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                headers = MutableHeaders(scope=message)
                for name, value in identity_headers(ctx, self.model_header).items():
                    headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, stamped)
        finally:
            self._record(scope, ctx, status[0])

    def _record(self, scope: Scope, ctx: RequestContext, status: int) -> None:
        elapsed = time.perf_counter() - ctx.started
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope.get("method", "")
        self.metrics.requests.labels(method, route, str(status)).inc()
        self.metrics.latency.labels(method, route).observe(elapsed)
        if not scope.get("path", "").startswith("/v1/"):
            return
        client = scope.get("client")
        record: dict[str, Any] = {
            "event": "request",
            "time": round(time.time(), 3),
            "request_id": ctx.request_id,
            "method": method,
            "route": route,
            "client": client[0] if client else None,
            "key_id": ctx.key_id,
            "status": status,
            "error": ctx.error_code,
            "job_id": ctx.job_id,
            "sha256": ctx.sha256,
            "size_bytes": ctx.size_bytes,
            "format": ctx.format,
            "media_type": ctx.media_type,
            "result_status": ctx.result_status,
            "verdict": ctx.verdict,
            "fake_probability": ctx.fake_probability,
            "model": self.model_header,
            "min_face": ctx.min_face,
            "timings": {**{k: round(v, 4) for k, v in ctx.timings.items()}, "total": round(elapsed, 4)},
        }
        audit_log.info(json.dumps(record, separators=(",", ":"), sort_keys=False))
