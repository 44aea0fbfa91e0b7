"""The FastAPI application: routes, error envelopes and the lifespan of one :class:`Server`.

``create_app(settings)`` validates the model (its card is read here, in the server
process, without decoding any upload) and returns the app; workers start in the lifespan.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from serving.auth import KeyId
from serving.errors import ApiError
from serving.middleware import RequestContext, ServingMiddleware, context_of, identity_headers
from serving.schema import (
    AnalyzeResponse,
    ErrorDetail,
    ErrorResponse,
    HealthResponse,
    JobResponse,
    ReadyResponse,
)
from serving.service import Sampling, Server
from serving.settings import ServeSettings
from serving.upload import FIELD, receive_upload

_MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "the image or video (format recognised from its bytes)",
                        }
                    },
                }
            }
        },
    }
}

_ERROR_TEXTS: dict[int, str] = {
    400: "invalid Content-Length header",
    401: "missing API key",
    403: "invalid API key",
    404: "no such job (unknown, deleted, expired or another key's)",
    408: "upload too slow",
    409: "analysis cancelled (the server stopping its workers mid-analysis)",
    413: "upload over max_upload_bytes",
    415: "not an allowed image/video format (by content)",
    422: "bad request, or media unreadable / over a pixel, duration or frame cap",
    500: "internal error",
    503: "busy (queue full, too many jobs) or not ready: see Retry-After",
    504: "analysis timed out",
}


def _errors(*codes: int, **texts: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses (the shared ``ErrorResponse`` body);
    ``texts`` (``e409="..."``) replace the usual description of a status on one route."""
    return {c: {"model": ErrorResponse, "description": texts.get(f"e{c}", _ERROR_TEXTS[c])} for c in codes}


#: Errors of the upload routes (POST /v1/analyze, /v1/jobs) and of the job routes.
_ERRORS = _errors(400, 401, 403, 408, 409, 413, 415, 422, 500, 503, 504)
_JOB_ERRORS = _errors(401, 403, 404, 500)


@dataclass(frozen=True)
class SamplingQuery:
    """Video frame sampling from the query string (at most one of the three), for
    ``POST /v1/jobs`` whether to make an HTML report, and the ``min_face`` asked for (None: the
    server's)."""

    sampling: Sampling | None
    report: bool = False
    min_face: int | None = None


#: Seconds between checks that the client of a synchronous analysis is still connected.
DISCONNECT_POLL_S = 0.5

#: Statuses answered before the request body was read to its end (bad Content-Length, upload
#: too slow, too large): the connection is closed after the answer instead of kept alive.
CLOSE_AFTER = frozenset({400, 408, 413})

#: The query parameters of the analysis routes.
QUERY_PARAMS = ("frames", "fps", "all_frames", "min_face")
#: ``POST /v1/jobs`` also takes ``report``.
JOB_QUERY_PARAMS = (*QUERY_PARAMS, "report")


FramesQuery = Annotated[
    int | None, Query(ge=1, le=100_000, description="sample this many frames evenly (default 32)")
]
FpsQuery = Annotated[
    float | None, Query(gt=0, le=240, allow_inf_nan=False, description="sample this many frames per second")
]
AllFramesQuery = Annotated[bool, Query(description="analyse every frame")]
MinFaceQuery = Annotated[
    int | None,
    Query(
        ge=1,
        le=4096,
        description="look for faces from this box side in pixels, at least the server's min_face_size "
        "(GET /readyz; FACETRUST_MIN_FACE); faster, smaller faces are not reported",
    ),
]


def sampling_query(
    request: Request,
    frames: FramesQuery = None,
    fps: FpsQuery = None,
    all_frames: AllFramesQuery = False,
    min_face: MinFaceQuery = None,
) -> SamplingQuery:
    """Parse ``frames`` / ``fps`` / ``all_frames`` (ignored for images) and ``min_face``. An unknown
    or repeated parameter is refused (422): a misspelt ``FRAMES=4`` must not quietly become the
    default."""
    return _sampling(request, QUERY_PARAMS, frames, fps, all_frames, min_face)


