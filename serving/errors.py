"""One exception type for every refusal, and the HTTP status of each analysis outcome."""

from __future__ import annotations

from detector.schema import AnalysisResult, Status


class ApiError(Exception):
    """A request refused with ``status`` and a stable machine-readable ``code``.

    ``code`` is also the ``reason`` label of the rejections metric. ``result`` carries the
    analysis result when the refusal comes from analysing the file.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        result: AnalysisResult | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.result = result


#: HTTP status for each analysis status (``ok``/``no_face`` are answers, the rest refusals).
RESULT_HTTP_STATUS: dict[str, int] = {
    Status.ok.value: 200,
    Status.no_face.value: 200,
    Status.unsupported.value: 415,
    Status.unreadable.value: 422,
    Status.too_large.value: 422,
    Status.timeout.value: 504,
    Status.cancelled.value: 409,
    Status.error.value: 500,
}

#: Error code (and rejection reason) for each analysis status that is not an answer.
RESULT_CODE: dict[str, str] = {
    Status.unsupported.value: "unsupported_media",
    Status.unreadable.value: "unreadable_media",
    Status.too_large.value: "media_too_large",
    Status.timeout.value: "timeout",
    Status.cancelled.value: "cancelled",
    Status.error.value: "internal",
}


def result_status(result: AnalysisResult) -> str:
    """The result's status as a plain string."""
    status = result.status
    return str(getattr(status, "value", status))
