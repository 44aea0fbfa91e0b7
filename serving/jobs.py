"""Asynchronous jobs: accept an upload now (202), analyse it in the background, keep the result.

A job holds one admission slot and its uploaded bytes until its analysis ends; then the
bytes are deleted and only the result is kept. A job (and its result) is deleted
``job_ttl`` seconds after it was submitted, whatever its state: one still queued or
running then is cancelled. ``DELETE`` cancels and deletes at once. A job submitted with
``report`` also keeps, once finished, its HTML report (:mod:`detector.report`: the result and
a few face thumbnails per person), deleted with it. Jobs are visible only
to the API key that created them. Running jobs never take the last worker while there
is more than one, so synchronous requests keep a worker of their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from detector.schema import AnalysisResult
from serving.errors import ApiError, result_status
from serving.schema import ErrorDetail, JobProgress, JobResponse, JobState
from serving.upload import Upload, media_kind
from serving.worker import EITHER

if TYPE_CHECKING:
    from serving.service import Analysis, Sampling, Server


log = logging.getLogger("facetrust.serving")


@dataclass
class Job:
    """One submitted analysis."""

    id: str
    key_id: str
    upload: Upload | None
    fmt: str
    sampling: tuple[str, float] | None
    created: float
    expires_at: float
    state: JobState = "queued"
    media_type: str | None = None
    done: int = 0
    total: int = 0
    finished: float | None = None
    result: AnalysisResult | None = None
    error: ErrorDetail | None = None
    sha256: str | None = None
    settled: bool = False
    report: bool = False
    min_face: int | None = None  # None: the server's
    report_html: bytes | None = None
    report_sha256: str | None = None
    report_error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task[None] | None = None

    def progress(self, done: int, total: int) -> None:
        """Progress callback (called from the pool's I/O thread)."""
        self.done, self.total = done, max(total, done)


class JobStore:
    """The jobs of one server (in memory: this process is the only one serving them)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._jobs: dict[str, Job] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._slots: asyncio.Semaphore | None = None

    def start(self) -> None:
        """Start the expiry sweeper."""
        workers = self.server.settings.workers
        self._slots = asyncio.Semaphore(max(1, workers - 1))
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        """Cancel every job and delete its bytes and result."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for job in list(self._jobs.values()):
            await self._drop(job)

    def count(self) -> dict[str, int]:
        """Jobs kept, by state."""
        out = {s: 0 for s in ("queued", "running", "done", "failed", "cancelled")}
        for job in self._jobs.values():
            out[job.state] += 1
        return out

    # -- API -------------------------------------------------------------------------
    def submit(
        self, upload: Upload, fmt: str, sampling: Sampling | None, key_id: str, *, report: bool = False,
        min_face: int | None = None,
    ) -> Job:
        """Queue a job for an admitted upload (the job now owns the upload and the slot); with
        ``report``, an HTML report is made when it finishes."""
        settings = self.server.settings
        if len(self._jobs) >= settings.max_jobs:
            raise ApiError(
                503,
                "too_many_jobs",
                f"{len(self._jobs)} jobs are kept (limit {settings.max_jobs}); retry later",
                headers={"Retry-After": "30"},
            )
        now = time.time()
        job = Job(
            id=secrets.token_urlsafe(16),
            key_id=key_id,
            upload=upload,
            fmt=fmt,
            sampling=sampling,
            created=now,
            expires_at=now + settings.job_ttl,
            sha256=upload.sha256,
            media_type=media_kind(fmt) if media_kind(fmt) != EITHER else None,
            report=report,
            min_face=min_face,
        )
        self._jobs[job.id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job))
        return job

    def get(self, job_id: str, key_id: str) -> Job:
        """The caller's job, or 404 (also for another key's job: ids are not disclosed)."""
        job = self._jobs.get(job_id)
        if job is None or job.key_id != key_id:
            raise ApiError(404, "not_found", "no such job (it may have expired)")
        return job

    async def delete(self, job_id: str, key_id: str) -> Job:
        """Cancel the job if it is still queued or running, then delete it and its result."""
        job = self.get(job_id, key_id)
        if job.state in ("queued", "running"):
            job.state = "cancelled"
        await self._drop(job)
        return job

    def view(self, job: Job) -> JobResponse:
        """The JSON answer for ``job``."""
        return JobResponse(
            request_id="",
            model=self.server.model_info,
            sha256=job.sha256,
            job_id=job.id,
            state=job.state,
            media_type=job.media_type,
            progress=JobProgress(done=job.done, total=job.total),
            created=job.created,
            finished=job.finished,
            expires=job.expires_at,
            error=job.error,
            result=job.result,
            report=f"/v1/jobs/{job.id}/report" if job.report_html is not None else None,
        )

    def check_report(self, job: Job) -> None:
        """Raise unless ``job`` has its HTML report: 404 ``no_report`` (submitted without
        ``report=true``, or no result), 409 ``not_finished`` (still queued or running), 500
        (making it failed)."""
        if not job.report:
            raise ApiError(404, "no_report", "this job was submitted without report=true: it has no report")
        if job.state in ("queued", "running"):
            raise ApiError(409, "not_finished", f"the job is {job.state}: its report is made once it ends")
        if job.report_error is not None:
            raise ApiError(500, "internal", f"the report could not be made: {job.report_error}")
        if job.report_html is None:
            raise ApiError(404, "no_report", f"a {job.state} job has no result, so no report")

    # -- internals -----------------------------------------------------------------------
    async def _drop(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        job.result = job.report_html = None
        task = job.task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._settle(job)

    def _settle(self, job: Job) -> None:
        """Delete the job's bytes and give back its admission slot (once)."""
        if job.upload is not None:
            job.upload.discard()
            job.upload = None
        if not job.settled:
            job.settled = True
            job.finished = job.finished or time.time()
            self.server.release()

    async def _sweep(self) -> None:
        interval = min(1.0, max(0.05, self.server.settings.job_ttl / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            for job in [j for j in self._jobs.values() if now >= j.expires_at]:
                log.info("job %s expired (%s)", job.id, job.state)
                if job.state in ("queued", "running"):
                    job.state = "cancelled"
                await self._drop(job)

    async def _run(self, job: Job) -> None:
        server = self.server
        assert self._slots is not None and job.upload is not None
        upload = job.upload
        job.state = "queued"
        try:
            async with self._slots:
                job.state = "running"
                analysis = await server.analyze(
                    upload,
                    job.fmt,
                    job.sampling,
                    timeout=server.settings.job_timeout,
                    max_frames=None,
                    queue_timeout=None,
                    progress=job.progress,
                    cancel=job.cancel,
                    report=job.report,
                    min_face=job.min_face,
                )
            if job.report and result_status(analysis.result) != "cancelled":
                await self._make_report(job, analysis)
            job.result = analysis.result
            job.media_type = (
                str(getattr(analysis.result.media_type, "value", analysis.result.media_type))
                if analysis.result.media_type
                else None
            )
            if analysis.http_status == 200:
                job.state = "done"
            elif result_status(analysis.result) == "cancelled":
                job.state = "cancelled"
            else:
                job.state = "failed"
                job.error = ErrorDetail(code=analysis.code or "failed", message=analysis.result.error or "")
        except ApiError as exc:
            job.state, job.error = "failed", ErrorDetail(code=exc.code, message=exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug: the job fails, the server keeps going
            log.exception("job %s failed", job.id)
            job.state, job.error = (
                "failed",
                ErrorDetail(code="internal", message=f"{type(exc).__name__}: {exc}"),
            )
        finally:
            job.finished = time.time()
            self._settle(job)

    async def _make_report(self, job: Job, analysis: Analysis) -> None:
        """Render the job's HTML report (in a thread: a long video's takes a moment); a failure
        is kept as ``report_error`` and logged, and never costs the job its result."""

        def render() -> bytes:
            from detector.report import CropCollector, Report

            crops = CropCollector()
            crops.crops = dict(analysis.crops or {})
            report = Report()
            report.add(analysis.result, crops)
            return report.encode()

        try:
            html = await asyncio.to_thread(render)
        except Exception as exc:  # noqa: BLE001 - a report bug must not fail the analysis
            log.exception("job %s: report failed", job.id)
            job.report_error = f"{type(exc).__name__}: {exc}"
            return
        job.report_html, job.report_sha256 = html, hashlib.sha256(html).hexdigest()