def job_query(
    request: Request,
    frames: FramesQuery = None,
    fps: FpsQuery = None,
    all_frames: AllFramesQuery = False,
    report: Annotated[
        bool,
        Query(description="also make a self-contained HTML report (GET /v1/jobs/{job_id}/report "
                          "once the job has finished): verdict, timeline, face thumbnails, the result"),
    ] = False,
    min_face: MinFaceQuery = None,
) -> SamplingQuery:
    """:func:`sampling_query` plus ``report``."""
    parsed = _sampling(request, JOB_QUERY_PARAMS, frames, fps, all_frames, min_face)
    return SamplingQuery(parsed.sampling, report, parsed.min_face)


def _sampling(
    request: Request, allowed: tuple[str, ...], frames: int | None, fps: float | None, all_frames: bool,
    min_face: int | None = None,
) -> SamplingQuery:
    unknown = sorted({k for k in request.query_params if k not in allowed})
    if unknown:
        raise ApiError(422, "bad_request", f"unknown query parameter(s): {', '.join(unknown)} "
                       f"(allowed: {', '.join(allowed)})")
    repeated = [k for k in allowed if len(request.query_params.getlist(k)) > 1]
    if repeated:
        raise ApiError(422, "bad_request", f"query parameter(s) given more than once: {', '.join(repeated)}")
    chosen = [
        name
        for name, on in (("frames", frames is not None), ("fps", fps is not None), ("all_frames", all_frames))
        if on
    ]
    if len(chosen) > 1:
        raise ApiError(422, "bad_request", f"choose one of frames, fps, all_frames (got {', '.join(chosen)})")
    floor = request.app.state.server.min_face
    if min_face is not None and min_face < floor:
        raise ApiError(
            422, "bad_request",
            f"min_face={min_face} is below this server's smallest face size, {floor} px (GET /readyz)",
        )
    if frames is not None:
        return SamplingQuery(("count", float(frames)), min_face=min_face)
    if fps is not None:
        return SamplingQuery(("fps", float(fps)), min_face=min_face)
    if all_frames:
        return SamplingQuery(("all", 0.0), min_face=min_face)
    return SamplingQuery(None, min_face=min_face)


SamplingParams = Annotated[SamplingQuery, Depends(sampling_query)]
JobParams = Annotated[SamplingQuery, Depends(job_query)]


def _server(request: Request) -> Server:
    return request.app.state.server


def _ctx(request: Request) -> RequestContext:
    return request.state.ctx


def _envelope_json(model: Any, ctx: RequestContext | None, status: int = 200, **extra: Any) -> JSONResponse:
    if ctx is not None:
        model.request_id = ctx.request_id
    return JSONResponse(model.model_dump(mode="json"), status_code=status, **extra)


