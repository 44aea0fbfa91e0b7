"""`facetrust scan --output FILE [--resume]`: results kept on disk as they are made.

FILE is JSON Lines: one :class:`detector.schema.AnalysisResult` per line (the ``--json``
schema), appended, flushed and fsynced as soon as each file is analysed, so a batch that is
interrupted, killed or loses power keeps every finished result. ``--resume`` reads FILE back
and skips the files it already holds a final result for (see :data:`KEPT`), when the file's
content is unchanged (same SHA-256); the others are analysed and appended (a later line for
the same file wins). FILE is locked while a scan writes it, so two scans cannot interleave.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from detector.media import sha256_file
from detector.schema import AnalysisResult, ModelInfo

try:  # POSIX; elsewhere the file is simply not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Statuses that ``--resume`` keeps (with the same SHA-256): the analysis reached its answer.
#: The others (``unreadable``, ``timeout``, ``cancelled``, ``error``) are analysed again.
KEPT = frozenset({"ok", "no_face", "unsupported", "too_large"})


class OutputError(Exception):
    """The ``--output`` file cannot be used (message for the user)."""


def _key(path: str | os.PathLike[str]) -> str:
    return os.path.normcase(str(Path(path).resolve()))


class ResultLog:
    """An open, locked ``--output`` file: :meth:`append` results, :meth:`kept` to resume."""

    def __init__(self, path: Path, *, resume: bool) -> None:
        """Open (create) ``path`` for appending; with ``resume`` read the results it holds.

        Raises :class:`OutputError` when the file cannot be opened or locked, when it is not
        empty and ``resume`` is false, or when a line other than a cut-off last one is not a
        result. A last line without its newline (a write cut off) is dropped from the file.
        """
        self.path = path
        self.warnings: list[str] = []
        self._results: dict[str, AnalysisResult] = {}
        if path.is_dir():
            raise OutputError(f"--output {path} is a directory, not a file")
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot open --output {path}: {exc.strerror or exc}") from None
        try:
            self._lock()
            size = os.fstat(self._fd).st_size
            if size and not resume:
                raise OutputError(
                    f"--output {path} already holds results: pass --resume to go on with it "
                    "(files already there are not analysed again), or choose another file"
                )
            if size:
                self._read(size)
        except BaseException:
            os.close(self._fd)
            raise

    def _lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"--output {self.path} is being written by another scan") from None

    def _read(self, size: int) -> None:
        data = b""
        while len(data) < size:  # the file is open O_APPEND, so os.pread reads from anywhere
            chunk = os.pread(self._fd, size - len(data), len(data))
            if not chunk:
                break
            data += chunk
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line whose write was cut off: drop it so the next line starts clean
            os.ftruncate(self._fd, end)
            self.warnings.append(
                f"{self.path}: dropped an incomplete last line ({len(data) - end} bytes, "
                "a write that was cut off); that file is analysed again"
            )
        for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
            if not line.strip():
                continue
            try:
                result = AnalysisResult.model_validate(json.loads(line))
            except ValueError as exc:  # JSONDecodeError, pydantic's ValidationError
                first = str(exc).splitlines()[0]
                raise OutputError(
                    f"--output {self.path} line {number} is not a FaceTrust result ({first}); "
                    "not resuming from it"
                ) from None
            self._results[_key(result.path)] = result

    @property
    def results(self) -> list[AnalysisResult]:
        """The results read back (the last one per file), in file order."""
        return list(self._results.values())

    def check(self, model: ModelInfo | None, sampling: str, views: dict[str, int]) -> None:
        """Refuse to mix: every result read back must come from ``model`` (its name, version and
        thresholds), videos sampled as ``sampling``, faces scored on ``views[media_type]`` crops."""
        for r in self._results.values():
            if r.model is not None and model is not None and r.model != model:
                raise OutputError(
                    f"--output {self.path} holds results of model {r.model.name} "
                    f"{r.model.version}; this scan uses {model.name} {model.version} "
                    "(or other thresholds): choose another --output file"
                )
            if r.video is not None and r.video.sampling and r.video.sampling != sampling:
                raise OutputError(
                    f"--output {self.path} holds videos sampled with {r.video.sampling}; this "
                    f"scan samples {sampling}: use the same --frames/--fps/--all-frames, or "
                    "another --output file"
                )
            wanted = views.get(str(r.media_type))
            if r.crop_views is not None and wanted is not None and r.crop_views != wanted:
                raise OutputError(
                    f"--output {self.path} holds {r.media_type}s scored on {r.crop_views} "
                    f"crop(s) per face; this scan scores {wanted}: use the same --multi-crop, "
                    "or another --output file"
                )

    def kept(self, path: Path) -> AnalysisResult | None:
        """The result read back for ``path`` when it can stand: a :data:`KEPT` status and the
        same SHA-256 as the file now. Its ``path`` is set to ``path`` as given in this scan."""
        old = self._results.get(_key(path))
        if old is None or old.status not in KEPT or not old.sha256:
            return None
        try:
            if sha256_file(path) != old.sha256:
                return None
        except OSError:
            return None
        return old.model_copy(update={"path": str(path)})

    def is_file(self, path: Path) -> bool:
        """Whether ``path`` is this output file (it is never scanned)."""
        try:
            return path.resolve() == self.path.resolve()
        except OSError:
            return False

    def append(self, result: AnalysisResult) -> None:
        """Write ``result`` as one line, then flush it to disk."""
        line = (json.dumps(result.model_dump(mode="json"), separators=(",", ":")) + "\n").encode()
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def close(self) -> None:
        """Unlock and close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ResultLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
