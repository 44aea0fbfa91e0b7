"""The server's state: settings, model identity, admission control, workers and jobs.

:class:`Server` is what the routes talk to. It admits at most
``workers + queue_size`` analyses at once (sync requests and unfinished jobs alike);
one more is refused with 503 and ``Retry-After`` instead of joining an unbounded backlog.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from detector.card import ModelCardError, read_card, resolve_min_face
from detector.classifier import resolve_model_path
from detector.media import ALLOWED_NAMES, describe_unknown, sniff
from detector.schema import AnalysisResult, ModelInfo, Status
from serving.errors import RESULT_CODE, RESULT_HTTP_STATUS, ApiError, result_status
from serving.jobs import JobStore
from serving.metrics import Metrics
from serving.middleware import RequestContext
from serving.pool import Outcome, Progress, WorkerPool
from serving.settings import ServeSettings
from serving.upload import Upload, media_kind
from serving.worker import EITHER, Task, WorkerConfig

Sampling = tuple[str, float]


@dataclass
class Analysis:
    """A finished analysis: the result, its HTTP status, the error code when not 200, and
    (when a report was asked for) the face thumbnails its report shows."""

    result: AnalysisResult
    http_status: int
    code: str | None = None
    crops: dict[int | None, list[bytes]] | None = None


class Server:
    """Everything one running service holds. Raises ``ModelCardError`` for a bad model."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.model_path = resolve_model_path(settings.model)
        card = read_card(str(self.model_path))
        try:
            self.min_face = resolve_min_face(card, settings.min_face)
        except ValueError as exc:
            raise ModelCardError(f"FACETRUST_MIN_FACE: {exc}") from None
        self.model_info = ModelInfo(
            name=card.name,
            version=card.version,
            threshold_balanced=card.threshold_balanced,
            threshold_strict=card.threshold_strict,
        )
        self.model_header = f"{card.name}/{card.version}"
        self.metrics = Metrics()
        self.inflight = 0
        self.pool: WorkerPool | None = None
        self.work_dir: Path | None = None
        self.closing = False
        self.jobs = JobStore(self)

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Create the private temp directory, start the workers and the job sweeper."""
        s = self.settings
        self.work_dir = Path(tempfile.mkdtemp(prefix="facetrust-serve-", dir=s.temp_dir))
        config = WorkerConfig(
            model=str(self.model_path),
            threads=s.threads_per_worker,
            memory_mb=s.worker_memory_mb,
            max_file_bytes=s.max_upload_bytes,
            time_limit=max(s.timeout, s.job_timeout),
            temp_dir=str(self.work_dir),
            test_faults=s.test_faults,
            multi_crop=s.multi_crop,
            min_face=self.min_face,
        )
        self.pool = WorkerPool(config, s.workers, self.metrics)
        self.pool.start()
        self.jobs.start()

    async def close(self) -> None:
        """Cancel jobs, stop the workers, delete every stored byte."""
        self.closing = True
        await self.jobs.close()
        if self.pool is not None:
            await self.pool.close()
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # -- readiness and admission -------------------------------------------------------
    def readiness(self) -> tuple[bool, int, str | None]:
        """(ready, warm workers, reason when not ready)."""
        if self.pool is None or self.closing:
            return False, 0, "not started" if not self.closing else "shutting down"
        n = self.pool.ready_count
        if n:
            return True, n, None
        return False, 0, self.pool.last_error or "workers are loading the model and warming up"

    def require_ready(self) -> None:
        """503 with Retry-After while no worker has passed its warm-up."""
        ready, _, reason = self.readiness()
        if not ready:
            raise ApiError(503, "not_ready", f"service not ready: {reason}", headers={"Retry-After": "5"})

    def retry_after(self) -> str:
        """Seconds a refused client should wait: the queue's expected drain time, 1..60."""
        avg = self.pool.avg_seconds if self.pool is not None else 1.0
        return str(min(60, max(1, math.ceil(avg * self.settings.capacity / self.settings.workers))))

    def admit(self) -> None:
        """Take one of the ``workers + queue_size`` analysis slots, or 503 ``queue_full``."""
        if self.inflight >= self.settings.capacity:
            raise ApiError(
                503,
                "queue_full",
                f"server busy: {self.inflight} analyses running or queued (limit {self.settings.capacity}); "
                "retry later",
                headers={"Retry-After": self.retry_after()},
            )
        self.inflight += 1
        self.metrics.queue_depth.set(max(0, self.inflight - self.settings.workers))

    def release(self) -> None:
        """Give back a slot taken by :meth:`admit`."""
        self.inflight = max(0, self.inflight - 1)
        self.metrics.queue_depth.set(max(0, self.inflight - self.settings.workers))

    @asynccontextmanager
    async def admission(self) -> AsyncIterator[None]:
        """``async with``: :meth:`admit` ... :meth:`release`."""
        self.admit()
        try:
            yield
        finally:
            self.release()

    # -- analysing -----------------------------------------------------------------------
    def classify_upload(self, upload: Upload, ctx: RequestContext) -> str:
        """The sniffed format of an upload (magic bytes only); 415 when not allowed, 422 when empty."""
        if upload.size == 0:
            raise ApiError(422, "unreadable_media", "the uploaded file is empty")
        fmt = sniff(upload.head)
        if fmt is None:
            raise ApiError(
                415,
                "unsupported_media",
                f"unsupported media: {describe_unknown(upload.head)}; allowed: {ALLOWED_NAMES} "
                "(recognised by content, not by name)",
            )
        ctx.format = fmt
        kind = media_kind(fmt)
        ctx.media_type = kind if kind != EITHER else None
        return fmt

    async def analyze(
        self,
        upload: Upload,
        fmt: str,
        sampling: Sampling | None,
        *,
        timeout: float,
        max_frames: int | None,
        queue_timeout: float | None,
        ctx: RequestContext | None = None,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        report: bool = False,
        min_face: int | None = None,
    ) -> Analysis:
        """Run one upload in a worker; every way it can end becomes an :class:`Analysis`
        (with ``report``, one that carries the face thumbnails of the result's HTML report).
        ``min_face``: look for faces from this box side (None: the server's; the route has checked
        that it is not below it).

        Raises 503 ``busy`` when no worker frees up within ``queue_timeout`` seconds.
        """
        assert self.pool is not None
        timings = ctx.timings if ctx is not None else {}
        t0 = time.perf_counter()
        worker = await self.pool.acquire(queue_timeout)
        waited = time.perf_counter() - t0
        timings["queue"] = waited
        self.metrics.queue_wait.observe(waited)
        if worker is None:
            raise ApiError(
                503,
                "busy",
                f"no analysis worker became free within {queue_timeout:g}s; retry later",
                headers={"Retry-After": self.retry_after()},
            )
        task = Task(
            path=str(upload.path),
            name=upload.filename,
            kind=media_kind(fmt),
            sampling=sampling,
            timeout=timeout,
            max_frames=max_frames,
            report=report,
            min_face=None if min_face == self.min_face else min_face,
        )
        outcome = await self.pool.run(worker, task, progress=progress, cancel=cancel)
        timings["analysis"] = outcome.seconds
        analysis = self._conclude(upload, fmt, task, outcome)
        self._observe(analysis.result, outcome)
        if ctx is not None:
            self.note(ctx, analysis)
        return analysis

    def note(self, ctx: RequestContext, analysis: Analysis) -> None:
        """Copy what the audit line reports from a finished analysis."""
        r = analysis.result
        ctx.result_status = result_status(r)
        ctx.media_type = str(getattr(r.media_type, "value", r.media_type)) if r.media_type else ctx.media_type
        ctx.verdict = r.label
        ctx.fake_probability = r.fake_probability

    def _failure(self, upload: Upload, fmt: str, task: Task, status: Status, message: str) -> AnalysisResult:
        kind = task.kind if task.kind != EITHER else None
        return AnalysisResult(
            path=upload.filename,
            sha256=upload.sha256,
            size_bytes=upload.size,
            media_type=kind,
            status=status,
            error=message,
            model=self.model_info,
        )

    def _conclude(self, upload: Upload, fmt: str, task: Task, outcome: Outcome) -> Analysis:
        if outcome.kind == "timeout":
            hint = " (long videos: submit them to POST /v1/jobs)" if task.max_frames is not None else ""
            result = self._failure(
                upload, fmt, task, Status.timeout, f"analysis exceeded the {task.timeout:g}s time limit{hint}"
            )
            return Analysis(result, 504, "timeout")
        if outcome.kind == "crashed":
            result = self._failure(
                upload,
                fmt,
                task,
                Status.unreadable,
                f"the analysis worker crashed on this file ({outcome.detail}); the file is likely malformed",
            )
            return Analysis(result, 422, "worker_crashed")
        if outcome.kind == "cancelled":
            return Analysis(self._failure(upload, fmt, task, Status.cancelled, "cancelled"), 409, "cancelled")
        payload = outcome.payload or {}
        if "internal" in payload:
            result = self._failure(upload, fmt, task, Status.error, f"internal error: {payload['internal']}")
            return Analysis(result, 500, "internal")
        result = AnalysisResult.model_validate(payload["result"])
        result.path, result.sha256, result.size_bytes = upload.filename, upload.sha256, upload.size
        over = payload.get("over_limit")
        if over is not None and task.max_frames is not None and result_status(result) == "cancelled":
            result.status = Status.too_large
            result.error = (
                f"this video needs {over} sampled frames, more than the {task.max_frames} that "
                "/v1/analyze runs synchronously: submit it to POST /v1/jobs, or ask for fewer frames"
            )
            return Analysis(result, 422, "over_sync_limit")
        status = result_status(result)
        code = RESULT_CODE.get(status)
        return Analysis(result, RESULT_HTTP_STATUS.get(status, 500), code, payload.get("crops"))

    def _observe(self, result: AnalysisResult, outcome: Outcome) -> None:
        media = str(getattr(result.media_type, "value", result.media_type) or "unknown")
        status = result_status(result)
        self.metrics.results.labels(media, status).inc()
        if outcome.kind == "result":
            self.metrics.inference.labels(media).observe(outcome.seconds)
        if result.faces is not None and status in ("ok", "no_face"):
            self.metrics.faces.observe(len(result.faces))
        for frame in result.frames or ():
            self.metrics.faces.observe(len(frame.faces))