def create_app(settings: ServeSettings) -> FastAPI:
    """The FastAPI app for ``settings``; raises ``ModelCardError`` if the model is unusable."""
    server = Server(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.close()

    app = FastAPI(
        title="FaceTrust",
        version="1",
        summary="Find every face in an image or video and score it as real or manipulated.",
        lifespan=lifespan,
    )
    app.state.server = server
    app.add_middleware(ServingMiddleware, metrics=server.metrics, model_header=server.model_header)

    def error_response(
        request: Request,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        result: Any = None,
    ) -> JSONResponse:
        ctx = context_of(request.scope)
        if ctx is not None:
            ctx.error_code = code
            if result is not None:
                ctx.result_status = str(getattr(result.status, "value", result.status))
        if status not in (404, 405):
            server.metrics.rejections.labels(code).inc()
        body = ErrorResponse(
            request_id=ctx.request_id if ctx else "",
            model=server.model_info,
            sha256=ctx.sha256 if ctx else None,
            error=ErrorDetail(code=code, message=message),
            result=result,
        )
        extra = dict(headers or {})
        if status in CLOSE_AFTER:  # the body may still be arriving: do not keep reading it
            extra["Connection"] = "close"
        return JSONResponse(
            body.model_dump(mode="json"),
            status_code=status,
            headers={**extra, **identity_headers(ctx, server.model_header)},
        )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.headers, exc.result)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return error_response(request, 422, "bad_request", "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(
            request,
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            str(exc.detail),
            dict(exc.headers or {}),
        )

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        ctx = context_of(request.scope)
        if ctx is not None:
            ctx.error_code = "client_disconnected"
        server.metrics.rejections.labels("client_disconnected").inc()
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request, 500, "internal", f"internal error ({type(exc).__name__})")

    # -- probes ------------------------------------------------------------------------
    @app.get("/healthz", response_model=HealthResponse, tags=["probes"])
    async def healthz() -> HealthResponse:
        """Liveness: the process answers."""
        return HealthResponse(model=server.model_info)

    @app.get(
        "/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}}, tags=["probes"]
    )
    async def readyz() -> JSONResponse:
        """Readiness: the model is loaded and a warm-up inference passed in at least one worker."""
        ready, n, reason = server.readiness()
        body = ReadyResponse(
            ready=ready,
            workers_ready=n,
            workers=settings.workers,
            model=server.model_info,
            min_face_size=server.min_face,
            multi_crop=settings.multi_crop,
            reason=reason,
        )
        return JSONResponse(
            body.model_dump(mode="json"),
            status_code=200 if ready else 503,
            headers=None if ready else {"Retry-After": "5"},
        )

    @app.get("/metrics", tags=["probes"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics."""
        for state, n in server.jobs.count().items():
            server.metrics.jobs.labels(state).set(n)
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -- analysis ----------------------------------------------------------------------
    @app.post(
        "/v1/analyze",
        response_model=AnalyzeResponse,
        responses=_ERRORS,
        openapi_extra=_MULTIPART_BODY,
        tags=["analysis"],
    )
    async def analyze(request: Request, key_id: KeyId, query: SamplingParams) -> JSONResponse:
        """Analyse one image or short video now (multipart field ``file``).

        Videos whose sampling would need more than ``sync_max_frames`` frames are refused
        (422 ``over_sync_limit``): submit those to ``POST /v1/jobs``.
        """
        ctx = _ctx(request)
        ctx.min_face = query.min_face
        server.require_ready()
        sampling = query.sampling
        if sampling is not None and sampling[0] == "count" and sampling[1] > settings.sync_max_frames:
            raise ApiError(
                422,
                "over_sync_limit",
                f"frames={int(sampling[1])} is over the {settings.sync_max_frames} frames /v1/analyze runs "
                "synchronously: use POST /v1/jobs",
            )
        async with server.admission():
            upload = await _receive(request, ctx)
            gone = threading.Event()  # set when the client disconnects: the worker is stopped
            watcher = asyncio.create_task(_watch_disconnect(request, gone))
            try:
                fmt = server.classify_upload(upload, ctx)
                analysis = await server.analyze(
                    upload,
                    fmt,
                    sampling,
                    timeout=settings.timeout,
                    max_frames=settings.sync_max_frames,
                    queue_timeout=settings.timeout,
                    ctx=ctx,
                    cancel=gone,
                    min_face=query.min_face,
                )
            finally:
                watcher.cancel()
                upload.discard()
            if gone.is_set():  # nobody is waiting for this answer: log it as a disconnect
                raise ClientDisconnect()
        if analysis.http_status != 200:
            raise ApiError(
                analysis.http_status,
                analysis.code or "failed",
                analysis.result.error or "analysis failed",
                result=analysis.result,
            )
        body = AnalyzeResponse(
            request_id=ctx.request_id, model=server.model_info, sha256=upload.sha256, result=analysis.result
        )
        return _envelope_json(body, ctx)

    async def _watch_disconnect(request: Request, gone: threading.Event) -> None:
        """Set ``gone`` when the client of a synchronous analysis hangs up (polled twice a second)."""
        while not gone.is_set():
            if await request.is_disconnected():
                gone.set()
                return
            await asyncio.sleep(DISCONNECT_POLL_S)

    async def _receive(request: Request, ctx: RequestContext) -> Any:
        t0 = time.perf_counter()
        upload = await receive_upload(
            request,
            dest=server.work_dir,
            max_bytes=settings.max_upload_bytes,
            timeout=settings.upload_timeout,
        )
        ctx.timings["upload"] = time.perf_counter() - t0
        ctx.sha256, ctx.size_bytes = upload.sha256, upload.size
        return upload

    # -- jobs --------------------------------------------------------------------------
    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobResponse,
        responses=_ERRORS,
        openapi_extra=_MULTIPART_BODY,
        tags=["jobs"],
    )
    async def submit_job(request: Request, key_id: KeyId, query: JobParams) -> JSONResponse:
        """Queue an image or video for analysis; poll ``GET /v1/jobs/{job_id}``. With
        ``report=true``, its HTML report is at ``GET /v1/jobs/{job_id}/report`` once finished."""
        ctx = _ctx(request)
        ctx.min_face = query.min_face
        server.require_ready()
        server.admit()
        job = None
        try:
            upload = await _receive(request, ctx)
            try:
                fmt = server.classify_upload(upload, ctx)
                job = server.jobs.submit(
                    upload, fmt, query.sampling, key_id, report=query.report, min_face=query.min_face
                )
            except BaseException:
                upload.discard()
                raise
        finally:
            if job is None:
                server.release()
        ctx.job_id = job.id
        return _envelope_json(server.jobs.view(job), ctx, 202, headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs/{job_id}", response_model=JobResponse, responses=_JOB_ERRORS, tags=["jobs"])
    async def get_job(request: Request, job_id: str, key_id: KeyId) -> JSONResponse:
        """State, progress (sampled frames done / planned) and, once finished, the result."""
        ctx = _ctx(request)
        ctx.job_id = job_id
        job = server.jobs.get(job_id, key_id)
        ctx.sha256 = job.sha256
        view = server.jobs.view(job)
        ctx.result_status = view.result.status if view.result is not None else None
        return _envelope_json(view, ctx)

    @app.get(
        "/v1/jobs/{job_id}/report",
        response_class=Response,
        responses={
            200: {
                "content": {"text/html": {}},
                "description": "the report (an HTML file to keep)",
                "headers": {
                    "X-Report-SHA256": {
                        "description": "SHA-256 of the report's bytes", "schema": {"type": "string"}
                    },
                    "Content-Disposition": {
                        "description": 'attachment; filename="facetrust-report-<16 hex>.html"',
                        "schema": {"type": "string"},
                    },
                },
            },
            **_errors(
                401, 403, 404, 409, 500,
                e404="no such job (unknown, deleted, expired or another key's), or `no_report`: "
                "submitted without report=true",
                e409="`not_finished`: the job is still queued or running",
                e500="internal error, or the report could not be made",
            ),
        },
        tags=["jobs"],
    )
    async def get_job_report(request: Request, job_id: str, key_id: KeyId) -> Response:
        """The finished job's self-contained HTML report (no scripts, no external resources):
        SHA-256, verdicts and rule, per-track timeline, face thumbnails, the result as JSON.
        ``X-Report-SHA256`` is the report's own SHA-256. 404 ``no_report``: submitted without
        ``report=true`` (or no result); 409 ``not_finished``: still queued or running."""
        ctx = _ctx(request)
        ctx.job_id = job_id
        job = server.jobs.get(job_id, key_id)
        ctx.sha256 = job.sha256  # also on a refusal below
        server.jobs.check_report(job)
        assert job.report_html is not None and job.report_sha256 is not None
        name = f"facetrust-report-{(job.sha256 or job.id)[:16]}.html"
        return Response(
            job.report_html,
            media_type="text/html; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff",
                "X-Report-SHA256": job.report_sha256,
                "Cache-Control": "no-store",
            },
        )

    @app.delete("/v1/jobs/{job_id}", response_model=JobResponse, responses=_JOB_ERRORS, tags=["jobs"])
    async def delete_job(request: Request, job_id: str, key_id: KeyId) -> JSONResponse:
        """Cancel the job if unfinished, and delete it with its result (later GETs: 404)."""
        ctx = _ctx(request)
        ctx.job_id = job_id
        job = await server.jobs.delete(job_id, key_id)
        ctx.sha256 = job.sha256
        return _envelope_json(server.jobs.view(job), ctx)

    return app
