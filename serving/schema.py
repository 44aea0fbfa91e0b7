"""HTTP envelopes around :class:`detector.schema.AnalysisResult` (the one result schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from detector.schema import AnalysisResult, ModelInfo


class Envelope(BaseModel):
    """Fields every JSON response carries."""

    request_id: str = Field(description="also in the X-Request-ID header")
    model: ModelInfo | None = Field(
        default=None, description="the serving model (X-FaceTrust-Model header: 'name/version')"
    )
    sha256: str | None = Field(
        default=None, description="SHA-256 of the uploaded bytes (X-Content-SHA256), null without upload"
    )


class AnalyzeResponse(Envelope):
    """``POST /v1/analyze`` answer: the analysis result (status ``ok`` or ``no_face``)."""

    result: AnalysisResult


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable reason, e.g. 'unsupported_media'")
    message: str = Field(description="human-readable explanation")


class ErrorResponse(Envelope):
    """Every 4xx/5xx answer."""

    error: ErrorDetail
    result: AnalysisResult | None = Field(
        default=None, description="the analysis result when the refusal comes from analysing the file"
    )


JobState = Literal["queued", "running", "done", "failed", "cancelled"]


class JobProgress(BaseModel):
    done: int = Field(0, description="sampled frames analysed so far")
    total: int = Field(0, description="sampled frames planned (0 until known; 1 for images)")


class JobResponse(Envelope):
    """``/v1/jobs`` answers. ``result`` is present once the job is ``done`` or ``failed``."""

    job_id: str
    state: JobState = Field(
        description="queued | running | done (result ok/no_face) | failed (see error/result) | cancelled"
    )
    media_type: str | None = None
    progress: JobProgress
    created: float = Field(description="Unix time the job was accepted")
    finished: float | None = None
    expires: float = Field(description="Unix time the job and its result are deleted")
    error: ErrorDetail | None = None
    result: AnalysisResult | None = None
    report: str | None = Field(
        default=None,
        description="where to GET the HTML report: set once the job finished, if submitted with report=true",
    )


class HealthResponse(BaseModel):
    status: Literal["alive"] = "alive"
    model: ModelInfo | None = None


class ReadyResponse(BaseModel):
    ready: bool
    workers_ready: int
    workers: int
    model: ModelInfo | None = None
    min_face_size: int | None = Field(
        default=None,
        description="faces are looked for from this box side in pixels unless a request raises it with "
        "min_face (FACETRUST_MIN_FACE, or the model card's min_face_size): the lowest min_face accepted",
    )
    multi_crop: str | None = Field(
        default=None, description="media whose faces are scored on 4 views (FACETRUST_MULTI_CROP)"
    )
    reason: str | None = None
