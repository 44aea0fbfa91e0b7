"""Streaming upload: ``multipart/form-data`` with exactly one field ``file``, straight to disk.

The body is parsed while it arrives (python-multipart's streaming parser): file bytes go
to a temporary file in the server's temp directory and are counted and hashed on the way,
so an upload over the limit is refused with 413 as soon as it crosses it, before the rest
is read. Nothing is buffered in memory beyond one network chunk. The temporary file is
removed on every failure; on success the caller owns it (:meth:`Upload.discard`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from detector.media import ANIMATABLE_KINDS, IMAGE_KINDS
from serving.errors import ApiError
from serving.worker import EITHER

FIELD = "file"
#: Bytes kept from the start of the file for format sniffing.
HEAD_BYTES = 64 * 1024
#: Multipart framing allowed on top of the file itself (boundaries, part headers).
FRAMING_BYTES = 64 * 1024

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def media_kind(fmt: str) -> str:
    """``image``/``video`` for a sniffed format; GIF and PNG (``either``) are decided by the
    worker, from the whole file (animated or not)."""
    if fmt in ANIMATABLE_KINDS:
        return EITHER
    return "image" if fmt in IMAGE_KINDS else "video"


def safe_filename(name: str | None) -> str:
    """The client's file name without directories or control characters (at most 200 chars)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = _UNSAFE.sub("", base).strip().lstrip(".") or "upload"
    return base[-200:]


@dataclass
class Upload:
    """An uploaded file on disk: its temp ``path``, client ``filename``, ``size``, ``sha256``, ``head``."""

    path: Path
    filename: str
    size: int
    sha256: str
    head: bytes

    def discard(self) -> None:
        """Delete the temporary file (idempotent)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class _Receiver:
    """python-multipart callbacks writing the one ``file`` part to ``fh``."""

    def __init__(self, fh: object, max_bytes: int) -> None:
        self.fh = fh
        self.max_bytes = max_bytes
        self.hasher = hashlib.sha256()
        self.size = 0
        self.head = bytearray()
        self.filename: str | None = None
        self.files = 0
        self.in_file = False
        self.file_done = False
        self.ended = False
        self._hname = b""
        self._hvalue = b""
        self._disposition = b""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._disposition = b""
        self.in_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def on_header_end(self) -> None:
        if self._hname.strip().lower() == b"content-disposition":
            self._disposition = self._hvalue
        self._hname, self._hvalue = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name != FIELD:
            shown = name[:40] or "(unnamed)"
            raise ApiError(
                422,
                "bad_request",
                f"unexpected form field {shown!r}: send exactly one file in field '{FIELD}'",
            )
        self.files += 1
        if self.files > 1:
            raise ApiError(422, "bad_request", f"exactly one file per request (field '{FIELD}' repeated)")
        raw = options.get(b"filename")
        if raw is None:  # a plain form value (`-F file=hello`), not an uploaded file
            raise ApiError(
                422, "bad_request", f"field '{FIELD}' must be a file upload (with a filename), not text"
            )
        self.filename = raw.decode("utf-8", "replace")
        self.in_file = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise ApiError(413, "too_large", f"upload exceeds the {self.max_bytes}-byte limit")
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
        self.hasher.update(chunk)
        self.fh.write(chunk)  # type: ignore[attr-defined]

    def on_part_end(self) -> None:
        if self.in_file:
            self.file_done = True
        self.in_file = False

    def on_end(self) -> None:
        self.ended = True


def check_content_length(request: Request, max_bytes: int) -> None:
    """413 at once when the declared body size is already over the limit (nothing is read)."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError:
        raise ApiError(400, "bad_request", "invalid Content-Length header") from None
    if length > max_bytes + FRAMING_BYTES:
        raise ApiError(413, "too_large", f"upload of {length} bytes exceeds the {max_bytes}-byte limit")


async def receive_upload(request: Request, *, dest: Path, max_bytes: int, timeout: float) -> Upload:
    """Stream the request's one ``file`` part to a new file in ``dest``.

    Raises :class:`ApiError`: 413 over ``max_bytes`` (declared or counted), 422 for a body
    that is not multipart, lacks the ``file`` field, holds other fields or two files, or
    ends early (an empty file is returned: the caller refuses it); 408 when the body takes
    longer than ``timeout`` seconds.
    """
    check_content_length(request, max_bytes)
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ApiError(
            422, "bad_request", f"expected a multipart/form-data body with one file in field '{FIELD}'"
        )
    fd, name = tempfile.mkstemp(prefix="upload-", dir=dest)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            receiver = _Receiver(fh, max_bytes)
            try:
                parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
            except ValueError as exc:
                raise ApiError(422, "bad_request", f"invalid multipart boundary: {exc}") from None
            limit = max_bytes + FRAMING_BYTES

            async def pump() -> None:
                raw = 0
                async for chunk in request.stream():
                    raw += len(chunk)
                    if raw > limit:
                        raise ApiError(413, "too_large", f"upload exceeds the {max_bytes}-byte limit")
                    try:
                        parser.write(chunk)
                    except ApiError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - python-multipart's parse errors
                        raise ApiError(422, "bad_request", f"malformed multipart body: {exc}") from None

            try:
                await asyncio.wait_for(pump(), timeout)
            except asyncio.TimeoutError:
                raise ApiError(408, "upload_timeout", f"upload not received within {timeout:g}s") from None
        if not receiver.ended or (receiver.files and not receiver.file_done):
            raise ApiError(422, "bad_request", "incomplete multipart body (no closing boundary)")
        if not receiver.files:
            raise ApiError(422, "bad_request", f"missing file field '{FIELD}'")
        return Upload(
            path=path,
            filename=safe_filename(receiver.filename),
            size=receiver.size,
            sha256=receiver.hasher.hexdigest(),
            head=bytes(receiver.head),
        )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
